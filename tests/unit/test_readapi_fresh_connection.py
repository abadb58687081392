"""The read API's fresh connection to Cassandra, without Cassandra: only a read that found no
node starts one, at most every FRESH_CONNECTION_SECONDS, only while a node accepts TCP; the
next requests get the new store and the old cluster is shut down."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from cassandra.cluster import NoHostAvailable

from statsfeeder.config import ReadApiConfig
from statsfeeder.errors import SinkUnavailable
from statsfeeder.readapi import server as server_module
from statsfeeder.readapi.server import Connection, ReadApi, provider_wide
from tests.helpers import cassandra_config


class Cluster:
    def __init__(self) -> None:
        self.shut = False

    def shutdown(self) -> None:
        self.shut = True


class DeadSession:
    def execute(self, *_: Any) -> None:
        raise NoHostAvailable("Unable to complete the operation against any hosts", {})


def read_api(port: int) -> ReadApi:
    env = {"CASSANDRA_HOSTS": "127.0.0.1", "CASSANDRA_PORT": str(port),
           "CASSANDRA_CA_FILE": "/nonexistent", "CASSANDRA_USERNAME": "sf",
           "CASSANDRA_PASSWORD": "secret"}
    config = ReadApiConfig.model_validate({"enabled": True, "listen": "127.0.0.1:0"},
                                          context={"environ": {}})
    return ReadApi(config, cassandra_config(env, connect_timeout_seconds=1,
                                            tls={"enabled": False}), provider_wide)


def lost(api: ReadApi) -> Cluster:
    """The API as after start, on a session whose driver gave up."""
    old = Cluster()
    api._use(Connection(old, DeadSession(), object(), None, 86400))  # type: ignore[arg-type]
    return old


async def fail(api: ReadApi, exc: BaseException) -> str:
    line = api._store_failed(exc, "series")
    if api._fresh is not None:
        await api._fresh
    return line


async def test_a_read_that_found_no_node_connects_afresh_while_a_node_accepts_tcp(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    opened: list[bool] = []
    new_store = object()

    def open_store(rollups: bool) -> Connection:
        opened.append(rollups)
        if len(opened) == 1:
            raise SinkUnavailable("cassandra: authentication failed for user 'sf' at x:9042")
        return Connection(Cluster(), DeadSession(), new_store, None, 3600)  # type: ignore[arg-type]

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        api = read_api(listener.getsockname()[1])
        monkeypatch.setattr(api, "_open_store", open_store)
        old = lost(api)
        no_host = NoHostAvailable("Unable to complete the operation against any hosts", {})
        # Bound, not listening: every node simply down, no cluster built.
        assert await fail(api, no_host) == (
            "cassandra: NoHostAvailable: ('Unable to complete the operation against any "
            "hosts', {})")
        assert opened == []
        listener.listen()
        await fail(api, no_host)  # within FRESH_CONNECTION_SECONDS of the last attempt
        assert opened == []
        api._fresh_at = -1e18
        await fail(api, TimeoutError("a slow node"))  # not a lost session
        assert opened == []
        await fail(api, no_host)  # the login is still refused
        assert opened == [False] and api.store is not new_store and not old.shut
        api._fresh_at = -1e18
        try:  # the driver's error under another one
            raise RuntimeError("wrapped") from no_host
        except RuntimeError as wrapped:
            await fail(api, wrapped)
    assert opened == [False, False]
    assert api.store is new_store and api._retention == 3600 and old.shut
    messages = [r.getMessage() for r in caplog.records if r.name == server_module.__name__]
    assert messages == [
        "read API: a fresh connection to Cassandra failed: authentication failed for user "
        "'sf' at x:9042",
        "read API: connected to Cassandra afresh (the driver's own reconnection had not "
        "brought a node back)"]
    assert not any("secret" in message for message in messages)
