"""The series index against the real Cassandra: the sink writes it (before the windows, once
per new hour or series), the read API's answers with it equal the answers of a full scan of
the windows (VMs present in some hours only, across a day boundary), data stored before the
index existed is still answered, and a scoped caller cannot see another org's VMs or labels
through it."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from cassandra.query import ValueSequence

from statsfeeder.errors import BatchRejected
from statsfeeder.model import Counter, EntityId, Series, VirtualMachine
from statsfeeder.readapi.store import Matcher, Scope, SelectRequest, SeriesStore
from statsfeeder.sinks.cassandra import schema, series_index
from statsfeeder.sinks.cassandra.sink import CassandraSink
from tests.helpers import cassandra_config, drop_keyspace, open_new_keyspace

CPU = Counter("cpu.usage.average", 2, "percent")
MEM = Counter("mem.usage.average", 24, "percent")
DISK = Counter("disk.read.average", 130, "kiloBytesPerSecond", per_instance=True)
H = 3600
MIDNIGHT = int(time.time()) // 86400 * 86400
# (name, org, [(counter, instance, first hour, last hour)]) with hours relative to MIDNIGHT:
# acme-a spans the day boundary and has a disk only after it; acme-b only yesterday morning;
# globex-c has the only memory series; globex-e only after midnight.
LAYOUT: list[tuple[str, str, list[tuple[Counter, str, int, int]]]] = [
    ("acme-a", "acme", [(CPU, "", -4, 2), (DISK, "scsi0:0", 0, 2)]),
    ("acme-b", "acme", [(CPU, "", -14, -13)]),
    ("globex-c", "globex", [(CPU, "", -1, 0), (MEM, "", -1, 0)]),
    ("globex-e", "globex", [(CPU, "", 1, 2)]),
]


def urn(name: str) -> str:
    return f"urn:vcloud:vm:{uuid.uuid5(uuid.NAMESPACE_URL, name)}"


def fleet() -> tuple[list[VirtualMachine], list[Series]]:
    vms, series = [], []
    for number, (name, org, parts) in enumerate(LAYOUT):
        entity = EntityId(urn(name), name, f"{name}-app", f"{org}-vdc", org)
        vms.append(VirtualMachine("vc1", f"vm-{number}", name, str(uuid.uuid4()), "", True,
                                  entity))
        for counter, instance, first, last in parts:
            stamps = np.arange(MIDNIGHT + first * H + 20, MIDNIGHT + last * H + 1, 20,
                               dtype=np.int64)
            values = (number * 1000 + np.arange(len(stamps)) % 700).astype(np.int64)
            series.append(Series("vc1", f"vm-{number}", counter, instance, stamps, values,
                                 entity))
    return vms, series


@pytest.fixture(scope="module")
def sink(cassandra_env: dict[str, str]) -> Iterator[CassandraSink]:
    config = cassandra_config(cassandra_env, keyspace=f"six_{uuid.uuid4().hex[:10]}")
    opened = open_new_keyspace(config, (CPU, MEM, DISK))
    vms, series = fleet()
    # VMs without samples: selectors over more than index.FEW_VMS VMs read whole index days.
    idle = [VirtualMachine("vc1", f"vm-idle-{n}", f"idle-{n}", str(uuid.uuid4()), "", True,
                           EntityId(urn(f"idle-{n}"), f"idle-{n}", "idle", "idle",
                                    ("acme", "globex")[n % 2])) for n in range(20)]
    asyncio.run(opened.save_entities(vms + idle))
    asyncio.run(opened.write(series))
    yield opened
    drop_keyspace(opened.session, config.keyspace)
    opened.close()


def store_of(sink: CassandraSink) -> SeriesStore:
    return SeriesStore(sink.session, sink.config.keyspace, retention_seconds=14 * 86400,
                       max_series=10_000, cache_seconds=0.0)


RANGES = [  # (start, end) relative to MIDNIGHT, in hours
    (-24, 3), (-3, -0.5), (0.5, 1.5), (-14, -13.5), (-0.5, 0.5), (-10, -5), (3, 5)]
SELECTORS = [
    (Matcher("=~", "__name__", ".+"),),
    (Matcher("=", "__name__", "vsphere_vm_cpu_usage_average_percent"),),
    (Matcher("=~", "__name__", ".+"), Matcher("=", "org", "acme")),
    (Matcher("=~", "__name__", ".+"), Matcher("!=", "device", "")),
]


def answer(store: SeriesStore, start_h: float, end_h: float, matchers: tuple[Matcher, ...],
           series_only: bool, scope: Scope = None) -> list[tuple[Any, ...]]:
    request = SelectRequest(int((MIDNIGHT + start_h * H) * 1000),
                            int((MIDNIGHT + end_h * H) * 1000), matchers, series_only)
    return [(tuple(sorted(labels.items())), stamps.tolist(), values.tolist())
            for labels, stamps, values in store.series(request, scope)]


def all_answers(store: SeriesStore, scope: Scope = None) -> dict[Any, list[Any]]:
    return {(r, s, only): answer(store, *r, s, only, scope)
            for r in RANGES for s in SELECTORS for only in (True, False)}


def vms_of(rows: list[tuple[Any, ...]]) -> set[str]:
    return {dict(labels)["vm_name"] for labels, _, _ in rows}


def test_the_sink_writes_hours_and_series_per_vm_day(sink: CassandraSink) -> None:
    day = MIDNIGHT // 86400
    rows = {(r.day, r.vm_id): (set(r.hours), set(r.series)) for r in sink.session.execute(
        f"SELECT day, vm_id, hours, series FROM {sink.config.keyspace}.series_index "
        "WHERE day IN %s AND shard IN %s",
        (ValueSequence((day - 1, day, day + 1)), ValueSequence(range(series_index.SHARDS))))}
    assert rows == {
        (day - 1, urn("acme-a")): ({20, 21, 22, 23}, {"cpu.usage.average|"}),
        # 01:00:00 and 02:00:00 are the last samples: windows 00:55 and 01:55.
        (day, urn("acme-a")): ({0, 1}, {"cpu.usage.average|", "disk.read.average|scsi0:0"}),
        (day - 1, urn("acme-b")): ({10}, {"cpu.usage.average|"}),
        (day - 1, urn("globex-c")): ({23}, {"cpu.usage.average|", "mem.usage.average|"}),
        (day, urn("globex-e")): ({1}, {"cpu.usage.average|"}),
    }
    ttl = dict(schema.inspect(sink.session, sink.config.keyspace).table_ttls)
    assert ttl["series_index"] == ttl["samples"] + 86400


def test_index_answers_equal_a_scan_of_the_windows(sink: CassandraSink) -> None:
    store = store_of(sink)
    with_index = all_answers(store)
    assert vms_of(with_index[((0.5, 1.5), SELECTORS[0], True)]) == {"acme-a", "globex-e"}
    assert vms_of(with_index[((-3, -0.5), SELECTORS[0], False)]) == {"acme-a", "globex-c"}
    assert with_index[((-10, -5), SELECTORS[0], True)] == []
    ks = sink.config.keyspace
    sink.session.execute(f"DELETE FROM {ks}.schema_info WHERE key = %s",
                         (series_index.MARKER,))
    try:
        store.refresh(force=True)
        assert all_answers(store) == with_index  # no marker: every day from the windows
    finally:
        series_index.mark_indexed_from(sink.session, ks, 0)


def test_reads_only_vm_days_with_samples_in_the_hours_asked(sink: CassandraSink) -> None:
    store = store_of(sink)
    store.refresh(force=True)
    reader = store._index
    day = MIDNIGHT // 86400
    everyone = {urn(name) for name, _, _ in LAYOUT}
    metrics = {"cpu.usage.average", "mem.usage.average", "disk.read.average"}
    plan = reader.plan(0, [day - 1, day], MIDNIGHT + 1800, MIDNIGHT + 5400, everyone, metrics)
    assert plan.scan_days == []
    assert plan.reads == {urn("acme-a"): {day}, urn("globex-e"): {day}}
    cpu_only = reader.plan(0, [day - 1], MIDNIGHT - 3 * H, MIDNIGHT - H, everyone,
                           {"mem.usage.average"})
    assert cpu_only.reads == {urn("globex-c"): {day - 1}}


def test_a_scope_sees_only_its_orgs_vms_and_labels(sink: CassandraSink) -> None:
    store = store_of(sink)
    acme = frozenset({"acme"})
    for (_, selector, _), rows in all_answers(store, acme).items():
        assert vms_of(rows) <= {"acme-a", "acme-b"}, selector
        assert all(dict(labels)["org"] == "acme" for labels, _, _ in rows)
    names = {dict(labels)["__name__"] for labels, _, _ in
             answer(store, -24, 3, SELECTORS[0], True, acme)}
    assert names == {"vsphere_vm_cpu_usage_average_percent",
                     "vsphere_vm_disk_read_average_kilobytes_per_second"}  # no globex memory
    assert answer(store, -24, 3, SELECTORS[0], True, frozenset({"nobody"})) == []
    globex = vms_of(answer(store, -24, 3, SELECTORS[0], True, frozenset({"globex"})))
    assert globex == {"globex-c", "globex-e"}


def test_days_written_before_the_index_are_scanned(cassandra_env: dict[str, str]) -> None:
    """A keyspace of an older version: no index table, no marker. ``schema update`` adds the
    table, the first indexing sink marks tomorrow, and yesterday's and today's samples
    (written without entries) are answered from their windows, equal to a full index's."""
    config = cassandra_config(cassandra_env, keyspace=f"six_{uuid.uuid4().hex[:10]}")
    full = open_new_keyspace(config, (CPU, MEM, DISK))
    vms, series = fleet()
    try:
        asyncio.run(full.save_entities(vms))
        asyncio.run(full.write(series))
        store = store_of(full)
        expected = all_answers(store)
        ks, session = config.keyspace, full.session
        # What an older version left: samples, no index table, no marker.
        session.execute(f"DROP TABLE {ks}.series_index")
        session.execute(f"DELETE FROM {ks}.schema_info WHERE key = %s", (series_index.MARKER,))
        with pytest.raises(Exception, match=r"series_index is missing.*schema update"):
            schema.check(session, ks)
        _, notes = schema.update(session, config, ttl=False, replication=False)
        assert f"created {ks}.series_index" in notes
        upgraded = CassandraSink(config)
        upgraded.open()
        try:
            assert series_index.indexed_from(session, ks) == MIDNIGHT // 86400 + 1
            store.refresh(force=True)
            assert all_answers(store) == expected
            # The new sink indexes what it writes from now on; the old days still scan.
            asyncio.run(upgraded.write(series[:1]))
            store.refresh(force=True)
            assert all_answers(store) == expected
        finally:
            upgraded.close()
    finally:
        drop_keyspace(full.session, config.keyspace)
        full.close()


