"""Answers the engine's Selects from Cassandra: the series that match the label matchers, have
samples in the time range asked, and belong to the caller's scope, as one compact binary
frame (labels, then int64 millisecond timestamps and float64 values, numpy ``tobytes``).

Tenant isolation happens here: with ``scope`` a set of org names, a VM of any other org (and
any VM without an org) does not exist for the query. ``None`` is provider-wide. The series
index (``index.py``) narrows a Select to the VM-days with samples in its hours, and answers
``series_only`` Selects without reading windows. Reads go by batches of VMs, one request per
batch and day (their VM-day partitions, every wanted metric in one slice), so memory follows
the query's answer, not the store. The engine applies the
matchers again with its own (RE2) regular expressions; this pre-filter only has to keep every
series they could match.
"""

from __future__ import annotations

import re
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from cassandra.cluster import EXEC_PROFILE_DEFAULT
from cassandra.query import tuple_factory

from statsfeeder.readapi.decode import decode_windows_counted
from statsfeeder.readapi.index import IndexReader
from statsfeeder.readapi.names import (
    ENTITY_LABELS,
    Entity,
    StoredMetric,
    catalog,
    series_labels,
)
from statsfeeder.sources.vcenter.query import STORAGE_WINDOW

Scope = frozenset[str] | None
"""The orgs a caller may read; None: every VM (provider-wide)."""

MAGIC = b"SFS1"
END = struct.pack("<I", 0xFFFFFFFF)
ERROR = 0xFFFFFFFE
VM_BATCH = 16
"""VMs per read request (their partitions for one day): fewer, larger requests."""
PIECE_BYTES = 1 << 16
_EMPTY = np.empty(0, dtype=np.int64)


@dataclass(frozen=True)
class Matcher:
    kind: str  # "=", "!=", "=~", "!~"
    name: str
    value: str

    def compile(self) -> Callable[[str], bool]:
        if self.kind in ("=", "!="):
            equal = self.kind == "="
            return lambda given: (given == self.value) == equal
        if not python_reads_as_re2(self.value):
            return lambda given: True  # the engine's own matcher filters exactly
        try:
            pattern = re.compile(self.value, re.DOTALL)
        except re.error:
            return lambda given: True
        positive = self.kind == "=~"
        return lambda given: (pattern.fullmatch(given) is not None) == positive


_NOT_LIKE_RE2 = re.compile(r"\\[0-9A-Za-z]|\[:|[{$]|\(\?")


def python_reads_as_re2(pattern: str) -> bool:
    """Whether Python's ``re`` matches exactly the values RE2 does (fully anchored, dot
    matching newlines): no escape of a letter or digit (``\\d`` and ``\\w`` take Unicode in
    Python, ASCII in RE2), no POSIX class (``[[:alpha:]]`` is another set to Python), no
    ``{`` (``x{,3}`` is a repeat to Python, a literal to RE2), no ``$`` (Python's also
    matches before a last newline) and no ``(?`` flags or groups. Anything else passes
    every value here and is left to the engine."""
    return _NOT_LIKE_RE2.search(pattern) is None


@dataclass(frozen=True)
class SelectRequest:
    start_ms: int
    end_ms: int
    matchers: tuple[Matcher, ...]
    series_only: bool = False

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> SelectRequest:
        matchers = tuple(Matcher(str(m["type"]), str(m["name"]), str(m["value"]))
                         for m in body.get("matchers") or ())
        return cls(int(body["start"]), int(body["end"]), matchers, body.get("func") == "series")


class SeriesLimit(Exception):
    pass


@dataclass(frozen=True)
class Snapshot:
    """What the label answers (metadata.py) read beside the Selects."""

    entities: list[tuple[Entity, dict[str, str]]]
    catalog: dict[str, StoredMetric]
    index: IndexReader
    since: int | None
    retention_seconds: int


