"""Pure aggregation: raw samples of one hour into per-series figures, hours into a day, member
VMs into a VDC or org. Values stay vCenter's raw integers (sums are exact); the ``metrics``
table's scale turns them into units when they are shown.

Time buckets follow the raw windows: hour ``h`` (hours since the epoch) holds the samples
stamped in ``(h·3600, (h+1)·3600]``, i.e. the windows whose ``window_start`` lies in
``[h·3600, (h+1)·3600)``; day ``d`` holds hours ``24d .. 24d+23``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from statsfeeder.model import Int64Array

SAMPLES_PER_HOUR = 180
"""Realtime samples one powered-on VM has per series in an hour (one per 20 s)."""


@dataclass(frozen=True, slots=True)
class Agg:
    """min, max, sum, count and last value of one series over a bucket."""

    min: int
    max: int
    sum: int
    count: int
    last: int

    @staticmethod
    def of(values: Int64Array) -> Agg:
        return Agg(int(values.min()), int(values.max()), int(values.sum()), int(values.size),
                   int(values[-1]))

    def then(self, later: Agg) -> Agg:
        """This bucket followed by a later one."""
        return Agg(min(self.min, later.min), max(self.max, later.max), self.sum + later.sum,
                   self.count + later.count, later.last)

    @property
    def mean(self) -> float:
        return self.sum / self.count


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a VM was in vCD when its samples were collected."""

    org: str = ""
    vdc: str = ""
    vapp: str = ""

    def tenants(self) -> list[tuple[str, str]]:
        """(scope, id) of the tenants it counts in; unmapped VMs count in none."""
        return [(scope, ident) for scope, ident in (("vdc", self.vdc), ("org", self.org))
                if ident]


SeriesKey = tuple[str, str]
"""(metric, instance)"""


def hour_of(stamps: Int64Array, values: Int64Array) -> Agg | None:
    """One series' samples of one hour (ascending, as decoded from the raw windows)."""
    if stamps.size == 0:
        return None
    return Agg.of(values)


def combine(hours: Iterable[tuple[int, Agg]]) -> tuple[Agg, int] | None:
    """A day (or any longer bucket) from its hours, in any order: the figure and how many
    hours had samples."""
    ordered = sorted(hours, key=lambda item: item[0])
    if not ordered:
        return None
    total = ordered[0][1]
    for _, agg in ordered[1:]:
        total = total.then(agg)
    return total, len(ordered)


@dataclass(frozen=True, slots=True)
class TenantAgg:
    """A VDC's or org's figure for one metric (aggregate instance) over a bucket.

    ``vms``: VMs with samples (hour) or the most in any hour (day); ``hours``: hours with
    data; ``vm_hours``: hours with samples summed over VMs; min/max/sum/count over every
    member sample; ``total_mean``: the sum of the members' hourly means (the tenant's total,
    e.g. MHz) averaged over the hours with data; ``total_peak``: the highest hourly total."""

    vms: int
    hours: int
    vm_hours: int
    min: int
    max: int
    sum: int
    count: int
    total_mean: float
    total_peak: float

    @property
    def per_vm_mean(self) -> float:
        """The total averaged per VM (per VM-hour over a day)."""
        return self.total_mean * self.hours / self.vm_hours


def tenant_hour(members: Iterable[Agg]) -> TenantAgg | None:
    aggs = list(members)
    if not aggs:
        return None
    total = sum(agg.mean for agg in aggs)
    return TenantAgg(len(aggs), 1, len(aggs), min(a.min for a in aggs),
                     max(a.max for a in aggs), sum(a.sum for a in aggs),
                     sum(a.count for a in aggs), total, total)


def tenant_day(hours: Mapping[int, TenantAgg]) -> TenantAgg | None:
    aggs = [hours[h] for h in sorted(hours)]
    if not aggs:
        return None
    return TenantAgg(max(a.vms for a in aggs), sum(a.hours for a in aggs),
                     sum(a.vm_hours for a in aggs), min(a.min for a in aggs),
                     max(a.max for a in aggs), sum(a.sum for a in aggs),
                     sum(a.count for a in aggs),
                     sum(a.total_mean * a.hours for a in aggs) / sum(a.hours for a in aggs),
                     max(a.total_peak for a in aggs))
