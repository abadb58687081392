"""What a Select must read, from the series index (``sinks/cassandra/series_index.py``): the
VM-day partitions with samples in the range, at hour granularity, and the series each VM has,
so metadata answers (``series_only``) need no sample window at all.

Granularity: a VM counts for a range when it has a window starting in an hour that overlaps
[start - 5 min, end] (a window holds the 5 minutes after its start); its series are then the
series it has on that day. Days before the index's ``series_index_from`` marker (data written
by versions without the index), or every day when there is no marker, are scanned as before.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from statsfeeder.sinks.cassandra.series_index import MARKER, SHARDS, TABLE, split_key
from statsfeeder.sources.vcenter.query import STORAGE_WINDOW


@dataclass
class Plan:
    scan_days: list[int]
    """Days without (complete) index entries: every VM in scope is read from its windows."""
    reads: dict[str, set[int]] = field(default_factory=dict)
    """VM → indexed days with samples in the range (the partitions worth reading)."""
    listed: dict[str, set[tuple[str, str]]] = field(default_factory=dict)
    """VM → (metric, instance) it has on those days, among the wanted metrics."""


def hours_of(day: int, first_s: int, last_s: int) -> set[int]:
    """Hours of ``day`` where a window starting could hold a sample in [first_s, last_s]."""
    low = first_s - STORAGE_WINDOW - day * 86400
    high = last_s - day * 86400
    return set(range(max(0, low // 3600), min(23, high // 3600) + 1))


class IndexReader:
    def __init__(self, session: Any, keyspace: str) -> None:
        self._session = session
        self._keyspace = keyspace
        self._read = session.prepare(
            f"SELECT vm_id, hours, series FROM {keyspace}.{TABLE} WHERE day = ? AND shard IN ?")

    def indexed_from(self) -> int | None:
        rows = list(self._session.execute(
            f"SELECT version FROM {self._keyspace}.schema_info WHERE key = %s", (MARKER,)))
        return int(rows[0].version) if rows and rows[0].version is not None else None

    def plan(self, since: int | None, days: Iterable[int], first_s: int, last_s: int,
             vms: Collection[str], metrics: Collection[str]) -> Plan:
        days = list(days)
        if since is None:
            return Plan(days)
        plan = Plan([day for day in days if day < since])
        indexed = [day for day in days if day >= since]
        shards = list(range(SHARDS))
        futures = [(day, self._session.execute_async(self._read, (day, shards)))
                   for day in indexed]
        for day, future in futures:
            wanted_hours = hours_of(day, first_s, last_s)
            if not wanted_hours:
                continue
            for row in future.result():
                if row.vm_id not in vms or not row.hours or not row.series or \
                        wanted_hours.isdisjoint(row.hours):
                    continue
                keys = [key for key in map(split_key, row.series) if key[0] in metrics]
                if not keys:
                    continue
                plan.reads.setdefault(row.vm_id, set()).add(day)
                plan.listed.setdefault(row.vm_id, set()).update(keys)
        return plan
