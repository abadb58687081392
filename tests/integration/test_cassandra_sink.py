"""The Cassandra sink, schema tool and reader against a real node with TLS and passwords."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml

from statsfeeder.errors import ConfigError, SchemaMismatch, SinkUnavailable
from statsfeeder.model import Counter, EntityId, Series
from statsfeeder.sinks.cassandra import schema
from statsfeeder.sinks.cassandra.reader import read_series
from statsfeeder.sinks.cassandra.session import connect
from statsfeeder.sinks.cassandra.sink import CassandraSink
from tests.helpers import cassandra_config, drop_keyspace

pytestmark = pytest.mark.cassandra_matrix

CPU = Counter("cpu.usage.average", 2, "percent")
NET = Counter("net.received.average", 143, "kiloBytesPerSecond", per_instance=True)
NOW = 1_795_334_400  # fixed instants keep the test independent of the clock: TTLs are relative


def keyspace() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


def series(vm: str, counter: Counter, stamps: list[int], values: list[int],
           instance: str = "") -> Series:
    return Series("vc1", "vm-1", counter, instance, np.array(stamps, dtype=np.int64),
                  np.array(values, dtype=np.int64), EntityId(vm))


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    options = ["--cluster-nodes", env["CASSANDRA_HOSTS"], "--port", env["CASSANDRA_PORT"],
               "--username", env["CASSANDRA_USERNAME"], "--ca-file", env["CASSANDRA_CA_FILE"]]
    return subprocess.run([sys.executable, "-m", "statsfeeder", *args, *options],
                          env={"CASSANDRA_PASSWORD": env["CASSANDRA_PASSWORD"], "PATH": ""},
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def sink(cassandra_env: dict[str, str]):
    config = cassandra_config(cassandra_env, keyspace=keyspace(), ttl_days=3)
    cluster, session = connect(config)
    schema.create(session, config)
    cluster.shutdown()
    sink = CassandraSink(config)
    sink.open()
    yield sink
    drop_keyspace(sink.session, config.keyspace)
    sink.close()


def test_schema_create_twice_show_and_update(cassandra_env: dict[str, str]) -> None:
    ks = keyspace()
    first = cli("schema", "create", "--keyspace", ks, "--ttl", "7", env=cassandra_env)
    assert first.returncode == 0, first.stderr
    second = cli("schema", "create", "--keyspace", ks, "--ttl", "7", env=cassandra_env)
    assert second.returncode == 0, second.stderr
    assert "samples TTL: 7 days" in second.stdout
    updated = cli("schema", "update", "--keyspace", ks, "--ttl", "31", env=cassandra_env)
    assert updated.returncode == 0 and "samples TTL: 31 days" in updated.stdout
    shown = cli("schema", "show", "--keyspace", ks, env=cassandra_env)
    assert "31 days" in shown.stdout
    config = cassandra_config(cassandra_env, keyspace=ks)
    cluster, session = connect(config)
    try:
        session.execute(f"ALTER TABLE {ks}.samples DROP data")
        with pytest.raises(SchemaMismatch, match=r"samples\.data is missing"):
            schema.check(session, ks)
        with pytest.raises(SchemaMismatch, match="differs"):
            schema.create(session, config)  # never clobbers a foreign schema
        session.execute(f"DROP KEYSPACE {ks}")
    finally:
        cluster.shutdown()


async def test_write_read_back_idempotent_with_ttl(sink: CassandraSink) -> None:
    vm = f"urn:vcloud:vm:{uuid.uuid4()}"
    stamps = [NOW - 600 + 20 * i for i in range(1, 31)]  # two whole windows
    cpu = list(range(1000, 1030))
    net = list(range(0, 300, 10))
    batch = [series(vm, CPU, stamps, cpu), series(vm, NET, stamps, net, "4000")]
    result = await sink.write(batch)
    assert (result.samples, result.rows) == (60, 4)
    await sink.write(batch)  # an overlapping backfill stores the same samples once
    sink.record_counters([CPU, NET])
    [stored_cpu] = read_series(sink.session, sink.config.keyspace, vm, [CPU.name],
                               NOW - 3600, NOW)
    assert stored_cpu.timestamps.tolist() == stamps and stored_cpu.values.tolist() == cpu
    assert stored_cpu.scale == 0.01 and stored_cpu.unit == "percent"
    [stored_net] = read_series(sink.session, sink.config.keyspace, vm, [NET.name], NOW - 3600,
                               NOW)
    assert stored_net.instance == "4000" and stored_net.values.tolist() == net
    rows = list(sink.session.execute(
        f"SELECT ttl(data) AS ttl, data FROM {sink.config.keyspace}.samples"))
    assert len(rows) == 4
    assert all(3 * 86400 - 120 < row.ttl <= 3 * 86400 for row in rows)
    assert sum(len(row.data) for row in rows) / 60 < 4


async def test_watermarks_round_trip(sink: CassandraSink) -> None:
    await sink.save_watermarks("vc1", "cassandra", {"vm-1": NOW, "vm-2": NOW - 20})
    await sink.save_watermarks("vc1", "cassandra", {"vm-1": NOW + 20})
    await sink.save_watermarks("vc1", "kairosdb", {"vm-1": NOW - 600})
    assert sink.load_watermarks("vc1") == {"cassandra": {"vm-1": NOW + 20, "vm-2": NOW - 20},
                                           "kairosdb": {"vm-1": NOW - 600}}
    assert sink.load_watermarks("vc2") == {}


def test_refusals_are_one_clear_line(cassandra_env: dict[str, str]) -> None:
    from peers.common import ensure_certs

    cases = {
        "authentication failed for user": dict(credentials={"username": "cassandra",
                                                             "password": "wrong"}),
        "TLS verification failed": dict(tls={"ca_file": str(ensure_certs()["other_ca"])}),
        "does the node require TLS": dict(tls={"enabled": False}),
    }
    for expected, override in cases.items():
        config = cassandra_config(cassandra_env, connect_timeout_seconds=5, **override)
        with pytest.raises(SinkUnavailable) as info:
            connect(config)
        message = str(info.value)
        assert expected in message and "\n" not in message and "wrong" not in message
    unreachable = cassandra_config(cassandra_env, port=1, connect_timeout_seconds=3)
    with pytest.raises(SinkUnavailable, match=r"127\.0\.0\.1:1"):
        connect(unreachable)


def test_cli_refusal_exits_non_zero_with_one_line(cassandra_env: dict[str, str]) -> None:
    env = dict(cassandra_env, CASSANDRA_PASSWORD="wrong-password")
    done = cli("schema", "show", env=env)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "authentication failed" in lines[0]
    assert "wrong-password" not in done.stderr


def test_client_certificate_is_presented_when_configured(cassandra_env: dict[str, str]) -> None:
    """Mutual TLS from PEM files: the node here does not require it, so this proves the
    client side loads and presents the certificate over a verified connection."""
    from peers.common import ensure_certs

    certs = ensure_certs()
    config = cassandra_config(cassandra_env, tls={
        "ca_file": cassandra_env["CASSANDRA_CA_FILE"],
        "client_cert_file": str(certs["client_cert"]),
        "client_key_file": str(certs["client_key"])})
    cluster, session = connect(config)
    try:
        assert list(session.execute("SELECT release_version FROM system.local"))
    finally:
        cluster.shutdown()
    missing_key = cassandra_config(cassandra_env, tls={
        "ca_file": cassandra_env["CASSANDRA_CA_FILE"],
        "client_cert_file": str(certs["client_cert"]),
        "client_key_file": str(certs["ca"])})  # not the certificate's key
    with pytest.raises(ConfigError, match=r"cassandra\.tls\.client_cert_file/client_key_file"):
        connect(missing_key)


# --- admin commands change only what was asked; one retention; names; exact values ---------

def replication_of(cassandra_env: dict[str, str], ks: str) -> dict[str, str]:
    cluster, session = connect(cassandra_config(cassandra_env))
    try:
        [row] = session.execute("SELECT replication FROM system_schema.keyspaces "
                                "WHERE keyspace_name = %s", (ks,))
        return {k: v for k, v in row.replication.items() if k != "class"}
    finally:
        cluster.shutdown()


def test_schema_update_never_lowers_replication_unasked(cassandra_env: dict[str, str],
                                                       tmp_path: Path) -> None:
    """An RF 3 keyspace on the single test node: read and written at ONE (set in the file,
    which says nothing of ttl_days or replication); the rest are vCD-style options."""
    ks = keyspace()
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({
        "vcenters": [{"name": "vc", "url": "https://vc.example",
                      "credentials": {"username": "u", "password": "p"}}],
        "cassandra": {"hosts": [cassandra_env["CASSANDRA_HOSTS"]], "consistency": "ONE",
                      "credentials": {"username": cassandra_env["CASSANDRA_USERNAME"],
                                      "password_env": "CASSANDRA_PASSWORD"}}}))

    def schema_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return cli("schema", *args, "-c", str(path), "--keyspace", ks, env=cassandra_env)

    created = schema_cli("create", "--replication-factor", "3")
    assert created.returncode == 0, created.stderr
    try:
        ttl_only = schema_cli("update", "--ttl", "7")
        assert ttl_only.returncode == 0, ttl_only.stderr
        assert f"schema: {ks}: samples TTL 14 -> 7 days" in ttl_only.stdout
        assert replication_of(cassandra_env, ks) == {"replication_factor": "3"}

        lower = schema_cli("update", "--replication-factor", "1")
        assert lower.returncode == 2 and "Traceback" not in lower.stderr
        assert lower.stderr.strip() == (
            "statsfeeder: schema update: replication SimpleStrategy RF 3 -> SimpleStrategy RF 1 "
            "lowers the copies of every sample (a node loss can then lose data); refused "
            "without --allow-lower-replication")
        assert replication_of(cassandra_env, ks) == {"replication_factor": "3"}

        allowed = schema_cli("update", "--replication-factor", "1", "--allow-lower-replication")
        assert allowed.returncode == 0, allowed.stderr
        assert "LOWERED" in allowed.stdout and "nodetool cleanup" in allowed.stdout
        assert replication_of(cassandra_env, ks) == {"replication_factor": "1"}

        raised = schema_cli("update", "--replication-factor", "2")
        assert raised.returncode == 0 and "nodetool repair -full" in raised.stdout
        assert replication_of(cassandra_env, ks) == {"replication_factor": "2"}
        nothing = schema_cli("update")
        assert nothing.returncode == 0 and "nothing to change" in nothing.stdout
        assert replication_of(cassandra_env, ks) == {"replication_factor": "2"}
    finally:
        cluster, session = connect(cassandra_config(cassandra_env))
        drop_keyspace(session, ks)
        cluster.shutdown()


async def test_writes_follow_the_tables_retention_and_a_mismatch_is_said(
        cassandra_env: dict[str, str], caplog: pytest.LogCaptureFixture) -> None:
    ks = keyspace()
    assert cli("schema", "create", "--keyspace", ks, "--ttl", "2",
               env=cassandra_env).returncode == 0
    assert cli("schema", "update", "--keyspace", ks, "--ttl", "7",
               env=cassandra_env).returncode == 0
    sink = CassandraSink(cassandra_config(cassandra_env, keyspace=ks, ttl_days=2))
    with caplog.at_level("WARNING"):
        sink.open()
    try:
        [warning] = [r.getMessage() for r in caplog.records if "retention" in r.getMessage()]
        assert "ttl_days 2" in warning and "keeps rows 7 days" in warning
        vm = f"urn:vcloud:vm:{uuid.uuid4()}"
        await sink.write([series(vm, CPU, [NOW - 300 + 20 * i for i in range(1, 16)],
                                 list(range(15)))])
        [row] = sink.session.execute(f"SELECT ttl(data) AS ttl FROM {ks}.samples")
        assert 7 * 86400 - 120 < row.ttl <= 7 * 86400  # the table's, not the config's 2 days
    finally:
        drop_keyspace(sink.session, ks)
        sink.close()


def test_certificate_checked_against_the_configured_name(
        cassandra_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The test certificate names IP:127.0.0.1 and DNS:localhost. ``cassandra.example`` is
    made to resolve to 127.0.0.1 in this process (an /etc/hosts entry would do the same):
    resolving it to an address the certificate holds must not be enough."""
    import socket

    real = socket.getaddrinfo

    def resolve(host: str, *args: object, **kwargs: object) -> object:
        return real("127.0.0.1" if host == "cassandra.example" else host, *args, **kwargs)

    by_name = cassandra_config(cassandra_env, hosts=["localhost"], connect_timeout_seconds=5)
    cluster, session = connect(by_name)
    try:
        [host] = cluster.metadata.all_hosts()
        assert host.endpoint.ssl_options == {"server_hostname": "localhost"}
        assert list(session.execute("SELECT release_version FROM system.local"))
    finally:
        cluster.shutdown()
    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    other = cassandra_config(cassandra_env, hosts=["cassandra.example"],
                             connect_timeout_seconds=5)
    with pytest.raises(SinkUnavailable) as info:
        connect(other)
    assert str(info.value) == (
        f"cassandra: TLS verification failed at cassandra.example:{cassandra_env['CASSANDRA_PORT']}"
        ": the certificate is not issued for the host name or address configured "
        "(cassandra.hosts; tls.check_hostname)")


