"""Maps configured metric names (``group.counter.rollup``) to this vCenter's counter ids."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from statsfeeder.config import MetricSpec
from statsfeeder.model import Counter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CounterCatalog:
    counters: tuple[Counter, ...]
    unknown: tuple[str, ...]

    def by_key(self) -> dict[int, Counter]:
        return {c.key: c for c in self.counters}


def resolve_counters(perf_counters: Sequence[Any],
                     wanted: Sequence[MetricSpec], vcenter: str) -> CounterCatalog:
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
    if unknown:
        log.warning("vCenter %s does not offer %s: not collected", vcenter, ", ".join(unknown))
    return CounterCatalog(tuple(found), tuple(unknown))
