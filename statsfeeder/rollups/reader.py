"""Roll-ups for a time range, for a query layer (and the report): per series or per VDC/org,
hourly or daily, min/max/sum/count/last with the placement. Values are vCenter's raw
integers; ``scale`` (from the metrics table) turns them into ``unit``.

Buckets are half-open in hours: an hourly point stamped ``t`` covers the samples stamped in
``(t, t+3600]``, a daily one those in ``(t, t+86400]`` (as the raw windows are stamped).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from cassandra.query import ValueSequence

from statsfeeder.rollups.compute import Agg, Placement, TenantAgg
from statsfeeder.rollups.schema import month_of_day, week_of_hour
from statsfeeder.rollups.store import epoch

Tier = Literal["hourly", "daily"]


@dataclass(frozen=True)
class RollupPoint:
    start: int
    """Epoch seconds the bucket starts at (its samples are stamped after it)."""
    agg: Agg
    hours: int
    """Hours with samples in the bucket (1 for an hourly point)."""
    placement: Placement


@dataclass(frozen=True)
class RollupSeries:
    vm_id: str
    metric: str
    instance: str
    tier: Tier
    points: list[RollupPoint]


@dataclass(frozen=True)
class TenantPoint:
    start: int
    agg: TenantAgg


def _buckets(tier: Tier, since: int, until: int) -> tuple[list[int], int, int]:
    """Partition buckets and clustering bounds covering buckets starting in [since, until)."""
    if tier == "hourly":
        first, end = since // 3600, -(-until // 3600)
        return (list(range(week_of_hour(first), week_of_hour(max(first, end - 1)) + 1)),
                first * 3600_000, end * 3600_000)
    first, end = since // 86400, -(-until // 86400)
    return list(range(month_of_day(first), month_of_day(max(first, end - 1)) + 1)), first, end


def read_vm(session: Any, keyspace: str, vm_id: str, metrics: Sequence[str], tier: Tier,
            since: int, until: int) -> list[RollupSeries]:
    """Every series of one VM and the given metrics with buckets starting in [since, until)."""
    buckets, low, high = _buckets(tier, since, until)
    table, bucket, key = (("rollup_hourly", "week", "hour") if tier == "hourly" else
                          ("rollup_daily", "month", "day"))
    hours = "" if tier == "hourly" else "hours, "
    rows = session.execute(
        f"SELECT metric, instance, {key} AS at, min, max, sum, count, last, {hours}"
        f"org, vdc, vapp FROM {keyspace}.{table} WHERE vm_id = %s AND {bucket} IN %s "
        f"AND metric IN %s AND {key} >= %s AND {key} < %s",
        (vm_id, ValueSequence(buckets), ValueSequence(metrics), low, high))
    found: dict[tuple[str, str], list[RollupPoint]] = {}
    for row in rows:
        start = epoch(row.at) if tier == "hourly" else row.at * 86400
        found.setdefault((row.metric, row.instance), []).append(RollupPoint(
            start, Agg(row.min, row.max, row.sum, row.count, row.last),
            row.hours if tier == "daily" else 1,
            Placement(row.org or "", row.vdc or "", row.vapp or "")))
    return [RollupSeries(vm_id, metric, instance, tier, sorted(points, key=lambda p: p.start))
            for (metric, instance), points in sorted(found.items())]


def read_tenant(session: Any, keyspace: str, scope: Literal["vdc", "org"], tenant: str,
                metrics: Sequence[str], tier: Tier, since: int, until: int
                ) -> dict[str, list[TenantPoint]]:
    """A VDC's or org's figures per metric (aggregate instance) in [since, until)."""
    buckets, low, high = _buckets(tier, since, until)
    table, bucket, key = (("rollup_tenant_hourly", "week", "hour") if tier == "hourly" else
                          ("rollup_tenant_daily", "month", "day"))
    rows = session.execute(
        f"SELECT metric, {key} AS at, vms, hours, vm_hours, min, max, sum, count, total_mean, "
        f"total_peak FROM {keyspace}.{table} WHERE scope = %s AND tenant = %s "
        f"AND {bucket} IN %s AND metric IN %s AND {key} >= %s AND {key} < %s",
        (scope, tenant, ValueSequence(buckets), ValueSequence(metrics), low, high))
    found: dict[str, list[TenantPoint]] = {}
    for row in rows:
        start = epoch(row.at) if tier == "hourly" else row.at * 86400
        found.setdefault(row.metric, []).append(TenantPoint(start, TenantAgg(
            row.vms, row.hours, row.vm_hours, row.min, row.max, row.sum, row.count,
            row.total_mean, row.total_peak)))
    return {metric: sorted(points, key=lambda p: p.start) for metric, points in found.items()}


def list_tenants(session: Any, keyspace: str, since: int, until: int
                 ) -> list[tuple[str, str, str]]:
    """(scope, tenant, org) of the VDCs and orgs with daily roll-ups in the period."""
    months = range(month_of_day(since // 86400), month_of_day(max(since, until - 1) // 86400)
                   + 1)
    rows = session.execute(f"SELECT scope, tenant, org FROM {keyspace}.rollup_tenants "
                           "WHERE month IN %s", (ValueSequence(months),))
    return sorted({(row.scope, row.tenant, row.org or "") for row in rows})
