"""HA: vCenters shared between instances through Cassandra leases (lightweight transactions).

Against the real Cassandra node: the lease rules themselves, two keepers balancing and taking
over in one process, and two `statsfeeder run` processes where the holder is SIGKILLed.
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from peers import vcsim
from statsfeeder.config import load_config
from statsfeeder.ha import LeaseKeeper
from statsfeeder.sinks.cassandra import schema
from statsfeeder.sinks.cassandra.leases import LeaseStore
from statsfeeder.sinks.cassandra.reader import read_series
from statsfeeder.sinks.cassandra.session import connect
from tests.helpers import cassandra_config, drop_keyspace, free_port, metric, wait_for
from tests.integration.test_pipeline import write_config

pytestmark = pytest.mark.cassandra_matrix


@pytest.fixture
def session_and_keyspace(cassandra_env: dict[str, str]) -> Iterator[tuple[Any, str]]:
    config = cassandra_config(cassandra_env, keyspace=f"ha_{uuid.uuid4().hex[:10]}")
    cluster, session = connect(config)
    schema.create(session, config)
    yield session, config.keyspace
    drop_keyspace(session, config.keyspace)
    cluster.shutdown()


def test_a_lease_has_one_owner_until_released_or_expired(
        session_and_keyspace: tuple[Any, str]) -> None:
    session, keyspace = session_and_keyspace
    store = LeaseStore(session, keyspace, lease_seconds=3)
    assert store.acquire("vc1", "a")
    assert not store.acquire("vc1", "b")
    assert not store.renew("vc1", "b")
    assert not store.release("vc1", "b")
    assert store.renew("vc1", "a")
    assert store.snapshot().holders == {"vc1": "a"}
    assert store.release("vc1", "a")
    assert store.acquire("vc1", "b")
    time.sleep(4)  # b never renews: its row expires by TTL
    assert store.snapshot().holders == {}
    assert not store.renew("vc1", "b"), "a lapsed lease must not be renewable"
    assert store.acquire("vc1", "a")

    # Eight contenders at once: the lightweight transaction admits exactly one.
    with ThreadPoolExecutor(8) as pool:
        won = list(pool.map(lambda owner: store.acquire("vc2", owner),
                            [f"racer{i}" for i in range(8)]))
    assert won.count(True) == 1
    assert store.snapshot().holders["vc2"] == f"racer{won.index(True)}"


def test_keepers_share_vcenters_and_take_over_a_dead_ones_share(
        session_and_keyspace: tuple[Any, str]) -> None:
    session, keyspace = session_and_keyspace
    names = ["vc1", "vc2", "vc3", "vc4"]
    lease = 3

    async def scenario() -> None:
        lost: list[tuple[str, str]] = []
        a = LeaseKeeper(LeaseStore(session, keyspace, lease), "a", names,
                        on_lost=lambda n: lost.append(("a", n)))
        b = LeaseKeeper(LeaseStore(session, keyspace, lease), "b", names,
                        on_lost=lambda n: lost.append(("b", n)))
        stop_a, stop_b = asyncio.Event(), asyncio.Event()
        await a.tick()  # alone at first: takes everything
        assert a.held == names
        tasks = [asyncio.create_task(a.run(stop_a)), asyncio.create_task(b.run(stop_b))]
        overlaps = 0
        deadline = time.monotonic() + 6 * lease
        while time.monotonic() < deadline and not (len(a.held) == len(b.held) == 2):
            overlaps += bool(set(a.held) & set(b.held))
            await asyncio.sleep(0.05)
        assert len(a.held) == len(b.held) == 2, (a.held, b.held)
        assert overlaps == 0
        assert lost == [], "a rebalance hands leases over; it never loses one"

        # a dies: no release, its rows lapse by TTL and b takes them within the lease time.
        tasks[0].cancel()
        died = time.monotonic()
        a_share = a.held
        while time.monotonic() - died < 3 * lease and b.held != names:
            overlaps += bool(set(a.held) & set(b.held))
            await asyncio.sleep(0.05)
        assert overlaps == 0
        took = time.monotonic() - died
        assert b.held == names, b.held
        assert took <= lease + b.renew_every + 1, took
        assert a.held == [], "the dead holder's own deadline passed before b could take over"
        assert ("a", a_share[0]) in lost
        stop_b.set()
        await tasks[1]
        await b.release_all()
        assert LeaseStore(session, keyspace, lease).snapshot().holders == {}

    asyncio.run(scenario())


SECOND_VCENTER = ("vcsim-ha-b", 18986)


@pytest.fixture
def second_vcenter() -> Iterator[dict[str, str]]:
    """A vCenter of its own for vc-b: the same vCenter under two names would be one vCenter
    (VM ids come from vCenter's instance UUID), and its writes would hide a gap in vc-a's."""
    try:
        yield vcsim.start_instance(*SECOND_VCENTER, vms=2)
    finally:
        vcsim.stop_instance(SECOND_VCENTER[0])


def test_two_processes_share_vcenters_and_survive_a_sigkill(
        tmp_path: Path, vcsim_env: dict[str, str], cassandra_env: dict[str, str],
        second_vcenter: dict[str, str]) -> None:
    """Two vCenters, two instances: each collects one; SIGKILL the holder of vc-a and the
    other takes it over with no gap in its stored series; no cycle slot of a vCenter is ever
    collected by both."""
    keyspace = f"ha_{uuid.uuid4().hex[:10]}"
    path = write_config(tmp_path / "ha.yaml", vcsim_env, cassandra_env, keyspace)
    raw = yaml.safe_load(path.read_text())
    vc = raw["vcenters"][0]
    raw["vcenters"] = [{**vc, "name": "vc-a"},
                       {**vc, "name": "vc-b", "url": second_vcenter["VCSIM_URL"]}]
    raw["collection"]["interval_seconds"] = 20
    raw["ha"] = {"enabled": True, "lease_seconds": 6}
    path.write_text(yaml.safe_dump(raw))
    env = {"VCSIM_PASSWORD": vcsim_env["VCSIM_PASSWORD"],
           "CASSANDRA_PASSWORD": cassandra_env["CASSANDRA_PASSWORD"], "PATH": ""}
    statsfeeder = [sys.executable, "-m", "statsfeeder"]
    subprocess.run([*statsfeeder, "schema", "create", "-c", str(path)], env=env, check=True,
                   capture_output=True, timeout=120)
    ports = {"one": free_port(), "two": free_port()}
    logs = {name: tmp_path / f"{name}.log" for name in ports}
    processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(name: str) -> None:
        processes[name] = subprocess.Popen(
            [*statsfeeder, "run", "-c", str(path)],
            env={**env, "STATSFEEDER_TELEMETRY__LISTEN": f"127.0.0.1:{ports[name]}",
                 "STATSFEEDER_HA__INSTANCE_ID": name},
            stdout=logs[name].open("ab"), stderr=subprocess.STDOUT)

    def held(name: str, vcenter: str) -> bool:
        return metric(ports[name], f'statsfeeder_leases_held{{vcenter="{vcenter}"}}') == 1

    def cycles(name: str) -> set[tuple[str, str]]:
        found = re.findall(r"cycle (\S+): vCenter (vc-[ab])", logs[name].read_text())
        return {(vcenter, slot) for slot, vcenter in found}

    try:
        start("one")
        start("two")
        wait_for(lambda: sum(held(n, v) for n in ports for v in ("vc-a", "vc-b")) == 2
                 and all(held("one", v) != held("two", v) for v in ("vc-a", "vc-b")), 60,
                 "the two vCenters shared one each")
        holder = "one" if held("one", "vc-a") else "two"
        other = "two" if holder == "one" else "one"
        success = 'statsfeeder_cycle_last_success_timestamp_seconds{vcenter="vc-a"}'
        wait_for(lambda: (metric(ports[holder], success) or 0) > 0, 60,
                 f"a stored vc-a cycle by {holder}")
        processes[holder].kill()
        processes[holder].wait(timeout=10)
        killed, killed_at = time.monotonic(), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        wait_for(lambda: held(other, "vc-a"), 6 + 2 + 5, f"{other} taking vc-a over")
        assert time.monotonic() - killed <= 6 + 2 + 2
        wait_for(lambda: any(v == "vc-a" and slot > killed_at for v, slot in cycles(other)),
                 60, f"a stored vc-a cycle by {other} after the kill")

        both = cycles(holder) & cycles(other)
        assert not both, f"cycle slots collected by both instances: {both}"
        assert (metric(ports[other], success) or 0) > 0

        config = load_config(path, environ=env)
        cluster, session = connect(config.cassandra)
        try:
            vms = [row.vm_id for row in session.execute(f"SELECT vm_id, vcenter FROM "
                                                        f"{keyspace}.entities")
                   if row.vcenter == "vc-a"]
            assert vms
            now = int(time.time())
            for vm in vms:
                [series] = read_series(session, keyspace, vm, ["cpu.usage.average"],
                                       now - 3600, now + 60)
                assert np.all(np.diff(series.timestamps) == 20), "the takeover left a gap"
                assert series.timestamps[-1] >= now - 80

            processes[other].send_signal(signal.SIGTERM)
            assert processes[other].wait(timeout=90) == 0
            holders = LeaseStore(session, keyspace, 6).snapshot().holders
            assert holders == {}, f"SIGTERM must release the leases: {holders}"
        finally:
            cluster.shutdown()
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
        cluster, session = connect(load_config(path, environ=env).cassandra)
        drop_keyspace(session, keyspace)
        cluster.shutdown()
