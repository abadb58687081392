"""The native Cassandra schema: CQL that runs unchanged on 3.11, 4.1 and 5.0, an idempotent
create, an in-place update of what was asked (TTL, replication; lowering replication only when
allowed), and the start-up check.

The samples table's default_time_to_live is the retention: writes carry no TTL of their own,
so ``cassandra.ttl_days`` matters only to ``schema create`` and ``schema update``.

See docs/schema.md for the design and the CQL that reads a VM's series.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from statsfeeder.config import CassandraConfig, Replication
from statsfeeder.errors import ConfigError, SchemaMismatch
from statsfeeder.rollups import schema as rollups
from statsfeeder.sinks.cassandra import series_index, write_stamps

SCHEMA_VERSION = 1

EXPECTED_COLUMNS: dict[str, dict[str, str]] = {
    "samples": {"vm_id": "text", "day": "int", "metric": "text", "instance": "text",
                "window_start": "timestamp", "data": "blob"},
    "metrics": {"metric": "text", "unit": "text", "scale": "double"},
    "entities": {"vm_id": "text", "name": "text", "vapp": "text", "vdc": "text", "org": "text",
                 "vcenter": "text", "moref": "text", "updated": "timestamp"},
    "watermarks": {"vcenter": "text", "sink": "text", "moref": "text",
                   "last_sample": "timestamp"},
    "leases": {"name": "text", "owner": "text", "acquired": "timestamp"},
    "schema_info": {"key": "text", "version": "int"},
    **series_index.EXPECTED_COLUMNS,
    **write_stamps.EXPECTED_COLUMNS,
    **rollups.EXPECTED_COLUMNS,
}


def keyspace_cql(config: CassandraConfig) -> str:
    return (f"CREATE KEYSPACE IF NOT EXISTS {config.keyspace} "
            f"WITH replication = {config.replication.cql()} AND durable_writes = true")


def tables_cql(config: CassandraConfig) -> list[str]:
    ks, ttl = config.keyspace, config.ttl_days * 86400
    return [
        # One row per (VM, metric, instance, 5-minute window); a partition is one VM-day.
        f"""CREATE TABLE IF NOT EXISTS {ks}.samples (
            vm_id text, day int, metric text, instance text, window_start timestamp,
            data blob,
            PRIMARY KEY ((vm_id, day), metric, window_start, instance)
        ) WITH compaction = {{'class': 'TimeWindowCompactionStrategy',
                              'compaction_window_unit': 'DAYS', 'compaction_window_size': 1}}
          AND compression = {{'class': 'LZ4Compressor', 'chunk_length_in_kb': 16}}
          AND default_time_to_live = {ttl}
          AND gc_grace_seconds = 10800""",
        f"""CREATE TABLE IF NOT EXISTS {ks}.metrics (
            metric text PRIMARY KEY, unit text, scale double)""",
        f"""CREATE TABLE IF NOT EXISTS {ks}.entities (
            vm_id text PRIMARY KEY, name text, vapp text, vdc text, org text, vcenter text,
            moref text, updated timestamp)""",
        # Per sink: each one's last acknowledged sample, so one sink's outage is backfilled
        # for that sink alone.
        f"""CREATE TABLE IF NOT EXISTS {ks}.watermarks (
            vcenter text, sink text, moref text, last_sample timestamp,
            PRIMARY KEY (vcenter, sink, moref))""",
        f"""CREATE TABLE IF NOT EXISTS {ks}.leases (
            name text PRIMARY KEY, owner text, acquired timestamp)""",
        f"""CREATE TABLE IF NOT EXISTS {ks}.schema_info (key text PRIMARY KEY, version int)""",
        # Which VMs and series have samples per day and hour (series_index.py).
        series_index.table_cql(ks, ttl),
        # Moved after every write of windows, for readers that keep the newest hours.
        write_stamps.table_cql(ks),
        *rollups.tables_cql(config),
    ]


@dataclass(frozen=True)
class SchemaState:
    exists: bool
    replication: dict[str, str]
    ttl_seconds: int | None
    version: int | None
    problems: tuple[str, ...]
    table_ttls: tuple[tuple[str, int], ...] = ()

    def describe(self) -> str:
        if not self.exists:
            return "keyspace absent"
        ttl = "?" if self.ttl_seconds is None else f"{_days(self.ttl_seconds)} days"
        lines = [f"replication: {self.replication}", f"samples TTL: {ttl}",
                 f"schema version: {self.version}"]
        lines += [f"{table} TTL: {seconds / 86400:g} days" for table, seconds in self.table_ttls
                  if (table.startswith("rollup_") and table != "rollup_dirty")
                  or table == series_index.TABLE]
        lines += [f"problem: {p}" for p in self.problems]
        return "\n".join(lines)


def inspect(session: Any, keyspace: str) -> SchemaState:
    rows = list(session.execute(
        "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = %s", (keyspace,)))
    if not rows:
        return SchemaState(False, {}, None, None, ())
    replication = dict(rows[0].replication)
    problems: list[str] = []
    columns: dict[str, dict[str, str]] = {}
    for row in session.execute(
            "SELECT table_name, column_name, type FROM system_schema.columns "
            "WHERE keyspace_name = %s", (keyspace,)):
        columns.setdefault(row.table_name, {})[row.column_name] = row.type
    for table, expected in EXPECTED_COLUMNS.items():
        actual = columns.get(table)
        if actual is None:
            problems.append(f"table {keyspace}.{table} is missing")
            continue
        for column, kind in expected.items():
            if actual.get(column) != kind:
                problems.append(f"{keyspace}.{table}.{column} is {actual.get(column) or 'missing'}"
                                f", expected {kind}")
    ttls = {row.table_name: int(row.default_time_to_live) for row in session.execute(
        "SELECT table_name, default_time_to_live FROM system_schema.tables "
        "WHERE keyspace_name = %s", (keyspace,))}
    ttl = ttls.get("samples")
    version = None
    if "schema_info" in columns:
        info = list(session.execute(f"SELECT version FROM {keyspace}.schema_info "
                                    "WHERE key = 'statsfeeder'"))
        version = int(info[0].version) if info else None
        if version is not None and version != SCHEMA_VERSION:
            problems.append(f"schema version {version}, this statsfeeder writes {SCHEMA_VERSION}")
    return SchemaState(True, replication, ttl, version, tuple(problems),
                       tuple(sorted(ttls.items())))


def create(session: Any, config: CassandraConfig) -> SchemaState:
    """Create what is missing; an existing schema that differs is reported, not clobbered."""
    before = inspect(session, config.keyspace)
    # Missing tables are created; anything else that differs is reported, not changed.
    differs = [p for p in before.problems if not p.startswith("table ")]
    if before.exists and differs:
        raise SchemaMismatch(f"schema: keyspace {config.keyspace} exists but differs: "
                             f"{differs[0]}")
    fresh = not before.exists or f"table {config.keyspace}.samples is missing" in before.problems
    session.execute(keyspace_cql(config))
    for statement in tables_cql(config):
        session.execute(statement)
    session.execute(f"INSERT INTO {config.keyspace}.schema_info (key, version) "
                    f"VALUES ('statsfeeder', {SCHEMA_VERSION})")
    if fresh and series_index.indexed_from(session, config.keyspace) is None:
        # No sample was ever written without its index entry.
        series_index.mark_indexed_from(session, config.keyspace, 0)
    _align_index_ttl(session, config.keyspace, inspect(session, config.keyspace))
    return inspect(session, config.keyspace)


def _align_index_ttl(session: Any, keyspace: str, state: SchemaState) -> list[str]:
    """The index outlives the samples by a day (series_index.py), whatever created either."""
    wanted = series_index.index_ttl(state.ttl_seconds)
    if state.ttl_seconds is None or dict(state.table_ttls).get(series_index.TABLE) == wanted:
        return []
    session.execute(f"ALTER TABLE {keyspace}.{series_index.TABLE} "
                    f"WITH default_time_to_live = {wanted}")
    return [f"series_index TTL {wanted / 86400:g} days (the samples' and one)"]


def replicas(replication: Mapping[str, str]) -> dict[str, int]:
    """Copies per datacenter ("*" for SimpleStrategy) from a keyspace's replication map."""
    strategy = str(replication.get("class", "")).rsplit(".", 1)[-1]
    if strategy == "SimpleStrategy":
        return {"*": int(replication.get("replication_factor", 1))}
    return {dc: int(rf) for dc, rf in replication.items() if dc != "class"}


