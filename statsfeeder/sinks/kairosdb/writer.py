"""Asynchronous writes to KairosDB's ``POST /api/v1/datapoints``.

Series are cut into batches of ``batch_max_samples`` datapoints; each batch is encoded and
gzip-compressed (``Content-Encoding: gzip``; level 1: ~4x smaller, ~10 M samples/s) in a worker
thread, then posted. At most ``max_in_flight`` batches are encoded or in flight at once (callers
wait: that is the backpressure). Connection errors, timeouts, HTTP 408/429 and 5xx are retried
``retries`` times with exponential backoff and jitter, then raise ``SinkUnavailable``. An HTTP 400
is KairosDB refusing the data itself: never retried, raised as ``BatchRejected`` with KairosDB's
``{"errors": [...]}`` text, and counted in ``rejected_batches``/``rejected_samples`` (KairosDB
1.3 still stores the valid metrics of a batch it answers 400 to, so that count is an upper
bound). ``write`` sends every batch even when some are rejected (once one batch has given up as
unavailable, the batches not yet sent fail at once), and returns only when KairosDB has
accepted them all. Writes are idempotent (same metric, tags and timestamp overwrite), so a
retry after a timeout that KairosDB had in fact accepted costs nothing.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import random
import ssl
from typing import Any

import httpx

from statsfeeder.config import KairosDBConfig
from statsfeeder.errors import BatchRejected, SinkError, SinkUnavailable, SinkUnreachable
from statsfeeder.model import Series, WriteResult
from statsfeeder.sinks.kairosdb.encoder import Encoder, Part, plan

log = logging.getLogger(__name__)

DATAPOINTS = "/api/v1/datapoints"
HEALTH = "/api/v1/health/check"
GZIP_LEVEL = 1
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
FIRST_BACKOFF = 0.2
MAX_BACKOFF = 10.0




def tls_verify(config: KairosDBConfig) -> ssl.SSLContext | bool:
    """httpx's ``verify``: a context with the configured CA, the system store, or off."""
    if config.tls.insecure:
        return False
    if config.tls.ca_file is not None:
        try:
            return ssl.create_default_context(cafile=str(config.tls.ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise SinkUnavailable(f"kairosdb: cannot load tls.ca_file {config.tls.ca_file}: "
                                  f"{exc}") from None
    return True


def client_options(config: KairosDBConfig) -> dict[str, Any]:
    """Keyword arguments shared by the sync (open, purge) and async (writes) clients."""
    auth = None
    if config.credentials is not None:
        auth = httpx.BasicAuth(config.credentials.username, config.credentials.secret())
    return {
        "base_url": config.base_url,
        "auth": auth,
        "verify": tls_verify(config),
        "timeout": httpx.Timeout(config.timeout_seconds, connect=config.connect_timeout_seconds),
        "headers": {"User-Agent": "statsfeeder"},
    }


def error_text(response: httpx.Response) -> str:
    """KairosDB's ``{"errors": [...]}`` as one line, else the start of the body."""
    try:
        errors = response.json().get("errors")
    except (ValueError, AttributeError):
        errors = None
    if isinstance(errors, list) and errors:
        return "; ".join(str(error) for error in errors)[:1000]
    text = " ".join(response.text.split())[:300]
    return text or response.reason_phrase or "no detail"


def describe(exc: httpx.HTTPError) -> str:
    detail = str(exc) or "no detail"
    return f"{exc.__class__.__name__}: {detail}"


class KairosDBWriter:
    def __init__(self, config: KairosDBConfig, *,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.config = config
        self.encoder = Encoder(prefix=config.metric_prefix, tags=config.tags,
                               ttl_seconds=config.ttl_seconds,
                               strict=config.tag_charset == "strict")
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots: asyncio.Semaphore | None = None
        self.in_flight = 0
        self.requests = 0
        self.retries = 0
        self.rejected_batches = 0
        self.rejected_samples = 0

    def _client_for_loop(self) -> tuple[httpx.AsyncClient, asyncio.Semaphore]:
        """The client and in-flight bound of the running loop (a new loop gets new ones)."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._slots is None or self._loop is not loop:
            limits = httpx.Limits(max_connections=self.config.max_in_flight,
                                  max_keepalive_connections=self.config.max_in_flight)
            self._client = httpx.AsyncClient(**client_options(self.config), limits=limits,
                                             transport=self._transport)
            self._slots = asyncio.Semaphore(self.config.max_in_flight)
            self._loop = loop
        return self._client, self._slots

    def body(self, parts: list[Part]) -> bytes:
        """Encode (and compress) one batch: CPU work, run in a worker thread."""
        data = self.encoder.encode(parts)
        if self.config.gzip:
            return gzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0)
        return data

    async def write(self, series: list[Series]) -> WriteResult:
        batches = plan(series, self.config.batch_max_samples)
        given_up: list[SinkUnavailable] = []  # once one batch gives up, the rest fail fast
        outcomes = await asyncio.gather(*(self._send(batch, given_up) for batch in batches),
                                        return_exceptions=True)
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        samples = sum(len(s) for s in series)
        if failures:
            raise _summary(failures, len(batches), samples)
        return WriteResult(sum(len(b) for b in batches), samples, len(batches))

    async def _send(self, parts: list[Part], given_up: list[SinkUnavailable]) -> None:
        client, slots = self._client_for_loop()
        samples = sum(part.samples for part in parts)
        async with slots:
            if given_up:
                raise given_up[0]
            self.in_flight += 1
            try:
                body = await asyncio.to_thread(self.body, parts)
                await self._post(client, body, samples)
            except SinkUnavailable as exc:
                given_up.append(exc)
                raise
            finally:
                self.in_flight -= 1

    async def _post(self, client: httpx.AsyncClient, body: bytes, samples: int) -> None:
        headers = {"Content-Type": "application/json"}
        if self.config.gzip:
            headers["Content-Encoding"] = "gzip"
        attempts = self.config.retries + 1
        delay = FIRST_BACKOFF
        for attempt in range(1, attempts + 1):
            unreachable = False
            try:
                response = await client.post(DATAPOINTS, content=body, headers=headers)
            except httpx.TransportError as exc:
                problem, unreachable = describe(exc), True
            else:
                status = response.status_code
                if status in (200, 204):
                    self.requests += 1
                    return
                if status == 400:  # KairosDB still stores the batch's valid metrics
                    self.rejected_batches += 1
                    self.rejected_samples += samples
                    raise BatchRejected(f"kairosdb: HTTP 400 for a batch of {samples} samples: "
                                        f"{error_text(response)}")
                if status == 413:
                    self.rejected_batches += 1
                    self.rejected_samples += samples
                    raise BatchRejected(f"kairosdb: HTTP 413 for a batch of {samples} samples: "
                                        "lower kairosdb.batch_max_samples")
                if status in (401, 403):
                    raise SinkUnavailable(f"kairosdb: HTTP {status} from {self.config.base_url}"
                                          f": check kairosdb.credentials")
                if status not in RETRY_STATUSES:
                    raise SinkUnavailable(f"kairosdb: HTTP {status} from {response.url}: "
                                          f"{error_text(response)}")
                problem = f"HTTP {status}: {error_text(response)}"
            if attempt == attempts:
                failure = SinkUnreachable if unreachable else SinkUnavailable
                raise failure(f"kairosdb: write to {self.config.base_url} failed after "
                                      f"{attempt} attempts: {problem}")
            self.retries += 1
            log.debug("kairosdb: retrying a write after %s", problem)
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, MAX_BACKOFF)

    async def health(self) -> bool:
        """True if ``/api/v1/health/check`` answers 204 now (no retries)."""
        client, _ = self._client_for_loop()
        try:
            response = await client.get(HEALTH)
        except httpx.HTTPError:
            return False
        return response.status_code == 204

    async def aclose(self) -> None:
        client, self._client, self._loop, self._slots = self._client, None, None, None
        if client is not None:
            await client.aclose()

    def close(self) -> None:
        """Close from synchronous code: from another thread while the client's loop runs (the
        CLI calls ``sink.close`` through ``asyncio.to_thread``), inside that loop (scheduled),
        or after the loop is gone (the connections are dropped)."""
        client, loop = self._client, self._loop
        self._client, self._loop, self._slots = None, None, None
        if client is None or loop is None or loop.is_closed() or not loop.is_running():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            loop.create_task(client.aclose())
            return
        future = asyncio.run_coroutine_threadsafe(client.aclose(), loop)
        try:
            future.result(timeout=5)
        except Exception as exc:  # closing is best effort
            log.debug("kairosdb: closing the client: %s", exc)


def _summary(failures: list[BaseException], batches: int, samples: int) -> BaseException:
    """One error for a write with failed batches: retriable if any batch may succeed later."""
    for failure in failures:
        if not isinstance(failure, SinkError | asyncio.CancelledError):
            return failure  # a bug, not KairosDB: raise it as it is
    for failure in failures:
        if isinstance(failure, asyncio.CancelledError):
            return failure
    unavailable = [f for f in failures if isinstance(f, SinkUnavailable)]
    first = unavailable[0] if unavailable else failures[0]
    scope = (f" ({len(failures)} of {batches} batches failed)" if batches > 1 else "")
    kind = type(first) if unavailable else BatchRejected  # unreachable stays unreachable
    return kind(f"{first}{scope}")
