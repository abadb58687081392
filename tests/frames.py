"""Reads a Select's frame as the engine does (``engine/storage.go``): every series' labels, the
sample count its header claims, and the samples the engine would iterate, whether it came
as decoded points, one packed block or hour pieces. Frames of different shapes that the
engine reads alike compare equal here."""

from __future__ import annotations

import struct
from typing import Any

from statsfeeder.readapi.batch import POINTS_PACKED
from statsfeeder.readapi.pieces import POINTS_SEGMENTS
from statsfeeder.readapi.store import END, MAGIC
from statsfeeder.sinks.cassandra.encoder import decode_window
from statsfeeder.sources.vcenter.query import STORAGE_WINDOW

Read = dict[tuple[tuple[str, str], ...], tuple[int, list[tuple[int, float]]]]


def read_frame(frame: bytes) -> Read:
    assert frame.startswith(MAGIC), frame[:8]
    offset, found = len(MAGIC), Read()
    while True:
        (count,) = struct.unpack_from("<I", frame, offset)
        offset += 4
        if frame[offset - 4:offset] == END:
            assert offset == len(frame)
            return found
        labels = []
        for _ in range(count):
            (size,) = struct.unpack_from("<H", frame, offset)
            name = frame[offset + 2:offset + 2 + size].decode()
            offset += 2 + size
            (size,) = struct.unpack_from("<I", frame, offset)
            labels.append((name, frame[offset + 4:offset + 4 + size].decode()))
            offset += 4 + size
        key = tuple(sorted(labels))
        assert key not in found, key
        offset, found[key] = _samples(frame, offset)


def _samples(frame: bytes, offset: int) -> tuple[int, tuple[int, list[tuple[int, float]]]]:
    (points,) = struct.unpack_from("<I", frame, offset)
    offset += 4
    if points not in (POINTS_PACKED, POINTS_SEGMENTS):
        stamps = struct.unpack_from(f"<{points}q", frame, offset)
        values = struct.unpack_from(f"<{points}d", frame, offset + 8 * points)
        return offset + 16 * points, (points, list(zip(stamps, values, strict=True)))
    windows: list[tuple[int, bytes]] = []
    if points == POINTS_PACKED:
        scale, mint, maxt, claimed, count, size = struct.unpack_from("<dqqIII", frame, offset)
        offset = _windows(frame, offset + 36, count, size, windows)
    else:
        scale, mint, maxt, claimed, segments = struct.unpack_from("<dqqII", frame, offset)
        offset += 32
        for _ in range(segments):
            count, size = struct.unpack_from("<II", frame, offset)
            offset = _windows(frame, offset + 8, count, size, windows)
        windows = [(start, blob) for start, blob in windows
                   if mint // 1000 - STORAGE_WINDOW <= start <= maxt // 1000]
    samples: list[tuple[int, float]] = []
    for start, blob in windows:
        times, raw = decode_window(start, blob)
        samples += [(int(t) * 1000, float(v) * scale) for t, v in zip(times, raw, strict=True)
                    if mint <= t * 1000 <= maxt]
    return offset, (claimed, samples)


def _windows(frame: bytes, offset: int, count: int, size: int,
             into: list[tuple[int, bytes]]) -> int:
    starts = struct.unpack_from(f"<{count}q", frame, offset)
    lengths = struct.unpack_from(f"<{count}I", frame, offset + 8 * count)
    at = offset + 12 * count
    for start, length in zip(starts, lengths, strict=True):
        into.append((start, frame[at:at + length]))
        at += length
    assert at == offset + 12 * count + size
    return at


def claims_match(read: Read) -> Any:
    """Series whose header's sample count is not what the engine iterates."""
    return {key: (claimed, len(samples)) for key, (claimed, samples) in read.items()
            if claimed != len(samples)}
