"""Hybrid mode: Cassandra and KairosDB together, each with its own buffer and watermarks."""

from __future__ import annotations

import asyncio
import subprocess
import sys
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
from tests.helpers import drop_keyspace, free_port, metric, wait_for
from tests.integration.hybrid_support import (
    SINK_UP,
    STATSFEEDER,
    WRITTEN,
    Env,
    Relay,
    cli_env,
    compare_stores,
    create_schema,
    drop_config_keyspace,
    hybrid_config,
    readyz,
    stop_service,
)
from tests.integration.test_pipeline import write_config

NAME = "kairosdb-hybrid-outage"
"""A KairosDB of this test's own, on a free port: other sessions' tests stop theirs."""


def kairos_stamps(url: str, moref: str, since_ms: int) -> list[int]:
    query = {"start_absolute": since_ms, "metrics": [
        {"name": "cpu.usage.average", "tags": {"moref": [moref]}}]}
    answer = httpx.post(f"{url}/api/v1/datapoints/query", json=query, timeout=10).json()
    return sorted(int(ts) // 1000 for ts, _ in answer["queries"][0]["results"][0]["values"])


async def test_kairosdb_outage_neither_stalls_cassandra_nor_loses_its_own_data(
        tmp_path: Path, vcsim_env: dict[str, str], cassandra_env: dict[str, str]) -> None:
    port = free_port()
    env = kairosdb_peer.start_instance(NAME, port)
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
        # unreachable: set aside, so the next cycle queues nothing for it; probed until back
        assert not service.health.up("kairosdb") and service.health.up("cassandra")
        aside = await pipeline.run_cycle()
        assert aside.missing == ["kairosdb"] and aside.sink_failures["kairosdb"] == 0
        assert aside.written["cassandra"] > 0

        kairosdb_peer.start_instance(NAME, port)
        await asyncio.sleep(service.health.max_backoff)
        assert await service.health.retry_due() == ["kairosdb"]
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
        drop_keyspace(session, keyspace)
        cluster.shutdown()


def test_purge_command_refuses_inside_retention_and_dry_runs(
        tmp_path: Path, kairosdb_env: dict[str, str]) -> None:
    import subprocess

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


# --- a sink down at start-up ---------------------------------------------------------------------

LATE_KAIROSDB = "kairosdb-hybrid-late"


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
    create_schema(path, env)
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
        drop_config_keyspace(config)


EARLY_KAIROSDB = "kairosdb-hybrid-early"


def test_cassandra_down_at_start_run_collects_into_kairosdb_and_backfills_cassandra(
        tmp_path: Path, vcsim_env: Env, cassandra_env: Env) -> None:
    """Issue 19, the other order: nothing answers on Cassandra's configured address when `run`
    starts (a relay to the real node starts listening later: see ``Relay`` for why not a stop
    of the shared node). KairosDB is collected into every cycle; once Cassandra answers, its
    own watermarks are read again before anything is written to it, so its backfill starts
    where it was (the `once` before), not from the cycle it returned in."""
    kairos_port, port, relay_port = free_port(), free_port(), free_port()
    url = kairosdb_peer.start_instance(EARLY_KAIROSDB, kairos_port)["KAIROSDB_URL"]
    # No state file: every watermark is in Cassandra, so this start reads none (KairosDB's
    # place is lost too: it starts from the last interval, as documented).
    path, prefix = hybrid_config(tmp_path, vcsim_env, cassandra_env, url, telemetry_port=port)
    env = cli_env(vcsim_env, cassandra_env)
    config = load_config(path, environ=env)
    create_schema(path, env)
    relayed = tmp_path / "relayed.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["cassandra"]["port"] = relay_port
    relayed.write_text(yaml.safe_dump(raw))
    relay = Relay(relay_port, (config.cassandra.hosts[0], config.cassandra.port))
    began = int(time.time())
    service: subprocess.Popen[str] | None = None
    try:
        once = subprocess.run([*STATSFEEDER, "once", "-c", str(path)], env=env, text=True,
                              capture_output=True, timeout=120)
        assert once.returncode == 0, once.stdout + once.stderr

        started = int(time.time())
        service = subprocess.Popen([*STATSFEEDER, "run", "-c", str(relayed)], env=env,
                                   text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        wait_for(lambda: readyz(port)[0] == 503 and "missing" in readyz(port)[1], 60,
                 "/readyz to name the missing sink")
        assert readyz(port)[1].startswith(
            "degraded: sink cassandra missing, collecting into kairosdb; retrying (cassandra: "
            f"connection refused at 127.0.0.1:{relay_port})")
        assert metric(port, SINK_UP % "cassandra") == 0 and metric(port, SINK_UP % "kairosdb") == 1
        # KairosDB is not stalled: three cycles store into it while Cassandra is away.
        for cycle in range(3):
            before = metric(port, WRITTEN % "kairosdb") or 0
            wait_for(lambda n=before: (metric(port, WRITTEN % "kairosdb") or 0) > n, 60,
                     f"cycle {cycle + 1} into KairosDB")
        assert not metric(port, WRITTEN % "cassandra")
        outage = time.time() - started
        relay.start()

        wait_for(lambda: readyz(port) == (200, "ready\n"), 60, "Cassandra to be opened again")
        assert metric(port, SINK_UP % "cassandra") == 1
        wait_for(lambda: (metric(port, WRITTEN % "cassandra") or 0) > 0, 60, "the backfill")
        log = stop_service(service)
        assert "missing sink: cassandra" in log and "cassandra: open again after" in log

        # Cassandra: no gap from the `once` on; KairosDB: all of it since this start.
        counts = compare_stores(config, url, prefix, began - 900, both_since=started - 20)
        print(f"\nCassandra down at start ({outage:.0f} s outage): {counts}")
        assert counts["vms"] == 4 and counts["kairosdb"] == counts["cassandra"] >= 4 * 2
        assert counts["cassandra_all"] > counts["cassandra"]  # the `once`'s, joined up
    finally:
        relay.stop()
        if service is not None and service.poll() is None:
            service.kill()
            assert service.stdout is not None
            print(service.stdout.read()[-6000:])  # what the service said, for the failure
        common.stop(EARLY_KAIROSDB)
        drop_config_keyspace(config)
