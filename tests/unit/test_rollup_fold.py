"""The vectorised fold of packed windows equals decoding each window and aggregating."""

from __future__ import annotations

import numpy as np
import pytest

from statsfeeder.rollups.compute import Agg
from statsfeeder.rollups.fold import fold
from statsfeeder.sinks.cassandra.encoder import BlobError, decode_window, encode_window


def test_fold_equals_decoding_each_window() -> None:
    rng = np.random.default_rng(7)
    rows = []
    for metric in ("a", "b", "c"):
        for instance in ("", "0"):
            for w in range(12):
                start = 1_795_132_800 + 300 * w
                slots = sorted(rng.choice(15, int(rng.integers(1, 16)), replace=False).tolist())
                stamps = [start + 20 * (s + 1) for s in slots]
                if metric == "c" and w == 5:
                    stamps = [start + 7, start + 19]  # off the grid: the slow path
                values = rng.integers(-(1 << 40), 1 << 40, len(stamps)).tolist()
                if metric == "b":
                    values = rng.integers(0, 300, len(stamps)).tolist()
                rows.append(((metric, instance), start, encode_window(start, stamps, values)))
    want = {}
    for key, start, blob in rows:
        values = decode_window(start, blob)[1]
        want[key] = np.concatenate([want[key], values]) if key in want else values
    assert fold(rows) == {key: Agg.of(values) for key, values in want.items()}


def test_fold_refuses_a_corrupt_blob() -> None:
    blob = encode_window(0, [20, 40], [5, 300])
    with pytest.raises(BlobError):
        fold([(("a", ""), 0, blob[:-1])])
    with pytest.raises(BlobError):
        fold([(("a", ""), 0, b"")])
