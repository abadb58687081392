"""The read API's HTTP surface against the real Cassandra, with real clients: promtool's
``query instant|range|series|labels``, Prometheus's error envelope and limits, the scope that
hides other orgs' VMs, and ``statsfeeder serve`` from the command line."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from aiohttp import web

from peers import prometheus as prometheus_peer
from statsfeeder.readapi.store import Scope
from statsfeeder.sinks.cassandra.sink import CassandraSink
from tests.helpers import metric
from tests.readapi_fleet import (
    Fleet,
    create_keyspace,
    drop,
    free_port,
    read_api,
    served,
    store_fleet,
    stored_fleet,
)

C = "vsphere_vm_cpu_usage_average_percent"
END = int(time.time()) // 300 * 300 - 300
START = END - 2 * 3600
FLEET = Fleet.generate(START, END)
ACME_VMS = {vm.entity.vm for vm in FLEET.vms if vm.entity and vm.entity.org == "acme"}


@pytest.fixture(scope="module")
def sink(cassandra_env: dict[str, str]) -> Iterator[CassandraSink]:
    with stored_fleet(cassandra_env, FLEET) as stored:
        yield stored


@pytest.fixture(scope="module")
def api(sink: CassandraSink) -> Iterator[str]:
    with served(sink) as url:
        yield url


def promtool(*args: str) -> Any:
    _, binary = prometheus_peer.ensure_installed()
    done = subprocess.run([binary, "query", *args], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr + done.stdout
    return json.loads(done.stdout)


def test_promtool_instant_range_series_and_labels(api: str) -> None:
    at = str(END - 60)
    instant = promtool("instant", "-o", "json", "--time", at, api, f'{C}{{org="acme"}}')
    assert {item["metric"]["vm"] for item in instant} == ACME_VMS
    assert all(0 < float(item["value"][1]) < 100 for item in instant)  # percent
    ranged = promtool("range", "-o", "json", "--start", str(START + 600), "--end", at,
                      "--step", "5m", api, f"sum by (org) (avg_over_time({C}[5m]))")
    assert {item["metric"].get("org", "") for item in ranged} == {"acme", "globex", ""}
    assert all(len(item["values"]) == (END - 60 - START - 600) // 300 + 1
               for item in ranged if item["metric"].get("org") == "acme")
    series = promtool("series", "-o", "json", "--match", f'{C}{{vdc="silver"}}',
                      "--start", str(START), "--end", str(END), api)
    assert sorted(s["vm_name"] for s in series) == ["app-1", "app-2", "batch-1"]
    assert all("instance" not in s and "job" not in s for s in series)
    values = promtool("labels", "-o", "json", "--start", str(START), "--end", str(END), api,
                      "vapp")
    assert values == ["batch", "db", "shop", "web"]
    names = promtool("labels", "-o", "json", "--match", C, api, "__name__")
    assert names == [C]


def call(base: str, path: str, method: str = "GET", **fields: str) -> httpx.Response:
    if method == "GET":
        return httpx.get(f"{base}{path}", params=fields, timeout=60)
    return httpx.post(f"{base}{path}", data=fields, timeout=60)


@pytest.mark.parametrize(("path", "fields", "message"), [
    ("/api/v1/query", {"query": "sum(", "time": "1"},
     'invalid parameter "query": 1:5: parse error: unclosed left parenthesis'),
    ("/api/v1/query", {"query": "1", "time": "yesterday"},
     'invalid parameter "time": invalid time value for \'time\': cannot parse "yesterday" '
     "to a valid timestamp"),
    ("/api/v1/query_range", {"query": "1", "end": "10", "step": "1"},
     'invalid parameter "start": cannot parse "" to a valid timestamp'),
    ("/api/v1/query_range", {"query": "1", "start": "10", "end": "5", "step": "1"},
     'invalid parameter "end": end timestamp must not be before start time'),
    ("/api/v1/query_range", {"query": "1", "start": "0", "end": "10", "step": "0"},
     'invalid parameter "step": zero or negative query resolution step widths are not '
     "accepted. Try a positive integer"),
    ("/api/v1/query_range", {"query": "1", "start": "0", "end": "11001", "step": "1"},
     "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query "
     "resolution (?step=XX)"),
    ("/api/v1/series", {}, "no match[] parameter provided"),
    ("/api/v1/series", {"match[]": '{org=""}'},
     'invalid parameter "match[]": match[] must contain at least one non-empty matcher'),
])
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_bad_requests_get_prometheus_errors(api: str, path: str, fields: dict[str, str],
                                            message: str, method: str) -> None:
    answer = call(api, path, method, **fields)
    assert answer.status_code == 400
    assert answer.json() == {"status": "error", "errorType": "bad_data", "error": message}


@pytest.mark.parametrize("path", ["/api/v1/query", "/api/v1/query_range"])
def test_limit_keeps_the_first_series_with_prometheus_warning(api: str, path: str) -> None:
    """Prometheus 3's ``limit`` on query and query_range: the first ``limit`` series of a
    vector or matrix, in the engine's order, and a warning; scalars are not touched."""
    fields = {"query": C, "time": str(END - 60)} if path.endswith("query") else {
        "query": C, "start": str(START + 600), "end": str(END - 60), "step": "300"}
    whole = call(api, path, **fields).json()
    count = len(whole["data"]["result"])  # 6 at the instant (vm-23 stopped), 7 in the range
    assert count >= 6 and "warnings" not in whole
    for method in ("GET", "POST"):
        cut = call(api, path, method, **fields, limit="3").json()
        assert cut["data"]["result"] == whole["data"]["result"][:3]
        assert cut["warnings"] == ["results truncated due to limit"]
    exact = call(api, path, **fields, limit=str(count)).json()
    assert exact["data"] == whole["data"] and "warnings" not in exact
    scalar = call(api, path, **{**fields, "query": "1+1"}, limit="1").json()
    assert scalar["data"]["resultType"] in ("scalar", "matrix") and "warnings" not in scalar
    refused = call(api, path, **fields, limit="-1")
    assert refused.status_code == 400 and refused.json()["error"] == (
        'invalid parameter "limit": limit must be non-negative')


