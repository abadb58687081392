"""Differential test: the read API (Prometheus 3.16's engine over Cassandra) against the real
Prometheus 2.42 (Debian's) holding the same samples in its own TSDB, point for point.

The fleet's samples are written through the real CassandraSink; the same samples, as
OpenMetrics text, go into a TSDB with ``promtool tsdb create-blocks-from openmetrics``, served by
a Prometheus of its own started with ``--query.lookback-delta=10m`` (our default).

Deliberate difference, avoided by the choice of times: Prometheus 2.42 includes a range's left
end (``[5m]`` at t covers [t-5m, t]), the embedded 3.x engine excludes it ((t-5m, t]), and
likewise for the lookback window. Samples are on whole seconds (multiples of 20); every
evaluation time here ends in .5 s, so no range or lookback boundary ever falls on a sample and
both engines must agree exactly. Values are compared to a relative 1e-9 (3.x sums with Kahan
compensation, 2.42 does not).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from peers import prometheus as prometheus_peer
from tests.readapi_fleet import Fleet, create_keyspace, drop, free_port, served, store_fleet

C = "vsphere_vm_cpu_usage_average_percent"
MHZ = "vsphere_vm_cpu_usagemhz_average_megahertz"
MEM = "vsphere_vm_mem_usage_average_percent"
DISK = "vsphere_vm_disk_read_average_kilobytes_per_second"
NET = "vsphere_vm_net_received_average_kilobytes_per_second"
VM1 = "urn:vcloud:vm:00000000-0000-0000-0000-000000000001"

# The fleet: 3 h of samples ending on a whole hour, an hour ago (times are filled in below).
NOW = int(time.time())
END = NOW // 3600 * 3600 - 3600
START = END - 3 * 3600
FLEET = Fleet.generate(START, END)
HALF = 0.5  # every evaluation time ends in .5 s: no boundary falls on a sample

RANGE_QUERIES = [
    C,
    f'{C}{{org="acme"}}',
    f'{C}{{org!="acme"}}',
    f'{C}{{vdc=~"gold-.*"}}',
    f'{C}{{vapp!~"web|db"}}',
    '{__name__=~"vsphere_vm_cpu_.*", org="globex"}',
    f'{DISK}{{device=~"scsi0:.*"}}',
    f'{DISK}{{device=""}}',
    f'{C}{{vm="{VM1}"}}',
    f"avg_over_time({C}[5m])",
    f"max_over_time({MEM}[15m])",
    f"min_over_time({C}[7m])",
    f"count_over_time({NET}[5m])",
    f"quantile_over_time(0.95, {C}[10m])",
    f"last_over_time({C}[30m])",
    f"sum by (org) ({C})",
    f"avg by (vdc) ({MEM})",
    f"max by (vapp) ({C})",
    f"sum by (vm) ({DISK})",
    f"sum without (device) ({DISK})",
    f"count by (org) ({C})",
    f"topk(3, {C})",
    f"topk by (org) (1, {MEM})",
    f"bottomk(2, avg_over_time({NET}[10m]))",
    f"{C} / 100",
    f"2 * {MEM} - 1",
    f"{MHZ} / {C}",
    f"{C} + on (vm) group_left {MEM}",
    f"sum by (org) ({MHZ}) / count by (org) ({MHZ})",
    f"{C} > 30",
    f"{C} > bool 30",
    f"{C} offset 10m",
    f"avg_over_time({C}[5m] offset 30m)",
    f'absent({C}{{org="nope"}})',
    f"sum(rate({NET}[10m])) by (vdc)",
    f"{C} and on (vm) {MEM} > 40",
    # RE2's POSIX class: Python's re reads another set, so the store must not pre-filter.
    f'{C}{{vm_name=~"[[:alpha:]]+-[[:digit:]]"}}',
]


def range_cases() -> Iterator[Any]:
    for number, query in enumerate(RANGE_QUERIES):
        # Alternate between a step that divides the range and one that does not.
        step = 60 if number % 2 == 0 else 47
        yield pytest.param(query, START + 600 + HALF, END + 900 + HALF, step, id=f"r{number}")
    # The lookback edge in a range: vm-23 stops at stop_23; 10 minutes later it is gone.
    edge = FLEET.stop_23 + 600
    yield pytest.param(C, edge - 20 + HALF, edge + 20 + HALF, 1, id="lookback-edge-range")
    yield pytest.param(f"{C}{{moref='vm-22'}}", START + HALF, END + HALF, 120, id="gap")
    yield pytest.param(C, START - 6 * 3600 + HALF, START - 3 * 3600 + HALF, 60, id="no-data")
    yield pytest.param(f"avg_over_time({C}[1h])", START - 1800 + HALF, START + 1800 + HALF,
                       300, id="data-begins")


INSTANT_CASES = [
    pytest.param(C, FLEET.stop_23 + 600 - HALF, id="lookback-inside"),
    pytest.param(C, FLEET.stop_23 + 600 + HALF, id="lookback-outside"),
    pytest.param(f"count({C})", END + 600 - HALF, id="after-end-inside"),
    pytest.param(f"count({C})", END + 600 + HALF, id="after-end-outside"),
    pytest.param(f"sum by (org) (max_over_time({C}[1h]))", END + HALF, id="instant-agg"),
    pytest.param(f"topk(2, {MHZ})", END - 1800 + HALF, id="instant-topk"),
    pytest.param("1+1", END + HALF, id="scalar"),
    pytest.param(f"{C}[2m]", END - 600 + HALF, id="range-vector"),
]


@pytest.fixture(scope="module")
def apis(cassandra_env: dict[str, str],
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(ours, reference) base URLs over the same samples."""
    prometheus, promtool = prometheus_peer.ensure_installed()
    work = tmp_path_factory.mktemp("reference")
    exported = work / "fleet.om"
    exported.write_text(FLEET.openmetrics())
    storage = work / "data"
    created = subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics",
                              str(exported), str(storage)], capture_output=True, text=True,
                             timeout=300, check=False)
    assert created.returncode == 0, created.stderr + created.stdout
    reference = start_prometheus(prometheus, storage, work)
    sink = None
    try:  # the reference is stopped whatever fails next (Cassandra unreachable included)
        import asyncio

        sink = create_keyspace(cassandra_env)
        asyncio.run(store_fleet(sink, FLEET))
        with served(sink) as ours:
            yield ours, reference.url
    finally:
        reference.stop()
        if sink is not None:
            drop(sink)


