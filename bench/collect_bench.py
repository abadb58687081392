"""Collection benchmark: vCenter QueryPerf (vcsim) to series, statsfeeder vs pyvmomi vs Telegraf.

    .venv/bin/python bench/collect_bench.py [--sizes 1000,10000,30000] [--skip-telegraf]
                                            [--json results.json] [--hosts 10]

For every size, one vcsim inventory (10 clusters x ``--hosts`` hosts, ``size // 10`` VMs per
cluster's resource pool) is started and kept running while three collectors read it, each in a
process of its own (so its peak RSS is its own), with the same 10 counters
(``statsfeeder.config.DEFAULT_METRICS``):

1. **statsfeeder**: ``VCenterSource.start()`` (login, counters, inventory; not measured), then
   one ``plan({}, now)`` + ``collect`` of every powered-on VM (the initial 5-minute window,
   rounded down to the 5-minute storage grid, csv format). Measured: process CPU
   (``time.process_time``, all threads), wall time, samples delivered (``batch.samples``), peak
   RSS (VmHWM). Then, in the same process, the raw SOAP bodies of the same chunks are fetched
   again and ``parse_query_perf`` alone is timed on them ("parse only": SOAP bytes to
   ``Series``; best of 3).
2. **pyvmomi**: the same chunks (same VMs, windows and counter ids) through
   ``PerformanceManager.QueryPerf`` with ``format='csv'``; CPU covers building the specs, the
   call and pyvmomi's deserialisation (the values stay comma-separated strings).
3. **Telegraf** 1.40.1 ``inputs.vsphere`` (VMs only, realtime, ``vm_instances = false``,
   defaults otherwise), ``telegraf --once`` to ``outputs.discard``, twice (mean reported).
   CPU and peak RSS of the child come from ``wait4``; its collection CPU is the total minus the
   CPU it had used when it logged ``Collecting metrics for N objects of type vm`` (start-up,
   login and discovery come before; read from /proc, debug logging on). Points = the numeric
   fields of the 60-s points a third, quiet run writes as line protocol to a file. It asks for
   fewer, aggregated points than a 20-s collector: the samples it *fetched* are estimated from
   a vcsim ``-trace`` of a 50-VM inventory (values in its QueryPerf responses per VM) times the
   VMs it collected.

Samples are counted the same way for 1 and 2: values stamped after each VM's window start
(vcsim, unlike vCenter, also returns the sample stamped exactly at ``startTime``; statsfeeder
parses and then drops it, and pyvmomi's count leaves it out too).

pyvmomi's csv values stay strings; the extra CPU to turn them into numbers (one
``np.fromstring`` per series) is reported on a line of its own.

vcsim's own CPU is in no collector's figures (it is recorded apart, ``vcsim_cpu_s``). Wall
time is noisy on a shared 2-core machine; CPU-seconds are the robust figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from peers import common, vcsim
from peers import telegraf as telegraf_peer
from statsfeeder.config import DEFAULT_METRICS

NAME = "vcsim-bench"
PORT = 18994
TRACE_NAME = "vcsim-bench-trace"
TRACE_PORT = 18995
CLUSTERS = 10
TARGET_PARSE_US = 0.5
HERE = Path(__file__).resolve()


# -- helpers shared by the worker processes --------------------------------------------------
def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _mb(kb: float) -> float:
    return kb / 1024


def _cpu_of(pid: int) -> float:
    """user + system CPU-seconds a live process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _epoch(text: str) -> int:
    return int(datetime.fromisoformat(text.strip()).timestamp())


