"""HTTP to vCD's API as a provider administrator: the session (login, a new login once on a
401, logout), the query service's pages (JSON or XML records), and the errors a refresh can
end with. The password and the token are never logged nor put in an exception message."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import ssl
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from statsfeeder.config import VcdConfig
from statsfeeder.errors import StatsfeederError
from statsfeeder.tls import TLSSetupError, client_context

log = logging.getLogger(__name__)

VcdApiConfig = VcdConfig.Api

TOKEN_HEADER = "X-VMWARE-VCLOUD-ACCESS-TOKEN"
LOGIN_PATH = "/cloudapi/1.0.0/sessions/provider"
LOGOUT_PATH = "/cloudapi/1.0.0/sessions/current"
QUERY_PATH = "/api/query"
MAX_PAGES = 100_000
"""Guard against a server that keeps announcing a next page (12.8 M records)."""


class _RedactTokens(logging.Filter):
    """httpcore's DEBUG trace prints response headers, and so vCD's session token: blank it.
    Installed on httpcore's loggers by the first resolver; changes nothing else."""

    PATTERN = re.compile(r"(\(b'(?:x-vmware-vcloud-access-token|x-vcloud-authorization|"
                         r"authorization)', b')[^']*(')", re.IGNORECASE)

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and "b'" in record.msg:
            record.msg = self.PATTERN.sub(r"\1<redacted>\2", record.msg)
        return True


_REDACT = _RedactTokens()


def _install_redaction() -> None:
    for name in ("httpcore.http11", "httpcore.http2"):
        logger = logging.getLogger(name)
        if _REDACT not in logger.filters:
            logger.addFilter(_REDACT)


class VcdUnavailable(StatsfeederError):
    """A refresh failed; ``kind`` says why: connect, timeout, tls, auth, http, parse,
    internal."""

    retriable = True

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def tls_context(config: VcdApiConfig) -> ssl.SSLContext:
    try:
        return client_context(config.tls, config.base_url, label=f"vCD {config.base_url}",
                              key="vcd.api.tls", timeout=config.connect_timeout_seconds)
    except TLSSetupError as exc:
        raise VcdUnavailable(str(exc), exc.kind) from None


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass(slots=True)
class _Page:
    records: list[dict[str, str]]
    total: int | None
    has_next: bool


def _parse_json_page(content: bytes) -> _Page:
    document = json.loads(content)
    if not isinstance(document, dict):
        raise ValueError("the answer is not a JSON object")
    raw = document.get("record") or []
    if not isinstance(raw, list):
        raise ValueError("'record' is not a list")
    records = [{k: _text(v) for k, v in item.items() if not isinstance(v, dict | list)}
               for item in raw if isinstance(item, dict)]
    links = document.get("link") or []
    has_next = any(isinstance(link, dict) and link.get("rel") == "nextPage" for link in links)
    total = document.get("total")
    return _Page(records, int(total) if total is not None else None, has_next)


def _parse_xml_page(content: bytes) -> _Page:
    root = ET.fromstring(content)
    if not root.tag.endswith("QueryResultRecords"):
        raise ValueError(f"root element is {root.tag}, not QueryResultRecords")
    records: list[dict[str, str]] = []
    has_next = False
    for child in root:
        local = child.tag.rsplit("}", 1)[-1]
        if local == "Link":
            has_next = has_next or child.get("rel") == "nextPage"
        elif local.endswith("Record"):
            records.append(dict(child.attrib))
    total = root.get("total")
    return _Page(records, int(total) if total is not None else None, has_next)


