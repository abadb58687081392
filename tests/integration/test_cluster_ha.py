"""Leases on three nodes at replication factor 3: a node down changes nothing (Paxos needs
two of three), and contenders still get exactly one winner."""

from __future__ import annotations

import asyncio
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from peers import cassandra as cassandra_peer
from statsfeeder.ha import LeaseKeeper
from statsfeeder.sinks.cassandra import schema
from statsfeeder.sinks.cassandra.leases import LeaseStore
from statsfeeder.sinks.cassandra.session import connect
from tests.helpers import cassandra_config, drop_keyspace

pytestmark = pytest.mark.cluster

STOPPED = 2  # 127.0.0.3, not the seed


def test_leases_hold_through_a_node_outage(cassandra_cluster_env: dict[str, str]) -> None:
    version = ".".join(cassandra_cluster_env["CASSANDRA_VERSION"].split(".")[:2])
    config = cassandra_config(cassandra_cluster_env, keyspace=f"ha_{uuid.uuid4().hex[:8]}",
                              consistency="LOCAL_QUORUM", replication={"replication_factor": 3},
                              request_timeout_seconds=5)
    cluster, session = connect(config)
    schema.create(session, config)
    names = ["vc1", "vc2", "vc3"]
    lease = 6

    async def scenario() -> None:
        lost: list[str] = []
        a = LeaseKeeper(LeaseStore(session, config.keyspace, lease), "a", names,
                        on_lost=lost.append)
        b = LeaseKeeper(LeaseStore(session, config.keyspace, lease), "b", names,
                        on_lost=lost.append)
        stop = asyncio.Event()
        tasks = [asyncio.create_task(a.run(stop)), asyncio.create_task(b.run(stop))]
        # The first to tick may see itself alone and take all three, then hand one over when
        # it sees the other member: wait for the balanced state, not just for all held.
        deadline = time.monotonic() + 5 * lease
        while time.monotonic() < deadline and (
                len(a.held) + len(b.held) < len(names) or {len(a.held), len(b.held)} != {1, 2}):
            await asyncio.sleep(0.1)
        before = (a.held, b.held)
        assert sorted(a.held + b.held) == names
        assert {len(a.held), len(b.held)} == {1, 2}

        await asyncio.to_thread(cassandra_peer.stop_node, STOPPED, version=version)
        await asyncio.sleep(2 * lease)  # several renewals with one replica down
        assert (a.held, b.held) == before
        assert lost == []
        store = LeaseStore(session, config.keyspace, lease)
        with ThreadPoolExecutor(6) as pool:
            won = list(pool.map(lambda owner: store.acquire("contended", owner),
                                [f"racer{i}" for i in range(6)]))
        assert won.count(True) == 1
        stop.set()
        await asyncio.gather(*tasks)
        await a.release_all()
        await b.release_all()
        assert set(store.snapshot().holders) == {"contended"}

    try:
        asyncio.run(scenario())
    finally:
        cassandra_peer.start_node(STOPPED, version=version)
        drop_keyspace(session, config.keyspace)
        cluster.shutdown()
