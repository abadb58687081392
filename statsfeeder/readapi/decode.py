"""Decodes all the stored windows of one series at once (blob format version 1,
``statsfeeder/sinks/cassandra/encoder.py``): the varints of every window in one numpy pass
instead of a Python loop per byte, which is what a query over many VMs spends its time on.
Windows off the 20-s grid (rare: a real vCenter's are on it) go through ``decode_window``."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from statsfeeder.model import REALTIME_INTERVAL, Int64Array
from statsfeeder.sinks.cassandra.encoder import (
    SLOTS,
    VERSION_FLAGS_ON_GRID,
    BlobError,
    decode_window,
)


@lru_cache(maxsize=4096)
def _offsets(bitmap: int) -> tuple[int, ...]:
    return tuple(REALTIME_INTERVAL * (slot + 1) for slot in range(SLOTS) if bitmap >> slot & 1)


def decode_windows(starts: list[int], blobs: list[bytes]) -> tuple[Int64Array, Int64Array]:
    """Timestamps and raw values of consecutive windows, concatenated in order."""
    stamps: list[int] = []
    counts: list[int] = []
    payload: list[bytes] = []
    for start, blob in zip(starts, blobs, strict=True):
        if not blob or not blob[0] & VERSION_FLAGS_ON_GRID or len(blob) < 3:
            return _one_by_one(starts, blobs)
        offsets = _offsets(blob[1] | blob[2] << 8)
        stamps.extend(start + offset for offset in offsets)
        counts.append(len(offsets))
        payload.append(blob[3:])
    data = np.frombuffer(b"".join(payload), dtype=np.uint8)
    ends = np.flatnonzero(data < 0x80)
    if len(ends) != len(stamps) or (len(data) and data[-1] >= 0x80):
        raise BlobError("sample blob is truncated or has trailing bytes")
    if not len(stamps):
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
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
    return np.array(stamps, dtype=np.int64), values.astype(np.int64)


def _one_by_one(starts: list[int], blobs: list[bytes]) -> tuple[Int64Array, Int64Array]:
    pieces = [decode_window(start, blob) for start, blob in zip(starts, blobs, strict=True)]
    if not pieces:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    return (np.concatenate([p[0] for p in pieces]).astype(np.int64),
            np.concatenate([p[1] for p in pieces]).astype(np.int64))
