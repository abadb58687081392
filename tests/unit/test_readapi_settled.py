"""SettledCache's planning and keeping, with a clock of the test's own: which hours are
settled, what is read to fill and what fresh, entries ageing out, least recently used
dropped first."""

from __future__ import annotations

import numpy as np

from statsfeeder.readapi import batch as batch_rows
from statsfeeder.readapi.settled import (
    DAY_MS,
    ENTRY_BYTES,
    HOUR_MS,
    PIECE_BYTES,
    DayRead,
    SettledCache,
)
from statsfeeder.sources.vcenter.query import STORAGE_WINDOW

DAY = 20_000
NOON = DAY * 86400 + 12 * 3600


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def rows_for(vm: str, first_hour_ms: int, last_hour_ms: int) -> list[tuple[str, str, int, bytes]]:
    """One-metric rows (vm, instance, start_ms, blob): a window every 5 minutes."""
    return [(vm, "", start, blob(start))
            for start in range(first_hour_ms, last_hour_ms + HOUR_MS, 300_000)]


def test_hours_that_ended_settled_ago_are_filled_the_rest_read_fresh() -> None:
    cache = SettledCache(1 << 20, 90 * 60, clock=Clock(NOON + 15 * 60))
    assert cache.settled_before_ms() == (NOON - 7200) * 1000  # 10:45: hours that end by 10:00
    read = cache.plan(["a", "b"], DAY, ["cpu"], True, (NOON - 5 * 3600 + 600) * 1000,
                      (NOON + 600) * 1000)
    # whole hours
    assert read.fills == [(["a", "b"], ((NOON - 5 * 3600) * 1000, (NOON - 7200) * 1000 - 1))]
    assert read.kept == []
    assert read.fresh == ((NOON - 7200) * 1000, (NOON + 600) * 1000)


def test_a_range_of_newer_hours_only_is_read_as_without_a_cache() -> None:
    cache = SettledCache(1 << 20, 90 * 60, clock=Clock(NOON))
    read = cache.plan(["a"], DAY, ["cpu"], True, (NOON - 3600) * 1000, NOON * 1000)
    assert (read.fills, read.fresh) == ([], ((NOON - 3600) * 1000, NOON * 1000))
    off = SettledCache(0, 90 * 60, clock=Clock(NOON))
    read = off.plan(["a"], DAY, ["cpu"], True, 0, 10**15)
    assert (read.fills, read.fresh) == ([], (DAY * DAY_MS, (DAY + 1) * DAY_MS - 1))


def filled_ids(read: DayRead) -> list[str]:
    return [vm for ids, _ in read.fills for vm in ids]