def wanted_replicas(replication: Replication) -> dict[str, int]:
    if replication.strategy == "SimpleStrategy":
        return {"*": replication.replication_factor}
    return dict(replication.datacenters)


def describe_replicas(copies: Mapping[str, int]) -> str:
    if set(copies) == {"*"}:
        return f"SimpleStrategy RF {copies['*']}"
    return "NetworkTopologyStrategy " + ", ".join(f"{dc}:{rf}" for dc, rf in sorted(
        copies.items()))


def lowers(before: Mapping[str, int], after: Mapping[str, int]) -> bool:
    """Fewer copies anywhere: a datacenter dropped or lowered, or fewer in total."""
    if sum(after.values()) < sum(before.values()):
        return True
    same_kind = ("*" in before) == ("*" in after)
    return same_kind and any(after.get(dc, 0) < rf for dc, rf in before.items())


def update(session: Any, config: CassandraConfig, *, ttl: bool, replication: bool,
           allow_lower_replication: bool = False, rollup_ttls: bool = False
           ) -> tuple[SchemaState, list[str]]:
    """Change only what was asked (``ttl``: config.ttl_days; ``replication``:
    config.replication; ``rollup_ttls``: config.rollups' retention) and create the tables
    added since (the roll-ups'). Returns the new state and one line per change made."""
    state = inspect(session, config.keyspace)
    if not state.exists:
        raise SchemaMismatch(f"schema: keyspace {config.keyspace} does not exist; "
                             "run 'statsfeeder schema create' first")
    added = [p for p in state.problems if p.startswith("table ")]
    for statement in tables_cql(config):  # tables added since (roll-ups, index, stamps)
        session.execute(statement)
    state = inspect(session, config.keyspace)
    if state.problems:
        raise SchemaMismatch(f"schema: {state.problems[0]}")
    notes: list[str] = [f"created {p.split()[1]}" for p in added]
    notes += _align_index_ttl(session, config.keyspace, state)
    if replication:
        before, after = replicas(state.replication), wanted_replicas(config.replication)
        change = f"{describe_replicas(before)} -> {describe_replicas(after)}"
        if before == after:
            notes.append(f"replication unchanged ({describe_replicas(before)})")
        elif lowers(before, after) and not allow_lower_replication:
            raise ConfigError(f"schema update: replication {change} lowers the copies of every "
                              "sample (a node loss can then lose data); refused without "
                              "--allow-lower-replication")
        else:
            session.execute(f"ALTER KEYSPACE {config.keyspace} WITH replication = "
                            f"{config.replication.cql()}")
            notes.append(f"replication {change}: " + (
                "LOWERED: fewer copies of every sample; run 'nodetool cleanup' on every node "
                "to free the extra ones" if lowers(before, after) else
                "run 'nodetool repair -full' on every node so existing rows get their new "
                "copies"))
    if ttl:
        seconds = config.ttl_days * 86400
        if state.ttl_seconds == seconds:
            notes.append(f"samples TTL unchanged ({config.ttl_days} days)")
        else:
            session.execute(f"ALTER TABLE {config.keyspace}.samples "
                            f"WITH default_time_to_live = {seconds}")
            notes.append(f"samples TTL {_days(state.ttl_seconds)} -> {config.ttl_days} days "
                         "for rows written from now on (running services too); existing rows "
                         "keep theirs")
            notes += _align_index_ttl(session, config.keyspace,
                                      inspect(session, config.keyspace))
    if rollup_ttls:
        current = dict(state.table_ttls)
        for table, seconds in rollups.table_ttls(config).items():
            if current.get(table) != seconds:
                session.execute(f"ALTER TABLE {config.keyspace}.{table} "
                                f"WITH default_time_to_live = {seconds}")
        notes.append(f"roll-up retention: hourly {config.rollups.hourly_days} days, daily "
                     f"{config.rollups.daily_days} days for rows written from now on")
    if not notes:
        notes.append("nothing to change: give --ttl, --replication-factor, --datacenters, "
                     "--hourly-ttl or --daily-ttl (or set them in the config file)")
    return inspect(session, config.keyspace), notes


