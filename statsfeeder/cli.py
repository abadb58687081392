"""``statsfeeder`` commands: once | run | serve | validate | schema create|update|show | query |
report | rollups rebuild | sizing.

Errors print one line on stderr naming what is at fault and exit non-zero; secrets are never
printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from statsfeeder.config import CassandraConfig, load_config, parse_cassandra
from statsfeeder.config_checks import DATACENTER_NAME
from statsfeeder.errors import ConfigError, StatsfeederError

log = logging.getLogger("statsfeeder")

MEASURED_BYTES_PER_SAMPLE = 2.2
"""On-disk bytes per stored sample measured by bench/storage.py (docs/performance.md)."""
VCD_BYTES_PER_METRIC_DAY = 114_000
SAMPLES_PER_DAY = 86400 // 20


def _cassandra_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Cassandra (as vCD's cell-management-tool names them)")
    group.add_argument("-c", "--config", type=Path, help="take the cassandra section from here")
    group.add_argument("--cluster-nodes", help="comma-separated node addresses")
    group.add_argument("--port", type=int)
    group.add_argument("--username")
    group.add_argument("--password", help="prefer --password-file or CASSANDRA_PASSWORD")
    group.add_argument("--password-file", type=Path)
    group.add_argument("--ttl", type=int, help="retention in days")
    group.add_argument("--hourly-ttl", type=int, help="hourly roll-ups' retention in days")
    group.add_argument("--daily-ttl", type=int, help="daily roll-ups' retention in days")
    group.add_argument("--keyspace")
    group.add_argument("--ca-file", type=Path, help="PEM CA bundle that signed the nodes")
    group.add_argument("--client-cert", type=Path)
    group.add_argument("--client-key", type=Path)
    group.add_argument("--no-ssl", action="store_true", help="plaintext (not for production)")
    group.add_argument("--replication-factor", type=int)
    group.add_argument("--datacenters", help="NetworkTopologyStrategy: dc1:3,dc2:3")


def _check_ranges(args: argparse.Namespace, ranges: dict[str, tuple[int, int]]) -> None:
    for name, (low, high) in ranges.items():
        value = getattr(args, name.replace("-", "_"), None)
        if value is not None and not low <= value <= high:
            raise ConfigError(f"--{name} {value}: must be between {low:,} and {high:,}")


def _datacenters(text: str) -> dict[str, int]:
    dcs: dict[str, int] = {}
    for item in text.split(","):
        dc, _, rf = item.strip().rpartition(":")
        if not DATACENTER_NAME.match(dc):
            raise ConfigError(f"--datacenters: {dc!r} is not a datacenter name (letters, "
                              "digits, '-', '_', '.'); use dc1:3,dc2:3")
        if not rf.isdigit() or not 1 <= int(rf) <= 9:
            raise ConfigError(f"--datacenters: {dc}: the replication factor must be 1 to 9")
        dcs[dc] = int(rf)
    return dcs


def cassandra_config(args: argparse.Namespace) -> CassandraConfig:
    return cassandra_request(args)[0]


def cassandra_request(args: argparse.Namespace) -> tuple[CassandraConfig, set[str]]:
    """The config file's cassandra section (if given), overridden by command-line options, and
    which of ttl_days / replication the file or the options set (``schema update`` changes
    only those)."""
    _check_ranges(args, {"port": (1, 65535), "ttl": (1, 3650), "replication-factor": (1, 9)})
    if args.replication_factor is not None and args.datacenters:
        raise ConfigError("--replication-factor and --datacenters: give one (SimpleStrategy "
                          "or NetworkTopologyStrategy)")
    base: dict[str, Any] = {}
    asked: set[str] = set()
    if args.config:
        loaded = load_config(args.config).cassandra
        asked = loaded.model_fields_set & {"ttl_days", "replication", "rollups"}
        base = loaded.model_dump(exclude_none=True, exclude={"credentials"})
        if loaded.credentials is not None:
            base["credentials"] = {"username": loaded.credentials.username,
                                   "password": loaded.credentials.secret()}
    if args.cluster_nodes:
        base["hosts"] = [h.strip() for h in args.cluster_nodes.split(",") if h.strip()]
    for key, value in (("port", args.port), ("ttl_days", args.ttl), ("keyspace", args.keyspace)):
        if value is not None:
            base[key] = value
    if args.ttl is not None:
        asked.add("ttl_days")
    for key, value in (("hourly_days", args.hourly_ttl), ("daily_days", args.daily_ttl)):
        if value is not None:
            base["rollups"] = {**base.get("rollups", {}), key: value}
            asked.add("rollups")
    username = args.username or (None if args.config else os.environ.get("CASSANDRA_USERNAME"))
    if username:
        credentials: dict[str, Any] = {"username": username}
        if args.password_file:
            credentials["password_file"] = args.password_file
        elif args.password is not None:
            credentials["password"] = args.password
        else:
            credentials["password_env"] = "CASSANDRA_PASSWORD"
        base["credentials"] = credentials
    tls = dict(base.get("tls", {}))
    if args.no_ssl:
        tls["enabled"] = False
    for key, value in (("ca_file", args.ca_file), ("client_cert_file", args.client_cert),
                       ("client_key_file", args.client_key)):
        if value is not None:
            tls[key] = value
    base["tls"] = tls
    if args.datacenters:
        base["replication"] = {"strategy": "NetworkTopologyStrategy",
                               "datacenters": _datacenters(args.datacenters)}
        asked.add("replication")
    elif args.replication_factor is not None:
        base["replication"] = {"replication_factor": args.replication_factor}
        asked.add("replication")
    return parse_cassandra(base), asked


def cmd_schema(args: argparse.Namespace) -> int:
    from statsfeeder.sinks.cassandra import schema
    from statsfeeder.sinks.cassandra.session import connect

    config, asked = cassandra_request(args)
    cluster, session = connect(config)
    try:
        if args.schema_action == "create":
            state = schema.create(session, config)
            print(f"schema: keyspace {config.keyspace} ready")
        elif args.schema_action == "update":
            state, notes = schema.update(
                session, config, ttl="ttl_days" in asked, replication="replication" in asked,
                allow_lower_replication=args.allow_lower_replication,
                rollup_ttls="rollups" in asked)
            for note in notes:
                print(f"schema: {config.keyspace}: {note}")
        else:
            state = schema.inspect(session, config.keyspace)
        print(state.describe())
        return 0 if not state.problems else 1
    finally:
        cluster.shutdown()


def _parse_since(text: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)
    except (ValueError, IndexError):
        raise ConfigError(f"query: --since {text!r}: use e.g. 90s, 15m, 1h, 2d") from None


def cmd_query(args: argparse.Namespace) -> int:
    from statsfeeder.sinks.cassandra.reader import read_series
    from statsfeeder.sinks.cassandra.session import connect

    config = cassandra_config(args)
    until = int(time.time()) + 60
    since = until - 60 - _parse_since(args.since)
    cluster, session = connect(config)
    try:
        found = read_series(session, config.keyspace, args.vm, args.metric, since, until)
    finally:
        cluster.shutdown()
    rows = [(s.metric, s.instance, int(ts), v, s.unit)
            for s in found for ts, v in zip(s.timestamps.tolist(), s.shown_values(), strict=True)]
    if args.format == "json":
        print(json.dumps([{"metric": m, "instance": i, "timestamp": ts, "value": v, "unit": u}
                          for m, i, ts, v, u in rows]))
    elif args.format == "csv":
        print("metric,instance,timestamp,value,unit")
        for m, i, ts, v, u in rows:
            print(f"{m},{i},{ts},{v},{u}")
    else:
        print(f"{'metric':<26} {'instance':<10} {'time (UTC)':<20} {'value':>12} unit")
        for m, i, ts, v, u in rows:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))
            print(f"{m:<26} {i or '-':<10} {stamp:<20} {v!s:>12} {u}")
    if not rows:
        print(f"query: no samples for {args.vm} {','.join(args.metric)} since {args.since}",
              file=sys.stderr)
        return 1
    return 0


def cmd_sizing(args: argparse.Namespace) -> int:
    _check_ranges(args, {"vms": (1, 10_000_000), "metrics": (1, 10_000), "ttl": (1, 3650),
                         "rf": (1, 9)})
    samples_per_s = args.vms * args.metrics / 20
    ours = args.vms * args.metrics * SAMPLES_PER_DAY * args.ttl * args.rf \
        * MEASURED_BYTES_PER_SAMPLE
    vcd = args.vms * args.metrics * args.ttl * args.rf * VCD_BYTES_PER_METRIC_DAY
    print(f"VMs {args.vms}, metrics/VM {args.metrics}, retention {args.ttl} d, RF {args.rf}")
    print(f"samples written: {samples_per_s:,.0f}/s average, "
          f"{args.vms * args.metrics * 15:,} per 5-minute cycle")
    print(f"statsfeeder: disk {ours / 1e9:,.1f} GB ({MEASURED_BYTES_PER_SAMPLE} B/sample "
          f"measured), ~{args.vms * args.metrics * args.rf / 300:,.0f} row writes/s")
    print(f"vCD KairosDB-era formula: disk {vcd / 1e9:,.1f} GB (114 kB/metric/day), "
          f"{args.vms * args.metrics * args.rf / 10:,.0f} write IOPS")
    from statsfeeder.rollups.schema import sizing_lines
    from statsfeeder.sinks.cassandra.series_index import sizing_line

    print(sizing_line(args.vms, args.ttl, args.rf))

    for line in sizing_lines(args.vms, args.metrics, args.rf, args.hourly_days,
                             args.daily_days):
        print(line)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from statsfeeder.rollups import report

    since, until = report.parse_period(args.start, args.end, args.month)
    print(report.run(cassandra_config(args), since, until, args.by, args.org, args.format),
          end="")
    return 0


def cmd_rollups(args: argparse.Namespace) -> int:
    from statsfeeder.rollups import report
    from statsfeeder.rollups.hook import rebuild

    since, until = report.parse_period(args.start, args.end, None)
    done = asyncio.run(rebuild(cassandra_config(args), since, until))
    print(f"roll-ups: {done.vm_hours} VM-hours, {done.tenant_hours} VDC/org-hours rebuilt "
          f"from {done.samples} samples")
    return 0


def cmd_collect(args: argparse.Namespace) -> int:
    from statsfeeder.service import run_once, run_service

    config = load_config(args.config)
    return asyncio.run(run_once(config) if args.command == "once" else run_service(config))


def cmd_serve(args: argparse.Namespace) -> int:
    from statsfeeder.config import load_read_config
    from statsfeeder.readapi import serve

    cassandra, read_api, telemetry = load_read_config(args.config)
    return asyncio.run(serve(cassandra, read_api, telemetry_listen=telemetry.listen))


def cmd_kairosdb(args: argparse.Namespace) -> int:
    from statsfeeder.sinks.kairosdb.purge import purge

    config = load_config(args.config)
    report = purge(config.kairosdb, args.older_than, yes=args.yes,
                   metrics=[m.name for m in config.collection.metrics])
    print(report.summary())  # says "dry run" itself when nothing was deleted
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from statsfeeder.validate import validate

    config = load_config(args.config)
    print(f"config: {args.config} is valid ({len(config.vcenters)} vCenter(s), "
          f"{len(config.collection.metrics)} metrics)")
    return validate(config, args.offline)


def cmd_entities(args: argparse.Namespace) -> int:
    from statsfeeder.sinks.cassandra.sink import CassandraSink

    sink = CassandraSink(cassandra_config(args))
    sink.open()
    try:
        rows = sink.list_entities()
    finally:
        sink.close()
    for row in sorted(rows, key=lambda r: (r.vcenter or "", r.name or "")):
        print(f"{row.vm_id}\t{row.name}\t{row.org or '-'}\t{row.vdc or '-'}\t"
              f"{row.vapp or '-'}\t{row.vcenter}/{row.moref}")
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="statsfeeder", description=__doc__)
    top.add_argument("-v", "--verbose", action="store_true")
    commands = top.add_subparsers(dest="command", required=True)
    for name, text in (("once", "run one collection cycle for every vCenter and exit"),
                       ("run", "run the service: cycles aligned to the interval")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("-c", "--config", type=Path, required=True)
        sub.set_defaults(handler=cmd_collect)
    serve = commands.add_parser("serve", help="serve the Prometheus query API over the "
                                "stored samples (the cassandra and read_api sections)")
    serve.add_argument("-c", "--config", type=Path, required=True)
    serve.set_defaults(handler=cmd_serve)
    validate = commands.add_parser("validate", help="check the config and reach every endpoint")
    validate.add_argument("-c", "--config", type=Path, required=True)
    validate.add_argument("--offline", action="store_true", help="only check the file")
    validate.set_defaults(handler=cmd_validate)
    schema_cmd = commands.add_parser("schema", help="create, update or show the Cassandra schema")
    schema_cmd.add_argument("schema_action", choices=("create", "update", "show"))
    schema_cmd.add_argument("--allow-lower-replication", action="store_true",
                            help="update: let --replication-factor/--datacenters lower the "
                                 "copies of every sample (then run nodetool cleanup)")
    _cassandra_options(schema_cmd)
    schema_cmd.set_defaults(handler=cmd_schema)
    query = commands.add_parser("query", help="read a VM's stored series")
    query.add_argument("--vm", required=True, help="urn:vcloud:vm:<uuid>")
    query.add_argument("--metric", required=True, action="append",
                       help="metric name; repeat for more")
    query.add_argument("--since", default="1h")
    query.add_argument("--format", choices=("table", "csv", "json"), default="table")
    _cassandra_options(query)
    query.set_defaults(handler=cmd_query)
    report = commands.add_parser("report", help="usage per VM, vApp, VDC or org (roll-ups)")
    report.add_argument("--month", help="a calendar month in UTC: 2026-11")
    report.add_argument("--from", dest="start", help="UTC date or whole hour: 2026-11-01")
    report.add_argument("--to", dest="end", help="end, excluded: 2026-12-01T00:00Z")
    report.add_argument("--by", choices=("vm", "vapp", "vdc", "org"), default="org")
    report.add_argument("--org", help="only this org (its vCD name as stored)")
    report.add_argument("--format", choices=("csv", "json"), default="csv")
    _cassandra_options(report)
    report.set_defaults(handler=cmd_report)
    rollups = commands.add_parser("rollups", help="roll up stored raw samples again")
    rollups.add_argument("rollups_action", choices=("rebuild",))
    rollups.add_argument("--from", dest="start", required=True, help="UTC whole hour or date")
    rollups.add_argument("--to", dest="end", required=True, help="end, excluded")
    _cassandra_options(rollups)
    rollups.set_defaults(handler=cmd_rollups)
    kairosdb = commands.add_parser("kairosdb", help="KairosDB maintenance (hybrid mode)")
    kairosdb.add_argument("kairosdb_action", choices=("purge",))
    kairosdb.add_argument("-c", "--config", type=Path, required=True)
    kairosdb.add_argument("--older-than", type=int, required=True, metavar="DAYS",
                          help="delete datapoints older than this; refused inside the TTL")
    kairosdb.add_argument("--yes", action="store_true", help="really delete (default: dry run)")
    kairosdb.set_defaults(handler=cmd_kairosdb)
    entities = commands.add_parser("entities", help="list the VMs that have stored samples")
    _cassandra_options(entities)
    entities.set_defaults(handler=cmd_entities)
    sizing = commands.add_parser("sizing", help="disk and write rate for an installation")
    sizing.add_argument("--vms", type=int, required=True)
    sizing.add_argument("--metrics", type=int, default=10)
    sizing.add_argument("--ttl", type=int, default=14, help="retention in days")
    sizing.add_argument("--rf", type=int, default=3)
    sizing.add_argument("--hourly-days", type=int, default=90, help="hourly roll-ups' retention")
    sizing.add_argument("--daily-days", type=int, default=400, help="daily roll-ups' retention")
    sizing.set_defaults(handler=cmd_sizing)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    quiet = args.command == "validate"  # its own lines are the report; logs only for problems
    logging.basicConfig(level=logging.DEBUG if args.verbose else
                        logging.WARNING if quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    # The driver logs tracebacks for failures that statsfeeder reports itself, in one line.
    logging.getLogger("cassandra").setLevel(logging.CRITICAL)
    for chatty in ("httpx", "httpcore"):  # one line per request: thousands per cycle
        # never DEBUG: httpcore then logs raw headers, session cookies and tokens included
        logging.getLogger(chatty).setLevel(logging.INFO if args.verbose else logging.WARNING)
    try:
        return int(args.handler(args))
    except StatsfeederError as exc:
        print(f"statsfeeder: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        # A driver error outside the paths that already explain themselves: still one line.
        if type(exc).__module__.split(".")[0] not in ("cassandra", "pyVmomi", "httpx"):
            raise
        text = " ".join(str(exc).split())[:300]
        print(f"statsfeeder: {type(exc).__name__}: {text}", file=sys.stderr)
        return 3
