"""Keeps the stored windows of settled hours in memory, so a dashboard that asks for the same
day every minute reads Cassandra only for its newest hours.

A window is written again only while a collector may still ask vCenter for it: never further
back than ``collection.max_lookback_seconds`` (at most an hour, vCenter's realtime retention)
before the cycle's clock, plus one storage window. Hours that ended ``settled_seconds`` ago
(default 90 minutes, validated to exceed that lookback) are final, and their windows are
kept here per (VM, metric, hour), least recently used dropped first beyond ``max_bytes``,
each for at most ``max_age_seconds`` (so windows past the table's TTL do not outlive it by
long). Newer hours are read from Cassandra on every Select, as without the cache.

What is kept is Cassandra's windows before anything about the caller is applied: the tenant
scope and the matchers choose which VMs and series are asked for before the cache is
looked at, so a window kept for one caller is only ever returned for a VM another caller
may read too. A VM with one of its settled hours missing is read again for all of them, so each
series' windows come back in time order.
"""

from __future__ import annotations

import itertools
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from statsfeeder.readapi import batch as batch_rows
from statsfeeder.readapi.batch import SeriesKey, Windows

if TYPE_CHECKING:
    from statsfeeder.config import ReadApiConfig
    from statsfeeder.telemetry import ReadApiMetrics

HOUR_MS = 3_600_000
DAY_MS = 86_400_000
ENTRY_BYTES = 850
WINDOW_BYTES = 60
"""Python's cost of an entry and of a kept window beside its blob, as tracemalloc measured
them (bench: 22,000 entries of 12 windows; key, tuples, array and bytes headers)."""

Key = tuple[str, str, int]
"""(VM, metric, hour start in ms)"""
Entry = tuple[tuple[str, Windows], ...]
"""One VM's windows of one metric in one hour, per instance."""
Settled = dict[SeriesKey, list[Windows]]
"""A batch's settled windows per series, in time order."""


@dataclass
class DayRead:
    """How one read request (some VMs, one day, [lo_ms, hi_ms]) is answered: the windows
    kept (``kept``, per VM its entries by metric and hour), ``fill`` (the VMs and the whole
    settled hours to read and keep), ``fresh`` (the range read as without a cache).
    ``fill`` and ``fresh`` are (from_ms, to_ms) or None."""

    metrics: list[str]
    one: bool
    lo_ms: int
    hi_ms: int
    kept: list[tuple[str, list[tuple[str, int, Entry]]]] = field(default_factory=list)
    fill_ids: list[str] = field(default_factory=list)
    fill: tuple[int, int] | None = None
    fresh: tuple[int, int] | None = None


