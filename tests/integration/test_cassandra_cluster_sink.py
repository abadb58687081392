"""The sink on three nodes at replication factor 3: a node stopped during sustained writes."""

from __future__ import annotations

import asyncio
import time
import uuid

import numpy as np
import pytest

from peers import cassandra as cassandra_peer
from statsfeeder.model import Counter, EntityId, Series
from statsfeeder.sinks.cassandra import schema
from statsfeeder.sinks.cassandra.reader import read_series
from statsfeeder.sinks.cassandra.session import connect
from statsfeeder.sinks.cassandra.sink import CassandraSink
from tests.helpers import cassandra_config, drop_keyspace

pytestmark = pytest.mark.cluster

STOPPED = 2  # 127.0.0.3, not the seed
COUNTERS = [Counter(f"m{i}.metric.average", i, "number") for i in range(10)]
VMS = 40


def round_of_series(vms: list[str], round_start: int) -> list[Series]:
    stamps = round_start + 20 * np.arange(1, 16, dtype=np.int64)
    return [Series("vc", f"vm-{i}", counter, "", stamps,
                   np.arange(15, dtype=np.int64) + round_start % 1000, EntityId(vm))
            for i, vm in enumerate(vms) for counter in COUNTERS]


async def test_node_down_during_sustained_writes_loses_and_doubles_nothing(
        cassandra_cluster_env: dict[str, str]) -> None:
    version = ".".join(cassandra_cluster_env["CASSANDRA_VERSION"].split(".")[:2])
    keyspace = f"cluster_{uuid.uuid4().hex[:8]}"
    config = cassandra_config(cassandra_cluster_env, keyspace=keyspace,
                              consistency="LOCAL_QUORUM", replication={"replication_factor": 3},
                              request_timeout_seconds=5, write_retries=10)
    cluster, session = connect(config)
    schema.create(session, config)
    cluster.shutdown()
    sink = CassandraSink(config)
    sink.open()
    vms = [f"urn:vcloud:vm:{uuid.uuid4()}" for _ in range(VMS)]
    first = (int(time.time()) // 300 - 200) * 300
    written = 0
    rounds = 0
    try:
        async def write_rounds(count: int) -> None:
            nonlocal written, rounds
            for _ in range(count):
                result = await sink.write(round_of_series(vms, first + 300 * rounds))
                written += result.samples
                rounds += 1

        await write_rounds(10)
        stopper = asyncio.create_task(asyncio.to_thread(cassandra_peer.stop_node, STOPPED,
                                                        version=version))
        await write_rounds(20)  # the node goes down while these are in flight
        assert await stopper
        await write_rounds(20)  # written with a replica down: LOCAL_QUORUM is 2 of 3
        await asyncio.to_thread(cassandra_peer.start_node, STOPPED, version=version)
        await write_rounds(10)
        assert rounds == 60 and written == 60 * VMS * len(COUNTERS) * 15

        stored = 0
        for vm in vms:
            found = await asyncio.to_thread(read_series, sink.session, keyspace, vm,
                                            [c.name for c in COUNTERS], first, first + 300 * 61)
            assert len(found) == len(COUNTERS)
            for series in found:
                assert len(np.unique(series.timestamps)) == len(series.timestamps)
                assert np.all(np.diff(series.timestamps) == 20)  # no gap at the outage
                stored += len(series.timestamps)
        assert stored == written
    finally:
        await asyncio.to_thread(cassandra_peer.start_node, STOPPED, version=version)
        await asyncio.to_thread(drop_keyspace, sink.session, keyspace)
        sink.close()
