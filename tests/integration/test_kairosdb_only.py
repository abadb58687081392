"""KairosDB without Cassandra: the watermarks live in a local state file, so a restart (of
`once` or of `run`) asks vCenter from where KairosDB has its samples up to."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import yaml

from tests.helpers import free_port, metric, wait_for
from tests.integration.hybrid_support import STATSFEEDER, Env, stop_service
from tests.integration.test_pipeline import write_config

STORAGE_WINDOW = 300
"""The query's start is rounded down to this (statsfeeder/sources/vcenter/query.py): without
watermarks a restart asks from the last boundary, so only a gap across one shows (and, with
overlap_seconds 0, a later window does not reach back over it either)."""


def kairos_stamps(url: str, prefix: str, moref: str) -> list[int]:
    query = {"start_absolute": (int(time.time()) - 3600) * 1000, "metrics": [
        {"name": prefix + "cpu.usage.average",
         "tags": {"moref": [moref], "instance": ["aggregate"]}}]}
    answer = httpx.post(f"{url}/api/v1/datapoints/query", json=query, timeout=10)
    assert answer.status_code == 200, answer.text
    return [int(ts) // 1000 for ts, _ in answer.json()["queries"][0]["results"][0]["values"]]


def test_restarts_of_once_and_run_backfill_from_the_state_file(
        tmp_path: Path, vcsim_env: Env, cassandra_env: Env, kairosdb_env: Env) -> None:
    """Issue 19: with Cassandra disabled there was nowhere to keep watermarks, so every start
    asked only for the last interval. `once`, a pause across a storage-window boundary,
    `run`, SIGTERM, a pause of two cycles, `run` again: one 20-s series without a gap."""
    url = kairosdb_env["KAIROSDB_URL"]
    prefix = f"t{int(time.time() * 1000) % 10**9}."
    port = free_port()
    marks = tmp_path / "state" / "watermarks.json"
    path = write_config(tmp_path / "c.yaml", vcsim_env, cassandra_env, "unused")
    raw = yaml.safe_load(path.read_text())
    raw["collection"]["interval_seconds"] = 20
    # No re-read before the watermark: a later window cannot happen to cover the gap.
    raw["collection"]["overlap_seconds"] = 0
    raw["cassandra"] = {"enabled": False}
    raw["kairosdb"] = {"enabled": True, "url": url, "metric_prefix": prefix}
    raw["state"] = {"watermarks_file": str(marks)}
    raw["telemetry"] = {"listen": f"127.0.0.1:{port}"}
    path.write_text(yaml.safe_dump(raw))
    env = {"VCSIM_PASSWORD": vcsim_env["VCSIM_PASSWORD"], "PATH": "/usr/bin:/bin"}

    def run_cycles(cycles: int) -> str:
        service = subprocess.Popen([*STATSFEEDER, "run", "-c", str(path)], env=env, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            for count in range(1, cycles + 1):
                wait_for(lambda n=count: log_cycles(port) >= n, 60, f"cycle {count}")
        finally:
            log = stop_service(service)
        return log

    once = subprocess.run([*STATSFEEDER, "once", "-c", str(path)], env=env, text=True,
                          capture_output=True, timeout=120)
    assert once.returncode == 0, once.stdout + once.stderr
    first = json.loads(marks.read_text())["vcenters"]["vcsim"]["kairosdb"]
    assert len(first) == 4 and not list(marks.parent.glob("*.tmp"))
    # The next start is past a storage-window boundary, more than a sample after the marks.
    boundary = (max(first.values()) + 40) // STORAGE_WINDOW * STORAGE_WINDOW + STORAGE_WINDOW
    time.sleep(max(0.0, boundary + 25 - time.time()))

    run_cycles(2)
    time.sleep(45)  # two cycles with nothing running
    log = run_cycles(2)
    assert "missing" not in log
    last = json.loads(marks.read_text())["vcenters"]["vcsim"]["kairosdb"]
    for moref, mark in first.items():
        stamps = kairos_stamps(url, prefix, moref)
        assert stamps[0] <= mark and stamps[-1] == last[moref] >= boundary + 60
        assert np.all(np.diff(stamps) == 20), f"{moref}: a restart left a gap"


def log_cycles(port: int) -> float:
    """Cycles the running service has finished."""
    return metric(port, 'statsfeeder_cycle_duration_seconds_count{vcenter="vcsim"}') or 0
