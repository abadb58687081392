"""A vCenter that misbehaves (tests/hostile_vcenter.py, in front of the real vcsim): no call
without a deadline, every answer survivable, bounded answers, a lag that tells the truth."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from statsfeeder.sources.vcenter.source import VCenterSource
from tests.helpers import collection_config, free_port, metric, vcenter_config, wait_for
from tests.hostile_vcenter import HostileVCenter
from tests.vcenter_xml import entity_csv, response

STATSFEEDER = [sys.executable, "-m", "statsfeeder"]
METRICS = ["cpu.usage.average", "mem.usage.average"]


def vcenter_entry(name: str, env: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {"name": name, "url": env["VCSIM_URL"],
            "credentials": {"username": env["VCSIM_USERNAME"], "password_env": "VCSIM_PASSWORD"},
            "tls": {"ca_file": env["VCSIM_CA_FILE"]}, **extra}


def write_config(path: Path, vcenters: list[dict[str, Any]], kairosdb_env: dict[str, str],
                 **collection: Any) -> Path:
    raw = {"vcenters": vcenters,
           "collection": {"metrics": METRICS, **collection},
           "cassandra": {"enabled": False},
           "kairosdb": {"enabled": True, "url": kairosdb_env["KAIROSDB_URL"],
                        "metric_prefix": f"hostile{uuid.uuid4().hex[:6]}."}}
    path.write_text(yaml.safe_dump(raw))
    return path


def cli_env(vcsim_env: dict[str, str]) -> dict[str, str]:
    return {"VCSIM_PASSWORD": vcsim_env["VCSIM_PASSWORD"], "PATH": os.environ["PATH"]}


def start_run(path: Path, telemetry_port: int, vcsim_env: dict[str, str]
              ) -> subprocess.Popen[str]:
    """``statsfeeder run`` on the config at ``path``, its /metrics on ``telemetry_port``."""
    raw = yaml.safe_load(path.read_text())
    raw["telemetry"] = {"listen": f"127.0.0.1:{telemetry_port}"}
    path.write_text(yaml.safe_dump(raw))
    return subprocess.Popen([*STATSFEEDER, "run", "-c", str(path)], text=True,
                            env=cli_env(vcsim_env), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)


def assert_one_line(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("statsfeeder:")]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("mode", ["silent", "drip", "cut"])
def test_validate_and_once_end_in_one_line_within_the_timeout(
        tmp_path: Path, vcsim_env: dict[str, str], kairosdb_env: dict[str, str],
        mode: str) -> None:
    with HostileVCenter(vcsim_env, mode=mode) as double:
        path = write_config(tmp_path / "c.yaml", [vcenter_entry(
            "hostile", double.env(vcsim_env), connect_timeout_seconds=2,
            read_timeout_seconds=3)], kairosdb_env)
        for command in ("validate", "once"):
            began = time.monotonic()
            result = subprocess.run([*STATSFEEDER, command, "-c", str(path)], text=True,
                                    capture_output=True, env=cli_env(vcsim_env), timeout=60)
            elapsed = time.monotonic() - began
            assert_one_line(result, "vCenter hostile")
            # login: connect (2 s) + read (3 s) at most, plus the interpreter's start-up
            assert elapsed < 15, f"{command} took {elapsed:.1f} s"


def test_validate_ends_when_only_queryperf_goes_silent(
        tmp_path: Path, vcsim_env: dict[str, str], kairosdb_env: dict[str, str]) -> None:
    with HostileVCenter(vcsim_env) as double:
        double.queryperf_mode = "silent"
        path = write_config(tmp_path / "c.yaml", [vcenter_entry(
            "hostile", double.env(vcsim_env), connect_timeout_seconds=2,
            read_timeout_seconds=3)], kairosdb_env)
        began = time.monotonic()
        result = subprocess.run([*STATSFEEDER, "validate", "-c", str(path)], text=True,
                                capture_output=True, env=cli_env(vcsim_env), timeout=60)
        assert time.monotonic() - began < 20
        assert_one_line(result, "vCenter hostile: QueryPerf failed", "timed out after 3 s")


@pytest.mark.parametrize(("mode", "status"), [("text500", "HTTP 500 text/plain"),
                                              ("html", "HTTP 200 text/html")])
def test_once_names_the_http_status_of_a_foreign_answer(
        tmp_path: Path, vcsim_env: dict[str, str], kairosdb_env: dict[str, str], mode: str,
        status: str) -> None:
    with HostileVCenter(vcsim_env, mode=mode) as double:
        path = write_config(tmp_path / "c.yaml", [vcenter_entry(
            "hostile", double.env(vcsim_env), read_timeout_seconds=5)], kairosdb_env)
        result = subprocess.run([*STATSFEEDER, "once", "-c", str(path)], text=True,
                                capture_output=True, env=cli_env(vcsim_env), timeout=60)
        assert_one_line(result, "vCenter hostile", status)


def test_run_survives_500s_and_html_one_counted_line_per_cycle(
        tmp_path: Path, vcsim_env: dict[str, str], kairosdb_env: dict[str, str]) -> None:
    port = free_port()
    with HostileVCenter(vcsim_env, mode="text500") as text, \
            HostileVCenter(vcsim_env, mode="html") as html:
        path = write_config(tmp_path / "c.yaml", [
            vcenter_entry("text", text.env(vcsim_env), read_timeout_seconds=5),
            vcenter_entry("html", html.env(vcsim_env), read_timeout_seconds=5)],
            kairosdb_env, interval_seconds=20)
        service = start_run(path, port, vcsim_env)
        try:
            errors = {name: f'statsfeeder_vcenter_errors_total{{kind="VCenterUnavailable",'
                            f'vcenter="{name}"}}' for name in ("text", "html")}
            wait_for(lambda: all((metric(port, e) or 0) >= 2 for e in errors.values()), 90,
                     "two failed cycles of each vCenter")
            counted = {name: metric(port, e) for name, e in errors.items()}
            service.send_signal(signal.SIGTERM)
            output, _ = service.communicate(timeout=20)
        finally:
            if service.poll() is None:
                service.kill()
    assert service.returncode == 0, output
    assert "Traceback" not in output and "never retrieved" not in output, output
    for name, status in (("text", "HTTP 500 text/plain"), ("html", "HTTP 200 text/html")):
        lines = [line for line in output.splitlines() if f"vCenter {name}:" in line]
        assert lines and all(status in line for line in lines), output
        # one line per cycle: the counter may have moved on by the time SIGTERM landed
        assert counted[name] is not None and counted[name] <= len(lines) <= counted[name] + 1, \
            output


def test_stuck_vcenter_is_abandoned_lag_keeps_growing_and_sigterm_exits_in_10_s(
        tmp_path: Path, vcsim_env: dict[str, str], kairosdb_env: dict[str, str]) -> None:
    """One vCenter collects normally through the double, then stops answering mid-run (every
    connection, old and new, goes silent). Its cycles are abandoned at the deadline and
    counted, the other vCenter stays on schedule, the lag of the stuck one keeps growing, and
    SIGTERM ends the process within 10 s while a cycle hangs on it."""
    port = free_port()
    with HostileVCenter(vcsim_env) as double:
        path = write_config(tmp_path / "c.yaml", [
            vcenter_entry("steady", vcsim_env),
            vcenter_entry("stuck", double.env(vcsim_env), read_timeout_seconds=60)],
            kairosdb_env, interval_seconds=20, cycle_deadline_seconds=12)
        service = start_run(path, port, vcsim_env)
        success = 'statsfeeder_cycle_last_success_timestamp_seconds{{vcenter="{}"}}'
        lag = 'statsfeeder_watermark_lag_seconds{vcenter="stuck"}'
        abandoned = 'statsfeeder_cycles_abandoned_total{vcenter="stuck"}'
        try:
            wait_for(lambda: (metric(port, success.format("stuck")) or 0) > 0, 60,
                     "a first stored cycle through the double")
            double.mode = "silent"
            stuck_since = time.time()
            lag_before = metric(port, lag)
            assert lag_before is not None and lag_before < 60
            wait_for(lambda: (metric(port, abandoned) or 0) >= 2, 70,
                     "two abandoned cycles")
            lag_after = metric(port, lag)
            assert lag_after is not None
            # the lag follows the clock, not the last finished cycle (stepped by ticks)
            assert lag_after >= lag_before + (time.time() - stuck_since) - 21, \
                (lag_before, lag_after)
            steady = metric(port, success.format("steady"))
            assert steady is not None and steady > stuck_since + 10, "steady fell behind"
            # SIGTERM 2 s into a slot: a cycle is waiting on the silent vCenter then
            time.sleep((20 - time.time() % 20) + 2)
            began = time.monotonic()
            service.send_signal(signal.SIGTERM)
            output, _ = service.communicate(timeout=30)
            took = time.monotonic() - began
        finally:
            if service.poll() is None:
                service.kill()
    assert service.returncode == 0, output
    assert took < 10, f"SIGTERM took {took:.1f} s\n{output}"
    assert "Traceback" not in output and "never retrieved" not in output, output
    assert "vCenter stuck: cycle abandoned after 12 s" in output, output


RSS_PROBE = """
import asyncio, json, sys
from statsfeeder.sources.vcenter.source import VCenterSource
from tests.helpers import collection_config, vcenter_config


