"""A small generated fleet for the read API's tests: VMs in two orgs, three VDCs, four vApps
and one VM vCD does not manage, their 20-s samples written through the real CassandraSink,
the same samples as OpenMetrics text for Prometheus, and a read API started over them."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import httpx
import numpy as np

from statsfeeder.config import ReadApiConfig
from statsfeeder.model import Counter, EntityId, Series, VirtualMachine
from statsfeeder.readapi.names import prometheus_name
from statsfeeder.readapi.server import Authorizer, ReadApi, provider_wide
from statsfeeder.sinks.cassandra.sink import CassandraSink
from tests.helpers import cassandra_config, drop_keyspace, free_port, open_new_keyspace

COUNTERS = (Counter("cpu.usage.average", 2, "percent"),
            Counter("cpu.usagemhz.average", 6, "megaHertz"),
            Counter("mem.usage.average", 24, "percent"),
            Counter("disk.read.average", 130, "kiloBytesPerSecond", per_instance=True),
            Counter("net.received.average", 143, "kiloBytesPerSecond"))
DEVICES = {"disk.read.average": ("", "scsi0:0", "scsi0:1")}

# (moref, name, vapp, vdc, org); the last is not vCD-managed (kept under a vCenter id).
LAYOUT = (("vm-11", "web-1", "web", "gold-a", "acme"),
          ("vm-12", "web-2", "web", "gold-a", "acme"),
          ("vm-13", "db-1", "db", "gold-b", "acme"),
          ("vm-21", "app-1", "shop", "silver", "globex"),
          ("vm-22", "app-2", "shop", "silver", "globex"),
          ("vm-23", "batch-1", "batch", "silver", "globex"),
          ("vm-99", "orphan", "", "", ""))




@dataclass
class Fleet:
    """Samples from ``start`` (exclusive) to ``end`` (inclusive) every 20 s, with holes: vm-23
    stops at ``stop_23`` (the lookback edge), vm-22 has a 20-minute gap."""

    start: int
    end: int
    series: list[Series] = field(default_factory=list)
    vms: list[VirtualMachine] = field(default_factory=list)

    @property
    def stop_23(self) -> int:
        return self.end - 3600

    @classmethod
    def generate(cls, start: int, end: int, seed: int = 7) -> Fleet:
        fleet = cls(start, end)
        random = np.random.default_rng(seed)
        stamps_all = np.arange(start + 20, end + 1, 20, dtype=np.int64)
        for number, (moref, name, vapp, vdc, org) in enumerate(LAYOUT):
            if org:
                entity = EntityId(f"urn:vcloud:vm:{uuid.UUID(int=number + 1)}", name, vapp,
                                  vdc, org)
            else:
                entity = EntityId(f"urn:vcenter:vc1:vm:{uuid.UUID(int=999)}", name)
            fleet.vms.append(VirtualMachine("vc1", moref, name, str(uuid.UUID(int=number)),
                                            "", True, entity))
            stamps = stamps_all
            if moref == "vm-23":
                stamps = stamps[stamps <= fleet.stop_23]
            if moref == "vm-22":
                middle = start + (end - start) // 2
                stamps = stamps[(stamps <= middle) | (stamps > middle + 1200)]
            for counter in COUNTERS:
                for device in DEVICES.get(counter.name, ("",)):
                    # Distinct ranges per VM keep topk free of ties.
                    base = 1000 + 997 * number + 131 * len(device)
                    values = base + random.integers(0, 900, len(stamps))
                    fleet.series.append(Series("vc1", moref, counter, device, stamps.copy(),
                                               values.astype(np.int64), entity))
        return fleet

    def openmetrics(self) -> str:
        """The same samples, in the unit shown, as OpenMetrics text (timestamps in s)."""
        families: dict[str, list[str]] = {}
        for item in self.series:
            name = prometheus_name(item.counter.name, item.counter.unit)
            assert item.entity is not None
            labels = {"vm": item.entity.vm, "vm_name": item.entity.name,
                      "vapp": item.entity.vapp, "vdc": item.entity.vdc,
                      "org": item.entity.org, "vcenter": item.vcenter, "moref": item.moref,
                      "device": item.instance}
            text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if v)
            values = item.values.astype(np.float64) * item.counter.scale
            families.setdefault(name, []).extend(
                f"{name}{{{text}}} {value!r} {stamp}"
                for stamp, value in zip(item.timestamps.tolist(), values.tolist(),
                                        strict=True))
        lines: list[str] = []
        for name, samples in sorted(families.items()):
            lines.append(f"# TYPE {name} gauge")
            lines.extend(samples)
        return "\n".join(lines) + "\n# EOF\n"


def create_keyspace(cassandra_env: dict[str, str], **extra: object) -> CassandraSink:
    config = cassandra_config(cassandra_env, keyspace=f"ra_{uuid.uuid4().hex[:10]}",
                              **extra)
    return open_new_keyspace(config)


async def store_fleet(sink: CassandraSink, fleet: Fleet) -> None:
    sink.record_counters(COUNTERS)
    await sink.save_entities(fleet.vms)
    await sink.write(fleet.series)


def drop(sink: CassandraSink) -> None:
    with contextlib.suppress(Exception):
        drop_keyspace(sink.session, sink.config.keyspace)
    sink.close()


@contextlib.contextmanager
def stored_fleet(cassandra_env: dict[str, str], fleet: Fleet) -> Iterator[CassandraSink]:
    """A keyspace of its own holding ``fleet``, dropped afterwards (a module fixture's body)."""
    stored = create_keyspace(cassandra_env)
    asyncio.run(store_fleet(stored, fleet))
    try:
        yield stored
    finally:
        drop(stored)


@contextlib.asynccontextmanager
async def read_api(sink: CassandraSink, authorize: Authorizer = provider_wide,
                   **settings: object) -> AsyncIterator[tuple[ReadApi, httpx.AsyncClient]]:
    config = ReadApiConfig.model_validate({"enabled": True, "listen": f"127.0.0.1:{free_port()}",
                                           **settings})
    api = ReadApi(config, sink.config, authorize)
    await api.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api.port}",
                                     timeout=120) as client:
            yield api, client
    finally:
        await api.stop()


@contextlib.contextmanager
def served(sink: CassandraSink, authorize: Authorizer = provider_wide,
           **settings: object) -> Iterator[str]:
    """The read API running on its own event loop in a thread (for blocking clients such as
    promtool and module-scoped fixtures); yields its base URL."""
    config = ReadApiConfig.model_validate({"enabled": True, "listen": f"127.0.0.1:{free_port()}",
                                           **settings})
    api = ReadApi(config, sink.config, authorize)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(api.start(), loop).result(timeout=1500)
    try:
        yield f"http://127.0.0.1:{api.port}"
    finally:
        asyncio.run_coroutine_threadsafe(api.stop(), loop).result(timeout=60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
