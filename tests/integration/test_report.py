"""``statsfeeder report`` from the roll-ups equals the same report computed from the raw
samples, per VM, vApp, VDC and org, over a period whose ends are partial days."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from statsfeeder.errors import ConfigError
from statsfeeder.rollups.hook import Rollups
from statsfeeder.rollups.rawreport import build_from_raw
from statsfeeder.rollups.report import build, parse_period, split_period
from statsfeeder.sinks.cassandra.sink import CassandraSink
from statsfeeder.telemetry import Telemetry
from tests.helpers import cassandra_config, drop_keyspace, open_new_keyspace
from tests.rollup_data import COUNTERS, FakeVm, series_for

pytestmark = pytest.mark.cassandra_matrix

DAY = 20_777 * 86400  # 2026-11-20 00:00 UTC
H = 3600
VMS = [FakeVm("urn:vcloud:vm:cccccccc-0001", "org1", "vdc1", "vapp1", seed=11),
       FakeVm("urn:vcloud:vm:cccccccc-0002", "org1", "vdc1", "vapp1",
              on_from=DAY + 5 * H + 17 * 60 + 3, seed=12),  # created mid-hour
       FakeVm("urn:vcloud:vm:cccccccc-0003", "org1", "vdc2", "vapp2",
              on_until=DAY + 20 * H + 10 * 60, seed=13),  # powered off mid-hour
       FakeVm("urn:vcloud:vm:cccccccc-0004", "org2", "vdc3", "vapp3", seed=14)]
START, END = DAY - 3 * H, DAY + 26 * H  # 21:00 the day before to 02:00 the day after


@pytest.fixture(scope="module")
def stored(cassandra_env: dict[str, str]) -> Iterator[tuple[CassandraSink, dict[str, str]]]:
    config = cassandra_config(cassandra_env, keyspace=f"t_{uuid.uuid4().hex[:12]}",
                              ttl_days=2, rollups={"settle_seconds": 0})
    sink = open_new_keyspace(config, COUNTERS)
    asyncio.run(_fill(sink))
    yield sink, cassandra_env
    drop_keyspace(sink.session, config.keyspace)
    sink.close()


async def _fill(sink: CassandraSink) -> None:
    clock = {"now": float(START)}
    hook = Rollups(sink, sink.config, Telemetry(), lambda: clock["now"])
    from statsfeeder.model import VirtualMachine

    await sink.save_entities([VirtualMachine("vc1", vm.vm[-8:], vm.vm, "", "", True,
                                             vm.entity()) for vm in VMS])
    # Two hours of outage (07:00-09:00) leave a gap for every VM.
    for since, until in ((START, DAY + 7 * H), (DAY + 9 * H, END)):
        for begin in range(since, until, 2 * H):
            series = series_for(VMS, begin, min(begin + 2 * H, until))
            await sink.write(series)
            await hook.mark("cassandra", series)
    clock["now"] = END + 60
    await hook.worker().run_pass()
    hook.close()


@pytest.mark.parametrize("by", ["vm", "vapp", "vdc", "org"])
def test_report_equals_raw(stored: tuple[CassandraSink, dict[str, str]], by: str) -> None:
    sink, _ = stored
    ks = sink.config.keyspace
    since, until = DAY - 2 * H, DAY + 25 * H  # partial days at both ends
    assert split_period(since, until) == ([(since // H, DAY // H),
                                           ((DAY + 86400) // H, until // H)],
                                          (DAY // 86400, DAY // 86400 + 1))
    got = build(sink.session, ks, since, until, by)  # type: ignore[arg-type]
    want = build_from_raw(sink.session, ks, since, until, by)  # type: ignore[arg-type]
    assert got == want
    assert len(got) == {"vm": 4, "vapp": 3, "vdc": 3, "org": 2}[by]
    filtered = build(sink.session, ks, since, until, by, org="org2")  # type: ignore[arg-type]
    assert [row["org"] for row in filtered] == ["org2"]
    if by == "vm":
        first = next(row for row in got if row["vm_id"] == VMS[0].vm)
        # 27 hours minus the 2-hour outage, every sample there.
        assert first["powered_on_hours"] == 25.0 and first["samples_share"] == 1.0
        created = next(row for row in got if row["vm_id"] == VMS[1].vm)
        assert created["samples_share"] < 1.0  # its first hour is partial


def test_report_command_month_json(stored: tuple[CassandraSink, dict[str, str]]) -> None:
    sink, env = stored
    options = ["--cluster-nodes", env["CASSANDRA_HOSTS"], "--port", env["CASSANDRA_PORT"],
               "--username", env["CASSANDRA_USERNAME"], "--ca-file", env["CASSANDRA_CA_FILE"],
               "--keyspace", sink.config.keyspace]
    done = subprocess.run(
        [sys.executable, "-m", "statsfeeder", "report", "--month", "2026-11", "--by", "org",
         "--format", "json", *options], env={"CASSANDRA_PASSWORD": env["CASSANDRA_PASSWORD"],
                                             "PATH": ""},
        capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    since, until = parse_period(None, None, "2026-11")
    assert answer["rows"] == build_from_raw(sink.session, sink.config.keyspace, since, until,
                                            "org")
    assert answer["units"]["disk_read_mib"] == "MiB"
    bad = subprocess.run(
        [sys.executable, "-m", "statsfeeder", "report", "--from", "2026-11-01T00:30Z", "--to",
         "2026-11-02", *options], env={"CASSANDRA_PASSWORD": env["CASSANDRA_PASSWORD"],
                                       "PATH": ""},
        capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 2 and "use a whole hour" in bad.stderr
    assert bad.stderr.count("\n") == 1


def test_parse_period() -> None:
    assert parse_period(None, None, "2026-12") == (1_796_083_200, 1_798_761_600)
    assert parse_period("2026-11-01", "2026-11-01T06:00Z", None) == (1_793_491_200,
                                                                    1_793_512_800)
    for args in ((None, None, "2026-13"), ("2026-11-02", "2026-11-01", None),
                 ("2026-11-01", None, None), ("2026-11-01", "2026-11-02", "2026-11")):
        with pytest.raises(ConfigError):
            parse_period(*args)
