"""What a dashboard's query costs right after a collector's write, against the same query
with no write in between: the read API keeps the newest hours in memory only until a sink
moves its write stamp (docs/read-api.md), so the first query after each cycle reads them again.

    STATSFEEDER_CACHE=~/.cache/statsfeeder-readbench STATSFEEDER_PEER_PORT_OFFSET=200 \\
        .venv/bin/python bench/readapi_after_write.py [--runs 5]

Data: the keyspace ``bench/readapi_select_profile.py --keep`` leaves (2 orgs x 1,000 VMs, the
first org's VMs 24 h of CPU); run that first. ``statsfeeder serve`` answers the org sum (1,000
VMs, 24 h, step 5 min) and topk over the last hour; between two answers the real
CassandraSink writes one window of one VM, as a cycle would.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.readapi_bench import CPU, TOKEN, start_statsfeeder
from bench.readapi_data import fleet
from peers import cassandra
from statsfeeder.model import Counter, EntityId, Series
from statsfeeder.sinks.cassandra.sink import CassandraSink
from tests.helpers import cassandra_config
from tests.tenancy_fleet import free_port

KEYSPACE = "readapi_select_profile"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    marker = Path.home() / ".cache" / f"{KEYSPACE}.end"
    if not marker.exists():
        raise SystemExit("run bench/readapi_select_profile.py --keep first (its keyspace)")
    end = int(float(marker.read_text()))
    env_c = cassandra.up(SimpleNamespace(cassandra="3.11", cassandra_nodes=1))
    vms = fleet(2, 1000)
    sink = CassandraSink(cassandra_config(env_c, keyspace=KEYSPACE, ttl_days=3))
    sink.open()
    vm = vms[1]
    stamps = np.arange(end - 280, end + 1, 20, dtype=np.int64)
    write = Series("vc", vm.moref, Counter("cpu.usage.average", 2, "percent"), "", stamps,
                   np.full(len(stamps), 1234, dtype=np.int64),
                   EntityId(vm.urn, vm.name, vm.vapp, vm.vdc, vm.org))
    queries = {
        "an org's sum, 1,000 VMs, 24 h, step 5 min": {
            "query": f'sum({CPU}{{org="{vms[0].org}"}})', "start": end - 86400, "end": end,
            "step": 300},
        "topk(10, cpu) over the last hour, step 60 s": {
            "query": f"topk(10, {CPU})", "start": end - 3600, "end": end, "step": 60},
    }
    serve, url = start_statsfeeder(env_c, KEYSPACE, free_port(),
                                   Path(tempfile.mkdtemp(prefix="statsfeeder-afterwrite-")), 256)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    try:
        with httpx.Client(timeout=600) as client:
            def timed(form: dict[str, object]) -> float:
                began = time.perf_counter()
                client.post(url + "/api/v1/query_range", data=form,
                            headers=headers).raise_for_status()
                return time.perf_counter() - began

            for name, form in queries.items():
                timed(form)
                warm, after = [], []
                for _ in range(args.runs):
                    warm.append(timed(form))
                    asyncio.run(sink.write([write]))  # a cycle's write: the stamps move
                    after.append(timed(form))
                print(f"{name}: no write between {statistics.median(warm) * 1000:.0f} ms, "
                      f"right after a write {statistics.median(after) * 1000:.0f} ms "
                      f"(medians of {args.runs})", flush=True)
    finally:
        sink.close()
        serve.terminate()
        serve.wait(30)


if __name__ == "__main__":
    main()
