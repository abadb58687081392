"""The read API's cache of settled hours against the real Cassandra: answers with it, cold and
warm, equal those without it over ranges that start and end inside hours and cross midnight;
a settled hour rewritten in Cassandra is answered from memory while a newer one is read
again; newer hours are answered from memory until a sink's write moves the stamps; a
tenant's scope holds over a cache warmed by a provider-wide query; the memory bound holds."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from statsfeeder.errors import SchemaMismatch
from statsfeeder.model import Counter, EntityId, Series, VirtualMachine
from statsfeeder.readapi.index import FEW_VMS
from statsfeeder.readapi.instrument import SelectCounter
from statsfeeder.readapi.settled import SettledCache
from statsfeeder.readapi.store import Matcher, Scope, SelectRequest, SeriesStore
from statsfeeder.sinks.cassandra import schema
from statsfeeder.sinks.cassandra.series_index import IndexWriter, entries
from statsfeeder.sinks.cassandra.sink import CassandraSink
from statsfeeder.sinks.cassandra.writer import CassandraWriter
from statsfeeder.telemetry import ReadApiMetrics
from tests.frames import Read, claims_match, read_frame
from tests.helpers import cassandra_config, drop_keyspace, open_new_keyspace

CPU = Counter("cpu.usage.average", 2, "percent")
DISK = Counter("disk.read.average", 130, "kiloBytesPerSecond", per_instance=True)
H = 3600
NOW = int(time.time()) // 20 * 20
SETTLED = 90 * 60
ALL = (Matcher("=~", "__name__", ".+"),)
CPU_ONLY = (Matcher("=", "__name__", "vsphere_vm_cpu_usage_average_percent"),)


def vm(number: int, org: str) -> VirtualMachine:
    name = f"{org}-{number}"
    entity = EntityId(f"urn:vcloud:vm:{uuid.uuid5(uuid.NAMESPACE_URL, name)}", name,
                      f"{org}-app", f"{org}-vdc", org)
    return VirtualMachine("vc1", f"vm-{number}", name, str(uuid.uuid4()), "", True, entity)


VMS = [vm(0, "acme"), vm(1, "acme"), vm(2, "globex")]


def samples(machine: VirtualMachine, counter: Counter, instance: str, first: int, last: int,
            shift: int = 0) -> Series:
    stamps = np.arange(first, last + 1, 20, dtype=np.int64)
    values = (stamps // 20 % 500 + shift).astype(np.int64)
    return Series("vc1", machine.moref, counter, instance, stamps, values, machine.entity)


@pytest.fixture(scope="module")
def sink(cassandra_env: dict[str, str]) -> Iterator[CassandraSink]:
    config = cassandra_config(cassandra_env, keyspace=f"settled_{uuid.uuid4().hex[:10]}")
    opened = open_new_keyspace(config, (CPU, DISK))
    first = NOW - 30 * H
    series = [samples(m, CPU, "", first, NOW) for m in VMS]
    series.append(samples(VMS[0], DISK, "scsi0:0", first, NOW))
    asyncio.run(opened.save_entities(VMS))
    asyncio.run(opened.write(series))
    yield opened
    drop_keyspace(opened.session, config.keyspace)
    opened.close()


def store_of(sink: CassandraSink, cache: SettledCache | None = None) -> SeriesStore:
    return SeriesStore(sink.session, sink.config.keyspace, retention_seconds=14 * 86400,
                       max_series=10_000, cache_seconds=0.0, settled=cache)


def answer(store: SeriesStore, start: int, end: int, matchers: tuple[Matcher, ...] = ALL,
           scope: Scope = None) -> list[tuple[Any, ...]]:
    request = SelectRequest(start * 1000, end * 1000, matchers)
    return sorted((tuple(sorted(labels.items())), stamps.tolist(), values.tolist())
                  for labels, stamps, values in store.series(request, scope))


MIDNIGHT = NOW // 86400 * 86400
RANGES = [(NOW - 30 * H + 7, NOW), (NOW - 26 * H - 1234, NOW - 20 * H + 17),
          (MIDNIGHT - 2 * H - 300, MIDNIGHT + H + 40), (NOW - 3 * H, NOW - H),
          (NOW - 10 * H + 1, NOW - 10 * H + 600), (NOW - H, NOW),
          # starting in an hour's last window, and ending in a window's first seconds
          (NOW // H * H - 5 * H - 150, NOW // H * H - 2 * H + 10)]


def frame(store: SeriesStore, start: int, end: int, matchers: tuple[Matcher, ...]) -> Read:
    """What the engine reads: each series' samples in range (sent packed or as hour
    pieces), and that its header counts them all."""
    found = read_frame(b"".join(store.select(SelectRequest(start * 1000, end * 1000, matchers),
                                             None)))
    assert claims_match(found) == {}
    return found


def test_answers_equal_those_without_the_cache_cold_and_warm(sink: CassandraSink) -> None:
    plain = store_of(sink)
    cache = SettledCache(64 << 20, SETTLED)
    cached = store_of(sink, cache)
    for start, end in RANGES:
        for matchers in (ALL, CPU_ONLY):
            expected = answer(plain, start, end, matchers)
            assert expected, (start, end)
            packed = frame(plain, start, end, matchers)
            for when in ("cold", "warm"):
                assert answer(cached, start, end, matchers) == expected, (start, end, when)
                assert frame(cached, start, end, matchers) == packed, (start, end, when)
    assert len(cache) > 0
    assert 0 < cache.bytes <= 64 << 20


def test_a_settled_hour_is_answered_from_memory_and_a_newer_one_read_again(
        sink: CassandraSink) -> None:
    counts = {"hit": 0, "miss": 0}

    def counted(hit: int, missed: int) -> None:
        counts["hit"] += hit
        counts["miss"] += missed

    cached = store_of(sink, SettledCache(64 << 20, SETTLED, counted=counted))
    start, end = NOW - 6 * H, NOW
    before = answer(cached, start, end, CPU_ONLY)
    missed = counts["miss"]
    assert missed >= 3 and counts["hit"] == 0
    # Whole windows (a window holds the 5 minutes after its start), rewritten as a collector
    # would, except that it never rewrites an hour this old: this test does, behind the cache.
    old_hour = (NOW - 4 * H) // H * H
    recent = (NOW - 40 * 60) // 300 * 300
    rewrite = [samples(VMS[0], CPU, "", old_hour + 20, old_hour + 300, shift=7),
               samples(VMS[0], CPU, "", recent + 20, recent + 300, shift=7)]
    asyncio.run(sink.write(rewrite))
    after = answer(cached, start, end, CPU_ONLY)
    # The settled hours kept; the newer ones read again (the sink's write moved the stamps).
    assert counts["hit"] >= 3 and counts["miss"] > missed
    fresh = answer(store_of(sink), start, end, CPU_ONLY)
    changed = {t for (a, b) in ((before, after), (before, fresh))
               for ra, rb in zip(a, b, strict=True)
               for t, va, vb in zip(ra[1], ra[2], rb[2], strict=True) if va != vb}
    in_old = {t for t in changed if old_hour <= t < old_hour + H}
    in_recent = {t for t in changed if t > recent}
    assert in_old and in_recent  # Cassandra has both rewrites
    cached_changes = {t for ra, rb in zip(before, after, strict=True)
                      for t, va, vb in zip(ra[1], ra[2], rb[2], strict=True) if va != vb}
    assert cached_changes == in_recent  # the cache kept the settled hour as first read
    assert not cached_changes & in_old
    # Put the values back for the other tests.
    asyncio.run(sink.write([samples(VMS[0], CPU, "", old_hour + 20, old_hour + 300),
                            samples(VMS[0], CPU, "", recent + 20, recent + 300)]))


def write_behind_the_stamps(sink: CassandraSink, series: list[Series]) -> None:
    """Index entries and windows as the sink writes them, but without moving the stamps."""
    insert = sink.session.prepare(
        f"INSERT INTO {sink.config.keyspace}.samples "
        "(vm_id, day, metric, instance, window_start, data) VALUES (?, ?, ?, ?, ?, ?)")
    partitions = CassandraWriter(sink.session, sink.config).rows(series)
    index = IndexWriter(sink.session, sink.config.keyspace)
    for statement in index.statements(entries(partitions)):
        sink.session.execute(statement)
    for rows in partitions.values():
        for row in rows:
            sink.session.execute(insert, row)


def test_newer_hours_are_answered_from_memory_until_a_write_moves_the_stamps(
        sink: CassandraSink) -> None:
    cached = store_of(sink, SettledCache(64 << 20, SETTLED))
    start, end = NOW - 80 * 60, NOW  # nothing settled
    first = answer(cached, start, end, CPU_ONLY)
    assert first == answer(store_of(sink), start, end, CPU_ONLY)
    recent = (NOW - 20 * 60) // 300 * 300
    changed = [samples(VMS[1], CPU, "", recent + 20, recent + 300, shift=11)]
    write_behind_the_stamps(sink, changed)
    fresh = answer(store_of(sink), start, end, CPU_ONLY)
    assert fresh != first  # Cassandra has the change ...
    assert answer(cached, start, end, CPU_ONLY) == first  # ... the kept hours do not
    asyncio.run(sink.write(changed))  # the same windows through the sink: the stamps move
    assert answer(cached, start, end, CPU_ONLY) == fresh
    asyncio.run(sink.write([samples(VMS[1], CPU, "", recent + 20, recent + 300)]))
    assert answer(cached, start, end, CPU_ONLY) == first
    # A series new to the index: the index days kept are as old as the hours kept.
    everything = answer(cached, start, end)
    disk = [samples(VMS[1], DISK, "scsi0:9", recent + 20, recent + 300)]
    write_behind_the_stamps(sink, disk)
    assert len(answer(store_of(sink), start, end)) == len(everything) + 1
    assert answer(cached, start, end) == everything
    asyncio.run(sink.write(disk))
    assert answer(cached, start, end) == answer(store_of(sink), start, end) != everything


def test_a_scope_holds_over_a_cache_warmed_provider_wide(sink: CassandraSink) -> None:
    cache = SettledCache(64 << 20, SETTLED)
    cached = store_of(sink, cache)
    start, end = NOW - 12 * H, NOW - 2 * H
    everyone = answer(cached, start, end)
    assert {dict(labels)["org"] for labels, _, _ in everyone} == {"acme", "globex"}
    for org in ("acme", "globex"):
        mine = answer(cached, start, end, scope=frozenset({org}))
        assert mine and {dict(labels)["org"] for labels, _, _ in mine} == {org}
        assert mine == answer(store_of(sink), start, end, scope=frozenset({org}))
    assert answer(cached, start, end, scope=frozenset({"nobody"})) == []


def test_memory_stays_within_its_bound(sink: CassandraSink) -> None:
    bound = 40_000
    cache = SettledCache(bound, SETTLED)
    cached = store_of(sink, cache)
    for start, end in RANGES:
        assert answer(cached, start, end) == answer(store_of(sink), start, end)
        assert cache.bytes <= bound
    assert len(cache) > 0


def test_a_keyspace_from_before_the_stamps_is_named_updated_and_then_stamped(
        cassandra_env: dict[str, str]) -> None:
    config = cassandra_config(cassandra_env, keyspace=f"stamps_{uuid.uuid4().hex[:10]}")
    opened = open_new_keyspace(config, (CPU,))
    ks, session = config.keyspace, opened.session
    try:
        asyncio.run(opened.save_entities(VMS))
        asyncio.run(opened.write([samples(m, CPU, "", NOW - H, NOW) for m in VMS]))
        expected = answer(store_of(opened), NOW - H, NOW)
        session.execute(f"DROP TABLE {ks}.write_stamps")  # what an older version made
        # Without stamps the newer hours are read every time, and still answered.
        cached = store_of(opened, SettledCache(64 << 20, SETTLED))
        assert answer(cached, NOW - H, NOW) == expected == answer(cached, NOW - H, NOW)
        with pytest.raises(SchemaMismatch, match=rf"table {ks}\.write_stamps is missing; "
                           "run 'statsfeeder schema update'"):
            schema.check(session, ks)
        _, notes = schema.update(session, config, ttl=False, replication=False)
        assert f"created {ks}.write_stamps" in notes
        upgraded = CassandraSink(config)
        upgraded.open()
        try:
            asyncio.run(upgraded.write([samples(VMS[0], CPU, "", NOW - 300, NOW)]))
            stamps = list(session.execute(f"SELECT writer, stamp FROM {ks}.write_stamps"))
            assert len(stamps) == 1
            asyncio.run(upgraded.write([samples(VMS[0], CPU, "", NOW - 300, NOW)]))
            moved = list(session.execute(f"SELECT writer, stamp FROM {ks}.write_stamps"))
            assert moved[0].writer == stamps[0].writer and moved[0].stamp != stamps[0].stamp
        finally:
            upgraded.close()
    finally:
        drop_keyspace(session, ks)
        opened.close()


def test_a_selects_pieces_are_counted_as_parsing_them_counts(sink: CassandraSink) -> None:
    """The store's pieces say what they hold; the counter trusts that instead of parsing."""
    for max_series in (10_000, 2):
        store = SeriesStore(sink.session, sink.config.keyspace, retention_seconds=14 * 86400,
                            max_series=max_series, cache_seconds=0.0,
                            settled=SettledCache(64 << 20, SETTLED))
        pieces = list(store.select(SelectRequest((NOW - 30 * H) * 1000, NOW * 1000, ALL), None))
        told, parsed = SelectCounter(ReadApiMetrics(CollectorRegistry())), \
            SelectCounter(ReadApiMetrics(CollectorRegistry()))
        for piece in pieces:
            told.add(piece)
            parsed.add(bytes(piece))
        assert (told.series, told.samples, told.outcome, told.ended) == \
            (parsed.series, parsed.samples, parsed.outcome, parsed.ended)
        assert told.outcome == ("ok" if max_series > 2 else "limit") and told.samples > 0


