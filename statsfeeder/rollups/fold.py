"""Folds the packed raw windows of one VM-hour straight into min/max/sum/count/last per series
without decoding each window on its own: the value varints of every on-grid window are
concatenated and decoded at once with numpy (roll-ups do not need the timestamps). A series
with an off-grid window (rare: not a real vCenter's) goes through the ordinary decoder.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from statsfeeder.rollups.compute import Agg, SeriesKey
from statsfeeder.sinks.cassandra.encoder import VERSION_FLAGS_ON_GRID, BlobError, decode_window

_POPCOUNT = np.array([bin(i).count("1") for i in range(1 << 16)], dtype=np.int64)


def fold(rows: Iterable[tuple[SeriesKey, int, bytes]]) -> dict[SeriesKey, Agg]:
    """``rows``: (series, window_start, blob), windows ascending within each series."""
    per_series: dict[SeriesKey, list[tuple[int, bytes]]] = {}
    for key, start, blob in rows:
        if not blob:
            raise BlobError("empty sample blob")
        per_series.setdefault(key, []).append((start, blob))
    result: dict[SeriesKey, Agg] = {}
    sections: list[bytes] = []
    counts: list[int] = []
    spans: list[tuple[SeriesKey, int]] = []  # (series, its number of values), in order
    for key, windows in per_series.items():
        if all(blob[0] & VERSION_FLAGS_ON_GRID for _, blob in windows):
            size = 0
            for _, blob in windows:
                count = int(_POPCOUNT[int.from_bytes(blob[1:3], "little")])
                if count:
                    sections.append(blob[3:])
                    counts.append(count)
                    size += count
            if size:
                spans.append((key, size))
        else:
            values = np.concatenate([decode_window(start, blob)[1] for start, blob in windows])
            if values.size:
                result[key] = Agg.of(values)
    if sections:
        values = _values(b"".join(sections), np.array(counts, dtype=np.int64))
        begin = 0
        for key, size in spans:
            result[key] = Agg.of(values[begin:begin + size])
            begin += size
    return result


def _values(data: bytes, counts: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Zigzag-varint deltas of consecutive windows (``counts`` values each, none empty; each
    window's first delta is from 0) to values."""
    raw = np.frombuffer(data, dtype=np.uint8).astype(np.int64)
    ends = np.flatnonzero(raw < 0x80)
    total = int(counts.sum())
    if ends.size != total or (raw.size and ends[-1] != raw.size - 1):
        raise BlobError(f"sample blobs hold {ends.size} values, their bitmaps say {total}")
    firsts = np.concatenate(([0], ends[:-1] + 1))
    varint_of_byte = np.repeat(np.arange(total), ends - firsts + 1)
    shift = 7 * (np.arange(raw.size) - firsts[varint_of_byte])
    zigzag = np.add.reduceat((raw & 0x7F) << shift, firsts)
    deltas = (zigzag >> 1) ^ -(zigzag & 1)
    running = np.cumsum(deltas)
    window_first = np.concatenate(([0], np.cumsum(counts)[:-1]))
    base = np.repeat(running[window_first] - deltas[window_first], counts)
    values: np.ndarray[Any, Any] = running - base
    return values
