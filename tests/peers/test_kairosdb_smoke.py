"""The KairosDB peer answers the REST API the collector's KairosDB writer uses."""

from __future__ import annotations

import gzip
import json
import time
import uuid
from typing import Any

import httpx

POLL_SECONDS = 15.0


def _query(client: httpx.Client, url: str, metric: str, start_ms: int) -> list[dict[str, Any]]:
    body = {"start_absolute": start_ms, "metrics": [{"name": metric}]}
    response = client.post(f"{url}/api/v1/datapoints/query", json=body)
    assert response.status_code == 200, response.text
    return response.json()["queries"][0]["results"]


def _read_back(client: httpx.Client, url: str, metric: str, start_ms: int,
               expected_values: list[list[float]], expected_tags: dict[str, list[str]]) -> None:
    """Poll until the query returns exactly what was written (writes are queued)."""
    deadline = time.monotonic() + POLL_SECONDS
    results: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        results = _query(client, url, metric, start_ms)
        if len(results) == 1 and results[0]["values"] == expected_values:
            break
        time.sleep(0.1)
    assert len(results) == 1, results
    assert results[0]["name"] == metric
    assert results[0]["values"] == expected_values
    assert results[0]["tags"] == expected_tags


def test_gzip_write_reads_back_values_and_tags(kairosdb_env: dict[str, str]) -> None:
    url = kairosdb_env["KAIROSDB_URL"]
    metric = f"statsfeeder.smoke.{uuid.uuid4().hex[:12]}"
    now = int(time.time() * 1000) // 1000 * 1000
    points = [[now - 40_000, 12], [now - 20_000, 3.25], [now, 0]]
    tags = {"vm": "vm-42", "vcenter": "vc1", "org": "urn:vcloud:org:1234"}
    body = [{"name": metric, "tags": tags, "datapoints": points}]
    with httpx.Client(timeout=10) as client:
        response = client.post(
            f"{url}/api/v1/datapoints",
            content=gzip.compress(json.dumps(body).encode()),
            headers={"Content-Type": "application/gzip"},
        )
        assert response.status_code == 204, response.text
        _read_back(client, url, metric, now - 60_000, points,
                   {key: [value] for key, value in tags.items()})


def test_content_encoding_gzip_and_plain_json_writes(kairosdb_env: dict[str, str]) -> None:
    url = kairosdb_env["KAIROSDB_URL"]
    now = int(time.time() * 1000)
    with httpx.Client(timeout=10) as client:
        metric = f"statsfeeder.smoke.ce.{uuid.uuid4().hex[:12]}"
        body = [{"name": metric, "tags": {"vm": "a"}, "datapoints": [[now, 7]]}]
        response = client.post(
            f"{url}/api/v1/datapoints",
            content=gzip.compress(json.dumps(body).encode()),
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )
        assert response.status_code == 204, response.text
        _read_back(client, url, metric, now - 1000, [[now, 7]], {"vm": ["a"]})

        metric = f"statsfeeder.smoke.plain.{uuid.uuid4().hex[:12]}"
        body = [{"name": metric, "tags": {"vm": "b"}, "datapoints": [[now, 1.5]], "ttl": 3600}]
        response = client.post(f"{url}/api/v1/datapoints", json=body)
        assert response.status_code == 204, response.text
        _read_back(client, url, metric, now - 1000, [[now, 1.5]], {"vm": ["b"]})


def test_bad_request_is_400_with_errors(kairosdb_env: dict[str, str]) -> None:
    url = kairosdb_env["KAIROSDB_URL"]
    now = int(time.time() * 1000)
    with httpx.Client(timeout=10) as client:
        # KairosDB 1.3 requires at least one tag per metric.
        response = client.post(f"{url}/api/v1/datapoints",
                               json=[{"name": "statsfeeder.smoke.untagged",
                                      "datapoints": [[now, 1]]}])
        assert response.status_code == 400
        errors = response.json()["errors"]
        assert isinstance(errors, list) and errors
        assert any("tags" in error for error in errors), errors

        response = client.post(f"{url}/api/v1/datapoints", content=b"not json",
                               headers={"Content-Type": "application/json"})
        assert response.status_code == 400
        assert response.json()["errors"]
