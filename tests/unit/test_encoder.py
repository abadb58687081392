"""Sample blobs: round trips on and off the 20-s grid, and window splitting."""

from __future__ import annotations

import random

import numpy as np
import pytest

from statsfeeder.model import Counter, Series
from statsfeeder.sinks.cassandra.encoder import BlobError, decode_window, encode_window, windows

W = 1_795_334_400  # a 300-s boundary


def test_on_grid_window_costs_no_timestamp_bytes() -> None:
    stamps = [W + 20 * i for i in range(1, 16)]
    values = [5000 + i for i in range(15)]
    blob = encode_window(W, stamps, values)
    assert len(blob) == 3 + 2 + 14  # flags, bitmap, first value (2 bytes), 14 one-byte deltas
    decoded = decode_window(W, blob)
    assert decoded[0].tolist() == stamps and decoded[1].tolist() == values


def test_random_round_trips() -> None:
    rng = random.Random(7)
    for _ in range(500):
        on_grid = rng.random() < 0.5
        slots = sorted(rng.sample(range(1, 16), rng.randint(1, 15)))
        stamps = [W + 20 * s - (0 if on_grid else rng.randint(1, 19)) for s in slots]
        values = [rng.choice([0, -1, -5, 2**40, rng.randint(-10**6, 10**6)]) for _ in stamps]
        got_stamps, got_values = decode_window(W, encode_window(W, stamps, values))
        assert got_stamps.tolist() == stamps and got_values.tolist() == values


def test_truncated_blob_is_an_error() -> None:
    blob = encode_window(W, [W + 20, W + 40], [300, 100000])
    with pytest.raises(BlobError):
        decode_window(W, blob[:-1])


def test_windows_split_on_storage_boundaries_end_stamped() -> None:
    stamps = np.array([W - 20, W, W + 20, W + 300, W + 320], dtype=np.int64)
    series = Series("vc", "vm-1", Counter("cpu.usage.average", 2, "percent"), "", stamps,
                    np.arange(5, dtype=np.int64))
    assert [(start, ts) for start, ts, _ in windows(series)] == [
        (W - 300, [W - 20, W]), (W, [W + 20, W + 300]), (W + 300, [W + 320])]