async def test_query_prints_every_value_exactly(sink: CassandraSink,
                                                cassandra_env: dict[str, str]) -> None:
    kb = Counter("mem.consumed.average", 98, "kiloBytes")
    vm = f"urn:vcloud:vm:{uuid.uuid4()}"
    stamps = [NOW - 300 + 20 * i for i in range(1, 4)]
    await sink.write([series(vm, kb, stamps, [16777216, 123456789012, 7]),
                      series(vm, CPU, stamps, [332, 4980, 10000])])
    sink.record_counters([kb, CPU])
    since = f"{(int(time.time()) - NOW) // 86400 + 2}d"

    def query(form: str) -> str:
        done = cli("query", "--keyspace", sink.config.keyspace, "--vm", vm, "--metric", kb.name,
                   "--metric", CPU.name, "--since", since, "--format", form, env=cassandra_env)
        assert done.returncode == 0, done.stderr
        return done.stdout

    csv_values = [line.split(",")[3] for line in query("csv").splitlines()[1:]]
    assert csv_values == ["3.32", "49.8", "100.0", "16777216", "123456789012", "7"]
    assert [row["value"] for row in json.loads(query("json"))] == [
        3.32, 49.8, 100.0, 16777216, 123456789012, 7]
    assert "\"value\": 3.32," in query("json") and "16777216 kiloBytes" in query("table")