class SettledCache:
    """Thread-safe: Selects run in worker threads."""

    def __init__(self, max_bytes: int, settled_seconds: int, max_age_seconds: float = 3600.0,
                 clock: Callable[[], float] = time.time,
                 counted: Callable[[int, int], None] | None = None) -> None:
        self.max_bytes = max_bytes
        self.settled_seconds = settled_seconds
        self.max_age_seconds = max_age_seconds
        self._clock = clock
        self._counted = counted
        self._lock = threading.Lock()
        self._entries: OrderedDict[Key, tuple[float, int, Entry]] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def settled_before_ms(self) -> int:
        """Hours that end at or before this (ms) are final."""
        return int(self._clock() - self.settled_seconds) // 3600 * HOUR_MS

    def plan(self, ids: Sequence[str], day: int, metrics: Sequence[str], one: bool,
             from_ms: int, to_ms: int) -> DayRead:
        lo, hi = max(from_ms, day * DAY_MS), min(to_ms, (day + 1) * DAY_MS - 1)
        read = DayRead(list(metrics), one, lo, hi)
        first_hour = lo // HOUR_MS * HOUR_MS
        # The hours of [lo, hi] that have ended settled_seconds ago: kept or read whole.
        end = min(hi // HOUR_MS * HOUR_MS + HOUR_MS, self.settled_before_ms())
        if self.max_bytes <= 0 or end <= first_hour:
            read.fresh = (lo, hi)
            return read
        hours = range(first_hour, end, HOUR_MS)
        now = self._clock()
        hits = misses = 0
        with self._lock:
            for vm in ids:
                found = self._lookup(vm, metrics, hours, now)
                if found is None:
                    misses += 1
                    read.fill_ids.append(vm)
                else:
                    hits += 1
                    read.kept.append((vm, found))
        if self._counted is not None:
            self._counted(hits, misses)
        if read.fill_ids:
            read.fill = (first_hour, end - 1)
        if hi >= end:
            read.fresh = (end, hi)
        return read

    def _lookup(self, vm: str, metrics: Sequence[str], hours: range, now: float
                ) -> list[tuple[str, int, Entry]] | None:
        """Every (metric, hour) of ``vm`` kept and young enough, or None."""
        found = []
        for metric in metrics:
            for hour in hours:
                entry = self._entries.get((vm, metric, hour))
                if entry is None or now - entry[0] > self.max_age_seconds:
                    return None
                found.append((metric, hour, entry[2]))
        for metric, hour, _ in found:
            self._entries.move_to_end((vm, metric, hour))
        return found

    def collect(self, read: DayRead, filled: list[tuple[Any, ...]] | None,
                into: Settled) -> None:
        """Adds the request's settled windows, kept or just read (and kept from now on),
        clipped to its range, to each series' in ``into``."""
        found = list(read.kept)
        if filled is not None and read.fill is not None:
            found.extend(self._keep(read, filled))
        for vm, entries in found:
            for metric, hour, entry in entries:
                inside = read.lo_ms <= hour and hour + HOUR_MS - 1 <= read.hi_ms
                for instance, (starts, blobs) in entry:
                    if not inside:
                        starts, blobs = _clipped(starts, blobs, read.lo_ms, read.hi_ms)
                    if len(starts):
                        into.setdefault((vm, metric, instance), []).append((starts, blobs))

    def _keep(self, read: DayRead, filled: list[tuple[Any, ...]]
              ) -> list[tuple[str, list[tuple[str, int, Entry]]]]:
        assert read.fill is not None
        per_hour: dict[Key, list[tuple[str, Windows]]] = {}
        for (vm, metric, instance), hours in batch_rows.hourly(
                filled, read.metrics[0] if read.one else None).items():
            for hour_s, windows in hours.items():
                per_hour.setdefault((vm, metric, hour_s * 1000), []).append(
                    (sys.intern(instance or ""), windows))
        now = self._clock()
        found = []
        with self._lock:
            for vm in read.fill_ids:
                entries = []
                for metric in read.metrics:
                    for hour in range(read.fill[0], read.fill[1] + 1, HOUR_MS):
                        key = (vm, metric, hour)
                        entry = tuple(per_hour.get(key, ()))
                        entries.append((metric, hour, entry))
                        size = ENTRY_BYTES + sum(
                            len(b) + WINDOW_BYTES for _, (_, blobs) in entry for b in blobs)
                        old = self._entries.pop(key, None)
                        if old is not None:
                            self.bytes -= old[1]
                        self._entries[key] = (now, size, entry)
                        self.bytes += size
                found.append((vm, entries))
            while self.bytes > self.max_bytes and self._entries:
                _, (_, size, _) = self._entries.popitem(last=False)
                self.bytes -= size
        return found


def _clipped(starts: np.ndarray, blobs: tuple[bytes, ...], lo_ms: int, hi_ms: int
             ) -> Windows:
    inside = (starts * 1000 >= lo_ms) & (starts * 1000 <= hi_ms)
    if inside.all():
        return starts, blobs
    return starts[inside], tuple(itertools.compress(blobs, inside.tolist()))


def settled_cache(config: ReadApiConfig, metrics: ReadApiMetrics) -> SettledCache:
    """The read API's cache, counted in its metrics."""
    hits, misses = (metrics.cache_lookups.labels(result) for result in ("hit", "miss"))

    def counted(hit: int, missed: int) -> None:
        hits.inc(hit)
        misses.inc(missed)

    cache = SettledCache(config.cache_mb << 20, config.cache_settled_minutes * 60,
                         counted=counted)
    metrics.cache_bytes.set_function(lambda: cache.bytes)
    return cache


NO_CACHE = SettledCache(0, 0)
"""Reads every range afresh."""
