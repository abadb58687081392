"""End-to-end: vcsim with N VMs → `statsfeeder once` → the local Cassandra.

    .venv/bin/python bench/e2e_bench.py [--vms 10000] [--cassandra 3.11]

Reports the wall time of one cycle (the last 5 minutes of 20-s samples of every VM, 10
counters), the collector's CPU seconds and peak RSS (the `statsfeeder once` process alone;
vcsim and Cassandra share the same 2 cores), and how many samples were stored.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.service_setup import STATSFEEDER, prepare
from peers import cassandra, vcsim


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vms", type=int, default=10_000)
    parser.add_argument("--cassandra", default="3.11", choices=("3.11", "4.1", "5.0"))
    parser.add_argument("--keep", action="store_true", help="leave the vcsim instance running")
    args = parser.parse_args()
    clusters = 10 if args.vms >= 1000 else 1
    env_vc = vcsim.start_instance("vcsim-e2e", 18999, clusters=clusters, hosts=4,
                                  vms=args.vms // clusters)
    env_c = cassandra.up(SimpleNamespace(cassandra=args.cassandra, cassandra_nodes=1))
    prepared = prepare("e2e", env_vc, env_c, lambda raw: raw["cassandra"].update(
        {"request_timeout_seconds": 20, "write_retries": 5}))
    path, env, cli = prepared.config, prepared.env, STATSFEEDER
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    done = subprocess.run([*cli, "once", "-c", str(path)], env=env, capture_output=True,
                          text=True)
    wall = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.exit(f"statsfeeder once failed: {done.stdout}{done.stderr}")
    summary = done.stdout.strip().splitlines()[-1]
    stored = int(summary.split("stored: cassandra ")[1].split(" ")[0])
    result = {
        "vms": args.vms, "cassandra": env_c["CASSANDRA_VERSION"], "cycle_wall_s": round(wall, 1),
        "collector_cpu_s": round(after.ru_utime + after.ru_stime
                                 - before.ru_utime - before.ru_stime, 1),
        "collector_peak_rss_mb": round(after.ru_maxrss / 1024),
        "samples_stored": stored, "summary": summary,
    }
    print(json.dumps(result, indent=2))
    subprocess.run([*cli, "schema", "show", "-c", str(path)], env=env, capture_output=True)
    if not args.keep:
        vcsim.stop_instance("vcsim-e2e")


if __name__ == "__main__":
    main()
