"""``statsfeeder sizing`` covers the roll-up tiers from their measured bytes per series-day."""

from __future__ import annotations

import pytest

from statsfeeder.cli import main
from statsfeeder.rollups.schema import DAILY_BYTES_PER_SERIES_DAY, HOURLY_BYTES_PER_SERIES_DAY
from statsfeeder.sinks.cassandra.series_index import BYTES_PER_VM_DAY


def test_sizing_adds_the_roll_up_tiers(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sizing", "--vms", "10000", "--metrics", "10", "--rf", "3"]) == 0
    out = capsys.readouterr().out
    hourly = 10000 * 10 * 3 * 90 * HOURLY_BYTES_PER_SERIES_DAY / 1e9
    daily = 10000 * 10 * 3 * 400 * DAILY_BYTES_PER_SERIES_DAY / 1e9
    assert f"hourly 90 d {hourly:,.1f} GB" in out and f"daily 400 d {daily:,.1f} GB" in out
    assert main(["sizing", "--vms", "10000", "--hourly-days", "30", "--daily-days", "730"]) == 0
    assert "hourly 30 d 7.3 GB" in capsys.readouterr().out


def test_sizing_adds_the_series_index(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sizing", "--vms", "10000", "--ttl", "14", "--rf", "3"]) == 0
    gigabytes = 10000 * 15 * 3 * BYTES_PER_VM_DAY / 1e9
    assert f"series index: {gigabytes:,.2f} GB" in capsys.readouterr().out