def test_exactly_11000_points_are_allowed(api: str) -> None:
    answer = call(api, "/api/v1/query_range", query="1", start="0", end="11000", step="1")
    assert answer.status_code == 200
    assert len(answer.json()["data"]["result"][0]["values"]) == 11001


def test_times_as_rfc3339_and_post_form_answer_alike(api: str) -> None:
    moment = time.strftime("%Y-%m-%dT%H:%M:%S.250Z", time.gmtime(END - 100))
    by_get = call(api, "/api/v1/query", query=f"sum({C})", time=moment).json()
    by_post = call(api, "/api/v1/query", "POST", query=f"sum({C})",
                   time=f"{END - 100}.25").json()
    assert by_get == by_post and by_get["data"]["result"][0]["value"][0] == END - 100 + 0.25


def test_grafana_save_and_test(api: str) -> None:
    answer = call(api, "/api/v1/query", "POST", query="1+1")
    assert answer.json()["data"]["result"][1] == "2"
    info = call(api, "/api/v1/status/buildinfo").json()["data"]
    assert info["version"].startswith("3.")
    metadata = call(api, "/api/v1/metadata").json()["data"]
    assert metadata[C] == [{"type": "gauge", "unit": "percent",
                            "help": "vCenter counter cpu.usage.average (percent), "
                                    "20-second samples"}]


def test_a_timeout_is_503(api: str) -> None:
    answer = call(api, "/api/v1/query_range", query=f"quantile_over_time(0.5, {C}[1h])",
                  start=str(START), end=str(END), step="20", timeout="0.001")
    assert answer.status_code == 503 and answer.json()["errorType"] == "timeout"


def test_series_cap_refuses_with_422(sink: CassandraSink) -> None:
    with served(sink, max_series=3) as url:
        answer = call(url, "/api/v1/query", query=f"sum({C})", time=str(END))
        within = call(url, "/api/v1/query", query=f'{C}{{vdc="silver"}}', time=str(END))
    assert answer.status_code == 422
    assert answer.json() == {"status": "error", "errorType": "execution", "error":
                             "query selects more than 3 series (read_api.max_series); "
                             "narrow the selector"}
    assert within.status_code == 200 and len(within.json()["data"]["result"]) == 2


async def only_acme(request: web.Request) -> Scope:
    return frozenset({"acme"})


