"""The roll-up tables through ``statsfeeder schema``: created beside the raw table with their
own retention, added in place to a keyspace made before them, retention changed by update."""

from __future__ import annotations

import uuid

import pytest

from statsfeeder.errors import SchemaMismatch
from statsfeeder.rollups.schema import EXPECTED_COLUMNS
from statsfeeder.sinks.cassandra import schema
from statsfeeder.sinks.cassandra.session import connect
from tests.helpers import cassandra_config, drop_keyspace
from tests.integration.test_cassandra_sink import cli

pytestmark = pytest.mark.cassandra_matrix


def test_schema_create_update_show_roll_up_tables(cassandra_env: dict[str, str]) -> None:
    ks = f"t_{uuid.uuid4().hex[:12]}"
    created = cli("schema", "create", "--keyspace", ks, env=cassandra_env)
    assert created.returncode == 0, created.stderr
    assert "rollup_hourly TTL: 90 days" in created.stdout
    assert "rollup_daily TTL: 400 days" in created.stdout
    assert "rollup_tenant_daily TTL: 400 days" in created.stdout
    config = cassandra_config(cassandra_env, keyspace=ks)
    cluster, session = connect(config)
    try:
        options = {row.table_name: (row.compaction, row.default_time_to_live)
                   for row in session.execute(
                       "SELECT table_name, compaction, default_time_to_live "
                       "FROM system_schema.tables WHERE keyspace_name = %s", (ks,))}
        assert options["rollup_hourly"][0]["compaction_window_size"] == "7"
        assert options["rollup_daily"][0]["compaction_window_size"] == "30"
        assert options["rollup_dirty"][1] == 72 * 3600
        # A keyspace from before the roll-ups: the service refuses it with the way out ...
        for table in EXPECTED_COLUMNS:
            session.execute(f"DROP TABLE {ks}.{table}")
        with pytest.raises(SchemaMismatch, match=r"rollup_.* is missing; run 'statsfeeder "
                                                 "schema update'"):
            schema.check(session, ks)
        # ... and update adds them, with the retention asked for.
        updated = cli("schema", "update", "--keyspace", ks, "--hourly-ttl", "30",
                      "--daily-ttl", "730", env=cassandra_env)
        assert updated.returncode == 0, updated.stderr
        assert "rollup_hourly TTL: 30 days" in updated.stdout
        assert "rollup_daily TTL: 730 days" in updated.stdout
        schema.check(session, ks)
        shown = cli("schema", "show", "--keyspace", ks, env=cassandra_env)
        assert "rollup_tenant_hourly TTL: 30 days" in shown.stdout
    finally:
        drop_keyspace(session, ks)
        cluster.shutdown()
