"""Read API: coarse range functions over a month from the roll-ups against the raw samples.

    .venv/bin/python bench/readapi_rollup_bench.py [--vms 100] [--rollup-vms 1000]
                                                   [--days 30] [--runs 3] [--json FILE]

``--vms`` VMs get ``--days`` days of 20-s ``cpu.usage.average`` samples written through the
real CassandraSink (raw TTL longer than the period, so the raw path can answer too) and their
hourly and daily roll-up rows; ``--rollup-vms`` more VMs (another org) get roll-up rows only,
as VMs whose raw samples expired. Roll-up rows are computed here from the same generated
samples with numpy (the roll-up worker's figures; tests/integration/test_readapi_rollups.py
shows the worker's rows give the raw answer) and written with unlogged batches, because
rolling up a month of raw rows through the worker would take longer than the bench.

Two read APIs in this process (roll-ups on, roll-ups off) answer each query ``--runs`` times
after a warm-up; the median wall time is reported and the answers compared.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
from cassandra.query import BatchStatement, BatchType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from peers import cassandra
from statsfeeder.model import Counter, EntityId, Series, VirtualMachine
from statsfeeder.rollups.schema import month_of_day, week_of_hour
from statsfeeder.sinks.cassandra.sink import CassandraSink
from tests.helpers import cassandra_config, open_new_keyspace
from tests.readapi_fleet import served

CPU = Counter("cpu.usage.average", 2, "percent")
NAME = "vsphere_vm_cpu_usage_average_percent"
H, DAY = 3600, 86400


def vm_of(index: int, org: str) -> VirtualMachine:
    urn = f"urn:vcloud:vm:{index:08x}-bench-{org}"
    return VirtualMachine("vc1", f"vm-{index}", f"bench-{index}", urn, urn, True,
                          EntityId(urn, f"bench-{index}", f"vapp-{index // 10}",
                                   f"vdc-{org}", org))


def values_of(index: int, stamps: np.ndarray) -> np.ndarray:
    """A seeded random walk around 30 % (vCenter's hundredths of a per cent)."""
    rng = np.random.default_rng(index)
    steps = rng.integers(-40, 41, stamps.size)
    return np.clip(3000 + np.cumsum(steps), 0, 10000).astype(np.int64)


async def write_raw(sink: CassandraSink, vms: list[VirtualMachine], first: int, last: int
                    ) -> int:
    stamps = np.arange(first + 20, last + 1, 20, dtype=np.int64)
    samples = 0
    for index, vm in enumerate(vms):
        values = values_of(index, stamps)
        assert vm.entity is not None
        batch = [Series("vc1", vm.moref, CPU, "", stamps[i:i + DAY // 20],
                        values[i:i + DAY // 20], vm.entity)
                 for i in range(0, stamps.size, DAY // 20)]
        samples += (await sink.write(batch)).samples
    return samples


def write_rollups(sink: CassandraSink, vms: list[VirtualMachine], offset: int, first: int,
                  last: int) -> None:
    ks, session = sink.config.keyspace, sink.session
    hourly = session.prepare(
        f"INSERT INTO {ks}.rollup_hourly (vm_id, week, metric, hour, instance, min, max, sum, "
        "count, last, org, vdc, vapp) VALUES (?, ?, ?, ?, '', ?, ?, ?, ?, ?, ?, ?, ?)")
    daily = session.prepare(
        f"INSERT INTO {ks}.rollup_daily (vm_id, month, metric, day, instance, min, max, sum, "
        "count, last, hours, org, vdc, vapp) VALUES (?, ?, ?, ?, '', ?, ?, ?, ?, ?, 24, ?, ?, ?)")
    stamps = np.arange(first + 20, last + 1, 20, dtype=np.int64)
    futures = []
    for index, vm in enumerate(vms):
        entity = vm.entity
        assert entity is not None
        where = (entity.org, entity.vdc, entity.vapp)
        values = values_of(index + offset, stamps)
        for size, statement in ((H, hourly), (DAY, daily)):
            per = values.reshape(-1, size // 20)
            figures = zip(per.min(1), per.max(1), per.sum(1), per[:, -1], strict=True)
            batch = BatchStatement(batch_type=BatchType.UNLOGGED)
            part = None
            for bucket, (low, high, total, final) in enumerate(figures):
                start = first + bucket * size
                key = (week_of_hour(start // H) if size == H else month_of_day(start // DAY))
                at = start * 1000 if size == H else start // DAY
                if part is not None and (key != part or len(batch) >= 50):
                    futures.append(session.execute_async(batch))
                    batch = BatchStatement(batch_type=BatchType.UNLOGGED)
                part = key
                batch.add(statement, (entity.vm, key, CPU.name, at, int(low), int(high),
                                      int(total), size // 20, int(final), *where))
            futures.append(session.execute_async(batch))
        if len(futures) > 64:
            for future in futures:
                future.result()
            futures = []
    for future in futures:
        future.result()


def measure(url: str, query: dict[str, str], runs: int) -> tuple[float, Any]:
    with httpx.Client(timeout=1800) as client:
        def once() -> Any:
            answer = client.get(url + "/api/v1/query_range", params=query)
            assert answer.status_code == 200, answer.text[:300]
            return answer.json()["data"]["result"]
        result = once()
        times = []
        for _ in range(runs):
            began = time.perf_counter()
            once()
            times.append(time.perf_counter() - began)
    return statistics.median(times), result


def same(a: list[Any], b: list[Any]) -> bool:
    def table(result: list[Any]) -> dict[Any, list[tuple[float, float]]]:
        return {tuple(sorted(s["metric"].items())): [(t, float(v)) for t, v in s["values"]]
                for s in result}
    left, right = table(a), table(b)
    return left.keys() == right.keys() and all(
        [t for t, _ in left[k]] == [t for t, _ in right[k]] and
        np.allclose([v for _, v in left[k]], [v for _, v in right[k]], rtol=1e-12, atol=0)
        for k in left)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vms", type=int, default=100)
    parser.add_argument("--rollup-vms", type=int, default=1000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    env = cassandra.up(SimpleNamespace(cassandra="3.11", cassandra_nodes=1))
    config = cassandra_config(env, keyspace=f"rrbench_{uuid.uuid4().hex[:8]}",
                              ttl_days=args.days + 3)
    last = int(time.time()) // DAY * DAY
    first = last - args.days * DAY
    raw_vms = [vm_of(i, "raworg") for i in range(args.vms)]
    old_vms = [vm_of(args.vms + i, "oldorg") for i in range(args.rollup_vms)]
    sink = open_new_keyspace(config, (CPU,))
    report: dict[str, Any] = {"vms": args.vms, "rollup_only_vms": args.rollup_vms,
                              "days": args.days, "queries": []}
    try:
        began = time.perf_counter()
        async def write() -> int:  # one loop: the sink's in-flight bound belongs to it
            await sink.save_entities(raw_vms + old_vms)
            return await write_raw(sink, raw_vms, first, last)

        report["raw_samples"] = asyncio.run(write())
        report["raw_write_s"] = round(time.perf_counter() - began, 1)
        began = time.perf_counter()
        write_rollups(sink, raw_vms, 0, first, last)
        write_rollups(sink, old_vms, args.vms, first, last)
        report["rollup_write_s"] = round(time.perf_counter() - began, 1)
        print(json.dumps(report), flush=True)
        queries = [
            (f"{args.vms} VMs, avg_over_time(cpu[1d]), {args.days} d, step 24 h",
             f'avg_over_time({NAME}{{org="raworg"}}[1d])', DAY),
            (f"{args.vms} VMs, max_over_time(cpu[1d]), {args.days} d, step 24 h",
             f'max_over_time({NAME}{{org="raworg"}}[1d])', DAY),
            (f"{args.vms} VMs, avg_over_time(cpu[1h]), {args.days} d, step 1 h",
             f'avg_over_time({NAME}{{org="raworg"}}[1h])', H),
            (f"{args.rollup_vms} VMs (raw expired), avg_over_time(cpu[1d]), {args.days} d, "
             "step 24 h", f'avg_over_time({NAME}{{org="oldorg"}}[1d])', DAY),
            (f"{args.rollup_vms} VMs (raw expired), sum by (org) (avg_over_time(cpu[1h])), "
             f"{args.days} d, step 1 h",
             f'sum by (org) (avg_over_time({NAME}{{org="oldorg"}}[1h]))', H),
        ]
        with served(sink, rollups_fresh_hours=0) as rollups, \
                served(sink, rollups=False) as raw:
            for name, query, step in queries:
                params = {"query": query, "start": str(first + step), "end": str(last),
                          "step": str(step)}
                fast, answer = measure(rollups, params, args.runs)
                row: dict[str, Any] = {"query": name, "rollups_s": round(fast, 3),
                                       "series": len(answer)}
                if "raw expired" not in name:
                    slow, expected = measure(raw, params, args.runs)
                    row.update(raw_s=round(slow, 3), same_answer=same(answer, expected))
                report["queries"].append(row)
                print(json.dumps(row), flush=True)
    finally:
        sink.session.execute(f"DROP KEYSPACE IF EXISTS {config.keyspace}")
        sink.close()
    print("\n| query | roll-ups | raw | same answer |\n|---|---|---|---|")
    for row in report["queries"]:
        raw_s = f"{row['raw_s'] * 1000:,.0f} ms" if "raw_s" in row else "(no raw rows)"
        print(f"| {row['query']} | {row['rollups_s'] * 1000:,.0f} ms | {raw_s} | "
              f"{'yes' if row.get('same_answer', True) else 'no'} |")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
