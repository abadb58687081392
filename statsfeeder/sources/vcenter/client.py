"""One vCenter connection: TLS policy, login and re-login, and raw SOAP calls.

pyvmomi does the login, inventory and counter reads (small, infrequent). QueryPerf, the hot
path, goes through httpx with the same session cookie so its answer can be parsed raw.

No call waits longer than ``read_timeout_seconds`` for a whole answer (bounded.py), and no
answer vCenter sends, however malformed, escapes as anything but a ``SourceError``.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import mmap
import ssl
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim, vmodl

from statsfeeder.config import VCenterConfig
from statsfeeder.errors import (
    NotAuthenticated,
    QueryTooLarge,
    ResponseParseError,
    SourceError,
    VCenterUnavailable,
)
from statsfeeder.sources.vcenter.bounded import BoundedCaller, CallAbandoned, SocketTracker
from statsfeeder.tls import TLSSetupError, client_context

log = logging.getLogger(__name__)

T = TypeVar("T")


def tls_context(config: VCenterConfig) -> ssl.SSLContext:
    try:
        return client_context(config.tls, config.sdk_url, label=f"vCenter {config.name}",
                              key="tls", timeout=config.connect_timeout_seconds)
    except TLSSetupError as exc:
        raise VCenterUnavailable(str(exc)) from None


class VCenterClient:
    """Thread-safe wrapper: pyvmomi calls run in worker threads, never on the event loop."""

    def __init__(self, config: VCenterConfig) -> None:
        self.config = config
        self.name = config.name
        self._lock = threading.Lock()
        self._si: Any | None = None
        self._cookie: str | None = None
        self._http: httpx.Client | None = None
        self._api_version = "vim25/8.0.0.0"
        self._tracker = SocketTracker()
        self._calls = BoundedCaller(self._tracker)
        self._context: ssl.SSLContext | None = None
        self._generation = 0
        self.logins = 0

    # -- bounded calls -------------------------------------------------------------------
    def _bounded(self, what: str, fn: Callable[..., T], *args: Any,
                 timeout: float | None = None) -> T:
        """``fn(*args)`` in a thread, given up after ``timeout`` (default the read timeout);
        anything it raises is left as is (callers decide on re-login)."""
        try:
            return self._calls.call(what, timeout or self.config.read_timeout_seconds, fn, *args)
        except CallAbandoned as exc:
            self._forget_session()
            raise VCenterUnavailable(f"vCenter {self.name}: {exc}") from None

    def invoke(self, what: str, fn: Callable[..., T], *args: Any,
               timeout: float | None = None) -> T:
        """A bounded pyvmomi call whose failures all become ``SourceError``s."""
        try:
            return self._bounded(what, fn, *args, timeout=timeout)
        except SourceError:
            raise
        except Exception as exc:
            raise self._failure(what, exc) from None

    def abort(self) -> None:
        """End every call in flight now (cycle deadline, shutdown): their threads see their
        sockets closed; the session is dropped without a logout, the next call logs in."""
        self._generation += 1
        self._calls.abort()
        self._forget_session()

    def _forget_session(self) -> None:
        si, self._si = self._si, None
        self._tracker.shutdown_all()
        if si is not None:
            # Its idle pooled connections, read by no thread: closed now, not at exit
            # (pyVim keeps the last service instance). A call in flight closes its own.
            si._stub.DropConnections()

    def _failure(self, what: str, exc: BaseException) -> SourceError:
        where = f"vCenter {self.name}: {what}"
        if isinstance(exc, vim.fault.NotAuthenticated):
            return NotAuthenticated(f"{where}: session not authenticated")
        if isinstance(exc, vim.fault.InvalidLogin):
            return VCenterUnavailable(f"vCenter {self.name}: login refused for user "
                                      f"{self.config.credentials.username!r}")
        if isinstance(exc, ssl.SSLError):
            return VCenterUnavailable(f"{where}: TLS failed: {exc.reason or exc}")
        if isinstance(exc, http.client.IncompleteRead):
            return VCenterUnavailable(f"{where}: answer cut off after {len(exc.partial)} bytes")
        if isinstance(exc, (OSError, vim.fault.HostConnectFault)):
            return VCenterUnavailable(f"{where}: cannot connect: {exc}")
        if isinstance(exc, http.client.HTTPException) and str(exc)[:3].isdigit():
            return VCenterUnavailable(f"{where}: HTTP {exc}")
        if isinstance(exc, vmodl.MethodFault):
            return VCenterUnavailable(f"{where}: fault {type(exc).__name__}: "
                                      f"{getattr(exc, 'msg', '') or exc}")
        # ExpatError, AttributeError on None, "not a VIM server"...: an answer that is not
        # vSphere SOAP. Ask once what the server answers, to name the HTTP status.
        self._forget_session()
        kind = "" if type(exc) is Exception else f"; {type(exc).__name__}"
        return VCenterUnavailable(f"{where}: not a vSphere SOAP answer ({self._status()}{kind})")

    def _status(self) -> str:
        def probe() -> str:
            assert self._context is not None
            with httpx.Client(verify=self._context,
                              timeout=self.config.connect_timeout_seconds) as client:
                response = client.post(self.config.sdk_url, content=_envelope(
                    '<RetrieveServiceContent xmlns="urn:vim25"><_this type="ServiceInstance">'
                    "ServiceInstance</_this></RetrieveServiceContent>").encode(),
                    headers={"Content-Type": "text/xml; charset=utf-8"})
            kind = response.headers.get("content-type", "no content type").split(";")[0]
            return f"HTTP {response.status_code} {kind}"

        try:
            return self._calls.call("status probe", self.config.connect_timeout_seconds, probe)
        except Exception:
            return "no HTTP status"

    # -- session -----------------------------------------------------------------------
    def connect(self) -> Any:
        with self._lock:
            if self._si is not None:
                return self._si
            return self._login()

    def _login(self) -> Any:
        parts = urlsplit(self.config.sdk_url)
        timeout = self.config.connect_timeout_seconds + self.config.read_timeout_seconds
        context = self._bounded("TLS set-up", tls_context, self.config, timeout=timeout)
        self._context = self._tracker.install(context)
        si = self.invoke("login", lambda: SmartConnect(
            host=parts.hostname, port=parts.port or 443, user=self.config.credentials.username,
            pwd=self.config.credentials.secret(), sslContext=context,
            httpConnectionTimeout=self.config.read_timeout_seconds,
        ), timeout=timeout)
        stub = si._stub
        self._cookie = stub.cookie
        self._api_version = getattr(stub, "versionId", None) or self._api_version
        if self._http is not None:
            self._http.close()
        self._http = httpx.Client(
            verify=context, http2=False,
            timeout=httpx.Timeout(self.config.read_timeout_seconds,
                                  connect=self.config.connect_timeout_seconds),
            limits=httpx.Limits(max_connections=self.config.concurrency + 1),
        )
        self._si = si
        self.logins += 1
        log.info("vCenter %s: logged in as %s", self.name, self.config.credentials.username)
        return si

    def relogin(self) -> None:
        with self._lock:
            self._drop_session()
            self._login()

    def _drop_session(self) -> None:
        si, self._si = self._si, None
        if si is not None:
            with contextlib.suppress(Exception):
                # Short: a logout nobody answers must not hold up a shutdown.
                self._calls.call("logout", min(3.0, self.config.connect_timeout_seconds),
                                 Disconnect, si)

    def close(self) -> None:
        with self._lock:
            self._drop_session()
            if self._http is not None:
                self._http.close()
                self._http = None
        self._tracker.close_all()

    def current_time(self) -> datetime:
        """vCenter's clock; also the session probe. A dead session or connection (vCenter
        restarted) is replaced once by a fresh login before giving up."""
        for attempt in (1, 2):
            si = self.connect()
            try:
                moment: datetime = self._bounded("CurrentTime", si.CurrentTime)
                return moment
            except vim.fault.NotAuthenticated:
                self.relogin()
            except (OSError, http.client.HTTPException) as exc:
                with self._lock:
                    self._forget_session()
                if attempt == 2:
                    raise self._failure("CurrentTime", exc) from None
            except SourceError:
                raise
            except Exception as exc:
                raise self._failure("CurrentTime", exc) from None
        last: datetime = self.invoke("CurrentTime", self.connect().CurrentTime)
        return last

    # -- raw SOAP ------------------------------------------------------------------------
    def soap(self, body: str, max_bytes: int) -> bytes:
        """POST one SOAP body and read the answer, at most ``max_bytes`` of it (more raises
        QueryTooLarge, as vCenter's own size limit does) and within the read timeout, first
        to last byte. Transport errors raise VCenterUnavailable."""
        self.connect()
        http, cookie = self._http, self._cookie
        assert http is not None and cookie is not None
        generation = self._generation
        limit = self.config.read_timeout_seconds
        deadline = time.monotonic() + limit
        try:
            with http.stream(
                "POST", self.config.sdk_url, content=_envelope(body).encode(),
                headers={"Content-Type": "text/xml; charset=utf-8",
                         "SOAPAction": f'"urn:{self._api_version}"', "Cookie": cookie,
                         "Accept-Encoding": "gzip"},
            ) as response:
                status = response.status_code
                if status == 401:
                    raise NotAuthenticated(f"vCenter {self.name}: HTTP 401")
                if status not in (200, 500):
                    raise VCenterUnavailable(f"vCenter {self.name}: HTTP {status}")
                too_large = QueryTooLarge(f"answer larger than {max_bytes} bytes "
                                          "(vcenter max_answer_bytes)")
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and "content-encoding" not in response.headers \
                        and int(declared) > max_bytes:
                    raise too_large
                # Read into an anonymous mapping, not the heap: an oversized answer's pages
                # go back to the system when it is unmapped, whichever thread read it.
                with mmap.mmap(-1, max_bytes) as buffer:
                    for part in response.iter_bytes():
                        if buffer.tell() + len(part) > max_bytes:
                            raise too_large
                        if time.monotonic() > deadline:
                            raise httpx.ReadTimeout("whole answer too slow")
                        if self._generation != generation:
                            raise VCenterUnavailable(f"vCenter {self.name}: request abandoned")
                        buffer.write(part)
                    content = buffer[:buffer.tell()]
        except httpx.TimeoutException:
            raise VCenterUnavailable(f"vCenter {self.name}: request timed out after "
                                     f"{limit:g} s") from None
        except httpx.TransportError as exc:
            self._si = None  # log in afresh next time (vCenter may have restarted)
            raise VCenterUnavailable(f"vCenter {self.name}: {exc.__class__.__name__}: {exc}") \
                from None
        if b"Envelope" not in content[:4096]:
            kind = response.headers.get("content-type", "no content type").split(";")[0]
            raise ResponseParseError(f"vCenter {self.name}: HTTP {status} {kind}: not a SOAP "
                                     "answer")
        return content


def _envelope(body: str) -> str:
    return ('<?xml version="1.0" encoding="UTF-8"?>'
            '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
            'xmlns:xsd="http://www.w3.org/2001/XMLSchema" '
            'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
            f"<soapenv:Body>{body}</soapenv:Body></soapenv:Envelope>")
