"""The Prometheus peer scrapes an exporter the test points it at, and promtool checks rules."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from peers import prometheus
from peers.common import PeerError

POLL_SECONDS = 30.0


def _poll(fetch: Any, done: Any, what: str) -> Any:
    deadline = time.monotonic() + POLL_SECONDS
    last = None
    while time.monotonic() < deadline:
        last = fetch()
        if done(last):
            return last
        time.sleep(0.25)
    raise AssertionError(f"{what} not seen within {POLL_SECONDS:.0f} s; last answer: {last}")


def test_scrapes_exporter_and_answers_query(prometheus_env: dict[str, str]) -> None:
    url = prometheus_env["PROMETHEUS_URL"]
    registry = CollectorRegistry()
    gauge = Gauge("statsfeeder_smoke_value", "Smoke-test gauge", ["kind"], registry=registry)
    gauge.labels(kind="smoke").set(42.5)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    target = f"127.0.0.1:{server.server_port}"
    try:
        prometheus.set_scrape_targets([target], interval="1s")
        with httpx.Client(timeout=10) as client:

            def targets() -> list[dict[str, Any]]:
                response = client.get(f"{url}/api/v1/targets")
                response.raise_for_status()
                return response.json()["data"]["activeTargets"]

            active = _poll(targets, lambda ts: any(
                t["labels"].get("instance") == target and t["health"] == "up" for t in ts),
                f"target {target} up")
            assert [t["labels"]["job"] for t in active
                    if t["labels"].get("instance") == target] == ["statsfeeder"]

            def query() -> list[dict[str, Any]]:
                response = client.get(f"{url}/api/v1/query", params={
                    "query": f'statsfeeder_smoke_value{{instance="{target}"}}'})
                response.raise_for_status()
                return response.json()["data"]["result"]

            result = _poll(query, lambda r: len(r) == 1 and r[0]["value"][1] == "42.5",
                           "gauge value 42.5")
            assert result[0]["metric"]["kind"] == "smoke"
            assert result[0]["metric"]["job"] == "statsfeeder"
    finally:
        prometheus.set_scrape_targets([])
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_promtool_check_rules(tmp_path: Path) -> None:
    good = tmp_path / "good.yml"
    good.write_text(
        "groups:\n"
        "- name: statsfeeder\n"
        "  rules:\n"
        "  - alert: StatsfeederDown\n"
        "    expr: up{job=\"statsfeeder\"} == 0\n"
        "    for: 1m\n"
    )
    prometheus.promtool_check_rules(good)

    bad = tmp_path / "bad.yml"
    bad.write_text(
        "groups:\n"
        "- name: statsfeeder\n"
        "  rules:\n"
        "  - alert: Broken\n"
        "    expr: up{job=\n"
    )
    with pytest.raises(PeerError, match=r"bad\.yml"):
        prometheus.promtool_check_rules(bad)


def test_bad_scrape_config_raises_and_keeps_the_old_one(prometheus_env: dict[str, str]) -> None:
    prometheus.set_scrape_targets([])
    before = prometheus.config_path().read_text()
    with pytest.raises(PeerError, match="not a valid duration"):
        prometheus.set_scrape_targets(["127.0.0.1:1"], interval="bogus")
    assert prometheus.config_path().read_text() == before
    prometheus.set_scrape_targets([])  # the restored config still reloads
