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

import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from statsfeeder.readapi.batch import SeriesKey, Windows
from statsfeeder.readapi.pieces import HourPiece, hour_pieces
from statsfeeder.sinks.cassandra.write_stamps import Generation

if TYPE_CHECKING:
    from statsfeeder.config import ReadApiConfig
    from statsfeeder.telemetry import ReadApiMetrics

HOUR_MS = 3_600_000
DAY_MS = 86_400_000
ENTRY_BYTES = 340
PIECE_BYTES = 410
"""Python's cost of an entry (key, tuples, LRU slot) and of an hour piece beside its bytes
(object, bytes and array headers, its slot bitmap), as tracemalloc measured them."""

Key = tuple[str, str, int]
"""(VM, metric, hour start in ms)"""
Entry = tuple[tuple[str, HourPiece], ...]
"""One VM's windows of one metric in one hour, per instance."""
Settled = dict[SeriesKey, list[Windows]]
"""A batch's settled windows per series, in time order."""


@dataclass
class DayRead:
    """How one read request (some VMs, one day, [lo_ms, hi_ms]) is answered: the windows
    kept (``kept``, per VM its entries by metric and hour), ``fills`` (VMs and the whole
    hours, (from_ms, to_ms), to read and keep: settled hours, then unsettled ones while the
    write stamps stand still) and ``fresh`` (the range read as without a cache, or None)."""

    metrics: list[str]
    one: bool
    lo_ms: int
    hi_ms: int
    settled_ms: int
    generation: Generation | None
    kept: list[tuple[str, list[tuple[str, int, Entry]]]] = field(default_factory=list)
    fills: list[tuple[list[str], tuple[int, int]]] = field(default_factory=list)
    fresh: tuple[int, int] | None = None