# -- worker 1: statsfeeder -------------------------------------------------------------------
async def _ours(env: dict[str, str], plan_file: Path) -> dict[str, Any]:
    from statsfeeder.sources.vcenter.parse import TimestampCache, parse_query_perf
    from statsfeeder.sources.vcenter.query import answer_cap, query_perf_body
    from statsfeeder.sources.vcenter.source import VCenterSource
    from tests.helpers import collection_config, vcenter_config

    source = VCenterSource(vcenter_config(env, "bench"),
                           collection_config(metrics=list(DEFAULT_METRICS), format="csv"))
    wall0 = time.perf_counter()
    await source.start()
    startup_wall = time.perf_counter() - wall0
    rss_ready = _status_kb("VmRSS")
    try:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        now = await source.vcenter_now()
        chunks = source.plan({}, now)
        samples = expected = errors = 0
        dropped: dict[str, int] = {}
        async for item in source.collect(chunks):
            samples += item.batch.samples
            expected += item.batch.expected_samples
            errors += item.error is not None
            for reason, count in item.batch.dropped.items():
                dropped[reason] = dropped.get(reason, 0) + count
        cpu = time.process_time() - cpu0
        wall = time.perf_counter() - wall0
        peak = _status_kb("VmHWM")
        plan_file.write_text(json.dumps({
            "counters": [c.key for c in source.counters],
            "chunks": [{"end": c.end, "vms": [[vm.moref, vm.start] for vm in c.vms]}
                       for c in chunks],
        }))
        # Parse only: the same chunks' raw bodies, fetched again, parsed in-process.
        bodies = [source.client.soap(query_perf_body(source._perf_manager, c, source.counters,
                                                     "csv"), answer_cap(c, source.counters, "csv"))
                  for c in chunks]
        parse_cpu = float("inf")
        parsed = 0
        for _ in range(3):
            cache = TimestampCache()
            parsed = 0
            began = time.process_time()
            for body in bodies:
                result = parse_query_perf(body, vcenter="bench", counters=source._counter_by_key,
                                          timestamps=cache)
                parsed += result.batch.samples
            parse_cpu = min(parse_cpu, time.process_time() - began)
            del result
    finally:
        source.client.close()
    return {
        "vms": len(source.powered_on()), "inventory": len(source.vms), "chunks": len(chunks),
        "counters": [c.name for c in source.counters],
        "startup_wall_s": startup_wall, "cpu_s": cpu, "wall_s": wall, "samples": samples,
        "expected_samples": expected, "errors": errors, "dropped": dropped,
        "rss_ready_mb": _mb(rss_ready), "peak_rss_mb": _mb(peak),
        "parse_only": {"cpu_s": parse_cpu, "samples": parsed,
                       "bytes": sum(len(b) for b in bodies),
                       "us_per_sample": parse_cpu / parsed * 1e6 if parsed else None},
    }


# -- worker 2: pyvmomi -----------------------------------------------------------------------
def _pyvmomi(env: dict[str, str], plan_file: Path) -> dict[str, Any]:
    import ssl
    from urllib.parse import urlsplit

    import numpy as np
    from pyVim.connect import Disconnect, SmartConnect
    from pyVmomi import vim

    plan = json.loads(plan_file.read_text())
    parts = urlsplit(env["VCSIM_URL"])
    context = ssl.create_default_context(cafile=env["VCSIM_CA_FILE"])
    wall0 = time.perf_counter()
    si = SmartConnect(host=parts.hostname, port=parts.port, user=env["VCSIM_USERNAME"],
                      pwd=env["VCSIM_PASSWORD"], sslContext=context)
    perf = si.RetrieveContent().perfManager
    startup_wall = time.perf_counter() - wall0
    rss_ready = _status_kb("VmRSS")
    stub = si._stub
    metric_ids = [vim.PerformanceManager.MetricId(counterId=key, instance="")
                  for key in plan["counters"]]
    cpu = wall = to_numbers = 0.0
    samples = values = 0
    try:
        for chunk in plan["chunks"]:
            cpu0, wall0 = time.process_time(), time.perf_counter()
            end = datetime.fromtimestamp(chunk["end"], UTC)
            specs = [vim.PerformanceManager.QuerySpec(
                entity=vim.VirtualMachine(moref, stub),
                startTime=datetime.fromtimestamp(start, UTC), endTime=end,
                metricId=metric_ids, intervalId=20, format="csv") for moref, start in chunk["vms"]]
            result = perf.QueryPerf(querySpec=specs)
            cpu += time.process_time() - cpu0
            wall += time.perf_counter() - wall0
            began = time.process_time()  # what it still takes to get numbers out of it
            for entity in result or ():
                for series in entity.value or ():
                    if series.value:
                        np.fromstring(series.value, dtype=np.int64, sep=",")
            to_numbers += time.process_time() - began
            starts = dict(chunk["vms"])
            for entity in result or ():  # counted outside the timed parts
                info = (entity.sampleInfoCSV or "").split(",")
                start = starts[entity.entity._moId]
                keep = sum(1 for stamp in info[1::2] if _epoch(stamp) > start)
                for series in entity.value or ():
                    n = series.value.count(",") + 1 if series.value else 0
                    values += n
                    samples += keep if n == len(info) // 2 else 0
            del result, specs
        peak = _status_kb("VmHWM")
    finally:
        Disconnect(si)
    return {"startup_wall_s": startup_wall, "cpu_s": cpu, "wall_s": wall, "samples": samples,
            "values_returned": values, "cpu_csv_to_numbers_s": to_numbers,
            "rss_ready_mb": _mb(rss_ready), "peak_rss_mb": _mb(peak)}


