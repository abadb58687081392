"""Roll-up benchmark: cost per rolled-up sample, effect on a collection cycle, a month's report
from roll-ups against the same from raw samples, and bytes on disk per series-day.

    .venv/bin/python bench/rollup_bench.py [--vms 2000] [--report-vms 10000] [--version 3.11]

Data is generated (bench/cassandra_bench.py's ten counters) and written through the real
Cassandra sink and the real roll-up store; no vcsim. Cassandra shares this machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.cassandra_bench import COUNTERS, make_series, write_all
from peers import cassandra as cassandra_peer
from statsfeeder.model import Counter, EntityId, VirtualMachine
from statsfeeder.rollups.compute import Agg, Placement, TenantAgg
from statsfeeder.rollups.hook import Rollups
from statsfeeder.rollups.rawreport import build_from_raw
from statsfeeder.rollups.report import build
from statsfeeder.sinks.cassandra import schema
from statsfeeder.sinks.cassandra.session import connect
from statsfeeder.sinks.cassandra.sink import CassandraSink
from statsfeeder.telemetry import Telemetry
from tests.helpers import cassandra_config

H, DAY = 3600, 86400


def new_sink(env: dict[str, str], keyspace: str) -> CassandraSink:
    config = cassandra_config(env, keyspace=keyspace, ttl_days=14, max_in_flight=96,
                              rollups={"settle_seconds": 0, "max_in_flight": 16})
    cluster, session = connect(config)
    schema.create(session, config)
    cluster.shutdown()
    sink = CassandraSink(config)
    sink.open()
    sink.record_counters([Counter(name, key, unit) for key, (name, unit, _) in
                          enumerate(COUNTERS)])
    return sink


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def bench_cost(env: dict[str, str], vms: int, repeat: int = 3) -> dict[str, Any]:
    """One hour of N VMs stored with marks, then rolled up; then a 5-minute cycle of the same
    VMs alone, beside a roll-up pass that ignores cycles, and beside one that waits."""
    rng = np.random.default_rng(3)
    hour = int(time.time()) // H - 3
    keyspace = f"bench_rollup_{uuid.uuid4().hex[:6]}"
    sink = new_sink(env, keyspace)
    clock = {"now": float(hour * H)}
    hook = Rollups(sink, sink.config, Telemetry(), lambda: clock["now"])
    try:
        series = make_series(vms, hour * H, 180, rng)
        for index, item in enumerate(series):  # 50 orgs, 200 VDCs, as vCD names them
            v = index // len(COUNTERS)
            assert item.entity is not None
            item.entity = EntityId(item.entity.vm, f"vm-{v}", f"vapp-web-tier-{v % 2000:04}",
                                   f"customer-org-{v % 50:03}-vdc-{v % 200:03}",
                                   f"customer-org-{v % 50:03}")
        samples = sum(len(s) for s in series)
        wall0 = time.perf_counter()
        await write_all(sink, series, 500)
        write_s = time.perf_counter() - wall0
        cpu0, wall0 = cpu(), time.perf_counter()
        for begin in range(0, len(series), 5000):
            await hook.mark("cassandra", series[begin:begin + 5000])
        marks = {"cpu_s": cpu() - cpu0, "wall_s": time.perf_counter() - wall0}
        clock["now"] = (hour + 1) * H + 60
        cpu0, wall0 = cpu(), time.perf_counter()
        report = await hook.worker().run_pass()
        rolled = {"cpu_s": cpu() - cpu0, "wall_s": time.perf_counter() - wall0,
                  "vm_hours": report.vm_hours, "tenant_hours": report.tenant_hours,
                  "samples": report.samples,
                  "cpu_us_per_sample": (cpu() - cpu0) / max(1, report.samples) * 1e6}
        cycle_series = make_series(vms, (hour + 1) * H, 15, rng)

        async def cycle() -> float:
            began = time.perf_counter()
            await write_all(sink, cycle_series, 500)
            return time.perf_counter() - began

        cycles: dict[str, list[float]] = {"alone_s": [], "beside_greedy_pass_s": [],
                                          "beside_waiting_pass_s": []}
        # Alternated and repeated: other work on the machine moves single figures a lot.
        order = [("alone_s", True), ("beside_greedy_pass_s", False),
                 ("beside_waiting_pass_s", True)]
        for label, polite in [order[(i + r) % 3] for r in range(repeat) for i in range(3)]:
            await asyncio.sleep(10)  # Cassandra flushes what the last pass wrote meanwhile
            if label == "alone_s":
                cycles[label].append(await cycle())
                continue
            await hook.mark("cassandra", series)  # marked again: the pass redoes the hour
            running = {"cycle": True}

            def idle(polite: bool = polite, running: dict[str, bool] = running) -> bool:
                return not (polite and running["cycle"])

            worker = hook.worker(idle)
            rolling = asyncio.create_task(worker.run_pass())
            await asyncio.sleep(0.5)  # the pass is under way when the cycle starts
            cycles[label].append(await cycle())
            running["cycle"] = False
            await rolling
    finally:
        hook.close()
        sink.session.execute(f"DROP KEYSPACE IF EXISTS {keyspace}")
        sink.close()
    return {"vms": vms, "samples_in_hour": samples, "write_hour_s": write_s,
            "marks": marks, "rollup_pass": rolled,
            "cycle": {label: {"median": float(np.median(v)), "all": v}
                      for label, v in cycles.items()}}


def synthetic_agg(rng: np.random.Generator, level: int) -> Agg:
    low, high = sorted(int(x) for x in rng.integers(level // 2, 2 * level + 2, 2))
    count = 180
    return Agg(low, high, int((low + high) / 2 * count), count, int(rng.integers(low, high + 1)))


async def fill_rollups(sink: CassandraSink, hook: Rollups, vms: int, days: int,
                       first_day: int, hours: int) -> list[str]:
    """Daily rows for vms × days (and hourly rows for the first ``hours`` of each VM)."""
    rng = np.random.default_rng(4)
    store = hook.store()
    ids = [f"urn:vcloud:vm:{uuid.UUID(int=v + 1)}" for v in range(vms)]
    await sink.save_entities([VirtualMachine("bench", f"vm-{v}", ids[v], "", "", True,
                                             None) for v in range(vms)])
    where = [Placement(f"customer-org-{v % 50:03}", f"customer-org-{v % 50:03}-vdc-{v % 200:03}",
                       f"vapp-web-tier-{v % 2000:04}") for v in range(vms)]  # vCD names
    for v, vm in enumerate(ids):
        sink.session.execute(f"INSERT INTO {sink.config.keyspace}.entities (vm_id, name, org) "
                             "VALUES (%s, %s, %s)", (vm, f"vm-{v}", where[v].org))
    for begin in range(0, vms, 200):
        requests = []
        for v in range(begin, min(begin + 200, vms)):
            for day in range(first_day, first_day + days):
                aggs = {(name, ""): (synthetic_agg(rng, level), 24)
                        for name, _, level in COUNTERS}
                requests.append(store.put_day(ids[v], day, aggs, where[v]))
            for hour in range(first_day * 24, first_day * 24 + hours):
                requests.append(store.put_hour(ids[v], hour, {
                    (name, ""): synthetic_agg(rng, level) for name, _, level in COUNTERS},
                    where[v]))
        await asyncio.gather(*requests)
    for org in range(min(50, vms)):
        for day in range(first_day, first_day + days):
            name = f"customer-org-{org:03}"
            await store.put_tenant_day("org", name, day, name, {
                metric: TenantAgg(vms // 50, 24, 24 * vms // 50, 1, level * 2,
                                  level * 180 * 24, 180 * 24 * vms // 50, float(level),
                                  float(level))
                for metric, _, level in COUNTERS})
    return ids


def disk_bytes(version: str, keyspace: str, table: str) -> int:
    cassandra_peer.flush_and_compact(keyspace, table, version=version)
    dirs = list(cassandra_peer.data_dir(version).rglob(f"{keyspace}/{table}-*"))
    return sum(f.stat().st_size for d in dirs for f in d.rglob("*") if f.is_file()
               and "snapshots" not in f.parts and "backups" not in f.parts)


async def bench_report(env: dict[str, str], version: str, vms: int) -> dict[str, Any]:
    keyspace = f"bench_report_{uuid.uuid4().hex[:6]}"
    sink = new_sink(env, keyspace)
    hook = Rollups(sink, sink.config, Telemetry())
    first_day = int(time.time()) // DAY - 40
    since, until = first_day * DAY, (first_day + 30) * DAY
    try:
        began = time.perf_counter()
        await fill_rollups(sink, hook, vms, 30, first_day, 0)
        fill_s = time.perf_counter() - began
        timings = {}
        for by in ("vm", "org"):
            began = time.perf_counter()
            rows = build(sink.session, keyspace, since, until, by)  # type: ignore[arg-type]
            timings[f"report_by_{by}_s"] = time.perf_counter() - began
            timings[f"rows_by_{by}"] = len(rows)
    finally:
        hook.close()
        sink.session.execute(f"DROP KEYSPACE IF EXISTS {keyspace}")
        sink.close()
    # From raw: whole VM-days of samples for a few VMs, the same report, then per VM-day.
    raw_vms = 20
    keyspace = f"bench_raw_{uuid.uuid4().hex[:6]}"
    sink = new_sink(env, keyspace)
    try:
        day = int(time.time()) // DAY - 1
        series = make_series(raw_vms, day * DAY, DAY // 20, np.random.default_rng(5))
        await write_all(sink, series, 5)
        await sink.save_entities([VirtualMachine("bench", s.moref, s.moref, "", "", True,
                                                 s.entity) for s in series[::len(COUNTERS)]])
        began = time.perf_counter()
        rows = build_from_raw(sink.session, keyspace, day * DAY, (day + 1) * DAY, "vm")
        raw_s = time.perf_counter() - began
        assert len(rows) == raw_vms, len(rows)
    finally:
        sink.session.execute(f"DROP KEYSPACE IF EXISTS {keyspace}")
        sink.close()
    per_vm_day = raw_s / raw_vms
    return {"vms": vms, "days": 30, "fill_s": fill_s, **timings,
            "raw_s_per_vm_day": per_vm_day,
            "raw_month_estimate_s": per_vm_day * vms * 30}


async def bench_storage(env: dict[str, str], version: str, vms: int) -> dict[str, Any]:
    """Bytes on disk per series-day of each tier: one full week of hourly rows and 30 days of
    daily rows for ``vms`` VMs × 10 metrics, flushed and compacted."""
    keyspace = f"bench_rstore_{uuid.uuid4().hex[:6]}"
    sink = new_sink(env, keyspace)
    hook = Rollups(sink, sink.config, Telemetry())
    first_day = (int(time.time()) // DAY - 20) // 7 * 7
    try:
        await fill_rollups(sink, hook, vms, 30, first_day, 7 * 24)
        series_days_hourly = vms * len(COUNTERS) * 7
        series_days_daily = vms * len(COUNTERS) * 30
        hourly = disk_bytes(version, keyspace, "rollup_hourly")
        daily = disk_bytes(version, keyspace, "rollup_daily")
    finally:
        hook.close()
        sink.session.execute(f"DROP KEYSPACE IF EXISTS {keyspace}")
        sink.close()
    per_hourly, per_daily = hourly / series_days_hourly, daily / series_days_daily
    raw_per_series_day = 2.21 * DAY / 20  # docs/performance.md, Cassandra sink
    metrics = len(COUNTERS)
    return {"hourly_bytes_per_series_day": per_hourly,
            "daily_bytes_per_series_day": per_daily,
            "per_vm_held_bytes": {"raw_14d": raw_per_series_day * metrics * 14,
                                  "hourly_90d": per_hourly * metrics * 90,
                                  "daily_400d": per_daily * metrics * 400},
            "per_vm_written_per_year_bytes": {"raw": raw_per_series_day * metrics * 365,
                                              "hourly": per_hourly * metrics * 365,
                                              "daily": per_daily * metrics * 365}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", default="3.11", choices=("3.11", "4.1", "5.0"))
    parser.add_argument("--vms", type=int, default=2000)
    parser.add_argument("--report-vms", type=int, default=10000)
    parser.add_argument("--storage-vms", type=int, default=100)
    parser.add_argument("--only", choices=("cost", "report", "storage"))
    args = parser.parse_args()
    env = cassandra_peer.up(SimpleNamespace(cassandra=args.version, cassandra_nodes=1))
    result: dict[str, Any] = {"cassandra": args.version}
    if args.only in (None, "cost"):
        result["cost"] = asyncio.run(bench_cost(env, args.vms))
    if args.only in (None, "report"):
        result["report"] = asyncio.run(bench_report(env, args.version, args.report_vms))
    if args.only in (None, "storage"):
        result["storage"] = asyncio.run(bench_storage(env, args.version, args.storage_vms))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