def test_a_fleets_index_days_are_kept_until_a_write_moves_the_stamps(
        cassandra_env: dict[str, str]) -> None:
    """More VMs than are read by key: the index days and which VMs have data in the hours
    asked are kept under the stamps, and a VM new to them is found once a sink wrote it."""
    config = cassandra_config(cassandra_env, keyspace=f"stamps_{uuid.uuid4().hex[:10]}")
    opened = open_new_keyspace(config, (CPU,))
    fleet = [vm(n, "acme") for n in range(FEW_VMS + 8)]
    try:
        asyncio.run(opened.save_entities(fleet))
        asyncio.run(opened.write([samples(m, CPU, "", NOW - H, NOW) for m in fleet[:-1]]))
        cached = store_of(opened, SettledCache(64 << 20, SETTLED))
        start, end = NOW - 50 * 60, NOW
        first = answer(cached, start, end, CPU_ONLY)
        assert len(first) == len(fleet) - 1 and first == answer(cached, start, end, CPU_ONLY)
        late = [samples(fleet[-1], CPU, "", NOW - 600, NOW)]
        write_behind_the_stamps(opened, late)
        assert len(answer(store_of(opened), start, end, CPU_ONLY)) == len(fleet)
        assert answer(cached, start, end, CPU_ONLY) == first
        asyncio.run(opened.write(late))
        assert answer(cached, start, end, CPU_ONLY) == answer(store_of(opened), start, end,
                                                               CPU_ONLY)
        assert len(answer(cached, start, end, CPU_ONLY)) == len(fleet)
    finally:
        drop_keyspace(opened.session, config.keyspace)
        opened.close()
