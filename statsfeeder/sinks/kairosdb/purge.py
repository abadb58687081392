"""Delete statsfeeder's KairosDB datapoints older than N days (what providers did with a shell
script of curl calls).

Only metrics named ``metric_prefix`` + a statsfeeder metric (the configured counters) are
touched, so other writers' metrics in a shared KairosDB are safe. For each one found in
``GET /api/v1/metricnames``, a count query (``aggregators: count``) measures the datapoints
stamped before the cutoff; with ``yes`` they are then deleted with
``POST /api/v1/datapoints/delete`` (``end_absolute`` = cutoff - 1 ms). Without ``yes`` it is a
dry run: counts only. A cutoff inside the retention window (``older_than_days`` <
``kairosdb.ttl_days``) is refused: that data is meant to be kept.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx

from statsfeeder.config import DEFAULT_METRICS, KairosDBConfig
from statsfeeder.errors import ConfigError, SinkError, SinkUnavailable
from statsfeeder.sinks.kairosdb.writer import client_options, describe, error_text

log = logging.getLogger(__name__)

METRIC_NAMES = "/api/v1/metricnames"
QUERY = "/api/v1/datapoints/query"
DELETE = "/api/v1/datapoints/delete"
PURGE_TIMEOUT = 600.0
"""Least read timeout of one count or delete request: a large range takes KairosDB a while."""
COUNT_AGGREGATOR = {"name": "count", "sampling": {"value": 1000, "unit": "years"}}


@dataclass(frozen=True, slots=True)
class PurgeReport:
    dry_run: bool
    older_than_days: int
    cutoff: int
    """Epoch seconds: datapoints stamped before this are (or would be) deleted."""
    datapoints: dict[str, int] = field(default_factory=dict)
    """Metric name -> datapoints before the cutoff (counted before deleting)."""

    @property
    def metrics(self) -> list[str]:
        return sorted(self.datapoints)

    @property
    def total(self) -> int:
        return sum(self.datapoints.values())

    def summary(self) -> str:
        moment = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.cutoff))
        verb = "would delete" if self.dry_run else "deleted"
        tail = " (dry run: add --yes to delete)" if self.dry_run else ""
        return (f"kairosdb purge: {verb} {self.total} datapoints older than "
                f"{self.older_than_days} days (before {moment}) in {len(self.datapoints)} "
                f"metrics{tail}")


def purge(config: KairosDBConfig, older_than_days: int, *, yes: bool,
          metrics: Iterable[str] = DEFAULT_METRICS, now: float | None = None,
          transport: httpx.BaseTransport | None = None) -> PurgeReport:
    """Count (dry run) or delete (``yes``) statsfeeder datapoints older than the cutoff.

    ``metrics``: the counter names statsfeeder writes (``collection.metrics``); KairosDB
    metrics named ``metric_prefix`` + one of them are purged, no others."""
    if older_than_days < 1:
        raise ConfigError(f"kairosdb purge: --older-than must be at least 1 day "
                          f"(got {older_than_days})")
    if older_than_days < config.ttl_days:
        raise ConfigError(f"kairosdb purge: {older_than_days} days is inside the retention "
                          f"window (kairosdb.ttl_days = {config.ttl_days}): refusing to delete "
                          f"data that is meant to be kept")
    cutoff = int(now if now is not None else time.time()) - older_than_days * 86400
    end_ms = cutoff * 1000 - 1
    wanted = {config.metric_prefix + name for name in metrics}
    options = client_options(config)
    options["timeout"] = httpx.Timeout(max(config.timeout_seconds, PURGE_TIMEOUT),
                                       connect=config.connect_timeout_seconds)
    counts: dict[str, int] = {}
    with httpx.Client(**options, transport=transport) as http:
        params = {"prefix": config.metric_prefix} if config.metric_prefix else None
        listed = _call(http, "GET", METRIC_NAMES, params=params).get("results", [])
        targets = sorted(wanted.intersection(str(name) for name in listed))
        for name in targets:
            counted = _count(http, name, end_ms)
            if counted == 0:
                continue
            counts[name] = counted
            if yes:
                _call(http, "POST", DELETE, json={
                    "start_absolute": 1, "end_absolute": end_ms, "metrics": [{"name": name}]})
                log.info("kairosdb purge: deleted %d datapoints of %s", counted, name)
    return PurgeReport(dry_run=not yes, older_than_days=older_than_days, cutoff=cutoff,
                       datapoints=counts)


def _count(http: httpx.Client, name: str, end_ms: int) -> int:
    answer = _call(http, "POST", QUERY, json={
        "start_absolute": 1, "end_absolute": end_ms,
        "metrics": [{"name": name, "aggregators": [COUNT_AGGREGATOR]}]})
    total = 0
    for query in answer.get("queries", []):
        for result in query.get("results", []):
            total += sum(int(value) for _, value in result.get("values", []))
    return total


def _call(http: httpx.Client, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    where = str(http.base_url).rstrip("/") + path
    try:
        response = http.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        raise SinkUnavailable(f"kairosdb purge: {method} {where}: {describe(exc)}") from None
    if response.status_code == 204:
        return {}
    if response.status_code != 200:
        error = SinkUnavailable if response.status_code >= 500 else SinkError
        raise error(f"kairosdb purge: {method} {where}: HTTP {response.status_code}: "
                    f"{error_text(response)}")
    try:
        body = response.json()
    except ValueError:
        raise SinkError(f"kairosdb purge: {method} {where}: not JSON") from None
    return body if isinstance(body, dict) else {}
