"""What a Select must read, from the series index (``sinks/cassandra/series_index.py``): the
VM-day partitions with samples in the range, at hour granularity, and the series each VM has,
so metadata answers (``series_only``) need no sample window at all.

Granularity: a VM counts for a range when it has a window starting in an hour that overlaps
[start - 5 min, end] (a window holds the 5 minutes after its start); its series are then the
series it has on that day. Days before the index's ``series_index_from`` marker (data written
by versions without the index), or every day when there is no marker, are scanned as before.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from statsfeeder.sinks.cassandra.series_index import (
    SHARDS,
    TABLE,
    indexed_from,
    shard_of,
    split_key,
)
from statsfeeder.sinks.cassandra.write_stamps import Generation
from statsfeeder.sources.vcenter.query import STORAGE_WINDOW

CACHE_ROWS = 500_000
"""VM-days of index kept in memory at most (about 200 B each)."""
HAVING_KEPT = 256
"""(day, hours, metrics) answers kept at most under one generation of the write stamps."""
FEW_VMS = 16
"""Up to this many VMs in question, their rows are read by key (one request each: 3.11
refuses ``vm_id IN`` beside a collection) instead of the whole day."""


@dataclass
class Plan:
    scan_days: list[int]
    """Days without (complete) index entries: every VM in scope is read from its windows."""
    reads: dict[str, set[int]] = field(default_factory=dict)
    """VM → indexed days with samples in the range (the partitions worth reading)."""
    listed: dict[str, set[tuple[str, str]]] = field(default_factory=dict)
    """VM → (metric, instance) it has on those days, among the wanted metrics (for metadata
    answers: ``cached``)."""


def hours_of(day: int, first_s: int, last_s: int) -> set[int]:
    """Hours of ``day`` where a window starting could hold a sample in [first_s, last_s]."""
    low = first_s - STORAGE_WINDOW - day * 86400
    high = last_s - day * 86400
    return set(range(max(0, low // 3600), min(23, high // 3600) + 1))


Entry = tuple[str, frozenset[int], tuple[tuple[str, str], ...]]
"""One VM-day of the index: VM, hours with a window start, (metric, instance) pairs."""


class IndexReader:
    """Reads the index for a Select. Days read whole for metadata answers (series_only) are
    kept ``cache_seconds`` for the next ones (as current as the entities list they are joined
    with). A Select of samples reads the index afresh unless it passes the write stamps'
    generation it read first (write_stamps.py): days read under the same generation are
    still whole, as a sink writes a window's entry before the window and moves its stamp
    after it."""

    def __init__(self, session: Any, keyspace: str, cache_seconds: float = 0.0) -> None:
        self._session = session
        self._keyspace = keyspace
        self._cache_seconds = cache_seconds
        self._cache: dict[int, tuple[float, list[Entry]]] = {}
        self._stamped: dict[int, tuple[Generation, list[Entry]]] = {}
        self._having: dict[tuple[int, frozenset[int], frozenset[str]], list[str]] = {}
        self._having_generation: Generation | None = None
        self._lock = threading.Lock()
        self._read = session.prepare(
            f"SELECT vm_id, hours, series FROM {keyspace}.{TABLE} WHERE day = ? AND shard = ?")
        self._read_vms = session.prepare(
            f"SELECT vm_id, hours, series FROM {keyspace}.{TABLE} WHERE day = ? AND shard = ? "
            "AND vm_id = ?")

    def indexed_from(self) -> int | None:
        return indexed_from(self._session, self._keyspace)

    def plan(self, since: int | None, days: Iterable[int], first_s: int, last_s: int,
             vms: Collection[str], metrics: Collection[str], cached: bool = False,
             generation: Generation | None = None) -> Plan:
        days = list(days)
        if since is None:
            return Plan(days)
        plan = Plan([day for day in days if day < since])
        indexed = [day for day in days if day >= since and hours_of(day, first_s, last_s)]
        if not cached and generation is not None and len(vms) > FEW_VMS:
            for day, having in self._vms_having(indexed, first_s, last_s, metrics, generation):
                for vm in having:
                    if vm in vms:
                        plan.reads.setdefault(vm, set()).add(day)
            return plan
        for day, entries in self._entries(indexed, vms, cached, generation):
            wanted_hours = hours_of(day, first_s, last_s)
            for vm, hours, keys in entries:
                if vm not in vms or wanted_hours.isdisjoint(hours):
                    continue
                present = [key for key in keys if key[0] in metrics]
                if present:
                    plan.reads.setdefault(vm, set()).add(day)
                    if cached:  # a metadata answer's series come from here
                        plan.listed.setdefault(vm, set()).update(present)
        return plan

    def _vms_having(self, days: list[int], first_s: int, last_s: int,
                    metrics: Collection[str], generation: Generation
                    ) -> list[tuple[int, list[str]]]:
        """Per day, the VMs with a window of ``metrics`` in the range's hours, from whole
        days kept under ``generation``: worked out once per day, hours and metrics while the
        stamps stand still (a refreshed dashboard asks the same again)."""
        wanted = frozenset(metrics)
        found: list[tuple[int, list[str]]] = []
        todo: dict[int, tuple[int, frozenset[int], frozenset[str]]] = {}
        with self._lock:
            if self._having_generation != generation:
                self._having.clear()
                self._having_generation = generation
            for day in days:
                key = (day, frozenset(hours_of(day, first_s, last_s)), wanted)
                hit = self._having.get(key)
                if hit is None:
                    todo[day] = key
                else:
                    found.append((day, hit))
        for day, entries in self._entries(list(todo), None, False, generation):
            hours = todo[day][1]
            having = [vm for vm, vm_hours, keys in entries if not hours.isdisjoint(vm_hours)
                      and any(key[0] in wanted for key in keys)]
            found.append((day, having))
            with self._lock:
                if self._having_generation == generation:
                    if len(self._having) >= HAVING_KEPT:
                        self._having.clear()
                    self._having[todo[day]] = having
        return found

    def present(self, since: int | None, days: Iterable[int], first_s: int, last_s: int
                ) -> list[tuple[str, tuple[tuple[str, str], ...]]] | None:
        """(VM, its series that day) for every indexed VM-day with a window in the range,
        from whole days kept for metadata answers; None if a day predates the index."""
        days = list(days)
        if since is None or any(day < since for day in days):
            return None
        out: list[tuple[str, tuple[tuple[str, str], ...]]] = []
        indexed = [day for day in days if hours_of(day, first_s, last_s)]
        for day, entries in self._entries(indexed, None, cached=True):
            wanted = hours_of(day, first_s, last_s)
            if len(wanted) == 24:
                out.extend((vm, keys) for vm, _, keys in entries)
            else:
                out.extend((vm, keys) for vm, hours, keys in entries
                           if not wanted.isdisjoint(hours))
        return out

    def _entries(self, days: list[int], vms: Collection[str] | None, cached: bool,
                 generation: Generation | None = None) -> list[tuple[int, list[Entry]]]:
        """``vms`` None: every VM of those days (never read by key); ``generation``: the
        stamps a Select read, under which whole days are kept for the next Selects."""
        split: dict[str, tuple[str, str]] = {}  # a few distinct series names, many rows

        def parse(rows: Iterable[Any], only: Collection[str] | None = None) -> list[Entry]:
            out = []
            for row in rows:
                if row.hours and row.series and (only is None or row.vm_id in only):
                    keys = []
                    for text in row.series:
                        key = split.get(text)
                        if key is None:
                            key = split[text] = split_key(text)
                        keys.append(key)
                    out.append((row.vm_id, frozenset(row.hours), tuple(keys)))
            return out

        if vms is not None and len(vms) <= FEW_VMS:  # e.g. one VM's dashboard
            by_key = [(day, self._session.execute_async(self._read_vms,
                                                        (day, shard_of(vm), vm)))
                      for day in days for vm in sorted(vms)]
            return [(day, parse(future.result())) for day, future in by_key]
        now = time.monotonic()
        found: list[tuple[int, list[Entry]]] = []
        missing: list[int] = []
        with self._lock:
            for day in days:
                hit = self._cache.get(day)
                stamped = self._stamped.get(day)
                if cached and hit is not None and now - hit[0] < self._cache_seconds:
                    found.append((day, hit[1]))
                elif not cached and generation is not None and stamped is not None \
                        and stamped[0] == generation:
                    found.append((day, stamped[1]))
                else:
                    missing.append(day)
        # A request per shard: in parallel, where one per day would page in turn.
        pending = [(day, [self._session.execute_async(self._read, (day, shard))
                          for shard in range(SHARDS)]) for day in missing]
        for day, futures in pending:
            if not cached and generation is None:  # only the VMs in question, kept for no one
                found.append((day, [entry for future in futures
                                    for entry in parse(future.result(), vms)]))
                continue
            entries = [entry for future in futures for entry in parse(future.result())]
            found.append((day, entries))
            with self._lock:
                if cached:
                    _make_room(self._cache, len(entries))
                    self._cache[day] = (now, entries)
                elif generation is not None:
                    if generation not in (stamp for stamp, _ in self._stamped.values()):
                        self._stamped.clear()  # the stamps moved: what was kept may lack some
                    _make_room(self._stamped, len(entries))
                    self._stamped[day] = (generation, entries)
        return found


def _make_room(kept: dict[int, tuple[Any, list[Entry]]], adding: int) -> None:
    if sum(len(entries) for _, entries in kept.values()) + adding > CACHE_ROWS:
        kept.clear()