def test_index_entries_are_written_once_and_before_the_windows(
        cassandra_env: dict[str, str]) -> None:
    config = cassandra_config(cassandra_env, keyspace=f"six_{uuid.uuid4().hex[:10]}")
    opened = open_new_keyspace(config, (CPU,))
    ks, session = config.keyspace, opened.session
    entity = EntityId(urn("once"), "once", "app", "vdc", "acme")
    day = MIDNIGHT // 86400 - 1

    def cpu(first: int, last: int) -> Series:
        stamps = np.arange(MIDNIGHT - 86400 + first + 20, MIDNIGHT - 86400 + last + 1, 20,
                           dtype=np.int64)
        return Series("vc1", "vm-1", CPU, "", stamps, np.ones(len(stamps), np.int64), entity)

    def index_rows() -> list[tuple[int, ...]]:
        return [tuple(sorted(r.hours)) for r in session.execute(
            f"SELECT hours FROM {ks}.series_index WHERE day = %s AND shard = %s",
            (day, series_index.shard_of(entity.vm)))]

    try:
        asyncio.run(opened.write([cpu(3 * H, 3 * H + 600)]))
        assert index_rows() == [(3,)]
        session.execute(f"TRUNCATE {ks}.series_index")
        asyncio.run(opened.write([cpu(3 * H + 600, 3 * H + 1200)]))  # nothing new: no write
        assert index_rows() == []
        asyncio.run(opened.write([cpu(4 * H, 4 * H + 600)]))  # a new hour: just that hour
        assert index_rows() == [(4,)]
        # An index write refused: the chunk fails and no window of it is stored.
        session.execute(f"DROP TABLE {ks}.series_index")
        with pytest.raises(BatchRejected):
            asyncio.run(opened.write([cpu(7 * H, 7 * H + 600)]))
        stored = list(session.execute(
            f"SELECT window_start FROM {ks}.samples WHERE vm_id = %s AND day = %s",
            (entity.vm, day)))
        assert len(stored) == 6 and all(
            row.window_start.hour in (3, 4) for row in stored)
    finally:
        drop_keyspace(session, ks)
        opened.close()


