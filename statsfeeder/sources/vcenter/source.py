"""The vCenter source: one per vCenter, streaming chunks of series as they arrive.

Blocking calls (pyvmomi, the raw SOAP POST) run in worker threads; concurrency per vCenter is
bounded and requests are rate limited. A chunk that hits the server's size limit is halved
and retried, a lost session is renewed and the chunk retried; neither is ever dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from asyncio_throttle import Throttler
from pyVmomi import vim

from statsfeeder.config import CollectionConfig, VCenterConfig
from statsfeeder.errors import (
    NotAuthenticated,
    QueryTooLarge,
    ResponseParseError,
    SourceError,
    VCenterUnavailable,
)
from statsfeeder.model import REALTIME_INTERVAL, Counter, SeriesBatch, VirtualMachine
from statsfeeder.sources.vcenter.client import VCenterClient
from statsfeeder.sources.vcenter.counters import resolve_counters
from statsfeeder.sources.vcenter.inventory import read_inventory
from statsfeeder.sources.vcenter.parse import TimestampCache, parse_query_perf
from statsfeeder.sources.vcenter.query import Chunk, answer_cap, plan_chunks, query_perf_body

log = logging.getLogger(__name__)

MAX_QUERY_METRICS_OPTION = "config.vpxd.stats.maxQueryMetrics"

T = TypeVar("T")


@dataclass(slots=True)
class CollectedChunk:
    """A chunk's series plus what the pipeline needs to advance watermarks safely."""

    chunk: Chunk
    batch: SeriesBatch
    answered: set[str] = field(default_factory=set)
    error: SourceError | None = None


class VCenterSource:
    def __init__(self, config: VCenterConfig, collection: CollectionConfig,
                 client: VCenterClient | None = None) -> None:
        self.config = config
        self.collection = collection
        self.name = config.name
        self.client = client or VCenterClient(config)
        self.counters: tuple[Counter, ...] = ()
        self.unknown_counters: tuple[str, ...] = ()
        self.counter_problems: tuple[str, ...] = ()
        self.vms: dict[str, VirtualMachine] = {}
        self.server_max_query_metrics: int | None = None
        self._counter_by_key: dict[int, Counter] = {}
        self._perf_manager = "PerfMgr"
        self._inventory_at = 0.0
        self._timestamps = TimestampCache()
        self._throttler = Throttler(rate_limit=max(1, round(config.requests_per_second)),
                                    period=1.0)

    # -- set-up and inventory -----------------------------------------------------------
    async def _blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking vCenter call in a thread; abandoning it (cycle deadline, shutdown)
        ends the client's calls in flight so that no thread is left waiting on vCenter."""
        try:
            return await asyncio.to_thread(fn, *args)
        except asyncio.CancelledError:
            self.client.abort()
            raise

    async def start(self) -> None:
        await self._blocking(self._start_blocking)

    def _start_blocking(self) -> None:
        invoke = self.client.invoke
        si = self.client.connect()
        content = invoke("RetrieveContent", si.RetrieveContent)
        perf = invoke("PerformanceManager", lambda: content.perfManager)
        self._perf_manager = perf._moId
        catalog = resolve_counters(invoke("counters", lambda: perf.perfCounter),
                                   self.collection.metrics, self.name)
        self.counters, self.unknown_counters = catalog.counters, catalog.unknown
        self.counter_problems = tuple(catalog.problems(self.name))
        for problem in self.counter_problems:
            log.error("%s: not collected", problem)
        self._counter_by_key = catalog.by_key()
        self.server_max_query_metrics = invoke("QueryOptions", _read_max_query_metrics, content)
        self._refresh_inventory_blocking()

    def _refresh_inventory_blocking(self) -> None:
        si = self.client.connect()
        try:
            self.vms = self.client.invoke("inventory", read_inventory, si, self.name)
        except NotAuthenticated:
            self.client.relogin()
            self.vms = self.client.invoke("inventory", read_inventory, self.client.connect(),
                                          self.name)
        self._inventory_at = time.monotonic()

    async def refresh_inventory(self, force: bool = False) -> None:
        due = time.monotonic() - self._inventory_at >= self.collection.inventory_refresh_seconds
        if force or due or not self.vms:
            await self._blocking(self._refresh_inventory_blocking)

    @property
    def query_budget(self) -> int:
        limit = self.config.max_query_metrics
        if self.server_max_query_metrics and self.server_max_query_metrics > 0:
            limit = min(limit, self.server_max_query_metrics)
        return limit

    def powered_on(self) -> list[str]:
        return [moref for moref, vm in self.vms.items() if vm.powered_on]

    async def vcenter_now(self) -> int:
        moment = await self._blocking(self.client.current_time)
        return int(moment.timestamp())

    # -- collection ---------------------------------------------------------------------
    def plan(self, watermarks: Mapping[str, int], now: int,
             morefs: Sequence[str] | None = None) -> list[Chunk]:
        """Chunks for ``morefs`` (default: every powered-on VM). None without a counter: a
        QueryPerf without metricId makes a real vCenter return every metric it has."""
        if not self.counters:
            return []
        # Ending on the 20-s grid asks a real vCenter for nothing different, and makes
        # vcsim (which stamps samples endTime - k·20 s) answer on the grid too.
        end = now - now % REALTIME_INTERVAL
        return list(plan_chunks(
            self.powered_on() if morefs is None else morefs, watermarks, end, self.counters,
            budget=self.query_budget,
            overlap=self.collection.overlap_seconds, initial=self.collection.interval_seconds,
            max_lookback=self.collection.max_lookback_seconds))

    async def collect(self, chunks: list[Chunk], *, queue_depth: int = 2
                      ) -> AsyncIterator[CollectedChunk]:
        """Yield each chunk's result as it completes; a bounded queue holds workers back
        when the sinks are slower than vCenter (memory stays flat)."""
        # A sampleInfo string repeats across the chunks of one cycle, never across cycles
        # (the windows move on): a cache kept longer would only hold dead entries.
        self._timestamps = TimestampCache()
        pending: asyncio.Queue[Chunk | None] = asyncio.Queue()
        for chunk in chunks:
            pending.put_nowait(chunk)
        results: asyncio.Queue[CollectedChunk | None] = asyncio.Queue(maxsize=queue_depth)
        workers = max(1, min(self.config.concurrency, len(chunks)))
        for _ in range(workers):
            pending.put_nowait(None)

        async def work() -> None:
            while (chunk := await pending.get()) is not None:
                async for collected in self._query(chunk):
                    await results.put(collected)
            await results.put(None)

        tasks = [asyncio.create_task(work()) for _ in range(workers)]
        try:
            finished = 0
            while finished < workers:
                item = await results.get()
                if item is None:
                    finished += 1
                else:
                    yield item
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _query(self, chunk: Chunk) -> AsyncIterator[CollectedChunk]:
        stack = [chunk]
        while stack:
            current = stack.pop()
            try:
                yield await self._query_with_relogin(current)
            except QueryTooLarge as exc:
                if len(current.vms) <= 1:
                    yield self._failed(current, exc)
                    continue
                log.warning("vCenter %s: %s; halving a chunk of %d VMs", self.name, exc,
                            len(current.vms))
                first, second = current.halves()
                stack.extend((second, first))
            except SourceError as exc:
                yield self._failed(current, exc)

    def _failed(self, chunk: Chunk, exc: SourceError) -> CollectedChunk:
        batch = SeriesBatch(self.name, expected_samples=chunk.expected_samples(len(self.counters)))
        log.warning("vCenter %s: chunk of %d VMs not collected: %s", self.name, len(chunk.vms),
                    exc)
        return CollectedChunk(chunk, batch, error=exc)

    async def _query_with_relogin(self, chunk: Chunk) -> CollectedChunk:
        attempts = 0
        while True:
            attempts += 1
            try:
                async with self._throttler:
                    return await self._blocking(self._query_blocking, chunk)
            except NotAuthenticated:
                if attempts > 2:
                    raise
                log.info("vCenter %s: session lost; logging in again", self.name)
                await self._blocking(self.client.relogin)
            except (ResponseParseError, VCenterUnavailable):
                if attempts > 2:
                    raise
                await asyncio.sleep(0.5 * attempts)

    def _query_blocking(self, chunk: Chunk) -> CollectedChunk:
        body = query_perf_body(self._perf_manager, chunk, self.counters, self.collection.format)
        raw = self.client.soap(body, answer_cap(chunk, self.counters, self.collection.format,
                                                self.config.max_answer_bytes))
        parsed = parse_query_perf(raw, vcenter=self.name, counters=self._counter_by_key,
                                  timestamps=self._timestamps)
        batch = parsed.batch
        _clip_to_windows(chunk, batch)
        batch.expected_samples = _expected(chunk, len(self.counters), parsed.returned, batch)
        return CollectedChunk(chunk, batch, {series.moref for series in batch.series})


