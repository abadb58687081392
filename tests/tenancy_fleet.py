"""A small fleet of VMs in three vCD orgs and one VM vCD does not manage (no org), written
through the real CassandraSink, for the read API's tenancy and dashboard tests: every counter
the shipped dashboards use, aggregates and per-device series (two disks, one NIC), the last
two hours on the 20-second grid.

Values are chosen so that each VM's and each org's totals differ: a sum or a count that
included another org's VMs would show."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from dataclasses import dataclass

import numpy as np

from statsfeeder.config import CassandraConfig, ReadApiConfig
from statsfeeder.model import Counter, EntityId, Series, VirtualMachine
from statsfeeder.readapi.server import ReadApi
from tests.helpers import open_new_keyspace

CPU = Counter("cpu.usage.average", 2, "percent")
MHZ = Counter("cpu.usagemhz.average", 6, "megaHertz")
MEM = Counter("mem.usage.average", 24, "percent")
DISK_READ = Counter("disk.read.average", 130, "kiloBytesPerSecond", per_instance=True)
DISK_WRITE = Counter("disk.write.average", 131, "kiloBytesPerSecond", per_instance=True)
PROVISIONED = Counter("disk.provisioned.latest", 240, "kiloBytes", per_instance=True)
NET_RX = Counter("net.received.average", 143, "kiloBytesPerSecond", per_instance=True)
NET_TX = Counter("net.transmitted.average", 144, "kiloBytesPerSecond", per_instance=True)
COUNTERS = (CPU, MHZ, MEM, DISK_READ, DISK_WRITE, PROVISIONED, NET_RX, NET_TX)
DEVICES = {DISK_READ: ("scsi0:0", "scsi0:1"), DISK_WRITE: ("scsi0:0", "scsi0:1"),
           PROVISIONED: ("scsi0:0", "scsi0:1"), NET_RX: ("4000",), NET_TX: ("4000",)}
HOURS = 2


@dataclass(frozen=True)
class FleetVm:
    urn: str
    name: str
    vapp: str
    vdc: str
    org: str
    moref: str
    cpu_percent: float
    """Its constant CPU usage: the value every sample of cpu.usage.average has."""


def fleet() -> list[FleetVm]:
    layout = [("acme", "acme-gold", "web", "web-1"), ("acme", "acme-gold", "web", "web-2"),
              ("acme", "acme-silver", "db", "db-1"), ("beta", "beta-vdc", "app", "app-1"),
              ("beta", "beta-vdc", "app", "app-2"), ("gamma", "gamma-vdc", "batch", "job-1"),
              ("", "", "", "orphan")]
    return [FleetVm(f"urn:vcloud:vm:{uuid.uuid4()}" if org else
                    f"urn:vcenter:vc1:vm:{uuid.uuid4()}", name, vapp, vdc, org, f"vm-{100 + i}",
                    cpu_percent=float(1 + i * 7))
            for i, (org, vdc, vapp, name) in enumerate(layout)]


def raw_value(vm_index: int, counter: Counter, device: str) -> int:
    """vCenter's raw integer for one sample (constant over time: sums are easy to check)."""
    if counter is CPU:
        return (1 + vm_index * 7) * 100  # hundredths of a percent
    base = (vm_index + 1) * 1000 + COUNTERS.index(counter) * 10
    return base + (int(device.split(":")[-1]) % 10 if device else 0)


async def write_fleet(config: CassandraConfig, vms: list[FleetVm], now: int | None = None
                      ) -> int:
    """Creates the keyspace and writes every VM's series up to ``now``; returns ``now``."""
    now = now or int(time.time())
    end = now - now % 20
    stamps = np.arange(end - HOURS * 3600 + 20, end + 1, 20, dtype=np.int64)
    sink = await asyncio.to_thread(open_new_keyspace, config, COUNTERS)
    try:
        series = []
        for index, vm in enumerate(vms):
            entity = EntityId(vm.urn, vm.name, vm.vapp, vm.vdc, vm.org)
            for counter in COUNTERS:
                for device in ("", *DEVICES.get(counter, ())):
                    values = np.full(stamps.shape, raw_value(index, counter, device),
                                     dtype=np.int64)
                    series.append(Series("vc1", vm.moref, counter, device, stamps, values,
                                         entity))
        await sink.save_entities([
            VirtualMachine("vc1", vm.moref, vm.name, vm.urn, vm.urn, True,
                           EntityId(vm.urn, vm.name, vm.vapp, vm.vdc, vm.org)) for vm in vms])
        await sink.write(series)
    finally:
        sink.close()
    return end


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ApiThread:
    """The real read API (``ReadApi``) over a keyspace, served from a thread of its own with
    its own event loop, so synchronous tests and module-scoped fixtures can share it."""

    def __init__(self, cassandra: CassandraConfig, read_api: dict[str, object]) -> None:



        port = free_port()
        config = ReadApiConfig.model_validate(
            {"enabled": True, "listen": f"127.0.0.1:{port}", **read_api},
            context={"environ": {}})
        self.api = ReadApi(config, cassandra)
        self.url = f"{'https' if config.tls else 'http'}://127.0.0.1:{port}"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="read-api")

    def __enter__(self) -> ApiThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.api.start(), self._loop).result(600)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.api.stop(), self._loop).result(60)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()
