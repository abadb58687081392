"""The Cassandra driver's reconnection schedule: it must outlast any outage; and where it
does not (a refused login), the sink's probe connects afresh."""

from __future__ import annotations

import itertools
import socket
from typing import Any

import pytest
from cassandra.cluster import NoHostAvailable

from statsfeeder.config import CassandraConfig
from statsfeeder.errors import SinkUnavailable
from statsfeeder.sinks.cassandra.session import reconnection_policy
from tests.helpers import cassandra_config


def test_reconnection_never_gives_up() -> None:
    """An outage of hours (vCenter keeps one; the service must write again when Cassandra
    is back): the schedule goes on past the driver's default of 64 attempts, at most 10 s
    apart."""
    delays = list(itertools.islice(reconnection_policy().new_schedule(), 1000))
    assert len(delays) == 1000
    assert 0.5 <= delays[0] <= 0.6  # the driver adds up to 15 % of jitter
    assert max(delays) <= 10
    assert sum(delays) > 2 * 3600


def test_a_probe_connects_afresh_only_when_a_node_accepts_tcp(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The driver's session fails (its reconnection may have given up on a refused login):
    while no configured node accepts TCP no cluster is built; once one does, the probe tries
    a fresh connection and says why that failed, in one line."""
    from statsfeeder.sinks.cassandra import sink as sink_module

    attempts: list[str] = []

    def refused(config: CassandraConfig) -> Any:
        attempts.append(config.hosts[0])
        raise SinkUnavailable("cassandra: authentication failed for user 'sf' at somewhere")

    class DeadSession:
        def execute(self, *_: Any) -> None:
            raise NoHostAvailable("Unable to complete the operation against any hosts", {})

    monkeypatch.setattr(sink_module, "connect", refused)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        env = {"CASSANDRA_HOSTS": "127.0.0.1", "CASSANDRA_PORT": str(port),
               "CASSANDRA_CA_FILE": "/nonexistent", "CASSANDRA_USERNAME": "sf",
               "CASSANDRA_PASSWORD": "secret"}
        sink = sink_module.CassandraSink(cassandra_config(env, connect_timeout_seconds=1,
                                                          tls={"enabled": False}))
        sink._session = DeadSession()
        with pytest.raises(SinkUnavailable, match="still unreachable: NoHostAvailable"):
            sink.probe()  # bound, not listening: refused
        assert attempts == []
        listener.listen()
        with pytest.raises(SinkUnavailable) as failed:
            sink.probe()
    assert attempts == ["127.0.0.1"]
    assert str(failed.value) == ("cassandra: a fresh connection failed: authentication "
                                 "failed for user 'sf' at somewhere")
