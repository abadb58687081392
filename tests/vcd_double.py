"""A test double of the vCloud Director API parts statsfeeder reads.

No vCD simulator exists (vCD is not downloadable for tests, and nothing like vcsim exists for
it); this double is built from the documented API (VMware Cloud Director API reference: the
query service and the CloudAPI provider session; see docs/domain.md, "Mapping a vCenter VM to
its vCD entity ID") and is the ONLY test double of a peer in this project. Everything else
runs against real peers (vcsim, Cassandra, ...). It implements, over HTTPS with the project's
test CA (``peers.common.ensure_certs()``), on 127.0.0.1:

* ``POST /cloudapi/1.0.0/sessions/provider``: basic auth ``user@System:password`` (other orgs
  are refused: a provider session needs the System org); the bearer token in the
  ``X-VMWARE-VCLOUD-ACCESS-TOKEN`` header. ``DELETE /cloudapi/1.0.0/sessions/current`` ends it.
* ``GET /cloudapi/1.0.0/sessions/current``: the session of the bearer token (``user``,
  ``org`` with ``name`` and ``id``, ``roles``), 401 for an unknown or expired one; tenant
  sessions come from ``tenant_session(user, org)`` (as if the user had logged in to ``org``).
* ``GET /api/query?type=virtualCenter|organization|adminVM&format=records`` with ``page``
  (1-based; a page past the last is a 400), ``pageSize`` (default 25, capped at 128 and echoed),
  ``filter`` (``attr==value`` joined by ``;``), ``fields`` (href is always returned; an unknown
  field or filter attribute is a 400), ``sortAsc``/``sortDesc``. ``total``, ``page``,
  ``pageSize`` and ``firstPage``/``previousPage``/``nextPage``/``lastPage`` links are given in
  both media types.
* Content negotiation on ``Accept``: ``application/*+json;version=V`` gives JSON (records under
  ``record``, booleans as JSON booleans, ``_type`` and ``otherAttributes`` like vCD), anything
  else XML (``QueryResultRecords`` in the vcloud/v1.5 namespace with ``AdminVMRecord``,
  ``VirtualCenterRecord``, ``OrgRecord`` elements). A missing or unsupported ``version`` is a
  406, like vCD.
* ``Authorization: Bearer <token>`` (or ``x-vcloud-authorization``) on every /api request; a
  bad, unknown or expired token is a 401.

Controls for tests: ``add_vcenter``, ``add_vm`` (templates too), ``rename_vm``, ``move_vm``,
``delete_vm``; ``expire_tokens()`` and ``expire_tokens_after(n)`` (expire once ``n`` more
authenticated requests were answered: mid-pagination); ``go_down(mode)`` with ``"503"`` (every
request answered 503), ``"refuse"`` (listening socket closed, open connections dropped) or
``"stall"`` (requests accepted, never answered), and ``come_back()``; ``garbage`` (a body
served, 200, instead of query answers: a proxy's error page). Counters: ``logins``,
``requests`` (method, path, query, Accept) and ``pages_served(type)``.

Not implemented (statsfeeder does not use them): ``references``/``idrecords`` formats,
filters other than equality, metadata, the legacy ``/api/sessions`` login.
"""

from __future__ import annotations

import contextlib
import math
import secrets
import socket
import ssl
import threading
import uuid as uuidlib
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import urlencode

from peers.common import ensure_certs
from tests.vcd_double_wire import RECORD_ELEMENT, basic_auth, handler_for, record_text, vcd_error

MAX_PAGE_SIZE = 128
DEFAULT_PAGE_SIZE = 25
DownMode = Literal["503", "refuse", "stall"]

FIELDS = {
    "adminVM": ("name", "moref", "vc", "container", "containerName", "vdc", "vdcName", "org",
                "isVAppTemplate", "isDeleted", "status", "vmNameInVc", "guestOs",
                "numberOfCpus", "memoryMB", "hardwareVersion", "isDeployed", "isBusy"),
    "virtualCenter": ("name", "url", "uuid", "vcVersion", "isEnabled", "isConnected",
                      "listenerState", "isSupported"),
    "organization": ("name", "displayName", "isEnabled", "numberOfVdcs"),
}


