"""A hostile vCenter double (tests only): an HTTPS server that misbehaves on purpose.

vcsim cannot be made to stall, drip, cut an answer short, answer with a web page or send
300 MB, so this small server does. By default it forwards every request to a real vcsim
(``upstream``) and relays the answer; ``mode`` makes it misbehave for every request, or only
for QueryPerf calls with ``queryperf_mode``. Modes:

- ``proxy``: relay to vcsim (the default).
- ``silent``: accept the connection and the request, never answer.
- ``drip``: answer a SOAP-looking body one byte a second.
- ``cut``: promise a body with Content-Length, send half of it, close.
- ``text500``: ``500 Internal Server Error`` with a text/plain body.
- ``html``: a 200 HTML login page (a proxy or load balancer in the way).
- ``huge``: a QueryPerfResponse of ``huge_bytes`` without a length, streamed as fast as
  possible.
- ``script``: QueryPerf answered by ``script(request_body) -> bytes`` (shaped answers).
"""

from __future__ import annotations

import contextlib
import http.client
import ssl
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

CERTS = Path.home() / ".cache" / "statsfeeder" / "certs"
HUGE_PREFIX = (
    b'<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope '
    b'xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
    b'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>'
    b'<QueryPerfResponse xmlns="urn:vim25"><returnval xsi:type="PerfEntityMetricCSV">'
    b'<entity type="VirtualMachine">vm-1</entity><sampleInfoCSV>'
)
HTML = (b"<!DOCTYPE html><html><head><title>Sign in</title></head><body><form>"
        b"<input name=user></form></body></html>")


class HostileVCenter:
    def __init__(self, upstream: dict[str, str] | None = None, *, mode: str = "proxy",
                 huge_bytes: int = 300 * 1024 * 1024) -> None:
        self.mode = mode
        self.queryperf_mode: str | None = None
        self.script: Callable[[bytes], bytes] | None = None
        self.huge_bytes = huge_bytes
        self.requests: list[str] = []
        self._upstream = urlsplit(upstream["VCSIM_URL"]) if upstream else None
        self._upstream_ca = upstream.get("VCSIM_CA_FILE") if upstream else None
        self._stop = threading.Event()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(CERTS / "server.pem", CERTS / "server.key")
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.double = self
        self._server.tls = context
        self.port = self._server.server_address[1]
        self.url = f"https://127.0.0.1:{self.port}/sdk"
        self.ca_file = str(CERTS / "ca.pem")
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def env(self, base: dict[str, str]) -> dict[str, str]:
        """vcsim's facts with the URL pointing here."""
        return {**base, "VCSIM_URL": self.url, "VCSIM_CA_FILE": self.ca_file}

    def close(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> HostileVCenter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- behaviours ----------------------------------------------------------------------
    def handle(self, handler: _Handler, body: bytes) -> None:
        is_query_perf = b"<QueryPerf " in body or b"<QueryPerf>" in body
        mode = self.queryperf_mode if is_query_perf and self.queryperf_mode else self.mode
        self.requests.append(f"{handler.command} {handler.path} {mode}")
        if mode == "silent":
            self._stop.wait()
            handler.close_connection = True
        elif mode == "drip":
            handler.send_response(200)
            handler.send_header("Content-Type", "text/xml")
            handler.send_header("Content-Length", str(len(HUGE_PREFIX) + 1000))
            handler.end_headers()
            for byte in HUGE_PREFIX:
                if self._stop.is_set():
                    break
                handler.wfile.write(bytes([byte]))
                handler.wfile.flush()
                time.sleep(1)
            handler.close_connection = True
        elif mode == "cut":
            handler.send_response(200)
            handler.send_header("Content-Type", "text/xml")
            handler.send_header("Content-Length", str(2 * len(HUGE_PREFIX)))
            handler.end_headers()
            handler.wfile.write(HUGE_PREFIX)
            handler.wfile.flush()
            handler.close_connection = True
        elif mode == "text500":
            _reply(handler, 500, "text/plain", b"Internal Server Error\n")
        elif mode == "html":
            _reply(handler, 200, "text/html", HTML)
        elif mode == "huge":
            self._huge(handler)
        elif mode == "script" and is_query_perf and self.script is not None:
            _reply(handler, 200, "text/xml; charset=utf-8", self.script(body))
        else:
            self._relay(handler, body)

    def _huge(self, handler: _Handler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "text/xml; charset=utf-8")
        # No length: the body runs until the connection closes, so only reading it tells.
        handler.send_header("Connection", "close")
        handler.end_headers()
        block = b"20,2026-01-01T00:00:00Z," * 2730  # about 64 KiB
        sent = 0
        with contextlib.suppress(OSError):
            handler.wfile.write(HUGE_PREFIX)
            sent += len(HUGE_PREFIX)
            while sent < self.huge_bytes and not self._stop.is_set():
                piece = block[: self.huge_bytes - sent]
                handler.wfile.write(piece)
                sent += len(piece)
        handler.close_connection = True

    def _relay(self, handler: _Handler, body: bytes) -> None:
        if self._upstream is None:
            _reply(handler, 503, "text/plain", b"no upstream\n")
            return
        context = ssl.create_default_context(cafile=self._upstream_ca)
        upstream = http.client.HTTPSConnection(self._upstream.hostname or "127.0.0.1",
                                               self._upstream.port or 443, context=context,
                                               timeout=60)
        headers = {k: v for k, v in handler.headers.items()
                   if k.lower() not in ("host", "accept-encoding", "content-length",
                                        "connection")}
        try:
            upstream.request(handler.command, handler.path, body=body or None, headers=headers)
            answer = upstream.getresponse()
            payload = answer.read()
            kept = [(k, v) for k, v in answer.getheaders()
                    if k.lower() in ("content-type", "set-cookie")]
        finally:
            upstream.close()
        handler.send_response(answer.status)
        for key, value in kept:
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)


def _reply(handler: _Handler, status: int, kind: str, payload: bytes) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", kind)
    handler.send_header("Content-Length", str(len(payload)))
    handler.end_headers()
    handler.wfile.write(payload)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    double: HostileVCenter
    tls: ssl.SSLContext

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake in the connection's own thread, so one stalled client cannot
        # hold the accept loop.
        try:
            request.settimeout(30)
            wrapped = self.tls.wrap_socket(request, server_side=True)
            wrapped.settimeout(None)
        except (OSError, ssl.SSLError):
            return
        self.RequestHandlerClass(wrapped, client_address, self)

    def handle_error(self, request: Any, client_address: Any) -> None:
        return  # clients hanging up on a misbehaving answer are the point


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def _any(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        try:
            self.server.double.handle(self, body)
        except OSError:
            self.close_connection = True

    do_GET = do_POST = _any

    def log_message(self, format: str, *args: Any) -> None:
        return
