"""Hour pieces (``readapi/pieces.py``): windows kept per series and hour in the engine's frame
form give back the windows stored, and count exactly the samples a range holds, on and off
the 20-s grid, at every kind of edge."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from statsfeeder.readapi.pieces import (
    POINTS_SEGMENTS,
    encode_pieces,
    hour_pieces,
    overlapping,
    samples_in_range,
)
from statsfeeder.sinks.cassandra.encoder import BlobError, decode_window, encode_window

HOUR = 3600
BASE = 1_795_334_400  # a whole hour


def window_rows(vm: str, starts: list[int], rng: np.random.Generator, off_grid: bool = True
                ) -> list[tuple[str, str, int, bytes]]:
    """One-metric rows: on-grid windows with slots missing, and (``off_grid``) every fifth
    off the grid."""
    rows = []
    for number, start in enumerate(starts):
        if off_grid and number % 5 == 4:
            stamps = sorted(set((start + rng.integers(1, 301, 6)).tolist()))
        else:
            slots = np.flatnonzero(rng.random(15) < 0.8)
            stamps = [start + 20 * (int(s) + 1) for s in slots]
        values = rng.integers(0, 10_000, len(stamps)).tolist()
        rows.append((vm, "", start * 1000, encode_window(start, stamps, values)))
    return rows


def exact(rows: list[tuple[str, str, int, bytes]], first_s: int, last_s: int) -> int:
    total = 0
    for _, _, start_ms, blob in rows:
        times, _ = decode_window(start_ms // 1000, blob)
        total += int(((times >= first_s) & (times <= last_s)).sum())
    return total


def test_pieces_give_back_the_windows_and_count_any_range_exactly() -> None:
    rng = np.random.default_rng(5)
    starts = [BASE + 300 * k for k in range(36) if k not in (7, 20)]  # 3 hours, 2 missing
    # "a": some windows off the grid (decoded to count); "b": all on it (its hour bitmaps).
    rows = {vm: window_rows(vm, starts, rng, off_grid=vm == "a") for vm in ("a", "b")}
    found = hour_pieces(rows["a"] + rows["b"], "cpu")
    assert set(found) == {("a", "cpu", ""), ("b", "cpu", "")}
    for vm in ("a", "b"):
        by_hour = found[(vm, "cpu", "")]
        assert sorted(by_hour) == [BASE, BASE + HOUR, BASE + 2 * HOUR]
        back = [(int(t), blob) for hour in sorted(by_hour)
                for t, blob in zip(by_hour[hour].starts.tolist(), by_hour[hour].blobs(),
                                   strict=True)]
        assert back == [(r[2] // 1000, r[3]) for r in rows[vm]]
    ranges = [(BASE - 600, BASE + 4 * HOUR), (BASE + 1, BASE + 3 * HOUR),
              (BASE + 613, BASE + 2 * HOUR + 17), (BASE + 1207, BASE + 1213),
              (BASE + 1200, BASE + 1200), (BASE + 7 * 300 + 10, BASE + 8 * 300 + 10),
              (BASE + 3 * HOUR + 1, BASE + 4 * HOUR), (BASE - HOUR, BASE),
              (BASE + 150, BASE + 3 * HOUR - 150), (BASE + HOUR - 150, BASE + 2 * HOUR)]
    # A range starting or ending on a sample, in a window on the grid and one off it.
    for window in (rows["a"][13], rows["a"][14]):
        times, _ = decode_window(window[2] // 1000, window[3])
        ranges += [(BASE + 150, int(times[1])), (int(times[1]), BASE + 3 * HOUR - 150)]
    for vm in ("a", "b"):
        pieces = [found[(vm, "cpu", "")][h] for h in sorted(found[(vm, "cpu", "")])]
        assert all((p.mask is None) == (vm == "a") for p in pieces)
        for first_s, last_s in ranges:
            kept = overlapping(pieces, first_s, last_s)
            assert samples_in_range([kept], first_s, last_s) == [
                exact(rows[vm], first_s, last_s)], (vm, first_s - BASE, last_s - BASE)
        assert overlapping(pieces, BASE + 3 * HOUR + 1, BASE + 4 * HOUR) == []


def test_a_series_frame_carries_its_pieces_whole() -> None:
    rng = np.random.default_rng(6)
    rows = window_rows("a", [BASE + 300 * k for k in range(14)], rng)
    pieces = list(hour_pieces(rows, "cpu")[("a", "cpu", "")].values())
    frame = encode_pieces(b"LABELS", pieces, 0.01, BASE, BASE + HOUR, 99)
    assert frame.startswith(b"LABELS")
    marker, scale, first_ms, last_ms, samples, count = struct.unpack_from("<IdqqII", frame, 6)
    assert (marker, scale, first_ms, last_ms, samples, count) == (
        POINTS_SEGMENTS, 0.01, BASE * 1000, (BASE + HOUR) * 1000, 99, 2)
    assert frame.endswith(pieces[0].segment + pieces[1].segment)


def test_a_malformed_window_header_is_refused_when_kept() -> None:
    with pytest.raises(BlobError):
        hour_pieces([("a", "", BASE * 1000, b"")], "cpu")
    with pytest.raises(BlobError):
        hour_pieces([("a", "", BASE * 1000, b"\x01\x00")], "cpu")
