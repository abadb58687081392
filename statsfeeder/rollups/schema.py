"""The roll-up tables, designed like ``samples``: a partition is bounded by a time bucket,
TimeWindowCompactionStrategy's window equals that bucket (whole SSTables expire together),
and every row carries a TTL (its tier's retention). CQL runs unchanged on 3.11, 4.1, 5.0.

Buckets: the hourly tiers are partitioned by ``week`` = epoch day // 7 (168 hours), the
daily tiers by ``month`` = epoch day // 30 (30 days); docs/schema.md shows the CQL.
"""

from __future__ import annotations

from statsfeeder.config import CassandraConfig

HOURLY_BUCKET_DAYS = 7
DAILY_BUCKET_DAYS = 30
DIRTY_SHARDS = 8
"""Partitions per hour of roll-up marks: 30,000 VMs make about 4,000 rows per partition."""

_FIGURES = "min bigint, max bigint, sum bigint, count int, last bigint"
_TENANT_FIGURES = ("org text, vms int, hours int, vm_hours int, min bigint, max bigint, "
                   "sum bigint, count bigint, total_mean double, total_peak double")

EXPECTED_COLUMNS: dict[str, dict[str, str]] = {
    "rollup_hourly": {"vm_id": "text", "week": "int", "metric": "text", "hour": "timestamp",
                      "instance": "text", "min": "bigint", "max": "bigint", "sum": "bigint",
                      "count": "int", "last": "bigint", "org": "text", "vdc": "text",
                      "vapp": "text"},
    "rollup_daily": {"vm_id": "text", "month": "int", "metric": "text", "day": "int",
                     "instance": "text", "min": "bigint", "max": "bigint", "sum": "bigint",
                     "count": "int", "last": "bigint", "hours": "int", "org": "text",
                     "vdc": "text", "vapp": "text"},
    "rollup_tenant_hourly": {"scope": "text", "tenant": "text", "week": "int",
                             "metric": "text", "hour": "timestamp", "org": "text",
                             "vms": "int", "sum": "bigint", "total_mean": "double"},
    "rollup_tenant_daily": {"scope": "text", "tenant": "text", "month": "int",
                            "metric": "text", "day": "int", "org": "text", "vms": "int",
                            "sum": "bigint", "total_peak": "double"},
    "rollup_members": {"scope": "text", "tenant": "text", "hour": "timestamp",
                       "vm_id": "text"},
    "rollup_tenants": {"month": "int", "scope": "text", "tenant": "text", "org": "text"},
    "rollup_dirty": {"hour": "timestamp", "shard": "int", "vm_id": "text", "org": "text",
                     "vdc": "text", "vapp": "text"},
}


def _twcs(days: int) -> str:
    return ("{'class': 'TimeWindowCompactionStrategy', 'compaction_window_unit': 'DAYS', "
            f"'compaction_window_size': {days}}}")


def _options(days: int, ttl_days: int) -> str:
    return (f"WITH compaction = {_twcs(days)} "
            "AND compression = {'class': 'LZ4Compressor', 'chunk_length_in_kb': 16} "
            f"AND default_time_to_live = {ttl_days * 86400} AND gc_grace_seconds = 10800")


def table_ttls(config: CassandraConfig) -> dict[str, int]:
    """Each roll-up table's retention in seconds (``schema update`` applies them)."""
    r = config.rollups
    return {"rollup_hourly": r.hourly_days * 86400, "rollup_daily": r.daily_days * 86400,
            "rollup_tenant_hourly": r.hourly_days * 86400,
            "rollup_tenant_daily": r.daily_days * 86400,
            "rollup_members": r.hourly_days * 86400, "rollup_tenants": r.daily_days * 86400,
            "rollup_dirty": r.scan_hours * 3600}


