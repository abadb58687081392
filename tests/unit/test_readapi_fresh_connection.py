"""The read API's fresh connection to Cassandra, without Cassandra: only a read that found no
node starts one, at most every FRESH_CONNECTION_SECONDS, only while a node accepts TCP; the
next requests get the new store and the old cluster is shut down."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from cassandra.cluster import NoHostAvailable

from statsfeeder.config import CassandraConfig
from statsfeeder.errors import SinkUnavailable
from statsfeeder.readapi import connection as connection_module
from statsfeeder.readapi.connection import (
    FRESH_CONNECTION_SECONDS,
    OpenedStore,
    StoreConnection,
)
from tests.helpers import cassandra_config


class Cluster:
    def __init__(self) -> None:
        self.shut = False

    def shutdown(self) -> None:
        self.shut = True


class DeadSession:
    def execute(self, *_: Any) -> None:
        raise NoHostAvailable("Unable to complete the operation against any hosts", {})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Opener:
    """Stands for ``open_store``: the start's connection, then one outcome per fresh
    connection; ``afresh`` records the roll-ups argument of each fresh one."""

    def __init__(self, start: OpenedStore, *fresh: OpenedStore | Exception) -> None:
        self.start: OpenedStore | None = start
        self.fresh = list(fresh)
        self.afresh: list[bool] = []

    def __call__(self, rollups: bool) -> OpenedStore:
        if self.start is not None:
            start, self.start = self.start, None
            return start
        self.afresh.append(rollups)
        outcome = self.fresh.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def cassandra(port: int) -> CassandraConfig:
    env = {"CASSANDRA_HOSTS": "127.0.0.1", "CASSANDRA_PORT": str(port),
           "CASSANDRA_CA_FILE": "/nonexistent", "CASSANDRA_USERNAME": "sf",
           "CASSANDRA_PASSWORD": "secret"}
    return cassandra_config(env, connect_timeout_seconds=1, tls={"enabled": False})


async def fail(connection: StoreConnection, exc: BaseException) -> str:
    line = connection.failed(exc, "series")
    await connection.attempt_finished()
    return line


async def test_a_read_that_found_no_node_connects_afresh_while_a_node_accepts_tcp(
        caplog: pytest.LogCaptureFixture) -> None:
    old = Cluster()
    new_store = object()
    # The start's session is one whose driver gave up.
    opener = Opener(
        OpenedStore(old, DeadSession(), object(), None, 86400),  # type: ignore[arg-type]
        SinkUnavailable("cassandra: authentication failed for user 'sf' at x:9042"),
        OpenedStore(Cluster(), DeadSession(), new_store, None, 3600))  # type: ignore[arg-type]
    opened = opener.afresh
    clock = Clock()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        connection = StoreConnection(cassandra(listener.getsockname()[1]), opener, clock)
        await connection.open(False)
        no_host = NoHostAvailable("Unable to complete the operation against any hosts", {})
        # Bound, not listening: every node simply down, no cluster built.
        assert await fail(connection, no_host) == (
            "cassandra: NoHostAvailable: ('Unable to complete the operation against any "
            "hosts', {})")
        assert opened == []
        listener.listen()
        clock.now += FRESH_CONNECTION_SECONDS / 2
        await fail(connection, no_host)  # within FRESH_CONNECTION_SECONDS of the last attempt
        assert opened == []
        clock.now += FRESH_CONNECTION_SECONDS / 2  # the bound reached
        await fail(connection, TimeoutError("a slow node"))  # not a lost session
        assert opened == []
        await fail(connection, no_host)  # the login is still refused
        assert opened == [False] and connection.store is not new_store and not old.shut
        clock.now += FRESH_CONNECTION_SECONDS
        try:  # the driver's error under another one
            raise RuntimeError("wrapped") from no_host
        except RuntimeError as wrapped:
            await fail(connection, wrapped)
    assert opened == [False, False]
    assert connection.store is new_store and connection.retention_seconds == 3600 and old.shut
    messages = [r.getMessage() for r in caplog.records if r.name == connection_module.__name__]
    assert messages == [
        "read API: a fresh connection to Cassandra failed: authentication failed for user "
        "'sf' at x:9042",
        "read API: connected to Cassandra afresh (the driver's own reconnection had not "
        "brought a node back)"]
    assert not any("secret" in message for message in messages)