def _expected(chunk: Chunk, counters: int, returned: set[tuple[str, int, str]],
              batch: SeriesBatch) -> int:
    """Every sample the window can hold for every series vCenter returned: the aggregate of
    each counter (returned or not: a missing one is a gap) and each instance series."""
    instances: dict[str, int] = {}
    for moref, _, instance in returned:
        if instance:
            instances[moref] = instances.get(moref, 0) + 1
    newest = sum(1 for series in batch.series
                 if len(series) and int(series.timestamps[-1]) == chunk.end)
    return chunk.expected_samples(counters, instances, newest)


def _clip_to_windows(chunk: Chunk, batch: SeriesBatch) -> None:
    """Drop samples at or before each VM's start: vcsim treats startTime as inclusive, and a
    lone sample from the previous storage window must not overwrite that whole window."""
    starts = {vm.moref: vm.start for vm in chunk.vms}
    kept = []
    for series in batch.series:
        start = starts.get(series.moref)
        if start is None:
            batch.drop("unrequested_entity", len(series))
            continue
        first = int(np.searchsorted(series.timestamps, start, side="right"))
        if first:
            series.timestamps = series.timestamps[first:]
            series.values = series.values[first:]
        if len(series):
            kept.append(series)
    batch.series = kept


def _read_max_query_metrics(content: Any) -> int | None:
    try:
        options = content.setting.QueryOptions(MAX_QUERY_METRICS_OPTION)
    except (vim.fault.InvalidName, vim.fault.NotFound, AttributeError):
        return None
    except Exception:
        return None
    for option in options or ():
        try:
            return int(option.value)
        except (TypeError, ValueError):
            return None
    return None
