"""Answers the engine's roll-up Selects: one synthetic sample per bucket, stamped at the
bucket's end, holding the bucket's max, min, sum or sample count (the "view" the engine's
planner chose, engine/rollups.go). A bucket ending at ``e`` covers the samples stamped in
``(e-B, e]``, as the roll-up tables do (statsfeeder/rollups/compute.py), so a Prometheus 3
window ``(t-R, t]`` with ``t`` and ``R`` whole buckets holds exactly the buckets it should.

Buckets that ended more than ``fresh_seconds`` ago come from the roll-up table of the tier;
newer ones (still being rolled up, or rolled up again when vCenter posts late) are folded
from the raw samples here, so an answer reaching up to now stays equal to the raw one. So are
all buckets from the oldest hour that still has roll-up marks (a worker behind, or stopped):
those hours' rows are not written yet, their raw samples are.
Selection and tenant scope are the raw path's: the same entities, matchers and orgs.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from statsfeeder.readapi.batch import encode_series
from statsfeeder.readapi.names import ENTITY_LABELS, series_labels
from statsfeeder.readapi.store import (
    END,
    ERROR,
    MAGIC,
    Matcher,
    Scope,
    SelectRequest,
    SeriesLimit,
    SeriesStore,
    results_in_order,
)
from statsfeeder.rollups.schema import DIRTY_SHARDS, month_of_day, week_of_hour

BUCKET_SECONDS = {"hourly": 3600, "daily": 86400}
VIEWS = ("max", "min", "sum", "count")
MARKS_CACHE_SECONDS = 30.0
"""How long the oldest pending roll-up hour is reused (one read per hour and shard)."""
ROLLUP_TABLES = ("rollup_hourly", "rollup_daily")

Series = tuple[dict[str, str], np.ndarray, np.ndarray]


@dataclass(frozen=True)
class RollupRequest:
    tier: str
    view: str
    start_ms: int
    end_ms: int
    matchers: tuple[Matcher, ...]

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> RollupRequest | None:
        """None: an ordinary (raw) Select."""
        given = str(body.get("rollup") or "")
        if not given:
            return None
        tier, _, view = given.partition(":")
        if tier not in BUCKET_SECONDS or view not in VIEWS:
            raise ValueError(f"unknown roll-up view {given!r}")
        base = SelectRequest.from_json(body)
        return cls(tier, view, base.start_ms, base.end_ms, base.matchers)


def tables_present(session: Any, keyspace: str) -> bool:
    rows = session.execute("SELECT table_name FROM system_schema.tables "
                           "WHERE keyspace_name = %s", (keyspace,))
    return set(ROLLUP_TABLES) <= {row.table_name for row in rows}


class RollupSelect:
    """Blocking (driver calls): run it in a worker thread, as ``SeriesStore``."""

    def __init__(self, store: SeriesStore, session: Any, keyspace: str, *,
                 fresh_seconds: int, scan_hours: int, concurrency: int = 32,
                 clock: Callable[[], float] = time.time) -> None:
        """``scan_hours``: how far back the worker looks for marks (cassandra.rollups)."""
        self._store = store
        self._session = session
        self._fresh = fresh_seconds
        self._scan_hours = scan_hours
        self._concurrency = concurrency
        self._clock = clock
        self._pending: tuple[float, int | None] = (-1e18, None)
        self._marks = session.prepare(f"SELECT vm_id FROM {keyspace}.rollup_dirty "
                                      "WHERE hour = ? AND shard = ? LIMIT 1")
        self._keyspace = keyspace
        self._reads: dict[tuple[str, str], Any] = {}

    def _read(self, tier: str, view: str) -> Any:
        """The prepared read of one tier and figure: only that column, the bucket as an
        integer (the driver's per-row cost is most of a roll-up Select's)."""
        if (tier, view) not in self._reads:
            table, part, key, at = (
                ("rollup_hourly", "week", "hour", "toUnixTimestamp(hour)") if tier == "hourly"
                else ("rollup_daily", "month", "day", "day"))
            self._reads[(tier, view)] = self._session.prepare(
                f"SELECT metric, instance, {at}, {view} FROM {self._keyspace}.{table} "
                f"WHERE vm_id = ? AND {part} IN ? AND metric IN ? AND {key} >= ? AND {key} < ?")
        return self._reads[(tier, view)]

    def select(self, request: RollupRequest, scope: Scope) -> Iterator[bytes]:
        """The frame for one Select, as ``SeriesStore.select`` makes it."""
        yield MAGIC
        try:
            for labels, stamps, values in self.series(request, scope):
                yield encode_series(labels, stamps, values)
        except SeriesLimit as exc:
            message = str(exc).encode()
            yield struct.pack("<II", ERROR, len(message)) + message
            return
        yield END

    def series(self, request: RollupRequest, scope: Scope) -> Iterator[Series]:
        size = BUCKET_SECONDS[request.tier]
        first_end = -(-request.start_ms // (size * 1000)) * size
        last_end = request.end_ms // (size * 1000) * size
        now = self._clock()
        settled = int(now - self._fresh) // size * size
        # Marks live scan_hours: a range that ends before them has nothing pending.
        if min(last_end, settled) > now - self._scan_hours * 3600 - size:
            pending = self.oldest_pending_hour()
            if pending is not None:
                settled = min(settled, pending * 3600 // size * size)
        found: dict[tuple[tuple[str, str], ...], tuple[dict[str, str], list[np.ndarray],
                                                       list[np.ndarray]]] = {}

        def add(labels: dict[str, str], stamps: np.ndarray, values: np.ndarray) -> None:
            key = tuple(sorted(labels.items()))
            if key not in found:
                if len(found) >= self._store.max_series:
                    raise SeriesLimit(f"query selects more than {self._store.max_series} "
                                      "series (read_api.max_series); narrow the selector")
                found[key] = (labels, [], [])
            found[key][1].append(stamps)
            found[key][2].append(values)

        if first_end <= min(last_end, settled):
            for labels, stamps, values in self._stored(request, scope, first_end,
                                                       min(last_end, settled)):
                add(labels, stamps, values)
        raw_first = max(first_end, settled + size)
        if raw_first <= last_end:
            raw = SelectRequest((raw_first - size) * 1000 + 1, last_end * 1000,
                                request.matchers)
            for labels, stamps, values in self._store.series(raw, scope):
                ends, figures = fold_raw(stamps, values, size, request.view)
                add(labels, ends, figures)
        for labels, stamp_parts, value_parts in found.values():
            yield labels, np.concatenate(stamp_parts), np.concatenate(value_parts)

    def oldest_pending_hour(self) -> int | None:
        """The oldest hour with roll-up marks older than the fresh hours (None: none)."""
        checked, hour = self._pending
        if time.monotonic() - checked < MARKS_CACHE_SECONDS:
            return hour
        now = self._clock()
        last = int(now - self._fresh) // 3600
        hours = range(int(now) // 3600 - self._scan_hours, last)
        params = [(h * 3600_000, shard) for h in hours for shard in range(DIRTY_SHARDS)]
        found = None
        answers = results_in_order(self._session, self._marks, params, self._concurrency)
        for (h, _), rows in zip(params, answers, strict=True):
            if rows:
                found = h // 3600_000
                break
        self._pending = (time.monotonic(), found)
        return found

    def _stored(self, request: RollupRequest, scope: Scope, first_end: int, last_end: int
                ) -> Iterator[Series]:
        """Buckets ending in [first_end, last_end] from the roll-up table."""
        store = self._store
        store.refresh()
        checks = [(m.name, m.compile()) for m in request.matchers]
        known = {"__name__", *ENTITY_LABELS, "device"}
        if any(name not in known and not check("") for name, check in checks):
            return
        wanted = {m.metric: m for name, m in store.metrics().items()
                  if all(check(name) for label, check in checks if label == "__name__")}
        entity_checks = [(n, c) for n, c in checks if n in ENTITY_LABELS]
        vms = [(e, e.labels()) for e in store.entities()
               if scope is None or (e.org and e.org in scope)]
        vms = [(e, labels) for e, labels in vms
               if all(check(labels.get(name, "")) for name, check in entity_checks)]
        if not wanted or not vms:
            return
        size = BUCKET_SECONDS[request.tier]
        first, end = first_end // size - 1, last_end // size  # bucket numbers [first, end)
        if request.tier == "hourly":
            parts = list(range(week_of_hour(first), week_of_hour(end - 1) + 1))
            low, high = first * 3600_000, end * 3600_000
        else:
            parts = list(range(month_of_day(first), month_of_day(end - 1) + 1))
            low, high = first, end
        statement = self._read(request.tier, request.view)
        metrics = sorted(wanted)
        params = [(e.vm, parts, metrics, low, high) for e, _ in vms]
        answers = results_in_order(self._session, statement, params, self._concurrency)
        for (_, labels), rows in zip(vms, answers, strict=True):
            per_series: dict[tuple[str, str], list[tuple[int, int]]] = {}
            for metric, instance, at, figure in rows:
                per_series.setdefault((metric, instance), []).append((at, figure))
            for (metric, instance), pairs in sorted(per_series.items()):
                info = wanted[metric]
                full = series_labels(info.name, labels, instance)
                if not all(check(full.get(name, "")) for name, check in checks):
                    continue
                table = np.array(pairs, dtype=np.int64)
                table = table[np.argsort(table[:, 0], kind="stable")]
                starts = table[:, 0] // 1000 if request.tier == "hourly" else table[:, 0] * size
                values = table[:, 1].astype(np.float64)
                yield (full, starts + size,
                       values if request.view == "count" else values * info.scale)

def fold_raw(stamps: np.ndarray, values: np.ndarray, size: int, view: str
             ) -> tuple[np.ndarray, np.ndarray]:
    """Raw samples (ascending) into one figure per bucket of ``size`` seconds, stamped at
    the bucket's end: the same figure the roll-up worker stores."""
    if stamps.size == 0:
        return stamps, values
    ends = ((stamps - 1) // size + 1) * size
    bounds = np.flatnonzero(np.diff(ends)) + 1
    firsts = np.concatenate(([0], bounds))
    if view == "max":
        figures = np.maximum.reduceat(values, firsts)
    elif view == "min":
        figures = np.minimum.reduceat(values, firsts)
    elif view == "sum":
        figures = np.add.reduceat(values, firsts)
    else:
        figures = np.diff(np.concatenate((firsts, [stamps.size]))).astype(np.float64)
    return ends[firsts], figures.astype(np.float64)
