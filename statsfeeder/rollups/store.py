"""Cassandra reads and writes of the roll-up worker: raw windows of one VM-hour, the hourly,
daily and tenant rows, tenant membership, and the marks of hours to redo. Every request goes
through one in-flight bound (``max_in_flight``); rows of one partition share a batch."""

from __future__ import annotations

import asyncio
import calendar
import zlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from statsfeeder.config import CassandraConfig
from statsfeeder.rollups.compute import Agg, Placement, SeriesKey, TenantAgg
from statsfeeder.rollups.fold import fold
from statsfeeder.rollups.schema import DIRTY_SHARDS, month_of_day, week_of_hour
from statsfeeder.sinks.cassandra.batches import partition_batches
from statsfeeder.sinks.cassandra.writer import ROWS_PER_BATCH

Mark = tuple[str, Placement, int]
"""(vm_id, placement, write time in microseconds) of one roll-up mark."""


def epoch(moment: Any) -> int:
    """The driver returns timestamps as naive UTC datetimes."""
    return calendar.timegm(moment.utctimetuple())


def shard_of(vm_id: str) -> int:
    return zlib.crc32(vm_id.encode()) % DIRTY_SHARDS


class RollupStore:
    def __init__(self, session: Any, config: CassandraConfig,
                 write_mark: Callable[[Any], Awaitable[None]] | None = None) -> None:
        """``write_mark``: how marks are written (the collection's own write path, so they
        never wait behind the worker's requests); by default the worker's."""
        self.session: Any = None
        self._write_mark = write_mark
        self.keyspace = config.keyspace
        # Its own threads: the collection's blocking calls (pyvmomi, the driver) use the
        # default executor, which roll-ups must never fill.
        self._pool = ThreadPoolExecutor(config.rollups.max_in_flight, "rollups")
        self.use(session)

    def use(self, session: Any) -> None:
        """Prepare the statements on ``session`` and read and write through it from then on
        (the sink's session, which it replaces when it connects afresh); blocking."""
        if session is self.session:
            return
        ks = self.keyspace
        # No USING TTL: rows take their table's default_time_to_live, as the samples do, so
        # 'schema update --hourly-ttl/--daily-ttl' applies to running services too.
        p = session.prepare
        figures = "min, max, sum, count, last"
        tenant = ("org, vms, hours, vm_hours, min, max, sum, count, total_mean, total_peak")
        self._raw = p(f"SELECT metric, instance, window_start, data FROM {ks}.samples "
                      "WHERE vm_id = ? AND day = ? AND metric IN ? AND window_start >= ? "
                      "AND window_start < ?")
        self._hourly = p(f"SELECT metric, hour, instance, {figures}, org, vdc, vapp "
                         f"FROM {ks}.rollup_hourly WHERE vm_id = ? AND week = ? "
                         "AND metric IN ? AND hour >= ? AND hour < ?")
        self._put_hourly = p(f"INSERT INTO {ks}.rollup_hourly (vm_id, week, metric, hour, "
                             f"instance, {figures}, org, vdc, vapp) VALUES "
                             "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
        self._put_daily = p(f"INSERT INTO {ks}.rollup_daily (vm_id, month, metric, day, "
                            f"instance, {figures}, hours, org, vdc, vapp) VALUES "
                            "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
        self._tenant_hours = p(f"SELECT metric, hour, {tenant} FROM {ks}.rollup_tenant_hourly "
                               "WHERE scope = ? AND tenant = ? AND week = ? AND metric IN ? "
                               "AND hour >= ? AND hour < ?")
        self._put_tenant_hour = p(
            f"INSERT INTO {ks}.rollup_tenant_hourly (scope, tenant, week, metric, hour, "
            f"{tenant}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
        self._drop_tenant_hour = p(f"DELETE FROM {ks}.rollup_tenant_hourly WHERE scope = ? "
                                   "AND tenant = ? AND week = ? AND metric = ? AND hour = ?")
        self._put_tenant_day = p(
            f"INSERT INTO {ks}.rollup_tenant_daily (scope, tenant, month, metric, day, "
            f"{tenant}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
        self._drop_tenant_day = p(f"DELETE FROM {ks}.rollup_tenant_daily WHERE scope = ? "
                                  "AND tenant = ? AND month = ? AND metric = ? AND day = ?")
        self._put_tenant = p(f"INSERT INTO {ks}.rollup_tenants (month, scope, tenant, org) "
                             "VALUES (?, ?, ?, ?)")
        self._members = p(f"SELECT vm_id FROM {ks}.rollup_members WHERE scope = ? "
                          "AND tenant = ? AND hour = ?")
        self._put_member = p(f"INSERT INTO {ks}.rollup_members (scope, tenant, hour, vm_id) "
                             "VALUES (?, ?, ?, ?)")
        self._drop_member = p(f"DELETE FROM {ks}.rollup_members WHERE scope = ? "
                              "AND tenant = ? AND hour = ? AND vm_id = ?")
        self._marks = p(f"SELECT vm_id, org, vdc, vapp, WRITETIME(org) AS written "
                        f"FROM {ks}.rollup_dirty WHERE hour = ? AND shard = ?")
        self._put_mark = p(f"INSERT INTO {ks}.rollup_dirty (hour, shard, vm_id, org, vdc, "
                           "vapp) VALUES (?, ?, ?, ?, ?, ?)")
        self._clear = f"DELETE FROM {ks}.rollup_dirty USING TIMESTAMP %s WHERE hour = %s " \
                      "AND shard = %s"
        self.session = session

    async def run(self, statement: Any, parameters: Any = None,
                  then: Callable[[list[Any]], Any] = list) -> Any:
        """One request (all pages) on the roll-up threads, ``then`` applied there too (the
        decoding stays off the event loop the collection runs on)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._pool, lambda: then(list(self.session.execute(statement, parameters))))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def write(self, statement: Any, rows: Sequence[tuple[Any, ...]]) -> None:
        """Rows of one partition: unlogged batches of at most ROWS_PER_BATCH."""
        await asyncio.gather(*(self.run(request) for request in
                               partition_batches(statement, [rows], ROWS_PER_BATCH)))

    def metrics(self) -> list[str]:
        return sorted(row.metric for row in self.session.execute(
            f"SELECT metric FROM {self.keyspace}.metrics"))

    # --- per VM ---------------------------------------------------------------------------
    async def raw_hour(self, vm: str, hour: int, metrics: list[str]) -> dict[SeriesKey, Agg]:
        """Each series' figures over the hour's raw windows, as stored now."""
        result: dict[SeriesKey, Agg] = await self.run(
            self._raw, (vm, hour // 24, metrics, hour * 3600_000, (hour + 1) * 3600_000),
            lambda rows: fold(((r.metric, r.instance), epoch(r.window_start), r.data)
                              for r in rows))
        return result

    async def hourly(self, vm: str, first_hour: int, end_hour: int, metrics: list[str]
                     ) -> list[tuple[SeriesKey, int, Agg, Placement]]:
        """Hour rows of one VM in [first_hour, end_hour), within one week bucket."""
        rows = await self.run(self._hourly, (vm, week_of_hour(first_hour), metrics,
                                             first_hour * 3600_000, end_hour * 3600_000))
        return [((r.metric, r.instance), epoch(r.hour) // 3600,
                 Agg(r.min, r.max, r.sum, r.count, r.last), Placement(r.org, r.vdc, r.vapp))
                for r in rows]

    async def put_hour(self, vm: str, hour: int, aggs: dict[SeriesKey, Agg],
                       where: Placement) -> None:
        week = week_of_hour(hour)
        await self.write(self._put_hourly, [
            (vm, week, metric, hour * 3600_000, instance, a.min, a.max, a.sum, a.count,
             a.last, where.org, where.vdc, where.vapp)
            for (metric, instance), a in sorted(aggs.items())])

    async def put_day(self, vm: str, day: int, aggs: dict[SeriesKey, tuple[Agg, int]],
                      where: Placement) -> None:
        month = month_of_day(day)
        await self.write(self._put_daily, [
            (vm, month, metric, day, instance, a.min, a.max, a.sum, a.count, a.last, hours,
             where.org, where.vdc, where.vapp)
            for (metric, instance), (a, hours) in sorted(aggs.items())])

    # --- tenants --------------------------------------------------------------------------
    async def members(self, scope: str, tenant: str, hour: int) -> list[str]:
        return [r.vm_id for r in await self.run(self._members, (scope, tenant, hour * 3600_000))]

    async def set_member(self, scope: str, tenant: str, hour: int, vm: str,
                         present: bool) -> None:
        if present:
            await self.run(self._put_member, (scope, tenant, hour * 3600_000, vm))
        else:
            await self.run(self._drop_member, (scope, tenant, hour * 3600_000, vm))

    async def tenant_hours(self, scope: str, tenant: str, day: int, metrics: list[str]
                           ) -> list[tuple[str, int, TenantAgg, str]]:
        """(metric, hour, figure, org) of one tenant's hours of one day."""
        first = day * 24
        rows = await self.run(self._tenant_hours, (scope, tenant, week_of_hour(first), metrics,
                                                   first * 3600_000, (first + 24) * 3600_000))
        return [(r.metric, epoch(r.hour) // 3600, _tenant_agg(r), r.org) for r in rows]

    async def put_tenant_hour(self, scope: str, tenant: str, hour: int, org: str,
                              figures: dict[str, TenantAgg | None]) -> None:
        week = week_of_hour(hour)
        await asyncio.gather(*(
            self.run(self._drop_tenant_hour, (scope, tenant, week, metric, hour * 3600_000))
            if agg is None else
            self.run(self._put_tenant_hour, (scope, tenant, week, metric, hour * 3600_000,
                                             org, *_tenant_values(agg)))
            for metric, agg in figures.items()))

    async def put_tenant_day(self, scope: str, tenant: str, day: int, org: str,
                             figures: dict[str, TenantAgg | None]) -> None:
        month = month_of_day(day)
        requests = [
            self.run(self._drop_tenant_day, (scope, tenant, month, metric, day))
            if agg is None else
            self.run(self._put_tenant_day, (scope, tenant, month, metric, day, org,
                                            *_tenant_values(agg)))
            for metric, agg in figures.items()]
        if any(agg is not None for agg in figures.values()):
            requests.append(self.run(self._put_tenant, (month, scope, tenant, org)))
        await asyncio.gather(*requests)

    # --- marks ----------------------------------------------------------------------------
    async def put_marks(self, marks: dict[tuple[str, int], Placement]) -> None:
        partitions: dict[tuple[int, int], list[tuple[Any, ...]]] = {}
        for (vm, hour), where in marks.items():
            shard = shard_of(vm)
            partitions.setdefault((hour, shard), []).append(
                (hour * 3600_000, shard, vm, where.org, where.vdc, where.vapp))
        if self._write_mark is None:
            await asyncio.gather(*(self.write(self._put_mark, rows)
                                   for rows in partitions.values()))
            return
        await asyncio.gather(*(self._write_mark(request) for request in partition_batches(
            self._put_mark, partitions.values(), ROWS_PER_BATCH)))

    async def marks(self, hour: int, shard: int) -> list[Mark]:
        rows = await self.run(self._marks, (hour * 3600_000, shard))
        return [(r.vm_id, Placement(r.org or "", r.vdc or "", r.vapp or ""), r.written)
                for r in rows]

    async def clear_marks(self, hour: int, shard: int, upto_micros: int) -> None:
        """Delete the marks written up to that time: a mark rewritten since (new samples
        while this hour was being rolled up) survives and is rolled up again."""
        await self.run(self._clear, (upto_micros, hour * 3600_000, shard))


def _tenant_values(agg: TenantAgg) -> tuple[Any, ...]:
    return (agg.vms, agg.hours, agg.vm_hours, agg.min, agg.max, agg.sum, agg.count,
            agg.total_mean, agg.total_peak)


def _tenant_agg(row: Any) -> TenantAgg:
    return TenantAgg(row.vms, row.hours, row.vm_hours, row.min, row.max, row.sum, row.count,
                     row.total_mean, row.total_peak)


def aggregate_only(rows: Iterable[tuple[SeriesKey, int, Agg, Placement]]
                   ) -> dict[str, Agg]:
    return {metric: agg for (metric, instance), _, agg, _ in rows if instance == ""}
