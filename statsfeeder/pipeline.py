"""One collection cycle per vCenter: plan windows from the watermarks, stream chunks from the
source through the retagger to every enabled sink, and advance a sink's per-VM watermark only
once that sink has acknowledged the VM's samples.

Each sink has its own bounded buffer and worker: a slow or failing sink never stalls the
others. When a sink's buffer is full the chunk is not queued for it (counted); that is safe
because its watermark stays where it was, so the next cycle asks vCenter again (within its
one-hour retention) and writes it then. Writes are idempotent upserts, so re-sending a window
to a sink that already has it costs only work.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from statsfeeder.errors import SinkError, SinkUnreachable
from statsfeeder.model import EntityId, Series, VirtualMachine
from statsfeeder.sources.vcenter.query import Chunk
from statsfeeder.sources.vcenter.source import CollectedChunk, VCenterSource
from statsfeeder.telemetry import Telemetry
from statsfeeder.transforms.retag import Retagger

log = logging.getLogger(__name__)


class Sink(Protocol):
    name: str

    async def write(self, series: list[Series]) -> Any: ...


@runtime_checkable
class Flushable(Protocol):
    """A store that persists watermarks once per cycle (the local state file)."""

    async def flush(self) -> None: ...


class MetadataStore(Protocol):
    """Where watermarks and entity metadata persist (the Cassandra sink)."""

    def load_watermarks(self, vcenter: str) -> dict[str, dict[str, int]]: ...

    async def save_watermarks(self, vcenter: str, sink: str,
                              marks: Mapping[str, int]) -> None: ...

    async def save_entities(self, vms: list[VirtualMachine]) -> None: ...


@dataclass
class CycleReport:
    vcenter: str
    vms_queried: int = 0
    """VMs in the chunks vCenter was asked for (answered or not)."""
    vms_kept: int | None = None
    """With no sink open: the VMs not queried, whose windows wait for the backfill."""
    chunks: int = 0
    chunks_failed: int = 0
    expected: int = 0
    collected: int = 0
    written: dict[str, int] = field(default_factory=dict)
    sink_failures: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    skipped_vms: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    missing: list[str] = field(default_factory=list)
    """Sinks not open this cycle: nothing written to them; backfilled once they are back."""

    @property
    def ok(self) -> bool:
        return (self.chunks_failed == 0 and not any(self.sink_failures.values())
                and not self.missing)

    def summary(self) -> str:
        missing = (f"; missing sink: {', '.join(self.missing)} (not open: backfilled from its "
                   "watermarks once back)" if self.missing else "")
        if self.vms_kept is not None:
            return (f"vCenter {self.vcenter}: no sink open: {self.vms_kept} VMs not queried, "
                    f"kept for backfill{_skipped(self.skipped_vms)}; {self.seconds:.1f} s"
                    + missing)
        dropped = ", ".join(f"{k}={v}" for k, v in sorted(self.dropped.items())) or "none"
        stored = ", ".join(f"{sink} {count}" for sink, count in sorted(self.written.items()))
        failed = sum(self.sink_failures.values())
        return (f"vCenter {self.vcenter}: {self.vms_queried} VMs in {self.chunks} chunks "
                f"({self.chunks_failed} failed), samples expected {self.expected}, collected "
                f"{self.collected}, stored: {stored or 'none'} ({failed} sink failures), "
                f"dropped: {dropped}{_skipped(self.skipped_vms)}; {self.seconds:.1f} s"
                + missing)


def _skipped(vms: Mapping[str, int]) -> str:
    """VMs not even asked for (``vcd.unmapped: skip``), by reason."""
    listed = ", ".join(f"{k}={v}" for k, v in sorted(vms.items()) if v)
    return f", VMs not queried: {listed}" if listed else ""


def watermark_candidates(series: list[Series]) -> dict[str, int]:
    """Per VM, the oldest 'newest sample' over its series: a counter vCenter posts late keeps
    the VM's watermark back so the next window asks for it again."""
    marks: dict[str, int] = {}
    for item in series:
        if len(item):
            last = int(item.timestamps[-1])
            current = marks.get(item.moref)
            marks[item.moref] = last if current is None else min(current, last)
    return marks


