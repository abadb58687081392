"""vcsim → statsfeeder → Cassandra, through the CLI and through a real Cassandra outage."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml

from peers import cassandra as cassandra_peer
from statsfeeder.config import load_config
from statsfeeder.pipeline import Pipeline
from statsfeeder.sink_health import SinkHealth
from statsfeeder.sinks.cassandra import schema
from statsfeeder.sinks.cassandra.reader import read_series
from statsfeeder.sinks.cassandra.session import connect
from statsfeeder.sinks.cassandra.sink import CassandraSink
from statsfeeder.sources.vcenter.source import VCenterSource
from statsfeeder.telemetry import Telemetry
from statsfeeder.transforms.retag import Retagger
from tests.helpers import drop_keyspace

METRICS = ["cpu.usage.average", "mem.usage.average", "net.received.average"]


def write_config(path: Path, vcsim_env: dict[str, str], cassandra_env: dict[str, str],
                 keyspace: str) -> Path:
    raw = {
        "vcenters": [{"name": "vcsim", "url": vcsim_env["VCSIM_URL"],
                      "credentials": {"username": vcsim_env["VCSIM_USERNAME"],
                                      "password_env": "VCSIM_PASSWORD"},
                      "tls": {"ca_file": vcsim_env["VCSIM_CA_FILE"]}}],
        "collection": {"metrics": METRICS},
        "cassandra": {"hosts": cassandra_env["CASSANDRA_HOSTS"].split(","),
                      "port": int(cassandra_env["CASSANDRA_PORT"]),
                      "credentials": {"username": cassandra_env["CASSANDRA_USERNAME"],
                                      "password_env": "CASSANDRA_PASSWORD"},
                      "tls": {"ca_file": cassandra_env["CASSANDRA_CA_FILE"]},
                      "keyspace": keyspace, "consistency": "ONE",
                      "request_timeout_seconds": 4, "write_retries": 1},
    }
    path.write_text(yaml.safe_dump(raw))
    return path


def run_cli(*args: str, vcsim_env: dict[str, str], cassandra_env: dict[str, str],
            extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {"VCSIM_PASSWORD": vcsim_env["VCSIM_PASSWORD"],
           "CASSANDRA_PASSWORD": cassandra_env["CASSANDRA_PASSWORD"], "PATH": "",
           **(extra or {})}
    return subprocess.run([sys.executable, "-m", "statsfeeder", *args], env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def test_once_stores_every_powered_on_vm(tmp_path: Path, vcsim_env: dict[str, str],
                                         cassandra_env: dict[str, str]) -> None:
    keyspace = f"e2e_{uuid.uuid4().hex[:8]}"
    config = write_config(tmp_path / "c.yaml", vcsim_env, cassandra_env, keyspace)
    envs = dict(vcsim_env=vcsim_env, cassandra_env=cassandra_env)
    created = run_cli("schema", "create", "-c", str(config), **envs)
    assert created.returncode == 0, created.stderr
    done = run_cli("once", "-c", str(config), **envs)
    assert done.returncode == 0, done.stderr
    assert "(0 failed)" in done.stdout and "dropped: none" in done.stdout
    listed = run_cli("entities", "-c", str(config), **envs)
    vms = [line.split("\t") for line in listed.stdout.splitlines()]
    assert vms and all(vm[0].startswith("urn:vcenter:") for vm in vms)
    assert not any(vm[0].startswith("urn:vcenter:vcsim:") for vm in vms)  # vCenter's uuid
    shown = run_cli("query", "-c", str(config), "--vm", vms[0][0], "--metric",
                    "cpu.usage.average", "--since", "15m", "--format", "csv", **envs)
    assert shown.returncode == 0, shown.stderr
    rows = shown.stdout.splitlines()[1:]
    assert len(rows) >= 15  # at least one five-minute window of 20-s samples
    assert all(0 <= float(row.split(",")[3]) <= 100 for row in rows)  # percent, not 1/100 %
    for secret in (vcsim_env["VCSIM_PASSWORD"],):  # Cassandra's test password is "cassandra"
        assert secret not in done.stdout + done.stderr


@pytest.mark.slow
async def test_sink_outage_is_backfilled_from_the_watermarks(
        tmp_path: Path, vcsim_env: dict[str, str], cassandra_env: dict[str, str],
        request: pytest.FixtureRequest) -> None:
    """Cassandra down for a few cycles, then back: what is stored has no gap. Once a write
    finds no node, the sink is set aside: the cycles stop asking vCenter for samples nowhere
    could store, and it is probed until it answers."""
    keyspace = f"outage_{uuid.uuid4().hex[:8]}"
    config = load_config(write_config(tmp_path / "c.yaml", vcsim_env, cassandra_env, keyspace),
                         environ={"VCSIM_PASSWORD": vcsim_env["VCSIM_PASSWORD"],
                                  "CASSANDRA_PASSWORD": cassandra_env["CASSANDRA_PASSWORD"]})
    cluster, session = connect(config.cassandra)
    schema.create(session, config.cassandra)
    cluster.shutdown()
    sink = CassandraSink(config.cassandra)
    telemetry = Telemetry()
    health = SinkHealth([sink], telemetry, max_backoff=4)
    await health.open_all()
    source = VCenterSource(config.vcenters[0], config.collection)
    await source.start()
    pipeline = Pipeline(source, [sink], Retagger([]), telemetry, sink, sink_up=health.up,
                        sink_lost=health.lost)
    short = ".".join(cassandra_env["CASSANDRA_VERSION"].split(".")[:2])
    try:
        first = await pipeline.run_cycle()
        assert first.ok and first.written["cassandra"] > 0
        marks_before = dict(pipeline.watermarks["cassandra"])

        await asyncio.to_thread(cassandra_peer.stop_node, 0, version=short, nodes=1)
        began = time.monotonic()
        failed = []
        while time.monotonic() - began < 45:  # several cycles while the sink is down
            await asyncio.sleep(15)
            failed.append(await pipeline.run_cycle())
        assert failed and all(not r.ok and r.written["cassandra"] == 0 for r in failed)
        # nothing acknowledged, nothing advanced
        assert pipeline.watermarks["cassandra"] == marks_before
        # the first failed write set the sink aside; after it, vCenter was not asked
        assert failed[0].chunks > 0 and failed[0].vms_queried > 0
        assert all(r.missing == ["cassandra"] and r.chunks == 0 for r in failed[1:])
        # ... and the cycle line says so, without counting them as queried
        planned = len(pipeline.lag_vms or ())
        for report in failed[1:]:
            assert report.vms_queried == 0 and report.vms_kept == planned > 0
            assert f"no sink open: {planned} VMs not queried, kept for backfill" \
                in report.summary(), report.summary()
        assert telemetry.sink_up.labels("cassandra")._value.get() == 0
        assert await health.retry_due() == []  # probed: still down

        await asyncio.to_thread(cassandra_peer.start_node, 0, version=short, nodes=1)
        back = time.monotonic()  # the node answers CQL again
        while not await health.retry_due() and time.monotonic() - back < 240:
            await asyncio.sleep(1)  # probed (backoff up to 4 s) until the driver reconnected
        recovery = time.monotonic() - back
        print(f"cassandra back -> sink up: {recovery:.1f} s")
        assert health.up("cassandra") and recovery < 60, recovery
        for _ in range(8):
            recovered = await pipeline.run_cycle()
            if recovered.ok:
                break
            await asyncio.sleep(5)
        assert recovered.ok and recovered.written["cassandra"] > 0
        end = max(pipeline.watermarks["cassandra"].values())
        assert end >= max(marks_before.values()) + 40  # the outage spanned several samples

        entities = {row.moref: row.vm_id for row in sink.list_entities()}
        for moref in source.powered_on():
            found = read_series(sink.session, keyspace, entities[moref], ["cpu.usage.average"],
                                min(marks_before.values()) - 3600, end)
            [series] = found
            stamps = series.timestamps
            assert stamps[0] <= min(marks_before.values()) and stamps[-1] == end
            assert np.all(np.diff(stamps) == 20), "a gap survived the outage"
    finally:
        await asyncio.to_thread(cassandra_peer.start_node, 0, version=short, nodes=1)
        source.client.close()
        await asyncio.to_thread(drop_keyspace, sink.session, keyspace)
        sink.close()


@pytest.mark.slow
async def test_sink_recovers_when_the_drivers_reconnection_gave_up_on_a_refused_login(
        cassandra_env: dict[str, str]) -> None:
    """The driver stops reconnecting a host for good, silently, at the first attempt refused
    with AuthenticationFailed (here: the sink's login disabled while its connections are
    dropped and the node comes back). Once the login works again, the probe connects afresh
    and the sink writes again, without a restart of the process; the roll-ups and leases,
    which share its session, follow it to the new one."""
    from statsfeeder.errors import SinkError
    from statsfeeder.rollups.hook import Rollups
    from statsfeeder.service import Service
    from statsfeeder.sinks.cassandra.leases import LeaseStore
    from tests.helpers import (
        cassandra_config,
        create_login_role,
        login_refused,
        nodetool,
        wait_for,
    )

    keyspace = f"auth_{uuid.uuid4().hex[:8]}"
    admin_config = cassandra_config(cassandra_env, keyspace=keyspace)
    admin_cluster, admin = connect(admin_config)
    schema.create(admin, admin_config)
    role, password, config = create_login_role(admin, cassandra_env, keyspace,
                                               ("SELECT", "MODIFY"))
    sink = CassandraSink(config)
    telemetry = Telemetry()
    service = Service(telemetry, [], [sink], sink)
    health = SinkHealth([sink], telemetry, max_backoff=4, on_open=service.sink_opened)

    try:
        await health.open_all()
        await sink.save_watermarks("vc1", "cassandra", {"vm-1": 1_000})
        service.rollups = Rollups(sink, config, telemetry)
        service.rollups.store()
        service.leases = LeaseStore(sink.session, keyspace, lease_seconds=30)
        admin.execute(f"ALTER ROLE {role} WITH LOGIN = false")
        # Nodes cache roles and credentials (60 s on the test peers): wait until it counts.
        await asyncio.to_thread(wait_for, lambda: login_refused(config), 120,
                                "the login to be refused")
        # drops every client connection
        await asyncio.to_thread(nodetool, cassandra_env, "disablebinary")
        try:
            with pytest.raises(SinkError):  # the write that finds the node gone
                await sink.save_watermarks("vc1", "cassandra", {"vm-1": 2_000})
            health.lost("cassandra", "cassandra: unreachable")
            await asyncio.sleep(2)  # the driver marks the host down, reconnects with backoff
        finally:
            await asyncio.to_thread(nodetool, cassandra_env, "enablebinary")
        # Its next attempt (at most the policy's 10 s later) is refused: it stops for good.
        await asyncio.sleep(15)
        assert await health.retry_due() == []  # probed while the login is refused
        refused = health.missing()["cassandra"]
        admin_cluster.shutdown()  # its connections went with the binary protocol too
        admin_cluster, admin = connect(admin_config)
        admin.execute(f"ALTER ROLE {role} WITH LOGIN = true")
        await asyncio.to_thread(wait_for, lambda: not login_refused(config), 120,
                                "the login to be accepted again")
        back = time.monotonic()
        while not await health.retry_due() and time.monotonic() - back < 60:
            await asyncio.sleep(1)
        recovery = time.monotonic() - back
        print(f"login accepted again -> sink up: {recovery:.1f} s")
        assert health.up("cassandra") and recovery < 60, health.missing()
        await sink.save_watermarks("vc1", "cassandra", {"vm-1": 3_000})
        assert sink.load_watermarks("vc1") == {"cassandra": {"vm-1": 3_000}}
        assert service.leases.acquire("vc1", "a")  # on the new session, re-prepared
        assert service.rollups.store().metrics() == []
        # the probe said why, in one line and without the password
        assert "authentication failed" in refused and "\n" not in refused, refused
        assert password not in refused
    finally:
        await asyncio.to_thread(nodetool, cassandra_env, "enablebinary")
        if service.rollups is not None:
            service.rollups.close()
        sink.close()
        admin_cluster.shutdown()
        admin_cluster, admin = connect(admin_config)
        admin.execute(f"DROP ROLE IF EXISTS {role}")
        await asyncio.to_thread(drop_keyspace, admin, keyspace)
        admin_cluster.shutdown()


def test_once_tags_series_with_vcd_ids_from_the_api(tmp_path: Path, vcsim_env: dict[str, str],
                                                    cassandra_env: dict[str, str]) -> None:
    """vcsim → statsfeeder with vcd.api (the documented-API double) → Cassandra: stored under
    urn:vcloud:vm:<uuid> with org / VDC / vApp, one VM left out of vCD and skipped (counted)."""
    from statsfeeder.sources.vcenter.source import VCenterSource
    from tests.helpers import collection_config, vcenter_config
    from tests.vcd_double import VcdDouble

    source = VCenterSource(vcenter_config(vcsim_env, "vcsim"), collection_config(metrics=METRICS))
    asyncio.run(source.start())
    source.client.close()
    on = sorted(source.powered_on())
    keyspace = f"vcd_{uuid.uuid4().hex[:8]}"
    config = write_config(tmp_path / "c.yaml", vcsim_env, cassandra_env, keyspace)
    with VcdDouble() as double:
        vc = double.add_vcenter("vc-one", vcsim_env["VCSIM_URL"].removesuffix("/sdk"))
        ids = {moref: double.add_vm(vc, moref, f"tenant-{moref}", vapp="web", vdc="gold",
                                    org="acme") for moref in on[1:]}
        raw = yaml.safe_load(config.read_text())
        raw["vcd"] = {"unmapped": "skip", "api": {
            "url": double.url, "format": "xml",
            "credentials": {"username": f"{double.username}@System",
                            "password_env": "VCD_PASSWORD"},
            "tls": {"ca_file": double.ca_file}}}
        config.write_text(yaml.safe_dump(raw))
        envs = dict(vcsim_env=vcsim_env, cassandra_env=cassandra_env,
                    extra={"VCD_PASSWORD": double.password})
        assert run_cli("schema", "create", "-c", str(config), **envs).returncode == 0
        done = run_cli("once", "-c", str(config), **envs)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "not_vcd_managed=" in done.stdout, done.stdout + done.stderr  # skipped, counted
        assert double.password not in done.stdout + done.stderr
    entities = run_cli("entities", "-c", str(config), **envs)
    assert entities.returncode == 0, entities.stderr
    listed = entities.stdout.splitlines()
    stored = {line.split("\t")[5].split("/")[1]: line.split("\t") for line in listed}
    assert set(stored) == set(ids)
    for moref, vm_uuid in ids.items():
        vm_id, name, org, vdc, vapp, _ = stored[moref]
        assert (vm_id, name, org, vdc, vapp) == (f"urn:vcloud:vm:{vm_uuid}", f"tenant-{moref}",
                                                 "acme", "gold", "web")
