"""The read API benchmark's data: generated series written straight through the real
CassandraSink, and the same samples as an OpenMetrics file for ``promtool tsdb
create-blocks-from openmetrics``, so both stores hold identical values.

Fleet: ``orgs`` x ``vms_per_org`` VMs (10 x 1,000). The first org's VMs have CPU usage for
the whole period (24 h by default); its first VM has all ten default counters for the whole
period; every other VM has 15 minutes of CPU usage at the period's start (enough to exist for
label queries over the period, and absent from the last hours). Values: random walks in
vCenter's raw integers, seeded, so a rerun regenerates the same fleet.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from statsfeeder.config import CassandraConfig
from statsfeeder.model import Counter, EntityId, Series, VirtualMachine
from statsfeeder.readapi.names import prometheus_name
from tests.helpers import open_new_keyspace

COUNTERS = (
    Counter("cpu.usage.average", 2, "percent"), Counter("cpu.usagemhz.average", 6, "megaHertz"),
    Counter("cpu.usage.maximum", 3, "percent"), Counter("mem.usage.average", 24, "percent"),
    Counter("disk.provisioned.latest", 240, "kiloBytes"),
    Counter("disk.used.latest", 241, "kiloBytes"),
    Counter("disk.read.average", 130, "kiloBytesPerSecond"),
    Counter("disk.write.average", 131, "kiloBytesPerSecond"),
    Counter("net.received.average", 143, "kiloBytesPerSecond"),
    Counter("net.transmitted.average", 144, "kiloBytesPerSecond"),
)
CPU = COUNTERS[0]
LEVEL = {"percent": 3000, "megaHertz": 900, "kiloBytes": 40_000_000,
         "kiloBytesPerSecond": 400}
NAMESPACE = uuid.UUID("6f1d3c52-3c1b-4b8e-9d54-0d6c3b1f0a11")
SHORT_SECONDS = 900
SERIES_PER_WRITE = 2_000


@dataclass(frozen=True)
class BenchVm:
    index: int
    urn: str
    name: str
    vapp: str
    vdc: str
    org: str
    moref: str

    def labels(self) -> dict[str, str]:
        return {"vm": self.urn, "vm_name": self.name, "vapp": self.vapp, "vdc": self.vdc,
                "org": self.org, "vcenter": "vc1", "moref": self.moref}


def fleet(orgs: int, vms_per_org: int) -> list[BenchVm]:
    vms = []
    for o in range(orgs):
        for v in range(vms_per_org):
            i = o * vms_per_org + v
            vms.append(BenchVm(i, f"urn:vcloud:vm:{uuid.uuid5(NAMESPACE, str(i))}",
                               f"vm-{i:05d}", f"vapp-{o:02d}-{v // 20:03d}",
                               f"vdc-{o:02d}-{v % 4}", f"org-{o:02d}", f"vm-{1000 + i}"))
    return vms


@dataclass(frozen=True)
class Plan:
    end: int
    """The last sample's timestamp (a multiple of 20 s)."""
    hours: int

    @property
    def start(self) -> int:
        return self.end - self.hours * 3600


def plan(hours: int, now: float | None = None) -> Plan:
    end = int(now if now is not None else time.time()) - 60
    return Plan(end - end % 300, hours)


def series_of(vms: list[BenchVm], vms_per_org: int, p: Plan
              ) -> Iterator[tuple[BenchVm, Counter, np.ndarray, np.ndarray]]:
    """Every generated series, in a fixed order (first org's VMs first)."""
    rng = np.random.default_rng(17)
    full = np.arange(p.start + 20, p.end + 1, 20, dtype=np.int64)
    short = full[full <= p.start + SHORT_SECONDS]
    for vm in vms:
        counters = COUNTERS if vm.index == 0 else (CPU,)
        stamps = full if vm.index < vms_per_org else short
        for counter in counters:
            level = LEVEL[counter.unit]
            steps = rng.integers(-level // 20, level // 20 + 1, stamps.shape[0])
            values = np.clip(level + np.cumsum(steps), 0, None).astype(np.int64)
            if counter.unit == "percent":
                values = np.minimum(values, 10_000)
            yield vm, counter, stamps, values


async def write_cassandra(config: CassandraConfig, vms: list[BenchVm], vms_per_org: int,
                          p: Plan) -> tuple[int, float]:
    """Creates the keyspace and writes the fleet; returns (samples, seconds)."""
    sink = await asyncio.to_thread(open_new_keyspace, config, COUNTERS)
    began = time.perf_counter()
    samples = 0
    try:
        await sink.save_entities([
            VirtualMachine("vc1", vm.moref, vm.name, vm.urn, vm.urn, True,
                           EntityId(vm.urn, vm.name, vm.vapp, vm.vdc, vm.org)) for vm in vms])
        batch: list[Series] = []
        for vm, counter, stamps, values in series_of(vms, vms_per_org, p):
            batch.append(Series("vc1", vm.moref, counter, "", stamps, values,
                                EntityId(vm.urn, vm.name, vm.vapp, vm.vdc, vm.org)))
            if len(batch) >= SERIES_PER_WRITE:
                samples += (await sink.write(batch)).samples
                batch = []
        if batch:
            samples += (await sink.write(batch)).samples
    finally:
        sink.close()
    return samples, time.perf_counter() - began


def write_openmetrics(path: Path, vms: list[BenchVm], vms_per_org: int, p: Plan) -> int:
    """The same samples in OpenMetrics text, families contiguous; returns samples."""
    by_family: dict[str, list[tuple[BenchVm, Counter, np.ndarray, np.ndarray]]] = {}
    for item in series_of(vms, vms_per_org, p):
        by_family.setdefault(prometheus_name(item[1].name, item[1].unit), []).append(item)
    samples = 0
    with path.open("w") as out:
        for family, items in by_family.items():
            out.write(f"# TYPE {family} gauge\n")
            for vm, counter, stamps, values in items:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(vm.labels().items()))
                prefix = f"{family}{{{labels}}} "
                scaled = values.astype(np.float64) * counter.scale
                out.write("".join(f"{prefix}{v!r} {t}\n"
                                  for v, t in zip(scaled.tolist(), stamps.tolist(),
                                                  strict=True)))
                samples += len(stamps)
        out.write("# EOF\n")
    return samples
