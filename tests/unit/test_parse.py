"""The QueryPerf parser on real-vCenter-shaped and vcsim-shaped answers, and on garbage."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from statsfeeder.errors import (
    NotAuthenticated,
    PermissionDenied,
    QueryTooLarge,
    ResponseParseError,
)
from statsfeeder.model import Counter
from statsfeeder.sources.vcenter.parse import parse_query_perf
from tests.vcenter_xml import entity_csv, entity_normal, fault, no_permission, response

CPU = Counter("cpu.usage.average", 2, "percent")
DISK = Counter("disk.read.average", 130, "kiloBytesPerSecond", per_instance=True)
COUNTERS = {c.key: c for c in (CPU, DISK)}
T0 = 1_795_334_400  # on the 20-second grid
GRID = [T0 + 20 * i for i in range(1, 16)]
DATA = Path(__file__).resolve().parent.parent / "data"


def parse(body: bytes):
    return parse_query_perf(body, vcenter="vc1", counters=COUNTERS).batch


@pytest.mark.parametrize("shape", [entity_csv, entity_normal])
def test_real_vcenter_shape_expanded_instances_and_gaps(shape) -> None:
    cpu = list(range(100, 1600, 100))
    cpu[3] = -1  # vCenter's "no data"
    body = response([shape("vm-7", GRID, {
        (2, ""): cpu,
        (130, ""): [5] * 15,
        (130, "scsi0:0"): [3] * 15,
        (130, "scsi0:1"): [2] * 15,
    })])
    batch = parse(body)
    by_key = {(s.metric, s.instance): s for s in batch.series}
    assert set(by_key) == {("cpu.usage.average", ""), ("disk.read.average", ""),
                           ("disk.read.average", "scsi0:0"), ("disk.read.average", "scsi0:1")}
    cpu_series = by_key[("cpu.usage.average", "")]
    assert len(cpu_series) == 14
    assert GRID[3] not in cpu_series.timestamps.tolist()
    assert cpu_series.values.tolist() == [v for v in cpu if v != -1]
    assert cpu_series.scaled()[0] == pytest.approx(1.0)  # hundredths of a percent → percent
    assert batch.dropped == {"no_data": 1}
    assert by_key[("disk.read.average", "scsi0:1")].values.tolist() == [2] * 15


def test_vcsim_newest_first_is_sorted_with_values_following() -> None:
    stamps = [T0 + 17 + 20 * i for i in range(5)][::-1]  # unaligned, newest first
    body = response([entity_csv("vm-1", stamps, {(2, ""): [5, 4, 3, 2, 1]})])
    [series] = parse(body).series
    assert series.timestamps.tolist() == sorted(stamps)
    assert series.values.tolist() == [1, 2, 3, 4, 5]


def test_vcsim_captured_answers_parse_alike() -> None:
    counters = {2: CPU, 24: Counter("mem.usage.average", 24, "percent")}
    for name in ("vcsim_queryperf_csv.xml", "vcsim_queryperf_normal.xml"):
        batch = parse_query_perf((DATA / name).read_bytes(), vcenter="v", counters=counters).batch
        assert {s.metric for s in batch.series} == {"cpu.usage.average", "mem.usage.average"}
        for series in batch.series:
            assert np.all(np.diff(series.timestamps) > 0)
            assert len(series.values) == len(series.timestamps) == 3


def test_wildcard_echoed_back_is_the_aggregate() -> None:
    body = response([entity_csv("vm-1", GRID[:3], {(130, "*"): [1, 2, 3]})])
    [series] = parse(body).series
    assert series.instance == ""


def test_normal_format_with_dropped_zeros_is_never_misaligned() -> None:
    body = response([entity_normal("vm-1", GRID[:4],
                                   {(2, ""): [7, 9, 11], (130, ""): [1, 2, 3, 4]})])
    batch = parse(body)
    assert [(s.metric, s.values.tolist()) for s in batch.series] == [
        ("disk.read.average", [1, 2, 3, 4])]
    assert batch.dropped == {"misaligned_series": 1}


def test_duplicate_timestamps_keep_one_sample() -> None:
    body = response([entity_csv("vm-1", [GRID[0], GRID[1], GRID[1]], {(2, ""): [1, 2, 2]})])
    [series] = parse(body).series
    assert series.timestamps.tolist() == GRID[:2]
    assert series.values.tolist() == [1, 2]


def test_empty_entity_yields_nothing_and_counts_nothing_as_received() -> None:
    body = response([entity_csv("vm-1", [], {})])
    batch = parse(body)
    assert batch.series == [] and batch.samples == 0


def test_unknown_counter_is_counted() -> None:
    body = response([entity_csv("vm-1", GRID[:2], {(999, ""): [1, 2]})])
    batch = parse(body)
    assert batch.series == [] and batch.dropped == {"unknown_counter": 1}


def test_faults_map_to_actions() -> None:
    with pytest.raises(NotAuthenticated):
        parse(fault("NotAuthenticated", "The session is not authenticated."))
    with pytest.raises(QueryTooLarge):
        parse(fault("RestrictedByAdministrator",
                    "Query exceeds config.vpxd.stats.maxQueryMetrics (64)"))
    with pytest.raises(ResponseParseError, match="InvalidArgument"):
        parse(fault("InvalidArgument", "A specified parameter was not correct: querySpec"))
    with pytest.raises(PermissionDenied) as denied:
        parse(no_permission("VirtualMachine", "vm-42", "System.Read"))
    assert not denied.value.retriable  # asking again cannot help
    assert str(denied.value) == ("vCenter refused: Permission to perform this operation was "
                                 "denied. (missing privilege System.Read on VirtualMachine "
                                 "vm-42)")


@pytest.mark.parametrize("shape", [entity_csv, entity_normal])
def test_fuzzed_answers_raise_or_parse_aligned(shape) -> None:
    """Truncations and byte flips: a clear ResponseParseError, or series whose every value
    has its own timestamp. Never another exception, never a misaligned series."""
    rng = random.Random(20)
    good = response([shape(f"vm-{i}", GRID, {(2, ""): list(range(15)), (130, "0"): [4] * 15})
                     for i in range(3)])
    for _ in range(600):
        body = bytearray(good)
        if rng.random() < 0.4:
            body = body[: rng.randrange(len(body))]
        else:
            for _ in range(rng.randint(1, 4)):
                body[rng.randrange(len(body))] = rng.choice(b"<>/,-0123456789x \x00")
        try:
            batch = parse(bytes(body))
        except ResponseParseError as exc:
            assert str(exc)
            continue
        for series in batch.series:
            assert len(series.timestamps) == len(series.values)
            assert np.all(np.diff(series.timestamps) > 0)