class Pipeline:
    def __init__(self, source: VCenterSource, sinks: list[Sink], retagger: Retagger,
                 telemetry: Telemetry, store: MetadataStore | None = None,
                 buffer_chunks: int = 8, sink_up: Callable[[str], bool] | None = None,
                 sink_lost: Callable[[str, str], None] | None = None) -> None:
        if not sinks:
            raise ValueError("a pipeline needs at least one sink")
        self.source = source
        self.sinks = sinks
        self.retagger = retagger
        self.telemetry = telemetry
        self.store = store
        self.buffer_chunks = buffer_chunks
        self.watermarks: dict[str, dict[str, int]] = {sink.name: {} for sink in sinks}
        self.sink_up = sink_up or (lambda name: True)
        self.sink_lost = sink_lost or (lambda name, why: None)
        """Told when a write found its sink unreachable (``SinkHealth.lost``)."""
        # Where a missing sink's backfill starts for a VM it has no watermark of: the first
        # window collected without it. Kept in memory only while that sink's stored marks
        # could not be read (a stored watermark always wins over a seed).
        self.seeds: dict[str, dict[str, int]] = {sink.name: {} for sink in sinks}
        self._held: set[str] = set()  # sinks whose stored watermarks were read
        self._written: set[str] = set()  # sinks open in the last cycle
        self._entities_saved: dict[str, EntityId] = {}
        self.clock_offset = 0.0
        """vCenter's clock minus ours, as of the last CurrentTime."""
        self.lag_vms: list[str] | None = None
        """The VMs the last cycle collected (powered on, not skipped): the lag is theirs."""
        self.after_store: Callable[[str, list[Series]], Awaitable[None]] | None = None
        """Called once a sink acknowledged a chunk, before its watermarks move (roll-up
        marks); a SinkError from it keeps them back, so the chunk is re-read."""

    def load_watermarks(self) -> None:
        """Merge the stored watermarks in (the later mark per VM wins: both are true)."""
        if self.store is not None:
            stored = self.store.load_watermarks(self.source.name)
            for sink in self.sinks:
                marks = self.watermarks[sink.name]
                for moref, mark in stored.get(sink.name, {}).items():
                    marks[moref] = max(mark, marks.get(moref, 0))
            holds = getattr(self.store, "holds", lambda name: True)
            self._held = {sink.name for sink in self.sinks if holds(sink.name)}

    def marks_of(self, sink: str) -> dict[str, int]:
        return {**self.seeds[sink], **self.watermarks[sink]}

    def query_marks(self, names: Iterable[str] | None = None) -> dict[str, int]:
        """Per VM, where every sink (of ``names``, default all) has its samples up to: the
        query starts there."""
        wanted = [sink.name for sink in self.sinks] if names is None else list(names)
        if not wanted:
            return {}
        first, *rest = (self.marks_of(name) for name in wanted)
        return {moref: min([mark, *(other[moref] for other in rest)])
                for moref, mark in first.items() if all(moref in other for other in rest)}

    async def _open_sinks(self) -> list[Sink]:
        """The sinks open now. When the store can now give watermarks it could not when
        they were read (Cassandra's, while Cassandra was missing), they are read again
        first, so a returned sink's backfill starts where it was, not from this cycle; if
        that fails, a sink that was not open in the last cycle waits for the next one."""
        up = [sink for sink in self.sinks if self.sink_up(sink.name)]
        holds = getattr(self.store, "holds", lambda name: True)
        stale = self.store is not None and any(
            sink.name not in self._held and holds(sink.name) for sink in up)
        if stale:
            try:
                await asyncio.to_thread(self.load_watermarks)
            except Exception as exc:  # the driver's own errors too: it went away again
                log.warning("%s: watermarks not read again, a returned sink waits: %s",
                            self.source.name, exc)
                up = [sink for sink in up if sink.name in self._held | self._written]
        self._written = {sink.name for sink in up}
        return up

    async def run_cycle(self) -> CycleReport:
        began = time.monotonic()
        source, name, t = self.source, self.source.name, self.telemetry
        report = CycleReport(name, written={s.name: 0 for s in self.sinks},
                             sink_failures={s.name: 0 for s in self.sinks})
        sinks = await self._open_sinks()
        report.missing = [s.name for s in self.sinks if s not in sinks]
        await source.refresh_inventory()
        on = source.powered_on()
        t.vms.labels(name, "powered_on").set(len(on))
        t.vms.labels(name, "other").set(len(source.vms) - len(on))
        wanted, report.skipped_vms = self.retagger.collectable([source.vms[m] for m in on])
        t.vms.labels(name, "skipped").set(len(on) - len(wanted))
        now = await source.vcenter_now()
        self.clock_offset = now - time.time()
        self.lag_vms = wanted
        chunks = source.plan(self.query_marks(s.name for s in sinks), now, wanted)
        for missing in report.missing:
            await self._seed(missing, chunks)
        if sinks:
            await self._collect(chunks, sinks, report)
        else:  # nowhere to store: vCenter is not asked; the windows stay for the backfill
            report.vms_kept = sum(len(c.vms) for c in chunks)
        if self.store is not None and isinstance(self.store, Flushable):
            try:
                await self.store.flush()
            except SinkError as exc:  # stored; a restart re-reads this cycle's windows
                t.sink_errors.labels("metadata", type(exc).__name__).inc()
                log.warning("%s: watermarks not persisted: %s", name, exc)
        report.seconds = time.monotonic() - began
        t.cycle_duration.labels(name).observe(report.seconds)
        if report.ok:
            t.cycle_last_success.labels(name).set(time.time())
        self.update_lag()
        return report

    async def _collect(self, chunks: list[Chunk], sinks: list[Sink], report: CycleReport
                       ) -> None:
        """Stream the chunks from vCenter into each open sink's buffer and worker; stop asking
        vCenter once every sink has been found unreachable."""
        t = self.telemetry
        queues: dict[str, asyncio.Queue[list[Series] | None]] = {
            sink.name: asyncio.Queue(maxsize=self.buffer_chunks) for sink in sinks}
        workers = [asyncio.create_task(self._sink_worker(sink, queues[sink.name], report))
                   for sink in sinks]
        try:
            async for collected in self.source.collect(chunks):
                series = await self._prepare(collected, report)
                if series is None:
                    continue
                for sink in sinks:
                    queue = queues[sink.name]
                    try:
                        queue.put_nowait(series)
                    except asyncio.QueueFull:
                        # Safe to skip: this sink's watermark does not move, so it is re-read.
                        report.sink_failures[sink.name] += 1
                        t.sink_errors.labels(sink.name, "buffer_full").inc()
                    t.sink_buffer_depth.labels(sink.name).set(queue.qsize())
                if not any(self.sink_up(sink.name) for sink in sinks):
                    break  # every sink unreachable: the rest would only be thrown away
        finally:
            for queue in queues.values():
                await queue.put(None)
            await asyncio.gather(*workers)

    def update_lag(self) -> None:
        """Lag of the oldest collected VM's watermark behind vCenter's clock (estimated from
        the last CurrentTime, so it keeps growing while a cycle is stuck)."""
        marks = self.query_marks()
        wanted = list(marks) if self.lag_vms is None else self.lag_vms  # before any login
        behind = [marks[moref] for moref in wanted if moref in marks]
        if behind:
            now = time.time() + self.clock_offset
            self.telemetry.watermark_lag.labels(self.source.name).set(max(0.0, now - min(behind)))

    async def _prepare(self, collected: CollectedChunk, report: CycleReport
                       ) -> list[Series] | None:
        name, t, batch = self.source.name, self.telemetry, collected.batch
        report.chunks += 1
        report.vms_queried += len(collected.chunk.vms)
        report.expected += batch.expected_samples
        t.samples_expected.labels(name).inc(batch.expected_samples)
        if collected.error is not None:
            report.chunks_failed += 1
            t.vcenter_errors.labels(name, type(collected.error).__name__).inc()
            return None
        report.collected += batch.samples
        t.samples_collected.labels(name).inc(batch.samples)
        self.retagger.apply(batch, self.source.vms)
        for reason, count in batch.dropped.items():
            report.dropped[reason] = report.dropped.get(reason, 0) + count
            t.samples_dropped.labels(name, reason).inc(count)
        try:
            await self._save_new_entities(batch.series)
        except SinkError as exc:  # metadata is re-sent with the VM's next chunk
            t.sink_errors.labels("metadata", type(exc).__name__).inc()
        return batch.series

    async def _sink_worker(self, sink: Sink, queue: asyncio.Queue[list[Series] | None],
                           report: CycleReport) -> None:
        vcenter, t = self.source.name, self.telemetry
        unreachable = False
        while (series := await queue.get()) is not None:
            t.sink_buffer_depth.labels(sink.name).set(queue.qsize())
            if unreachable:  # its watermarks stay: re-read once it answers again
                report.sink_failures[sink.name] += 1
                continue
            began = time.monotonic()
            try:
                result = await sink.write(series)
            except SinkUnreachable as exc:
                report.sink_failures[sink.name] += 1
                t.sink_errors.labels(sink.name, type(exc).__name__).inc()
                unreachable = True
                self.sink_lost(sink.name, str(exc))
                continue
            except SinkError as exc:
                report.sink_failures[sink.name] += 1
                t.sink_errors.labels(sink.name, type(exc).__name__).inc()
                log.warning("%s: %s did not store a chunk: %s", vcenter, sink.name, exc)
                continue
            t.write_duration.labels(sink.name).observe(time.monotonic() - began)
            t.samples_written.labels(sink.name).inc(result.samples)
            report.written[sink.name] += result.samples
            if self.after_store is not None:
                try:
                    await self.after_store(sink.name, series)
                except SinkError as exc:
                    report.sink_failures[sink.name] += 1
                    t.sink_errors.labels("rollup_marks", type(exc).__name__).inc()
                    log.warning("%s: roll-up marks not stored (re-read next cycle): %s",
                                vcenter, exc)
                    continue
            advanced = self._advance(sink.name, watermark_candidates(series))
            if advanced and self.store is not None:
                try:
                    await self.store.save_watermarks(vcenter, sink.name, advanced)
                except SinkError as exc:  # stored, but a restart re-reads these windows
                    t.sink_errors.labels("metadata", type(exc).__name__).inc()
                    log.warning("%s: watermarks not persisted: %s", vcenter, exc)

    async def _save_new_entities(self, series: list[Series]) -> None:
        if self.store is None:
            return
        fresh = {item.moref: item.entity for item in series
                 if item.entity is not None and self._entities_saved.get(item.moref) != item.entity}
        if fresh:
            vms = self.source.vms
            await self.store.save_entities(
                [dataclasses.replace(vms[moref], entity=entity) for moref, entity in fresh.items()])
            self._entities_saved.update(fresh)

    async def _seed(self, sink: str, chunks: Iterable[Chunk]) -> None:
        """A missing sink without a watermark for a VM: its backfill is to start where this
        VM's collection without it starts. When its stored marks were read (so the VM truly
        has none), that start is stored as its watermark: nothing older was collected for
        anyone, and a restart keeps it. Otherwise (Cassandra's own marks while Cassandra is
        missing) it stays in memory, below any stored mark read once it is back."""
        marks, seeds = self.watermarks[sink], self.seeds[sink]
        fresh = {window.moref: window.start for chunk in chunks for window in chunk.vms
                 if window.moref not in marks and window.moref not in seeds}
        if not fresh:
            return
        if sink not in self._held or self.store is None:
            seeds.update(fresh)
            return
        marks.update(fresh)
        try:
            await self.store.save_watermarks(self.source.name, sink, fresh)
        except SinkError as exc:  # kept in memory: this process still backfills from there
            self.telemetry.sink_errors.labels("metadata", type(exc).__name__).inc()
            log.warning("%s: watermarks not persisted: %s", self.source.name, exc)

    def _advance(self, sink: str, candidates: Mapping[str, int]) -> dict[str, int]:
        marks = self.watermarks[sink]
        advanced = {}
        for moref, mark in candidates.items():
            if mark > marks.get(moref, 0):
                marks[moref] = mark
                advanced[moref] = mark
        return advanced
