"""Tenant isolation of the read API, end to end: the real server (TLS, API tokens, the
PromQL engine) over VMs of three orgs and one VM vCD does not manage, written through the
real CassandraSink. A tenant token's every answer (query, query_range, series, labels, label
values, metadata) holds only its own orgs' VMs, whatever it asks; the provider token sees
every VM, which shows each probe would find the others if they leaked."""

from __future__ import annotations

import json
import ssl
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from peers.common import ensure_certs
from tests.helpers import cassandra_config, drop_keyspace
from tests.tenancy_fleet import ApiThread, FleetVm, fleet, write_fleet
from tests.vcd_double import VcdDouble

CPU = "vsphere_vm_cpu_usage_average_percent"
TOKENS = {"acme": "acme-token-0123456789abcdef", "beta_gamma": "bg-token-0123456789abcdef",
          "ops": "ops-token-0123456789abcdef", "old": "old-token-0123456789abcdef"}
ENDPOINTS = ("/api/v1/query", "/api/v1/query_range", "/api/v1/series", "/api/v1/labels",
             "/api/v1/label/org/values", "/api/v1/metadata", "/api/v1/status/buildinfo")


class Reader:
    def __init__(self, api: ApiThread, vms: list[FleetVm], end: int, vcd: VcdDouble) -> None:
        self.url, self.vms, self.end, self.vcd = api.url, vms, end, vcd
        self.client = httpx.Client(verify=ssl.create_default_context(
            cafile=str(ensure_certs()["ca"])), timeout=120)

    def session(self, token: str, path: str, params: dict[str, Any]) -> Any:
        """``data`` for a vCD session token."""
        answer = self.client.get(self.url + path, params=params,
                                 headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 200, answer.text
        return answer.json()["data"]

    def call(self, token: str | None, path: str, params: dict[str, Any] | list[Any],
             method: str = "GET") -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if method == "POST":
            return self.client.post(self.url + path, data=params, headers=headers)
        return self.client.get(self.url + path, params=params, headers=headers)

    def data(self, who: str, path: str, params: dict[str, Any] | list[Any],
             method: str = "GET") -> Any:
        answer = self.call(TOKENS[who], path, params, method)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["status"] == "success", body
        return body["data"]

    def instant(self, who: str, query: str, method: str = "GET") -> list[dict[str, Any]]:
        data = self.data(who, "/api/v1/query", {"query": query, "time": self.end}, method)
        return list(data["result"]) if data["resultType"] in ("vector", "matrix") else \
            [{"metric": {}, "value": data["result"]}]

    def orgs_of(self, who: str) -> set[str]:
        return {"acme": {"acme"}, "beta_gamma": {"beta", "gamma"}}[who]

    def foreign(self, who: str) -> set[str]:
        """Every identifying string of the VMs ``who`` must not see."""
        mine = self.orgs_of(who)
        out: set[str] = set()
        for vm in self.vms:
            if vm.org not in mine:
                out |= {vm.urn, vm.name, vm.moref} | {x for x in (vm.vapp, vm.vdc, vm.org) if x}
        return out


def leaks(answer: Any, forbidden: set[str]) -> set[str]:
    """Forbidden strings anywhere in an answer (keys, values, label sets)."""
    text = json.dumps(answer)
    return {item for item in forbidden if f'"{item}"' in text}


@pytest.fixture(scope="module")
def reader(cassandra_env: dict[str, str]) -> Iterator[Reader]:
    import asyncio

    certs = ensure_certs()
    config = cassandra_config(cassandra_env, keyspace=f"tn_{uuid.uuid4().hex[:10]}")
    vms = fleet()
    end = asyncio.run(write_fleet(config, vms))
    env_tokens = [
        {"name": "acme", "token_sha256": _sha(TOKENS["acme"]), "orgs": ["acme"]},
        {"name": "beta_gamma", "token_sha256": _sha(TOKENS["beta_gamma"]),
         "orgs": ["beta", "gamma"]},
        {"name": "ops", "token_sha256": _sha(TOKENS["ops"]), "provider": True},
        {"name": "old", "token_sha256": _sha(TOKENS["old"]), "provider": True,
         "expires": "2020-01-01T00:00:00Z"}]
    vcd = VcdDouble().start()
    settings = {"tokens": env_tokens,
                "tls": {"cert_file": str(certs["cert"]), "key_file": str(certs["key"])},
                "vcd_sessions": {"url": vcd.url, "tls": {"ca_file": vcd.ca_file}}}
    try:
        with ApiThread(config, settings) as api:
            yield Reader(api, vms, end, vcd)
    finally:
        vcd.stop()
        from statsfeeder.sinks.cassandra.session import connect

        cluster, session = connect(config)
        drop_keyspace(session, config.keyspace)
        cluster.shutdown()


def _sha(token: str) -> str:
    import hashlib

    return hashlib.sha256(token.encode()).hexdigest()


def vms_in(result: list[dict[str, Any]]) -> set[str]:
    return {item["metric"]["vm"] for item in result if "vm" in item["metric"]}


PROBES = [
    CPU,
    '{__name__=~".+"}',
    '{__name__=~"vsphere_vm_.*", org=~".*"}',
    '{vm=~".+"}',
    '{__name__=~".+", org=""}',
    f'{CPU}{{org!="acme"}}',
    f'{CPU}{{org=~"beta|gamma|acme|"}}',
    f'{CPU}{{org!~"nothing"}}',
    f'{CPU}{{vm_name=~"app-.*|job-.*|orphan|web-.*|db-.*"}}',
    'count by (org, vdc, vapp) ({__name__=~".+"})',
    f"topk(100, {CPU})",
    f"sort_desc({CPU})",
    f'count_values("org_seen", {CPU})',
    f'label_replace({CPU}, "copy", "$1", "vm", "(.*)")',
    f'{CPU} or on() vector(0)',
    "group by (org, vm) ({__name__=~\".+\"})",
]


@pytest.mark.parametrize("who", ["acme", "beta_gamma"])
@pytest.mark.parametrize("query", PROBES)
def test_instant_probes_see_only_own_orgs(reader: Reader, who: str, query: str) -> None:
    answer = reader.instant(who, query)
    assert not leaks(answer, reader.foreign(who))
    orgs = {item["metric"].get("org") for item in answer if "org" in item["metric"]}
    assert orgs <= reader.orgs_of(who)
    # The provider gets another answer to the same probe: it could have leaked.
    assert reader.instant("ops", query) != answer


@pytest.mark.parametrize("who", ["acme", "beta_gamma"])
def test_every_selector_returns_exactly_own_vms(reader: Reader, who: str) -> None:
    mine = {vm.urn for vm in reader.vms if vm.org in reader.orgs_of(who)}
    for query in (CPU, '{__name__=~".+"}', '{vm=~".+"}', f"{CPU}{{org=~\".*\"}}"):
        assert vms_in(reader.instant(who, query)) == mine, query
    assert vms_in(reader.instant("ops", CPU)) == {vm.urn for vm in reader.vms}


def test_guessed_urns_and_other_orgs_are_empty(reader: Reader) -> None:
    beta = next(vm for vm in reader.vms if vm.org == "beta")
    orphan = next(vm for vm in reader.vms if not vm.org)
    for query in (f'{{vm="{beta.urn}"}}', f'{CPU}{{vm="{beta.urn}"}}', '{org="beta"}',
                  f'{{vm="{orphan.urn}"}}', f'{{moref="{beta.moref}"}}',
                  f'{CPU}{{vm_name="{beta.name}"}}', '{org=~"b.*"}',
                  f'count({{vm="{beta.urn}"}})', f'sum({CPU}{{org="beta"}})'):
        assert reader.instant("acme", query) == [], query
        assert reader.instant("ops", query) != [], query


def test_aggregations_count_only_own_vms(reader: Reader) -> None:
    def scalar(who: str, query: str) -> float:
        (item,) = reader.instant(who, query)
        return float(item["value"][1])

    acme = [vm for vm in reader.vms if vm.org == "acme"]
    aggregate = f'{CPU}{{device=""}}'
    assert scalar("acme", f"count({aggregate})") == len(acme)
    assert scalar("ops", f"count({aggregate})") == len(reader.vms)
    assert scalar("acme", f"sum({aggregate})") == pytest.approx(
        sum(vm.cpu_percent for vm in acme))
    assert scalar("acme", f"sum({aggregate}) / count({aggregate})") == pytest.approx(
        sum(vm.cpu_percent for vm in acme) / len(acme))
    assert scalar("acme", 'count(count by (org) ({__name__=~".+"}))') == 1
    assert scalar("acme", f"max({aggregate})") == max(vm.cpu_percent for vm in acme)
    assert scalar("acme", "count(group by (vm) ({__name__=~\".+\"}))") == len(acme)
    by_org = reader.instant("beta_gamma", f"sum by (org) ({aggregate})")
    assert {item["metric"]["org"]: float(item["value"][1]) for item in by_org} == {
        org: pytest.approx(sum(vm.cpu_percent for vm in reader.vms if vm.org == org))
        for org in ("beta", "gamma")}


def test_absent_cannot_probe_other_orgs(reader: Reader) -> None:
    beta = next(vm for vm in reader.vms if vm.org == "beta")
    for query in (f'absent({CPU}{{vm="{beta.urn}"}})', f'absent({CPU}{{org="beta"}})',
                  f'absent_over_time({CPU}{{org="beta"}}[1h])'):
        (item,) = reader.instant("acme", query)  # "absent", as if it never existed
        assert item["value"][1] == "1"
        assert reader.instant("ops", query) == []
    assert reader.instant("acme", f'absent({CPU}{{org="acme"}})') == []


def test_range_queries_see_only_own_orgs(reader: Reader) -> None:
    params = {"query": 'sum by (org, vm) ({__name__=~".+"})', "start": reader.end - 3600,
              "end": reader.end, "step": 60}
    for method in ("GET", "POST"):
        data = reader.data("acme", "/api/v1/query_range", params, method)
        assert data["result"] and not leaks(data, reader.foreign("acme"))
        assert {item["metric"]["org"] for item in data["result"]} == {"acme"}


def test_series_labels_and_values_see_only_own_orgs(reader: Reader) -> None:
    window = {"start": reader.end - 7200, "end": reader.end}
    forbidden = reader.foreign("acme")
    series = reader.data("acme", "/api/v1/series", [("match[]", '{__name__=~".+"}'),
                                                     *window.items()])
    assert series and {item["org"] for item in series} == {"acme"}
    assert not leaks(series, forbidden)
    assert reader.data("acme", "/api/v1/series", [("match[]", '{org="beta"}'),
                                                   ("match[]", '{__name__=~".+", org=""}'),
                                                   *window.items()]) == []
    for name in ("org", "vdc", "vapp", "vm", "vm_name", "moref", "device", "__name__"):
        for params in (window, [("match[]", '{__name__=~".+"}'), *window.items()], {}):
            values = reader.data("acme", f"/api/v1/label/{name}/values", params)
            assert not leaks(values, forbidden), (name, params)
    assert reader.data("acme", "/api/v1/label/org/values", window) == ["acme"]
    assert reader.data("beta_gamma", "/api/v1/label/org/values", {}) == ["beta", "gamma"]
    assert sorted(reader.data("ops", "/api/v1/label/org/values", window)) == [
        "acme", "beta", "gamma"]
    assert reader.data("acme", "/api/v1/label/vm/values",
                       [("match[]", '{org="beta"}'), *window.items()]) == []
    labels = reader.data("acme", "/api/v1/labels", [("match[]", '{org="beta"}')])
    assert labels == []
    assert "org" in reader.data("acme", "/api/v1/labels", window)
    metadata = reader.data("acme", "/api/v1/metadata", {})
    assert CPU in metadata and not leaks(metadata, forbidden)


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_no_wrong_or_expired_token_is_401_without_data(reader: Reader, path: str,
                                                       method: str) -> None:
    params = {"query": CPU, "match[]": "{__name__=~\".+\"}", "start": reader.end - 600,
              "end": reader.end, "step": 60}
    for token in (None, "not-a-token-at-all-0123", TOKENS["old"], TOKENS["acme"] + "x"):
        answer = reader.call(token, path, params, method)
        assert answer.status_code == 401, (token and token[:3], answer.text)
        assert answer.text.count("\n") <= 1 and "data" not in answer.json()
        assert not leaks(answer.text, reader.foreign("acme") | {"acme"})
    assert reader.call(TOKENS["ops"], path, params, method).status_code == 200


def test_a_vcd_session_reads_as_its_org(reader: Reader) -> None:
    token = reader.vcd.tenant_session("carol", "gamma")
    assert reader.session(token, "/api/v1/label/org/values", {}) == ["gamma"]
    result = reader.session(token, "/api/v1/query", {"query": '{__name__=~".+"}',
                                                     "time": reader.end})["result"]
    assert {item["metric"]["org"] for item in result} == {"gamma"}
    system = reader.vcd.tenant_session("administrator", "System")
    assert reader.call(system, "/api/v1/query", {"query": CPU}).status_code == 401
