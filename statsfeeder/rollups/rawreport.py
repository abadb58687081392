"""The usage report computed from the raw samples instead of the roll-ups: the check that
the roll-ups agree (tests) and the baseline they are measured against (bench). Only while the
raw rows are kept (cassandra.ttl_days), and with each VM where the entities table puts it now
(the raw rows carry no placement)."""

from __future__ import annotations

from typing import Any

import numpy as np

from statsfeeder.rollups.compute import Agg, Placement
from statsfeeder.rollups.report import METRICS, PRESENCE, By, Group, group_key
from statsfeeder.sinks.cassandra.reader import read_series


def build_from_raw(session: Any, keyspace: str, since: int, until: int, by: By,
                   org: str | None = None) -> list[dict[str, Any]]:
    entities = list(session.execute(
        f"SELECT vm_id, name, org, vdc, vapp FROM {keyspace}.entities"))
    groups: dict[tuple[str, ...], Group] = {}
    present: dict[tuple[str, ...], dict[int, set[str]]] = {}
    for entity in entities:
        where = Placement(entity.org or "", entity.vdc or "", entity.vapp or "")
        if org is not None and where.org != org:
            continue
        key = group_key(by, entity.vm_id, entity.name or "", where)
        found = [s for s in read_series(session, keyspace, entity.vm_id, METRICS, since, until)
                 if s.instance == "" and len(s.timestamps)]
        if not found:
            continue
        group = groups.setdefault(key, Group(key))
        if by in ("vm", "vapp"):
            group.vms.add(entity.vm_id)
        metrics = {s.metric for s in found}
        presence = next((m for m in PRESENCE if m in metrics), None)
        for s in found:
            hours = (s.timestamps - 1) // 3600
            group.add(s.metric, Agg.of(s.values), int(np.unique(hours).size))
            if s.metric == presence:
                for hour in np.unique(hours).tolist():
                    present.setdefault(key, {}).setdefault(hour, set()).add(entity.vm_id)
    for key, per_hour in present.items():
        groups[key].vms_peak = max(len(vms) for vms in per_hour.values())
    return [groups[key].row() for key in sorted(groups)]