def _run_worker(kind: str, env: dict[str, str], plan_file: Path) -> dict[str, Any]:
    """Run one collector in a child process; its JSON result plus the child's rusage."""
    with tempfile.TemporaryDirectory(prefix="collect-bench-") as tmp:
        out = Path(tmp) / "result.json"
        env_file = Path(tmp) / "env.json"
        env_file.write_text(json.dumps(env))
        argv = [sys.executable, str(HERE), "--worker", kind, "--env-file", str(env_file),
                "--plan-file", str(plan_file), "--result-file", str(out)]
        proc = subprocess.Popen(argv, cwd=HERE.parent.parent)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise RuntimeError(f"{kind} worker exited {proc.returncode}")
        result: dict[str, Any] = json.loads(out.read_text())
    result["process_cpu_s"] = usage.ru_utime + usage.ru_stime
    result["process_maxrss_mb"] = _mb(usage.ru_maxrss)
    return result


# -- Telegraf --------------------------------------------------------------------------------
_COLLECTING = re.compile(r"Collecting metrics for (\d+) objects of type vm")
TELEGRAF_CPU_RUNS = 2


def _telegraf_config(env: dict[str, str], output: str, *, debug: bool) -> str:
    include = ", ".join(json.dumps(m) for m in DEFAULT_METRICS)
    excluded = "\n".join(f'  {kind}_metric_exclude = ["*"]' for kind in
                         ("host", "cluster", "datastore", "datacenter", "resource_pool", "vsan"))
    return f"""
[agent]
  interval = "60s"
  round_interval = false
  metric_batch_size = 10000
  metric_buffer_limit = 50000000
  flush_interval = "60s"
  omit_hostname = true
  debug = {str(debug).lower()}
  skip_processors_after_aggregators = true

[[inputs.vsphere]]
  vcenters = [{json.dumps(env["VCSIM_URL"])}]
  username = {json.dumps(env["VCSIM_USERNAME"])}
  password = {json.dumps(env["VCSIM_PASSWORD"])}
  tls_ca = {json.dumps(env["VCSIM_CA_FILE"])}
  vm_metric_include = [{include}]
  vm_instances = false
{excluded}

{output}
"""


