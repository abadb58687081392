"""A hostile double (tests only): a TLS proxy in front of a real vcsim that plays a vCenter user
who may log in and read the inventory and counters but not the VMs' statistics. Every call
goes through to vcsim unchanged, except QueryPerf, which gets the fault a real vCenter returns
then (HTTP 500, ``NoPermission`` with ``privilegeId`` ``System.Read`` on the first VM asked,
see ``tests/vcenter_xml.no_permission``).

Why not vcsim itself: govmomi's simulator (v0.56.0) checks no privilege on any method. Its
dispatcher only tells a session from none ("TODO: authz" in simulator.go), and its
AuthorizationManager keeps roles and permissions that nothing enforces, so no restricted user
can be made there.
"""

from __future__ import annotations

import http.client
import re
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from peers.common import ensure_certs
from tests.vcenter_xml import no_permission

ENTITY = re.compile(rb'<entity type="(\w+)">([^<]+)</entity>')
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length",
              "content-encoding"}


class NoPermissionVCenter:
    def __init__(self, upstream_url: str, privilege: str = "System.Read") -> None:
        parts = urlsplit(upstream_url)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 443)
        self.privilege = privilege
        certs = ensure_certs()
        self._client = ssl.create_default_context(cafile=str(certs["ca"]))
        self._server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._server_context.load_cert_chain(str(certs["cert"]), str(certs["key"]))
        self.refused: list[str] = []
        """The entity of each QueryPerf refused."""
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"https://127.0.0.1:{self._server.server_address[1]}/sdk"

    def __enter__(self) -> NoPermissionVCenter:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        server.daemon_threads = True
        server.socket = self._server_context.wrap_socket(server.socket, server_side=True)
        self._server = server
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                         daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def forward(self, method: str, path: str, headers: dict[str, str], body: bytes
                ) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPSConnection(*self.upstream, context=self._client, timeout=30)
        try:
            conn.request(method, path, body=body or None, headers=headers)
            answer = conn.getresponse()
            return answer.status, answer.getheaders(), answer.read()
        finally:
            conn.close()


def _handler_for(proxy: NoPermissionVCenter) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _relay(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.command == "POST" and b"<QueryPerf " in body:
                found = ENTITY.search(body)
                kind, moref = (found.group(1).decode(), found.group(2).decode()) if found \
                    else ("VirtualMachine", "?")
                proxy.refused.append(moref)
                self._answer(500, [("Content-Type", "text/xml; charset=utf-8")],
                             no_permission(kind, moref, proxy.privilege))
                return
            headers = {k: v for k, v in self.headers.items()
                       if k.lower() not in HOP_BY_HOP and k.lower() != "host"}
            headers["Accept-Encoding"] = "identity"
            status, answer_headers, answer = proxy.forward(self.command, self.path, headers, body)
            self._answer(status, [(k, v) for k, v in answer_headers
                                  if k.lower() not in HOP_BY_HOP], answer)

        def _answer(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
            self.send_response(status)
            for key, value in headers:
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _relay

        def log_message(self, *args: Any) -> None:
            pass

    return Handler
