"""Read API benchmark, beside the real Prometheus (Debian's 2.42) answering the same queries
from its own TSDB over the same samples.

    .venv/bin/python bench/readapi_bench.py [--orgs 10] [--vms-per-org 1000] [--hours 24]
                                            [--runs 5] [--json FILE]

The fleet (bench/readapi_data.py: 10 orgs x 1,000 VMs; the first org's VMs with 24 h of CPU,
its first VM with all ten default counters, every other VM 15 minutes at the start) is
written straight through the real CassandraSink; the same samples go to Prometheus with
``promtool tsdb create-blocks-from openmetrics``. ``statsfeeder serve`` (its own process, with
the PromQL engine child) and ``prometheus`` (lookback 10 m, as the read API's default) then
answer each query ``--runs`` times after one warm-up; the median wall time is reported, and
the peak RSS (statsfeeder: serve process + engine) above the idle RSS, sampled every 10 ms.
Answers are compared, so both did the same work.

To run beside others' tests without sharing their peers, give the bench a Cassandra of its own:
``STATSFEEDER_CACHE=~/.cache/statsfeeder-readbench STATSFEEDER_PEER_PORT_OFFSET=200``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.readapi_data import BenchVm, Plan, fleet, plan, write_cassandra, write_openmetrics
from peers import cassandra, common
from peers import prometheus as prometheus_peer
from tests.helpers import cassandra_config
from tests.tenancy_fleet import free_port

TOKEN = "bench-token-0123456789abcdef"
CPU = "vsphere_vm_cpu_usage_average_percent"
PROMETHEUS_NAME = "prometheus-readbench"


def rss_mb(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
        except OSError:
            pass
    return total


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(child) for child in text]
    return found


class Peak:
    """Peak RSS of some processes while a block runs (sampled every 10 ms)."""

    def __init__(self, pids: Callable[[], list[int]]) -> None:
        self.pids = pids
        self.peak = 0.0
        self._stop = threading.Event()

    def __enter__(self) -> Peak:
        self.idle = rss_mb(self.pids())
        self.peak = self.idle
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, rss_mb(self.pids()))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb(self.pids()))


def start_prometheus(blocks: Path, port: int) -> tuple[int, str]:
    binary, _ = prometheus_peer.ensure_installed()
    directory = common.run_dir(PROMETHEUS_NAME)
    config = directory / "prometheus.yml"
    config.write_text("global: {scrape_interval: 1m}\nscrape_configs: []\n")
    argv = [binary, f"--config.file={config}", f"--storage.tsdb.path={blocks}",
            "--storage.tsdb.retention.time=30d", f"--web.listen-address=127.0.0.1:{port}",
            "--query.lookback-delta=10m", "--log.level=warn"]
    log = common.start(PROMETHEUS_NAME, argv, cwd=directory, marker=f"--config.file={config}")
    url = f"http://127.0.0.1:{port}"
    common.wait_until(lambda: prometheus_peer.ready(url), peer=PROMETHEUS_NAME, log=log,
                      timeout=120)
    pid = common.pid_of(PROMETHEUS_NAME)
    assert pid is not None
    return pid, url


def start_statsfeeder(env_c: dict[str, str], keyspace: str, port: int, workdir: Path,
                      cache_mb: int) -> tuple[subprocess.Popen[bytes], str]:
    config = cassandra_config(env_c, keyspace=keyspace)
    raw = {"cassandra": {"hosts": config.hosts, "port": config.port, "keyspace": keyspace,
                         "consistency": "ONE",
                         "credentials": {"username": env_c["CASSANDRA_USERNAME"],
                                         "password_env": "CASSANDRA_PASSWORD"},
                         "tls": {"ca_file": env_c["CASSANDRA_CA_FILE"]}},
           "read_api": {"enabled": True, "listen": f"127.0.0.1:{port}", "cache_mb": cache_mb,
                        "tokens": [{"name": "bench", "token_env": "BENCH_TOKEN",
                                    "provider": True}]}}
    path = workdir / "serve.yaml"
    path.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "CASSANDRA_PASSWORD": env_c["CASSANDRA_PASSWORD"],
           "BENCH_TOKEN": TOKEN}
    process = subprocess.Popen([sys.executable, "-m", "statsfeeder", "serve", "-c", str(path)],
                               env=env, stdout=subprocess.DEVNULL,
                               stderr=open(workdir / "serve.log", "wb"))  # noqa: SIM115
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"statsfeeder serve exited: {(workdir / 'serve.log').read_text()}")
        try:
            httpx.get(url + "/api/v1/status/buildinfo", timeout=2,
                      headers={"Authorization": f"Bearer {TOKEN}"}).raise_for_status()
            return process, url
        except httpx.HTTPError:
            time.sleep(0.5)
    raise SystemExit("statsfeeder serve did not answer within 600 s")


def queries(vms: list[BenchVm], p: Plan) -> list[dict[str, Any]]:
    vm0, org0 = vms[0], vms[0].org
    day, hour = {"start": p.end - 86400, "end": p.end}, {"start": p.end - 3600, "end": p.end}
    return [
        # No Select: what every query pays (HTTP, token, the engine's round trip).
        {"name": "1+1 (Grafana's Save & test)", "path": "/api/v1/query",
         "form": {"query": "1+1", "time": p.end}},
        {"name": "one VM, 10 metrics, 24 h, step 60 s", "path": "/api/v1/query_range",
         "form": {"query": f'{{vm="{vm0.urn}"}}', **day, "step": 60}},
        {"name": "1,000 VMs, topk(10, avg_over_time(...[1h])), instant",
         "path": "/api/v1/query",
         "form": {"query": f"topk(10, avg_over_time({CPU}[1h]))", "time": p.end}},
        {"name": "1,000 VMs, topk(10, ...) over 1 h, step 60 s", "path": "/api/v1/query_range",
         "form": {"query": f"topk(10, {CPU})", **hour, "step": 60}},
        {"name": "an org's sum over 1,000 VMs, 24 h, step 5 min",
         "path": "/api/v1/query_range",
         "form": {"query": f'sum({CPU}{{org="{org0}"}})', **day, "step": 300}},
        {"name": "label values of vm over 10,000 VMs", "path": "/api/v1/label/vm/values",
         "form": {"start": p.start - 3600, "end": p.end}},
    ]


def ask(client: httpx.Client, url: str, query: dict[str, Any], token: str | None
        ) -> tuple[float, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    began = time.perf_counter()
    if query["path"].startswith("/api/v1/label/"):  # GET only, in Prometheus as in Grafana
        answer = client.get(url + query["path"], params=query["form"], headers=headers)
    else:
        answer = client.post(url + query["path"], data=query["form"], headers=headers)
    elapsed = time.perf_counter() - began
    answer.raise_for_status()
    return elapsed, answer.json()["data"]


def summary(data: Any) -> Any:
    """What both answers must agree on: the label values; the series and their points with
    the sum of their values to 1e-3. For an instant vector the series only: over a range
    ``[1h]`` Prometheus 2.42 includes a sample on the window's left edge, the read API's
    engine (Prometheus 3) does not, so averages may differ in the last digits."""
    if isinstance(data, list):
        return sorted(data)
    if data["resultType"] == "scalar":
        return data["result"]
    if data["resultType"] == "vector":
        return sorted(json.dumps(i["metric"], sort_keys=True) for i in data["result"])
    return sorted((json.dumps(i["metric"], sort_keys=True), len(i["values"]),
                   round(sum(float(v) for _, v in i["values"]), 3)) for i in data["result"])


def measure(client: httpx.Client, url: str, query: dict[str, Any], token: str | None,
            pids: Callable[[], list[int]], runs: int) -> dict[str, Any]:
    # Warm-up: caches (statsfeeder's settled hours, the engine's first Select); its time is
    # reported as the first answer's.
    first, _ = ask(client, url, query, token)
    times, peaks, idle, answer = [], [], 0.0, None
    for _ in range(runs):
        with Peak(pids) as peak:
            elapsed, answer = ask(client, url, query, token)
        times.append(elapsed)
        peaks.append(peak.peak - peak.idle)
        idle = peak.idle
    return {"first_s": first, "median_s": statistics.median(times), "min_s": min(times),
            "peak_rss_above_idle_mb": max(peaks), "idle_rss_mb": idle,
            "answer": summary(answer)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orgs", type=int, default=10)
    parser.add_argument("--vms-per-org", type=int, default=1000)
    parser.add_argument("--hours", type=int, default=24)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--cache-mb", type=int, default=256,
                        help="read_api.cache_mb (0: every Select reads Cassandra)")
    args = parser.parse_args()
    env_c = cassandra.up(SimpleNamespace(cassandra="3.11", cassandra_nodes=1))
    keyspace = f"readbench_{uuid.uuid4().hex[:8]}"
    config = cassandra_config(env_c, keyspace=keyspace, ttl_days=3)
    vms, p = fleet(args.orgs, args.vms_per_org), plan(args.hours)
    workdir = Path(tempfile.mkdtemp(prefix="statsfeeder-readbench-"))
    report: dict[str, Any] = {"vms": len(vms), "hours": args.hours}
    serve = None
    try:
        samples, seconds = asyncio.run(write_cassandra(config, vms, args.vms_per_org, p))
        report["cassandra_write"] = {"samples": samples, "seconds": round(seconds, 1)}
        print(f"wrote {samples:,} samples through CassandraSink in {seconds:.0f} s", flush=True)
        began = time.perf_counter()
        text = workdir / "samples.om"
        written = write_openmetrics(text, vms, args.vms_per_org, p)
        assert written == samples, (written, samples)
        _, promtool = prometheus_peer.ensure_installed()
        blocks = workdir / "tsdb"
        subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", str(text),
                        str(blocks)], check=True, capture_output=True, timeout=3600)
        text.unlink()
        report["promtool_seconds"] = round(time.perf_counter() - began, 1)
        print(f"promtool blocks in {report['promtool_seconds']} s", flush=True)
        prom_pid, prom_url = start_prometheus(blocks, free_port())
        serve, serve_url = start_statsfeeder(env_c, keyspace, free_port(), workdir,
                                              args.cache_mb)
        serve_pid = serve.pid

        def ours() -> list[int]:
            return [serve_pid, *children(serve_pid)]

        results = []
        with httpx.Client(timeout=600) as client:
            for query in queries(vms, p):
                mine = measure(client, serve_url, query, TOKEN, ours, args.runs)
                theirs = measure(client, prom_url, query, None, lambda: [prom_pid], args.runs)
                same = mine.pop("answer") == theirs.pop("answer")
                row = {"query": query["name"], "statsfeeder": mine, "prometheus": theirs,
                       "ratio": mine["median_s"] / theirs["median_s"], "same_answer": same}
                results.append(row)
                print(json.dumps(row), flush=True)
        report["queries"] = results
    finally:
        if serve is not None:
            serve.terminate()
            serve.wait(30)
        common.stop(PROMETHEUS_NAME)
        from statsfeeder.sinks.cassandra.session import connect

        cluster, session = connect(config)
        session.execute(f"DROP KEYSPACE IF EXISTS {keyspace}")
        cluster.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)
    print("\n| query | statsfeeder (first) | Prometheus 2.42 (first) | ratio "
          "| peak RSS above idle (sf / prom) | same answer |\n|---|---|---|---|---|---|")
    for row in report["queries"]:
        sf, pr = row["statsfeeder"], row["prometheus"]
        print(f"| {row['query']} | {sf['median_s'] * 1000:.0f} ms ({sf['first_s'] * 1000:.0f}) "
              f"| {pr['median_s'] * 1000:.0f} ms ({pr['first_s'] * 1000:.0f}) | "
              f"{row['ratio']:.1f}x | "
              f"{sf['peak_rss_above_idle_mb']:.0f} / {pr['peak_rss_above_idle_mb']:.0f} MB "
              f"(idle {sf['idle_rss_mb']:.0f} / {pr['idle_rss_mb']:.0f}) | "
              f"{'yes' if row['same_answer'] else 'no'} |")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
