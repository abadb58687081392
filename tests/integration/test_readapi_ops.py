"""The read API's operational surface against the real Cassandra and engine: ``limit`` on
the metadata endpoints (Prometheus's truncation warning, a tenant's own VMs only),
``lookback_delta`` and the other query parameters, its own metrics taken from real traffic,
an engine killed in the middle of a query, and a driver that gave up reconnecting."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from statsfeeder.config import CassandraConfig
from statsfeeder.sinks.cassandra.session import connect
from tests.helpers import (
    cassandra_config,
    create_login_role,
    login_refused,
    nodetool,
    wait_for,
)
from tests.tenancy_fleet import ApiThread, FleetVm, fleet, write_fleet

CPU = "vsphere_vm_cpu_usage_average_percent"
TOKENS = {"acme": "acme-ops-token-0123456789", "ops": "ops-ops-token-0123456789",
          "old": "old-ops-token-0123456789"}
TRUNCATED = ["results truncated due to limit"]


class Api:
    def __init__(self, thread: ApiThread, vms: list[FleetVm], end: int) -> None:
        self.thread, self.vms, self.end = thread, vms, end
        self.client = httpx.Client(base_url=thread.url, timeout=120)

    def call(self, who: str | None, path: str, **params: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {TOKENS.get(who or '', who)}"} if who else {}
        return self.client.get(path, params=params, headers=headers)

    def body(self, who: str, path: str, **params: Any) -> dict[str, Any]:
        answer = self.call(who, path, **params)
        assert answer.status_code == 200, answer.text
        found: dict[str, Any] = answer.json()
        assert found["status"] == "success"
        return found


@pytest.fixture(scope="module")
def api(cassandra_env: dict[str, str]) -> Iterator[Api]:
    config = cassandra_config(cassandra_env, keyspace=f"ops_{uuid.uuid4().hex[:10]}")
    vms = fleet()
    end = asyncio.run(write_fleet(config, vms))
    tokens = [{"name": "acme", "token_sha256": _sha(TOKENS["acme"]), "orgs": ["acme"]},
              {"name": "ops", "token_sha256": _sha(TOKENS["ops"]), "provider": True},
              {"name": "old", "token_sha256": _sha(TOKENS["old"]), "provider": True,
               "expires": "2020-01-01T00:00:00Z"}]
    try:
        with ApiThread(config, {"tokens": tokens}) as thread:
            yield Api(thread, vms, end)
    finally:
        _drop(config)


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _drop(config: CassandraConfig) -> None:
    cluster, session = connect(config)
    try:
        session.execute(f"DROP KEYSPACE IF EXISTS {config.keyspace}")
    finally:
        cluster.shutdown()


def window(api: Api) -> dict[str, Any]:
    return {"start": api.end - 3600, "end": api.end}


def test_limit_truncates_series_labels_and_values_with_prometheus_warning(api: Api) -> None:
    every = api.body("ops", "/api/v1/series", **{"match[]": CPU}, **window(api))
    assert len(every["data"]) == len(api.vms) and "warnings" not in every
    cut = api.body("ops", "/api/v1/series", **{"match[]": CPU, "limit": 2}, **window(api))
    assert len(cut["data"]) == 2 and cut["warnings"] == TRUNCATED
    assert all(item in every["data"] for item in cut["data"])
    exact = api.body("ops", "/api/v1/series",
                     **{"match[]": CPU, "limit": len(api.vms)}, **window(api))
    assert exact["data"] == every["data"] and "warnings" not in exact

    names = api.body("ops", "/api/v1/labels", **window(api))["data"]
    labels = api.body("ops", "/api/v1/labels", limit=3, **window(api))
    assert labels["data"] == names[:3] and labels["warnings"] == TRUNCATED

    values = api.body("ops", "/api/v1/label/vm/values", **window(api))["data"]
    assert len(values) == len(api.vms)
    cut_values = api.body("ops", "/api/v1/label/vm/values", limit=4, **window(api))
    assert cut_values["data"] == values[:4] and cut_values["warnings"] == TRUNCATED


def test_a_tenant_limit_counts_and_shows_only_its_own_vms(api: Api) -> None:
    acme = sorted(vm.urn for vm in api.vms if vm.org == "acme")
    own = api.body("acme", "/api/v1/label/vm/values", **window(api))
    assert own["data"] == acme and "warnings" not in own
    exact = api.body("acme", "/api/v1/label/vm/values", limit=len(acme), **window(api))
    assert exact["data"] == acme and "warnings" not in exact
    cut = api.body("acme", "/api/v1/label/vm/values", limit=2, **window(api))
    assert cut["data"] == acme[:2] and cut["warnings"] == TRUNCATED
    series = api.body("acme", "/api/v1/series", **{"match[]": '{__name__=~".+"}', "limit": 1},
                      **window(api))
    assert len(series["data"]) == 1 and series["data"][0]["org"] == "acme"
    assert series["warnings"] == TRUNCATED
    orgs = api.body("acme", "/api/v1/label/org/values", limit=5, **window(api))
    assert orgs["data"] == ["acme"] and "warnings" not in orgs


@pytest.mark.parametrize(("params", "message"), [
    ({"limit": "-1"}, 'invalid parameter "limit": limit must be non-negative'),
    ({"limit": "ten"},
     'invalid parameter "limit": strconv.Atoi: parsing "ten": invalid syntax'),
])
@pytest.mark.parametrize("path", ["/api/v1/series", "/api/v1/labels",
                                  "/api/v1/label/vm/values"])
def test_a_bad_limit_is_bad_data(api: Api, path: str, params: dict[str, str],
                                 message: str) -> None:
    answer = api.call("ops", path, **{"match[]": CPU}, **params)
    assert answer.status_code == 400
    assert answer.json() == {"status": "error", "errorType": "bad_data", "error": message}


def test_lookback_delta_reaches_past_the_configured_lookback(api: Api) -> None:
    late = api.end + 11 * 60  # past the default 10-minute lookback
    assert api.body("ops", "/api/v1/query", query=CPU, time=late)["data"]["result"] == []
    wide = api.body("ops", "/api/v1/query", query=CPU, time=late, lookback_delta="15m")
    assert len(wide["data"]["result"]) == len(api.vms)
    own = api.body("acme", "/api/v1/query", query=CPU, time=late, lookback_delta="900")
    assert {row["metric"]["org"] for row in own["data"]["result"]} == {"acme"}
    short = api.body("ops", "/api/v1/query", query=CPU, time=api.end + 90,
                     lookback_delta="1m")
    assert short["data"]["result"] == []
    ranged = api.body("ops", "/api/v1/query_range", query=CPU, start=late, end=late + 60,
                      step=60, lookback_delta="15m")
    assert len(ranged["data"]["result"]) == len(api.vms)


@pytest.mark.parametrize(("path", "params", "message"), [
    ("/api/v1/query", {"query": "1", "lookback_delta": "soon"},
     'error parsing lookback delta duration: cannot parse "soon" to a valid duration'),
    ("/api/v1/query_range", {"query": "1", "start": "0", "end": "60", "step": "60",
                             "lookback_delta": "1x"},
     'error parsing lookback delta duration: cannot parse "1x" to a valid duration'),
    ("/api/v1/query", {"query": "1", "timeout": "later"},
     'invalid parameter "timeout": cannot parse "later" to a valid duration'),
])
def test_bad_query_parameters_are_prometheus_bad_data(api: Api, path: str,
                                                      params: dict[str, str],
                                                      message: str) -> None:
    answer = api.call("ops", path, **params)
    assert answer.status_code == 400
    assert answer.json() == {"status": "error", "errorType": "bad_data", "error": message}


def samples(api: Api) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(api.thread.api.metrics.registry).decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_follow_real_traffic(api: Api) -> None:
    before = samples(api)
    query = "/api/v1/query"
    for _ in range(3):
        api.body("ops", query, query=f"sum by (org) ({CPU})", time=api.end)
    api.body("acme", "/api/v1/label/{name}/values".replace("{name}", "vdc"), **window(api))
    assert api.call(None, query, query="1").status_code == 401
    assert api.call("not-a-token-at-all", query, query="1").status_code == 401
    assert api.call("old", query, query="1").status_code == 401
    assert api.call("ops", query, query="sum(").status_code == 400
    after = samples(api)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    requests = "statsfeeder_read_api_requests_total"
    assert grew(requests, endpoint=query, code="200") == 3
    assert grew(requests, endpoint=query, code="401") == 3
    assert grew(requests, endpoint=query, code="400") == 1
    assert grew(requests, endpoint="/api/v1/label/{name}/values", code="200") == 1
    assert grew("statsfeeder_read_api_request_duration_seconds_count", endpoint=query) == 7
    for reason in ("missing", "invalid", "expired"):
        assert grew("statsfeeder_read_api_auth_failures_total", reason=reason) == 1, reason
    # Three queries of one selector: three Selects of every VM's CPU series. Label values
    # are answered from the index and the entities, with no Select (metadata.py).
    assert grew("statsfeeder_read_api_selects_total", outcome="ok") == 3
    assert grew("statsfeeder_read_api_series_returned_total") == 3 * len(api.vms)
    assert grew("statsfeeder_read_api_samples_returned_total") > 0
    assert value(after, "statsfeeder_read_api_queries_in_flight") == 0
    assert value(after, "statsfeeder_read_api_engine_up") == 1
    exposition = generate_latest(api.thread.api.metrics.registry).decode()
    assert not any(token in exposition for token in TOKENS.values())
    assert "not-a-token-at-all" not in exposition


def test_an_engine_killed_mid_query_is_restarted_and_the_next_query_works(api: Api) -> None:
    server = api.thread.api
    assert server.engine is not None and server.engine.pid is not None
    first = server.engine.pid
    restarts = value(samples(api), "statsfeeder_read_api_engine_restarts_total")
    # Far too heavy to finish before the kill (a 100 ms subquery of 2 h at each of 10,000
    # steps over the stored data: billions of evaluations); the kill bounds what it costs.
    slow = {"query": f"max_over_time(({CPU})[2h:100ms])", "start": api.end - 10_000,
            "end": api.end, "step": 1}
    loop = asyncio.new_event_loop()
    try:
        async def killed_mid_query() -> httpx.Response:
            async with httpx.AsyncClient(base_url=api.thread.url, timeout=120) as client:
                pending = asyncio.ensure_future(client.get(
                    "/api/v1/query_range", params=slow,
                    headers={"Authorization": f"Bearer {TOKENS['ops']}"}))
                while value(samples(api), "statsfeeder_read_api_queries_in_flight") < 1:
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.3)
                assert not pending.done(), "the query ended before the engine was killed"
                os.kill(first, signal.SIGKILL)
                return await pending
        answer = loop.run_until_complete(killed_mid_query())
    finally:
        loop.close()
    assert answer.status_code == 503
    assert answer.json() == {"status": "error", "errorType": "unavailable", "error":
                             "the query engine stopped during the query; it was restarted, "
                             "try again"}
    after = api.body("ops", "/api/v1/query", query=f"count({CPU})", time=api.end)
    assert after["data"]["result"][0]["value"][1] == str(len(api.vms))
    assert server.engine.pid not in (None, first)
    found = samples(api)
    assert value(found, "statsfeeder_read_api_engine_restarts_total") == restarts + 1
    assert value(found, "statsfeeder_read_api_engine_up") == 1


@pytest.mark.slow
def test_queries_answer_again_after_the_drivers_reconnection_gave_up_on_a_refused_login(
        cassandra_env: dict[str, str]) -> None:
    """The driver stops reconnecting a host for good, silently, at the first attempt refused
    with AuthenticationFailed (here: the read API's login disabled while its connections are
    dropped and the node comes back). Queries fail with Prometheus's ``internal`` error while
    the login is refused; once it works again, the read API connects afresh and answers with
    the stored data, without a restart of the process."""
    keyspace = f"login_{uuid.uuid4().hex[:10]}"
    admin_config = cassandra_config(cassandra_env, keyspace=keyspace)
    vms = fleet()
    end = asyncio.run(write_fleet(admin_config, vms))
    admin_cluster, admin = connect(admin_config)
    role, _, config = create_login_role(admin, cassandra_env, keyspace, ("SELECT",))
    expected = {vm.urn: vm.cpu_percent for vm in vms}

    def cpu(client: httpx.Client) -> httpx.Response:
        return client.get("/api/v1/query", params={"query": CPU, "time": end})

    def values(answer: httpx.Response) -> dict[str, float]:
        assert answer.status_code == 200, answer.text
        return {row["metric"]["vm"]: float(row["value"][1])
                for row in answer.json()["data"]["result"]}

    def internal(answer: httpx.Response) -> bool:
        body = answer.json()
        return answer.status_code == 500 and body["status"] == "error" and \
            body["errorType"] == "internal"

    try:
        with ApiThread(config, {"anonymous": True}) as thread, \
                httpx.Client(base_url=thread.url, timeout=60) as client:
            assert values(cpu(client)) == expected
            admin.execute(f"ALTER ROLE {role} WITH LOGIN = false")
            # Nodes cache roles and credentials (60 s on the test peers): wait until it counts.
            wait_for(lambda: login_refused(config), 120, "the login to be refused")
            nodetool(cassandra_env, "disablebinary")  # drops every client connection
            try:
                assert internal(cpu(client))  # the query that finds the node gone
                time.sleep(2)  # the driver marks the host down, reconnects with backoff
            finally:
                nodetool(cassandra_env, "enablebinary")
            # Its next attempt (at most the policy's 10 s later) is refused: it stops for good.
            time.sleep(15)
            assert internal(cpu(client))  # and a fresh connection is refused too
            admin_cluster.shutdown()  # its connections went with the binary protocol too
            admin_cluster, admin = connect(admin_config)
            admin.execute(f"ALTER ROLE {role} WITH LOGIN = true")
            wait_for(lambda: not login_refused(config), 120, "the login to be accepted again")
            back = time.monotonic()
            answer = cpu(client)
            while answer.status_code != 200 and time.monotonic() - back < 60:
                assert internal(answer), answer.text
                time.sleep(1)
                answer = cpu(client)
            print(f"login accepted again -> queries answered: {time.monotonic() - back:.1f} s")
            assert values(answer) == expected
            assert values(cpu(client)) == expected
    finally:
        nodetool(cassandra_env, "enablebinary")
        admin_cluster.shutdown()
        admin_cluster, admin = connect(admin_config)
        try:
            admin.execute(f"DROP ROLE IF EXISTS {role}")
            admin.execute(f"DROP KEYSPACE IF EXISTS {keyspace}")
        finally:
            admin_cluster.shutdown()