class SettledCache:
    """Thread-safe: Selects run in worker threads.

    Unsettled hours (newer than ``settled_seconds``) are kept too, but only under the write
    stamps' generation they were read in (write_stamps.py): a Select reads the stamps first
    and passes them to ``plan``; when they moved, every unsettled hour kept is dropped. Such
    an hour is also dropped after ``unsettled_seconds`` (a writer that stopped between its
    windows and its stamp)."""

    def __init__(self, max_bytes: int, settled_seconds: int, max_age_seconds: float = 3600.0,
                 clock: Callable[[], float] = time.time,
                 counted: Callable[[int, int], None] | None = None,
                 unsettled_seconds: float = 300.0) -> None:
        self.max_bytes = max_bytes
        self.settled_seconds = settled_seconds
        self.max_age_seconds = max_age_seconds
        self.unsettled_seconds = unsettled_seconds
        self._clock = clock
        self._counted = counted
        self._lock = threading.Lock()
        self._entries: OrderedDict[Key, tuple[float, int, Entry]] = OrderedDict()
        """(VM, metric, hour) -> (kept until, bytes, entry), least recently used first."""
        self._unsettled: set[Key] = set()
        self._generation: Generation | None = None
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def settled_before_ms(self) -> int:
        """Hours that end at or before this (ms) are final."""
        return int(self._clock() - self.settled_seconds) // 3600 * HOUR_MS

    def plan(self, ids: Sequence[str], day: int, metrics: Sequence[str], one: bool,
             from_ms: int, to_ms: int, generation: Generation | None = None) -> DayRead:
        lo, hi = max(from_ms, day * DAY_MS), min(to_ms, (day + 1) * DAY_MS - 1)
        settled = self.settled_before_ms()
        read = DayRead(list(metrics), one, lo, hi, settled, generation)
        first_hour = lo // HOUR_MS * HOUR_MS
        last_end = hi // HOUR_MS * HOUR_MS + HOUR_MS
        if self.max_bytes <= 0:
            read.fresh = (lo, hi)
            return read
        now = self._clock()
        hits = misses = 0
        with self._lock:
            if generation is not None and generation != self._generation:
                self._drop_unsettled()
                self._generation = generation
            # Settled hours always; the newer ones only under the stamps just read.
            end = last_end if generation is not None else min(last_end, settled)
            spans = [hours for hours in (range(first_hour, min(end, settled), HOUR_MS),
                                         range(max(first_hour, settled), end, HOUR_MS))
                     if hours]
            found: dict[str, list[tuple[str, int, Entry]]] = {}
            missing: list[list[str]] = [[] for _ in spans]
            whole = range(first_hour, end, HOUR_MS)  # the spans, one after the other
            for vm in ids:
                # Most VMs have every hour kept: one lookup for both spans.
                entries = self._lookup(vm, metrics, whole, now) if len(spans) > 1 else None
                if entries is not None:
                    hits += len(spans)
                    found[vm] = entries
                    continue
                for number, hours in enumerate(spans):
                    entries = self._lookup(vm, metrics, hours, now)
                    if entries is None:
                        misses += 1
                        missing[number].append(vm)
                    else:
                        hits += 1
                        found.setdefault(vm, []).extend(entries)
            for hours, vms in zip(spans, missing, strict=True):
                if vms:
                    read.fills.append((vms, (hours[0], hours[-1] + HOUR_MS - 1)))
        if self._counted is not None:
            self._counted(hits, misses)
        read.kept = list(found.items())
        if hi >= end:
            read.fresh = (max(lo, end), hi)
        return read

    def _drop_unsettled(self) -> None:
        for key in self._unsettled:
            old = self._entries.pop(key, None)
            if old is not None:
                self.bytes -= old[1]
        self._unsettled.clear()

    def _lookup(self, vm: str, metrics: Sequence[str], hours: range, now: float
                ) -> list[tuple[str, int, Entry]] | None:
        """Every (metric, hour) of ``vm`` kept and young enough, or None."""
        found = []
        get = self._entries.get
        for metric in metrics:
            for hour in hours:
                value = get((vm, metric, hour))
                if value is None or value[0] < now:
                    return None
                found.append((metric, hour, value[2]))
        touch = self._entries.move_to_end
        for metric, hour, _ in found:
            touch((vm, metric, hour))
        return found

    def collect(self, read: DayRead, filled: Sequence[list[tuple[Any, ...]]],
                into: Settled) -> None:
        """Adds the request's windows, kept or just read (``filled``: the rows of each of
        ``read.fills``, kept from now on), to each series' in ``into``, in time order: whole
        hours, which the batch (``batch._merged``) clips to the Select's range."""
        for vm, entries in self._found(read, filled).items():
            for metric, _, entry in entries:
                for instance, piece in entry:
                    into.setdefault((vm, metric, instance), []).append(piece.as_windows())

    def collect_pieces(self, read: DayRead, filled: Sequence[list[tuple[Any, ...]]],
                       into: dict[str, dict[tuple[str, str], list[HourPiece]]]) -> None:
        """As ``collect``, the hour pieces themselves, per VM and (metric, instance)."""
        for vm, entries in self._found(read, filled).items():
            mine = into.setdefault(vm, {})
            for metric, _, entry in entries:
                for instance, piece in entry:
                    mine.setdefault((metric, instance), []).append(piece)

    def _found(self, read: DayRead, filled: Sequence[list[tuple[Any, ...]]]
               ) -> dict[str, list[tuple[str, int, Entry]]]:
        found: dict[str, list[tuple[str, int, Entry]]] = dict(read.kept)
        for (ids, span), rows in zip(read.fills, filled, strict=True):
            for vm, entries in self._keep(read, ids, span, rows):
                found[vm] = sorted(found.get(vm, []) + entries, key=_hour) if vm in found \
                    else entries
        return found

    def _keep(self, read: DayRead, ids: list[str], span: tuple[int, int],
              rows: list[tuple[Any, ...]]) -> list[tuple[str, list[tuple[str, int, Entry]]]]:
        per_hour: dict[Key, list[tuple[str, HourPiece]]] = {}
        for (vm, metric, instance), hours in hour_pieces(
                rows, read.metrics[0] if read.one else None).items():
            for hour_s, piece in hours.items():
                per_hour.setdefault((vm, metric, hour_s * 1000), []).append(
                    (sys.intern(instance or ""), piece))
        now = self._clock()
        found = []
        with self._lock:
            # Unsettled hours read under stamps that moved since are used once, not kept.
            current = read.generation is not None and read.generation == self._generation
            for vm in ids:
                entries = []
                for metric in read.metrics:
                    for hour in range(span[0], span[1] + 1, HOUR_MS):
                        key = (vm, metric, hour)
                        entry = tuple(per_hour.get(key, ()))
                        entries.append((metric, hour, entry))
                        unsettled = hour >= read.settled_ms
                        if unsettled and not current:
                            continue
                        size = ENTRY_BYTES + sum(PIECE_BYTES + len(piece.segment)
                                                 for _, piece in entry)
                        old = self._entries.pop(key, None)
                        if old is not None:
                            self.bytes -= old[1]
                        # Kept until: unsettled hours age out sooner.
                        self._entries[key] = (now + (self.unsettled_seconds if unsettled
                                                     else self.max_age_seconds), size, entry)
                        self.bytes += size
                        if unsettled:
                            self._unsettled.add(key)
                        else:
                            self._unsettled.discard(key)
                found.append((vm, entries))
            while self.bytes > self.max_bytes and self._entries:
                key, (_, size, _) = self._entries.popitem(last=False)
                self._unsettled.discard(key)
                self.bytes -= size
        return found


def _hour(item: tuple[str, int, Entry]) -> int:
    return item[1]


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
