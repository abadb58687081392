"""Roll-ups against a real Cassandra: whatever order and overlap the raw rows arrive in (late
samples, an outage and its backfill, a window rewritten, a crash before the marks are
cleared), every hourly, daily, VDC and org row equals a recomputation from the raw samples."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from statsfeeder.rollups.compute import Placement
from statsfeeder.rollups.hook import Rollups
from statsfeeder.rollups.reader import read_tenant, read_vm
from statsfeeder.rollups.worker import PassReport
from statsfeeder.sinks.cassandra.reader import read_series
from statsfeeder.sinks.cassandra.sink import CassandraSink
from statsfeeder.telemetry import Telemetry
from tests.helpers import cassandra_config, drop_keyspace, open_new_keyspace
from tests.rollup_data import COUNTERS, METRICS, FakeVm, series_for

pytestmark = pytest.mark.cassandra_matrix

DAY = 20_777 * 86400  # 2026-11-20 00:00 UTC: fixed, TTLs count from the write
H = 3600


@pytest.fixture
def sink(cassandra_env: dict[str, str]) -> Iterator[CassandraSink]:
    config = cassandra_config(cassandra_env, keyspace=f"t_{uuid.uuid4().hex[:12]}",
                              ttl_days=2, rollups={"settle_seconds": 0})
    sink = open_new_keyspace(config, COUNTERS)
    yield sink
    drop_keyspace(sink.session, config.keyspace)
    sink.close()


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def rollups(sink: CassandraSink, clock: Clock) -> Rollups:
    return Rollups(sink, sink.config, Telemetry(), clock)


async def cycle(sink: CassandraSink, hook: Rollups, vms: list[FakeVm], at: int,
                since: int | None = None, late: int = 0) -> None:
    """One collection cycle ending at ``at``: from a window boundary 10 minutes back (the
    overlap) or ``since``; the last ``late`` seconds not posted by vCenter yet."""
    start = since if since is not None else at - 600
    series = series_for(vms, start, at, drop_after=at - late if late else None)
    await sink.write(series)
    await hook.mark("cassandra", series)


def expected_vm(session: Any, ks: str, vm: str, since: int, until: int
                ) -> tuple[dict[tuple[str, str, int], tuple[int, ...]],
                           dict[tuple[str, str, int], tuple[int, ...]]]:
    """(hourly, daily) figures recomputed from the raw samples read back."""
    hourly: dict[tuple[str, str, int], tuple[int, ...]] = {}
    daily: dict[tuple[str, str, int], tuple[int, ...]] = {}
    for s in read_series(session, ks, vm, METRICS, since, until):
        for size, out in ((H, hourly), (86400, daily)):
            buckets = (s.timestamps - 1) // size
            for bucket in np.unique(buckets).tolist():
                values = s.values[buckets == bucket]
                hours = len(np.unique((s.timestamps[buckets == bucket] - 1) // H))
                figure = (int(values.min()), int(values.max()), int(values.sum()),
                          int(values.size), int(values[-1]))
                out[(s.metric, s.instance, bucket * size)] = (
                    figure if size == H else (*figure, hours))
    return hourly, daily


def stored_vm(session: Any, ks: str, vm: str, since: int, until: int
              ) -> tuple[dict[tuple[str, str, int], tuple[int, ...]],
                         dict[tuple[str, str, int], tuple[int, ...]], dict[int, Placement]]:
    hourly, daily, where = {}, {}, {}
    for s in read_vm(session, ks, vm, METRICS, "hourly", since, until):
        for p in s.points:
            a = p.agg
            hourly[(s.metric, s.instance, p.start)] = (a.min, a.max, a.sum, a.count, a.last)
            where[p.start] = p.placement
    for s in read_vm(session, ks, vm, METRICS, "daily", since, until):
        for p in s.points:
            a = p.agg
            daily[(s.metric, s.instance, p.start)] = (a.min, a.max, a.sum, a.count, a.last,
                                                      p.hours)
    return hourly, daily, where


def expected_tenant(hourly_of: dict[str, dict[tuple[str, str, int], tuple[int, ...]]],
                    member_at: dict[str, Any], metric: str
                    ) -> tuple[dict[int, tuple[Any, ...]], dict[int, tuple[Any, ...]]]:
    """A tenant's hours and days from its members' recomputed hours (independent code)."""
    hours: dict[int, list[tuple[int, ...]]] = {}
    for vm, figures in hourly_of.items():
        for (m, instance, start), figure in figures.items():
            if m == metric and instance == "" and member_at[vm](start):
                hours.setdefault(start, []).append(figure)
    per_hour = {start: (len(f), min(x[0] for x in f), max(x[1] for x in f),
                        sum(x[2] for x in f), sum(x[3] for x in f),
                        sum(x[2] / x[3] for x in f)) for start, f in hours.items()}
    per_day: dict[int, list[tuple[Any, ...]]] = {}
    for start, figure in per_hour.items():
        per_day.setdefault(start // 86400 * 86400, []).append(figure)
    days = {start: (max(f[0] for f in fs), len(fs), sum(f[0] for f in fs),
                    min(f[1] for f in fs), max(f[2] for f in fs), sum(f[3] for f in fs),
                    sum(f[4] for f in fs), sum(f[5] for f in fs) / len(fs),
                    max(f[5] for f in fs)) for start, fs in per_day.items()}
    return per_hour, days


def test_rollups_equal_a_recomputation_from_raw(sink: CassandraSink) -> None:
    asyncio.run(_scenario(sink))


async def _scenario(sink: CassandraSink) -> None:
    ks, session = sink.config.keyspace, sink.session
    start = DAY - 2 * H  # 22:00 the day before: the run crosses midnight
    always = FakeVm("urn:vcloud:vm:aaaaaaaa-0001", "org1", "vdc1", "vapp1", seed=1)
    created = FakeVm("urn:vcloud:vm:aaaaaaaa-0002", "org1", "vdc1", "vapp1",
                     on_from=DAY + 25 * 60 + 7, seed=2)  # created 00:25:07
    stopped = FakeVm("urn:vcloud:vm:aaaaaaaa-0003", "org1", "vdc1", "vapp2",
                     on_until=DAY + H + 35 * 60, seed=3)  # powered off 01:35
    mover = FakeVm("urn:vcloud:vm:aaaaaaaa-0004", "org1", "vdc1", "vapp3", seed=4)
    other = FakeVm("urn:vcloud:vm:bbbbbbbb-0005", "org2", "vdc9", "vapp9", seed=5)
    vms = [always, created, stopped, mover, other]
    clock = Clock(start)
    hook = rollups(sink, clock)
    worker = hook.worker()
    # 22:00-23:10 in 5-minute cycles; vCenter posts the last minute of each one late.
    for at in range(start + 300, start + 70 * 60 + 1, 300):
        await cycle(sink, hook, vms, at, late=60)
        clock.now = at + 30
        await worker.run_pass()  # settle 0: hours still being written get rolled up too
    # Outage 23:10-00:45; the backfill reaches back an hour (23:45), then normal cycles.
    await cycle(sink, hook, vms, DAY + 45 * 60, since=DAY - 15 * 60)
    # A crash after rolling up but before clearing the marks: the restart redoes them.
    metrics = sorted(METRICS)
    for hour in (DAY // H - 1, DAY // H):
        marks = [m for shard in range(8) for m in await hook.store().marks(hour, shard)]
        await worker.roll_hour(hour, marks, metrics, PassReport())
    hook.close()
    hook = rollups(sink, clock)  # the restart: a new process, nothing in memory
    worker = hook.worker()
    for at in range(DAY + 50 * 60, DAY + 2 * H + 1, 300):
        if at == DAY + H:
            # Moved just before 01:00: this cycle re-reads 00:50-01:00 with the new identity,
            # yet hour 0 stays where its samples were first collected.
            mover.vdc, mover.vapp = "vdc2", "vapp4"
        await cycle(sink, hook, vms, at, late=40)
        clock.now = at + 30
        if at % (3 * 300) == 0:
            await worker.run_pass()
    # A window rewritten whole with its late samples, then the last pass after settling.
    await cycle(sink, hook, vms, DAY + 2 * H + 300, since=DAY + 2 * H - 300)
    clock.now = DAY + 3 * H + 60
    await worker.run_pass()
    hook.close()

    since, until = start - H, DAY + 3 * H  # the first cycle's overlap reached into 21:00
    hourly_of = {}
    for vm in vms:
        want_hours, want_days = expected_vm(session, ks, vm.vm, since, until)
        got_hours, got_days, where = stored_vm(session, ks, vm.vm, since, until)
        assert got_hours == want_hours, vm.vm
        assert got_days == want_days, vm.vm
        hourly_of[vm.vm] = want_hours
        if vm is mover:
            assert {h: p.vdc for h, p in where.items()} == {
                h: "vdc1" if h < DAY + H else "vdc2" for h in where}
    # The outage left hour 23 with 23:00-23:09 (the last minute was late and never re-read)
    # and 23:45-24:00 (the backfill reaches back an hour).
    assert hourly_of[always.vm][("cpu.usagemhz.average", "", DAY - H)][3] == 27 + 45
    assert hourly_of[created.vm][("cpu.usagemhz.average", "", DAY)][3] == 105
    assert hourly_of[stopped.vm][("cpu.usagemhz.average", "", DAY + H)][3] == 105

    def in_vdc(vdc: str, vm: FakeVm) -> Any:
        if vm is mover:
            return lambda h: (vdc == "vdc1") == (h < DAY + H)
        return lambda h: vm.vdc == vdc

    for scope, tenant, member_at in (
            ("vdc", "vdc1", {vm.vm: in_vdc("vdc1", vm) for vm in vms}),
            ("vdc", "vdc2", {vm.vm: in_vdc("vdc2", vm) for vm in vms}),
            ("org", "org1", {vm.vm: (lambda h, vm=vm: vm.org == "org1") for vm in vms})):
        for metric in ("cpu.usagemhz.average", "net.received.average"):
            want_hours, want_days = expected_tenant(hourly_of, member_at, metric)
            got = read_tenant(session, ks, scope, tenant, [metric], "hourly", since, until)
            got_hours = {p.start: (p.agg.vms, p.agg.min, p.agg.max, p.agg.sum, p.agg.count,
                                   pytest.approx(p.agg.total_mean)) for p in got.get(metric, [])}
            assert got_hours == want_hours, (tenant, metric)
            got = read_tenant(session, ks, scope, tenant, [metric], "daily", since, until)
            got_days = {p.start: (p.agg.vms, p.agg.hours, p.agg.vm_hours, p.agg.min, p.agg.max,
                                  p.agg.sum, p.agg.count, pytest.approx(p.agg.total_mean),
                                  pytest.approx(p.agg.total_peak))
                        for p in got.get(metric, [])}
            assert got_days == want_days, (tenant, metric)
    # No marks left behind.
    left = list(session.execute(f"SELECT hour FROM {ks}.rollup_dirty"))
    assert left == []


def test_rebuild_rolls_up_raw_rows_written_without_marks(sink: CassandraSink) -> None:
    """Raw rows from before the roll-ups (or whose marks expired): the command rolls them up."""
    from statsfeeder.model import VirtualMachine
    from tests.integration.test_cassandra_sink import cli

    ks, session = sink.config.keyspace, sink.session
    vms = [FakeVm("urn:vcloud:vm:dddddddd-0001", "org1", "vdc1", "vapp1", seed=21),
           FakeVm("urn:vcloud:vm:dddddddd-0002", "org1", "vdc2", "vapp2",
                  on_from=DAY + H + 600, seed=22)]
    asyncio.run(sink.write(series_for(vms, DAY - H, DAY + 3 * H)))
    asyncio.run(sink.save_entities([VirtualMachine("vc1", vm.vm[-8:], vm.vm, "", "", True,
                                                   vm.entity()) for vm in vms]))
    assert read_vm(session, ks, vms[0].vm, METRICS, "hourly", DAY - H, DAY + 3 * H) == []
    env = {"CASSANDRA_HOSTS": ",".join(sink.config.hosts),
           "CASSANDRA_PORT": str(sink.config.port),
           "CASSANDRA_USERNAME": sink.config.credentials.username,  # type: ignore[union-attr]
           "CASSANDRA_PASSWORD": sink.config.credentials.secret(),  # type: ignore[union-attr]
           "CASSANDRA_CA_FILE": str(sink.config.tls.ca_file)}
    done = cli("rollups", "rebuild", "--from", "2026-11-19T23:00Z", "--to", "2026-11-20T03:00Z",
               "--keyspace", ks, env=env)
    assert done.returncode == 0, done.stderr
    assert "8 VM-hours" in done.stdout
    for vm in vms:
        want_hours, want_days = expected_vm(session, ks, vm.vm, DAY - H, DAY + 3 * H)
        got_hours, got_days, _ = stored_vm(session, ks, vm.vm, DAY - H, DAY + 3 * H)
        assert got_hours == want_hours and want_hours
        assert got_days == want_days
    got = read_tenant(session, ks, "org", "org1", ["cpu.usagemhz.average"], "hourly",
                      DAY - H, DAY + 3 * H)["cpu.usagemhz.average"]
    assert [p.agg.vms for p in got] == [1, 1, 2, 2]


def test_an_open_hour_is_marked_once_with_its_first_placement(sink: CassandraSink) -> None:
    """Cycles re-read the end of the last hour: while the worker cannot have taken that hour
    yet its mark is not written again; once it may have, it is, with the first placement."""
    ks, session = sink.config.keyspace, sink.session
    clock = Clock(DAY + 600)
    hook = rollups(sink, clock)
    vm = FakeVm("urn:vcloud:vm:eeeeeeee-0001", "org1", "vdc1", "vapp1", seed=31)

    def marks() -> list[tuple[str, str, int]]:
        return [(row.vm_id, row.vdc, row.written) for row in session.execute(
            f"SELECT vm_id, vdc, WRITETIME(vdc) AS written FROM {ks}.rollup_dirty")]

    async def run() -> None:
        await hook.mark("cassandra", series_for([vm], DAY, DAY + 300))
        first = marks()
        await hook.mark("kairosdb", series_for([vm], DAY + 300, DAY + 600))  # not Cassandra's
        vm.vdc = "vdc2"
        await hook.mark("cassandra", series_for([vm], DAY + 300, DAY + 600))
        assert marks() == first and first[0][:2] == (vm.vm, "vdc1")
        clock.now = DAY + H + 1  # settle 0: the worker may have taken hour 0 now
        await hook.mark("cassandra", series_for([vm], DAY + 600, DAY + 900))
        [(_, vdc, written)] = marks()
        assert vdc == "vdc1" and written > first[0][2]
        # While a collection cycle runs the worker waits; told to stop, it stops at once
        # and leaves the mark for the next start.
        clock.now = DAY + 2 * H
        stopping = asyncio.Event()
        task = asyncio.create_task(hook.worker(idle=lambda: False).run(stopping))
        await asyncio.sleep(1.5)
        assert not task.done() and read_vm(session, ks, vm.vm, METRICS, "hourly", DAY,
                                           DAY + H) == []
        stopping.set()
        await asyncio.wait_for(task, 2)
        assert len(marks()) == 1

    asyncio.run(run())
    hook.close()