class SeriesStore:
    """Reads series for the read API; blocking (driver calls): run it in a worker thread."""

    def __init__(self, session: Any, keyspace: str, *, retention_seconds: int, max_series: int,
                 concurrency: int = 32, cache_seconds: float = 60.0) -> None:
        self._session = session
        self._keyspace = keyspace
        self._ttl = retention_seconds
        self.max_series = max_series
        self._concurrency = concurrency
        self._cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._loaded_at = -1e18
        self._entities: list[tuple[Entity, dict[str, str]]] = []
        self._catalog: dict[str, StoredMetric] = {}
        self._index = IndexReader(session, keyspace, cache_seconds)
        self._since: int | None = None
        self._read = session.prepare(
            # Window starts as integers: a datetime per row costs more than decoding its blob.
            f"SELECT vm_id, metric, instance, toUnixTimestamp(window_start) AS start_ms, data "
            f"FROM {keyspace}.samples "
            "WHERE vm_id IN ? AND day = ? AND metric IN ? AND window_start >= ? "
            "AND window_start <= ?")
        # Plain tuples: the driver's named tuple per row costs more than the row's decoding.
        self._tuples = session.execution_profile_clone_update(EXEC_PROFILE_DEFAULT,
                                                              row_factory=tuple_factory)

    def refresh(self, force: bool = False) -> None:
        """Entities and metric units, re-read at most every ``cache_seconds``."""
        with self._lock:
            # An empty store (a server started before the first cycle) is looked at again
            # soon, not after the whole cache time.
            keep = self._cache_seconds if self._entities else min(self._cache_seconds, 2.0)
            if not force and time.monotonic() - self._loaded_at < keep:
                return
            ks = self._keyspace
            rows = self._session.execute(
                f"SELECT vm_id, name, vapp, vdc, org, vcenter, moref FROM {ks}.entities")
            entities = sorted(
                (Entity(r.vm_id, r.name or "", r.vapp or "", r.vdc or "", r.org or "",
                        r.vcenter or "", r.moref or "") for r in rows), key=lambda e: e.vm)
            self._entities = [(e, e.labels()) for e in entities]
            self._catalog = catalog((r.metric, r.unit, r.scale) for r in self._session.execute(
                f"SELECT metric, unit, scale FROM {ks}.metrics"))
            self._since = self._index.indexed_from()
            self._loaded_at = time.monotonic()

    def metrics(self) -> dict[str, StoredMetric]:
        self.refresh()
        return dict(self._catalog)

    def entities(self) -> list[Entity]:
        self.refresh()
        return [entity for entity, _ in self._entities]

    def snapshot(self) -> Snapshot:
        self.refresh()
        with self._lock:
            return Snapshot(self._entities, self._catalog, self._index, self._since, self._ttl)

    def select(self, request: SelectRequest, scope: Scope) -> Iterator[bytes]:
        """The frame for one Select, in pieces; a limit overrun ends it with an error."""
        pending = [MAGIC]
        size = 0
        try:
            for labels, stamps, values in self.series(request, scope):
                piece = encode_series(labels, stamps, values)
                pending.append(piece)
                size += len(piece)
                if size >= PIECE_BYTES:  # few, larger writes to the engine
                    yield b"".join(pending)
                    pending, size = [], 0
        except SeriesLimit as exc:
            message = str(exc).encode()
            yield b"".join(pending) + struct.pack("<II", ERROR, len(message)) + message
            return
        yield b"".join(pending) + END

    def series(self, request: SelectRequest, scope: Scope
               ) -> Iterator[tuple[dict[str, str], np.ndarray, np.ndarray]]:
        self.refresh()
        checks = [(m.name, m.compile()) for m in request.matchers]
        known = {"__name__", *ENTITY_LABELS, "device"}
        if any(name not in known and not check("") for name, check in checks):
            return  # a label no stored series has, required to be non-empty
        wanted = [m for name, m in self._catalog.items()
                  if all(check(name) for label, check in checks if label == "__name__")]
        entity_checks = [(n, c) for n, c in checks if n in ENTITY_LABELS]
        series_checks = [(n, c) for n, c in checks if n not in ENTITY_LABELS]  # per series
        vms = [(e, labels) for e, labels in self._entities
               if (scope is None or (e.org and e.org in scope))]
        vms = [(e, labels) for e, labels in vms
               if all(check(labels.get(name, "")) for name, check in entity_checks)]
        if not wanted or not vms:
            return
        oldest = (time.time() - self._ttl - 86400) * 1000
        start_ms, end_ms = max(request.start_ms, int(oldest)), request.end_ms
        if end_ms < start_ms:
            return
        first_s, last_s = -(-start_ms // 1000), end_ms // 1000
        days = range((first_s - STORAGE_WINDOW) // 86400, last_s // 86400 + 1)
        by_metric = {m.metric: m for m in wanted}
        metric_list = sorted(by_metric)
        plan = self._index.plan(self._since, days, first_s, last_s, {e.vm for e, _ in vms},
                                by_metric, cached=request.series_only)
        scan = set(plan.scan_days)
        # Indexed days: only the VM-days with samples in range are read, and a metadata
        # answer (series_only) reads none: the index lists the series.
        reads = {} if request.series_only else plan.reads
        listed = plan.listed if request.series_only else {}
        vms = [(e, labels) for e, labels in vms if scan or e.vm in plan.reads]
        # One request per batch of VMs and day: the driver's cost is per request.
        batches = [vms[i:i + VM_BATCH] for i in range(0, len(vms), VM_BATCH)]
        params: list[tuple[Any, ...]] = []
        requests_per_batch: list[int] = []
        for batch in batches:
            before = len(params)
            for day in days:
                ids = [e.vm for e, _ in batch if day in scan or day in reads.get(e.vm, ())]
                if ids:
                    params.append((ids, day, metric_list, (first_s - STORAGE_WINDOW) * 1000,
                                   last_s * 1000))
            requests_per_batch.append(len(params) - before)
        count = 0
        results = results_in_order(self._session, self._read, params, self._concurrency,
                                   self._tuples)
        for batch, requests in zip(batches, requests_per_batch, strict=True):
            rows = [row for _ in range(requests) for row in next(results)]
            found = _decode_batch(rows, first_s, last_s)
            for entity, labels in batch:
                mine = found.get(entity.vm, {})
                indexed = listed.get(entity.vm, set())
                for key in sorted(mine.keys() | indexed):
                    metric, instance = key
                    info = by_metric[metric]
                    if key not in indexed and not len(mine[key][0]):
                        continue
                    full = series_labels(info.name, labels, instance)
                    if not all(check(full.get(name, "")) for name, check in series_checks):
                        continue
                    count += 1
                    if count > self.max_series:
                        raise SeriesLimit(f"query selects more than {self.max_series} series "
                                          "(read_api.max_series); narrow the selector")
                    if request.series_only:
                        yield full, _EMPTY, np.empty(0)
                        continue
                    stamps, raw = mine[key]
                    yield full, stamps, raw.astype(np.float64) * info.scale


def _decode_batch(rows: list[tuple[Any, ...]], first_s: int, last_s: int
                  ) -> dict[str, dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]]:
    """VM → (metric, instance) → its timestamps and raw values in [first_s, last_s], from
    the rows (vm_id, metric, instance, start_ms, data) of a batch's requests (days in
    order). Every window of the batch is decoded in one pass: per series, the numpy calls'
    own overhead cost more than the bytes they decoded."""
    if not rows:
        return {}
    vms, metrics, instances, starts_ms, blobs = zip(*rows, strict=True)
    # Runs of rows of one series (a partition's rows come by metric, window, instance: one
    # run per series unless it has several instances), found with array compares, so the
    # Python work is per run, not per row.
    columns = [np.array(column, dtype=object) for column in (vms, metrics, instances)]
    change = np.zeros(len(rows), dtype=bool)
    change[0] = True
    for column in columns:
        change[1:] |= column[1:] != column[:-1]
    run_firsts = np.flatnonzero(change)
    ids: dict[tuple[str, str, str], int] = {}
    run_ids = np.fromiter((ids.setdefault((vms[i], metrics[i], instances[i]), len(ids))
                           for i in run_firsts.tolist()), dtype=np.int64,
                          count=len(run_firsts))
    row_ids = np.repeat(run_ids, np.diff(np.append(run_firsts, len(rows))))
    # Grouped by series; each series' windows stay in time order (stable sort; the days'
    # requests are in order).
    order = np.argsort(row_ids, kind="stable")
    starts = np.array(starts_ms, dtype=np.int64)[order] // 1000
    stamps, raw, counts = decode_windows_counted(starts, [blobs[i] for i in order.tolist()])
    keep = (stamps >= first_s) & (stamps <= last_s)
    kept_before = np.concatenate(([0], np.cumsum(keep)))
    window_first = np.concatenate(([0], np.cumsum(counts)))
    stamps, raw = stamps[keep], raw[keep]
    series_ids = row_ids[order]
    firsts = np.flatnonzero(np.diff(series_ids, prepend=-1))
    bounds = kept_before[window_first[np.append(firsts, len(rows))]].tolist()
    keys = list(ids)
    found: dict[str, dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]] = {}
    for number, first in enumerate(firsts.tolist()):
        vm, metric, instance = keys[series_ids[first]]
        low, high = bounds[number], bounds[number + 1]
        found.setdefault(vm, {})[(metric, instance)] = (stamps[low:high], raw[low:high])
    return found


