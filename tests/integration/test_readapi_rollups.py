"""The read API answering coarse range functions from the roll-ups, against the real Cassandra
and the real engine: for avg/max/min/sum/count_over_time over whole hours and days the answer
equals the raw path's (the same API with roll-ups off) over VMs created, powered off and
back on mid-hour, across a day boundary, whether the buckets come from the roll-up tables, are
folded from raw (the freshest hours) or both; ranges whose raw rows are gone are still
answered; other queries keep reading raw; a tenant sees only its orgs' VMs."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from aiohttp import web

from statsfeeder.model import VirtualMachine
from statsfeeder.readapi.store import Scope
from statsfeeder.rollups.compute import Placement
from statsfeeder.rollups.hook import Rollups
from statsfeeder.sinks.cassandra.sink import CassandraSink
from tests.helpers import cassandra_config, open_new_keyspace
from tests.readapi_fleet import drop, served
from tests.rollup_data import COUNTERS, FakeVm, samples, series_for

pytestmark = pytest.mark.cassandra_matrix

H, DAY = 3600, 86400
D = (int(time.time()) // DAY - 2) * DAY  # midnight two days ago: raw is still kept
FIRST, LAST = D - DAY, D + DAY + 3 * H  # samples in (FIRST, LAST]
ALWAYS = FakeVm("urn:vcloud:vm:aaaaaaaa-0001", "org1", "vdc1", "vapp1", seed=1)
CREATED = FakeVm("urn:vcloud:vm:aaaaaaaa-0002", "org1", "vdc1", "vapp1",
                 on_from=D - DAY + 10 * H + 25 * 60 + 7, seed=2)  # created 10:25:07
STOPPED = FakeVm("urn:vcloud:vm:aaaaaaaa-0003", "org1", "vdc1", "vapp2",
                 on_until=D + H + 35 * 60, seed=3)  # powered off 01:35 after midnight
GAP = FakeVm("urn:vcloud:vm:aaaaaaaa-0004", "org1", "vdc2", "vapp3", seed=4)
OTHER = FakeVm("urn:vcloud:vm:bbbbbbbb-0005", "org2", "vdc9", "vapp9", seed=5)
VMS = [ALWAYS, CREATED, STOPPED, GAP, OTHER]
GAP_OFF, GAP_ON = D - 2 * H + 40 * 60, D + 30 * 60 + 40  # off 22:40, back 00:30:40
FUNCS = ("avg_over_time", "max_over_time", "min_over_time", "sum_over_time",
         "count_over_time")
MHZ, PERCENT, NET = ("vsphere_vm_cpu_usagemhz_average_megahertz",
                     "vsphere_vm_cpu_usage_average_percent",
                     "vsphere_vm_net_received_average_kilobytes_per_second")
SHAPES = (  # (range, step, start, end): every shape keeps its evaluation times aligned
    ("1h", H, FIRST + H, LAST),
    ("3h", H, FIRST + 3 * H, LAST),
    ("1d", H, D, LAST),  # a moving day at an hourly step: 24 hourly buckets a window
    ("1d", DAY, D, D + DAY),  # whole days: the daily tier
    ("2h", 2 * H, D - 4 * H, D + 6 * H),
)


def to_vm(vm: FakeVm) -> VirtualMachine:
    return VirtualMachine("vc1", vm.vm[-8:], vm.vm[-6:], vm.vm, vm.vm, True, vm.entity())


async def store(sink: CassandraSink, vms: list[FakeVm]) -> None:
    """Raw samples through the real sink, then the roll-ups computed from them by the
    roll-up worker (as ``statsfeeder rollups rebuild`` does)."""
    sink.record_counters(COUNTERS)
    await sink.save_entities([to_vm(vm) for vm in vms])
    series = series_for([vm for vm in vms if vm is not GAP], FIRST, LAST)
    if GAP in vms:
        series += series_for([GAP], FIRST, GAP_OFF) + series_for([GAP], GAP_ON, LAST)
    for begin in range(0, len(series), 16):
        await sink.write(series[begin:begin + 16])
    hook = Rollups(sink, sink.config, None)
    try:
        await hook.worker().rebuild(
            {vm.vm: Placement(vm.org, vm.vdc, vm.vapp) for vm in vms}, FIRST // H,
            -(-LAST // H))
    finally:
        hook.close()


@pytest.fixture(scope="module")
def sink(cassandra_env: dict[str, str]) -> Iterator[CassandraSink]:
    config = cassandra_config(cassandra_env, keyspace=f"rr_{uuid.uuid4().hex[:10]}",
                              ttl_days=14)
    sink = open_new_keyspace(config)
    asyncio.run(store(sink, VMS))
    yield sink
    drop(sink)


@pytest.fixture(scope="module")
def servers(sink: CassandraSink) -> Iterator[dict[str, str]]:
    """raw: roll-ups off; table: every bucket from the roll-up tables; mixed: buckets up to
    about D+1d from the tables, the later ones folded from raw."""
    mixed = -(-(int(time.time()) - (D + DAY)) // H)
    with served(sink, rollups=False) as raw, served(sink, rollups_fresh_hours=0) as table, \
            served(sink, rollups_fresh_hours=mixed) as both:
        yield {"raw": raw, "table": table, "mixed": both}


def matrix(url: str, query: str, start: int, end: int, step: int) -> dict[Any, list[Any]]:
    answer = httpx.get(url + "/api/v1/query_range", params={
        "query": query, "start": str(start), "end": str(end), "step": str(step)}, timeout=120)
    assert answer.status_code == 200, answer.text
    result = answer.json()["data"]["result"]
    return {tuple(sorted(s["metric"].items())): [(t, float(v)) for t, v in s["values"]]
            for s in result}


def same(got: dict[Any, list[Any]], want: dict[Any, list[Any]], exact: bool) -> None:
    assert got.keys() == want.keys()
    for key, points in want.items():
        assert [t for t, _ in got[key]] == [t for t, _ in points], key
        values = [v for _, v in got[key]]
        expected = [v for _, v in points]
        assert values == (expected if exact else pytest.approx(expected, rel=1e-12)), key


@pytest.mark.parametrize("func", FUNCS)
def test_whole_bucket_functions_equal_the_raw_answer(servers: dict[str, str], func: str
                                                     ) -> None:
    # min, max and count are equal to the last bit; sums and averages add the same values
    # in another order (the roll-up's integer sum times the scale), so equal to rounding.
    exact = func in ("max_over_time", "min_over_time", "count_over_time")
    for name in (MHZ, PERCENT, NET):
        for rng, step, start, end in SHAPES:
            query = f"{func}({name}[{rng}])"
            want = matrix(servers["raw"], query, start, end, step)
            assert len(want) >= 4, query
            for kind in ("table", "mixed"):
                same(matrix(servers[kind], query, start, end, step), want, exact)
    # The data has what the roll-ups must get right: partial hours and an empty stretch.
    counts = matrix(servers["raw"], f'count_over_time({MHZ}{{vm="{GAP.vm}"}}[1h])',
                    FIRST + H, LAST, H)
    per_hour = dict(next(iter(counts.values())))
    assert 0 < per_hour[GAP_OFF // H * H + H] < 180 and D not in per_hour


def test_an_instant_query_at_a_day_boundary_uses_the_daily_tier(servers: dict[str, str]
                                                                 ) -> None:
    for func in FUNCS:
        answers = []
        for kind in ("raw", "table"):
            got = httpx.get(servers[kind] + "/api/v1/query", params={
                "query": f"{func}({MHZ}[1d])", "time": str(D + DAY)}, timeout=60).json()
            answers.append({tuple(sorted(s["metric"].items())): float(s["value"][1])
                            for s in got["data"]["result"]})
        assert len(answers[0]) == len(VMS)
        assert answers[1] == pytest.approx(answers[0], rel=1e-12)


@contextlib.contextmanager
def tampered(sink: CassandraSink, vm: FakeVm, hour: int, value: int) -> Iterator[int]:
    """One hourly roll-up row's max changed, to see which queries read it; restored after."""
    ks, session = sink.config.keyspace, sink.session
    where = ("WHERE vm_id = %s AND week = %s AND metric = 'cpu.usagemhz.average' "
             "AND hour = %s AND instance = ''")
    key = (vm.vm, hour // DAY // 7, hour * 1000)
    before = session.execute(f"SELECT max FROM {ks}.rollup_hourly {where}", key).one().max
    session.execute(f"UPDATE {ks}.rollup_hourly SET max = %s {where}", (value, *key))
    try:
        yield before
    finally:
        session.execute(f"UPDATE {ks}.rollup_hourly SET max = %s {where}", (before, *key))


def test_only_whole_bucket_queries_read_the_roll_ups(sink: CassandraSink,
                                                     servers: dict[str, str]) -> None:
    hour, at = D + 5 * H, D + 6 * H  # the tampered bucket is (D+5h, D+6h]
    selector = f'{MHZ}{{vm="{ALWAYS.vm}"}}'

    def both(query: str, start: int, end: int, step: int) -> tuple[Any, Any]:
        return (matrix(servers["table"], query, start, end, step),
                matrix(servers["raw"], query, start, end, step))

    with tampered(sink, ALWAYS, hour, 987_654_321):
        got, want = both(f"max_over_time({selector}[1h])", at - 2 * H, at, H)
        assert dict(next(iter(got.values())))[at] == 987_654_321
        assert dict(next(iter(want.values())))[at] < 987_654_321
        assert dict(next(iter(got.values())))[at - H] == dict(next(iter(want.values())))[at - H]
        # A 5-minute step, an unaligned start, an offset, a subquery, and functions the
        # roll-ups cannot answer read raw: the same answer as with roll-ups off.
        for query, start, end, step in (
                (f"max_over_time({selector}[1h])", at - 2 * H, at, 300),
                (f"max_over_time({selector}[1h])", at - 2 * H - 60, at, H),
                (f"max_over_time({selector}[1h] offset 1h)", at - H, at + H, H),
                (f"max_over_time(max_over_time({selector}[1h])[1h:1h])", at - H, at, H),
                (f"rate({selector}[1h])", at - 2 * H, at, H),
                (f"last_over_time({selector}[1h])", at - 2 * H, at, H)):
            got, want = both(query, start, end, step)
            assert got == want and want, query
    # The planner's label is not the user's to set.
    answer = httpx.get(servers["table"] + "/api/v1/query", params={
        "query": f'{MHZ}{{__sf_rollup__="hourly:max"}}', "time": str(at)}, timeout=60)
    assert answer.status_code == 400 and "reserved" in answer.json()["error"]


def test_hours_the_worker_has_not_rolled_up_yet_are_read_raw(sink: CassandraSink) -> None:
    """A mark left on an hour (the worker behind or stopped): from that hour on the buckets
    are folded from raw, so the stale row is not served."""
    hour, at = D + 5 * H, D + 6 * H
    query = f'max_over_time({MHZ}{{vm="{ALWAYS.vm}"}}[1h])'
    ks = sink.config.keyspace
    with tampered(sink, ALWAYS, hour, 987_654_321) as real:
        sink.session.execute(f"INSERT INTO {ks}.rollup_dirty (hour, shard, vm_id, org, vdc, "
                             "vapp) VALUES (%s, 3, %s, 'org1', 'vdc1', 'vapp1')",
                             (hour * 1000, ALWAYS.vm))
        try:
            with served(sink, rollups_fresh_hours=0) as url:
                got = matrix(url, query, at - 2 * H, at, H)
        finally:
            sink.session.execute(f"DELETE FROM {ks}.rollup_dirty WHERE hour = %s AND shard = 3",
                                 (hour * 1000,))
        assert dict(next(iter(got.values())))[at] == real


async def only_org1(request: web.Request) -> Scope:
    return frozenset({"org1"})


def test_a_tenant_sees_only_its_orgs_vms_from_roll_ups(sink: CassandraSink) -> None:
    with served(sink, only_org1, rollups_fresh_hours=0) as url:
        for query, step, start in ((f"max_over_time({MHZ}[1h])", H, D),
                                   (f"avg_over_time({MHZ}[1d])", DAY, D)):
            seen = {dict(key)["vm"] for key in matrix(url, query, start, D + DAY, step)}
            assert seen == {vm.vm for vm in VMS if vm.org == "org1"}, query
        guessed = matrix(url, f'sum_over_time({MHZ}{{vm="{OTHER.vm}"}}[1d])', D, D + DAY, DAY)
        assert guessed == {}


def test_ranges_whose_raw_rows_are_gone_come_from_the_roll_ups(
        cassandra_env: dict[str, str]) -> None:
    config = cassandra_config(cassandra_env, keyspace=f"rr_{uuid.uuid4().hex[:10]}",
                              ttl_days=14)
    old = open_new_keyspace(config)
    vms = [ALWAYS, STOPPED]
    try:
        asyncio.run(store(old, vms))
        old.session.execute(f"TRUNCATE {config.keyspace}.samples")  # raw expired
        mhz = next(c for c in COUNTERS if c.name == "cpu.usagemhz.average")
        with served(old, rollups_fresh_hours=0) as url, served(old, rollups=False) as raw:
            days = matrix(url, f"avg_over_time({MHZ}[1d])", D, D + DAY, DAY)
            hours = matrix(url, f"max_over_time({MHZ}[1h])", FIRST + H, LAST, H)
            assert matrix(raw, f"avg_over_time({MHZ}[1d])", D, D + DAY, DAY) == {}
        for vm in vms:
            key = next(k for k in days if dict(k)["vm"] == vm.vm)
            want = []
            for t in (D, D + DAY):
                stamps, values = samples(vm, mhz, "", t - DAY, t)
                if stamps.size:
                    want.append((t, pytest.approx(float(values.mean()), rel=1e-12)))
            assert days[key] == want, vm.vm
            stamps, values = samples(vm, mhz, "", FIRST, LAST)
            ends = (stamps - 1) // H * H + H
            want_hours = [(int(e), float(values[ends == e].max())) for e in np.unique(ends)]
            key = next(k for k in hours if dict(k)["vm"] == vm.vm)
            assert hours[key] == want_hours, vm.vm
    finally:
        drop(old)
