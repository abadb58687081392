"""The Prometheus face of the stored series: metric names (and their inverse) and labels.

A stored counter ``group.counter.rollup`` with vCenter unit ``u`` is the Prometheus metric
``vsphere_vm_<group>_<counter>_<rollup>_<unit suffix>``, lower case, e.g. ``cpu.usage.average``
(percent) → ``vsphere_vm_cpu_usage_average_percent``. Values are in the unit shown to people
(the stored raw integer times the ``metrics`` table's scale: percent, not hundredths). The
labels are the VM's vCD identity, its vCenter and moref, and ``device`` for a per-instance
series; empty values are left out, and ``instance``/``job`` are never used (they are target
labels to Prometheus). docs/read-api.md documents the contract.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

PREFIX = "vsphere_vm_"

UNIT_SUFFIXES: dict[str, str] = {
    "percent": "percent",
    "megaHertz": "megahertz",
    "kiloBytes": "kilobytes",
    "megaBytes": "megabytes",
    "teraBytes": "terabytes",
    "kiloBytesPerSecond": "kilobytes_per_second",
    "megaBytesPerSecond": "megabytes_per_second",
    "kiloBitsPerSecond": "kilobits_per_second",
    "megaBitsPerSecond": "megabits_per_second",
    "millisecond": "milliseconds",
    "microsecond": "microseconds",
    "nanosecond": "nanoseconds",
    "second": "seconds",
    "joule": "joules",
    "watt": "watts",
    "celsius": "celsius",
    "number": "",  # a count: Prometheus names carry no unit for it
}

ENTITY_LABELS = ("vm", "vm_name", "vapp", "vdc", "org", "vcenter", "moref")
"""Labels that come from the entities table (one value per VM)."""
DEVICE_LABEL = "device"
ALL_LABELS = frozenset(("__name__", *ENTITY_LABELS, DEVICE_LABEL))

_UNSAFE = re.compile(r"[^a-z0-9_]")


def unit_suffix(unit: str) -> str:
    """The name suffix for a vCenter unit key; an unknown unit is lower-cased and sanitised."""
    if unit in UNIT_SUFFIXES:
        return UNIT_SUFFIXES[unit]
    return _UNSAFE.sub("_", unit.lower())


def prometheus_name(metric: str, unit: str) -> str:
    """``cpu.usage.average``, ``percent`` → ``vsphere_vm_cpu_usage_average_percent``."""
    base = PREFIX + _UNSAFE.sub("_", metric.lower().replace(".", "_"))
    suffix = unit_suffix(unit)
    return f"{base}_{suffix}" if suffix else base


@dataclass(frozen=True, slots=True)
class StoredMetric:
    """One row of the ``metrics`` table under its Prometheus name."""

    name: str
    metric: str
    unit: str
    scale: float


def catalog(rows: Iterable[tuple[str, str, float]]) -> dict[str, StoredMetric]:
    """The inverse of ``prometheus_name`` over what is stored: Prometheus name → counter.
    Two counters that would share a name keep the first (sorted), so the mapping stays
    one to one."""
    out: dict[str, StoredMetric] = {}
    for metric, unit, scale in sorted(rows):
        name = prometheus_name(metric, unit or "")
        out.setdefault(name, StoredMetric(name, metric, unit or "", float(scale or 1.0)))
    return out


def stored_metric(name: str, known: Mapping[str, StoredMetric]) -> str | None:
    """``vsphere_vm_cpu_usage_average_percent`` → ``cpu.usage.average`` (None: not stored)."""
    found = known.get(name)
    return found.metric if found else None


@dataclass(frozen=True, slots=True)
class Entity:
    """A VM as the entities table has it."""

    vm: str
    name: str
    vapp: str
    vdc: str
    org: str
    vcenter: str
    moref: str

    def labels(self) -> dict[str, str]:
        values = {"vm": self.vm, "vm_name": self.name, "vapp": self.vapp, "vdc": self.vdc,
                  "org": self.org, "vcenter": self.vcenter, "moref": self.moref}
        return {key: value for key, value in values.items() if value}


def series_labels(metric_name: str, entity: Mapping[str, str], device: str) -> dict[str, str]:
    labels = {"__name__": metric_name, **entity}
    if device:
        labels[DEVICE_LABEL] = device
    return labels
