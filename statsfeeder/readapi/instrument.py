"""The read API's metrics taken from its traffic (``telemetry.ReadApiMetrics``): every
request by endpoint and status code with its duration, and what each Select returned to the
engine, counted from the frames ``SeriesStore.select`` streams."""

from __future__ import annotations

import struct
import time
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web
from aiohttp.typedefs import Middleware

from statsfeeder.readapi.store import END, ERROR, MAGIC
from statsfeeder.telemetry import ReadApiMetrics

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def endpoint_of(request: web.Request) -> str:
    """The route's path (``/api/v1/label/{name}/values``), never the raw one: a caller must
    not be able to grow the label set with made-up paths or label names."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "other"


def request_metrics(metrics: ReadApiMetrics) -> Middleware:
    @web.middleware
    async def measured(request: web.Request, handler: Handler) -> web.StreamResponse:
        endpoint = endpoint_of(request)
        began = time.monotonic()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            metrics.requests.labels(endpoint, str(status)).inc()
            metrics.request_duration.labels(endpoint).observe(time.monotonic() - began)
    return measured


def count_select(metrics: ReadApiMetrics, pieces: Iterable[bytes]) -> None:
    """Series and samples in one Select's frame pieces, and its outcome. A piece holds
    whole series (several: the store sends them in 64 KiB pieces), the first starts with the
    magic and the last ends with the end or error marker."""
    series = samples = 0
    outcome = "ok"
    end = struct.unpack("<I", END)[0]
    for piece in pieces:
        offset = len(MAGIC) if piece.startswith(MAGIC) else 0
        while offset < len(piece):
            (head,) = struct.unpack_from("<I", piece, offset)
            if head == end:
                break
            if head == ERROR:
                outcome = "limit"
                break
            offset, count = _series(piece, offset + 4, head)
            series += 1
            samples += count
    metrics.selects.labels(outcome).inc()
    metrics.series_returned.inc(series)
    metrics.samples_returned.inc(samples)


def _series(piece: bytes, offset: int, labels: int) -> tuple[int, int]:
    """Where the series starting at ``offset`` (after its label count) ends, and its
    samples."""
    for _ in range(labels):
        (name_length,) = struct.unpack_from("<H", piece, offset)
        offset += 2 + name_length
        (value_length,) = struct.unpack_from("<I", piece, offset)
        offset += 4 + value_length
    (count,) = struct.unpack_from("<I", piece, offset)
    return offset + 4 + 16 * count, int(count)
