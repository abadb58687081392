"""The self-metrics endpoint, scraped by the real Prometheus."""

from __future__ import annotations

import threading
import time

import httpx

from peers import prometheus
from statsfeeder.telemetry import Telemetry
from tests.helpers import free_port


def test_prometheus_scrapes_health_metrics(prometheus_env: dict[str, str]) -> None:
    telemetry = Telemetry()
    ready = threading.Event()
    port = free_port()
    server = telemetry.serve(f"127.0.0.1:{port}", ready)
    try:
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/healthz").status_code == 200
        assert httpx.get(f"{base}/readyz").status_code == 503
        ready.set()
        assert httpx.get(f"{base}/readyz").status_code == 200
        telemetry.up.set(1)
        telemetry.samples_dropped.labels("vc1", "no_data").inc(3)
        telemetry.cycle_duration.labels("vc1").observe(12.5)
        prometheus.set_scrape_targets([f"127.0.0.1:{port}"], interval="1s")
        api = prometheus_env["PROMETHEUS_URL"] + "/api/v1/query"
        deadline = time.monotonic() + 30
        values: dict[str, float] = {}
        while time.monotonic() < deadline and len(values) < 3:
            for query in ("statsfeeder_up",
                          'statsfeeder_samples_dropped_total{vcenter="vc1",reason="no_data"}',
                          'statsfeeder_cycle_duration_seconds_count{vcenter="vc1"}'):
                result = httpx.get(api, params={"query": query}).json()["data"]["result"]
                if result:
                    values[query] = float(result[0]["value"][1])
            time.sleep(0.5)
        assert values == {
            "statsfeeder_up": 1.0,
            'statsfeeder_samples_dropped_total{vcenter="vc1",reason="no_data"}': 3.0,
            'statsfeeder_cycle_duration_seconds_count{vcenter="vc1"}': 1.0,
        }
    finally:
        server.shutdown()
        prometheus.set_scrape_targets([])


def test_shipped_alert_rules_pass_promtool(prometheus_env: dict[str, str]) -> None:
    from pathlib import Path

    rules = Path(__file__).resolve().parents[2] / "config" / "alerts.yml"
    prometheus.promtool_check_rules(rules)  # raises with promtool's message if invalid
    prometheus.set_scrape_targets([], rule_files=[rules])
    api = prometheus_env["PROMETHEUS_URL"] + "/api/v1/rules"
    groups = httpx.get(api).json()["data"]["groups"]
    names = {rule["name"] for group in groups for rule in group["rules"]}
    assert "StatsfeederSinkMissing" in names and len(names) == 11


def test_alert_rules_fire_on_the_right_series(prometheus_env: dict[str, str]) -> None:
    """promtool's rule unit tests (tests/integration/alerts_test.yml): with ha, a standby's
    stale numbers do not alert, a vCenter nobody collects does."""
    from pathlib import Path

    output = prometheus.promtool_test_rules(Path(__file__).with_name("alerts_test.yml"))
    assert "SUCCESS" in output
