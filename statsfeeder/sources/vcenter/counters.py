"""Maps configured metric names (``group.counter.rollup``) to this vCenter's counter ids."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from statsfeeder.config import MetricSpec
from statsfeeder.model import Counter


@dataclass(frozen=True)
class CounterCatalog:
    counters: tuple[Counter, ...]
    unknown: tuple[str, ...]
    known: tuple[str, ...] = ()
    """Every ``group.counter.rollup`` this vCenter offers (for suggestions)."""

    def by_key(self) -> dict[int, Counter]:
        return {c.key: c for c in self.counters}

    def problems(self, vcenter: str) -> list[str]:
        """One line per configured metric this vCenter does not have, with the nearest
        name it does have (a typo is the usual cause)."""
        lines = []
        for name in self.unknown:
            near = difflib.get_close_matches(name, self.known, n=1, cutoff=0.8)
            hint = f"did you mean {near[0]}?" if near else "no similar name"
            lines.append(f"collection.metrics: vCenter {vcenter} has no counter {name} "
                         f"({hint})")
        return lines


def resolve_counters(perf_counters: Sequence[Any],
                     wanted: Sequence[MetricSpec], vcenter: str) -> CounterCatalog:
    """The configured metrics this vCenter has; the caller reports ``problems()``."""
    known: dict[str, Any] = {}
    for info in perf_counters:
        name = f"{info.groupInfo.key}.{info.nameInfo.key}.{info.rollupType}"
        known.setdefault(name, info)
    found: list[Counter] = []
    unknown: list[str] = []
    for spec in wanted:
        info = known.get(spec.name)
        if info is None:
            unknown.append(spec.name)
            continue
        found.append(Counter(spec.name, int(info.key), str(info.unitInfo.key), spec.per_instance))
    return CounterCatalog(tuple(found), tuple(unknown), tuple(known))