def _run_telegraf(env: dict[str, str], workdir: Path, *,
                  output_file: Path | None = None) -> dict[str, Any]:
    """``telegraf --once``: the child's CPU and peak RSS from wait4. With outputs.discard it
    runs with debug logging, and the CPU it has used when it logs "Collecting metrics for N
    objects of type vm" (start-up, login and discovery are done) is read from /proc, so the
    collection's own CPU is the rest. With a file output it runs quietly (points counted)."""
    binary = telegraf_peer.ensure_telegraf()
    if output_file is None:
        output = "[[outputs.discard]]\n"
    else:
        output = f'[[outputs.file]]\n  files = ["{output_file}"]\n  data_format = "influx"\n'
    config = workdir / "telegraf.conf"
    config.write_text(_telegraf_config(env, output, debug=output_file is None))
    log_path = workdir / "telegraf.log"
    mark: dict[str, float] = {}
    wall0 = time.perf_counter()
    proc = subprocess.Popen([str(binary), "--once", "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def read_log() -> None:
        assert proc.stderr is not None
        with open(log_path, "wb") as log:
            for line in proc.stderr:
                if "cpu" not in mark and b"of type vm" in line and _COLLECTING.search(
                        line.decode("utf-8", "replace")):
                    mark["cpu"] = _cpu_of(proc.pid)
                    mark["wall"] = time.perf_counter()
                log.write(line)

    reader = threading.Thread(target=read_log, daemon=True)
    reader.start()
    _, status, usage = os.wait4(proc.pid, 0)
    end = time.perf_counter()
    proc.returncode = os.waitstatus_to_exitcode(status)
    reader.join(timeout=30)
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"telegraf exited {proc.returncode}: {' | '.join(tail)}")
    total = usage.ru_utime + usage.ru_stime
    result = {"cpu_total_s": total, "wall_total_s": end - wall0,
              "peak_rss_mb": _mb(usage.ru_maxrss)}
    if output_file is None:
        if "cpu" not in mark:
            raise RuntimeError(f"telegraf never logged the start of its VM collection: {log_path}")
        result.update(cpu_startup_s=mark["cpu"], cpu_s=total - mark["cpu"],
                      wall_s=end - mark["wall"])
    return result


def _influx_points(path: Path) -> tuple[int, int, int]:
    """(numeric fields, lines, distinct moids) of an influx line-protocol file. String fields
    (Telegraf adds memorySizeMB="…" to every line) are not samples."""
    fields = lines = 0
    moids = set()
    space = re.compile(r"(?<!\\) ")
    comma = re.compile(r'(?<!\\),(?=(?:[^"]*"[^"]*")*[^"]*$)')
    moid = re.compile(r",moid=([^,\s]+)")
    with open(path) as handle:
        for line in handle:
            parts = space.split(line.rstrip("\n"))
            if len(parts) < 3:
                continue
            lines += 1
            if (found := moid.search(parts[0])) is not None:
                moids.add(found.group(1))
            fields += sum(1 for f in comma.split(parts[1])
                          if not f.split("=", 1)[-1].startswith('"'))
    return fields, lines, len(moids)


def bench_telegraf(env: dict[str, str], workdir: Path,
                   trace: dict[str, Any] | None) -> dict[str, Any]:
    """TELEGRAF_CPU_RUNS debug runs to outputs.discard (CPU split at the start of collection;
    the mean is reported, each run is kept), then one quiet run writing line protocol to a file
    to count the points it emits."""
    runs = [_run_telegraf(env, workdir) for _ in range(TELEGRAF_CPU_RUNS)]
    out = workdir / "out.influx"
    out.unlink(missing_ok=True)
    to_file = _run_telegraf(env, workdir, output_file=out)
    points, lines, vms = _influx_points(out)
    out.unlink(missing_ok=True)

    def mean(key: str) -> float:
        return sum(r[key] for r in runs) / len(runs)

    result: dict[str, Any] = {
        "cpu_s": mean("cpu_s"), "cpu_total_s": mean("cpu_total_s"),
        "cpu_startup_s": mean("cpu_startup_s"), "wall_s": mean("wall_s"),
        "wall_total_s": mean("wall_total_s"),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs), "runs": runs,
        "file_output_run": to_file, "points": points, "lines": lines, "vms": vms,
    }
    result["us_per_point"] = _per_sample(result["cpu_s"], points)
    if trace and trace.get("values_per_vm"):
        result["samples_fetched_est"] = round(trace["values_per_vm"] * vms)
        result["us_per_sample"] = _per_sample(result["cpu_s"], result["samples_fetched_est"])
    return result


