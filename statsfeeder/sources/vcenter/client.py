"""One vCenter connection: TLS policy, login and re-login, and raw SOAP calls.

pyvmomi does the login, inventory and counter reads (small, infrequent). QueryPerf, the hot
path, goes through httpx with the same session cookie so its answer can be parsed raw.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import ssl
import threading
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim

from statsfeeder.config import VCenterConfig
from statsfeeder.errors import NotAuthenticated, VCenterUnavailable
from statsfeeder.tls import TLSSetupError, client_context

log = logging.getLogger(__name__)


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
        self.logins = 0

    # -- session -----------------------------------------------------------------------
    def connect(self) -> Any:
        with self._lock:
            if self._si is not None:
                return self._si
            return self._login()

    def _login(self) -> Any:
        parts = urlsplit(self.config.sdk_url)
        context = tls_context(self.config)
        try:
            si = SmartConnect(
                host=parts.hostname, port=parts.port or 443, user=self.config.credentials.username,
                pwd=self.config.credentials.secret(), sslContext=context,
                connectionPoolTimeout=self.config.read_timeout_seconds,
            )
        except vim.fault.InvalidLogin:
            raise VCenterUnavailable(f"vCenter {self.name}: login refused for user "
                                     f"{self.config.credentials.username!r}") from None
        except ssl.SSLError as exc:
            raise VCenterUnavailable(f"vCenter {self.name}: TLS failed: {exc.reason}") from None
        except (OSError, vim.fault.HostConnectFault) as exc:
            raise VCenterUnavailable(f"vCenter {self.name}: cannot connect: {exc}") from None
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
        if self._si is not None:
            with contextlib.suppress(Exception):
                Disconnect(self._si)
        self._si = None

    def close(self) -> None:
        with self._lock:
            self._drop_session()
            if self._http is not None:
                self._http.close()
                self._http = None

    def current_time(self) -> datetime:
        """vCenter's clock; also the session probe. A dead session or connection (vCenter
        restarted) is replaced once by a fresh login before giving up."""
        for attempt in (1, 2):
            try:
                moment: datetime = self.connect().CurrentTime()
                return moment
            except vim.fault.NotAuthenticated:
                self.relogin()
            except (OSError, http.client.HTTPException) as exc:
                with self._lock:
                    self._drop_session()
                if attempt == 2:
                    raise VCenterUnavailable(f"vCenter {self.name}: {exc}") from None
        return self.connect().CurrentTime()  # type: ignore[no-any-return]

    # -- raw SOAP ------------------------------------------------------------------------
    def soap(self, body: str) -> bytes:
        """POST one SOAP body; transport errors raise VCenterUnavailable."""
        self.connect()
        http, cookie = self._http, self._cookie
        assert http is not None and cookie is not None
        envelope = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
            'xmlns:xsd="http://www.w3.org/2001/XMLSchema" '
            'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
            f"<soapenv:Body>{body}</soapenv:Body></soapenv:Envelope>"
        )
        try:
            response = http.post(
                self.config.sdk_url, content=envelope.encode(),
                headers={"Content-Type": "text/xml; charset=utf-8",
                         "SOAPAction": f'"urn:{self._api_version}"', "Cookie": cookie,
                         "Accept-Encoding": "gzip"},
            )
        except httpx.TimeoutException:
            raise VCenterUnavailable(f"vCenter {self.name}: request timed out after "
                                     f"{self.config.read_timeout_seconds:g} s") from None
        except httpx.TransportError as exc:
            self._drop_session()
            raise VCenterUnavailable(f"vCenter {self.name}: {exc.__class__.__name__}: {exc}") \
                from None
        if response.status_code == 401:
            raise NotAuthenticated(f"vCenter {self.name}: HTTP 401")
        if response.status_code not in (200, 500):
            raise VCenterUnavailable(f"vCenter {self.name}: HTTP {response.status_code}")
        return response.content
