"""The cycle line (``CycleReport.summary``): what was queried, and what was not."""

from __future__ import annotations

from statsfeeder.pipeline import CycleReport


def test_no_sink_open_says_the_vms_were_not_queried() -> None:
    report = CycleReport("vc1", written={"cassandra": 0}, missing=["cassandra"], vms_kept=2000,
                         skipped_vms={"not_vcd_managed": 3}, seconds=0.4)
    line = report.summary()
    assert line.startswith("vCenter vc1: no sink open: 2000 VMs not queried, kept for "
                           "backfill, VMs not queried: not_vcd_managed=3; 0.4 s; missing sink: "
                           "cassandra"), line
    assert "chunks" not in line and report.vms_queried == 0 and not report.ok


def test_queried_cycle_counts_chunks() -> None:
    report = CycleReport("vc1", vms_queried=40, chunks=2, expected=600, collected=600,
                         written={"cassandra": 600}, sink_failures={"cassandra": 0})
    assert report.summary().startswith("vCenter vc1: 40 VMs in 2 chunks (0 failed), samples "
                                       "expected 600, collected 600, stored: cassandra 600")
    assert report.ok
