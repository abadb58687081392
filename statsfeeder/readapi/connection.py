"""The read API's connection to Cassandra: the cluster, the ``SeriesStore`` and roll-up
select built on its session, and the retention read from the schema; replaced by a fresh one
when reads find no node.

The driver reconnects a lost node by itself, except once a reconnection attempt was refused
at login (cassandra-driver 3.30, ``pool.py`` ``_HostReconnectionHandler.on_exception``): it
then stops for good, silently, e.g. after a node restarted before system_auth answered or a
login was disabled for a while. The session would find no node (``NoHostAvailable``) until
the process restarts, so a read that finds none has this module connect afresh, at most every
``FRESH_CONNECTION_SECONDS`` and only while a configured node accepts TCP, and the next
requests read through the new session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cassandra.cluster import NoHostAvailable

from statsfeeder.config import CassandraConfig, ReadApiConfig
from statsfeeder.readapi.rollup_select import RollupSelect, tables_present
from statsfeeder.readapi.settled import settled_cache
from statsfeeder.readapi.store import SeriesStore, failure_line
from statsfeeder.sinks.cassandra import schema
from statsfeeder.sinks.cassandra.session import accepts_tcp, connect, connection_failure
from statsfeeder.telemetry import ReadApiMetrics

log = logging.getLogger(__name__)

FRESH_CONNECTION_SECONDS = 5.0
"""Fewest seconds between two attempts to connect to Cassandra afresh."""


@dataclass(frozen=True)
class OpenedStore:
    """A cluster and what the read API built on its session."""

    cluster: Any
    session: Any
    store: SeriesStore
    rollups: RollupSelect | None
    retention_seconds: int


StoreOpener = Callable[[bool], OpenedStore]
"""Blocking: opens an ``OpenedStore``, with the roll-up select if the argument is true."""


def open_store(cassandra: CassandraConfig, config: ReadApiConfig, metrics: ReadApiMetrics,
               rollups: bool) -> OpenedStore:
    """Blocking: a new cluster, the schema checked, and the store (with the roll-up select if
    ``rollups`` and their tables exist) on its session."""
    cluster, session = connect(cassandra)
    try:
        state = schema.check(session, cassandra.keyspace)
        # The table's own TTL is the retention (the config's ttl_days only creates it).
        retention = state.ttl_seconds or cassandra.ttl_days * 86400
        store = SeriesStore(session, cassandra.keyspace,
                            retention_seconds=retention,
                            max_series=config.max_series,
                            concurrency=config.read_concurrency,
                            cache_seconds=config.entities_cache_seconds,
                            settled=settled_cache(config, metrics))
        select = None
        if rollups and tables_present(session, cassandra.keyspace):
            select = RollupSelect(
                store, session, cassandra.keyspace,
                fresh_seconds=config.rollups_fresh_hours * 3600,
                scan_hours=cassandra.rollups.scan_hours,
                concurrency=config.read_concurrency)
    except BaseException:
        cluster.shutdown()
        raise
    return OpenedStore(cluster, session, store, select, retention)


class StoreConnection:
    """What the read API reads through: ``open`` at start, ``failed`` for every read that
    failed (it may connect afresh), ``close`` at stop. Used from the event loop's thread."""

    def __init__(self, cassandra: CassandraConfig, opener: StoreOpener,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._cassandra = cassandra
        self._opener = opener
        self._clock = clock
        self._cluster: Any = None  # None while not open: nothing to connect afresh for
        self._session: Any = None
        self._store: SeriesStore | None = None
        self._rollups: RollupSelect | None = None
        self._retention = cassandra.ttl_days * 86400
        self._attempt: asyncio.Task[None] | None = None
        self._attempt_at = -math.inf

    @property
    def store(self) -> SeriesStore | None:
        return self._store

    @property
    def rollups(self) -> RollupSelect | None:
        return self._rollups

    @property
    def retention_seconds(self) -> int:
        return self._retention

    async def open(self, rollups: bool) -> None:
        self._use(await asyncio.to_thread(self._opener, rollups))

    def _use(self, opened: OpenedStore) -> None:
        """The next requests read through ``opened`` (those under way keep theirs)."""
        self._cluster, self._session = opened.cluster, opened.session
        self._store, self._rollups = opened.store, opened.rollups
        self._retention = opened.retention_seconds

    def failed(self, exc: BaseException, reading: str) -> str:
        """A read's failure as one line for the caller; one that found no Cassandra node
        has a fresh connection attempted soon."""
        line = failure_line(exc, reading)
        if _no_host(exc) and self._attempt is None and self._cluster is not None and \
                self._clock() - self._attempt_at >= FRESH_CONNECTION_SECONDS:
            self._attempt_at = self._clock()
            self._attempt = asyncio.get_running_loop().create_task(self._connect_afresh())
        return line

    async def attempt_finished(self) -> None:
        """Returns once a fresh connection under way (if any) is in use or given up."""
        if self._attempt is not None:
            await self._attempt

    async def _connect_afresh(self) -> None:
        """In place of a session that found no node, only when it still fails and a
        configured node accepts TCP (no cluster built while every node is simply down), as
        the Cassandra sink's probe does."""
        session = self._session
        rollups = self._rollups is not None

        def attempt() -> OpenedStore | None:
            try:
                session.execute("SELECT release_version FROM system.local")
                return None  # the driver brought a node back meanwhile
            except Exception:
                pass
            if not accepts_tcp(self._cassandra):
                return None
            try:
                return self._opener(rollups)
            except Exception as exc:
                log.warning("read API: a fresh connection to Cassandra failed: %s",
                            connection_failure(exc))
            return None

        try:
            fresh = await asyncio.to_thread(attempt)
            if fresh is None:
                return
            old = self._cluster
            self._use(fresh)
            log.warning("read API: connected to Cassandra afresh (the driver's own "
                        "reconnection had not brought a node back)")
            # Requests still reading through the old session fail once at most.
            with contextlib.suppress(Exception):
                await asyncio.to_thread(old.shutdown)
        finally:
            self._attempt = None

    async def close(self) -> None:
        """Shuts the cluster down, also one a fresh connection under way opens."""
        with contextlib.suppress(Exception):
            await self.attempt_finished()
        if self._cluster is not None:
            await asyncio.to_thread(self._cluster.shutdown)
            self._cluster = self._session = None


def _no_host(exc: BaseException | None) -> bool:
    """Whether the driver found no node to ask, also under another error."""
    for _ in range(8):  # a chain is short; a cycle is possible
        if exc is None or isinstance(exc, NoHostAvailable):
            break
        exc = exc.__cause__ or exc.__context__
    return isinstance(exc, NoHostAvailable)
