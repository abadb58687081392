"""Reads a VM's series back (for ``statsfeeder query`` and the tests)."""

from __future__ import annotations

import calendar
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from statsfeeder.model import Int64Array
from statsfeeder.sinks.cassandra.encoder import decode_window


@dataclass(frozen=True)
class StoredSeries:
    vm_id: str
    metric: str
    instance: str
    timestamps: Int64Array
    values: Int64Array
    scale: float
    unit: str

    def shown_values(self) -> list[int] | list[float]:
        """Values in the unit shown, exactly: ints at scale 1; otherwise divided by the
        scale's power of ten and rounded to its digits (332 hundredths -> 3.32, not
        3.3200000000000003), as the KairosDB encoder does."""
        raw: list[int] = self.values.tolist()
        if self.scale >= 1 and float(self.scale).is_integer():
            return [value * int(self.scale) for value in raw]
        divisor = round(1 / self.scale)
        digits = len(str(divisor)) - 1
        return [round(value / divisor, digits) for value in raw]


def read_series(session: Any, keyspace: str, vm_id: str, metrics: Sequence[str],
                since: int, until: int) -> list[StoredSeries]:
    first_day, last_day = (since - 300) // 86400, until // 86400
    units = {row.metric: (row.unit, row.scale)
             for row in session.execute(f"SELECT metric, unit, scale FROM {keyspace}.metrics")}
    statement = session.prepare(
        f"SELECT metric, instance, window_start, data FROM {keyspace}.samples "
        "WHERE vm_id = ? AND day = ? AND metric = ? AND window_start >= ? "
        "AND window_start <= ?")
    found: dict[tuple[str, str], list[tuple[Int64Array, Int64Array]]] = {}
    for day in range(first_day, last_day + 1):
        for metric in metrics:
            rows = session.execute(statement, (vm_id, day, metric, (since - 300) * 1000,
                                               until * 1000))
            for row in rows:
                start = calendar.timegm(row.window_start.utctimetuple())
                stamps, values = decode_window(start, row.data)
                found.setdefault((row.metric, row.instance), []).append((stamps, values))
    result = []
    for (metric, instance), parts in sorted(found.items()):
        stamps = np.concatenate([p[0] for p in parts])
        values = np.concatenate([p[1] for p in parts])
        keep = (stamps > since) & (stamps <= until)
        unit, scale = units.get(metric, ("", 1.0))
        result.append(StoredSeries(vm_id, metric, instance, stamps[keep], values[keep],
                                   scale, unit))
    return result
