"""The three-node Cassandra peer: RF 3 writes and reads at QUORUM survive one node down."""

from __future__ import annotations

import ssl
import time
import uuid

import pytest
from cassandra import ConsistencyLevel
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, Session
from cassandra.policies import RoundRobinPolicy, WhiteListRoundRobinPolicy
from cassandra.query import SimpleStatement

from peers import cassandra as cassandra_peer

pytestmark = pytest.mark.cluster

Env = dict[str, str]
STOPPED = 2  # node index 2 = 127.0.0.3 (not the seed)


def _cluster(env: Env, hosts: list[str] | None = None) -> Cluster:
    hosts = hosts or env["CASSANDRA_HOSTS"].split(",")
    policy = WhiteListRoundRobinPolicy(hosts) if len(hosts) == 1 else RoundRobinPolicy()
    return Cluster(
        contact_points=hosts,
        port=int(env["CASSANDRA_PORT"]),
        ssl_context=ssl.create_default_context(cafile=env["CASSANDRA_CA_FILE"]),
        auth_provider=PlainTextAuthProvider(env["CASSANDRA_USERNAME"], env["CASSANDRA_PASSWORD"]),
        protocol_version=4,
        execution_profiles={
            EXEC_PROFILE_DEFAULT: ExecutionProfile(load_balancing_policy=policy,
                                                   request_timeout=30),
        },
        connect_timeout=5,
        control_connection_timeout=5,
    )


def _execute(session: Session, cql: str, params: tuple[object, ...], level: int) -> list:
    return list(session.execute(SimpleStatement(cql, consistency_level=level), params))


def test_rf3_quorum_with_one_node_down(cassandra_cluster_env: Env) -> None:
    env = cassandra_cluster_env
    assert env["CASSANDRA_HOSTS"] == "127.0.0.1,127.0.0.2,127.0.0.3"
    cluster = _cluster(env)
    try:
        session = cluster.connect()
        peers = session.execute("SELECT peer FROM system.peers").all()
        assert len(peers) == 2
        session.execute(
            "CREATE KEYSPACE IF NOT EXISTS peers_cluster WITH replication = "
            "{'class': 'SimpleStrategy', 'replication_factor': 3}"
        )
        session.execute(
            "CREATE TABLE IF NOT EXISTS peers_cluster.kv (k text PRIMARY KEY, v int)"
        )
        cluster.control_connection.wait_for_schema_agreement()
        keys = [f"{uuid.uuid4().hex}-{i}" for i in range(20)]
        insert = "INSERT INTO peers_cluster.kv (k, v) VALUES (%s, %s)"
        select = "SELECT v FROM peers_cluster.kv WHERE k = %s"

        assert cassandra_peer.stop_node(STOPPED) is True
        try:
            for i, key in enumerate(keys):
                level = ConsistencyLevel.QUORUM if i % 2 else ConsistencyLevel.LOCAL_QUORUM
                _execute(session, insert, (key, i), level)
            for i, key in enumerate(keys):
                rows = _execute(session, select, (key,), ConsistencyLevel.QUORUM)
                assert [row.v for row in rows] == [i]
            # A new login works with a node down (system_auth is replicated to all three).
            fresh = _cluster(env, ["127.0.0.1"])
            try:
                fresh.connect().execute("SELECT now() FROM system.local")
            finally:
                fresh.shutdown()
        finally:
            took = cassandra_peer.start_node(STOPPED)
        assert took > 0

        # The restarted node answers on its own, and reads at ALL see every write.
        only_third = _cluster(env, ["127.0.0.3"])
        try:
            third = only_third.connect()
            row = third.execute("SELECT release_version FROM system.local").one()
            assert row.release_version == env["CASSANDRA_VERSION"]
        finally:
            only_third.shutdown()
        deadline = time.monotonic() + 60
        while True:  # the driver notices the node is back a moment after it listens
            try:
                for i, key in enumerate(keys):
                    rows = _execute(session, select, (key,), ConsistencyLevel.ALL)
                    assert [row.v for row in rows] == [i]
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
    finally:
        cluster.shutdown()