def _telegraf_trace() -> dict[str, Any]:
    """What Telegraf asks vcsim for and how many values come back, per VM: one run against a
    small inventory with vcsim's SOAP trace on."""
    env = vcsim.start_instance(TRACE_NAME, TRACE_PORT, clusters=2, hosts=2, vms=25,
                               standalone_hosts=0, trace=True)
    trace = common.RUN / TRACE_NAME / "trace.log"
    try:
        offset = trace.stat().st_size if trace.exists() else 0
        with tempfile.TemporaryDirectory(prefix="collect-bench-tg-") as tmp:
            out = Path(tmp) / "out.influx"
            _run_telegraf(env, Path(tmp), output_file=out)
            points, lines, vms = _influx_points(out)
        time.sleep(0.5)
        with open(trace, encoding="utf-8", errors="replace") as handle:
            handle.seek(offset)
            text = handle.read()
    finally:
        vcsim.stop_instance(TRACE_NAME)

    def tag(name: str, xml: str) -> str | None:
        found = re.search(fr"<{name}>([^<]*)</{name}>", xml)
        return found.group(1) if found else None

    shapes: dict[str, int] = {}
    for request in re.findall(r"<QueryPerf\b.*?</QueryPerf>", text, re.S):
        for spec in re.findall(r"<querySpec>(.*?)</querySpec>", request, re.S):
            start, end = tag("startTime", spec), tag("endTime", spec)
            shape = json.dumps({
                "maxSample": tag("maxSample", spec), "format": tag("format", spec),
                "intervalId": tag("intervalId", spec), "metricIds": spec.count("<metricId>"),
                "window_s": _epoch(end) - _epoch(start) if start and end else None,
            }, sort_keys=True)
            shapes[shape] = shapes.get(shape, 0) + 1
    entities = set()
    values = 0
    for response in re.findall(r"<QueryPerfResponse\b.*?</QueryPerfResponse>", text, re.S):
        entities.update(re.findall(r"<entity\b[^>]*>([^<]+)</entity>", response))
        values += len(re.findall(r"<value>-?\d+</value>", response))
    return {"vms": len(entities),
            "query_specs": [dict(json.loads(k), count=v) for k, v in shapes.items()],
            "values_fetched": values,
            "values_per_vm": values / len(entities) if entities else 0.0,
            "points_written": points, "lines_written": lines, "vms_written": vms,
            "points_per_vm": points / vms if vms else 0.0}


# -- orchestration ---------------------------------------------------------------------------
def _per_sample(cpu: float | None, samples: float | None) -> float | None:
    if cpu is None or not samples or cpu != cpu:
        return None
    return cpu / samples * 1e6


