"""``vcd.unmapped: skip``: VMs no resolver knows are never asked of vCenter (checked in a traced
vcsim's SOAP log), counted by reason, and collected from the cycle after a resolver learns
them."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator

import pytest

from peers import common, vcsim
from peers.common import PeerError
from statsfeeder.pipeline import Pipeline
from statsfeeder.sinks.cassandra import schema
from statsfeeder.sinks.cassandra.session import connect
from statsfeeder.sinks.cassandra.sink import CassandraSink
from statsfeeder.sources.vcenter.source import VCenterSource
from statsfeeder.telemetry import Telemetry
from statsfeeder.transforms.retag import Retagger, StaticMapResolver
from tests.helpers import cassandra_config, collection_config, drop_keyspace, vcenter_config

Env = dict[str, str]
TRACED = ("vcsim-skip-trace", 18971)
ENTITY = re.compile(r'<entity type="VirtualMachine">([^<]+)</entity>')


@pytest.fixture(scope="module")
def traced_env() -> Iterator[Env]:
    try:
        yield vcsim.start_instance(*TRACED, vms=4, trace=True)
    except PeerError as exc:
        pytest.fail(f"vcsim instance {TRACED[0]} could not start: {exc}", pytrace=False)
    finally:
        vcsim.stop_instance(TRACED[0])


def asked_in_query_perf() -> list[str]:
    """Every VM moref sent in a QueryPerf request, from the instance's SOAP trace."""
    trace = (common.RUN / TRACED[0] / "trace.log").read_text(errors="replace")
    asked = []
    for line in trace.splitlines():
        if line.startswith("Request:") and "<QueryPerf " in line:
            asked += ENTITY.findall(line)
    return asked


async def test_skipped_vms_are_never_queried(traced_env: Env, cassandra_env: Env) -> None:
    keyspace = f"skip_{uuid.uuid4().hex[:8]}"
    config = cassandra_config(cassandra_env, keyspace=keyspace)
    cluster, session = connect(config)
    schema.create(session, config)
    sink = CassandraSink(config)
    await asyncio.to_thread(sink.open)
    source = VCenterSource(vcenter_config(traced_env, "traced"),
                           collection_config(metrics=["cpu.usage.average"]))
    await source.start()
    try:
        on = sorted(source.powered_on())
        assert len(on) >= 4
        mapped, unmapped = on[:2], on[2:]
        entries = [{"vm_id": f"urn:vcloud:vm:{uuid.uuid4()}", "moref": m} for m in mapped]
        retagger = Retagger([StaticMapResolver(entries, "test")], unmapped="skip")
        telemetry = Telemetry()
        pipeline = Pipeline(source, [sink], retagger, telemetry, sink)
        before = len(asked_in_query_perf())

        report = await pipeline.run_cycle()

        asked = asked_in_query_perf()[before:]
        assert sorted(set(asked)) == mapped, asked  # the skipped VMs' morefs never went out
        assert report.ok and report.vms_queried == len(mapped)
        assert report.collected > 0 and "not_vcd_managed" not in report.dropped
        assert report.skipped_vms == {"not_vcd_managed": len(unmapped)}
        assert f"VMs not queried: not_vcd_managed={len(unmapped)}" in report.summary()
        assert retagger.skipped == {"not_vcd_managed": len(unmapped)}
        assert telemetry.registry.get_sample_value(
            "statsfeeder_vms", {"vcenter": "traced", "state": "skipped"}) == len(unmapped)
        # Once every VM's samples up to now are stored, the lag covers the collected VMs only.
        assert telemetry.registry.get_sample_value(
            "statsfeeder_watermark_lag_seconds", {"vcenter": "traced"}) is not None

        # vCD adopts the other VMs: they are asked from the next cycle on.
        entries += [{"vm_id": f"urn:vcloud:vm:{uuid.uuid4()}", "moref": m} for m in unmapped]
        pipeline.retagger = Retagger([StaticMapResolver(entries, "test")], unmapped="skip")
        seen = len(asked_in_query_perf())
        again = await pipeline.run_cycle()
        assert set(asked_in_query_perf()[seen:]) >= set(unmapped)
        assert again.ok and again.skipped_vms == {}
    finally:
        source.client.close()
        sink.close()
        drop_keyspace(session, keyspace)
        cluster.shutdown()
