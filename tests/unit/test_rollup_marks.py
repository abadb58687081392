"""Which (VM, hour) pairs a chunk marks for roll-up."""

from __future__ import annotations

import numpy as np

from statsfeeder.model import Counter, EntityId, Series
from statsfeeder.rollups.compute import Placement
from statsfeeder.rollups.marks import touched

CPU = Counter("cpu.usage.average", 2, "percent")
HOUR = 1_795_132_800


def series(vm: str, stamps: list[int], vdc: str = "vdc1") -> Series:
    return Series("vc1", "vm-1", CPU, "", np.array(stamps, dtype=np.int64),
                  np.ones(len(stamps), dtype=np.int64), EntityId(vm, "", "vapp", vdc, "org"))


def test_a_sample_stamped_on_the_hour_belongs_to_the_hour_it_ends() -> None:
    marks = touched([series("a", [HOUR - 20, HOUR]), series("b", [HOUR + 20]),
                     Series("vc1", "vm-9", CPU, "", np.array([HOUR], dtype=np.int64),
                            np.ones(1, dtype=np.int64), None)])
    assert marks == {("a", HOUR // 3600 - 1): Placement("org", "vdc1", "vapp"),
                     ("b", HOUR // 3600): Placement("org", "vdc1", "vapp")}