class VcdSession:
    """One provider session with a vCD: logs in on first use and again once on a 401."""

    def __init__(self, config: VcdApiConfig) -> None:
        _install_redaction()
        self.config = config
        self.base_url = config.base_url
        self._http: httpx.Client | None = None
        self._token: str | None = None
        self.logins = 0

    def close(self) -> None:
        """Log out (best effort) and close the connections."""
        http, token = self._http, self._token
        self._http, self._token = None, None
        if http is None:
            return
        if token is not None:
            with contextlib.suppress(httpx.HTTPError):
                http.delete(self.base_url + LOGOUT_PATH,
                            headers=self.headers(token, as_json=True))
        http.close()

    def query(self, kind: str, *, fields: tuple[str, ...] = (), filter: str | None = None,
              on_page: Callable[[], None] = lambda: None) -> Iterator[dict[str, str]]:
        """Every record of a ``/api/query`` of ``kind``, page after page."""
        page_size = self.config.page_size
        seen = 0
        for number in range(1, MAX_PAGES + 1):
            params: dict[str, str | int] = {"type": kind, "format": "records", "page": number,
                                            "pageSize": page_size}
            if fields:
                params["fields"] = ",".join(fields)
            if filter:
                params["filter"] = filter
            response = self.get(QUERY_PATH, params)
            try:
                page = (_parse_json_page(response.content) if self.config.format == "json"
                        else _parse_xml_page(response.content))
            except (ValueError, ET.ParseError) as exc:
                raise VcdUnavailable(f"vCD {self.base_url}: cannot parse the {kind} query page "
                                     f"{number}: {exc}", "parse") from None
            on_page()
            seen += len(page.records)
            yield from page.records
            if not page.records:
                return
            more_by_total = page.total is not None and seen < page.total
            if not page.has_next and not more_by_total:
                return
        raise VcdUnavailable(f"vCD {self.base_url}: the {kind} query never ends", "parse")

    def headers(self, token: str | None, *, as_json: bool) -> dict[str, str]:
        version = self.config.api_version
        accept = (f"application/*+json;version={version}" if as_json
                  else f"application/*+xml;version={version}")
        headers = {"Accept": accept}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def _client(self) -> httpx.Client:
        if self._http is None:
            self._http = httpx.Client(
                verify=tls_context(self.config),
                timeout=httpx.Timeout(self.config.timeout_seconds,
                                      connect=self.config.connect_timeout_seconds),
                limits=httpx.Limits(max_connections=2),
            )
        return self._http

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        url = self.base_url + path
        try:
            return self._client().request(method, url, **kwargs)
        except httpx.TimeoutException:
            raise VcdUnavailable(f"vCD {self.base_url}: {path} timed out", "timeout") from None
        except httpx.TransportError as exc:
            # A dead connection pool is rebuilt on the next call.
            self._drop_client()
            reason = _ssl_reason(exc)
            if reason is not None:
                raise VcdUnavailable(f"vCD {self.base_url}: TLS failed: {reason}", "tls") \
                    from None
            raise VcdUnavailable(f"vCD {self.base_url}: cannot connect: "
                                 f"{exc.__class__.__name__}: {exc}", "connect") from None

    def _drop_client(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def _login(self) -> str:
        username = self.config.credentials.username
        response = self._send(
            "POST", LOGIN_PATH, auth=(username, self.config.credentials.secret()),
            headers={"Accept": f"application/json;version={self.config.api_version}"})
        if response.status_code in (401, 403):
            raise VcdUnavailable(f"vCD {self.base_url}: login refused for user {username!r} "
                                 f"(HTTP {response.status_code}; a System org user is needed)",
                                 "auth")
        if response.status_code != 200:
            raise VcdUnavailable(f"vCD {self.base_url}: login answered HTTP "
                                 f"{response.status_code}{_detail(response)}", "http")
        token: str | None = response.headers.get(TOKEN_HEADER)
        if not token:
            raise VcdUnavailable(f"vCD {self.base_url}: login answer has no {TOKEN_HEADER} "
                                 "header", "auth")
        self._token = token
        self.logins += 1
        log.info("vCD %s: logged in as %s", self.base_url, username)
        return token

    def get(self, path: str, params: Mapping[str, str | int]) -> httpx.Response:
        json_format = self.config.format == "json"
        token = self._token or self._login()
        response = self._send("GET", path, params=params,
                              headers=self.headers(token, as_json=json_format))
        if response.status_code == 401:
            log.info("vCD %s: session no longer valid (HTTP 401); logging in again",
                     self.base_url)
            self._token = None
            token = self._login()
            response = self._send("GET", path, params=params,
                                  headers=self.headers(token, as_json=json_format))
            if response.status_code == 401:
                self._token = None
                raise VcdUnavailable(f"vCD {self.base_url}: {path} refused a fresh session "
                                     "(HTTP 401)", "auth")
        if response.status_code != 200:
            raise VcdUnavailable(f"vCD {self.base_url}: {path}?type={params.get('type')} "
                                 f"answered HTTP {response.status_code}{_detail(response)}",
                                 "http")
        return response




def _ssl_reason(exc: BaseException) -> str | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return str(seen.reason or seen)
        seen = seen.__cause__ or seen.__context__
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text or "SSL" in text:
        return text
    return None


def _detail(response: httpx.Response) -> str:
    """vCD's error message (its ``Error``/JSON ``message``), shortened, for the log line."""
    text = response.text[:2000]
    message = ""
    try:
        document = json.loads(text)
        if isinstance(document, dict):
            message = str(document.get("message") or "")
    except ValueError:
        try:
            message = ET.fromstring(text).get("message") or ""
        except ET.ParseError:
            message = ""
    message = " ".join(message.split())[:200]
    return f": {message}" if message else ""
