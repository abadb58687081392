"""QueryPerf request bodies and the chunk plan: which VMs go in one call, from when to when.

Each VM's window starts at its watermark less the overlap, rounded down to a storage window
boundary (so every stored 5-minute window is rewritten whole, never partially), and never
before vCenter's realtime retention.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from xml.sax.saxutils import escape

from statsfeeder.model import REALTIME_INTERVAL, Counter

STORAGE_WINDOW = 300
"""Seconds of samples the storage packs together; a query never starts inside one."""


@dataclass(frozen=True, slots=True)
class VmWindow:
    moref: str
    start: int
    """Exclusive start (epoch seconds): samples stamped after it are wanted."""


@dataclass(frozen=True, slots=True)
class Chunk:
    vms: tuple[VmWindow, ...]
    end: int

    def slots(self, vm: VmWindow) -> int:
        """20-s samples vCenter can have for ``vm`` now: the window (start, end] less its
        newest slot, which vCenter posts only after it ends."""
        return max(0, (self.end - vm.start) // REALTIME_INTERVAL - 1)

    def expected_samples(self, counters: int, instances: Mapping[str, int] | None = None,
                         newest: int = 0) -> int:
        """Samples the window can hold: ``counters`` aggregate series per VM plus the
        ``instances`` series (per moref) vCenter returned, each over ``slots``; plus
        ``newest`` series that did have a sample in the newest slot after all."""
        extra = instances or {}
        return sum(self.slots(vm) * (counters + extra.get(vm.moref, 0)) for vm in self.vms) \
            + newest

    def halves(self) -> tuple[Chunk, Chunk]:
        middle = len(self.vms) // 2
        return Chunk(self.vms[:middle], self.end), Chunk(self.vms[middle:], self.end)


def window_start(now: int, watermark: int | None, *, overlap: int, initial: int,
                 max_lookback: int) -> int:
    oldest = -(-(now - max_lookback) // STORAGE_WINDOW) * STORAGE_WINDOW
    wanted = now - initial if watermark is None else watermark - overlap
    start = wanted - wanted % STORAGE_WINDOW
    return max(start, oldest)


def metric_weight(counter: Counter) -> int:
    """Budget units one counter costs per VM: instance ``*`` multiplies the answer's size."""
    return 4 if counter.per_instance else 1


def plan_chunks(morefs: Sequence[str], watermarks: Mapping[str, int], now: int,
                counters: Sequence[Counter], *, budget: int, overlap: int, initial: int,
                max_lookback: int) -> Iterator[Chunk]:
    """Chunks of at most ``budget`` metric units, a VM whose window is longer than a steady
    cycle's counting once per steady window it spans: a catch-up after an outage then asks
    for more, smaller chunks instead of chunks up to eleven times the usual answer, so the
    backfill's memory peak stays near the steady one."""
    per_vm = max(1, sum(metric_weight(c) for c in counters))
    steady_span = initial + overlap + STORAGE_WINDOW  # the longest window a steady cycle asks
    batch: list[VmWindow] = []
    used = 0
    for moref in morefs:
        start = window_start(now, watermarks.get(moref), overlap=overlap, initial=initial,
                             max_lookback=max_lookback)
        if start > now - REALTIME_INTERVAL:
            continue  # nothing new yet (and vcsim hangs on a window shorter than one interval)
        cost = per_vm * -(-(now - start) // steady_span)
        if batch and used + cost > budget:
            yield Chunk(tuple(batch), now)
            batch, used = [], 0
        batch.append(VmWindow(moref, start))
        used += cost
    if batch:
        yield Chunk(tuple(batch), now)


ANSWER_FLOOR = 16 * 1024 * 1024
"""Smallest default answer cap: far above what one VM's full hour can take (so halving always
ends in a chunk that fits), and small enough to keep memory flat."""
VALUE_BYTES = {"csv": 12, "normal": 32}
"""Generous bytes per sample value in each format (digits plus separators or tags)."""


def answer_cap(chunk: Chunk, counters: Sequence[Counter], fmt: str,
               configured: int | None = None) -> int:
    """How many bytes of QueryPerf answer to read for ``chunk`` before treating it as too big:
    the configured figure, else four times a generous estimate of the answer, at least
    ANSWER_FLOOR. Per-instance counters count as 8 series per VM."""
    if configured is not None:
        return configured
    series = sum(8 if c.per_instance else 1 for c in counters)
    samples = sum(max(1, (chunk.end - vm.start) // REALTIME_INTERVAL) for vm in chunk.vms)
    estimate = samples * (32 + series * VALUE_BYTES.get(fmt, 32)) + 1024 * len(chunk.vms)
    return max(ANSWER_FLOOR, 4 * estimate)


def _iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def query_perf_body(perf_manager: str, chunk: Chunk, counters: Sequence[Counter],
                    fmt: str) -> str:
    metric_ids = "".join(
        f"<metricId><counterId>{c.key}</counterId>"
        f"<instance>{'*' if c.per_instance else ''}</instance></metricId>"
        for c in counters
    )
    end = _iso(chunk.end)
    specs = "".join(
        f'<querySpec><entity type="VirtualMachine">{escape(vm.moref)}</entity>'
        f"<startTime>{_iso(vm.start)}</startTime><endTime>{end}</endTime>{metric_ids}"
        f"<intervalId>{REALTIME_INTERVAL}</intervalId><format>{fmt}</format></querySpec>"
        for vm in chunk.vms
    )
    return (f'<QueryPerf xmlns="urn:vim25"><_this type="PerformanceManager">'
            f"{escape(perf_manager)}</_this>{specs}</QueryPerf>")
