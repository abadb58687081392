"""``statsfeeder validate``: check the configuration, then reach every configured endpoint
(vCenters, Cassandra, the vCD API, KairosDB) and report each in one line."""

from __future__ import annotations

import sys

from statsfeeder.config import Config
from statsfeeder.errors import StatsfeederError


def _validate_vcd(config: Config) -> int:
    from statsfeeder.transforms.vcd import VcdApiResolver

    assert config.vcd.api is not None
    resolver = VcdApiResolver(config.vcd.api, {vc.name: vc.url for vc in config.vcenters})
    try:
        known = resolver.check()
    except StatsfeederError as exc:
        print(f"statsfeeder: {exc}", file=sys.stderr)
        return 1
    finally:
        resolver.close()
    matched = {vc.vcenter for vc in known if vc.vcenter is not None}
    print(f"vCD {resolver.base_url}: logged in; it manages {len(known)} vCenter(s)")
    status = 0
    for vc in config.vcenters:
        if vc.name not in matched:
            print(f"statsfeeder: vcd.api: vCenter {vc.name} ({vc.url}) is not among vCD's "
                  "vCenters: its VMs keep vcd.unmapped (set vcd.api.vcenter_names)",
                  file=sys.stderr)
            status = 1
    return status


def _validate_read_api(config: Config) -> int:
    """The API's certificate loads, and someone can get in."""
    from statsfeeder.readapi.auth import server_context

    api = config.read_api
    try:
        if api.tls is not None:
            server_context(api.tls)
    except StatsfeederError as exc:
        print(f"statsfeeder: {exc}", file=sys.stderr)
        return 1
    if not (api.tokens or api.vcd_sessions or api.anonymous):
        print("statsfeeder: read_api: no tokens and no vcd_sessions: every request would be "
              "refused (read_api.tokens)", file=sys.stderr)
        return 1
    return 0


def validate(config: Config, offline: bool) -> int:
    """Exit status 0 when everything answered as expected; each problem is one line."""
    status = _validate_read_api(config) if config.read_api.enabled else 0
    if offline:
        return status
    from statsfeeder.sinks.cassandra import schema
    from statsfeeder.sinks.cassandra.session import connect
    from statsfeeder.sources.vcenter.probe import probe
    from statsfeeder.sources.vcenter.source import VCenterSource

    for vc in config.vcenters:
        source = VCenterSource(vc, config.collection)  # login only: no inventory read
        try:
            source.client.connect()
            source.client.current_time()
            print(f"vCenter {vc.name}: reachable, logged in")
            # counters, one QueryPerf; bounded and any answer one line, as in a cycle
            checked = source.client.invoke("validate probe", probe, source.client,
                                           config.collection,
                                           timeout=vc.connect_timeout_seconds
                                           + 3 * vc.read_timeout_seconds)
            for note in checked.notes:
                print(note)
            for problem in checked.problems:
                print(f"statsfeeder: {problem}", file=sys.stderr)
                status = 1
        except StatsfeederError as exc:
            print(f"statsfeeder: {exc}", file=sys.stderr)
            status = 1
        finally:
            source.client.close()
    if config.cassandra.enabled:
        try:
            cluster, session = connect(config.cassandra)
            try:
                state = schema.check(session, config.cassandra.keyspace)
            finally:
                cluster.shutdown()
            print(f"cassandra: reachable, keyspace {config.cassandra.keyspace} as expected")
            mismatch = schema.retention_mismatch(state, config.cassandra)
            if mismatch:  # a warning: writes follow the table, so nothing is broken
                print(f"statsfeeder: warning: {mismatch}", file=sys.stderr)
        except StatsfeederError as exc:
            print(f"statsfeeder: {exc}", file=sys.stderr)
            status = 1
    if config.vcd.api is not None:
        status |= _validate_vcd(config)
    if config.watermarks_file is not None:
        from statsfeeder.watermarks import WatermarkFile

        try:
            WatermarkFile(config.watermarks_file).open()
            print(f"state: watermarks file {config.watermarks_file} readable and writable")
        except StatsfeederError as exc:
            print(f"statsfeeder: {exc}", file=sys.stderr)
            status = 1
    if config.kairosdb.enabled:
        from statsfeeder.sinks.kairosdb.sink import KairosDBSink

        kairosdb = KairosDBSink(config.kairosdb)
        try:
            kairosdb.open()
            print(f"kairosdb: healthy at {config.kairosdb.url}")
        except StatsfeederError as exc:
            print(f"statsfeeder: {exc}", file=sys.stderr)
            status = 1
        finally:
            kairosdb.close()
    return status