class Reference:
    def __init__(self, process: subprocess.Popen[bytes], url: str) -> None:
        self.process, self.url = process, url

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_prometheus(binary: str, storage: Path, work: Path) -> Reference:
    config = work / "prometheus.yml"
    config.write_text("global: {scrape_interval: 1m}\nscrape_configs: []\n")
    port = free_port()
    log = (work / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={storage}",
         f"--web.listen-address=127.0.0.1:{port}", "--query.lookback-delta=10m",
         "--storage.tsdb.retention.time=30d", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT, cwd=work)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError("reference Prometheus exited: "
                                 + (work / "prometheus.log").read_text()[-500:])
        if prometheus_peer.ready(url):
            return Reference(process, url)
        time.sleep(0.3)
    process.kill()
    raise AssertionError("reference Prometheus did not become ready")


def ask(base: str, path: str, fields: dict[str, Any]) -> dict[str, Any]:
    if "/label/" in path:  # GET only, in Prometheus
        answer = httpx.get(f"{base}{path}", params=fields, timeout=120)
    else:
        answer = httpx.post(f"{base}{path}", data=fields, timeout=120)
    body: dict[str, Any] = answer.json()
    assert answer.status_code == 200 and body["status"] == "success", (base, fields, body)
    return body["data"]  # type: ignore[no-any-return]


def normalise(data: dict[str, Any]) -> tuple[str, dict[Any, list[tuple[float, float]]]]:
    kind = data["resultType"]
    result = data["result"]
    if kind == "scalar":
        return kind, {(): [(float(result[0]), float(result[1]))]}
    out: dict[Any, list[tuple[float, float]]] = {}
    for item in result:
        key = tuple(sorted(item["metric"].items()))
        points = item["values"] if "values" in item else [item["value"]]
        out[key] = [(float(t), float(v)) for t, v in points]
    return kind, out


def same(ours: dict[str, Any], theirs: dict[str, Any]) -> None:
    kind, mine = normalise(ours)
    their_kind, reference = normalise(theirs)
    assert kind == their_kind
    assert set(mine) == set(reference), (set(mine) ^ set(reference))
    for key, points in reference.items():
        assert [t for t, _ in mine[key]] == [t for t, _ in points], key
        for (t, value), (_, expected) in zip(mine[key], points, strict=True):
            assert (math.isnan(value) and math.isnan(expected)) or \
                math.isclose(value, expected, rel_tol=1e-9, abs_tol=1e-12), (key, t, value,
                                                                               expected)


@pytest.mark.parametrize(("query", "start", "end", "step"), list(range_cases()))
def test_range_query_matches_prometheus(apis: tuple[str, str], query: str, start: float,
                                        end: float, step: int) -> None:
    fields = {"query": query, "start": repr(start), "end": repr(end), "step": str(step)}
    ours, reference = (ask(base, "/api/v1/query_range", fields) for base in apis)
    same(ours, reference)
    if end < START:
        assert ours["result"] == []
    elif query == C and step == 60:  # the plain selector: every VM answered
        assert len(ours["result"]) == 7


