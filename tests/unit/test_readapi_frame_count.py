"""The read API's Select metrics count every series and sample of a frame whose pieces hold
several series each, and a limit error at the end of the last piece."""

from __future__ import annotations

import struct

import numpy as np
from prometheus_client import CollectorRegistry

from statsfeeder.readapi.batch import encode_series
from statsfeeder.readapi.instrument import count_select
from statsfeeder.readapi.store import END, ERROR, MAGIC
from statsfeeder.telemetry import ReadApiMetrics


def frame(points: list[int], limit: bool = False) -> list[bytes]:
    """As ``SeriesStore.select`` sends it: the magic, then pieces of whole series."""
    encoded = [encode_series({"__name__": "m", "vm": f"vm-{n}", "org": "acme"},
                             np.arange(count, dtype=np.int64), np.ones(count))
               for n, count in enumerate(points)]
    tail = struct.pack("<II", ERROR, 5) + b"limit" if limit else END
    return [MAGIC + b"".join(encoded[:2]), b"".join(encoded[2:]) + tail]


def counted(pieces: list[bytes]) -> tuple[float, float, float, float]:
    registry = CollectorRegistry()
    count_select(ReadApiMetrics(registry), pieces)

    def value(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, labels) or 0.0
    return (value("statsfeeder_read_api_series_returned_total"),
            value("statsfeeder_read_api_samples_returned_total"),
            value("statsfeeder_read_api_selects_total", outcome="ok"),
            value("statsfeeder_read_api_selects_total", outcome="limit"))


def test_pieces_of_several_series_are_counted_whole() -> None:
    assert counted(frame([3, 0, 7, 1])) == (4, 11, 1, 0)
    assert counted([MAGIC + END]) == (0, 0, 1, 0)


def test_a_limit_at_the_end_of_a_piece_is_its_outcome() -> None:
    assert counted(frame([2, 2, 5], limit=True)) == (3, 9, 0, 1)
