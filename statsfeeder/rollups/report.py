"""``statsfeeder report``: usage per VM, vApp, VDC or org for a period, from the roll-ups.

Periods are whole hours ``[since, until)`` (samples stamped in ``(since, until]``): whole
UTC days come from the daily tier, the hours at either end from the hourly tier. Figures:

- ``powered_on_hours``: samples present × 20 s (VM-hours for a group);
- ``samples_share``: samples present / 180 per hour in which the VM had any sample (an hour
  a VM was off entirely is not expected; one it was on for 10 minutes is 10/60 present);
- averages over the samples present, peaks the highest sample;
- ``*_mib``: KB/s rates integrated over time (each sample stands for its 20 s), in MiB;
- ``vms``: VMs with samples (VM and vApp); for VDC and org the most in any hour.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, cast

from statsfeeder.config import CassandraConfig
from statsfeeder.errors import ConfigError
from statsfeeder.rollups.compute import SAMPLES_PER_HOUR, Agg, Placement
from statsfeeder.rollups.reader import list_tenants, read_tenant
from statsfeeder.rollups.schema import month_of_day, week_of_hour

By = Literal["vm", "vapp", "vdc", "org"]
PRESENCE = ("cpu.usagemhz.average", "cpu.usage.average", "mem.usage.average")
"""The first of these that a VM has tells whether it was on (powered-on hours, share)."""

# (column, metric, figure, factor from vCenter's raw integer)
FIGURES: tuple[tuple[str, str, str, float], ...] = (
    ("cpu_mhz_avg", "cpu.usagemhz.average", "avg", 1.0),
    ("cpu_mhz_peak", "cpu.usagemhz.average", "peak", 1.0),
    ("cpu_pct_avg", "cpu.usage.average", "avg", 0.01),
    ("cpu_pct_peak", "cpu.usage.average", "peak", 0.01),
    ("mem_pct_avg", "mem.usage.average", "avg", 0.01),
    ("mem_pct_peak", "mem.usage.average", "peak", 0.01),
    ("mem_consumed_mib_avg", "mem.consumed.average", "avg", 1 / 1024),
    ("mem_consumed_mib_peak", "mem.consumed.average", "peak", 1 / 1024),
    ("disk_read_mib", "disk.read.average", "integral", 20 / 1024),
    ("disk_write_mib", "disk.write.average", "integral", 20 / 1024),
    ("net_received_mib", "net.received.average", "integral", 20 / 1024),
    ("net_transmitted_mib", "net.transmitted.average", "integral", 20 / 1024),
)
METRICS = sorted({metric for _, metric, _, _ in FIGURES} | set(PRESENCE))
KEYS: dict[By, tuple[str, ...]] = {"vm": ("vm_id", "name", "org", "vdc", "vapp"),
                                   "vapp": ("org", "vdc", "vapp"), "vdc": ("org", "vdc"),
                                   "org": ("org",)}
UNITS = {"powered_on_hours": "h", "samples_share": "fraction", "cpu_mhz_avg": "MHz",
         "cpu_mhz_peak": "MHz", "cpu_pct_avg": "%", "cpu_pct_peak": "%", "mem_pct_avg": "%",
         "mem_pct_peak": "%", "mem_consumed_mib_avg": "MiB", "mem_consumed_mib_peak": "MiB",
         "disk_read_mib": "MiB", "disk_write_mib": "MiB", "net_received_mib": "MiB",
         "net_transmitted_mib": "MiB"}


@dataclass
class Totals:
    sum: int = 0
    count: int = 0
    peak: int | None = None
    hours: int = 0

    def add(self, agg: Agg, hours: int) -> None:
        self.sum += agg.sum
        self.count += agg.count
        self.peak = agg.max if self.peak is None else max(self.peak, agg.max)
        self.hours += hours


@dataclass
class Group:
    key: tuple[str, ...]
    metrics: dict[str, Totals] = field(default_factory=dict)
    vms: set[str] = field(default_factory=set)
    vms_peak: int = 0

    def add(self, metric: str, agg: Agg, hours: int) -> None:
        self.metrics.setdefault(metric, Totals()).add(agg, hours)

    def row(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(zip(KEYS_OF[len(self.key)], self.key, strict=True))
        out["vms"] = len(self.vms) if self.vms else self.vms_peak
        presence = next((self.metrics[m] for m in PRESENCE if m in self.metrics), None)
        out["powered_on_hours"] = (round(presence.count * 20 / 3600, 4)
                                   if presence else 0.0)
        out["samples_share"] = (round(presence.count / (SAMPLES_PER_HOUR * presence.hours), 4)
                                if presence and presence.hours else None)
        for column, metric, figure, factor in FIGURES:
            t = self.metrics.get(metric)
            if t is None or not t.count:
                out[column] = None
            elif figure == "avg":
                out[column] = round(t.sum * factor / t.count, 3)
            elif figure == "peak":
                out[column] = round((t.peak or 0) * factor, 3)
            else:
                out[column] = round(t.sum * factor, 3)
        return out


KEYS_OF = {len(keys): keys for keys in KEYS.values()}


def split_period(since: int, until: int) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """Hour ranges for the hourly tier (the ends) and the day range [first, end) in between."""
    first_day, end_day = -(-since // 86400), until // 86400
    if first_day >= end_day:
        return [(since // 3600, until // 3600)], (0, 0)
    edges = [(since // 3600, first_day * 24), (end_day * 24, until // 3600)]
    return [(a, b) for a, b in edges if a < b], (first_day, end_day)


def group_key(by: By, vm: str, name: str, where: Placement) -> tuple[str, ...]:
    return {"vm": (vm, name, where.org, where.vdc, where.vapp),
            "vapp": (where.org, where.vdc, where.vapp),
            "vdc": (where.org, where.vdc), "org": (where.org,)}[by]


def vm_rows(session: Any, keyspace: str, vms: Sequence[str], since: int, until: int
            ) -> Iterable[tuple[str, str, Agg, int, Placement]]:
    """(vm, metric, figure, hours, placement) of every aggregate series in the period."""
    from cassandra.concurrent import execute_concurrent_with_args

    edges, (first_day, end_day) = split_period(since, until)
    figures = "metric, instance, min, max, sum, count, last, org, vdc, vapp"
    requests: list[tuple[Any, list[tuple[Any, ...]], bool]] = []
    if first_day < end_day:
        daily = session.prepare(
            f"SELECT vm_id, {figures}, hours FROM {keyspace}.rollup_daily WHERE vm_id = ? "
            "AND month IN ? AND metric IN ? AND day >= ? AND day < ?")
        months = list(range(month_of_day(first_day), month_of_day(end_day - 1) + 1))
        requests.append((daily, [(vm, months, METRICS, first_day, end_day) for vm in vms],
                         True))
    hourly = session.prepare(
        f"SELECT vm_id, {figures} FROM {keyspace}.rollup_hourly WHERE vm_id = ? "
        "AND week IN ? AND metric IN ? AND hour >= ? AND hour < ?")
    for low, high in edges:
        weeks = list(range(week_of_hour(low), week_of_hour(high - 1) + 1))
        requests.append((hourly, [(vm, weeks, METRICS, low * 3600_000, high * 3600_000)
                                  for vm in vms], False))
    for statement, args, is_daily in requests:
        for _ok, rows in execute_concurrent_with_args(session, statement, args,
                                                     concurrency=64, raise_on_first_error=True):
            for r in rows:
                if r.instance == "":
                    yield (r.vm_id, r.metric, Agg(r.min, r.max, r.sum, r.count, r.last),
                           r.hours if is_daily else 1,
                           Placement(r.org or "", r.vdc or "", r.vapp or ""))


def build(session: Any, keyspace: str, since: int, until: int, by: By,
          org: str | None = None) -> list[dict[str, Any]]:
    groups: dict[tuple[str, ...], Group] = {}
    if by in ("vm", "vapp"):
        names = {r.vm_id: r.name or "" for r in session.execute(
            f"SELECT vm_id, name FROM {keyspace}.entities")}
        for vm, metric, agg, hours, where in vm_rows(session, keyspace, sorted(names),
                                                     since, until):
            if org is not None and where.org != org:
                continue
            key = group_key(by, vm, names.get(vm, ""), where)
            group = groups.setdefault(key, Group(key))
            group.add(metric, agg, hours)
            group.vms.add(vm)
        return [groups[key].row() for key in sorted(groups)]
    edges, (first_day, end_day) = split_period(since, until)
    for scope, tenant, tenant_org in list_tenants(session, keyspace, since, until):
        if scope != by or (org is not None and tenant_org != org):
            continue
        key = (tenant,) if by == "org" else (tenant_org, tenant)
        group = groups.setdefault(key, Group(key))
        parts = [("hourly", low * 3600, high * 3600) for low, high in edges]
        if first_day < end_day:
            parts.append(("daily", first_day * 86400, end_day * 86400))
        peaks: dict[str, int] = {}
        for tier, low, high in parts:
            found = read_tenant(session, keyspace, cast(Literal["vdc", "org"], by), tenant,
                                METRICS, cast(Literal["hourly", "daily"], tier), low, high)
            for metric, points in found.items():
                for p in points:
                    a = p.agg
                    group.add(metric, Agg(a.min, a.max, a.sum, a.count, 0), a.vm_hours)
                    peaks[metric] = max(peaks.get(metric, 0), a.vms)
        group.vms_peak = next((peaks[m] for m in PRESENCE if m in peaks), 0)
    return [groups[key].row() for key in sorted(groups)]


def render(rows: list[dict[str, Any]], by: By, since: int, until: int,
           fmt: Literal["csv", "json"]) -> str:
    columns = [*KEYS[by], "vms", "powered_on_hours", "samples_share",
               *(column for column, _, _, _ in FIGURES)]
    if fmt == "json":
        return json.dumps({"from": since, "to": until, "by": by, "units": UNITS,
                           "rows": rows}, indent=1)
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return out.getvalue()


def parse_period(start: str | None, end: str | None, month: str | None) -> tuple[int, int]:
    """``--month 2026-11`` or ``--from``/``--to`` (dates or times in UTC, whole hours)."""
    if month is not None:
        if start or end:
            raise ConfigError("report: give --month or --from/--to, not both")
        try:
            first = datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC)
        except ValueError:
            raise ConfigError(f"report: --month {month!r}: use YYYY-MM, e.g. 2026-11") from None
        following = (first.replace(year=first.year + 1, month=1) if first.month == 12 else
                     first.replace(month=first.month + 1))
        return int(first.timestamp()), int(following.timestamp())
    if not start or not end:
        raise ConfigError("report: give --month YYYY-MM, or both --from and --to")
    since, until = _moment("--from", start), _moment("--to", end)
    if until <= since:
        raise ConfigError(f"report: --to {end!r} is not after --from {start!r}")
    return since, until


def _moment(option: str, text: str) -> int:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"report: {option} {text!r}: use 2026-11-01 or "
                          "2026-11-01T06:00Z (UTC)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    seconds = int(moment.timestamp())
    if seconds % 3600:
        raise ConfigError(f"report: {option} {text!r}: roll-ups are hourly; use a whole hour")
    return seconds


def run(config: CassandraConfig, since: int, until: int, by: By, org: str | None,
        fmt: Literal["csv", "json"]) -> str:
    from statsfeeder.sinks.cassandra.session import connect

    cluster, session = connect(config)
    try:
        rows = build(session, config.keyspace, since, until, by, org)
    finally:
        cluster.shutdown()
    return render(rows, by, since, until, fmt)
