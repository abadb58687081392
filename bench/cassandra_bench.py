"""Cassandra sink benchmark: sustained write rate and bytes on disk per sample.

    .venv/bin/python bench/cassandra_bench.py [--version 3.11] [--vms 3000] [--windows 6]
                                              [--storage-vms 20]

Write speed: VMs x 10 metrics x N five-minute windows of 20-s samples, written through the
real sink (TLS, password, prepared statements, unlogged single-partition batches) into the
local node that shares this machine's cores; reports samples/s and client CPU per sample.
Storage: whole VM-days, flushed and compacted with nodetool, bytes of the table's SSTables per
stored sample, and the time to read one VM's metric for one day back.
Synthetic values: half noisy around a base (20 % gaussian), half random walks, in the value
ranges vCenter reports for each counter.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from peers import cassandra as cassandra_peer
from statsfeeder.model import Counter, EntityId, Series
from statsfeeder.sinks.cassandra import schema
from statsfeeder.sinks.cassandra.reader import read_series
from statsfeeder.sinks.cassandra.session import connect
from statsfeeder.sinks.cassandra.sink import CassandraSink
from tests.helpers import cassandra_config

COUNTERS = [  # name, unit, typical level
    ("cpu.usage.average", "percent", 2500), ("cpu.usagemhz.average", "megaHertz", 900),
    ("cpu.usage.maximum", "percent", 4000), ("mem.usage.average", "percent", 3500),
    ("disk.provisioned.latest", "kiloBytes", 41_943_040),
    ("disk.used.latest", "kiloBytes", 12_000_000), ("disk.read.average", "kiloBytesPerSecond",
                                                    300),
    ("disk.write.average", "kiloBytesPerSecond", 500),
    ("net.received.average", "kiloBytesPerSecond", 120),
    ("net.transmitted.average", "kiloBytesPerSecond", 80),
]
DAY = 86400


def make_series(vms: int, start: int, samples: int, rng: np.random.Generator) -> list[Series]:
    stamps = start + 20 * np.arange(1, samples + 1, dtype=np.int64)
    out = []
    for v in range(vms):
        entity = EntityId(f"urn:vcloud:vm:{uuid.UUID(int=rng.integers(1 << 62) + v)}")
        for key, (name, unit, level) in enumerate(COUNTERS):
            if v % 2:
                values = level + rng.normal(0, 0.2 * level, samples)
            else:
                values = level + np.cumsum(rng.normal(0, 0.02 * level, samples))
            if name.startswith("disk.provisioned"):
                values = np.full(samples, level)
            out.append(Series("bench", f"vm-{v}", Counter(name, key, unit), "", stamps,
                              np.clip(values, 0, None).astype(np.int64), entity))
    return out


async def write_all(sink: CassandraSink, series: list[Series], chunk_vms: int) -> None:
    per_chunk = chunk_vms * len(COUNTERS)
    for begin in range(0, len(series), per_chunk):
        await sink.write(series[begin:begin + per_chunk])


def new_sink(env: dict[str, str], keyspace: str) -> CassandraSink:
    config = cassandra_config(env, keyspace=keyspace, ttl_days=14, max_in_flight=96)
    cluster, session = connect(config)
    schema.create(session, config)
    cluster.shutdown()
    sink = CassandraSink(config)
    sink.open()
    return sink


async def bench_write(env: dict[str, str], vms: int, windows: int) -> dict[str, float]:
    rng = np.random.default_rng(1)
    start = (int(time.time()) // 300 - windows) * 300
    series = make_series(vms, start, windows * 15, rng)
    samples = sum(len(s) for s in series)
    sink = new_sink(env, "bench_write")
    try:
        await write_all(sink, series[: 50 * len(COUNTERS)], 50)  # warm-up
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await write_all(sink, series, 500)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    finally:
        sink.session.execute("DROP KEYSPACE IF EXISTS bench_write")
        sink.close()
    return {"samples": samples, "seconds": wall, "samples_per_s": samples / wall,
            "client_cpu_us_per_sample": cpu / samples * 1e6}


async def bench_storage(env: dict[str, str], version: str, vms: int) -> dict[str, float]:
    rng = np.random.default_rng(2)
    day_start = (int(time.time()) // DAY - 1) * DAY
    series = make_series(vms, day_start, DAY // 20, rng)  # end-stamped: one whole day
    samples = sum(len(s) for s in series)
    sink = new_sink(env, "bench_storage")
    try:
        await write_all(sink, series, 5)
        cassandra_peer.flush_and_compact("bench_storage", "samples", version=version)
        table_dirs = list((cassandra_peer.data_dir(version) / "data" / "bench_storage")
                          .glob("samples-*"))
        if not table_dirs:
            table_dirs = list(cassandra_peer.data_dir(version).rglob("bench_storage/samples-*"))
        size = sum(f.stat().st_size for d in table_dirs for f in d.rglob("*") if f.is_file()
                   and "snapshots" not in f.parts and "backups" not in f.parts)
        vm = series[0].entity.vm if series[0].entity else ""
        began = time.perf_counter()
        for _ in range(5):
            [found] = read_series(sink.session, "bench_storage", vm, ["cpu.usage.average"],
                                  day_start, day_start + DAY)
        read_ms = (time.perf_counter() - began) / 5 * 1000
        assert len(found.timestamps) == DAY // 20, len(found.timestamps)
    finally:
        sink.session.execute("DROP KEYSPACE IF EXISTS bench_storage")
        sink.close()
    return {"samples": samples, "bytes_on_disk": size, "bytes_per_sample": size / samples,
            "read_one_vm_metric_day_ms": read_ms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", default="3.11", choices=("3.11", "4.1", "5.0"))
    parser.add_argument("--vms", type=int, default=3000)
    parser.add_argument("--windows", type=int, default=6)
    parser.add_argument("--storage-vms", type=int, default=20)
    args = parser.parse_args()
    env = cassandra_peer.up(SimpleNamespace(cassandra=args.version, cassandra_nodes=1))
    result = {"cassandra": args.version,
              "write": asyncio.run(bench_write(env, args.vms, args.windows)),
              "storage": asyncio.run(bench_storage(env, args.version, args.storage_vms))}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