def test_a_scope_hides_other_orgs_in_every_answer(sink: CassandraSink) -> None:
    globex_vm = next(vm.entity.vm for vm in FLEET.vms if vm.entity and vm.entity.org == "globex")
    with served(sink, only_acme) as url:
        everything = call(url, "/api/v1/query", query='{__name__=~".+"}', time=str(END)).json()
        assert {r["metric"]["org"] for r in everything["data"]["result"]} == {"acme"}
        guessed = call(url, "/api/v1/query", query=f'{C}{{vm="{globex_vm}"}}', time=str(END))
        assert guessed.json()["data"]["result"] == []
        total = call(url, "/api/v1/query", query=f"count({C})", time=str(END)).json()
        assert total["data"]["result"][0]["value"][1] == str(len(ACME_VMS))
        orgs = call(url, "/api/v1/label/org/values", start=str(START), end=str(END)).json()
        assert orgs["data"] == ["acme"]
        series = call(url, "/api/v1/series", **{"match[]": '{vm=~".+"}'}).json()["data"]
        assert {s["vm"] for s in series} == ACME_VMS


def write_serve_config(path: Path, cassandra_env: dict[str, str], keyspace: str,
                       read_api: dict[str, object], telemetry_port: int = 0) -> None:
    """A ``statsfeeder serve`` config: no vcenters section, since a read replica needs no
    vCenter credentials; its metrics on ``telemetry_port`` (default: a free one)."""
    path.write_text(yaml.safe_dump({
        "cassandra": {"hosts": cassandra_env["CASSANDRA_HOSTS"].split(","),
                      "port": int(cassandra_env["CASSANDRA_PORT"]),
                      "credentials": {"username": cassandra_env["CASSANDRA_USERNAME"],
                                      "password_env": "CASSANDRA_PASSWORD"},
                      "tls": {"ca_file": cassandra_env["CASSANDRA_CA_FILE"]},
                      "keyspace": keyspace, "consistency": "ONE"},
        "read_api": read_api,
        "telemetry": {"listen": f"127.0.0.1:{telemetry_port or free_port()}"}}))


def test_statsfeeder_serve_runs_until_sigterm(sink: CassandraSink, tmp_path: Path,
                                              cassandra_env: dict[str, str]) -> None:
    port, telemetry = free_port(), free_port()
    config = tmp_path / "serve.yaml"
    write_serve_config(config, cassandra_env, sink.config.keyspace, {
        "listen": f"127.0.0.1:{port}",
        "tokens": [{"name": "ops", "token_env": "SERVE_TOKEN", "provider": True}]}, telemetry)
    token = "serve-token-0123456789abcdef"
    env = {"CASSANDRA_PASSWORD": cassandra_env["CASSANDRA_PASSWORD"], "SERVE_TOKEN": token,
           "PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root")}
    process = subprocess.Popen([sys.executable, "-m", "statsfeeder", "serve", "-c", str(config)],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        answer = None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/api/v1/query",
                                   params={"query": f"count({C})", "time": str(END)},
                                   headers={"Authorization": f"Bearer {token}"})
                break
            except httpx.TransportError:
                time.sleep(0.5)
        assert answer is not None, process.stderr.read().decode() if process.stderr else ""
        # every VM but vm-23, whose samples stop an hour before END
        assert answer.json()["data"]["result"][0]["value"][1] == str(len(FLEET.vms) - 1)
        # Its own metrics on telemetry.listen, once the API answers.
        assert httpx.get(f"http://127.0.0.1:{telemetry}/readyz").status_code == 200
        served = 'statsfeeder_read_api_requests_total{code="200",endpoint="/api/v1/query"}'
        assert metric(telemetry, served) == 1
        assert metric(telemetry, "statsfeeder_read_api_engine_up") == 1
        assert metric(telemetry, "statsfeeder_up") is None  # no collector metrics here
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(30)
    assert code == 0
    errors = process.stderr.read().decode() if process.stderr else ""
    assert cassandra_env["CASSANDRA_PASSWORD"] not in errors or \
        cassandra_env["CASSANDRA_PASSWORD"] == "cassandra"


