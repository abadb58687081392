"""Keeps the stored windows of settled hours in memory, so a dashboard that asks for the same
day every minute reads Cassandra only for its newest hours.

A window is written again only while a collector may still ask vCenter for it: never further
back than ``collection.max_lookback_seconds`` (at most an hour, vCenter's realtime retention)
before the cycle's clock, plus one storage window. Hours that ended ``settled_seconds`` ago
(default 90 minutes, validated to exceed that lookback) are final, and their windows are
kept here per (VM, metric, hour), least recently used dropped first beyond ``max_bytes``,
each for at most ``max_age_seconds`` (so windows past the table's TTL do not outlive it by
long). Newer hours are read from Cassandra on every Select, as without the cache.

What is kept is a Select's rows before anything about the caller is applied: the tenant
scope and the matchers choose which VMs and series are asked for before the cache is
looked at, so a row kept for one caller is only ever returned for a VM another caller may
read too. A VM with one of its settled hours missing is read again for all of them, so each
series' windows come back in time order.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from statsfeeder.config import ReadApiConfig
    from statsfeeder.telemetry import ReadApiMetrics

HOUR_MS = 3_600_000
DAY_MS = 86_400_000
ENTRY_BYTES = 160
ROW_BYTES = 120
"""Python's cost of an entry and of a kept row beside its blob (tuple, int, bytes headers)."""

Triple = tuple[str, int, bytes]
"""A kept row: instance, window start (ms), blob."""
Key = tuple[str, str, int]
"""(VM, metric, hour start in ms)"""


@dataclass
class DayRead:
    """How one read request (some VMs, one day, [lo_ms, hi_ms]) is answered: rows ``kept``,
    ``fill`` (the VMs and whole settled hours to read and keep), ``fresh`` (the range read
    as before). ``fill`` and ``fresh`` are (from_ms, to_ms) or None."""

    ids: list[str]
    metrics: list[str]
    one: bool
    lo_ms: int
    hi_ms: int
    kept: list[tuple[Any, ...]] = field(default_factory=list)
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
        self._entries: OrderedDict[Key, tuple[float, int, tuple[Triple, ...]]] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def settled_before_ms(self) -> int:
        """Hours that end at or before this (ms) are final."""
        return int(self._clock() - self.settled_seconds) // 3600 * HOUR_MS

    def plan(self, ids: Sequence[str], day: int, metrics: Sequence[str], one: bool,
             from_ms: int, to_ms: int) -> DayRead:
        lo, hi = max(from_ms, day * DAY_MS), min(to_ms, (day + 1) * DAY_MS - 1)
        read = DayRead(list(ids), list(metrics), one, lo, hi)
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
                    read.kept.extend(_rows(vm, found, one, lo, hi))
        if self._counted is not None:
            self._counted(hits, misses)
        if read.fill_ids:
            read.fill = (first_hour, end - 1)
        if hi >= end:
            read.fresh = (end, hi)
        return read

    def _lookup(self, vm: str, metrics: Sequence[str], hours: range, now: float
                ) -> list[tuple[str, tuple[Triple, ...]]] | None:
        """Every (metric, hour) of ``vm`` kept and young enough, or None."""
        found = []
        for metric in metrics:
            for hour in hours:
                entry = self._entries.get((vm, metric, hour))
                if entry is None or now - entry[0] > self.max_age_seconds:
                    return None
                found.append((metric, entry[2]))
        for metric in metrics:
            for hour in hours:
                self._entries.move_to_end((vm, metric, hour))
        return found

    def assemble(self, read: DayRead, filled: list[tuple[Any, ...]] | None,
                 fresh: list[tuple[Any, ...]] | None) -> list[tuple[Any, ...]]:
        """The request's rows: kept, then those read to fill (kept from now on), then fresh;
        each series' windows in time order."""
        rows = read.kept
        if filled is not None and read.fill is not None:
            self._keep(read, filled)
            at = 2 if read.one else 3
            rows.extend(row for row in filled if read.lo_ms <= row[at] <= read.hi_ms)
        if fresh:
            rows.extend(fresh)
        return rows

    def _keep(self, read: DayRead, filled: list[tuple[Any, ...]]) -> None:
        assert read.fill is not None
        grouped: dict[Key, list[Triple]] = {}
        metric = read.metrics[0]
        for row in filled:
            if read.one:
                vm, instance, start, data = row
            else:
                vm, metric, instance, start, data = row
            grouped.setdefault((vm, metric, start // HOUR_MS * HOUR_MS), []).append(
                (sys.intern(instance or ""), start, data))
        now = self._clock()
        with self._lock:
            for vm in read.fill_ids:
                for metric in read.metrics:
                    for hour in range(read.fill[0], read.fill[1] + 1, HOUR_MS):
                        key = (vm, metric, hour)
                        triples = tuple(grouped.get(key, ()))
                        size = ENTRY_BYTES + sum(ROW_BYTES + len(t[2]) for t in triples)
                        old = self._entries.pop(key, None)
                        if old is not None:
                            self.bytes -= old[1]
                        self._entries[key] = (now, size, triples)
                        self.bytes += size
            while self.bytes > self.max_bytes and self._entries:
                _, (_, size, _) = self._entries.popitem(last=False)
                self.bytes -= size


def _rows(vm: str, found: list[tuple[str, tuple[Triple, ...]]], one: bool, lo: int, hi: int
          ) -> list[tuple[Any, ...]]:
    if one:
        return [(vm, i, s, d) for _, triples in found for i, s, d in triples if lo <= s <= hi]
    return [(vm, m, i, s, d) for m, triples in found for i, s, d in triples if lo <= s <= hi]


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
