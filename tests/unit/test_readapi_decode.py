"""The read API's bulk window decoder agrees with the sink's own decoder, blob for blob."""

from __future__ import annotations

import random

import numpy as np
import pytest

from statsfeeder.readapi.decode import decode_windows
from statsfeeder.sinks.cassandra.encoder import BlobError, decode_window, encode_window

W = 1_795_334_400


def window(rng: random.Random, start: int, on_grid: bool) -> bytes:
    slots = sorted(rng.sample(range(1, 16), rng.randint(1, 15)))
    stamps = [start + 20 * s - (0 if on_grid else rng.randint(1, 19)) for s in slots]
    values = [rng.choice([0, -1, -5, 2**40, -(2**40), rng.randint(-10**6, 10**6)])
              for _ in stamps]
    return encode_window(start, stamps, values)


@pytest.mark.parametrize("off_grid_share", [0.0, 0.2])
def test_bulk_decoding_equals_window_by_window(off_grid_share: float) -> None:
    rng = random.Random(11)
    for _ in range(200):
        starts = [W + 300 * i for i in range(rng.randint(0, 30))]
        blobs = [window(rng, start, rng.random() >= off_grid_share) for start in starts]
        stamps, values = decode_windows(starts, blobs)
        expected = [decode_window(start, blob) for start, blob in zip(starts, blobs,
                                                                       strict=True)]
        assert stamps.tolist() == [int(t) for part in expected for t in part[0]]
        assert values.tolist() == [int(v) for part in expected for v in part[1]]
        assert stamps.dtype == np.int64 and values.dtype == np.int64


def test_a_truncated_blob_is_an_error() -> None:
    blob = encode_window(W, [W + 20, W + 40], [300, 100000])
    with pytest.raises(BlobError):
        decode_windows([W], [blob[:-1]])