@dataclass
class DoubleVm:
    uuid: str
    name: str
    moref: str
    vc_id: str
    vapp: str
    vdc: str
    org: str
    template: bool = False


@dataclass
class DoubleVCenter:
    id: str
    name: str
    url: str
    uuid: str


class VcdDouble:
    """Start with ``start()`` (or as a context manager); ``url`` and ``ca_file`` configure the
    client."""

    def __init__(self, *, username: str = "administrator", password: str = "vcd-test-password",
                 host: str = "127.0.0.1") -> None:
        self.username = username
        self.password = password
        self.host = host
        self.port = 0
        certs = ensure_certs()
        self.ca_file = str(certs["ca"])
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._context.load_cert_chain(str(certs["cert"]), str(certs["key"]))
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._down: DownMode | None = None
        self._back = threading.Event()
        self._back.set()
        self._tokens: set[str] = set()
        self._sessions: dict[str, tuple[str, str]] = {}  # token -> (user, org)
        self._expire_after: int | None = None
        self.garbage: bytes | None = None
        """When set, query answers are 200 with this body (a proxy's error page, say)."""
        self.vcenters: dict[str, DoubleVCenter] = {}
        self.orgs: dict[str, str] = {}  # name -> uuid
        self.vdcs: dict[str, str] = {}
        self.vapps: dict[str, str] = {}
        self.vms: dict[str, DoubleVm] = {}
        self.logins = 0
        self.requests: list[tuple[str, str, dict[str, str], str]] = []
        """(method, path, query parameters, Accept header) of every request received."""
        self._connections: set[socket.socket] = set()

    # -- life cycle -----------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def start(self) -> VcdDouble:
        self._serve()
        return self

    def stop(self) -> None:
        self._back.set()
        self._close_server()

    def __enter__(self) -> VcdDouble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self) -> None:
        server = ThreadingHTTPServer((self.host, self.port), handler_for(self))
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="vcd-double",
                                        kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()

    def _close_server(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        with self._lock:
            connections, self._connections = self._connections, set()
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    # -- faults ---------------------------------------------------------------------------
    def go_down(self, mode: DownMode = "503") -> None:
        """``503``: answer every request 503; ``refuse``: close the listening socket and every
        open connection (connection refused); ``stall``: accept, never answer."""
        with self._lock:
            self._down = mode
            if mode == "stall":
                self._back.clear()
        if mode == "refuse":
            self._close_server()

    def come_back(self) -> None:
        with self._lock:
            mode, self._down = self._down, None
            self._back.set()
        if mode == "refuse" and self._server is None:
            self._serve()

    def expire_tokens(self) -> None:
        """Every session issued so far ends, as when vCD's idle timeout passes."""
        with self._lock:
            self._tokens.clear()

    def expire_tokens_after(self, requests: int) -> None:
        """Expire every session once ``requests`` more authenticated requests were answered."""
        with self._lock:
            self._expire_after = requests

    def tenant_session(self, user: str, org: str) -> str:
        """A session token of ``user`` logged in to ``org`` (created on first use)."""
        token = secrets.token_urlsafe(24)
        with self._lock:
            self.orgs.setdefault(org, str(uuidlib.uuid4()))
            self._tokens.add(token)
            self._sessions[token] = (user, org)
        return token

    def _current_session(self, token: str) -> dict[str, Any]:
        with self._lock:
            user, org = self._sessions[token]
            org_id = self.orgs.get(org, "a93c9db9-7471-3192-8d09-a8f7eeda85f9")
        return {"id": f"urn:vcloud:session:{uuidlib.uuid4()}", "site": {"name": "double"},
                "user": {"name": user, "id": f"urn:vcloud:user:{uuidlib.uuid4()}"},
                "org": {"name": org, "id": f"urn:vcloud:org:{org_id}"},
                "roles": ["System Administrator" if org == "System" else "vApp User"],
                "sessionIdleTimeoutMinutes": 30}

    # -- inventory ------------------------------------------------------------------------
    def add_vcenter(self, name: str, url: str, *, uuid: str | None = None) -> str:
        """Register a vCenter (a vimServer); returns its vimServer id."""
        ident = str(uuidlib.uuid4())
        with self._lock:
            self.vcenters[ident] = DoubleVCenter(ident, name, url, uuid or str(uuidlib.uuid4()))
        return ident

    def add_vm(self, vc_id: str, moref: str, name: str, *, vapp: str, vdc: str, org: str,
               template: bool = False) -> str:
        """A VM (or template VM) in vApp ``vapp`` of VDC ``vdc`` of org ``org`` (created on
        first use, by name); returns the VM's uuid."""
        ident = str(uuidlib.uuid4())
        with self._lock:
            assert vc_id in self.vcenters, f"unknown vCenter {vc_id}"
            for table, key in ((self.orgs, org), (self.vdcs, vdc), (self.vapps, vapp)):
                table.setdefault(key, str(uuidlib.uuid4()))
            self.vms[ident] = DoubleVm(ident, name, moref, vc_id, vapp, vdc, org, template)
        return ident

    def rename_vm(self, vm: str, name: str) -> None:
        with self._lock:
            self.vms[vm].name = name

    def move_vm(self, vm: str, *, vapp: str | None = None, vdc: str | None = None,
                org: str | None = None) -> None:
        with self._lock:
            record = self.vms[vm]
            if org is not None:
                self.orgs.setdefault(org, str(uuidlib.uuid4()))
                record.org = org
            if vdc is not None:
                self.vdcs.setdefault(vdc, str(uuidlib.uuid4()))
                record.vdc = vdc
            if vapp is not None:
                self.vapps.setdefault(vapp, str(uuidlib.uuid4()))
                record.vapp = vapp

    def delete_vm(self, vm: str) -> None:
        with self._lock:
            del self.vms[vm]

    # -- observability --------------------------------------------------------------------
    def pages_served(self, kind: str) -> int:
        with self._lock:
            return sum(1 for method, path, query, _ in self.requests
                       if method == "GET" and path == "/api/query" and query.get("type") == kind)

    # -- records --------------------------------------------------------------------------
    def _records(self, kind: str) -> list[dict[str, Any]]:
        base = self.url
        with self._lock:
            if kind == "virtualCenter":
                return [{"href": f"{base}/api/admin/extension/vimServer/{vc.id}", "name": vc.name,
                         "url": vc.url, "uuid": vc.uuid, "vcVersion": "8.0.2",
                         "isEnabled": True, "isConnected": True, "listenerState": "CONNECTED",
                         "isSupported": True} for vc in self.vcenters.values()]
            if kind == "organization":
                return [{"href": f"{base}/api/org/{ident}", "name": name, "displayName": name,
                         "isEnabled": True,
                         "numberOfVdcs": sum(1 for v in self.vms.values() if v.org == name)}
                        for name, ident in self.orgs.items()]
            records = []
            for vm in self.vms.values():
                container = (f"{base}/api/vAppTemplate/vappTemplate-{self.vapps[vm.vapp]}"
                             if vm.template else f"{base}/api/vApp/vapp-{self.vapps[vm.vapp]}")
                records.append({
                    "href": f"{base}/api/vApp/vm-{vm.uuid}", "name": vm.name, "moref": vm.moref,
                    "vc": f"{base}/api/admin/extension/vimServer/{vm.vc_id}",
                    "container": container, "containerName": vm.vapp,
                    "vdc": f"{base}/api/vdc/{self.vdcs[vm.vdc]}", "vdcName": vm.vdc,
                    "org": f"{base}/api/org/{self.orgs[vm.org]}",
                    "isVAppTemplate": vm.template, "isDeleted": False,
                    "status": "POWERED_ON", "vmNameInVc": f"{vm.name} ({vm.uuid})",
                    "guestOs": "Other (64-bit)", "numberOfCpus": 1, "memoryMB": 1024,
                    "hardwareVersion": 19, "isDeployed": True, "isBusy": False,
                })
            return records

    # -- request handling (called from the handler) ---------------------------------------
    def _login(self, authorization: str) -> tuple[int, dict[str, str], dict[str, Any]]:
        user, org, password = basic_auth(authorization)
        if (user, org.lower(), password) != (self.username, "system", self.password):
            return 401, {}, vcd_error(401, "UNAUTHORIZED", "Invalid credentials or not a "
                                      "provider (System org) user")
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._tokens.add(token)
            self._sessions[token] = (user, "System")
            self.logins += 1
        body = {"id": f"urn:vcloud:session:{uuidlib.uuid4()}", "site": {"name": "double"},
                "user": {"name": user}, "org": {"name": "System"},
                "roles": ["System Administrator"], "sessionIdleTimeoutMinutes": 30}
        return 200, {"X-VMWARE-VCLOUD-ACCESS-TOKEN": token,
                     "X-VMWARE-VCLOUD-TOKEN-TYPE": "Bearer"}, body

    def _authorized(self, headers: Any) -> str | None:
        value = headers.get("Authorization", "")
        token = value[7:] if value.startswith("Bearer ") else headers.get(
            "x-vcloud-authorization", "")
        with self._lock:
            return token if token and token in self._tokens else None

    def _answered(self) -> None:
        with self._lock:
            if self._expire_after is not None:
                self._expire_after -= 1
                if self._expire_after <= 0:
                    self._tokens.clear()
                    self._expire_after = None

    def _query(self, query: dict[str, str]) -> tuple[int, dict[str, Any]]:
        kind = query.get("type", "")
        if kind not in RECORD_ELEMENT:
            return 400, vcd_error(400, "BAD_REQUEST", f"Unknown query type {kind!r}")
        if query.get("format", "records") != "records":
            return 400, vcd_error(400, "BAD_REQUEST", "only format=records in this double")
        try:
            page = int(query.get("page", "1"))
            size = min(int(query.get("pageSize", str(DEFAULT_PAGE_SIZE))), MAX_PAGE_SIZE)
        except ValueError:
            return 400, vcd_error(400, "BAD_REQUEST", "page and pageSize must be integers")
        if page < 1 or size < 1:
            return 400, vcd_error(400, "BAD_REQUEST", "page and pageSize must be positive")
        known = ("href", *FIELDS[kind])
        fields = [f for f in query.get("fields", "").split(",") if f]
        for name in fields:
            if name not in known:
                return 400, vcd_error(400, "BAD_REQUEST", f"Field {name!r} is not valid for "
                                      f"query type {kind}")
        records = self._records(kind)
        for clause in [c for c in query.get("filter", "").split(";") if c]:
            attr, sep, value = clause.partition("==")
            if not sep or attr not in known:
                return 400, vcd_error(400, "BAD_REQUEST", f"Invalid filter {clause!r}")
            records = [r for r in records if record_text(r.get(attr)) == value]
        if query.get("sortAsc") in known:
            records.sort(key=lambda r: record_text(r.get(query["sortAsc"])))
        elif query.get("sortDesc") in known:
            records.sort(key=lambda r: record_text(r.get(query["sortDesc"])), reverse=True)
        total = len(records)
        last = max(1, math.ceil(total / size))
        if page > last:
            return 400, vcd_error(400, "BAD_REQUEST",
                                  f"page {page} is out of range (last {last})")
        chosen = records[(page - 1) * size:page * size]
        if fields:
            chosen = [{k: v for k, v in r.items() if k == "href" or k in fields} for r in chosen]

        def link(rel: str, number: int) -> dict[str, str]:
            return {"rel": rel, "type": "application/vnd.vmware.vcloud.query.records+xml",
                    "href": f"{self.url}/api/query?" + urlencode({**query, "page": number,
                                                                  "pageSize": size})}

        links = []
        if last > 1:
            links.append(link("firstPage", 1))
        if page > 1:
            links.append(link("previousPage", page - 1))
        if page < last:
            links.append(link("nextPage", page + 1))
        if last > 1:
            links.append(link("lastPage", last))
        return 200, {"kind": kind, "page": page, "pageSize": size, "total": total,
                     "links": links, "records": chosen,
                     "href": f"{self.url}/api/query?" + urlencode(query)}
