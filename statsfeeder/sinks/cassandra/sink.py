"""The Cassandra sink: connects, checks the schema, records metric units, writes chunks, and
keeps the per-VM watermarks (the last sample every sink acknowledged) in the same keyspace."""

from __future__ import annotations

import asyncio
import calendar
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

from cassandra.query import BatchStatement, BatchType

from statsfeeder.config import CassandraConfig
from statsfeeder.errors import SinkUnavailable
from statsfeeder.model import Counter, Series, VirtualMachine, WriteResult
from statsfeeder.sinks.cassandra import schema, series_index
from statsfeeder.sinks.cassandra.session import (
    accepts_tcp,
    connect,
    connection_failure,
    one_line,
)
from statsfeeder.sinks.cassandra.writer import CassandraWriter

log = logging.getLogger(__name__)

WATERMARK_ROWS_PER_BATCH = 100


class CassandraSink:
    name = "cassandra"

    def __init__(self, config: CassandraConfig) -> None:
        self.config = config
        self._cluster: Any = None
        self._session: Any = None
        self._writer: CassandraWriter | None = None

    def open(self) -> None:
        """Blocking: connect and verify the schema (call from a worker thread)."""
        self._cluster, session = connect(self.config)
        self._use(session)

    def _use(self, session: Any) -> None:
        """Check the schema on ``session`` and prepare the sink's statements there; from then
        on the sink writes through it. If this raises, the sink is left as it was."""
        mismatch = schema.retention_mismatch(schema.check(session, self.config.keyspace),
                                             self.config)
        if mismatch:
            log.warning("%s", mismatch)
        ks = self.config.keyspace
        session.set_keyspace(ks)
        self._mark_index(session)
        writer = CassandraWriter(session, self.config)
        entity_insert = session.prepare(
            f"INSERT INTO {ks}.entities (vm_id, name, vapp, vdc, org, vcenter, moref, updated) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, toTimestamp(now()))")
        watermark_insert = session.prepare(
            f"INSERT INTO {ks}.watermarks (vcenter, sink, moref, last_sample) "
            "VALUES (?, ?, ?, ?)")
        self._session, self._writer = session, writer
        self._entity_insert, self._watermark_insert = entity_insert, watermark_insert

    def probe(self) -> None:
        """Blocking: does a sink that became unreachable answer again? First on the session it
        has (the driver reconnects it itself), so an outage does not build clusters anew.

        The driver's per-host reconnection stops for good, without a word, at the first
        attempt that fails with AuthenticationFailed (cassandra-driver 3.30, ``pool.py``
        ``_HostReconnectionHandler.on_exception``): a node restarting before system_auth
        answers, a login disabled or a password changed for a while. That session never gets
        a host back, so when it fails while a configured node accepts TCP connections, the
        sink connects afresh and swaps the new session in. Only then: while every node is
        simply down (refused, unreachable) a fresh cluster could not connect either, so those
        probes stay as cheap as before (no cluster built per attempt)."""
        if self._session is None:
            self.open()
            return
        try:
            self._session.execute("SELECT release_version FROM system.local")
            return
        except Exception as exc:  # the driver's own errors: still down, or given up
            failure = f"cassandra: still unreachable: {type(exc).__name__}: {exc}"
        if not accepts_tcp(self.config):
            raise SinkUnavailable(failure)
        self._reconnect()

    def _reconnect(self) -> None:
        """A new cluster and session in place of the current ones (whose writer, prepared
        statements and index state go with them); the old cluster is shut down."""
        try:
            cluster, session = connect(self.config)
        except Exception as exc:
            raise SinkUnavailable("cassandra: a fresh connection failed: "
                                  f"{connection_failure(exc)}") from None
        try:
            self._use(session)
        except Exception as exc:
            cluster.shutdown()
            raise SinkUnavailable(f"cassandra: a fresh connection failed: {one_line(exc)}"
                                  ) from None
        old, self._cluster = self._cluster, cluster
        log.warning("cassandra: connected afresh (the driver's own reconnection had not "
                    "brought a node back)")
        if old is not None:
            old.shutdown()

    def _mark_index(self, session: Any) -> None:
        """A keyspace older than the index: every day from tomorrow has all its entries (today
        may hold samples written without); the read API scans the days before. Without the
        mark reads scan every day: slower, still complete."""
        ks = self.config.keyspace
        try:
            if series_index.indexed_from(session, ks) is None:
                series_index.mark_indexed_from(session, ks, int(time.time()) // 86400 + 1)
        except Exception as exc:  # collection must not depend on it
            log.warning("cassandra: cannot record where the series index starts (%s: %s); "
                        "the read API scans older days until it is", type(exc).__name__, exc)

    @property
    def session(self) -> Any:
        return self._session

    @property
    def in_flight(self) -> int:
        return self._writer.in_flight if self._writer else 0

    def record_counters(self, counters: Iterable[Counter]) -> None:
        statement = self._session.prepare(
            f"INSERT INTO {self.config.keyspace}.metrics (metric, unit, scale) VALUES (?, ?, ?)")
        for counter in counters:
            self._session.execute(statement, (counter.name, counter.unit, counter.scale))

    async def write(self, series: list[Series]) -> WriteResult:
        assert self._writer is not None, "open() first"
        return await self._writer.write(series)

    async def execute(self, statement: Any) -> None:
        """One more write through the sink's in-flight bound and retries (roll-up marks)."""
        assert self._writer is not None, "open() first"
        await self._writer.execute(statement)

    async def save_entities(self, vms: list[VirtualMachine]) -> None:
        """Entity metadata (vCD id → names, vCenter, moref): lists per org or VDC, and keeps
        one series when a VM changes moref or vCenter."""
        assert self._writer is not None, "open() first"
        writer = self._writer
        await asyncio.gather(*(
            writer.execute(self._entity_insert, (vm.entity.vm, vm.entity.name or vm.name,
                                                 vm.entity.vapp, vm.entity.vdc, vm.entity.org,
                                                 vm.vcenter, vm.moref))
            for vm in vms if vm.entity is not None))

    def list_entities(self) -> list[Any]:
        return list(self._session.execute(
            f"SELECT vm_id, name, org, vdc, vapp, vcenter, moref FROM {self.config.keyspace}"
            ".entities"))

    def load_watermarks(self, vcenter: str) -> dict[str, dict[str, int]]:
        """{sink: {moref: last acknowledged sample}} for one vCenter."""
        rows = self._session.execute(
            f"SELECT sink, moref, last_sample FROM {self.config.keyspace}.watermarks "
            "WHERE vcenter = %s", (vcenter,))
        marks: dict[str, dict[str, int]] = {}
        for row in rows:
            marks.setdefault(row.sink, {})[row.moref] = _naive_epoch(row.last_sample)
        return marks

    async def save_watermarks(self, vcenter: str, sink: str, marks: Mapping[str, int]) -> None:
        assert self._writer is not None, "open() first"
        items = list(marks.items())
        batches = []
        for begin in range(0, len(items), WATERMARK_ROWS_PER_BATCH):
            batch = BatchStatement(batch_type=BatchType.UNLOGGED)  # one partition: the vCenter
            for moref, epoch in items[begin:begin + WATERMARK_ROWS_PER_BATCH]:
                batch.add(self._watermark_insert, (vcenter, sink, moref, epoch * 1000))
            batches.append(batch)
        await asyncio.gather(*(self._writer.execute(batch) for batch in batches))

    def close(self) -> None:
        if self._cluster is not None:
            self._cluster.shutdown()
            self._cluster = None


def _naive_epoch(moment: Any) -> int:
    """The driver returns timestamps as naive UTC datetimes."""
    return calendar.timegm(moment.utctimetuple())
