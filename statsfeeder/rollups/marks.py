"""The pipeline's hook: after Cassandra acknowledged a chunk's raw rows (and before the VMs'
watermarks move), mark each (VM, hour) it wrote for roll-up, with the VM's placement. A crash
between the two leaves the watermark behind, so the next cycle re-reads, rewrites and marks."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from statsfeeder.model import Series
from statsfeeder.rollups.compute import Placement
from statsfeeder.rollups.store import RollupStore
from statsfeeder.sources.vcenter.query import STORAGE_WINDOW

SKEW_SECONDS = 60
REMEMBER_HOURS = 3
"""How long after it settled an hour's first placement is remembered: longer than any re-read
of it (vCenter keeps realtime samples for an hour)."""
"""Margin for clocks of several instances when deciding an hour is not rolled up yet."""


def touched(series: list[Series]) -> dict[tuple[str, int], Placement]:
    """(vm_id, hour) → placement for every raw window the series were written to."""
    marks: dict[tuple[str, int], Placement] = {}
    for item in series:
        if item.entity is None or not len(item):
            continue
        entity = item.entity
        where = Placement(entity.org, entity.vdc, entity.vapp)
        windows = (item.timestamps - 1) // STORAGE_WINDOW * STORAGE_WINDOW
        for hour in np.unique(windows // 3600).tolist():
            marks[(entity.vm, int(hour))] = where
    return marks


class RollupMarks:
    def __init__(self, store: Callable[[], RollupStore], settle_seconds: int,
                 sink_name: str = "cassandra", clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._settle = settle_seconds
        self._sink = sink_name
        self._clock = clock
        self._sent: dict[tuple[str, int], Placement] = {}
        self._pruned = 0.0

    def _open(self, hour: int, now: float) -> bool:
        """The worker takes an hour only ``settle`` after its end: until then a mark already
        written for it cannot have been consumed, and rewriting it would be wasted."""
        return now < (hour + 1) * 3600 + self._settle - SKEW_SECONDS

    async def __call__(self, sink: str, series: list[Series]) -> None:
        """An hour keeps the placement of the first chunk that wrote it: the overlap re-reads
        the end of the previous hour, after a move too, and must not move that hour."""
        if sink != self._sink:
            return
        now = self._clock()
        fresh = {key: self._sent.get(key, where) for key, where in touched(series).items()
                 if key not in self._sent or not self._open(key[1], now)}
        if fresh:
            await self._store().put_marks(fresh)
        self._sent.update(fresh)
        if now - self._pruned > 60:
            self._pruned = now
            self._sent = {key: where for key, where in self._sent.items()
                          if now < (key[1] + 1 + REMEMBER_HOURS) * 3600 + self._settle}
