"""In-process timings of the read API's Select (``SeriesStore.select``), the part of a query
that reads and decodes Cassandra's windows and builds the engine's frame, without the HTTP
hops and the engine: what to profile when the read bench shows a Select-bound query.

    STATSFEEDER_CACHE=~/.cache/statsfeeder-readbench STATSFEEDER_PEER_PORT_OFFSET=200 \\
        .venv/bin/python bench/readapi_select_profile.py [--runs 3] [--profile] [--keep]

Data: bench/readapi_data.py with 2 orgs x 1,000 VMs (the first org's VMs 24 h of CPU), written
once into the keyspace ``readapi_select_profile`` and kept (``--keep``) for the next run.
Selects: the org sum's (1,000 VMs x 24 h), the topk-over-1-h's and one VM's ten metrics.
``--profile`` prints cProfile's top functions of one Select (``--profile-select``).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import statistics
import sys
import time
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.readapi_data import fleet, plan, write_cassandra
from peers import cassandra
from statsfeeder.readapi.settled import SettledCache
from statsfeeder.readapi.store import Matcher, SelectRequest, SeriesStore
from statsfeeder.sinks.cassandra.session import connect
from tests.helpers import cassandra_config

KEYSPACE = "readapi_select_profile"
CPU = "vsphere_vm_cpu_usage_average_percent"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--profile-select", type=int, default=0,
                        help="which Select --profile profiles (0: org sum, 1: topk, 2: topk "
                             "instant, 3: one VM)")
    parser.add_argument("--memory", action="store_true", help="tracemalloc peak per Select")
    parser.add_argument("--keep", action="store_true", help="keep the keyspace afterwards")
    parser.add_argument("--cache-mb", type=int, default=0,
                        help="keep settled hours in memory (read_api.cache_mb; 0: off)")
    args = parser.parse_args()
    env_c = cassandra.up(SimpleNamespace(cassandra="3.11", cassandra_nodes=1))
    config = cassandra_config(env_c, keyspace=KEYSPACE, ttl_days=3)
    cluster, session = connect(config)
    vms = fleet(2, 1000)
    marker = Path.home() / ".cache" / f"{KEYSPACE}.end"
    exists = session.execute("SELECT keyspace_name FROM system_schema.keyspaces "
                             "WHERE keyspace_name = %s", (KEYSPACE,)).one() is not None
    if exists and marker.exists():
        p = plan(24, float(marker.read_text()) + 60)
    else:
        p = plan(24)
        samples, seconds = asyncio.run(write_cassandra(config, vms, 1000, p))
        marker.write_text(str(p.end))
        print(f"wrote {samples:,} samples in {seconds:.0f} s", flush=True)
    store = SeriesStore(session, KEYSPACE, retention_seconds=3 * 86400, max_series=100_000,
                        settled=SettledCache(args.cache_mb << 20, 90 * 60))
    look = 600_000
    selects = {
        "org sum, 1,000 VMs x 24 h": SelectRequest(
            (p.end - 86400) * 1000 - look + 1, p.end * 1000,
            (Matcher("=", "org", vms[0].org), Matcher("=", "__name__", CPU))),
        "topk over 1 h, 1,000 VMs": SelectRequest(
            (p.end - 3600) * 1000 - look + 1, p.end * 1000, (Matcher("=", "__name__", CPU),)),
        "topk(avg_over_time[1h]), instant, 1,000 VMs": SelectRequest(
            (p.end - 3600) * 1000 + 1, p.end * 1000, (Matcher("=", "__name__", CPU),)),
        "one VM, 10 metrics, 24 h": SelectRequest(
            (p.end - 86400) * 1000 - look + 1, p.end * 1000, (Matcher("=", "vm", vms[0].urn),)),
    }
    try:
        for name, request in selects.items():
            sum(len(piece) for piece in store.select(request, None))  # warm-up
            times, cpu, size = [], [], 0
            for _ in range(args.runs):
                began, used = time.perf_counter(), time.process_time()
                size = sum(len(piece) for piece in store.select(request, None))
                times.append(time.perf_counter() - began)
                cpu.append(time.process_time() - used)
            line = (f"{name}: median {statistics.median(times) * 1000:.0f} ms, "
                    f"min {min(times) * 1000:.0f} ms (process CPU, all threads: median "
                    f"{statistics.median(cpu) * 1000:.0f} ms), frame {size / 1e6:.1f} MB")
            if args.memory:
                tracemalloc.start()
                sum(len(piece) for piece in store.select(request, None))
                line += f", tracemalloc peak {tracemalloc.get_traced_memory()[1] / 1e6:.1f} MB"
                tracemalloc.stop()
            print(line, flush=True)
        if args.profile:
            profile = cProfile.Profile()
            profile.enable()
            chosen = list(selects.values())[args.profile_select]
            sum(len(piece) for piece in store.select(chosen, None))
            profile.disable()
            pstats.Stats(profile).sort_stats("tottime").print_stats(18)
    finally:
        if not args.keep:
            session.execute(f"DROP KEYSPACE IF EXISTS {KEYSPACE}")
            marker.unlink(missing_ok=True)
        cluster.shutdown()


if __name__ == "__main__":
    main()
