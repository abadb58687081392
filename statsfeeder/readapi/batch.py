"""One read batch's rows (vm_id, metric, instance, start_ms, data) into series: decoded
(timestamps and raw values, for the roll-up folding and the metadata answers) or packed
(the stored windows as they are, with their in-range sample count, for the engine to decode:
``engine/packed.go``). Rows are grouped by runs found with array compares and every window of
the batch is handled in one numpy pass: a Python step per row, or numpy calls per series,
cost more than the bytes themselves.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from statsfeeder.readapi.decode import decode_windows_counted, grid_slots
from statsfeeder.readapi.names import DEVICE_LABEL
from statsfeeder.sinks.cassandra.encoder import (
    VERSION_FLAGS_ON_GRID,
    BlobError,
    decode_window,
)
from statsfeeder.sources.vcenter.query import STORAGE_WINDOW

Key = tuple[str, str]
"""(metric, instance)"""
POINTS_PACKED = 0xFFFFFFFF
"""In a series' point count: its stored windows follow (the engine's pointsPacked)."""


@dataclass(frozen=True)
class Packed:
    """A series' stored windows: starts (s), blob lengths, the blobs joined; ``samples``: how
    many of their samples fall in the Select's range, [first_s, last_s]."""
    starts: np.ndarray
    lengths: np.ndarray
    data: bytes
    samples: int
    first_s: int
    last_s: int


@dataclass(frozen=True)
class _Groups:
    keys: list[tuple[str, str, str]]
    series_ids: np.ndarray
    """Per window (grouped by series, each series' windows in time order): its series."""
    firsts: np.ndarray
    """Each series' first window."""
    starts: np.ndarray
    blobs: list[bytes]


def grouped(rows: list[tuple[Any, ...]], metric: str | None) -> _Groups:
    compared: tuple[tuple[Any, ...], ...]
    if metric is None:
        vms, metrics, instances, starts_ms, blobs = zip(*rows, strict=True)
        compared = (vms, metrics, instances)
    else:  # one metric read: rows without it
        vms, instances, starts_ms, blobs = zip(*rows, strict=True)
        metrics = (metric,) * len(rows)
        compared = (vms, instances)
    # A partition's rows come by metric, window, instance: one run per series unless it has
    # several instances.
    change = np.zeros(len(rows), dtype=bool)
    change[0] = True
    for values in compared:
        column = np.array(values, dtype=object)
        change[1:] |= column[1:] != column[:-1]
    run_firsts = np.flatnonzero(change)
    ids: dict[tuple[str, str, str], int] = {}
    run_ids = np.fromiter((ids.setdefault((vms[i], metrics[i], instances[i]), len(ids))
                           for i in run_firsts.tolist()), dtype=np.int64,
                          count=len(run_firsts))
    row_ids = np.repeat(run_ids, np.diff(np.append(run_firsts, len(rows))))
    # Stable: each series' windows stay in time order (the days' requests are in order).
    order = np.argsort(row_ids, kind="stable")
    series_ids = row_ids[order]
    return _Groups(list(ids), series_ids, np.flatnonzero(np.diff(series_ids, prepend=-1)),
                   np.array(starts_ms, dtype=np.int64)[order] // 1000,
                   [blobs[i] for i in order.tolist()])


