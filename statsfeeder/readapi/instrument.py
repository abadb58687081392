"""The read API's metrics taken from its traffic (``telemetry.ReadApiMetrics``): every
request by endpoint and status code with its duration, and what each Select returned to the
engine, counted from the frames ``SeriesStore.select`` streams."""

from __future__ import annotations

import struct
import time
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web
from aiohttp.typedefs import Middleware

from statsfeeder.readapi.batch import POINTS_PACKED, CountedPiece
from statsfeeder.readapi.pieces import POINTS_SEGMENTS
from statsfeeder.readapi.store import END, ERROR, FAILURE, MAGIC
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
    counter = SelectCounter(metrics)
    for piece in pieces:
        counter.add(piece)
    counter.finish()


class SelectCounter:
    """Counts a Select's frame as its pieces are sent. A piece holds whole series (several:
    the store sends them in 64 KiB pieces), the first starts with the magic and the last ends
    with the end, error (a limit) or failure marker. Packed series carry their sample count."""

    def __init__(self, metrics: ReadApiMetrics) -> None:
        self._metrics = metrics
        self.series = self.samples = 0
        self.outcome = "ok"
        self.ended = False
        """A piece held the end, error or failure marker: nothing of this Select follows."""
        self._finished = False

    def add(self, piece: bytes) -> None:
        if isinstance(piece, CountedPiece):  # the store's: it says what it holds
            self.series += piece.series
            self.samples += piece.samples
            if piece.ends is not None:
                self.ended = True
                if piece.ends == "limit":
                    self.outcome = "limit"
            return
        offset = len(MAGIC) if piece.startswith(MAGIC) else 0
        while offset < len(piece):
            (head,) = struct.unpack_from("<I", piece, offset)
            if head == _END:
                self.ended = True
                break
            if head in (ERROR, FAILURE):
                self.outcome = "limit" if head == ERROR else "error"
                self.ended = True
                break
            offset, count = _series(piece, offset + 4, head)
            self.series += 1
            self.samples += count

    def finish(self) -> None:
        """Counts the Select (once)."""
        if self._finished:
            return
        self._finished = True
        self._metrics.selects.labels(self.outcome).inc()
        self._metrics.series_returned.inc(self.series)
        self._metrics.samples_returned.inc(self.samples)


_END = struct.unpack("<I", END)[0]
_PACKED = struct.Struct("<dqqIII")
_SEGMENTS = struct.Struct("<dqqII")


def _series(piece: bytes, offset: int, labels: int) -> tuple[int, int]:
    """Where the series starting at ``offset`` (after its label count) ends, and its
    samples."""
    for _ in range(labels):
        (name_length,) = struct.unpack_from("<H", piece, offset)
        offset += 2 + name_length
        (value_length,) = struct.unpack_from("<I", piece, offset)
        offset += 4 + value_length
    (count,) = struct.unpack_from("<I", piece, offset)
    offset += 4
    if count == POINTS_PACKED:
        _, _, _, samples, windows, size = _PACKED.unpack_from(piece, offset)
        return offset + _PACKED.size + 12 * windows + size, int(samples)
    if count == POINTS_SEGMENTS:
        _, _, _, samples, segments = _SEGMENTS.unpack_from(piece, offset)
        offset += _SEGMENTS.size
        for _ in range(segments):
            windows, size = struct.unpack_from("<II", piece, offset)
            offset += 8 + 12 * windows + size
        return offset, int(samples)
    return offset + 16 * count, int(count)
