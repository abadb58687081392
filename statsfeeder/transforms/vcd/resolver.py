"""The ``Resolver`` backed by vCD's query service; see the package docstring."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx

from statsfeeder.errors import ConfigError
from statsfeeder.model import EntityId, VirtualMachine
from statsfeeder.transforms.vcd.client import VcdApiConfig, VcdSession, VcdUnavailable

log = logging.getLogger(__name__)

ADMIN_VM_FIELDS = ("name", "moref", "vc", "container", "containerName", "vdc", "vdcName", "org",
                   "isVAppTemplate", "isDeleted", "status")
SETTLED_FORGET_SECONDS = 86_400
"""A VM vCD does not manage, not asked about for this long, is forgotten (deleted, most
likely); were it back, its first miss asks for one early refresh again."""


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


class VcdApiResolver:
    """The ``Resolver`` backed by vCD's query service; see the module docstring."""

    def __init__(self, config: VcdApiConfig, vcenter_urls: Mapping[str, str], *,
                 clock: Callable[[], float] = time.monotonic,
                 poll_seconds: float = 5.0) -> None:
        unknown = sorted(set(config.vcenter_names.values()) - set(vcenter_urls))
        if unknown:
            raise ConfigError(f"config: vcd.api.vcenter_names: {unknown[0]} is not a configured "
                              "vCenter name")
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
        self.session = VcdSession(config)
        self._warned_vcenters: set[str] = set()
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
                for record in self.session.query("virtualCenter")]

    def close(self) -> None:
        """Log out (best effort) and close the connections."""
        self.session.close()

    @property
    def logins(self) -> int:
        return self.session.logins

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
        def count_page() -> None:
            stats.pages += 1
        return self.session.query(kind, fields=fields, filter=filter, on_page=count_page)