def decoded(rows: list[tuple[Any, ...]], first_s: int, last_s: int, metric: str | None = None,
            settled: Mapping[SeriesKey, list[Windows]] | None = None
            ) -> dict[str, dict[Key, tuple[np.ndarray, np.ndarray]]]:
    """VM → (metric, instance) → its timestamps and raw values in [first_s, last_s]. Rows:
    (vm_id, metric, instance, start_ms, data), or without metric when ``metric`` is given;
    ``settled`` as ``packed``'s."""
    groups = _groups(rows, metric, settled, first_s, last_s)
    if groups is None:
        return {}
    stamps, raw, counts = decode_windows_counted(groups.starts, groups.blobs)
    keep = (stamps >= first_s) & (stamps <= last_s)
    kept_before = np.concatenate(([0], np.cumsum(keep)))
    window_first = np.concatenate(([0], np.cumsum(counts)))
    stamps, raw = stamps[keep], raw[keep]
    bounds = kept_before[window_first[np.append(groups.firsts, len(groups.blobs))]].tolist()
    found: dict[str, dict[Key, tuple[np.ndarray, np.ndarray]]] = {}
    for number, first in enumerate(groups.firsts.tolist()):
        vm, metric, instance = groups.keys[groups.series_ids[first]]
        low, high = bounds[number], bounds[number + 1]
        found.setdefault(vm, {})[(metric, instance)] = (stamps[low:high], raw[low:high])
    return found


Windows = tuple[np.ndarray, tuple[bytes, ...]]
"""Some windows of one series in time order: their starts (s) and blobs."""
SeriesKey = tuple[str, str, str]
"""(VM, metric, instance)"""


def _merged(settled: Mapping[SeriesKey, list[Windows]], fresh: _Groups | None,
            first_window_s: int, last_window_s: int) -> _Groups:
    """Each series' settled windows (kept or just read whole hours) followed by its fresh
    ones, as one batch's groups; kept windows starting outside [first_window_s,
    last_window_s] left out (one array compare for the batch)."""
    parts: dict[SeriesKey, list[Windows]] = {key: list(w) for key, w in settled.items()}
    if fresh is not None:
        bounds = np.append(fresh.firsts, len(fresh.blobs)).tolist()
        for number in range(len(fresh.firsts)):
            low, high = bounds[number], bounds[number + 1]
            key = fresh.keys[fresh.series_ids[low]]
            parts.setdefault(key, []).append((fresh.starts[low:high],
                                              tuple(fresh.blobs[low:high])))
    keys = list(parts)
    blobs: list[bytes] = []
    starts: list[np.ndarray] = []
    sizes = []
    for key in keys:
        before = len(blobs)
        for stamps, kept in parts[key]:
            starts.append(stamps)
            blobs.extend(kept)
        sizes.append(len(blobs) - before)
    series_ids = np.repeat(np.arange(len(keys), dtype=np.int64), sizes)
    all_starts = np.concatenate(starts) if starts else np.empty(0, dtype=np.int64)
    inside = (all_starts >= first_window_s) & (all_starts <= last_window_s)
    if not inside.all():
        all_starts, series_ids = all_starts[inside], series_ids[inside]
        blobs = list(itertools.compress(blobs, inside.tolist()))
    present, series_ids = np.unique(series_ids, return_inverse=True)  # series left, renumbered
    return _Groups([keys[k] for k in present.tolist()], series_ids,
                   np.flatnonzero(np.diff(series_ids, prepend=-1)), all_starts, blobs)


def _groups(rows: list[tuple[Any, ...]], metric: str | None,
            settled: Mapping[SeriesKey, list[Windows]] | None, first_s: int, last_s: int
            ) -> _Groups | None:
    if settled:
        # A window holds the STORAGE_WINDOW seconds after its start.
        groups = _merged(settled, grouped(rows, metric) if rows else None,
                         first_s - STORAGE_WINDOW, last_s)
        return groups if groups.blobs else None
    return grouped(rows, metric) if rows else None


