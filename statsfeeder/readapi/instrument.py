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
    """Series and samples in one Select's frame pieces, and its outcome."""
    series = samples = 0
    outcome = "ok"
    for piece in pieces:
        if piece in (MAGIC, END):
            continue
        (head,) = struct.unpack_from("<I", piece)
        if head == ERROR:
            outcome = "limit"
            continue
        series += 1
        samples += _samples(piece, head)
    metrics.selects.labels(outcome).inc()
    metrics.series_returned.inc(series)
    metrics.samples_returned.inc(samples)


def _samples(piece: bytes, labels: int) -> int:
    offset = 4
    for _ in range(labels):
        (name_length,) = struct.unpack_from("<H", piece, offset)
        offset += 2 + name_length
        (value_length,) = struct.unpack_from("<I", piece, offset)
        offset += 4 + value_length
    (count,) = struct.unpack_from("<I", piece, offset)
    return int(count)
