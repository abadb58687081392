"""SettledCache's planning and keeping, with a clock of the test's own: which hours are
settled, what is read to fill and what fresh, entries ageing out, least recently used
dropped first."""

from __future__ import annotations

from statsfeeder.readapi.settled import (
    DAY_MS,
    ENTRY_BYTES,
    HOUR_MS,
    WINDOW_BYTES,
    SettledCache,
)

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
    assert read.fill_ids == ["a", "b"] and read.kept == []
    assert read.fill == ((NOON - 5 * 3600) * 1000, (NOON - 7200) * 1000 - 1)  # whole hours
    assert read.fresh == ((NOON - 7200) * 1000, (NOON + 600) * 1000)


def test_a_range_of_newer_hours_only_is_read_as_without_a_cache() -> None:
    cache = SettledCache(1 << 20, 90 * 60, clock=Clock(NOON))
    read = cache.plan(["a"], DAY, ["cpu"], True, (NOON - 3600) * 1000, NOON * 1000)
    assert (read.fill, read.fresh) == (None, ((NOON - 3600) * 1000, NOON * 1000))
    off = SettledCache(0, 90 * 60, clock=Clock(NOON))
    read = off.plan(["a"], DAY, ["cpu"], True, 0, 10**15)
    assert (read.fill, read.fresh) == (None, (DAY * DAY_MS, (DAY + 1) * DAY_MS - 1))


def blob(start_ms: int) -> bytes:
    return b"\x01\x00\x00" + bytes([start_ms // 300_000 % 100])


def windows_of(settled: dict, vm: str = "a") -> list[tuple[int, bytes]]:
    return [(int(t), b) for starts, blobs in settled.get((vm, "cpu", ""), [])
            for t, b in zip(starts.tolist(), blobs, strict=True)]


def test_kept_windows_come_back_clipped_and_age_out() -> None:
    clock = Clock(NOON)
    cache = SettledCache(1 << 20, 90 * 60, clock=clock)
    first, last = (NOON - 6 * 3600) * 1000, (NOON - 3 * 3600) * 1000
    lo, hi = first + 600_000, last + 1_200_000
    read = cache.plan(["a"], DAY, ["cpu"], True, lo, hi)
    assert read.fill == (first, last + HOUR_MS - 1)
    filled = rows_for("a", first, last)
    expected = [(r[2] // 1000, r[3]) for r in filled if lo <= r[2] <= hi]
    settled: dict = {}
    cache.collect(read, filled, settled)
    assert windows_of(settled) == expected
    again = cache.plan(["a"], DAY, ["cpu"], True, lo, hi)
    assert again.fill is None
    settled = {}
    cache.collect(again, None, settled)
    assert windows_of(settled) == expected
    clock.now += 3601  # older than max_age_seconds: read again
    assert cache.plan(["a"], DAY, ["cpu"], True, first, last).fill_ids == ["a"]


def keep(cache: SettledCache, vm: str, hour: int, rows: list) -> None:
    read = cache.plan([vm], DAY, ["cpu"], True, hour, hour + HOUR_MS - 1)
    cache.collect(read, rows, {})


def test_least_recently_used_go_first_beyond_the_bound() -> None:
    one = ENTRY_BYTES + WINDOW_BYTES + 20  # an entry of one 20-byte window
    cache = SettledCache(2 * one + one // 2, 90 * 60, clock=Clock(NOON))
    hour = (NOON - 5 * 3600) * 1000
    for vm in ("a", "b", "c"):
        keep(cache, vm, hour, [(vm, "", hour, b"x" * 20)])
    assert len(cache) == 2 and cache.bytes == 2 * one  # "a" went
    assert cache.plan(["b"], DAY, ["cpu"], True, hour, hour + HOUR_MS - 1).fill is None
    keep(cache, "a", hour, [("a", "", hour, b"x" * 20)])
    assert cache.plan(["c"], DAY, ["cpu"], True, hour, hour + HOUR_MS - 1).fill_ids == ["c"]
    assert cache.plan(["b"], DAY, ["cpu"], True, hour, hour + HOUR_MS - 1).fill is None


def test_every_metric_and_hour_must_be_kept_for_a_hit() -> None:
    cache = SettledCache(1 << 20, 90 * 60, clock=Clock(NOON))
    hour = (NOON - 5 * 3600) * 1000
    keep(cache, "a", hour, [])  # kept empty: no windows that hour
    assert cache.plan(["a"], DAY, ["cpu"], True, hour, hour + HOUR_MS - 1).fill is None
    both = cache.plan(["a"], DAY, ["cpu", "mem"], False, hour, hour + HOUR_MS - 1)
    assert both.fill_ids == ["a"]
    longer = cache.plan(["a"], DAY, ["cpu"], True, hour - HOUR_MS, hour + HOUR_MS - 1)
    assert longer.fill_ids == ["a"]
