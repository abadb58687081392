"""VM identities from the vCloud Director query service: ``(vCenter, moref) -> EntityId``.

``VcdApiResolver`` keeps an in-memory map and implements the ``Resolver`` protocol:
``resolve(vm)`` is a dictionary lookup, safe to call on the event loop. The map is rebuilt by
``refresh()``, which is blocking (HTTP) and must run in a worker thread. How a service uses it::

    resolver = VcdApiResolver(config.vcd.api, {vc.name: vc.url for vc in config.vcenters})
    try:
        await asyncio.to_thread(resolver.refresh)   # first load; VcdUnavailable if vCD is down
    except VcdUnavailable as exc:
        log.error("%s", exc)                        # start anyway: the map loads on a retry
    task = asyncio.create_task(resolver.run_refresher(stop_event))
    retagger = Retagger([static, resolver, heuristic], config.vcd.unmapped)
    ...
    resolver.close()                                # after the refresher task ended

``run_refresher`` wakes every few seconds and refreshes when ``refresh_due()``: every
``refresh_seconds``; early when ``resolve`` missed a VM since the last refresh (a VM vCD has
just created), at most once per ``early_refresh_seconds``; and after a failure, again at most
once per ``early_refresh_seconds``. A VM still unknown after the refresh that followed its
first miss (a VM vCD does not manage) does not trigger early refreshes again; the regular
refresh picks it up if vCD adopts it later. A pipeline without the task can call
``maybe_refresh()`` (blocking; never raises) from a worker thread instead.

vCD unreachable (down, timeout, TLS, HTTP errors, a malformed answer): the refresh fails as a
whole, is counted in ``failures`` by kind and logged, and the **last good map is kept**;
``map_age_seconds()`` grows (``inf`` until a first success) for a gauge and an alert. Until the
first success the map is empty: every VM is then handled by the ``unmapped`` policy (kept under
its vCenter-based id, or skipped and counted), exactly like a VM vCD does not manage; a service
that prefers to wait for vCD can check ``loaded`` before its first cycle.

Requests, all as a provider (System org) administrator:

* ``POST /cloudapi/1.0.0/sessions/provider`` with basic auth; the bearer token comes back in
  ``X-VMWARE-VCLOUD-ACCESS-TOKEN``. A 401 on a later request (token expired, cell restarted)
  logs in again once and repeats that request; a second 401 fails the refresh.
* ``GET /api/query?type=virtualCenter&format=records``: vCD's vCenters (vimServer ``href``,
  ``name``, ``uuid``, ``url``). Each is matched to a statsfeeder vCenter by
  ``vcenter_names`` (keyed by the vCD name, the vCenter uuid or the vimServer id), else by its
  URL's host and port, else by its host alone when that is unique. VMs of unmatched vCD
  vCenters are ignored (counted in ``last.vms_unmatched_vcenter``, warned once per vCenter).
* ``GET /api/query?type=organization&format=records``: org names (adminVM records carry only
  the org href). An org missing from it keeps ``urn:vcloud:org:<uuid>`` as its name.
* ``GET /api/query?type=adminVM&format=records&filter=isVAppTemplate==false&fields=…``, every
  page (``pageSize`` at most 128) until a page has no ``nextPage`` link and the ``total`` is
  reached. Records without a moref (not instantiated in vCenter) are skipped.

``format: json`` sends ``Accept: application/*+json;version=V`` (records under ``record``);
``format: xml`` sends ``application/*+xml;version=V`` (``QueryResultRecords`` with one
``*Record`` element per record, fields as attributes). The map's entities: ``vm`` =
``urn:vcloud:vm:<uuid>`` (from ``id`` or the ``…/vApp/vm-<uuid>`` href), ``name``, ``vapp`` =
``containerName`` (or ``urn:vcloud:vapp:<uuid>``), ``vdc`` = ``vdcName`` (or the VDC URN),
``org`` = the org name. Keys are ``(statsfeeder vCenter name, moref)``: the same moref in two
vCenters never collides.

TLS is verified (``tls.ca_file`` or the system store; ``tls.thumbprint`` pins the leaf;
``tls.insecure`` turns it off with a warning at each new connection). The password and the
token are never logged nor put in an exception message (httpcore's DEBUG trace of response
headers gets the token blanked by a log filter).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import ssl
import threading
import time
import xml.etree.ElementTree as ET
from collections import Counter as Tally
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from statsfeeder.config import VcdConfig
from statsfeeder.errors import ConfigError, StatsfeederError
from statsfeeder.model import EntityId, VirtualMachine
from statsfeeder.tls import TLSSetupError, client_context

log = logging.getLogger(__name__)

VcdApiConfig = VcdConfig.Api

TOKEN_HEADER = "X-VMWARE-VCLOUD-ACCESS-TOKEN"
LOGIN_PATH = "/cloudapi/1.0.0/sessions/provider"
LOGOUT_PATH = "/cloudapi/1.0.0/sessions/current"
QUERY_PATH = "/api/query"
ADMIN_VM_FIELDS = ("name", "moref", "vc", "container", "containerName", "vdc", "vdcName", "org",
                   "isVAppTemplate", "isDeleted", "status")
MAX_PAGES = 100_000
"""Guard against a server that keeps announcing a next page (12.8 M records)."""
SETTLED_FORGET_SECONDS = 86_400
"""A VM vCD does not manage, not asked about for this long, is forgotten (deleted, most
likely); were it back, its first miss asks for one early refresh again."""


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


@dataclass(frozen=True, slots=True)
class VcdVCenter:
    """A vCenter as vCD knows it, and the statsfeeder vCenter it was matched to."""

    vim_server_id: str
    name: str
    uuid: str
    url: str
    vcenter: str | None


@dataclass(slots=True)
class RefreshStats:
    """What the last successful refresh read."""

    vms: int = 0
    records: int = 0
    pages: int = 0
    vms_unmatched_vcenter: int = 0
    no_moref: int = 0
    duplicates: int = 0
    seconds: float = 0.0
    vcenters: list[VcdVCenter] = field(default_factory=list)


def tls_context(config: VcdApiConfig) -> ssl.SSLContext:
    try:
        return client_context(config.tls, config.base_url, label=f"vCD {config.base_url}",
                              key="vcd.api.tls", timeout=config.connect_timeout_seconds)
    except TLSSetupError as exc:
        raise VcdUnavailable(str(exc), exc.kind) from None


def _last_segment(href: str) -> str:
    return href.rstrip("/").rsplit("/", 1)[-1]


def _entity_uuid(record: Mapping[str, str], prefix: str) -> str:
    """``vm-<uuid>`` from an href such as ``…/api/vApp/vm-<uuid>``, or the URN's uuid."""
    ident = record.get("id", "")
    if ident.startswith(f"urn:vcloud:{prefix}:"):
        return ident.rsplit(":", 1)[-1].lower()
    return _last_segment(record.get("href", "")).removeprefix(f"{prefix}-").lower()


