"""The Cassandra peer: TLS with the project CA and password auth work, and nothing weaker does."""

from __future__ import annotations

import ssl
import uuid
from typing import Any

import pytest
from cassandra import AuthenticationFailed
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, NoHostAvailable
from cassandra.policies import RoundRobinPolicy

from peers import common

pytestmark = pytest.mark.cassandra_matrix

Env = dict[str, str]


def _cluster(env: Env, *, ssl_context: ssl.SSLContext | None, password: str | None = None,
             ssl_options: dict[str, Any] | None = None) -> Cluster:
    return Cluster(
        contact_points=env["CASSANDRA_HOSTS"].split(","),
        port=int(env["CASSANDRA_PORT"]),
        ssl_context=ssl_context,
        ssl_options=ssl_options,
        auth_provider=PlainTextAuthProvider(
            env["CASSANDRA_USERNAME"],
            env["CASSANDRA_PASSWORD"] if password is None else password,
        ),
        protocol_version=4,
        execution_profiles={
            EXEC_PROFILE_DEFAULT: ExecutionProfile(load_balancing_policy=RoundRobinPolicy(),
                                                   request_timeout=30),
        },
        connect_timeout=5,
        control_connection_timeout=5,
        schema_metadata_enabled=False,
        token_metadata_enabled=False,
    )


def _refused(cluster: Cluster) -> NoHostAvailable:
    try:
        with pytest.raises(NoHostAvailable) as info:
            cluster.connect()
    finally:
        cluster.shutdown()
    return info.value


def _ca_context(env: Env) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=env["CASSANDRA_CA_FILE"])


def test_round_trip_over_tls_with_password(cassandra_env: Env) -> None:
    cluster = _cluster(cassandra_env, ssl_context=_ca_context(cassandra_env))
    try:
        session = cluster.connect()
        version = session.execute("SELECT release_version FROM system.local").one()
        assert version.release_version.startswith(cassandra_env["CASSANDRA_VERSION"])
        session.execute(
            "CREATE KEYSPACE IF NOT EXISTS peers_smoke WITH replication = "
            "{'class': 'SimpleStrategy', 'replication_factor': 1}"
        )
        session.execute(
            "CREATE TABLE IF NOT EXISTS peers_smoke.kv (k text PRIMARY KEY, v bigint, b blob)"
        )
        key = uuid.uuid4().hex
        session.execute("INSERT INTO peers_smoke.kv (k, v, b) VALUES (%s, %s, %s)",
                        (key, 2**40 + 7, b"\x00\xffstats"))
        row = session.execute("SELECT v, b FROM peers_smoke.kv WHERE k = %s", (key,)).one()
        assert (row.v, row.b) == (2**40 + 7, b"\x00\xffstats")
        session.execute("DELETE FROM peers_smoke.kv WHERE k = %s", (key,))
    finally:
        cluster.shutdown()


def test_client_certificate_is_accepted_not_required(cassandra_env: Env) -> None:
    certs = common.ensure_certs()
    context = _ca_context(cassandra_env)
    context.load_cert_chain(cassandra_env.get("CASSANDRA_CLIENT_CERT") or certs["client_cert"],
                            cassandra_env.get("CASSANDRA_CLIENT_KEY") or certs["client_key"])
    cluster = _cluster(cassandra_env, ssl_context=context)
    try:
        assert cluster.connect().execute("SELECT key FROM system.local").one().key == "local"
    finally:
        cluster.shutdown()


def test_bad_password_is_refused(cassandra_env: Env) -> None:
    error = _refused(_cluster(cassandra_env, ssl_context=_ca_context(cassandra_env),
                              password="not-the-password"))
    assert error.errors, error
    assert all(isinstance(cause, AuthenticationFailed) for cause in error.errors.values()), error


def test_unknown_ca_is_refused(cassandra_env: Env) -> None:
    other = ssl.create_default_context(cafile=str(common.ensure_certs()["other_ca"]))
    error = _refused(_cluster(cassandra_env, ssl_context=other))
    assert error.errors, error
    for cause in error.errors.values():
        assert not isinstance(cause, AuthenticationFailed)
        assert "CERTIFICATE_VERIFY_FAILED" in str(cause), cause


def test_wrong_hostname_is_refused(cassandra_env: Env) -> None:
    error = _refused(_cluster(cassandra_env, ssl_context=_ca_context(cassandra_env),
                              ssl_options={"server_hostname": "not-the-node.invalid"}))
    assert error.errors, error
    for cause in error.errors.values():
        assert "not-the-node.invalid" in str(cause) or "mismatch" in str(cause), cause


def test_plaintext_is_refused(cassandra_env: Env) -> None:
    error = _refused(_cluster(cassandra_env, ssl_context=None))
    assert error.errors, error
    for cause in error.errors.values():
        # The node is up (the fixture waited for a TLS login): it must reset, not refuse.
        assert not isinstance(cause, AuthenticationFailed | ConnectionRefusedError), cause
