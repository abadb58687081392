"""Generated VMs for the roll-up tests and bench: written through the real Cassandra sink, and
the expected roll-ups recomputed independently from the raw rows read back."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from statsfeeder.model import Counter, EntityId, Series

COUNTERS = (Counter("cpu.usagemhz.average", 6, "megaHertz"),
            Counter("cpu.usage.average", 2, "percent"),
            Counter("mem.usage.average", 24, "percent"),
            Counter("disk.read.average", 130, "kiloBytesPerSecond"),
            Counter("disk.write.average", 131, "kiloBytesPerSecond"),
            Counter("net.received.average", 143, "kiloBytesPerSecond", per_instance=True),
            Counter("net.transmitted.average", 144, "kiloBytesPerSecond"))
METRICS = sorted(c.name for c in COUNTERS)


@dataclass
class FakeVm:
    vm: str
    org: str
    vdc: str
    vapp: str
    on_from: int = 0
    on_until: int = 1 << 62
    seed: int = 0

    def entity(self) -> EntityId:
        return EntityId(self.vm, self.vm[-6:], self.vapp, self.vdc, self.org)


def samples(vm: FakeVm, counter: Counter, instance: str, since: int, until: int
            ) -> tuple[np.ndarray, np.ndarray]:
    """Stamps on the 20-s grid in (since, until] while the VM is on; values depend only on
    (VM, counter, instance, stamp), so a re-read returns the same ones."""
    first = max(since, vm.on_from) // 20 * 20 + 20
    last = min(until, vm.on_until)
    stamps = np.arange(first, last + 1, 20, dtype=np.int64)
    salt = (vm.seed * 7919 + counter.key * 131 + len(instance) * 17) % 1000
    values = (stamps // 20 * 2654435761 + salt * 97) % (5000 + salt) + salt
    return stamps, values.astype(np.int64)


def series_for(vms: Iterable[FakeVm], since: int, until: int, vcenter: str = "vc1",
               drop_after: int | None = None) -> list[Series]:
    """Every series of the VMs in (since, until]; ``drop_after``: samples after it are not
    posted yet (vCenter late), a later re-read brings them."""
    out = []
    for vm in vms:
        for counter in COUNTERS:
            for instance in ("", "4000") if counter.per_instance else ("",):
                stamps, values = samples(vm, counter, instance, since, until)
                if drop_after is not None:
                    keep = stamps <= drop_after
                    stamps, values = stamps[keep], values[keep]
                if stamps.size:
                    out.append(Series(vcenter, vm.vm[-8:], counter, instance, stamps, values,
                                      vm.entity()))
    return out