def results_in_order(session: Any, statement: Any, params: list[tuple[Any, ...]],
                     concurrency: int, profile: Any = None) -> Iterator[list[Any]]:
    """Rows of each request, in order, with at most ``concurrency`` in flight (with the
    execution ``profile`` given, or the session's default)."""
    futures: list[Any] = []
    position = 0
    extra = {} if profile is None else {"execution_profile": profile}
    for index in range(len(params)):
        while position < len(params) and position < index + concurrency:
            futures.append(session.execute_async(statement, params[position], **extra))
            position += 1
        future = futures[index]
        futures[index] = None
        yield list(future.result())


def encode_series(labels: Mapping[str, str], stamps: np.ndarray, values: np.ndarray) -> bytes:
    # Label order is free: the engine sorts them.
    out = [struct.pack("<I", len(labels)), *map(_label, labels.items()),
           struct.pack("<I", len(stamps))]
    if len(stamps):
        out.append((stamps.astype("<i8") * 1000).tobytes())
        out.append(values.astype("<f8").tobytes())
    return b"".join(out)


@lru_cache(maxsize=1 << 17)
def _label(item: tuple[str, str]) -> bytes:
    """Most labels repeat across a VM's series and across queries (vm, org, names)."""
    raw_name, raw_value = item[0].encode(), item[1].encode()
    return (struct.pack("<H", len(raw_name)) + raw_name + struct.pack("<I", len(raw_value))
            + raw_value)