def blob(start_ms: int) -> bytes:
    return b"\x01\x00\x00" + bytes([start_ms // 300_000 % 100])


def windows_of(settled: dict, lo_ms: int, hi_ms: int, vm: str = "a") -> list[tuple[int, bytes]]:
    """The windows a Select of [lo_ms, hi_ms] (window starts) sends: the batch clips."""
    found = batch_rows.packed([], lo_ms // 1000 + STORAGE_WINDOW, hi_ms // 1000, "cpu", settled)
    series = found.get(vm, {}).get(("cpu", ""))
    if series is None:
        return []
    ends = np.cumsum(series.lengths).tolist()
    return [(int(t), series.data[end - size:end]) for t, size, end in
            zip(series.starts.tolist(), series.lengths.tolist(), ends, strict=True)]


def test_kept_windows_come_back_clipped_and_age_out() -> None:
    clock = Clock(NOON)
    cache = SettledCache(1 << 20, 90 * 60, clock=clock)
    first, last = (NOON - 6 * 3600) * 1000, (NOON - 3 * 3600) * 1000
    lo, hi = first + 600_000, last + 1_200_000
    read = cache.plan(["a"], DAY, ["cpu"], True, lo, hi)
    assert read.fills == [(["a"], (first, last + HOUR_MS - 1))]
    filled = rows_for("a", first, last)
    expected = [(r[2] // 1000, r[3]) for r in filled if lo <= r[2] <= hi]
    settled: dict = {}
    cache.collect(read, [filled], settled)
    assert windows_of(settled, lo, hi) == expected
    again = cache.plan(["a"], DAY, ["cpu"], True, lo, hi)
    assert again.fills == []
    settled = {}
    cache.collect(again, [], settled)
    assert windows_of(settled, lo, hi) == expected
    clock.now += 3601  # older than max_age_seconds: read again
    assert filled_ids(cache.plan(["a"], DAY, ["cpu"], True, first, last)) == ["a"]


def keep(cache: SettledCache, vm: str, hour: int, rows: list) -> None:
    read = cache.plan([vm], DAY, ["cpu"], True, hour, hour + HOUR_MS - 1)
    cache.collect(read, [rows] * len(read.fills), {})


def test_least_recently_used_go_first_beyond_the_bound() -> None:
    # An entry of one 20-byte window: its piece holds 8+8+4 bytes of header, start and length.
    one = ENTRY_BYTES + PIECE_BYTES + 8 + 8 + 4 + 20
    cache = SettledCache(2 * one + one // 2, 90 * 60, clock=Clock(NOON))
    hour = (NOON - 5 * 3600) * 1000
    for vm in ("a", "b", "c"):
        keep(cache, vm, hour, [(vm, "", hour, b"x" * 20)])
    assert len(cache) == 2 and cache.bytes == 2 * one  # "a" went
    assert cache.plan(["b"], DAY, ["cpu"], True, hour, hour + HOUR_MS - 1).fills == []
    keep(cache, "a", hour, [("a", "", hour, b"x" * 20)])
    assert filled_ids(cache.plan(["c"], DAY, ["cpu"], True, hour, hour + HOUR_MS - 1)) == ["c"]
    assert cache.plan(["b"], DAY, ["cpu"], True, hour, hour + HOUR_MS - 1).fills == []


def test_every_metric_and_hour_must_be_kept_for_a_hit() -> None:
    cache = SettledCache(1 << 20, 90 * 60, clock=Clock(NOON))
    hour = (NOON - 5 * 3600) * 1000
    keep(cache, "a", hour, [])  # kept empty: no windows that hour
    assert cache.plan(["a"], DAY, ["cpu"], True, hour, hour + HOUR_MS - 1).fills == []
    both = cache.plan(["a"], DAY, ["cpu", "mem"], False, hour, hour + HOUR_MS - 1)
    assert filled_ids(both) == ["a"]
    longer = cache.plan(["a"], DAY, ["cpu"], True, hour - HOUR_MS, hour + HOUR_MS - 1)
    assert filled_ids(longer) == ["a"]


G1 = frozenset({("writer-1", "stamp-1")})
G2 = frozenset({("writer-1", "stamp-2")})


def test_newer_hours_are_kept_while_the_write_stamps_stand_still() -> None:
    clock = Clock(NOON + 15 * 60)
    cache = SettledCache(1 << 20, 90 * 60, clock=clock)
    settled = (NOON - 7200) * 1000
    lo, hi = settled - 2 * HOUR_MS, (NOON + 600) * 1000
    read = cache.plan(["a"], DAY, ["cpu"], True, lo, hi, G1)
    # Settled hours and the newer ones are separate reads; nothing is left to read fresh.
    assert read.fills == [(["a"], (lo, settled - 1)), (["a"], (settled, NOON * 1000 + HOUR_MS - 1))]
    assert read.fresh is None
    rows = [rows_for("a", lo, settled - HOUR_MS), rows_for("a", settled, NOON * 1000)]
    cache.collect(read, rows, {})
    same = cache.plan(["a"], DAY, ["cpu"], True, lo, hi, G1)
    assert (same.fills, same.fresh) == ([], None)
    # A write since (the stamps moved): only the newer hours are read again.
    moved = cache.plan(["a"], DAY, ["cpu"], True, lo, hi, G2)
    assert moved.fills == [(["a"], (settled, NOON * 1000 + HOUR_MS - 1))]
    newest = ("a", "", NOON * 1000 + 300_000, b"\x01\x00\x00N")
    newer = [*rows_for("a", settled, NOON * 1000), newest]
    into: dict = {}
    cache.collect(moved, [newer], into)
    expected = [(r[2] // 1000, r[3]) for r in rows[0] + newer if lo <= r[2] <= hi]
    assert windows_of(into, lo, hi) == expected  # kept settled hours first: time order
    # Without stamps (none readable), newer hours are read as without a cache.
    unknown = cache.plan(["a"], DAY, ["cpu"], True, lo, hi, None)
    assert (unknown.fills, unknown.fresh) == ([], (settled, hi))


def test_newer_hours_read_under_stamps_that_moved_meanwhile_are_not_kept() -> None:
    clock = Clock(NOON)
    cache = SettledCache(1 << 20, 90 * 60, clock=clock)
    hour = (NOON - HOUR_MS // 1000) * 1000
    slow = cache.plan(["a"], DAY, ["cpu"], True, hour, hour + HOUR_MS - 1, G1)
    cache.plan(["b"], DAY, ["cpu"], True, hour, hour + HOUR_MS - 1, G2)  # a write since
    into: dict = {}
    cache.collect(slow, [rows_for("a", hour, hour)], into)
    assert windows_of(into, hour, hour + HOUR_MS - 1)  # the Select answers with what it read
    assert filled_ids(cache.plan(["a"], DAY, ["cpu"], True, hour, hour + HOUR_MS - 1, G2)) \
        == ["a"]


def test_newer_hours_age_out_even_if_the_stamps_never_move() -> None:
    clock = Clock(NOON)
    cache = SettledCache(1 << 20, 90 * 60, clock=clock, unsettled_seconds=300)
    hour = (NOON - HOUR_MS // 1000) * 1000
    read = cache.plan(["a"], DAY, ["cpu"], True, hour, hour + HOUR_MS - 1, G1)
    cache.collect(read, [rows_for("a", hour, hour)], {})
    assert cache.plan(["a"], DAY, ["cpu"], True, hour, hour + HOUR_MS - 1, G1).fills == []
    clock.now += 301  # a writer that stopped between its windows and its stamp
    assert filled_ids(cache.plan(["a"], DAY, ["cpu"], True, hour, hour + HOUR_MS - 1, G1)) \
        == ["a"]
    bytes_before = cache.bytes
    cache.plan(["a"], DAY, ["cpu"], True, hour, hour + HOUR_MS - 1, G2)
    assert cache.bytes < bytes_before and len(cache) == 0  # dropped when the stamps move
