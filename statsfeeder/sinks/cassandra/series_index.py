"""The series index: which VMs have samples in which hours of a day, and which series
(``metric|instance``) each has that day, so the read API finds what exists without reading
sample windows (docs/schema.md, "Series index").

A row per VM-day in ``series_index``, partition = (day, shard): 16 shards per day keep a
partition near 600 rows for 10,000 VMs (about 0.5 MB) and a day is read with one request.
The sink adds set elements only when something new appears (it remembers what it wrote, reset
every day), before it writes the windows that need them: a stored sample implies its entry.
Cells take the table's TTL, the samples' retention plus a day: an entry written the first time
a VM-hour is seen on a given day outlives every sample written that day.

Keyspaces written before the index existed: ``schema_info`` row ``series_index_from`` holds
the first epoch day whose every sample has its entry (0 for a keyspace created with the
index; the day after the first indexing sink started, for an older one). The read API scans
windows, as before, for days before it (and for every day when it is absent).
"""

from __future__ import annotations

import time
import zlib
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from statsfeeder.sinks.cassandra.batches import partition_batches

SHARDS = 16
TABLE = "series_index"
MARKER = "series_index_from"
ENTRIES_PER_BATCH = 32
MEMORY_LIMIT = 1_000_000
"""VM-days remembered at most (a backfill over many days); beyond it memory starts again."""

BYTES_PER_VM_DAY = 197
"""On disk (LZ4, one copy) for a VM-day with 24 hours and 10 series: bench, docs/schema.md."""

EXPECTED_COLUMNS: dict[str, dict[str, str]] = {
    TABLE: {"day": "int", "shard": "int", "vm_id": "text", "hours": "set<int>",
            "series": "set<text>"},
}


def shard_of(vm_id: str) -> int:
    """Stable across processes and versions (Python's ``hash`` is salted per process)."""
    return zlib.crc32(vm_id.encode()) % SHARDS


def sizing_line(vms: int, ttl_days: int, rf: int) -> str:
    total = vms * (ttl_days + 1) * rf * BYTES_PER_VM_DAY
    return (f"series index: {total / 1e9:,.2f} GB ({BYTES_PER_VM_DAY} B/VM-day measured, "
            f"{ttl_days + 1} d), a few row writes per VM and hour")


def series_key(metric: str, instance: str) -> str:
    return f"{metric}|{instance}"  # vCenter counter names never hold "|"


def split_key(key: str) -> tuple[str, str]:
    metric, _, instance = key.partition("|")
    return metric, instance


def index_ttl(samples_ttl: int | None) -> int:
    """The index's default_time_to_live for the samples' (0: both kept forever)."""
    return samples_ttl + 86400 if samples_ttl else 0


def table_cql(keyspace: str, samples_ttl: int) -> str:
    return f"""CREATE TABLE IF NOT EXISTS {keyspace}.{TABLE} (
            day int, shard int, vm_id text, hours set<int>, series set<text>,
            PRIMARY KEY ((day, shard), vm_id)
        ) WITH compaction = {{'class': 'TimeWindowCompactionStrategy',
                              'compaction_window_unit': 'DAYS', 'compaction_window_size': 1}}
          AND compression = {{'class': 'LZ4Compressor', 'chunk_length_in_kb': 4}}
          AND default_time_to_live = {index_ttl(samples_ttl)}
          AND gc_grace_seconds = 10800"""


def mark_indexed_from(session: Any, keyspace: str, day: int) -> None:
    """Record the first fully indexed day. A plain write, not ``IF NOT EXISTS``: a
    lightweight transaction needs a quorum of the keyspace's replicas, which consistency ONE
    installations may not have; callers write only where none is recorded, and a later day
    than needed only makes reads scan more."""
    session.execute(f"INSERT INTO {keyspace}.schema_info (key, version) VALUES (%s, %s)",
                    (MARKER, day))


def indexed_from(session: Any, keyspace: str) -> int | None:
    rows = list(session.execute(f"SELECT version FROM {keyspace}.schema_info WHERE key = %s",
                                (MARKER,)))
    return int(rows[0].version) if rows and rows[0].version is not None else None


Entries = dict[tuple[str, int], tuple[set[int], set[str]]]
"""(VM, day) → (hours of the day with a window start, series keys)."""


def entries(partitions: Mapping[tuple[str, int], Iterable[tuple[Any, ...]]]) -> Entries:
    """The index content of sample rows grouped by partition, as ``CassandraWriter.rows``
    builds them: (vm, day, metric, instance, window start ms, blob)."""
    found: Entries = {}
    for key, rows in partitions.items():
        hours, keys = found.setdefault(key, (set(), set()))
        for row in rows:
            hours.add(row[4] // 3_600_000 % 24)
            keys.add(series_key(row[2], row[3]))
    return found


class IndexWriter:
    """Turns the entries of a write into the few index updates it needs; ``remember``
    after Cassandra acknowledged them, so a failed update is sent again next time."""

    def __init__(self, session: Any, keyspace: str) -> None:
        self._update = session.prepare(
            f"UPDATE {keyspace}.{TABLE} SET hours = hours + ?, series = series + ? "
            "WHERE day = ? AND shard = ? AND vm_id = ?")
        self._known: Entries = {}
        self._day = -1

    def news(self, found: Entries) -> Entries:
        today = int(time.time()) // 86400
        if today != self._day or len(self._known) > MEMORY_LIMIT:
            # A new day: entries are written again once, so their TTL (from now) covers the
            # samples written from now on.
            self._known, self._day = {}, today
        new: Entries = {}
        for key, (hours, keys) in found.items():
            known = self._known.get(key)
            if known is None:
                new[key] = (hours, keys)
                continue
            more_hours, more_keys = hours - known[0], keys - known[1]
            if more_hours or more_keys:
                new[key] = (more_hours, more_keys)
        return new

    def statements(self, new: Entries) -> list[Any]:
        """Unlogged batches within one (day, shard) partition (Cassandra exempts those from
        its batch size limits), as the samples' writer does."""
        by_partition: dict[tuple[int, int], list[tuple[Any, ...]]] = defaultdict(list)
        for (vm, day), (hours, keys) in new.items():
            by_partition[(day, shard_of(vm))].append((hours, keys, day, shard_of(vm), vm))
        return partition_batches(self._update, by_partition.values(), ENTRIES_PER_BATCH)

    def remember(self, new: Entries) -> None:
        for key, (hours, keys) in new.items():
            known = self._known.setdefault(key, (set(), set()))
            known[0].update(hours)
            known[1].update(keys)
