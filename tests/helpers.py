"""Builds configuration for tests from the peers' KEY=VALUE facts."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import httpx

from statsfeeder.config import CassandraConfig, CollectionConfig, VCenterConfig, parse_config

if TYPE_CHECKING:
    from statsfeeder.model import Counter
    from statsfeeder.sinks.cassandra.sink import CassandraSink


def vcenter_config(env: dict[str, str], name: str = "vc1", **extra: Any) -> VCenterConfig:
    raw = {"name": name, "url": env["VCSIM_URL"],
           "credentials": {"username": env["VCSIM_USERNAME"], "password": env["VCSIM_PASSWORD"]},
           "tls": {"ca_file": env["VCSIM_CA_FILE"]}, **extra}
    return VCenterConfig.model_validate(raw)


def collection_config(**extra: Any) -> CollectionConfig:
    return CollectionConfig.model_validate(extra)


def cassandra_config(env: dict[str, str], **extra: Any) -> CassandraConfig:
    raw = {"hosts": env["CASSANDRA_HOSTS"].split(","), "port": int(env["CASSANDRA_PORT"]),
           "credentials": {"username": env["CASSANDRA_USERNAME"],
                           "password": env["CASSANDRA_PASSWORD"]},
           "tls": {"ca_file": env["CASSANDRA_CA_FILE"]}, "consistency": "ONE", **extra}
    vc = {"name": "x", "url": "https://x", "credentials": {"username": "x", "password": "x"}}
    return parse_config({"vcenters": [vc], "cassandra": raw}, environ={}).cassandra


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def metric(port: int, name: str) -> float | None:
    """One sample of the service's /metrics: ``name`` with or without its labels."""
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except httpx.HTTPError:
        return None
    for line in text.splitlines():
        if line.startswith(name) and line[len(name):len(name) + 1] in (" ", "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def open_new_keyspace(config: CassandraConfig,
                      counters: Sequence[Counter] = ()) -> CassandraSink:
    """The schema created in ``config.keyspace`` and a sink open on it, with ``counters``
    recorded (what tests and benchmarks that write straight through the sink start from)."""
    from statsfeeder.sinks.cassandra import schema
    from statsfeeder.sinks.cassandra.session import connect
    from statsfeeder.sinks.cassandra.sink import CassandraSink

    cluster, session = connect(config)
    schema.create(session, config)
    cluster.shutdown()
    sink = CassandraSink(config)
    sink.open()
    if counters:
        sink.record_counters(counters)
    return sink


def drop_keyspace(session: Any, keyspace: str) -> None:
    """Clean-up after a test. Schema changes wait for every node to agree, and a node that a
    test has just restarted can take longer than a request's timeout to answer: retry."""
    for attempt in range(5):
        try:
            session.execute(f"DROP KEYSPACE IF EXISTS {keyspace}", timeout=60)
            return
        except Exception:
            if attempt == 4:
                raise
            time.sleep(3)


def create_login_role(admin: Any, env: dict[str, str], keyspace: str,
                      permissions: Sequence[str]) -> tuple[str, str, CassandraConfig]:
    """A role of the test's own with ``permissions`` on ``keyspace``: its name, password and
    a config that logs in with it (the test can then refuse and allow that login)."""
    role, password = f"sf_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    admin.execute(f"CREATE ROLE {role} WITH PASSWORD = '{password}' AND LOGIN = true")
    for permission in permissions:
        admin.execute(f"GRANT {permission} ON KEYSPACE {keyspace} TO {role}")
    config = cassandra_config(env, keyspace=keyspace, request_timeout_seconds=4,
                              credentials={"username": role, "password": password})
    return role, password, config


def login_refused(config: CassandraConfig) -> bool:
    """Whether a fresh connection with ``config`` is refused at login now."""
    from statsfeeder.errors import SinkUnavailable
    from statsfeeder.sinks.cassandra.session import connect

    try:
        connect(config)[0].shutdown()
    except SinkUnavailable as exc:
        return "authentication failed" in str(exc)
    return False


def nodetool(env: dict[str, str], command: str) -> None:
    """``nodetool COMMAND`` on the single test node (disablebinary drops every client)."""
    from peers import cassandra as cassandra_peer

    short = ".".join(env["CASSANDRA_VERSION"].split(".")[:2])
    cassandra_peer.nodetool([command], 0, version=short, nodes=1)
