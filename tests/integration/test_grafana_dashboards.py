"""The shipped Grafana dashboards against the real read API, as Grafana would ask (Grafana
itself is not run here: its licence): every template variable's query resolved in order
(label_values through /api/v1/label/<name>/values with match[], as Grafana does against
Prometheus >= 2.24), every panel target interpolated ($var, ${var}, multi-value and All,
$__interval, $__rate_interval, $__range ...) and sent the way the provisioned data source
sends it (POST, bearer token, TLS). Each must return data."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from peers.common import ensure_certs
from tests.helpers import cassandra_config, drop_keyspace
from tests.tenancy_fleet import ApiThread, fleet, write_fleet

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
PROVIDER = "grafana-token-0123456789abcdef"
TENANT = "beta-token-0123456789abcdef"
MAX_DATA_POINTS = 1000
"""Grafana asks for about one point per pixel of panel width."""
LABEL_VALUES = re.compile(r"^label_values\((?:(?P<match>.+),\s*)?(?P<label>[a-zA-Z_]\w*)\)$")


def scrape_interval() -> float:
    """The data source's timeInterval: the floor of $__interval, the base of $__rate_interval."""
    path = ROOT / "deploy/grafana/provisioning/datasources/statsfeeder.yaml"
    text = yaml.safe_load(path.read_text())["datasources"][0]["jsonData"]["timeInterval"]
    return float(text.removesuffix("s"))


def round_interval(seconds: float) -> float:
    """Grafana's rangeutil.roundInterval, for the ranges these tests use."""
    for limit, value in ((15, 10), (35, 20), (75, 60), (210, 120), (450, 300), (750, 600),
                         (1050, 900), (1500, 1200), (2700, 1800), (5400, 3600)):
        if seconds < limit:
            return value
    return 7200


class Grafana:
    """What Grafana's Prometheus data source does for one dashboard and one time range."""

    def __init__(self, url: str, token: str, end: int, range_seconds: int) -> None:
        self.url, self.end, self.start = url, end, end - range_seconds
        self.client = httpx.Client(verify=ssl.create_default_context(
            cafile=str(ensure_certs()["ca"])), headers={"Authorization": f"Bearer {token}"},
            timeout=120)
        self.interval = max(scrape_interval(), round_interval(range_seconds / MAX_DATA_POINTS))
        rate = max(self.interval + scrape_interval(), 4 * scrape_interval())
        self.builtins = {"__rate_interval": f"{rate:.0f}s", "__interval": f"{self.interval:.0f}s",
                         "__interval_ms": f"{self.interval * 1000:.0f}",
                         "__range": f"{range_seconds}s", "__range_s": str(range_seconds),
                         "__range_ms": str(range_seconds * 1000)}
        self.values: dict[str, tuple[list[str], str | None]] = {}
        """Variable -> (selected values, the All value when All is selected)."""

    def interpolate(self, text: str) -> str:
        """Grafana's Prometheus interpolation: a single value as it is, several (or All
        without an allValue) as an escaped alternation, All with its allValue as given."""
        def value(name: str) -> str:
            if name in self.builtins:
                return self.builtins[name]
            chosen, all_value = self.values[name]
            if all_value is not None:
                return all_value
            if len(chosen) == 1:
                return chosen[0]
            return "(" + "|".join(re.escape(v) for v in chosen) + ")"

        return re.sub(r"\$\{(\w+)\}|\$(\w+)|\[\[(\w+)\]\]",
                      lambda m: value(m.group(1) or m.group(2) or m.group(3)), text)

    def resolve(self, variable: dict[str, Any]) -> list[str]:
        kind, name = variable["type"], variable["name"]
        if kind == "custom":
            options = [v.strip() for v in variable["query"].split(",")]
            self.values[name] = ([variable["current"]["value"]], None)
            return options
        query = variable["query"]
        query = query["query"] if isinstance(query, dict) else query
        found = LABEL_VALUES.match(self.interpolate(query))
        assert found, f"variable {name}: only label_values() queries are used: {query}"
        form = [("start", str(self.start)), ("end", str(self.end))]
        if found["match"]:
            form.append(("match[]", found["match"]))
        answer = self.client.get(f"{self.url}/api/v1/label/{found['label']}/values",
                                 params=form)
        assert answer.status_code == 200, answer.text
        options = sorted(answer.json()["data"])
        if variable.get("includeAll") and variable.get("multi"):
            self.values[name] = (options, variable.get("allValue") or None)
        else:
            self.values[name] = (options[:1], None)
        return options

    def run(self, target: dict[str, Any]) -> list[dict[str, Any]]:
        expr = self.interpolate(target["expr"])
        if target.get("instant"):
            form = [("query", expr), ("time", str(self.end))]
            answer = self.client.post(self.url + "/api/v1/query", data=dict(form))
        else:
            step = self.interval
            start = self.start - self.start % step  # Grafana aligns the range to the step
            answer = self.client.post(self.url + "/api/v1/query_range", data={
                "query": expr, "start": str(start), "end": str(self.end), "step": str(step)})
        assert answer.status_code == 200, f"{expr}: {answer.text}"
        body = answer.json()
        assert body["status"] == "success", body
        return list(body["data"]["result"])


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


