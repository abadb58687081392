"""Hybrid mode: Cassandra and KairosDB together, each with its own buffer and watermarks."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from peers import cassandra as cassandra_peer
from peers import common
from peers import kairosdb as kairosdb_peer
from statsfeeder.config import Config, load_config
from statsfeeder.service import build_service as _build
from statsfeeder.sinks.cassandra import schema
from statsfeeder.sinks.cassandra.reader import read_series
from statsfeeder.sinks.cassandra.session import connect
from tests.integration.test_pipeline import write_config
from tests.integration.test_service import free_port, metric, wait_for

Env = dict[str, str]

PORT = 18086
NAME = "kairosdb-hybrid"


STATSFEEDER = [sys.executable, "-m", "statsfeeder"]


def hybrid_config(tmp_path: Path, vcsim_env: Env, cassandra_env: Env, kairos_url: str, *,
                  telemetry_port: int, **extra: Any) -> tuple[Path, str]:
    """A 20-s-interval hybrid configuration on a fresh keyspace and metric prefix (the
    dedicated KairosDB keeps earlier runs' datapoints); returns (path, prefix)."""
    keyspace = f"hy_{uuid.uuid4().hex[:8]}"
    prefix = f"t{uuid.uuid4().hex[:8]}."
    path = write_config(tmp_path / "c.yaml", vcsim_env, cassandra_env, keyspace)
    raw = yaml.safe_load(path.read_text())
    raw["collection"]["interval_seconds"] = 20
    raw["cassandra"]["connect_timeout_seconds"] = 3
    raw["telemetry"] = {"listen": f"127.0.0.1:{telemetry_port}"}
    raw["kairosdb"] = {"enabled": True, "url": kairos_url, "metric_prefix": prefix,
                       "retries": 1, "timeout_seconds": 5, "connect_timeout_seconds": 2}
    raw.update(extra)
    path.write_text(yaml.safe_dump(raw))
    return path, prefix


def cli_env(vcsim_env: Env, cassandra_env: Env) -> Env:
    return {"VCSIM_PASSWORD": vcsim_env["VCSIM_PASSWORD"],
            "CASSANDRA_PASSWORD": cassandra_env["CASSANDRA_PASSWORD"], "PATH": os.environ["PATH"]}


def drop_keyspace(config: Config) -> None:
    """Clean-up right after a node restart: its first requests may time out."""
    for _ in range(10):
        try:
            cluster, session = connect(config.cassandra)
            try:
                session.execute(f"DROP KEYSPACE IF EXISTS {config.cassandra.keyspace}",
                                timeout=30)
                return
            finally:
                cluster.shutdown()
        except Exception:  # the node is still starting: try again
            time.sleep(2)


def readyz(port: int) -> tuple[int, str]:
    try:
        answer = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
    except httpx.HTTPError:
        return 0, ""
    return answer.status_code, answer.text


def kairos_series(url: str, prefix: str, vm_id: str, since: int) -> tuple[list[int], list[float]]:
    """cpu.usage.average of one VM, asked by its exact vCD id."""
    query = {"start_absolute": since * 1000, "metrics": [
        {"name": prefix + "cpu.usage.average",
         "tags": {"vm": [vm_id], "instance": ["aggregate"]}}]}
    answer = httpx.post(f"{url}/api/v1/datapoints/query", json=query, timeout=10)
    assert answer.status_code == 200, answer.text
    values = answer.json()["queries"][0]["results"][0]["values"]
    return [int(ts) // 1000 for ts, _ in values], [float(v) for _, v in values]


def compare_stores(config: Config, url: str, prefix: str, since: int) -> dict[str, int]:
    """Every powered-on VM's cpu.usage.average in both stores: the same timestamps on the
    20-s grid without a gap, the same values (percent in KairosDB, hundredths in Cassandra).
    Returns the counts: VMs, samples in each store, gaps."""
    cluster, session = connect(config.cassandra)
    counts = {"vms": 0, "cassandra": 0, "kairosdb": 0, "gaps": 0}
    try:
        keyspace = config.cassandra.keyspace
        vms = [row.vm_id for row in session.execute(f"SELECT vm_id FROM {keyspace}.entities")]
        assert vms
        for vm_id in vms:
            [stored] = read_series(session, keyspace, vm_id, ["cpu.usage.average"], since,
                                   int(time.time()) + 60)
            stamps = stored.timestamps.tolist()
            deadline = time.monotonic() + 15
            while True:  # KairosDB queues writes: poll until they are queryable
                k_stamps, k_values = kairos_series(url, prefix, vm_id, since)
                if k_stamps[-1:] == stamps[-1:] or time.monotonic() > deadline:
                    break
                time.sleep(0.3)
            k_stamps, k_values = zip(*[(t, v) for t, v in zip(k_stamps, k_values, strict=True)
                                       if t >= stamps[0]], strict=True)
            counts["vms"] += 1
            counts["cassandra"] += len(stamps)
            counts["kairosdb"] += len(k_stamps)
            counts["gaps"] += int(np.sum(np.diff(stamps) != 20))
            counts["gaps"] += int(np.sum(np.diff(k_stamps) != 20))
            assert list(k_stamps) == stamps, f"{vm_id}: the stores hold different samples"
            assert list(k_values) == pytest.approx((stored.values * 0.01).tolist())
    finally:
        cluster.shutdown()
    assert counts["gaps"] == 0, counts
    return counts


def kairos_stamps(url: str, moref: str, since_ms: int) -> list[int]:
    query = {"start_absolute": since_ms, "metrics": [
        {"name": "cpu.usage.average", "tags": {"moref": [moref]}}]}
    answer = httpx.post(f"{url}/api/v1/datapoints/query", json=query, timeout=10).json()
    return sorted(int(ts) // 1000 for ts, _ in answer["queries"][0]["results"][0]["values"])


async def test_kairosdb_outage_neither_stalls_cassandra_nor_loses_its_own_data(
        tmp_path: Path, vcsim_env: dict[str, str], cassandra_env: dict[str, str]) -> None:
    env = kairosdb_peer.start_instance(NAME, PORT)
    url = env["KAIROSDB_URL"]
    keyspace = f"hybrid_{uuid.uuid4().hex[:8]}"
    path = write_config(tmp_path / "c.yaml", vcsim_env, cassandra_env, keyspace)
    raw = yaml.safe_load(path.read_text())
    raw["kairosdb"] = {"enabled": True, "url": url, "retries": 1, "timeout_seconds": 5,
                       "connect_timeout_seconds": 2}
    path.write_text(yaml.safe_dump(raw))
    config = load_config(path, environ={"VCSIM_PASSWORD": vcsim_env["VCSIM_PASSWORD"],
                                        "CASSANDRA_PASSWORD": cassandra_env["CASSANDRA_PASSWORD"]})
    cluster, session = connect(config.cassandra)
    schema.create(session, config.cassandra)
    cluster.shutdown()
    service = _build(config)
    [pipeline] = service.pipelines
    try:
        await service.open()
        await service.start_pipeline(pipeline)
        first = await pipeline.run_cycle()
        assert first.ok and first.written["cassandra"] == first.written["kairosdb"] > 0
        kairos_before = dict(pipeline.watermarks["kairosdb"])

        common.stop(NAME)  # KairosDB goes away
        await asyncio.sleep(25)
        during = await pipeline.run_cycle()
        assert during.written["cassandra"] > 0 and during.sink_failures["cassandra"] == 0
        assert during.written["kairosdb"] == 0 and during.sink_failures["kairosdb"] > 0
        assert pipeline.watermarks["kairosdb"] == kairos_before
        assert min(pipeline.watermarks["cassandra"].values()) > max(kairos_before.values())

        kairosdb_peer.start_instance(NAME, PORT)
        after = await pipeline.run_cycle()
        assert after.ok and after.written["kairosdb"] > 0
        assert pipeline.watermarks["kairosdb"] == pipeline.watermarks["cassandra"]

        end = max(pipeline.watermarks["kairosdb"].values())
        start = min(kairos_before.values()) - 600
        for moref in pipeline.watermarks["kairosdb"]:
            deadline = time.monotonic() + 10
            while True:  # KairosDB queues writes: poll until they are queryable
                stamps = kairos_stamps(url, moref, start * 1000)
                if (stamps and stamps[-1] == end) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.3)
            assert stamps[-1] == end
            assert np.all(np.diff(stamps) == 20), "KairosDB kept a gap from its outage"
            assert stamps[0] <= min(kairos_before.values())
    finally:
        await asyncio.to_thread(service.close)
        common.stop(NAME)
        cluster, session = connect(config.cassandra)
        session.execute(f"DROP KEYSPACE IF EXISTS {keyspace}")
        cluster.shutdown()


def test_purge_command_refuses_inside_retention_and_dry_runs(
        tmp_path: Path, kairosdb_env: dict[str, str]) -> None:
    import subprocess
    import sys

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({
        "vcenters": [{"name": "vc", "url": "https://vc.example",
                      "credentials": {"username": "u", "password": "p"}}],
        "cassandra": {"enabled": False},
        "kairosdb": {"enabled": True, "url": kairosdb_env["KAIROSDB_URL"], "ttl_days": 14}}))

    def purge(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "statsfeeder", "kairosdb", "purge",
                               "-c", str(path), *extra], capture_output=True, text=True,
                              timeout=60, check=False)

    refused = purge("--older-than", "7")
    assert refused.returncode != 0
    assert len(refused.stderr.strip().splitlines()) == 1 and "14" in refused.stderr
    dry = purge("--older-than", "30")
    assert dry.returncode == 0, dry.stderr
    assert "dry run" in dry.stdout


