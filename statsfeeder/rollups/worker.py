"""The roll-up worker: a background task that takes the hours marked for roll-up once they
have settled, recomputes each marked VM-hour from the raw rows Cassandra holds and rewrites
its hour rows whole, then the VM's day from its hours, then the VDCs and orgs the VM was in
(from their members' hour rows), and only then deletes the marks it read. Everything it
writes is a function of stored rows, so redoing any step (a restart, a second instance, a
mark rewritten meanwhile) gives the same rows: no gap, no double count.

It never competes with collection: it waits while a cycle runs (``idle``), uses its own
threads and its own in-flight bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from statsfeeder.config import RollupConfig
from statsfeeder.rollups.compute import (
    Agg,
    Placement,
    SeriesKey,
    TenantAgg,
    combine,
    tenant_day,
    tenant_hour,
)
from statsfeeder.rollups.schema import DIRTY_SHARDS
from statsfeeder.rollups.store import Mark, RollupStore, aggregate_only

log = logging.getLogger(__name__)

LATE_HOURS = 3
"""Marks are only ever written for hours this recent (vCenter keeps realtime samples an hour;
a cycle asks back at most max_lookback_seconds): older hours, once scanned, stay done."""
VMS_AT_ONCE = 32


class _Stopped(Exception):
    pass


@dataclass
class PassReport:
    hours: int = 0
    vm_hours: int = 0
    tenant_hours: int = 0
    samples: int = 0
    seconds: float = 0.0
    busy_seconds: float = 0.0
    pending: list[int] = field(default_factory=list)


class RollupWorker:
    def __init__(self, store: RollupStore, config: RollupConfig, telemetry: Any = None,
                 idle: Callable[[], bool] = lambda: True,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.config = config
        self.telemetry = telemetry
        self.idle = idle
        self.clock = clock
        self._floor: int | None = None  # hours before it have no marks left (this process)
        self._stopping = asyncio.Event()

    async def run(self, stopping: asyncio.Event, every: float = 60.0) -> None:
        """Passes until ``stopping``; one under way stops at its next step (its marks stay,
        so the next start redoes those hours): SIGTERM is not held up by roll-ups."""
        self._stopping = stopping
        while not stopping.is_set():
            try:
                report = await self.run_pass()
                if report.vm_hours:
                    log.info("roll-ups: %d VM-hours, %d VDC/org-hours in %.1f s",
                             report.vm_hours, report.tenant_hours, report.seconds)
            except _Stopped:
                return
            except Exception as exc:  # the marks stay: the next pass redoes these hours
                if self.telemetry is not None:
                    self.telemetry.rollup_errors.labels(type(exc).__name__).inc()
                log.warning("roll-ups: pass failed (retried next pass): %s: %s",
                            type(exc).__name__, " ".join(str(exc).split())[:200])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), every)

    async def run_pass(self) -> PassReport:
        """Every settled hour with marks, oldest first."""
        began, now = time.monotonic(), self.clock()
        report = PassReport()
        now_hour = int(now) // 3600
        last = int(now - self.config.settle_seconds) // 3600 - 1
        first = self._floor if self._floor is not None else now_hour - self.config.scan_hours
        metrics = await self.store.run(f"SELECT metric FROM {self.store.keyspace}.metrics",
                                       then=lambda rows: sorted(r.metric for r in rows))
        for hour in range(first, last + 1):
            await self._wait_idle(report)
            shards = await asyncio.gather(*(self.store.marks(hour, shard)
                                            for shard in range(DIRTY_SHARDS)))
            marks = [mark for shard in shards for mark in shard]
            if not marks:
                continue
            report.pending.append(hour)
            await self.roll_hour(hour, marks, metrics, report)
            for shard, found in enumerate(shards):
                if found:
                    await self.store.clear_marks(hour, shard, max(m[2] for m in found))
            report.hours += 1
        self._floor = min(last + 1, now_hour - LATE_HOURS)
        report.seconds = time.monotonic() - began
        t = self.telemetry
        if t is not None:
            t.rollup_pass_duration.observe(report.seconds)
            t.rollup_vm_hours.inc(report.vm_hours)
            t.rollup_samples.inc(report.samples)
            t.rollup_last_success.set(time.time())
        return report

    async def roll_hour(self, hour: int, marks: Iterable[Mark], metrics: list[str],
                        report: PassReport) -> None:
        items = sorted({vm: where for vm, where, _ in marks}.items())
        tenants: set[tuple[str, str]] = set()
        for begin in range(0, len(items), VMS_AT_ONCE):
            await self._wait_idle(report)
            group = items[begin:begin + VMS_AT_ONCE]
            results = await asyncio.gather(*(self.roll_vm_hour(vm, hour, where, metrics)
                                             for vm, where in group))
            await asyncio.gather(*(self.roll_vm_day(vm, hour // 24, metrics)
                                   for vm, _ in group))
            for changed, samples in results:
                tenants |= changed
                report.samples += samples
            report.vm_hours += len(group)
        for scope, tenant in sorted(tenants):
            await self._wait_idle(report)
            await self.roll_tenant(scope, tenant, hour, metrics)
            report.tenant_hours += 1

    async def _wait_idle(self, report: PassReport) -> None:
        began = time.monotonic()
        while not self.idle() or self._stopping.is_set():
            if self._stopping.is_set():
                raise _Stopped
            await asyncio.sleep(0.5)
        report.busy_seconds += time.monotonic() - began

    async def roll_vm_hour(self, vm: str, hour: int, where: Placement, metrics: list[str]
                           ) -> tuple[set[tuple[str, str]], int]:
        """Rewrites the VM's rows of that hour from the raw rows; returns the tenants whose
        hour changed (where the VM is now and where it was counted before)."""
        raw, before = await asyncio.gather(self.store.raw_hour(vm, hour, metrics),
                                           self.store.hourly(vm, hour, hour + 1, metrics))
        aggs = raw
        was = {t for row in before for t in row[3].tenants()}
        if before and before[0][3].org:
            where = before[0][3]  # an hour stays where it was first rolled up (after a restart)
        if aggs:
            await self.store.put_hour(vm, hour, aggs, where)
        now = set(where.tenants()) if aggs else set()
        await asyncio.gather(
            *(self.store.set_member(scope, tenant, hour, vm, True) for scope, tenant in now),
            *(self.store.set_member(scope, tenant, hour, vm, False)
              for scope, tenant in was - now))
        return now | was, sum(a.count for a in aggs.values())

    async def roll_vm_day(self, vm: str, day: int, metrics: list[str]) -> None:
        rows = await self.store.hourly(vm, day * 24, day * 24 + 24, metrics)
        if not rows:
            return
        per_series: dict[SeriesKey, list[tuple[int, Agg]]] = {}
        for key, hour, agg, _ in rows:
            per_series.setdefault(key, []).append((hour, agg))
        days = {key: figure for key, hours in per_series.items()
                if (figure := combine(hours)) is not None}
        last_where = max(rows, key=lambda row: row[1])[3]
        await self.store.put_day(vm, day, days, last_where)

    async def roll_tenant(self, scope: str, tenant: str, hour: int, metrics: list[str]
                          ) -> None:
        """The tenant's hour from its members' hour rows, then its day from its hours."""
        day = hour // 24
        members, old = await asyncio.gather(self.store.members(scope, tenant, hour),
                                            self.store.tenant_hours(scope, tenant, day, metrics))
        hours = await asyncio.gather(*(self.store.hourly(vm, hour, hour + 1, metrics)
                                       for vm in members))
        per_metric: dict[str, list[Agg]] = {}
        orgs = set()
        for rows in hours:
            orgs |= {row[3].org for row in rows if row[3].org}
            for metric, agg in aggregate_only(rows).items():
                per_metric.setdefault(metric, []).append(agg)
        org = tenant if scope == "org" else min(orgs, default="")
        figures: dict[str, TenantAgg | None] = {
            metric: tenant_hour(aggs) for metric, aggs in per_metric.items()}
        by_metric: dict[str, dict[int, TenantAgg]] = {}
        for metric, h, figure_then, row_org in old:
            by_metric.setdefault(metric, {})[h] = figure_then
            org = org or row_org
            if h == hour and metric not in figures:
                figures[metric] = None  # no member has it any more: the row goes
        await self.store.put_tenant_hour(scope, tenant, hour, org, figures)
        for metric, figure in figures.items():
            found = by_metric.setdefault(metric, {})
            found.pop(hour, None)
            if figure is not None:
                found[hour] = figure
        await self.store.put_tenant_day(scope, tenant, day, org, {
            metric: tenant_day(found) for metric, found in by_metric.items()})

    async def rebuild(self, vms: dict[str, Placement], first_hour: int, end_hour: int
                      ) -> PassReport:
        """Roll up hours of the given VMs from raw whatever their marks (raw rows written
        before roll-ups existed, or marks that expired while the service was stopped)."""
        report = PassReport()
        metrics = await self.store.run(f"SELECT metric FROM {self.store.keyspace}.metrics",
                                       then=lambda rows: sorted(r.metric for r in rows))
        for hour in range(first_hour, end_hour):
            await self.roll_hour(hour, [(vm, where, 0) for vm, where in vms.items()],
                                 metrics, report)
            report.hours += 1
        return report