@pytest.fixture(scope="module")
def api(cassandra_env: dict[str, str]) -> Iterator[tuple[str, int, list[Any]]]:
    certs = ensure_certs()
    config = cassandra_config(cassandra_env, keyspace=f"gf_{uuid.uuid4().hex[:10]}")
    vms = fleet()
    end = asyncio.run(write_fleet(config, vms))
    tokens = [{"name": "grafana", "provider": True,
               "token_sha256": hashlib.sha256(PROVIDER.encode()).hexdigest()},
              {"name": "beta", "orgs": ["beta"],
               "token_sha256": hashlib.sha256(TENANT.encode()).hexdigest()}]
    settings = {"tokens": tokens,
                "tls": {"cert_file": str(certs["cert"]), "key_file": str(certs["key"])}}
    try:
        with ApiThread(config, settings) as server:
            yield server.url, end, vms
    finally:
        from statsfeeder.sinks.cassandra.session import connect

        cluster, session = connect(config)
        drop_keyspace(session, config.keyspace)
        cluster.shutdown()


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
@pytest.mark.parametrize("hours", [1, 6])
def test_every_variable_and_panel_returns_data(api: tuple[str, int, list[Any]], path: Path,
                                               hours: int) -> None:
    url, end, _ = api
    dashboard = json.loads(path.read_text())
    grafana = Grafana(url, PROVIDER, end, hours * 3600)
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "datasource":
            continue
        assert grafana.resolve(variable), f"{path.name}: variable {variable['name']} is empty"
    ran = 0
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            result = grafana.run(target)
            assert result, f"{path.name}: panel {panel['title']!r} {target['refId']}: no data"
            if not target.get("instant"):
                assert all(series["values"] for series in result)
            ran += 1
    assert ran >= 10


def test_a_tenant_dashboard_lists_only_its_org(api: tuple[str, int, list[Any]]) -> None:
    url, end, vms = api
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/provider-overview.json")
                           .read_text())
    grafana = Grafana(url, TENANT, end, 3600)
    options = {v["name"]: grafana.resolve(v) for v in dashboard["templating"]["list"]
               if v["type"] != "datasource"}
    assert options["org"] == ["beta"] and options["vdc"] == ["beta-vdc"]
    (table,) = [p for p in panels(dashboard) if p["title"] == "Per org and VDC"]
    rows = grafana.run(table["targets"][0])
    assert {row["metric"]["org"] for row in rows} == {"beta"}
    assert sum(float(row["value"][1]) for row in rows) == sum(1 for vm in vms
                                                              if vm.org == "beta")


def test_datasource_uid_matches_the_dashboards() -> None:
    source = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/"
                             "statsfeeder.yaml").read_text())["datasources"][0]
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        (choice,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
        assert choice["query"] == source["type"]
        assert choice["current"]["value"] == source["uid"]
        for panel in panels(dashboard):
            assert panel["datasource"]["uid"] == "${datasource}"