@pytest.mark.parametrize(("query", "at"), INSTANT_CASES)
def test_instant_query_matches_prometheus(apis: tuple[str, str], query: str, at: float
                                          ) -> None:
    fields = {"query": query, "time": repr(at)}
    ours, reference = (ask(base, "/api/v1/query", fields) for base in apis)
    same(ours, reference)


def test_the_lookback_edge_is_where_both_put_it(apis: tuple[str, str]) -> None:
    """vm-23's last sample is 10 minutes old at the edge: present just before, gone after."""
    edge = FLEET.stop_23 + 600
    for base in apis:
        inside = ask(base, "/api/v1/query", {"query": f"{C}{{moref='vm-23'}}",
                                             "time": repr(edge - HALF)})["result"]
        outside = ask(base, "/api/v1/query", {"query": f"{C}{{moref='vm-23'}}",
                                              "time": repr(edge + HALF)})["result"]
        assert len(inside) == 1 and float(inside[0]["value"][0]) == edge - HALF
        assert outside == []


@pytest.mark.parametrize("selector", [f'{C}{{org="acme"}}', "{vdc=~'silver|gold-b'}",
                                      f"{DISK}", "{vm_name=~'[[:alpha:]]+-1'}"])
def test_series_and_label_values_match_prometheus(apis: tuple[str, str], selector: str
                                                  ) -> None:
    fields = {"match[]": selector, "start": str(START), "end": str(END)}
    ours, reference = (ask(base, "/api/v1/series", fields) for base in apis)
    assert sorted(map(json.dumps, ours)) == sorted(map(json.dumps, reference))
    for label in ("org", "vdc", "vapp", "vm", "device", "__name__"):
        mine, theirs = (ask(base, f"/api/v1/label/{urllib.parse.quote(label)}/values", fields)
                        for base in apis)
        assert mine == theirs, label
    mine, theirs = (ask(base, "/api/v1/labels", fields) for base in apis)
    assert mine == theirs


LABEL_MATCHES = [
    pytest.param([], id="no-match"),
    pytest.param([f'{C}{{org!="acme"}}'], id="not-equal"),
    pytest.param([f'{C}{{vapp!~"web|db"}}'], id="not-regex"),
    pytest.param(['{vm_name=~"web"}'], id="anchored"),
    # RE2's POSIX class (Python's re reads it as a different set): only RE2 decides.
    pytest.param(['{vm_name=~"[[:alpha:]]+-1"}'], id="re2-class"),
    pytest.param([f'{C}{{vapp=""}}'], id="empty-is-absent"),
    pytest.param([f'{DISK}{{device!=""}}'], id="non-empty"),
    pytest.param(['{vdc=~"gold-.*|", __name__=~"vsphere_vm_(mem|net)_.+"}'],
                 id="regex-matching-empty"),
    pytest.param(['{nolabel="", vm_name="db-1"}', f'{MEM}{{moref=~"vm-2[12]"}}'],
                 id="union-of-two"),
    pytest.param(['{nolabel="x", __name__=~".+"}'], id="absent-label-required"),
]


@pytest.mark.parametrize("matches", LABEL_MATCHES)
def test_labels_and_label_values_match_prometheus(apis: tuple[str, str], matches: list[str]
                                                  ) -> None:
    """Label names and values come from the store's index (no series frame); every kind of
    matcher must still mean what it means to Prometheus."""
    fields: dict[str, Any] = {"match[]": matches, "start": str(START), "end": str(END)}
    nonempty = 0
    for label in ("org", "vdc", "vapp", "vm_name", "moref", "device", "__name__", "nolabel"):
        mine, theirs = (ask(base, f"/api/v1/label/{urllib.parse.quote(label)}/values", fields)
                        for base in apis)
        assert mine == theirs, label
        nonempty += bool(mine)
    mine, theirs = (ask(base, "/api/v1/labels", fields) for base in apis)
    assert mine == theirs
    assert bool(nonempty) == bool(mine)


def test_prometheus_is_the_debian_2_42(apis: tuple[str, str]) -> None:
    """The reference is what the module docstring says it is."""
    with urllib.request.urlopen(f"{apis[1]}/api/v1/status/buildinfo", timeout=10) as answer:
        version = json.load(answer)["data"]["version"]
    assert version.startswith("2.42"), version
    assert shutil.which("promtool")


def test_the_left_end_of_a_range_is_the_documented_difference(apis: tuple[str, str]) -> None:
    """On a sample's own timestamp, 2.42 counts the sample at t-5m, the 3.x engine does not:
    the one deliberate difference (docs/read-api.md, "Range semantics")."""
    at = END - 3000  # on the 20-s grid, like every sample
    fields = {"query": f'count_over_time({C}{{moref="vm-11"}}[5m])', "time": str(at)}
    ours, reference = (ask(base, "/api/v1/query", fields)["result"] for base in apis)
    assert float(ours[0]["value"][1]) == 15 and float(reference[0]["value"][1]) == 16
