"""The metric-name contract of the read API and Prometheus's parameter parsing."""

from __future__ import annotations

import pytest

from statsfeeder.readapi import params
from statsfeeder.readapi.names import Entity, catalog, prometheus_name, stored_metric


@pytest.mark.parametrize(("metric", "unit", "name"), [
    ("cpu.usage.average", "percent", "vsphere_vm_cpu_usage_average_percent"),
    ("cpu.usagemhz.average", "megaHertz", "vsphere_vm_cpu_usagemhz_average_megahertz"),
    ("mem.usage.average", "percent", "vsphere_vm_mem_usage_average_percent"),
    ("disk.provisioned.latest", "kiloBytes", "vsphere_vm_disk_provisioned_latest_kilobytes"),
    ("disk.read.average", "kiloBytesPerSecond",
     "vsphere_vm_disk_read_average_kilobytes_per_second"),
    ("net.received.average", "kiloBytesPerSecond",
     "vsphere_vm_net_received_average_kilobytes_per_second"),
    ("disk.numberReadAveraged.average", "number", "vsphere_vm_disk_numberreadaveraged_average"),
    ("cpu.ready.summation", "millisecond", "vsphere_vm_cpu_ready_summation_milliseconds"),
])
def test_names_follow_the_contract_and_invert(metric: str, unit: str, name: str) -> None:
    assert prometheus_name(metric, unit) == name
    known = catalog([(metric, unit, 0.01 if unit == "percent" else 1.0)])
    assert stored_metric(name, known) == metric
    assert stored_metric(name + "_x", known) is None


def test_empty_labels_are_absent_and_instance_job_never_appear() -> None:
    labels = Entity("urn:vcenter:vc1:vm:1", "orphan", "", "", "", "vc1", "vm-9").labels()
    assert labels == {"vm": "urn:vcenter:vc1:vm:1", "vm_name": "orphan", "vcenter": "vc1",
                      "moref": "vm-9"}


@pytest.mark.parametrize(("text", "seconds"), [
    ("1700000000", 1700000000.0), ("1700000000.1234", 1700000000.123),
    ("2023-11-14T22:13:20Z", 1700000000.0), ("2023-11-14T23:13:20.5+01:00", 1700000000.5),
])
def test_times_parse_as_prometheus_parses_them(text: str, seconds: float) -> None:
    assert params.parse_time(text) == pytest.approx(seconds, abs=1e-6)


@pytest.mark.parametrize(("text", "seconds"), [("15", 15.0), ("1.5", 1.5), ("5m", 300),
                                               ("1h30m", 5400), ("1d", 86400), ("250ms", 0.25)])
def test_durations(text: str, seconds: float) -> None:
    assert params.parse_duration(text) == pytest.approx(seconds)


def test_bad_values_carry_prometheus_messages() -> None:
    with pytest.raises(ValueError, match='cannot parse "5x" to a valid duration'):
        params.parse_duration("5x")
    with pytest.raises(ValueError, match='cannot parse "now" to a valid timestamp'):
        params.parse_time("now")
