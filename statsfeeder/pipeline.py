"""One collection cycle per vCenter: plan windows from the watermarks, stream chunks from the
source through the retagger into the sink, and advance a VM's watermark only once the sink
has acknowledged its samples. A chunk that fails keeps its VMs' watermarks where they were,
so the next cycle asks vCenter for the same samples again (within its one-hour retention)."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from statsfeeder.errors import SinkError
from statsfeeder.model import EntityId, Series
from statsfeeder.sinks.cassandra.sink import CassandraSink
from statsfeeder.sources.vcenter.source import CollectedChunk, VCenterSource
from statsfeeder.telemetry import Telemetry
from statsfeeder.transforms.retag import Retagger

log = logging.getLogger(__name__)


@dataclass
class CycleReport:
    vcenter: str
    vms_queried: int = 0
    chunks: int = 0
    chunks_failed: int = 0
    expected: int = 0
    collected: int = 0
    written: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.chunks_failed == 0

    def summary(self) -> str:
        dropped = ", ".join(f"{k}={v}" for k, v in sorted(self.dropped.items())) or "none"
        return (f"vCenter {self.vcenter}: {self.vms_queried} VMs in {self.chunks} chunks "
                f"({self.chunks_failed} failed), samples expected {self.expected}, collected "
                f"{self.collected}, stored {self.written}, dropped: {dropped}; "
                f"{self.seconds:.1f} s")


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
    def __init__(self, source: VCenterSource, sink: CassandraSink, retagger: Retagger,
                 telemetry: Telemetry) -> None:
        self.source = source
        self.sink = sink
        self.retagger = retagger
        self.telemetry = telemetry
        self.watermarks: dict[str, int] = {}
        self._entities_saved: dict[str, EntityId] = {}

    def load_watermarks(self) -> None:
        self.watermarks = self.sink.load_watermarks(self.source.name)

    async def run_cycle(self) -> CycleReport:
        began = time.monotonic()
        source, name, t = self.source, self.source.name, self.telemetry
        report = CycleReport(name)
        await source.refresh_inventory()
        on = source.powered_on()
        t.vms.labels(name, "powered_on").set(len(on))
        t.vms.labels(name, "other").set(len(source.vms) - len(on))
        now = await source.vcenter_now()
        chunks = source.plan(self.watermarks, now)
        report.vms_queried = sum(len(c.vms) for c in chunks)
        async for collected in source.collect(chunks):
            await self._deliver(collected, report)
        report.seconds = time.monotonic() - began
        t.cycle_duration.labels(name).observe(report.seconds)
        if report.ok:
            t.cycle_last_success.labels(name).set(time.time())
        queried = {vm.moref for c in chunks for vm in c.vms}
        marks = [self.watermarks.get(m) for m in queried]
        if marks and None not in marks:
            t.watermark_lag.labels(name).set(now - min(m for m in marks if m is not None))
        return report

    async def _deliver(self, collected: CollectedChunk, report: CycleReport) -> None:
        name, t, batch = self.source.name, self.telemetry, collected.batch
        report.chunks += 1
        report.expected += batch.expected_samples
        t.samples_expected.labels(name).inc(batch.expected_samples)
        if collected.error is not None:
            report.chunks_failed += 1
            t.vcenter_errors.labels(name, type(collected.error).__name__).inc()
            return
        report.collected += batch.samples
        t.samples_collected.labels(name).inc(batch.samples)
        self.retagger.apply(batch, self.source.vms)
        for reason, count in batch.dropped.items():
            report.dropped[reason] = report.dropped.get(reason, 0) + count
            t.samples_dropped.labels(name, reason).inc(count)
        began = time.monotonic()
        try:
            await self._save_new_entities(batch.series)
            result = await self.sink.write(batch.series)
        except SinkError as exc:
            report.chunks_failed += 1
            t.sink_errors.labels(self.sink.name, type(exc).__name__).inc()
            log.warning("%s: chunk of %d VMs not stored: %s", name, len(collected.chunk.vms),
                        exc)
            return
        t.write_duration.labels(self.sink.name).observe(time.monotonic() - began)
        t.samples_written.labels(self.sink.name).inc(result.samples)
        report.written += result.samples
        advanced = self._advance(watermark_candidates(batch.series))
        if advanced:
            try:
                await self.sink.save_watermarks(name, advanced)
            except SinkError as exc:  # the samples are stored; a restart re-reads them
                t.sink_errors.labels(self.sink.name, type(exc).__name__).inc()
                log.warning("%s: watermarks not persisted: %s", name, exc)

    async def _save_new_entities(self, series: list[Series]) -> None:
        fresh = {}
        for item in series:
            if item.entity is not None and self._entities_saved.get(item.moref) != item.entity:
                fresh[item.moref] = item.entity
        if fresh:
            vms = self.source.vms
            await self.sink.save_entities(
                dataclasses.replace(vms[moref], entity=entity) for moref, entity in fresh.items())
            self._entities_saved.update(fresh)

    def _advance(self, candidates: Mapping[str, int]) -> dict[str, int]:
        advanced = {}
        for moref, mark in candidates.items():
            if mark > self.watermarks.get(moref, 0):
                self.watermarks[moref] = mark
                advanced[moref] = mark
        return advanced
