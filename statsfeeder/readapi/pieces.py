"""Hour pieces: one series' stored windows of one hour, kept (``settled.py``) in the form the
engine's frame carries them (``engine/packedframe.go``, segments), so a Select answered from
memory joins each series' pieces instead of regrouping, clipping and re-encoding its windows.
The engine drops the windows outside the Select's range; the samples in range are counted
here, for the Select's metrics and to leave out series with none, from each piece's bitmap of
the hour's 180 slots on the 20-s grid (a real vCenter's samples are on it), or by decoding the
windows of a piece off the grid.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from statsfeeder.model import REALTIME_INTERVAL
from statsfeeder.readapi.batch import SeriesKey, Windows, encode_entity, encode_labels, grouped
from statsfeeder.readapi.names import Entity, StoredMetric, series_labels
from statsfeeder.sinks.cassandra.encoder import (
    SLOTS,
    VERSION_FLAGS_ON_GRID,
    BlobError,
    decode_window,
    read_varints,
)
from statsfeeder.sources.vcenter.query import STORAGE_WINDOW

POINTS_SEGMENTS = 0xFFFFFFFC
"""In a series' point count: its windows follow as hour pieces (the engine's pointsSegments)."""
_HEAD = struct.Struct("<II")
_SERIES = struct.Struct("<IdqqII")
SLOTS_IN_HOUR = 3600 // REALTIME_INTERVAL


@dataclass(frozen=True, slots=True)
class HourPiece:
    """``segment``: u32 windows, u32 data bytes, the windows' i64 starts (s), their u32
    lengths, the blobs. ``mask``: bit k set when a sample is stamped at hour start + 20 (k+1)
    s; None when a window is off the 20-s grid. ``first``/``last``: the first and last
    window's start (s)."""

    segment: bytes
    starts: np.ndarray
    """The windows' starts: a view into ``segment``."""
    mask: int | None
    samples: int
    first: int
    last: int

    @property
    def windows(self) -> int:
        return len(self.starts)

    def blobs(self) -> tuple[bytes, ...]:
        count = len(self.starts)
        lengths = np.frombuffer(self.segment, dtype="<u4", count=count,
                                offset=_HEAD.size + 8 * count).astype(np.int64)
        ends = np.cumsum(lengths) + _HEAD.size + 12 * count
        return tuple(self.segment[a:b] for a, b in zip((ends - lengths).tolist(), ends.tolist(),
                                                       strict=True))

    def as_windows(self) -> Windows:
        """The piece as the batch's (starts, blobs), for the decoding paths."""
        return self.starts.astype(np.int64), self.blobs()

    def samples_in(self, first_s: int, last_s: int) -> int:
        """Its samples stamped in [first_s, last_s]."""
        if self.first + 1 >= first_s and self.last + STORAGE_WINDOW <= last_s:
            return self.samples
        if self.mask is not None:
            hour = self.first // 3600 * 3600
            low = max(0, -(-(first_s - hour) // REALTIME_INTERVAL) - 1)
            high = min(SLOTS_IN_HOUR - 1, (last_s - hour) // REALTIME_INTERVAL - 1)
            if high < low:
                return 0
            return (self.mask >> low & (1 << (high - low + 1)) - 1).bit_count()
        total = 0
        for start, blob in zip(self.starts.tolist(), self.blobs(), strict=True):
            times, _ = decode_window(start, blob)
            total += int(((times >= first_s) & (times <= last_s)).sum())
        return total


@dataclass(frozen=True)
class Pieces:
    """A series' hour pieces overlapping a Select's range [first_s, last_s] (s), and its
    samples in it."""

    pieces: list[HourPiece]
    samples: int
    first_s: int
    last_s: int


def hour_pieces(rows: list[tuple[Any, ...]], metric: str | None = None
                ) -> dict[SeriesKey, dict[int, HourPiece]]:
    """Rows (vm_id, [metric,] instance, start_ms, data) as each series' pieces by the hour
    (s) their windows start in; a malformed window header raises BlobError."""
    if not rows:
        return {}
    groups = grouped(rows, metric)
    blobs = groups.blobs
    lengths = np.fromiter(map(len, blobs), dtype=np.int64, count=len(blobs))
    if (lengths < 1).any():
        raise BlobError("empty sample blob")
    joined = b"".join(blobs)
    data = np.frombuffer(joined, dtype=np.uint8)
    offsets = np.concatenate(([0], np.cumsum(lengths)))
    heads = offsets[:-1]
    on_grid = data[heads] & VERSION_FLAGS_ON_GRID != 0
    if (lengths[on_grid] < 3).any():
        raise BlobError("sample blob is truncated")
    bitmaps = np.zeros(len(blobs), dtype=np.int64)
    at = heads[on_grid]
    bitmaps[on_grid] = (data[at + 1].astype(np.int64) | data[at + 2].astype(np.int64) << 8
                        ) & (1 << SLOTS) - 1
    counts = np.bitwise_count(bitmaps).astype(np.int64)
    for window in np.flatnonzero(~on_grid).tolist():  # rare: a real vCenter's are on grid
        (counts[window],), _ = read_varints(blobs[window], 1, 1)
    starts = groups.starts
    hours = starts // 3600 * 3600
    # A piece: a run of one series' windows in one hour (windows are grouped by series).
    cut = np.flatnonzero((np.diff(hours) != 0) | (np.diff(groups.series_ids) != 0)) + 1
    edges = [0, *cut.tolist(), len(blobs)]
    totals = np.add.reduceat(counts, edges[:-1]).tolist()
    byte_edges = offsets[edges].tolist()
    first_starts, hour_of = starts[edges[:-1]].tolist(), hours[edges[:-1]].tolist()
    last_starts = starts[np.array(edges[1:]) - 1].tolist()
    owners = groups.series_ids[edges[:-1]].tolist()
    # Converted once for the whole fill, sliced per piece.
    start_bytes, length_bytes = starts.astype("<i8").tobytes(), lengths.astype("<u4").tobytes()
    # Each window's bitmap at its place among the hour's slots (Python ints: 180 bits).
    shifted = [bitmap << shift for bitmap, shift in zip(
        bitmaps.tolist(), ((starts - hours) // REALTIME_INTERVAL).tolist(), strict=True)]
    off_grid = np.concatenate(([0], np.cumsum(~on_grid)))[edges].tolist()
    found: dict[SeriesKey, dict[int, HourPiece]] = {}
    for number, (a, b) in enumerate(itertools.pairwise(edges)):
        low, high = byte_edges[number], byte_edges[number + 1]
        segment = b"".join((_HEAD.pack(b - a, high - low), start_bytes[8 * a:8 * b],
                            length_bytes[4 * a:4 * b], joined[low:high]))
        mask = None
        if off_grid[number + 1] == off_grid[number]:
            mask = 0
            for bits in shifted[a:b]:
                mask |= bits
        found.setdefault(groups.keys[owners[number]], {})[hour_of[number]] = HourPiece(
            segment, np.frombuffer(segment, dtype="<i8", count=b - a, offset=_HEAD.size),
            mask, totals[number], first_starts[number], last_starts[number])
    return found


def overlapping(pieces: Sequence[HourPiece], first_s: int, last_s: int) -> list[HourPiece]:
    """The pieces with a window whose samples, stamped in (start, start + STORAGE_WINDOW],
    may fall in [first_s, last_s]."""
    return [p for p in pieces
            if p.samples and p.last + STORAGE_WINDOW >= first_s and p.first < last_s]


def samples_in_range(series: Sequence[Sequence[HourPiece]], first_s: int, last_s: int
                     ) -> list[int]:
    """Per series (its overlapping pieces), its samples stamped in [first_s, last_s]."""
    return [sum(piece.samples_in(first_s, last_s) for piece in pieces) for pieces in series]


def encode_pieces(labels: bytes, pieces: Sequence[HourPiece], scale: float, first_s: int,
                  last_s: int, samples: int) -> bytes:
    """A series as hour pieces (the engine's frameDecoder.segments): labels (``encode_labels``), the
    marker, f64 scale, i64 first and last timestamp kept (ms), u32 samples in that range,
    u32 pieces, then each piece's segment."""
    return b"".join((labels, _SERIES.pack(POINTS_SEGMENTS, scale, first_s * 1000,
                                          last_s * 1000, samples, len(pieces)),
                     *(p.segment for p in pieces)))


def kept_series(batch: list[tuple[Entity, dict[str, str]]],
                found: dict[str, dict[tuple[str, str], list[HourPiece]]],
                by_metric: Mapping[str, StoredMetric],
                series_checks: list[tuple[str, Callable[[str], bool]]], first_s: int,
                last_s: int, encoded: dict[str, bytes]
                ) -> Iterator[tuple[bytes, float, Pieces]]:
    """A batch of VMs' series from their hour pieces (``found``: per VM, per (metric,
    instance)), those with samples in [first_s, last_s]: encoded labels, scale, pieces.
    ``series_checks``: matchers on labels other than the entity's and the name;
    ``encoded``: each VM's entity labels as the frame carries them, filled as met."""
    chosen: list[tuple[Entity, dict[str, str], tuple[str, str], list[HourPiece]]] = []
    for entity, labels in batch:
        mine = found.get(entity.vm)
        if not mine:
            continue
        for key in sorted(mine):
            kept = overlapping(mine[key], first_s, last_s)
            if not kept:
                continue
            if series_checks:
                full = series_labels(by_metric[key[0]].name, labels, key[1])
                if not all(check(full.get(name, "")) for name, check in series_checks):
                    continue
            chosen.append((entity, labels, key, kept))
    counts = samples_in_range([kept for *_, kept in chosen], first_s, last_s)
    for (entity, labels, (metric, instance), kept), samples in zip(chosen, counts,
                                                                   strict=True):
        if not samples:
            continue
        part = encoded.get(entity.vm)
        if part is None:
            part = encoded[entity.vm] = encode_entity(labels)
        info = by_metric[metric]
        yield (encode_labels(info.name, part, len(labels), instance), info.scale,
               Pieces(kept, samples, first_s, last_s))