def bench_size(size: int, hosts: int, skip_telegraf: bool, trace: dict[str, Any] | None,
               workdir: Path) -> dict[str, Any]:
    began = time.perf_counter()
    print(f"[{size}] starting vcsim: {CLUSTERS} clusters x {hosts} hosts, {size // CLUSTERS} "
          "VMs per cluster", flush=True)
    env = vcsim.start_instance(NAME, PORT, clusters=CLUSTERS, hosts=hosts,
                               vms=size // CLUSTERS, standalone_hosts=0)
    pid = common.pid_of(NAME)
    assert pid is not None
    result: dict[str, Any] = {"size": size, "vcsim_start_wall_s": time.perf_counter() - began,
                              "vcsim_start_cpu_s": _cpu_of(pid)}
    print(f"[{size}] vcsim up in {result['vcsim_start_wall_s']:.0f} s "
          f"({result['vcsim_start_cpu_s']:.0f} CPU-s)", flush=True)

    def measured(kind: str, run: Any) -> dict[str, Any]:
        before = _cpu_of(pid)
        out: dict[str, Any] = run()
        out["vcsim_cpu_s"] = _cpu_of(pid) - before  # serving it (not counted as its cost)
        return out

    try:
        plan_file = workdir / f"plan-{size}.json"
        ours = measured("ours", lambda: _run_worker("ours", env, plan_file))
        ours["us_per_sample"] = _per_sample(ours["cpu_s"], ours["samples"])
        result["statsfeeder"] = ours
        print(f"[{size}] statsfeeder: {ours['samples']:,} samples, {ours['cpu_s']:.2f} CPU-s, "
              f"parse only {ours['parse_only']['us_per_sample']:.3f} µs/sample", flush=True)
        pyv = measured("pyvmomi", lambda: _run_worker("pyvmomi", env, plan_file))
        pyv["us_per_sample"] = _per_sample(pyv["cpu_s"], pyv["samples"])
        result["pyvmomi"] = pyv
        print(f"[{size}] pyvmomi: {pyv['samples']:,} samples, {pyv['cpu_s']:.2f} CPU-s",
              flush=True)
        if not skip_telegraf:
            tg = measured("telegraf", lambda: bench_telegraf(env, workdir, trace))
            result["telegraf"] = tg
            print(f"[{size}] telegraf: {tg['points']:,} points, {tg['cpu_s']:.2f} CPU-s "
                  f"collecting ({tg['cpu_total_s']:.2f} with start-up and discovery)",
                  flush=True)
    finally:
        vcsim.stop_instance(NAME)
    result["wall_s"] = time.perf_counter() - began
    return result


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def ratios(result: dict[str, Any]) -> dict[str, float | None]:
    ours = result["statsfeeder"]
    out = {"pyvmomi_us_per_sample_vs_ours": _ratio(result["pyvmomi"]["us_per_sample"],
                                                   ours["us_per_sample"]),
           "pyvmomi_peak_rss_vs_ours": _ratio(result["pyvmomi"]["peak_rss_mb"],
                                              ours["peak_rss_mb"])}
    tg = result.get("telegraf")
    if tg:
        out["telegraf_us_per_sample_vs_ours"] = _ratio(tg.get("us_per_sample"),
                                                       ours["us_per_sample"])
        out["telegraf_us_per_point_vs_ours"] = _ratio(tg.get("us_per_point"),
                                                      ours["us_per_sample"])
        out["telegraf_peak_rss_vs_ours"] = _ratio(tg["peak_rss_mb"], ours["peak_rss_mb"])
    return out


def _f(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def markdown(results: list[dict[str, Any]]) -> str:
    rows = ["| VMs | collector | CPU-s | samples (points) | µs/sample | wall s "
            "| peak RSS MB (after start-up) |",
            "|---:|---|---:|---:|---:|---:|---:|"]
    for r in results:
        size = f"{r['statsfeeder']['vms']:,}"
        ours, pyv, tg = r["statsfeeder"], r["pyvmomi"], r.get("telegraf")
        rows.append(f"| {size} | statsfeeder (csv, own parser) | {_f(ours['cpu_s'])} | "
                    f"{_f(ours['samples'])} | {_f(ours['us_per_sample'])} | "
                    f"{_f(ours['wall_s'], 1)} | {_f(ours['peak_rss_mb'], 0)} "
                    f"({_f(ours['rss_ready_mb'], 0)}) |")
        po = ours["parse_only"]
        rows.append(f"| {size} | statsfeeder, parse only | {_f(po['cpu_s'])} | "
                    f"{_f(po['samples'])} | {_f(po['us_per_sample'], 3)} | – | – |")
        rows.append(f"| {size} | pyvmomi QueryPerf (csv) | {_f(pyv['cpu_s'])} | "
                    f"{_f(pyv['samples'])} | {_f(pyv['us_per_sample'])} | "
                    f"{_f(pyv['wall_s'], 1)} | {_f(pyv['peak_rss_mb'], 0)} "
                    f"({_f(pyv['rss_ready_mb'], 0)}) |")
        numbers = pyv["cpu_s"] + pyv["cpu_csv_to_numbers_s"]
        rows.append(f"| {size} | pyvmomi + CSV strings to numbers | {_f(numbers)} | "
                    f"{_f(pyv['samples'])} | {_f(_per_sample(numbers, pyv['samples']))} | – | – |")
        if tg:
            rows.append(
                f"| {size} | Telegraf vsphere (collection; {_f(tg['cpu_total_s'])} with "
                f"start-up + discovery) | {_f(tg['cpu_s'])} | ≈{_f(tg.get('samples_fetched_est'))}"
                f" fetched ({_f(tg['points'])} points) | {_f(tg.get('us_per_sample'))} "
                f"({_f(tg['us_per_point'])}/point) | {_f(tg['wall_s'], 1)} | "
                f"{_f(min(r['peak_rss_mb'] for r in tg['runs']), 0)}–"
                f"{_f(tg['peak_rss_mb'], 0)} ({len(tg['runs'])} runs) |")
    rows += ["", "| VMs | pyvmomi ÷ ours µs/sample | Telegraf ÷ ours µs/sample (per point) | "
             "pyvmomi ÷ ours peak RSS | Telegraf ÷ ours peak RSS | parse only vs 0.5 µs target |",
             "|---:|---:|---:|---:|---:|---|"]
    for r in results:
        q = r["ratios"]
        po = r["statsfeeder"]["parse_only"]["us_per_sample"]
        verdict = "met" if po is not None and po <= TARGET_PARSE_US else "missed"
        rows.append(f"| {r['statsfeeder']['vms']:,} | {_f(q['pyvmomi_us_per_sample_vs_ours'], 1)}"
                    f" | {_f(q.get('telegraf_us_per_sample_vs_ours'), 1)} "
                    f"({_f(q.get('telegraf_us_per_point_vs_ours'), 1)}) | "
                    f"{_f(q['pyvmomi_peak_rss_vs_ours'], 1)} | "
                    f"{_f(q.get('telegraf_peak_rss_vs_ours'), 1)} | {_f(po, 3)} µs: {verdict} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,30000",
                        help="comma-separated VM counts (multiples of 10)")
    parser.add_argument("--hosts", type=int, default=10, help="hosts per cluster")
    parser.add_argument("--skip-telegraf", action="store_true")
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    parser.add_argument("--worker", choices=("ours", "pyvmomi"), help=argparse.SUPPRESS)
    parser.add_argument("--env-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--plan-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        env = json.loads(args.env_file.read_text())
        if args.worker == "ours":
            result = asyncio.run(_ours(env, args.plan_file))
        else:
            result = _pyvmomi(env, args.plan_file)
        args.result_file.write_text(json.dumps(result))
        return

    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    began = time.perf_counter()
    trace = None
    workdir = Path(tempfile.mkdtemp(prefix="collect-bench-"))
    print(f"work directory (plans, Telegraf config and log): {workdir}", flush=True)
    if not args.skip_telegraf:
        print("telegraf: learning its query shape from a traced 50-VM vcsim", flush=True)
        trace = _telegraf_trace()
        print(f"telegraf trace: {json.dumps(trace)}", flush=True)
    results: list[dict[str, Any]] = []
    failures: dict[int, str] = {}

    def report() -> dict[str, Any]:
        table = markdown(results) if results else ""
        return {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "python": platform.python_version(), "load_avg": os.getloadavg()},
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "metrics": list(DEFAULT_METRICS), "hosts_per_cluster": args.hosts,
            "clusters": CLUSTERS, "telegraf_trace": trace, "results": results,
            "failures": failures, "total_wall_s": time.perf_counter() - began,
            "markdown": table,
        }

    for size in sizes:
        try:
            result = bench_size(size, args.hosts, args.skip_telegraf, trace, workdir)
        except (RuntimeError, common.PeerError, OSError) as exc:
            failures[size] = f"{exc.__class__.__name__}: {exc}"
            print(f"[{size}] FAILED: {failures[size]}", flush=True)
            continue
        result["ratios"] = ratios(result)
        results.append(result)
        if args.json:  # after every size: a later failure keeps what was measured
            args.json.write_text(json.dumps(report(), indent=2))
    final = report()
    print()
    print(final["markdown"])
    if args.json:
        args.json.write_text(json.dumps(final, indent=2))
    for plan in workdir.glob("plan-*.json"):
        plan.unlink()


if __name__ == "__main__":
    main()