def _urn(kind: str, href: str) -> str:
    if not href:
        return ""
    return f"urn:vcloud:{kind}:{_last_segment(href).removeprefix(f'{kind}-').lower()}"


def _host_port(url: str) -> tuple[str, int] | None:
    try:
        parts = urlsplit(url if "://" in url else f"https://{url}")
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not host:
        return None
    return host.lower(), port or (80 if parts.scheme == "http" else 443)


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


class VcdApiResolver:
    """The ``Resolver`` backed by vCD's query service; see the module docstring."""

    def __init__(self, config: VcdApiConfig, vcenter_urls: Mapping[str, str], *,
                 clock: Callable[[], float] = time.monotonic,
                 poll_seconds: float = 5.0) -> None:
        unknown = sorted(set(config.vcenter_names.values()) - set(vcenter_urls))
        if unknown:
            raise ConfigError(f"config: vcd.api.vcenter_names: {unknown[0]} is not a configured "
                              "vCenter name")
        _install_redaction()
        self.config = config
        self.base_url = config.base_url
        self._vcenter_urls = dict(vcenter_urls)
        self._clock = clock
        self.poll_seconds = poll_seconds
        self._map: dict[tuple[str, str], EntityId] = {}
        self._loaded_at: float | None = None
        self._attempted_at: float | None = None
        self._last_failed = False
        self._missed: set[tuple[str, str]] = set()
        """Keys resolve() did not find since the last refresh began: they ask for one."""
        self._settled: dict[tuple[str, str], float] = {}
        """Keys still unknown after the refresh that followed their miss (no early refresh for
        them), with when resolve() last asked: refreshes forget those not asked for
        ``SETTLED_FORGET_SECONDS``, so deleted VMs do not pile up over years."""
        self._miss_lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._http: httpx.Client | None = None
        self._token: str | None = None
        self._warned_vcenters: set[str] = set()
        self.logins = 0
        self.refreshes = 0
        self.early_refreshes = 0
        self.failures: Tally[str] = Tally()
        self.last = RefreshStats()
        self.last_error: str | None = None

    def __repr__(self) -> str:
        return f"VcdApiResolver({self.base_url!r}, {len(self._map)} VMs)"

    # -- Resolver --------------------------------------------------------------------
    def resolve(self, vm: VirtualMachine) -> EntityId | None:
        key = (vm.vcenter, vm.moref)
        found = self._map.get(key)
        if found is None:
            if key in self._settled:
                self._settled[key] = self._clock()
            else:
                with self._miss_lock:
                    self._missed.add(key)
        return found

    # -- state for callers and telemetry ------------------------------------------------
    @property
    def loaded(self) -> bool:
        """True once a refresh has succeeded (the map may still be empty)."""
        return self._loaded_at is not None

    def __len__(self) -> int:
        return len(self._map)

    def map_age_seconds(self) -> float:
        """Seconds since the map in use was read from vCD; ``inf`` before the first success."""
        if self._loaded_at is None:
            return math.inf
        return max(0.0, self._clock() - self._loaded_at)

    @property
    def failures_total(self) -> int:
        return sum(self.failures.values())

    def pending_misses(self) -> int:
        return len(self._missed)

    def settled_misses(self) -> int:
        """VMs known not to be vCD's (asked within ``SETTLED_FORGET_SECONDS``)."""
        return len(self._settled)

    def refresh_due(self) -> bool:
        now = self._clock()
        if self._attempted_at is None:
            return True
        spaced = now - self._attempted_at >= self.config.early_refresh_seconds
        if self._last_failed or self._missed:
            return spaced
        assert self._loaded_at is not None
        return now - self._loaded_at >= self.config.refresh_seconds and spaced

    # -- refreshing ----------------------------------------------------------------------
    def maybe_refresh(self) -> bool:
        """Refresh if due (blocking). Never raises: a failure is logged and counted, and the
        last good map stays. True if the map was replaced."""
        if not self.refresh_due():
            return False
        early = self._loaded_at is not None and not self._last_failed and bool(self._missed) \
            and self._clock() - self._loaded_at < self.config.refresh_seconds
        try:
            self.refresh()
        except VcdUnavailable as exc:
            age = self.map_age_seconds()
            kept = (f"keeping the map of {len(self._map)} VMs read {age:.0f} s ago"
                    if self.loaded else "no map yet: VMs are handled as unmapped")
            log.warning("%s; %s", exc, kept)
            return False
        if early:
            self.early_refreshes += 1
        return True

    async def run_refresher(self, stop: asyncio.Event) -> None:
        """Refresh whenever due until ``stop`` is set; the HTTP work runs in a thread."""
        while not stop.is_set():
            if self.refresh_due():
                await asyncio.to_thread(self.maybe_refresh)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.poll_seconds)

    def refresh(self) -> RefreshStats:
        """Read every VM from vCD and swap the map in (blocking). Raises ``VcdUnavailable``
        (counted in ``failures``) and keeps the previous map when any request fails."""
        with self._refresh_lock:
            began = self._clock()
            started = time.monotonic()
            self._attempted_at = began
            with self._miss_lock:
                asked, self._missed = self._missed, set()
            try:
                try:
                    mapping, stats = self._read_all()
                except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                    # Not anticipated (a body that does not decode, an odd record): the
                    # refresh fails like any other, with the traceback in the log.
                    log.exception("vCD %s: refresh failed unexpectedly", self.base_url)
                    raise VcdUnavailable(f"vCD {self.base_url}: refresh failed: "
                                         f"{exc.__class__.__name__}: {exc}", "internal") \
                        from None
            except VcdUnavailable as exc:
                self._last_failed = True
                self.failures[exc.kind] += 1
                self.last_error = str(exc)
                with self._miss_lock:
                    self._missed |= asked
                raise
            stats.seconds = time.monotonic() - started
            self._map = mapping
            recent = began - SETTLED_FORGET_SECONDS
            self._settled = {key: asked_at for key, asked_at in self._settled.items()
                             if asked_at >= recent and key not in mapping}
            self._settled.update((key, began) for key in asked if key not in mapping)
            with self._miss_lock:  # misses during the refresh that the new map answers
                self._missed = {key for key in self._missed if key not in mapping}
            self._loaded_at = began
            self._last_failed = False
            self.last_error = None
            self.refreshes += 1
            self.last = stats
            log.info("vCD %s: %d VMs mapped (%d pages, %d VMs of vCenters not collected) in "
                     "%.1f s", self.base_url, stats.vms, stats.pages,
                     stats.vms_unmatched_vcenter, stats.seconds)
            return stats

    def check(self) -> list[VcdVCenter]:
        """Log in and read vCD's vCenter list (blocking; for ``statsfeeder validate``): the
        credentials, TLS and API version work, and which of our vCenters vCD knows."""
        return [self._match_vcenter(record)
                for record in self._query("virtualCenter", RefreshStats())]

    def close(self) -> None:
        """Log out (best effort) and close the connections."""
        http, token = self._http, self._token
        self._http, self._token = None, None
        if http is None:
            return
        if token is not None:
            with contextlib.suppress(httpx.HTTPError):
                http.delete(self.base_url + LOGOUT_PATH,
                            headers=self._headers(token, as_json=True))
        http.close()

    # -- the reads -----------------------------------------------------------------------
    def _read_all(self) -> tuple[dict[tuple[str, str], EntityId], RefreshStats]:
        stats = RefreshStats()
        vcenters = [self._match_vcenter(r) for r in self._query("virtualCenter", stats)]
        stats.vcenters = vcenters
        by_server = {vc.vim_server_id: vc.vcenter for vc in vcenters}
        orgs = {_last_segment(r.get("href", "")): r.get("name", "")
                for r in self._query("organization", stats, fields=("name",))}
        mapping: dict[tuple[str, str], EntityId] = {}
        pages_before = stats.pages
        for record in self._query("adminVM", stats, fields=ADMIN_VM_FIELDS,
                                  filter="isVAppTemplate==false"):
            stats.records += 1
            if record.get("isVAppTemplate", "false").lower() == "true":
                continue
            moref = record.get("moref", "")
            if not moref:
                stats.no_moref += 1
                continue
            vcenter = by_server.get(_last_segment(record.get("vc", "")))
            if vcenter is None:
                stats.vms_unmatched_vcenter += 1
                continue
            uuid = _entity_uuid(record, "vm")
            if not uuid:
                raise VcdUnavailable(f"vCD {self.base_url}: adminVM record for {moref} has no "
                                     "VM id or href", "parse")
            org_href = record.get("org", "")
            entity = EntityId(
                vm=f"urn:vcloud:vm:{uuid}",
                name=record.get("name", ""),
                vapp=record.get("containerName") or _urn("vapp", record.get("container", "")),
                vdc=record.get("vdcName") or _urn("vdc", record.get("vdc", "")),
                org=orgs.get(_last_segment(org_href)) or _urn("org", org_href),
            )
            key = (vcenter, moref)
            if key in mapping:
                stats.duplicates += 1
                log.warning("vCD %s: two VMs on vCenter %s have moref %s (%s, %s); keeping the "
                            "first", self.base_url, vcenter, moref, mapping[key].vm, entity.vm)
                continue
            mapping[key] = entity
        stats.vms = len(mapping)
        log.debug("vCD %s: %d adminVM pages", self.base_url, stats.pages - pages_before)
        return mapping, stats

    def _match_vcenter(self, record: Mapping[str, str]) -> VcdVCenter:
        server_id = _last_segment(record.get("href", ""))
        name, uuid, url = record.get("name", ""), record.get("uuid", ""), record.get("url", "")
        names = self.config.vcenter_names
        target: str | None = None
        for key in (name, uuid, server_id):
            if key and key in names:
                target = names[key]
                break
        if target is None:
            lowered = {k.lower(): v for k, v in names.items()}
            target = lowered.get(uuid.lower()) or lowered.get(server_id.lower())
        if target is None:
            target = self._match_by_url(url)
        if target is None and server_id not in self._warned_vcenters:
            self._warned_vcenters.add(server_id)
            log.warning("vCD %s: vCenter %r (%s, uuid %s) matches no statsfeeder vCenter; its "
                        "VMs are not mapped (set vcd.api.vcenter_names)", self.base_url, name,
                        url, uuid)
        return VcdVCenter(server_id, name, uuid, url, target)

    def _match_by_url(self, url: str) -> str | None:
        wanted = _host_port(url)
        if wanted is None:
            return None
        ours = {name: _host_port(u) for name, u in self._vcenter_urls.items()}
        exact = [name for name, hp in ours.items() if hp == wanted]
        if len(exact) == 1:
            return exact[0]
        if exact:
            return None
        by_host = [name for name, hp in ours.items() if hp is not None and hp[0] == wanted[0]]
        return by_host[0] if len(by_host) == 1 else None

    def _query(self, kind: str, stats: RefreshStats, *, fields: tuple[str, ...] = (),
               filter: str | None = None) -> Iterator[dict[str, str]]:
        page_size = self.config.page_size
        seen = 0
        for number in range(1, MAX_PAGES + 1):
            params: dict[str, str | int] = {"type": kind, "format": "records", "page": number,
                                            "pageSize": page_size}
            if fields:
                params["fields"] = ",".join(fields)
            if filter:
                params["filter"] = filter
            response = self._get(QUERY_PATH, params)
            try:
                page = (_parse_json_page(response.content) if self.config.format == "json"
                        else _parse_xml_page(response.content))
            except (ValueError, ET.ParseError) as exc:
                raise VcdUnavailable(f"vCD {self.base_url}: cannot parse the {kind} query page "
                                     f"{number}: {exc}", "parse") from None
            stats.pages += 1
            seen += len(page.records)
            yield from page.records
            if not page.records:
                return
            more_by_total = page.total is not None and seen < page.total
            if not page.has_next and not more_by_total:
                return
        raise VcdUnavailable(f"vCD {self.base_url}: the {kind} query never ends", "parse")

    # -- HTTP ------------------------------------------------------------------------------
    def _headers(self, token: str | None, *, as_json: bool) -> dict[str, str]:
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

    def _get(self, path: str, params: Mapping[str, str | int]) -> httpx.Response:
        json_format = self.config.format == "json"
        token = self._token or self._login()
        response = self._send("GET", path, params=params,
                              headers=self._headers(token, as_json=json_format))
        if response.status_code == 401:
            log.info("vCD %s: session no longer valid (HTTP 401); logging in again",
                     self.base_url)
            self._token = None
            token = self._login()
            response = self._send("GET", path, params=params,
                                  headers=self._headers(token, as_json=json_format))
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
