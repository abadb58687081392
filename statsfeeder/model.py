"""The only types that cross stage boundaries: VMs, counters, and series of samples.

One ``Series`` carries every sample of one (VM, metric, instance) from one query, as numpy
arrays: per-sample Python objects would cost more than the whole parse at 30,000 VMs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

Int64Array = npt.NDArray[np.int64]

REALTIME_INTERVAL = 20
"""Seconds between two realtime samples (PerformanceManager intervalId=20)."""


@dataclass(frozen=True, slots=True)
class Counter:
    """A vCenter performance counter as configured (``group.counter.rollup``) and resolved."""

    name: str
    key: int
    unit: str
    per_instance: bool = False

    @property
    def scale(self) -> float:
        """Factor from vCenter's raw integer to the unit shown: percent comes in hundredths."""
        return 0.01 if self.unit == "percent" else 1.0


@dataclass(frozen=True, slots=True)
class EntityId:
    """Where a VM belongs in vCloud Director; ``vm`` is ``urn:vcloud:vm:<uuid>``."""

    vm: str
    name: str = ""
    vapp: str = ""
    vdc: str = ""
    org: str = ""


@dataclass(frozen=True, slots=True)
class VirtualMachine:
    vcenter: str
    moref: str
    name: str
    instance_uuid: str
    bios_uuid: str
    powered_on: bool
    entity: EntityId | None = None
    vcenter_uuid: str = ""
    """The vCenter's own ``about.instanceUuid``: unlike ``vcenter`` (a name in the
    configuration) it survives renaming the configuration entry."""


@dataclass(slots=True)
class Series:
    """Samples of one metric instance of one VM: timestamps ascending and unique (epoch
    seconds, as vCenter stamped them) and vCenter's raw integer values."""

    vcenter: str
    moref: str
    counter: Counter
    instance: str
    timestamps: Int64Array
    values: Int64Array
    entity: EntityId | None = None

    def __len__(self) -> int:
        return int(self.timestamps.shape[0])

    @property
    def metric(self) -> str:
        return self.counter.name

    def scaled(self) -> npt.NDArray[np.float64]:
        return self.values.astype(np.float64) * self.counter.scale


@dataclass(slots=True)
class SeriesBatch:
    """What one vCenter query chunk produced, with the accounting that keeps gaps visible."""

    vcenter: str
    series: list[Series] = field(default_factory=list)
    expected_samples: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def samples(self) -> int:
        return sum(len(s) for s in self.series)

    def drop(self, reason: str, count: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + count


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What a sink acknowledged for one write: ``rows`` in the sink's own unit (Cassandra rows,
    KairosDB metric entries), ``samples`` stored, ``requests`` sent."""

    rows: int
    samples: int
    requests: int
