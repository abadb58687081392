"""Soak: `statsfeeder run` for a while against vcsim and the local Cassandra, with a vCenter
outage and a Cassandra outage in the middle; is memory flat, and does it catch up?

    .venv/bin/python bench/soak_bench.py [--vms 2000] [--minutes 20] [--interval 20]

Cycles run every ``--interval`` seconds (the production 300 s compressed; every cycle still
re-reads whole 5-minute windows, so each one does a production cycle's work). Phases, as
shares of ``--minutes``: steady 35 %, vCenter down 10 %, steady 15 %, Cassandra down 10 %,
steady 30 %. Reports the service's RSS (from /proc, every 5 s) per
phase, the RSS trend in MB/hour over the whole run after ``--warmup-minutes`` and over the last
steady phase (timeline in rss.csv), cycles and samples written, and the watermark lag at the end
(back to under two intervals means every outage was backfilled).

To soak beside a test run without disturbing its peers, give the soak a Cassandra of its own:
``STATSFEEDER_CACHE=~/.cache/statsfeeder-soak STATSFEEDER_PEER_PORT_OFFSET=100``.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.service_setup import STATSFEEDER, prepare
from peers import cassandra, vcsim
from tests.helpers import free_port

VCSIM = ("vcsim-soak", 18985)
PHASES = (("steady", 0.35), ("vcenter_down", 0.10), ("after_vcenter", 0.15),
          ("cassandra_down", 0.10), ("after_cassandra", 0.30))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def metrics(port: int) -> dict[str, float]:
    found: dict[str, float] = {}
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except httpx.HTTPError:
        return found
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            found[name] = float(value)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vms", type=int, default=2000)
    parser.add_argument("--minutes", type=float, default=20)
    parser.add_argument("--interval", type=int, default=20)
    parser.add_argument("--cassandra", default="3.11", choices=("3.11", "4.1", "5.0"))
    parser.add_argument("--warmup-minutes", type=float, default=15,
                        help="left out of the whole-run RSS trend")
    args = parser.parse_args()
    clusters = 4 if args.vms >= 1000 else 1
    vcsim_options = {"clusters": clusters, "hosts": 2, "vms": args.vms // clusters}
    env_vc = vcsim.start_instance(*VCSIM, **vcsim_options)
    env_c = cassandra.up(SimpleNamespace(cassandra=args.cassandra, cassandra_nodes=1))
    port = free_port()

    def edit(raw: dict[str, Any]) -> None:
        raw["collection"]["interval_seconds"] = args.interval
        raw["telemetry"] = {"listen": f"127.0.0.1:{port}"}

    prepared = prepare("soak", env_vc, env_c, edit)
    workdir, path, env, cli = prepared.workdir, prepared.config, prepared.env, STATSFEEDER
    log = (workdir / "service.log").open("wb")
    service = subprocess.Popen([*cli, "run", "-c", str(path)], env=env, stdout=log,
                               stderr=subprocess.STDOUT)
    short = args.cassandra
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in PHASES}
    began = time.monotonic()
    try:
        for name, share in PHASES:
            if name == "vcenter_down":
                vcsim.stop_instance(VCSIM[0])
            elif name == "after_vcenter":
                vcsim.start_instance(*VCSIM, **vcsim_options)
            elif name == "cassandra_down":
                cassandra.stop_node(0, version=short, nodes=1)
            elif name == "after_cassandra":
                cassandra.start_node(0, version=short, nodes=1)
            until = time.monotonic() + share * args.minutes * 60
            while time.monotonic() < until:
                if service.poll() is not None:
                    sys.exit(f"statsfeeder run exited with {service.returncode}; see {log.name}")
                samples[name].append((time.monotonic() - began, rss_mb(service.pid)))
                time.sleep(5)
        end = metrics(port)
        service.send_signal(signal.SIGTERM)
        exit_code = service.wait(timeout=120)
    finally:
        if service.poll() is None:
            service.kill()
        cassandra.start_node(0, version=short, nodes=1)
        vcsim.stop_instance(VCSIM[0])
    last = np.array(samples["after_cassandra"])
    half = last[len(last) // 2:]  # after the backfill has settled
    slope = float(np.polyfit(half[:, 0], half[:, 1], 1)[0]) * 3600 if len(half) > 2 else None
    # Whole run after warm-up: every phase, outages included, so that a leak that only grows
    # while a peer is down shows up too; allocator high-water marks flatten out over hours.
    everything = np.array([point for name, _ in PHASES for point in samples[name]])
    warm = everything[everything[:, 0] >= args.warmup_minutes * 60]
    overall = (float(np.polyfit(warm[:, 0], warm[:, 1], 1)[0]) * 3600
               if len(warm) > 2 else None)
    timeline = workdir / "rss.csv"
    timeline.write_text("seconds,rss_mb\n" + "".join(f"{t:.0f},{v:.1f}\n" for t, v in everything))
    result = {
        "vms": args.vms, "minutes": args.minutes, "interval_s": args.interval,
        "cassandra": env_c["CASSANDRA_VERSION"],
        "rss_mb": {name: {"first": round(s[0][1]), "max": round(max(v for _, v in s)),
                          "last": round(s[-1][1])} for name, s in samples.items() if s},
        "rss_trend_last_steady_half_mb_per_hour": round(slope, 1) if slope is not None else None,
        "rss_trend_after_warmup_mb_per_hour": round(overall, 2) if overall is not None else None,
        "warmup_minutes": args.warmup_minutes,
        "rss_timeline": str(timeline),
        "cycles": int(end.get('statsfeeder_cycle_duration_seconds_count{vcenter="vcsim"}', 0)),
        "cycles_succeeded_last": end.get(
            'statsfeeder_cycle_last_success_timestamp_seconds{vcenter="vcsim"}'),
        "samples_written": int(end.get('statsfeeder_samples_written_total{sink="cassandra"}', 0)),
        "watermark_lag_s_at_end": end.get('statsfeeder_watermark_lag_seconds{vcenter="vcsim"}'),
        "sigterm_exit_code": exit_code,
        "log": log.name,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
