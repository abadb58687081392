"""The roll-up hooks as the service wires them, against vcsim and Cassandra: every VM-hour a
cycle stores is marked before its watermark moves (a mark that cannot be written keeps the
watermark back, so the chunk is re-read), and the worker turns the marks into roll-ups equal
to the raw samples."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from statsfeeder.config import load_config
from statsfeeder.rollups.reader import read_vm
from statsfeeder.service import build_service
from statsfeeder.sinks.cassandra import schema
from statsfeeder.sinks.cassandra.reader import read_series
from statsfeeder.sinks.cassandra.session import connect
from tests.helpers import drop_keyspace
from tests.integration.test_pipeline import METRICS, write_config


async def test_service_marks_then_rolls_up(tmp_path: Path, vcsim_env: dict[str, str],
                                           cassandra_env: dict[str, str]) -> None:
    keyspace = f"roll_{uuid.uuid4().hex[:8]}"
    config = load_config(write_config(tmp_path / "c.yaml", vcsim_env, cassandra_env, keyspace),
                         environ={"VCSIM_PASSWORD": vcsim_env["VCSIM_PASSWORD"],
                                  "CASSANDRA_PASSWORD": cassandra_env["CASSANDRA_PASSWORD"]})
    ddl = config.cassandra.model_copy(update={"request_timeout_seconds": 60.0})
    cluster, session = connect(ddl)  # schema changes on a busy node take longer
    schema.create(session, ddl)
    service = build_service(config)
    assert service.rollups is not None
    await service.open()
    [pipeline] = service.pipelines
    try:
        await service.start_pipeline(pipeline)
        # Marks cannot be written (the table is gone): stored, but the watermarks stay.
        session.execute(f"DROP TABLE {keyspace}.rollup_dirty")
        failed = await pipeline.run_cycle()
        assert failed.written["cassandra"] > 0 and failed.sink_failures["cassandra"] > 0
        assert pipeline.watermarks["cassandra"] == {}
        schema.update(session, ddl, ttl=False, replication=False)  # puts the table back
        done = await pipeline.run_cycle()
        assert done.ok and pipeline.watermarks["cassandra"]
        marked = {(row.vm_id, int(row.hour.timestamp()) // 3600)
                  for row in session.execute(f"SELECT vm_id, hour FROM {keyspace}.rollup_dirty")}
        vms = {row.vm_id for row in session.execute(f"SELECT vm_id FROM {keyspace}.entities")}
        assert vms and {vm for vm, _ in marked} == vms
        # The worker, an hour later: every marked VM-hour rolled up, equal to the raw rows.
        worker = service.rollups.worker()
        now = time.time()
        worker.clock = lambda: now + 2 * 3600
        report = await worker.run_pass()
        assert report.vm_hours == len(marked)
        for vm, hour in marked:
            since, until = hour * 3600, hour * 3600 + 3600
            raw = {(s.metric, s.instance): s.values
                   for s in read_series(session, keyspace, vm, METRICS, since, until)}
            rolled = {(s.metric, s.instance): s.points[0].agg
                      for s in read_vm(session, keyspace, vm, METRICS, "hourly", since, until)}
            assert raw.keys() == rolled.keys()
            for key, values in raw.items():
                agg = rolled[key]
                assert (agg.min, agg.max, agg.sum, agg.count, agg.last) == (
                    values.min(), values.max(), values.sum(), values.size, values[-1])
        assert list(session.execute(f"SELECT vm_id FROM {keyspace}.rollup_dirty")) == []
    finally:
        drop_keyspace(session, keyspace)
        cluster.shutdown()
        service.close()
