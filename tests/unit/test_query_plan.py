"""Windows and chunks: watermark, overlap, retention, budget, and the request body."""

from __future__ import annotations

from statsfeeder.model import Counter
from statsfeeder.sources.vcenter.query import (
    ANSWER_FLOOR,
    STORAGE_WINDOW,
    Chunk,
    VmWindow,
    answer_cap,
    plan_chunks,
    query_perf_body,
    window_start,
)

NOW = 1_795_334_400 + 7  # vCenter's clock, not on a boundary
COUNTERS = [Counter("cpu.usage.average", 2, "percent"),
            Counter("disk.read.average", 130, "kiloBytesPerSecond", per_instance=True)]


def test_first_sight_reads_one_interval_back_from_a_window_boundary() -> None:
    start = window_start(NOW, None, overlap=60, initial=300, max_lookback=3300)
    assert start % STORAGE_WINDOW == 0 and NOW - 600 < start <= NOW - 300


def test_watermark_minus_overlap_rounded_down_to_the_window() -> None:
    mark = NOW - 130
    start = window_start(NOW, mark, overlap=60, initial=300, max_lookback=3300)
    assert start == (mark - 60) // STORAGE_WINDOW * STORAGE_WINDOW


def test_never_beyond_retention_and_never_inside_a_window() -> None:
    start = window_start(NOW, NOW - 86400, overlap=60, initial=300, max_lookback=3300)
    assert start >= NOW - 3300 and start % STORAGE_WINDOW == 0


def test_chunks_respect_the_metric_budget() -> None:
    morefs = [f"vm-{i}" for i in range(50)]
    chunks = list(plan_chunks(morefs, {}, NOW, COUNTERS, budget=25, overlap=60, initial=300,
                              max_lookback=3300))
    # cpu costs 1, per-instance disk 4: 5 VMs per chunk of budget 25
    assert [len(c.vms) for c in chunks] == [5] * 10
    assert sorted(vm.moref for c in chunks for vm in c.vms) == sorted(morefs)


def test_halves_cover_the_chunk() -> None:
    chunk = Chunk(tuple(VmWindow(f"vm-{i}", NOW - 300) for i in range(5)), NOW)
    first, second = chunk.halves()
    assert first.vms + second.vms == chunk.vms


def test_request_body_names_every_vm_and_counter() -> None:
    chunk = Chunk((VmWindow("vm-1", 1_795_334_100), VmWindow("vm-2", 1_795_333_800)), NOW)
    body = query_perf_body("PerfMgr", chunk, COUNTERS, "csv")
    assert body.count("<querySpec>") == 2
    assert "<startTime>2026-11-22T07:55:00Z</startTime>" in body
    assert "<counterId>130</counterId><instance>*</instance>" in body
    assert "<intervalId>20</intervalId><format>csv</format>" in body


def test_expected_leaves_out_the_newest_slot_and_counts_instance_series() -> None:
    end = 1_795_334_400
    chunk = Chunk((VmWindow("vm-1", end - 300), VmWindow("vm-2", end - 600)), end)
    # 15 and 30 slots, less the newest one each; two aggregate series per VM
    assert chunk.expected_samples(2) == 2 * 14 + 2 * 29
    # vm-1 also returned 3 instance series; one series did have the newest sample
    assert chunk.expected_samples(2, {"vm-1": 3}, newest=1) == 5 * 14 + 2 * 29 + 1


def test_answer_cap_grows_with_the_chunk_and_the_configured_figure_wins() -> None:
    end = 1_795_334_400
    small = Chunk((VmWindow("vm-1", end - 3300),), end)
    big = Chunk(tuple(VmWindow(f"vm-{i}", end - 3300) for i in range(4000)), end)
    assert answer_cap(small, COUNTERS, "csv") == ANSWER_FLOOR
    assert answer_cap(big, COUNTERS, "csv") > ANSWER_FLOOR
    assert answer_cap(big, COUNTERS, "normal") > answer_cap(big, COUNTERS, "csv")
    assert answer_cap(big, COUNTERS, "csv", 2_000_000) == 2_000_000


def test_a_catch_up_window_takes_more_smaller_chunks() -> None:
    morefs = [f"vm-{i}" for i in range(50)]
    behind = {moref: NOW - 3000 for moref in morefs}  # fifty minutes behind: backfill
    steady = {moref: NOW - 300 for moref in morefs}
    kwargs = {"budget": 25, "overlap": 60, "initial": 300, "max_lookback": 3300}
    usual = list(plan_chunks(morefs, steady, NOW, COUNTERS, **kwargs))
    catch_up = list(plan_chunks(morefs, behind, NOW, COUNTERS, **kwargs))
    assert [len(c.vms) for c in usual] == [5] * 10
    # 3,300 s of window against a steady 660: each VM counts 5 times, one VM per chunk
    assert [len(c.vms) for c in catch_up] == [1] * 50
    def samples(chunk: Chunk) -> int:
        return sum(chunk.slots(vm) for vm in chunk.vms)
    # without the weighting each catch-up chunk would hold five times the usual samples
    assert max(map(samples, catch_up)) < 2 * max(map(samples, usual))
    assert sorted(vm.moref for c in catch_up for vm in c.vms) == sorted(morefs)