def packed(rows: list[tuple[Any, ...]], first_s: int, last_s: int, metric: str | None = None,
           settled: Mapping[SeriesKey, list[Windows]] | None = None
           ) -> dict[str, dict[Key, Packed]]:
    """VM → (metric, instance) → its windows undecoded, with the samples in range counted
    from the windows' headers (on the 20-s grid: no varint is read). Rows as ``decoded``;
    ``settled``: windows of each series to put before the rows' (SettledCache)."""
    groups = _groups(rows, metric, settled, first_s, last_s)
    if groups is None:
        return {}
    lengths = np.fromiter(map(len, groups.blobs), dtype=np.int64, count=len(groups.blobs))
    joined = b"".join(groups.blobs)
    data = np.frombuffer(joined, dtype=np.uint8)
    heads = np.concatenate(([0], np.cumsum(lengths)))
    if (lengths < 1).any():
        raise BlobError("empty sample blob")
    on_grid = data[heads[:-1]] & VERSION_FLAGS_ON_GRID != 0
    if (lengths[on_grid] < 3).any():
        raise BlobError("sample blob is truncated")
    counts = np.zeros(len(lengths), dtype=np.int64)
    grid = np.flatnonzero(on_grid)
    present, stamps = grid_slots(data, heads[grid], groups.starts[grid])
    counts[grid] = (present & (stamps >= first_s) & (stamps <= last_s)).sum(axis=1)
    for window in np.flatnonzero(~on_grid).tolist():  # rare: a real vCenter's are on grid
        times, _ = decode_window(int(groups.starts[window]), groups.blobs[window])
        counts[window] = int(((times >= first_s) & (times <= last_s)).sum())
    bounds = np.append(groups.firsts, len(groups.blobs))
    samples = np.add.reduceat(counts, groups.firsts).tolist()
    edges, offsets = bounds.tolist(), heads[bounds].tolist()
    found: dict[str, dict[Key, Packed]] = {}
    for number in range(len(groups.firsts)):
        low, high = edges[number], edges[number + 1]
        vm, metric, instance = groups.keys[groups.series_ids[low]]
        found.setdefault(vm, {})[(metric, instance)] = Packed(
            groups.starts[low:high], lengths[low:high],
            joined[offsets[number]:offsets[number + 1]], samples[number], first_s, last_s)
    return found


class CountedPiece(bytes):
    """Frame bytes that say what they hold, so the read API counts a Select's series and
    samples without parsing its frame again (``instrument.SelectCounter``)."""

    series: int
    samples: int
    ends: str | None
    """None: the frame goes on; else it ends here, as "ok" or "limit"."""

    @classmethod
    def of(cls, parts: list[bytes], series: int, samples: int, ends: str | None = None
           ) -> CountedPiece:
        piece = cls(b"".join(parts))
        piece.series, piece.samples, piece.ends = series, samples, ends
        return piece


def encode_entity(labels: Mapping[str, str]) -> bytes:
    """A VM's entity labels as a frame carries them (every series of the VM shares them)."""
    return b"".join(map(_label, labels.items()))


def encode_labels(name: str, entity: bytes, entity_labels: int, device: str) -> bytes:
    """A series' labels: its metric name, its VM's ``encode_entity`` (``entity_labels`` of
    them), its device if any. Label order is free: the engine sorts them."""
    count = 1 + entity_labels + (1 if device else 0)
    return b"".join((struct.pack("<I", count), _label(("__name__", name)), entity,
                     _label((DEVICE_LABEL, device)) if device else b""))


def label_bytes(labels: Mapping[str, str]) -> bytes:
    return struct.pack("<I", len(labels)) + encode_entity(labels)


def encode_packed(labels: bytes, series: Packed, scale: float) -> bytes:
    """A packed series (the engine's frameDecoder.packed): labels (``encode_labels``), the marker,
    f64 scale, i64 first and last timestamp kept (ms), u32 samples kept, u32 windows, u32
    data bytes, i64 starts, u32 lengths, the blobs."""
    return b"".join([labels,
                     struct.pack("<IdqqIII", POINTS_PACKED, scale, series.first_s * 1000,
                                 series.last_s * 1000,
                                 series.samples, len(series.starts), len(series.data)),
                     series.starts.astype("<i8").tobytes(),
                     series.lengths.astype("<u4").tobytes(), series.data])


def encode_series(labels: Mapping[str, str], stamps: np.ndarray, values: np.ndarray) -> bytes:
    # Label order is free: the engine sorts them.
    out = [label_bytes(labels), struct.pack("<I", len(stamps))]
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
