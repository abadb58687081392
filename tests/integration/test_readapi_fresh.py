"""Freshness: ``statsfeeder run`` with ``read_api.enabled`` collects vcsim's VMs (org, VDC and
vApp from a mapping file) and serves them; an instant query just before the next cycle starts
returns every powered-on VM, with the default 10-minute lookback."""

from __future__ import annotations

import asyncio
import csv
import math
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import yaml

from statsfeeder.sources.vcenter.source import VCenterSource
from tests.helpers import collection_config, drop_keyspace, vcenter_config
from tests.integration.test_pipeline import METRICS, write_config
from tests.readapi_fleet import free_port

C = "vsphere_vm_cpu_usage_average_percent"


def test_an_instant_query_just_before_the_next_cycle_sees_every_powered_on_vm(
        tmp_path: Path, vcsim_env: dict[str, str], cassandra_env: dict[str, str]) -> None:
    source = VCenterSource(vcenter_config(vcsim_env, "vcsim"), collection_config(metrics=METRICS))
    asyncio.run(source.start())
    source.client.close()
    powered_on = set(source.powered_on())
    assert powered_on
    mapping = tmp_path / "vcd.csv"
    with mapping.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["vm_id", "vcenter", "moref", "name", "vapp", "vdc", "org"])
        for number, moref in enumerate(sorted(powered_on)):
            org = ("acme", "globex")[number % 2]
            writer.writerow([f"urn:vcloud:vm:{uuid.uuid4()}", "vcsim", moref, f"vm{number}",
                             f"app{number % 3}", f"{org}-vdc", org])
    keyspace = f"fresh_{uuid.uuid4().hex[:8]}"
    path = write_config(tmp_path / "c.yaml", vcsim_env, cassandra_env, keyspace)
    raw = yaml.safe_load(path.read_text())
    api_port, telemetry_port = free_port(), free_port()
    raw["vcd"] = {"mapping_file": str(mapping)}
    raw["telemetry"] = {"listen": f"127.0.0.1:{telemetry_port}"}
    # No credentials needed on this loopback listener (anonymous reads provider-wide).
    raw["read_api"] = {"enabled": True, "listen": f"127.0.0.1:{api_port}", "anonymous": True}
    path.write_text(yaml.safe_dump(raw))
    env = {"VCSIM_PASSWORD": vcsim_env["VCSIM_PASSWORD"],
           "CASSANDRA_PASSWORD": cassandra_env["CASSANDRA_PASSWORD"],
           "PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root")}
    statsfeeder = [sys.executable, "-m", "statsfeeder"]
    subprocess.run([*statsfeeder, "schema", "create", "-c", str(path)], env=env, check=True,
                   capture_output=True, timeout=120)
    started = time.time()
    service = subprocess.Popen([*statsfeeder, "run", "-c", str(path)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    api = f"http://127.0.0.1:{api_port}/api/v1/query"
    try:
        found: set[str] = set()
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and found != powered_on:
            assert service.poll() is None, service.stderr.read().decode()  # type: ignore[union-attr]
            try:
                answer = httpx.get(api, params={"query": C}, timeout=30).json()
                found = {item["metric"]["moref"] for item in answer["data"]["result"]}
            except httpx.TransportError:
                pass
            time.sleep(1)
        assert found == powered_on, "the first cycle never became readable"
        # The first cycle ran at start-up; the next starts on the next 300-s boundary.
        next_cycle = math.ceil((started + 1) / 300) * 300
        answer = httpx.get(api, params={"query": C, "time": str(next_cycle - 1)}).json()
        rows = answer["data"]["result"]
        assert {item["metric"]["moref"] for item in rows} == powered_on
        assert all(item["metric"]["org"] in ("acme", "globex") and item["metric"]["vdc"]
                   and item["metric"]["vapp"] and item["metric"]["vm"].startswith(
                       "urn:vcloud:vm:") for item in rows)
        # A batch a minute late, queried just before the cycle after it: still every VM with
        # the 10-minute lookback; a 5-minute window (Prometheus's default lookback) sees none.
        newest = max(float(v["value"][1]) for v in httpx.get(
            api, params={"query": f"timestamp({C})"}).json()["data"]["result"])
        late = str(newest + 300 + 60)
        fresh = httpx.get(api, params={"query": C, "time": late}).json()["data"]["result"]
        short = httpx.get(api, params={"query": f"last_over_time({C}[5m])",
                                       "time": late}).json()["data"]["result"]
        assert {item["metric"]["moref"] for item in fresh} == powered_on and short == []
    finally:
        service.terminate()
        service.wait(90)
        from statsfeeder.config import load_config
        from statsfeeder.sinks.cassandra.session import connect

        cluster, session = connect(load_config(path, environ=env).cassandra)
        drop_keyspace(session, keyspace)
        cluster.shutdown()


def test_run_collects_on_while_the_read_api_cannot_start(
        tmp_path: Path, vcsim_env: dict[str, str], cassandra_env: dict[str, str]) -> None:
    """No Go and no built engine: the API says why (and retries), the cycles go on."""
    keyspace = f"noapi_{uuid.uuid4().hex[:8]}"
    path = write_config(tmp_path / "c.yaml", vcsim_env, cassandra_env, keyspace)
    raw = yaml.safe_load(path.read_text())
    telemetry_port = free_port()
    raw["telemetry"] = {"listen": f"127.0.0.1:{telemetry_port}"}
    raw["read_api"] = {"enabled": True, "listen": f"127.0.0.1:{free_port()}", "anonymous": True}
    path.write_text(yaml.safe_dump(raw))
    env = {"VCSIM_PASSWORD": vcsim_env["VCSIM_PASSWORD"],
           "CASSANDRA_PASSWORD": cassandra_env["CASSANDRA_PASSWORD"],
           "PATH": "", "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    statsfeeder = [sys.executable, "-m", "statsfeeder"]
    subprocess.run([*statsfeeder, "schema", "create", "-c", str(path)], env=env, check=True,
                   capture_output=True, timeout=120)
    service = subprocess.Popen([*statsfeeder, "run", "-c", str(path)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    success = 'statsfeeder_cycle_last_success_timestamp_seconds{vcenter="vcsim"}'
    try:
        deadline, stored = time.monotonic() + 120, 0.0
        while time.monotonic() < deadline and not stored:
            assert service.poll() is None
            try:
                text = httpx.get(f"http://127.0.0.1:{telemetry_port}/metrics").text
                stored = float(next((line.rsplit(" ", 1)[1] for line in text.splitlines()
                                     if line.startswith(success)), "0"))
            except httpx.TransportError:
                pass
            time.sleep(1)
        assert stored > 0, "no cycle was stored while the read API could not start"
    finally:
        service.terminate()
        assert service.wait(90) == 0
        errors = service.stderr.read() if service.stderr else ""
        from statsfeeder.config import load_config
        from statsfeeder.sinks.cassandra.session import connect

        cluster, session = connect(load_config(path, environ=env).cassandra)
        drop_keyspace(session, keyspace)
        cluster.shutdown()
    assert "read API not serving: read_api: the PromQL engine is built with Go, and 'go' is " \
           "not on PATH" in errors