# --- a sink down at start-up ---------------------------------------------------------------------

LATE_KAIROSDB = "kairosdb-hybrid-late"
WRITTEN = 'statsfeeder_samples_written_total{sink="%s"}'
SINK_UP = 'statsfeeder_sink_up{sink="%s"}'


def stop_service(service: subprocess.Popen[str]) -> str:
    """SIGTERM, exit 0, and its log."""
    service.send_signal(signal.SIGTERM)
    try:
        assert service.wait(timeout=90) == 0
    finally:
        if service.poll() is None:
            service.kill()
    assert service.stdout is not None
    return service.stdout.read()


def test_kairosdb_down_at_start_once_and_run_collect_into_cassandra_and_backfill_it(
        tmp_path: Path, vcsim_env: Env, cassandra_env: Env) -> None:
    """Issue 19: KairosDB unreachable at start-up made `once` and `run` exit 2 before
    collecting anything. Now Cassandra is collected into every cycle, KairosDB is retried in
    the background and, once it answers, gets every sample Cassandra got, without a gap."""
    kairos_port, port = free_port(), free_port()
    url = kairosdb_peer.url_for(kairos_port)
    common.stop(LATE_KAIROSDB)
    path, prefix = hybrid_config(tmp_path, vcsim_env, cassandra_env, url, telemetry_port=port)
    env = cli_env(vcsim_env, cassandra_env)
    config = load_config(path, environ=env)
    subprocess.run([*STATSFEEDER, "schema", "create", "-c", str(path)], env=env, check=True,
                   capture_output=True, timeout=120)
    began = int(time.time())
    service: subprocess.Popen[str] | None = None
    try:
        once = subprocess.run([*STATSFEEDER, "once", "-c", str(path)], env=env, text=True,
                              capture_output=True, timeout=120)
        assert once.returncode == 1, once.stdout + once.stderr
        assert "missing sink: kairosdb" in once.stdout and "stored: cassandra 0" not in once.stdout
        assert f"sink kairosdb missed this cycle (kairosdb: cannot reach {url}" in once.stderr

        service = subprocess.Popen([*STATSFEEDER, "run", "-c", str(path)], env=env, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        wait_for(lambda: readyz(port)[0] == 503 and "missing" in readyz(port)[1], 60,
                 "/readyz to name the missing sink")
        assert readyz(port)[1].startswith("degraded: sink kairosdb missing, collecting into "
                                          "cassandra; retrying (kairosdb: cannot reach")
        assert metric(port, SINK_UP % "kairosdb") == 0 and metric(port, SINK_UP % "cassandra") == 1
        # Cassandra is not stalled: two cycles store into it while KairosDB is away.
        wait_for(lambda: (metric(port, WRITTEN % "cassandra") or 0) > 0, 60, "a first cycle")
        first = metric(port, WRITTEN % "cassandra") or 0
        wait_for(lambda: (metric(port, WRITTEN % "cassandra") or 0) > first, 60, "a second cycle")
        assert not metric(port, WRITTEN % "kairosdb")

        kairosdb_peer.start_instance(LATE_KAIROSDB, kairos_port)
        wait_for(lambda: readyz(port) == (200, "ready\n"), 60, "KairosDB to be opened again")
        assert metric(port, SINK_UP % "kairosdb") == 1
        wait_for(lambda: (metric(port, WRITTEN % "kairosdb") or 0) > 0, 60, "the backfill")
        log = stop_service(service)
        assert "missing sink: kairosdb" in log and "kairosdb: open again after" in log

        counts = compare_stores(config, url, prefix, began - 900)
        print(f"\nKairosDB down at start: {counts}")
        assert counts["vms"] == 4 and counts["kairosdb"] == counts["cassandra"] > 4 * 6
    finally:
        if service is not None and service.poll() is None:
            service.kill()
            assert service.stdout is not None
            print(service.stdout.read()[-6000:])  # what the service said, for the failure
        common.stop(LATE_KAIROSDB)
        drop_keyspace(config)


EARLY_KAIROSDB = "kairosdb-hybrid-early"


def test_cassandra_down_at_start_run_collects_into_kairosdb_and_backfills_cassandra(
        tmp_path: Path, vcsim_env: Env, cassandra_env: Env) -> None:
    """Issue 19, the other order: the shared Cassandra node is stopped (briefly: other test
    sessions use it) before `run` starts. KairosDB is collected into every cycle; when the node
    is back, Cassandra's own watermarks are read again before anything is written to it, so its
    backfill starts where it was (the `once` before the outage), not from the cycle it
    returned in."""
    kairos_port, port = free_port(), free_port()
    url = kairosdb_peer.start_instance(EARLY_KAIROSDB, kairos_port)["KAIROSDB_URL"]
    # KairosDB's own watermarks are in Cassandra too: the state file keeps its place through
    # a start during the outage (without it KairosDB would start from the last interval).
    marks = tmp_path / "state" / "watermarks.json"
    path, prefix = hybrid_config(tmp_path, vcsim_env, cassandra_env, url, telemetry_port=port,
                                 state={"watermarks_file": str(marks)})
    env = cli_env(vcsim_env, cassandra_env)
    config = load_config(path, environ=env)
    short = ".".join(cassandra_env["CASSANDRA_VERSION"].split(".")[:2])
    subprocess.run([*STATSFEEDER, "schema", "create", "-c", str(path)], env=env, check=True,
                   capture_output=True, timeout=120)
    began = int(time.time())
    service: subprocess.Popen[str] | None = None
    try:
        once = subprocess.run([*STATSFEEDER, "once", "-c", str(path)], env=env, text=True,
                              capture_output=True, timeout=120)
        assert once.returncode == 0, once.stdout + once.stderr
        assert marks.exists()
        cassandra_peer.nodetool(["flush"], version=short, nodes=1)  # the new keyspace on disk

        stopped = time.monotonic()
        cassandra_peer.stop_node(0, version=short, nodes=1)
        service = subprocess.Popen([*STATSFEEDER, "run", "-c", str(path)], env=env, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        wait_for(lambda: readyz(port)[0] == 503 and "missing" in readyz(port)[1], 60,
                 "/readyz to name the missing sink")
        assert readyz(port)[1].startswith("degraded: sink cassandra missing, collecting into "
                                          "kairosdb; retrying (cassandra:")
        assert metric(port, SINK_UP % "cassandra") == 0 and metric(port, SINK_UP % "kairosdb") == 1
        # KairosDB is not stalled: two cycles store into it while Cassandra is away.
        wait_for(lambda: (metric(port, WRITTEN % "kairosdb") or 0) > 0, 60, "a first cycle")
        first = metric(port, WRITTEN % "kairosdb") or 0
        wait_for(lambda: (metric(port, WRITTEN % "kairosdb") or 0) > first, 60, "a second cycle")
        assert not metric(port, WRITTEN % "cassandra")
        cassandra_peer.start_node(0, version=short, nodes=1)
        outage = time.monotonic() - stopped

        wait_for(lambda: readyz(port) == (200, "ready\n"), 60, "Cassandra to be opened again")
        wait_for(lambda: (metric(port, WRITTEN % "cassandra") or 0) > 0, 60, "the backfill")
        log = stop_service(service)
        assert "missing sink: cassandra" in log and "cassandra: open again after" in log

        counts = compare_stores(config, url, prefix, began - 900)
        print(f"\nCassandra down at start ({outage:.0f} s outage): {counts}")
        assert counts["vms"] == 4 and counts["kairosdb"] == counts["cassandra"] > 4 * 6
    finally:
        cassandra_peer.start_node(0, version=short, nodes=1)
        if service is not None and service.poll() is None:
            service.kill()
            assert service.stdout is not None
            print(service.stdout.read()[-6000:])  # what the service said, for the failure
        common.stop(EARLY_KAIROSDB)
        drop_keyspace(config)