def tables_cql(config: CassandraConfig) -> list[str]:
    ks, r = config.keyspace, config.rollups
    hourly, daily = _options(HOURLY_BUCKET_DAYS, r.hourly_days), _options(DAILY_BUCKET_DAYS,
                                                                            r.daily_days)
    return [
        # Per series and hour; placement = the VM's vCD org/VDC/vApp in that hour.
        f"""CREATE TABLE IF NOT EXISTS {ks}.rollup_hourly (
            vm_id text, week int, metric text, hour timestamp, instance text, {_FIGURES},
            org text, vdc text, vapp text,
            PRIMARY KEY ((vm_id, week), metric, hour, instance)) {hourly}""",
        # Per series and day (from its hours); hours = hours with samples; placement = the
        # one of the day's last hour with samples.
        f"""CREATE TABLE IF NOT EXISTS {ks}.rollup_daily (
            vm_id text, month int, metric text, day int, instance text, {_FIGURES},
            hours int, org text, vdc text, vapp text,
            PRIMARY KEY ((vm_id, month), metric, day, instance)) {daily}""",
        f"""CREATE TABLE IF NOT EXISTS {ks}.rollup_tenant_hourly (
            scope text, tenant text, week int, metric text, hour timestamp, {_TENANT_FIGURES},
            PRIMARY KEY ((scope, tenant, week), metric, hour)) {hourly}""",
        f"""CREATE TABLE IF NOT EXISTS {ks}.rollup_tenant_daily (
            scope text, tenant text, month int, metric text, day int, {_TENANT_FIGURES},
            PRIMARY KEY ((scope, tenant, month), metric, day)) {daily}""",
        # Which VMs a VDC or org had in an hour (a VM that moved counts where it was).
        f"""CREATE TABLE IF NOT EXISTS {ks}.rollup_members (
            scope text, tenant text, hour timestamp, vm_id text,
            PRIMARY KEY ((scope, tenant, hour), vm_id)) {hourly}""",
        # The VDCs and orgs with roll-ups per 30-day bucket, for reports.
        f"""CREATE TABLE IF NOT EXISTS {ks}.rollup_tenants (
            month int, scope text, tenant text, org text,
            PRIMARY KEY ((month), scope, tenant)) {daily}""",
        # (VM, hour) pairs whose raw rows changed since they were last rolled up, with the
        # VM's placement then. Written after Cassandra acknowledged the raw rows and before
        # the watermark moves, so a crash leaves either the mark or a re-read.
        f"""CREATE TABLE IF NOT EXISTS {ks}.rollup_dirty (
            hour timestamp, shard int, vm_id text, org text, vdc text, vapp text,
            PRIMARY KEY ((hour, shard), vm_id))
            WITH default_time_to_live = {r.scan_hours * 3600} AND gc_grace_seconds = 10800""",
    ]


def week_of_hour(hour: int) -> int:
    return hour // 24 // HOURLY_BUCKET_DAYS


def month_of_day(day: int) -> int:
    return day // DAILY_BUCKET_DAYS


HOURLY_BYTES_PER_SERIES_DAY = 807.0
"""On-disk bytes of one series' 24 hour rows (bench/rollup_bench.py, docs/performance.md)."""
DAILY_BYTES_PER_SERIES_DAY = 34.0
"""On-disk bytes of one series' day row (bench/rollup_bench.py, docs/performance.md)."""


def sizing_lines(vms: int, metrics: int, rf: int, hourly_days: int, daily_days: int
                 ) -> list[str]:
    """The roll-up tiers' share of ``statsfeeder sizing`` (VDC/org rows are a few per cent
    more when tenants hold tens of VMs; not counted)."""
    series = vms * metrics * rf
    hourly = series * hourly_days * HOURLY_BYTES_PER_SERIES_DAY
    daily = series * daily_days * DAILY_BYTES_PER_SERIES_DAY
    return [f"roll-ups: hourly {hourly_days} d {hourly / 1e9:,.1f} GB "
            f"({HOURLY_BYTES_PER_SERIES_DAY:,.0f} B/series-day), daily {daily_days} d "
            f"{daily / 1e9:,.1f} GB ({DAILY_BYTES_PER_SERIES_DAY:,.0f} B/series-day measured)"]
