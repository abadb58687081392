"""Asynchronous writes of sample windows: prepared statements, unlogged batches only within one
partition, bounded in-flight requests (callers wait: that is the backpressure), and retries
with backoff on timeouts and unavailable replicas. ``write`` returns only when Cassandra has
acknowledged every row, so the pipeline can advance its watermarks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from cassandra import OperationTimedOut, ReadTimeout, Unavailable, WriteTimeout
from cassandra.cluster import NoHostAvailable

from statsfeeder.config import CassandraConfig
from statsfeeder.errors import BatchRejected, SinkUnavailable, SinkUnreachable
from statsfeeder.model import Series, WriteResult
from statsfeeder.sinks.cassandra.batches import partition_batches
from statsfeeder.sinks.cassandra.encoder import encode_window, windows
from statsfeeder.sinks.cassandra.series_index import IndexWriter, entries
from statsfeeder.sinks.cassandra.write_stamps import StampWriter

log = logging.getLogger(__name__)

ROWS_PER_BATCH = 32
"""Keeps a batch well under Cassandra's batch_size_warn_threshold (5 KiB) for packed rows."""

RETRIABLE = (OperationTimedOut, WriteTimeout, ReadTimeout, Unavailable, NoHostAvailable)




def vm_key(series: Series) -> str:
    if series.entity is None:
        raise ValueError(f"series of {series.vcenter}/{series.moref} has no entity id")
    return series.entity.vm


class CassandraWriter:
    def __init__(self, session: Any, config: CassandraConfig) -> None:
        self._session = session
        self._config = config
        # No USING TTL: rows take the table's default_time_to_live, the one retention that
        # `schema update --ttl` changes (for running services too).
        self._insert = session.prepare(
            f"INSERT INTO {config.keyspace}.samples "
            "(vm_id, day, metric, instance, window_start, data) VALUES (?, ?, ?, ?, ?, ?)")
        self._slots = asyncio.Semaphore(config.max_in_flight)
        self.in_flight = 0
        self._index = IndexWriter(session, config.keyspace)
        self._stamp = StampWriter(session, config.keyspace)

    def rows(self, series: Iterable[Series]) -> dict[tuple[str, int], list[tuple[Any, ...]]]:
        """Encode series into rows grouped by partition (VM, day)."""
        partitions: dict[tuple[str, int], list[tuple[Any, ...]]] = defaultdict(list)
        for item in series:
            vm = vm_key(item)
            metric, instance = item.counter.name, item.instance
            for start, stamps, values in windows(item):
                day = start // 86400
                partitions[(vm, day)].append(
                    (vm, day, metric, instance, start * 1000,
                     encode_window(start, stamps, values)))
        return partitions

    async def write(self, series: list[Series]) -> WriteResult:
        partitions = self.rows(series)
        # The index entries first: a window Cassandra holds is always findable by the read API.
        new = self._index.news(entries(partitions))
        if new:
            await asyncio.gather(*(self.execute(s) for s in self._index.statements(new)))
            self._index.remember(new)
        row_count = sum(len(rows) for rows in partitions.values())
        statements = partition_batches(self._insert, partitions.values(), ROWS_PER_BATCH)
        # The stamp moves after every write that may have stored a window (write_stamps.py):
        # readers keep the newest hours in memory only until it does.
        try:
            await asyncio.gather(*(self.execute(statement) for statement in statements))
        except BaseException:
            with contextlib.suppress(Exception):  # the write's own error is the one to say
                await self.execute(self._stamp.statement())
            raise
        if statements:
            await self.execute(self._stamp.statement())
        return WriteResult(row_count, sum(len(s) for s in series), len(statements))

    async def execute(self, statement: Any, parameters: Any = None) -> None:
        """One request through the in-flight bound, with retries; errors as SinkError."""
        if parameters is not None:
            statement = statement.bind(parameters)
        async with self._slots:
            self.in_flight += 1
            try:
                await self._execute_with_retries(statement)
            finally:
                self.in_flight -= 1

    async def _execute_with_retries(self, statement: Any) -> None:
        delay = 0.2
        for attempt in range(self._config.write_retries + 1):
            try:
                await _wait(self._session.execute_async(statement))
                return
            except RETRIABLE as exc:
                if attempt == self._config.write_retries:
                    failure = SinkUnreachable if isinstance(exc, NoHostAvailable) else \
                        SinkUnavailable
                    raise failure(f"cassandra: write failed after {attempt + 1} "
                                          f"attempts: {exc.__class__.__name__}: {exc}") from None
                log.debug("cassandra: retrying a write after %s", exc.__class__.__name__)
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 10.0)
            except Exception as exc:  # a server-side refusal of this data
                raise BatchRejected(f"cassandra: write refused: {exc}") from None


def _wait(response_future: Any) -> asyncio.Future[Any]:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def done(result: Any) -> None:
        if not future.done():
            future.set_result(result)

    def failed(exc: BaseException) -> None:
        if not future.done():
            future.set_exception(exc)

    response_future.add_callbacks(
        lambda result: loop.call_soon_threadsafe(done, result),
        lambda exc: loop.call_soon_threadsafe(failed, exc))
    return future