def hwm_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise SystemExit("no VmHWM")


async def cycle(source):
    now = await source.vcenter_now()
    return [c async for c in source.collect(source.plan({}, now))]


async def main():
    source = VCenterSource(vcenter_config(json.loads(sys.argv[1]), "rss"),
                           collection_config(metrics=["cpu.usage.average"]))
    await source.start()
    for _ in range(3):
        assert all(r.error is None for r in await cycle(source))
    print("steady", hwm_mb(), flush=True)
    sys.stdin.readline()
    results = await cycle(source)
    print("peak", hwm_mb(), json.dumps([str(r.error) for r in results]), flush=True)
    source.client.close()


asyncio.run(main())
"""


def test_a_300_mb_answer_is_cut_at_the_cap_and_rss_stays_flat(
        vcsim_env: dict[str, str]) -> None:
    """Bound stated: peak RSS (VmHWM) at most the steady figure + 32 MiB: the default cap for
    these small chunks (16 MiB, read into a mapping returned to the system when the answer is
    dropped) plus 16 MiB for TLS and HTTP buffers. Measured: +16 MiB over a steady 65 MiB.
    Reading the whole 300 MB answer raises it by over 300 MB."""
    import json

    root = Path(__file__).resolve().parents[2]
    with HostileVCenter(vcsim_env) as double:
        probe = subprocess.Popen(
            [sys.executable, "-c", RSS_PROBE, json.dumps(double.env(vcsim_env))], cwd=root,
            text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(root)})
        try:
            assert probe.stdout is not None and probe.stdin is not None
            label, steady = probe.stdout.readline().split()
            assert label == "steady", probe.stderr.read() if probe.stderr else ""
            double.queryperf_mode = "huge"
            probe.stdin.write("go\n")
            probe.stdin.flush()
            line = probe.stdout.readline()
            assert line.startswith("peak"), probe.stderr.read() if probe.stderr else ""
            _, peak, errors = line.split(" ", 2)
            probe.wait(timeout=60)
        finally:
            if probe.poll() is None:
                probe.kill()
    failures = json.loads(errors)
    assert failures and all("answer larger than 16777216 bytes" in e for e in failures), \
        failures
    assert float(peak) <= float(steady) + 32, (steady, peak)


def real_vcenter_answers(tally: dict[str, int]) -> Callable[[bytes], bytes]:
    """QueryPerf answered as a real vCenter does: ascending 20-s stamps after startTime up to,
    not including, the newest slot (not posted yet); instance '*' expanded into the aggregate
    and three instances (one of them all -1); -1 gaps in every series. ``tally`` counts the
    samples the answers could hold and the -1s among them."""
    spec = re.compile(r'<querySpec><entity type="VirtualMachine">([^<]+)</entity>'
                      r"<startTime>([^<]+)</startTime><endTime>([^<]+)</endTime>(.*?)"
                      r"<intervalId>", re.S)
    metric_id = re.compile(r"<metricId><counterId>(\d+)</counterId>"
                           r"<instance>([^<]*)</instance></metricId>")

    def epoch(text: str) -> int:
        return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())

    def answer(request: bytes) -> bytes:
        entities = []
        for moref, start, end, ids in spec.findall(request.decode()):
            stamps = list(range(epoch(start) + 20, epoch(end), 20))
            series: dict[tuple[int, str], list[int]] = {}
            for key, instance in metric_id.findall(ids):
                names = ["", "0", "1", "2"] if instance == "*" else [""]
                for name in names:
                    values = [(i * 7) % 100 for i in range(len(stamps))]
                    if name == "2":
                        values = [-1] * len(stamps)
                    elif len(values) > 3:
                        values[1] = values[3] = -1
                    series[(int(key), name)] = values
                    tally["slots"] += len(values)
                    tally["gaps"] += values.count(-1)
            entities.append(entity_csv(moref, stamps, series))
        return response(entities)

    return answer


async def one_cycle(source: VCenterSource) -> list[Any]:
    """Every chunk of one whole-window collection from a fresh login."""
    await source.start()
    try:
        now = await source.vcenter_now()
        return [c async for c in source.collect(source.plan({}, now))]
    finally:
        source.client.close()


async def test_expected_counts_every_series_vcenter_returns(vcsim_env: dict[str, str]) -> None:
    metrics = [{"name": "cpu.usage.average", "per_instance": True}, "mem.usage.average"]
    tally = {"slots": 0, "gaps": 0}
    with HostileVCenter(vcsim_env) as double:
        double.queryperf_mode = "script"
        double.script = real_vcenter_answers(tally)
        results = await one_cycle(VCenterSource(vcenter_config(double.env(vcsim_env), "real"),
                                                collection_config(metrics=metrics)))
    assert all(r.error is None for r in results)
    expected = sum(r.batch.expected_samples for r in results)
    collected = sum(r.batch.samples for r in results)
    assert tally["gaps"] > 0 and expected == tally["slots"], (expected, tally)
    assert collected == tally["slots"] - tally["gaps"], (collected, tally)


async def test_expected_matches_vcsim_which_echoes_the_wildcard(
        vcsim_env: dict[str, str]) -> None:
    metrics = [{"name": "cpu.usage.average", "per_instance": True}, "mem.usage.average"]
    results = await one_cycle(VCenterSource(vcenter_config(vcsim_env, "echo"),
                                            collection_config(metrics=metrics)))
    assert all(r.error is None for r in results)
    # vcsim has every slot, the newest too, and answers '*' with the aggregate only
    collected = sum(r.batch.samples for r in results)
    assert collected > 0 and sum(r.batch.expected_samples for r in results) == collected
