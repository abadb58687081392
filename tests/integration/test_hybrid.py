"""Hybrid mode: Cassandra and KairosDB together, each with its own buffer and watermarks."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import yaml

from peers import common
from peers import kairosdb as kairosdb_peer
from statsfeeder.config import load_config
from statsfeeder.service import build_service as _build
from statsfeeder.sinks.cassandra import schema
from statsfeeder.sinks.cassandra.session import connect
from tests.integration.test_pipeline import write_config

PORT = 18086
NAME = "kairosdb-hybrid"


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
    [line] = dry.stdout.splitlines()  # the note that nothing was deleted, once
    assert line.count("dry run") == 1 and line.endswith("(dry run: add --yes to delete)")