def test_serve_with_a_bad_config_says_which_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("read_api: {lookback_minutes: 0}\n")
    done = subprocess.run([sys.executable, "-m", "statsfeeder", "serve", "-c", str(config)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "statsfeeder: config: read_api.lookback_minutes: Input should be greater than or "
        "equal to 1 (got 0)"]


async def test_a_dead_engine_is_restarted_on_the_next_query(sink: CassandraSink) -> None:
    async with read_api(sink) as (api, client):
        assert api.engine is not None and api.engine.pid is not None
        first = api.engine.pid
        os.kill(first, signal.SIGKILL)
        await asyncio.sleep(0.5)
        answer = await client.get("/api/v1/query", params={"query": f"count({C})",
                                                           "time": str(END)})
        assert answer.status_code == 200, answer.text
        assert answer.json()["data"]["result"][0]["value"][1] == str(len(FLEET.vms) - 1)
        assert api.engine.pid not in (None, first)


async def test_a_server_started_before_the_first_cycle_sees_it_within_seconds(
        cassandra_env: dict[str, str]) -> None:
    empty = create_keyspace(cassandra_env)
    try:
        async with read_api(empty) as (_, client):
            query = {"query": f"count({C})", "time": str(END)}
            assert (await client.get("/api/v1/query", params=query)).json()["data"][
                "result"] == []
            await store_fleet(empty, FLEET)
            await asyncio.sleep(2.5)
            answer = (await client.get("/api/v1/query", params=query)).json()
            assert answer["data"]["result"][0]["value"][1] == str(len(FLEET.vms) - 1)
    finally:
        drop(empty)


async def test_reads_in_vm_batches_keep_every_vm_apart(cassandra_env: dict[str, str]) -> None:
    """More VMs than one read request carries (VM_BATCH): each keeps its own samples."""
    from statsfeeder.model import Counter, EntityId, Series, VirtualMachine
    from statsfeeder.readapi.store import VM_BATCH

    counter = Counter("cpu.usage.average", 2, "percent")
    stamps = np.arange(END - 600 + 20, END + 1, 20, dtype=np.int64)
    vms, series = [], []
    for number in range(VM_BATCH * 2 + 5):
        entity = EntityId(f"urn:vcloud:vm:{number:08d}-0000-0000-0000-000000000000",
                          f"vm{number}", "app", "vdc", "acme")
        vms.append(VirtualMachine("vc1", f"vm-{number}", f"vm{number}", "", "", True, entity))
        series.append(Series("vc1", f"vm-{number}", counter, "", stamps,
                             np.full(len(stamps), 100 * number, dtype=np.int64), entity))
    many = create_keyspace(cassandra_env)
    try:
        many.record_counters([counter])
        await many.save_entities(vms)
        await many.write(series)
        async with read_api(many) as (_, client):
            answer = (await client.get("/api/v1/query", params={
                "query": f"max_over_time({C}[10m])", "time": str(END)})).json()
        got = {item["metric"]["vm_name"]: float(item["value"][1])
               for item in answer["data"]["result"]}
        assert got == {f"vm{number}": float(number) for number in range(len(vms))}
    finally:
        drop(many)


async def test_windows_off_the_grid_and_cut_by_the_range_read_exactly(
        cassandra_env: dict[str, str]) -> None:
    """The engine decodes the stored windows itself (packed series): samples off the 20-s
    grid (their offsets stored), windows with missing slots and several instances of one
    metric come back exactly, and only those inside the range asked."""
    from statsfeeder.model import Counter, EntityId, Series, VirtualMachine
    from statsfeeder.readapi.names import prometheus_name

    rng = np.random.default_rng(23)
    cpu = Counter("cpu.usage.average", 2, "percent")
    disk = Counter("disk.read.average", 130, "kiloBytesPerSecond", per_instance=True)
    entity = EntityId("urn:vcloud:vm:00000077-0000-0000-0000-000000000000", "odd", "app",
                      "vdc", "acme")
    grid = np.arange(END - 3 * 3600 + 20, END + 1, 20, dtype=np.int64)
    jittered = np.unique(grid - rng.integers(0, 19, len(grid)))
    gappy = grid[rng.random(len(grid)) < 0.6]
    series = [Series("vc1", "vm-77", cpu, "", jittered,
                     rng.integers(0, 10_000, len(jittered)), entity)]
    series += [Series("vc1", "vm-77", disk, device, gappy, rng.integers(0, 5_000, len(gappy)),
                      entity) for device in ("scsi0:0", "scsi0:1")]
    odd = create_keyspace(cassandra_env)
    try:
        odd.record_counters([cpu, disk])
        await odd.save_entities([VirtualMachine("vc1", "vm-77", "odd", "", "", True, entity)])
        await odd.write(series)
        at = END - 130  # the range's edges cut windows in the middle
        async with read_api(odd) as (_, client):
            answer = (await client.get("/api/v1/query", params={
                "query": '{vm_name="odd"}[1h]', "time": str(at)})).json()
        got = {(item["metric"]["__name__"], item["metric"].get("device", "")):
               [(int(t), float(v)) for t, v in item["values"]]
               for item in answer["data"]["result"]}
        expected = {}
        for item in series:
            keep = (item.timestamps > at - 3600) & (item.timestamps <= at)
            name = prometheus_name(item.counter.name, item.counter.unit)
            expected[(name, item.instance)] = [
                (int(t), float(v) * item.counter.scale)
                for t, v in zip(item.timestamps[keep], item.values[keep], strict=True)]
        assert got == expected
    finally:
        drop(odd)


async def test_a_store_failure_after_the_frame_began_is_an_internal_error(
        sink: CassandraSink) -> None:
    """Once the first piece of a Select is sent, a failure can no longer be the HTTP status:
    the frame ends with the failure marker and the caller gets Prometheus's ``internal``
    error, not a partial answer. The store is wrapped to fail after its first piece (a
    Cassandra lost in the middle of one Select cannot be arranged on the shared peer)."""
    from statsfeeder.readapi.store import MAGIC

    async with read_api(sink) as (api, client):
        store = api.connection.store
        assert store is not None

        def failing(request: object, scope: object) -> Iterator[bytes]:
            yield MAGIC
            raise OSError("connection to Cassandra lost")

        store.select = failing  # type: ignore[method-assign,assignment]
        answer = await client.get("/api/v1/query", params={"query": C, "time": str(END)})
    assert answer.status_code == 500
    body = answer.json()
    assert body["errorType"] == "internal" and "connection to Cassandra lost" in body["error"]
    assert "data" not in body


def test_serve_without_go_or_a_built_engine_says_so_in_one_line(
        sink: CassandraSink, tmp_path: Path, cassandra_env: dict[str, str]) -> None:
    config = tmp_path / "serve.yaml"
    write_serve_config(config, cassandra_env, sink.config.keyspace,
                       {"listen": f"127.0.0.1:{free_port()}", "anonymous": True})
    # An empty cache (no engine built) and no Go on PATH.
    env = {"CASSANDRA_PASSWORD": cassandra_env["CASSANDRA_PASSWORD"], "PATH": "",
           "XDG_CACHE_HOME": str(tmp_path / "cache"), "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "statsfeeder", "serve", "-c", str(config)],
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [(
        "statsfeeder: read_api: the PromQL engine is built with Go, and 'go' is not on PATH; "
        "install Go or set read_api.engine_binary")]


async def test_reads_reach_as_far_back_as_the_table_keeps(cassandra_env: dict[str, str]
                                                          ) -> None:
    """The samples table's TTL is the retention, whatever this process's ttl_days says."""
    from statsfeeder.config import ReadApiConfig
    from statsfeeder.readapi.server import ReadApi

    old_end = END - 5 * 86400
    old = Fleet.generate(old_end - 1800, old_end)
    kept = create_keyspace(cassandra_env, ttl_days=20)
    api = ReadApi(ReadApiConfig(listen=f"127.0.0.1:{free_port()}", anonymous=True),
                  kept.config.model_copy(update={"ttl_days": 1}))
    try:
        await store_fleet(kept, old)
        await api.start()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api.port}") as client:
            answer = (await client.get("/api/v1/query", params={
                "query": f"count(last_over_time({C}[1h]))", "time": str(old_end)})).json()
            names = (await client.get("/api/v1/label/vm_name/values")).json()
        with_samples = {item.moref for item in old.series if len(item)}
        assert len(with_samples) >= 5
        assert answer["data"]["result"][0]["value"][1] == str(len(with_samples))
        assert len(names["data"]) == len(with_samples)
    finally:
        await api.stop()
        drop(kept)
