"""Decodes all the stored windows of one series at once (blob format version 1,
``statsfeeder/sinks/cassandra/encoder.py``): the varints of every window in one numpy pass
instead of a Python loop per byte, which is what a query over many VMs spends its time on.
Windows off the 20-s grid (rare: a real vCenter's are on it) go through ``decode_window``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from statsfeeder.model import REALTIME_INTERVAL, Int64Array
from statsfeeder.sinks.cassandra.encoder import (
    SLOTS,
    VERSION_FLAGS_ON_GRID,
    BlobError,
    decode_window,
)

_SLOT_OFFSETS = REALTIME_INTERVAL * np.arange(1, SLOTS + 1, dtype=np.int64)
_SLOT_BITS = np.arange(SLOTS, dtype=np.int64)
_EMPTY = np.empty(0, dtype=np.int64)


def grid_slots(data: np.ndarray, heads: np.ndarray, starts: Int64Array
               ) -> tuple[np.ndarray, Int64Array]:
    """For on-grid windows whose headers begin at ``heads`` in ``data``: which of their 15
    slots hold a sample (from the header's bitmap), and every slot's timestamp (window by
    slot)."""
    bitmaps = data[heads + 1].astype(np.int64) | data[heads + 2].astype(np.int64) << 8
    present = (bitmaps[:, None] >> _SLOT_BITS) & 1 == 1
    return present, starts[:, None] + _SLOT_OFFSETS


def decode_windows(starts: Sequence[int] | Int64Array, blobs: Sequence[bytes]
                   ) -> tuple[Int64Array, Int64Array]:
    """Timestamps and raw values of consecutive windows, concatenated in order."""
    stamps, values, _ = decode_windows_counted(starts, blobs)
    return stamps, values


def decode_windows_counted(starts: Sequence[int] | Int64Array, blobs: Sequence[bytes]
                           ) -> tuple[Int64Array, Int64Array, Int64Array]:
    """Timestamps and raw values of windows (of one series or several), concatenated in
    order, and each window's sample count (where each window's samples begin). Headers,
    timestamps and varints are all taken apart with array operations: a Python step per
    window or sample is what a query over many VMs would spend its time on."""
    if not len(blobs):
        return _EMPTY, _EMPTY, _EMPTY
    lengths = np.fromiter(map(len, blobs), dtype=np.int64, count=len(blobs))
    data = np.frombuffer(b"".join(blobs), dtype=np.uint8)
    heads = np.concatenate(([0], np.cumsum(lengths[:-1])))
    if (lengths < 3).any() or not (data[heads] & VERSION_FLAGS_ON_GRID).all():
        return _one_by_one(starts, blobs)
    present, slot_stamps = grid_slots(data, heads, np.asarray(starts, dtype=np.int64))
    counts = present.sum(axis=1)
    stamps = slot_stamps[present]
    body = np.ones(len(data), dtype=bool)
    body[heads] = body[heads + 1] = body[heads + 2] = False
    data = data[body]
    ends = np.flatnonzero(data < 0x80)
    if len(ends) != len(stamps) or (len(data) and data[-1] >= 0x80):
        raise BlobError("sample blob is truncated or has trailing bytes")
    if not len(stamps):
        return _EMPTY, _EMPTY, counts.astype(np.int64)
    firsts = np.concatenate(([0], ends[:-1] + 1))
    position = np.arange(len(data)) - np.repeat(firsts, ends - firsts + 1)
    parts = (data & 0x7F).astype(np.uint64) << (7 * position).astype(np.uint64)
    zigzag = np.add.reduceat(parts, firsts)
    deltas = (zigzag >> np.uint64(1)).astype(np.int64) ^ -(zigzag & np.uint64(1)).astype(np.int64)
    # Each window's first value is absolute: a running sum restarted per window.
    running = np.cumsum(deltas)
    window_ends = np.cumsum(counts) - 1
    before = np.concatenate(([0], running[window_ends[:-1]]))
    values = running - np.repeat(before, counts)
    return stamps, values.astype(np.int64), counts.astype(np.int64)


def _one_by_one(starts: Sequence[int] | Int64Array, blobs: Sequence[bytes]
                ) -> tuple[Int64Array, Int64Array, Int64Array]:
    pieces = [decode_window(int(start), blob)
              for start, blob in zip(starts, blobs, strict=True)]
    counts = np.fromiter((len(p[0]) for p in pieces), dtype=np.int64, count=len(pieces))
    return (np.concatenate([p[0] for p in pieces]).astype(np.int64),
            np.concatenate([p[1] for p in pieces]).astype(np.int64), counts)