def retention_mismatch(state: SchemaState, config: CassandraConfig) -> str | None:
    """A warning when the config's ttl_days is not the retention writes get (the table's)."""
    if state.ttl_seconds is None or state.ttl_seconds == config.ttl_days * 86400:
        return None
    kept = "forever (no default_time_to_live)" if state.ttl_seconds == 0 else \
        f"{_days(state.ttl_seconds)} days"
    return (f"cassandra: retention: the config says ttl_days {config.ttl_days}, but "
            f"{config.keyspace}.samples keeps rows {kept}, and writes follow the table; "
            f"'statsfeeder schema update --ttl {config.ttl_days}' applies the config's")


def _days(seconds: int | None) -> str:
    return "?" if seconds is None else f"{seconds / 86400:g}"


def check(session: Any, keyspace: str) -> SchemaState:
    """Start-up check: stop with one clear line if the schema is not the expected one."""
    state = inspect(session, keyspace)
    if not state.exists:
        raise SchemaMismatch(f"schema: keyspace {keyspace} does not exist; "
                             "run 'statsfeeder schema create'")
    if state.problems:
        hint = "; run 'statsfeeder schema update'" if state.problems[0].startswith(
            "table ") else ""
        raise SchemaMismatch(f"schema: {state.problems[0]}{hint}")
    return state
