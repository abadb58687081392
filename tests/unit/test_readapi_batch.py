"""A read batch's rows into series: packed (windows as stored, samples in range counted from
their headers) agrees with decoding every window, for series interleaved as Cassandra returns
them (a partition's rows by metric, window, instance), on and off the 20-s grid; and the
packed frame is counted by the Select metrics."""

from __future__ import annotations

import random

import numpy as np
from prometheus_client import CollectorRegistry

from statsfeeder.readapi.batch import Packed, decoded, encode_packed, label_bytes, packed
from statsfeeder.readapi.instrument import count_select
from statsfeeder.readapi.store import END, MAGIC
from statsfeeder.sinks.cassandra.encoder import decode_window, encode_window
from statsfeeder.telemetry import ReadApiMetrics

W = 1_795_334_400


def rows_of(rng: random.Random) -> list[tuple[str, str, str, int, bytes]]:
    rows = []
    for vm in ("vm-a", "vm-b"):
        for metric in ("cpu", "disk"):
            for start in range(W, W + 300 * 12, 300):
                for instance in (("",) if metric == "cpu" else ("sda", "sdb")):
                    slots = sorted(rng.sample(range(1, 16), rng.randint(1, 15)))
                    off = rng.random() < 0.2
                    stamps = [start + 20 * s - (rng.randint(1, 19) if off else 0)
                              for s in slots]
                    values = [rng.randint(-10**6, 10**6) for _ in stamps]
                    rows.append((vm, metric, instance, start * 1000,
                                 encode_window(start, stamps, values)))
    return rows


def test_packed_counts_and_windows_agree_with_decoding() -> None:
    rng = random.Random(5)
    for _ in range(20):
        rows = rows_of(rng)
        first_s, last_s = W + rng.randint(0, 900), W + 3600 - rng.randint(0, 900)
        whole = decoded(rows, first_s, last_s)
        stored = packed(rows, first_s, last_s)
        assert {vm: set(s) for vm, s in whole.items()} == {vm: set(s) for vm, s in stored.items()}
        for vm, series in stored.items():
            for key, item in series.items():
                stamps, values = whole[vm][key]
                assert item.samples == len(stamps)
                # The windows, decoded one by one and cut to the range, are the series.
                ends = np.cumsum(item.lengths).tolist()
                parts = [decode_window(int(start), item.data[end - length:end])
                         for start, length, end in zip(item.starts.tolist(),
                                                       item.lengths.tolist(), ends, strict=True)]
                got_t = np.concatenate([p[0] for p in parts])
                got_v = np.concatenate([p[1] for p in parts])
                keep = (got_t >= first_s) & (got_t <= last_s)
                assert got_t[keep].tolist() == stamps.tolist()
                assert got_v[keep].tolist() == values.tolist()
                assert (np.diff(item.starts) > 0).all()


def test_a_packed_frame_is_counted() -> None:
    rows = rows_of(random.Random(3))
    stored = packed(rows, W, W + 3600)
    items: list[Packed] = [item for series in stored.values() for item in series.values()]
    pieces = [MAGIC + b"".join(
        encode_packed(label_bytes({"__name__": "m", "n": str(n)}), item, 0.01)
        for n, item in enumerate(items)) + END]
    registry = CollectorRegistry()
    count_select(ReadApiMetrics(registry), pieces)
    assert registry.get_sample_value("statsfeeder_read_api_series_returned_total") == len(items)
    assert registry.get_sample_value("statsfeeder_read_api_samples_returned_total") == sum(
        item.samples for item in items)


def test_rows_of_one_metric_come_without_it() -> None:
    rows = [row for row in rows_of(random.Random(9)) if row[1] == "disk"]
    bare = [(vm, instance, start, data) for vm, _, instance, start, data in rows]
    first_s, last_s = W + 100, W + 3000
    def plain(found: dict[str, dict[tuple[str, str], Packed]]) -> object:
        return {vm: {key: (p.starts.tolist(), p.lengths.tolist(), p.data, p.samples)
                     for key, p in series.items()} for vm, series in found.items()}
    assert plain(packed(bare, first_s, last_s, "disk")) == plain(packed(rows, first_s, last_s))
    with_metric = decoded(rows, first_s, last_s)
    without = decoded(bare, first_s, last_s, "disk")
    assert {vm: {key: (s.tolist(), v.tolist()) for key, (s, v) in series.items()}
            for vm, series in without.items()} == {
        vm: {key: (s.tolist(), v.tolist()) for key, (s, v) in series.items()}
        for vm, series in with_metric.items()}
