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

import logging
import re
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from cassandra.cluster import EXEC_PROFILE_DEFAULT
from cassandra.query import tuple_factory

from statsfeeder.readapi import batch as batch_rows
from statsfeeder.readapi.batch import (
    CountedPiece,
    Packed,
    encode_entity,
    encode_labels,
    encode_packed,
    encode_series,
)
from statsfeeder.readapi.index import IndexReader
from statsfeeder.readapi.names import (
    ENTITY_LABELS,
    Entity,
    StoredMetric,
    catalog,
    series_labels,
)
from statsfeeder.readapi.pieces import HourPiece, Pieces, encode_pieces, kept_series
from statsfeeder.readapi.settled import NO_CACHE, DayRead, Settled, SettledCache
from statsfeeder.sinks.cassandra.write_stamps import StampReader
from statsfeeder.sources.vcenter.query import STORAGE_WINDOW

log = logging.getLogger(__name__)

Scope = frozenset[str] | None
"""The orgs a caller may read; None: every VM (provider-wide)."""

MAGIC = b"SFS1"
END = struct.pack("<I", 0xFFFFFFFF)
ERROR = 0xFFFFFFFE
FAILURE = 0xFFFFFFFD
"""After some series were sent: the store failed (Cassandra); the message follows."""
VM_BATCH = 64
"""Most VMs per read request (their partitions for one day)."""
ROWS_PER_REQUEST = 2400
"""About as many windows per request: Cassandra reads a request's partitions one after
another, so a long range is read in more, smaller requests in parallel, a short one in fewer
(the driver's cost is per request). 8 VM-days of one metric."""
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
                 concurrency: int = 32, cache_seconds: float = 60.0,
                 settled: SettledCache | None = None) -> None:
        self._session = session
        self._keyspace = keyspace
        self._ttl = retention_seconds
        self.max_series = max_series
        self._concurrency = concurrency
        self._cache_seconds = cache_seconds
        # Without a cache of settled hours every Select reads its whole range.
        self._cache = settled if settled is not None else NO_CACHE
        self._lock = threading.Lock()
        self._loaded_at = -1e18
        self._entities: list[tuple[Entity, dict[str, str]]] = []
        self._encoded_entities: dict[str, bytes] = {}
        """Each VM's entity labels as the frame carries them, made once per entities read."""
        self._catalog: dict[str, StoredMetric] = {}
        self._index = IndexReader(session, keyspace, cache_seconds)
        self._stamps = StampReader(session, keyspace)
        self._since: int | None = None
        self._read = session.prepare(
            # Window starts as integers: a datetime per row costs more than decoding its blob.
            f"SELECT vm_id, metric, instance, toUnixTimestamp(window_start) AS start_ms, data "
            f"FROM {keyspace}.samples "
            "WHERE vm_id IN ? AND day = ? AND metric IN ? AND window_start >= ? "
            "AND window_start <= ?")
        # One metric (most panels): its name is not sent back with every row.
        self._read_one = session.prepare(
            f"SELECT vm_id, instance, toUnixTimestamp(window_start) AS start_ms, data "
            f"FROM {keyspace}.samples "
            "WHERE vm_id IN ? AND day = ? AND metric = ? AND window_start >= ? "
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
            self._encoded_entities = {}
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
        """The frame for one Select, in pieces of about PIECE_BYTES as the series are read;
        a limit overrun ends it with an error. Samples go as stored (packed windows, decoded
        by the engine) except for metadata answers, which carry none."""
        pending = [MAGIC]
        size = series = samples = 0
        try:
            for labels, scale, stored in self._selected(request, scope, packed=True):
                if isinstance(stored, Pieces):
                    assert isinstance(labels, bytes)
                    piece = encode_pieces(labels, stored.pieces, scale, stored.first_s,
                                          stored.last_s, stored.samples)
                elif isinstance(stored, Packed):
                    assert isinstance(labels, bytes)
                    piece = encode_packed(labels, stored, scale)
                else:
                    assert isinstance(labels, dict)
                    piece = encode_series(labels, *stored)
                pending.append(piece)
                size += len(piece)
                series += 1
                samples += _samples(stored)
                if size >= PIECE_BYTES:  # few, larger writes to the engine
                    yield CountedPiece.of(pending, series, samples)
                    pending, size, series, samples = [], 0, 0, 0
        except SeriesLimit as exc:
            message = str(exc).encode()
            pending.append(struct.pack("<II", ERROR, len(message)) + message)
            yield CountedPiece.of(pending, series, samples, "limit")
            return
        pending.append(END)
        yield CountedPiece.of(pending, series, samples, "ok")

    def series(self, request: SelectRequest, scope: Scope
               ) -> Iterator[tuple[dict[str, str], np.ndarray, np.ndarray]]:
        """The selected series decoded: labels, timestamps (s), values."""
        for labels, _, stored in self._selected(request, scope, packed=False):
            assert not isinstance(stored, (Packed, Pieces)) and isinstance(labels, dict)
            yield labels, *stored

    def _selected(self, request: SelectRequest, scope: Scope, packed: bool
                  ) -> Iterator[tuple[dict[str, str] | bytes, float,
                                      Packed | Pieces | tuple[Any, Any]]]:
        """Labels, scale and samples of each selected series: encoded labels and packed
        windows (``packed``, the samples of a Select), or labels and timestamps and scaled
        values (metadata answers: none)."""
        self.refresh()
        with self._lock:
            entities, encoded = self._entities, self._encoded_entities
        checks = [(m.name, m.compile()) for m in request.matchers]
        known = {"__name__", *ENTITY_LABELS, "device"}
        if any(name not in known and not check("") for name, check in checks):
            return  # a label no stored series has, required to be non-empty
        wanted = [m for name, m in self._catalog.items()
                  if all(check(name) for label, check in checks if label == "__name__")]
        entity_checks = [(n, c) for n, c in checks if n in ENTITY_LABELS]
        # Per series: the device (names were applied to the catalog: ``wanted``).
        series_checks = [(n, c) for n, c in checks if n not in ENTITY_LABELS and n != "__name__"]
        vms = entities_in(entities, scope, entity_checks)
        if not wanted or not vms:
            return
        span = read_range(request.start_ms, request.end_ms, self._ttl)
        if span is None:
            return
        days, first_s, last_s = span
        by_metric = {m.metric: m for m in wanted}
        metric_list = sorted(by_metric)
        one = metric_list[0] if len(metric_list) == 1 else None
        cache = NO_CACHE if request.series_only else self._cache
        # The stamps before the index and any window (write_stamps.py): unchanged, the index
        # days and the newest hours kept are what Cassandra holds.
        generation = self._stamps.generation() if cache.max_bytes > 0 else None
        plan = self._index.plan(self._since, days, first_s, last_s, {e.vm for e, _ in vms},
                                by_metric, cached=request.series_only, generation=generation)
        scan = set(plan.scan_days)
        # Indexed days: only the VM-days with samples in range are read, and a metadata
        # answer (series_only) reads none: the index lists the series.
        reads = {} if request.series_only else plan.reads
        listed = plan.listed if request.series_only else {}
        vms = [(e, labels) for e, labels in vms if scan or e.vm in plan.reads]
        # One request per batch of VMs and day: the driver's cost is per request.
        windows = max(min(last_s, (day + 1) * 86400) - max(first_s - STORAGE_WINDOW, day * 86400)
                      for day in days) // STORAGE_WINDOW + 1
        size = max(1, min(VM_BATCH, ROWS_PER_REQUEST // (windows * len(metric_list))))
        batches = [vms[i:i + size] for i in range(0, len(vms), size)]
        params: list[tuple[Any, ...]] = []
        day_reads: list[list[DayRead]] = []
        for batch in batches:
            day_reads.append([])
            for day in days:
                ids = [e.vm for e, _ in batch if day in scan or day in reads.get(e.vm, ())]
                if ids:
                    read = cache.plan(ids, day, metric_list, one is not None,
                                      (first_s - STORAGE_WINDOW) * 1000, last_s * 1000,
                                      generation)
                    day_reads[-1].append(read)
                    for fill_ids, hours in read.fills:
                        params.append((fill_ids, day, one or metric_list, *hours))
                    if read.fresh is not None:
                        params.append((ids, day, one or metric_list, *read.fresh))
        count = 0
        results = results_in_order(self._session, self._read_one if one else self._read,
                                   params, self._concurrency, self._tuples)
        for batch, batch_reads in zip(batches, day_reads, strict=True):
            if packed and not request.series_only and all(
                    read.fresh is None for read in batch_reads):
                # Answered from kept (or just kept) hours: their pieces as they are.
                pieces: dict[str, dict[tuple[str, str], list[HourPiece]]] = {}
                for read in batch_reads:
                    cache.collect_pieces(read, [next(results) for _ in read.fills], pieces)
                for series_bytes, series_scale, series_pieces in kept_series(
                        batch, pieces, by_metric, series_checks, first_s, last_s, encoded):
                    count += 1
                    _within_limit(count, self.max_series)
                    yield series_bytes, series_scale, series_pieces
                continue
            rows: list[tuple[Any, ...]] = []
            settled: Settled = {}
            for read in batch_reads:
                cache.collect(read, [next(results) for _ in read.fills], settled)
                if read.fresh is not None:
                    rows.extend(next(results))
            found: Mapping[str, Mapping[tuple[str, str], Any]] = (
                batch_rows.packed(rows, first_s, last_s, one, settled) if packed
                and not request.series_only
                else batch_rows.decoded(rows, first_s, last_s, one, settled))
            for entity, labels in batch:
                mine = found.get(entity.vm, {})
                indexed = listed.get(entity.vm, set())
                for key in sorted(mine.keys() | indexed):
                    metric, instance = key
                    info = by_metric[metric]
                    stored = mine.get(key)
                    if key not in indexed and not _samples(stored):
                        continue
                    if series_checks or not packed or request.series_only:
                        full = series_labels(info.name, labels, instance)
                        if not all(check(full.get(name, "")) for name, check in series_checks):
                            continue
                    count += 1
                    _within_limit(count, self.max_series)
                    if request.series_only:
                        yield full, info.scale, (_EMPTY, np.empty(0))
                    elif isinstance(stored, Packed):
                        part = encoded.get(entity.vm)
                        if part is None:
                            part = encoded[entity.vm] = encode_entity(labels)
                        yield encode_labels(info.name, part, len(labels), instance), \
                            info.scale, stored
                    else:
                        assert stored is not None
                        stamps, raw = stored
                        yield full, info.scale, (stamps, raw.astype(np.float64) * info.scale)


def _within_limit(count: int, limit: int) -> None:
    if count > limit:
        raise SeriesLimit(f"query selects more than {limit} series (read_api.max_series); "
                          "narrow the selector")


def _samples(stored: Packed | Pieces | tuple[np.ndarray, np.ndarray] | None) -> int:
    if stored is None:
        return 0
    return stored.samples if isinstance(stored, (Packed, Pieces)) else len(stored[0])


def entities_in(entities: Iterable[tuple[Entity, dict[str, str]]], scope: Scope,
                checks: Iterable[tuple[str, Callable[[str], bool]]] = ()
                ) -> list[tuple[Entity, dict[str, str]]]:
    """The VMs (with their labels) in ``scope`` that pass the entity label ``checks``: the
    one place a tenant's scope is applied to what is read."""
    checks = list(checks)
    if not checks:  # most label answers and Selects: no per-VM generator
        if scope is None:
            return list(entities)
        return [(e, labels) for e, labels in entities if e.org and e.org in scope]
    return [(e, labels) for e, labels in entities
            if (scope is None or (e.org and e.org in scope))
            and all(check(labels.get(name, "")) for name, check in checks)]


def read_range(start_ms: int, end_ms: int, retention_seconds: int
               ) -> tuple[range, int, int] | None:
    """The days and the seconds [first_s, last_s] a range reads (nothing older than the
    retention is stored); None: nothing."""
    oldest = int((time.time() - retention_seconds - 86400) * 1000)
    start_ms = max(start_ms, oldest)
    if end_ms < start_ms:
        return None
    first_s, last_s = -(-start_ms // 1000), end_ms // 1000
    return range((first_s - STORAGE_WINDOW) // 86400, last_s // 86400 + 1), first_s, last_s


def failure_line(exc: BaseException, reading: str) -> str:
    """A store failure (Cassandra unreachable, a timeout) as one line for the caller, logged."""
    text = " ".join(str(exc).split())[:300]
    log.error("read API: reading %s failed: %s: %s", reading, type(exc).__name__, text)
    return f"cassandra: {type(exc).__name__}: {text}"


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
