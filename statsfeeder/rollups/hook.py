"""What the service wires in: the marks hook for every pipeline and the worker task, both on
the Cassandra sink's session (opened later than the service is built)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from statsfeeder.config import CassandraConfig
from statsfeeder.errors import SinkUnavailable
from statsfeeder.model import Series
from statsfeeder.rollups.marks import RollupMarks
from statsfeeder.rollups.store import RollupStore
from statsfeeder.rollups.worker import PassReport, RollupWorker
from statsfeeder.sinks.cassandra.session import one_line


class Rollups:
    def __init__(self, sink: Any, config: CassandraConfig, telemetry: Any,
                 clock: Callable[[], float] = time.time) -> None:
        self.sink = sink
        self.config = config
        self.telemetry = telemetry
        self._store: RollupStore | None = None
        self.clock = clock
        self._marks = RollupMarks(self.store, config.rollups.settle_seconds, sink.name, clock)

    def store(self) -> RollupStore:
        """On the sink's current session: the sink replaces it when it connects afresh after
        an outage, and the store (the worker's too) follows at its next use."""
        if self._store is None:
            self._store = RollupStore(self.sink.session, self.config,
                                      getattr(self.sink, "execute", None))
        else:
            self._store.use(self.sink.session)
        return self._store

    async def mark(self, sink: str, series: list[Series]) -> None:
        """The pipelines' after_store hook."""
        try:
            await self._marks(sink, series)
        except Exception as exc:
            if type(exc).__module__.split(".")[0] != "cassandra":
                raise
            self.telemetry.rollup_errors.labels("marks").inc()
            raise SinkUnavailable(f"cassandra: roll-up marks: {one_line(exc)}") from None

    def worker(self, idle: Callable[[], bool] = lambda: True) -> RollupWorker:
        return RollupWorker(self.store(), self.config.rollups, self.telemetry, idle,
                            self.clock)

    async def run(self, stopping: asyncio.Event, idle: Callable[[], bool]) -> None:
        """The service's task; ``idle`` is false while a cycle runs or Cassandra is missing
        (the store needs its session)."""
        while not stopping.is_set() and not idle():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), 5)
        if not stopping.is_set():
            worker = await asyncio.to_thread(self.worker, idle)  # prepares: off the loop
            await worker.run(stopping)

    async def run_pass(self) -> PassReport:
        return await self.worker().run_pass()

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


async def rebuild(config: CassandraConfig, since: int, until: int) -> PassReport:
    """``statsfeeder rollups rebuild``: every VM of the entities table, every hour of
    [since, until), from the raw rows; each VM where the entities table puts it now."""
    from statsfeeder.rollups.compute import Placement
    from statsfeeder.sinks.cassandra.sink import CassandraSink

    sink = CassandraSink(config)
    await asyncio.to_thread(sink.open)
    rollups = Rollups(sink, config, None)
    try:
        vms = {row.vm_id: Placement(row.org or "", row.vdc or "", row.vapp or "")
               for row in await asyncio.to_thread(sink.list_entities)}
        return await rollups.worker().rebuild(vms, since // 3600, -(-until // 3600))
    finally:
        rollups.close()
        sink.close()