def test_index_updates_of_many_vms_are_all_stored_and_remembered(sink: CassandraSink) -> None:
    """200 VMs with 40 long instance names each, batched per (day, shard) partition."""
    writer = series_index.IndexWriter(sink.session, sink.config.keyspace)
    day = MIDNIGHT // 86400 - 10
    long_names = {f"disk.read.average|naa.{'6' * 32}:{i}" for i in range(40)}
    entries = {(f"urn:vcloud:vm:many-{n}", day): ({1, 2}, long_names) for n in range(200)}
    new = writer.news(entries)
    statements = writer.statements(new)
    for statement in statements:
        sink.session.execute(statement)
    stored = list(sink.session.execute(
        f"SELECT vm_id, series FROM {sink.config.keyspace}.series_index WHERE day = %s "
        "AND shard IN %s", (day, ValueSequence(range(series_index.SHARDS)))))
    assert len(stored) == 200 and all(set(row.series) == long_names for row in stored)
    writer.remember(new)
    assert writer.news(entries) == {}


def test_cached_index_days_keep_scopes_and_samples_stay_fresh(sink: CassandraSink) -> None:
    """Metadata answers reuse the days read (cache_seconds), but per caller's scope; a Select
    of samples reads the index afresh, so an hour written meanwhile is not skipped."""
    store = SeriesStore(sink.session, sink.config.keyspace, retention_seconds=14 * 86400,
                        max_series=10_000, cache_seconds=600.0)
    everything = answer(store, -24, 3, SELECTORS[0], True)
    assert vms_of(everything) == {"acme-a", "acme-b", "globex-c", "globex-e"}
    acme = answer(store, -24, 3, SELECTORS[0], True, frozenset({"acme"}))
    assert vms_of(acme) == {"acme-a", "acme-b"}
    assert acme == [row for row in everything if dict(row[0])["org"] == "acme"]
    vms, _ = fleet()
    late = vms[3]
    assert late.entity is not None
    stamps = np.arange(MIDNIGHT + 8 * H + 20, MIDNIGHT + 8 * H + 601, 20, dtype=np.int64)
    asyncio.run(sink.write([Series("vc1", late.moref, CPU, "", stamps,
                                   np.full(len(stamps), 4200, np.int64), late.entity)]))
    rows = answer(store, 7.9, 8.5, SELECTORS[1], False)
    assert vms_of(rows) == {"globex-e"} and rows[0][1] == stamps.tolist()
