"""Every self-metric statsfeeder exports, defined once, on a registry passed in (tests get a
fresh one), plus the HTTP endpoint serving /metrics, /healthz and /readyz."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from statsfeeder.errors import ConfigError

CYCLE_BUCKETS = (1, 2.5, 5, 10, 20, 30, 60, 120, 180, 240, 300, 600)
WRITE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
QUERY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class ReadApiMetrics:
    """The read API's own health (``statsfeeder serve`` alone, or inside ``run``)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = r = registry
        self.requests = Counter(
            "statsfeeder_read_api_requests_total", "Query API requests answered, by endpoint "
            "and HTTP status code.", ["endpoint", "code"], registry=r)
        self.request_duration = Histogram(
            "statsfeeder_read_api_request_duration_seconds", "Time to answer a query API "
            "request, by endpoint.", ["endpoint"], buckets=QUERY_BUCKETS, registry=r)
        self.in_flight = Gauge(
            "statsfeeder_read_api_queries_in_flight", "Requests being evaluated by the "
            "engine now.", registry=r)
        self.selects = Counter(
            "statsfeeder_read_api_selects_total", "Selects (one selector of a query) read "
            "from Cassandra, by outcome (ok, limit, error, canceled).", ["outcome"],
            registry=r)
        self.series_returned = Counter(
            "statsfeeder_read_api_series_returned_total", "Series returned to the engine by "
            "Selects.", registry=r)
        self.samples_returned = Counter(
            "statsfeeder_read_api_samples_returned_total", "Samples returned to the engine by "
            "Selects.", registry=r)
        self.engine_up = Gauge(
            "statsfeeder_read_api_engine_up", "1 while the PromQL engine child runs.",
            registry=r)
        self.engine_restarts = Counter(
            "statsfeeder_read_api_engine_restarts_total", "PromQL engine children started "
            "again after one exited.", registry=r)
        self.cache_lookups = Counter(
            "statsfeeder_read_api_cache_lookups_total", "VM-days of Selects looked up among "
            "the kept settled hours, by result (hit: no Cassandra read for them; miss).",
            ["result"], registry=r)
        self.cache_bytes = Gauge(
            "statsfeeder_read_api_cache_bytes", "Memory held by kept windows of settled "
            "hours (estimate; read_api.cache_mb bounds it).", registry=r)
        self.auth_failures = Counter(
            "statsfeeder_read_api_auth_failures_total", "Refused requests, by reason (missing, "
            "malformed, invalid, expired, vcd_unavailable).", ["reason"], registry=r)


class Telemetry:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.cycle_duration = Histogram(
            "statsfeeder_cycle_duration_seconds", "Wall time of one collection cycle.",
            ["vcenter"], buckets=CYCLE_BUCKETS, registry=r)
        self.cycle_last_success = Gauge(
            "statsfeeder_cycle_last_success_timestamp_seconds",
            "When the last cycle that stored every chunk ended.", ["vcenter"], registry=r)
        self.cycle_overruns = Counter(
            "statsfeeder_cycle_overruns_total", "Cycles that were still running when the next "
            "one was due (that one is skipped; watermarks catch up).", ["vcenter"], registry=r)
        self.cycles_abandoned = Counter(
            "statsfeeder_cycles_abandoned_total", "Cycles abandoned at their deadline "
            "(collection.cycle_deadline_seconds); the next slot asks again.", ["vcenter"],
            registry=r)
        self.samples_expected = Counter(
            "statsfeeder_samples_expected_total", "Samples the queried windows should hold.",
            ["vcenter"], registry=r)
        self.samples_collected = Counter(
            "statsfeeder_samples_collected_total", "Samples parsed from vCenter answers.",
            ["vcenter"], registry=r)
        self.samples_dropped = Counter(
            "statsfeeder_samples_dropped_total", "Samples or series not stored, by reason.",
            ["vcenter", "reason"], registry=r)
        self.samples_written = Counter(
            "statsfeeder_samples_written_total", "Samples acknowledged by a sink.",
            ["sink"], registry=r)
        self.write_duration = Histogram(
            "statsfeeder_sink_write_duration_seconds", "Time for a sink to acknowledge a chunk.",
            ["sink"], buckets=WRITE_BUCKETS, registry=r)
        self.sink_errors = Counter(
            "statsfeeder_sink_errors_total", "Chunks a sink failed to store.",
            ["sink", "kind"], registry=r)
        self.sink_in_flight = Gauge(
            "statsfeeder_sink_in_flight_requests", "Requests awaiting a sink's answer.",
            ["sink"], registry=r)
        self.sink_buffer_depth = Gauge(
            "statsfeeder_sink_buffer_chunks", "Chunks waiting in a sink's buffer.",
            ["sink"], registry=r)
        self.vcenter_errors = Counter(
            "statsfeeder_vcenter_errors_total", "Failed vCenter calls, by kind.",
            ["vcenter", "kind"], registry=r)
        self.vcenter_logins = Counter(
            "statsfeeder_vcenter_logins_total", "Logins, including re-logins after expiry.",
            ["vcenter"], registry=r)
        self.vms = Gauge(
            "statsfeeder_vms", "VMs in the inventory, by power state.",
            ["vcenter", "state"], registry=r)
        self.watermark_lag = Gauge(
            "statsfeeder_watermark_lag_seconds", "vCenter time minus the oldest VM watermark: "
            "past about 3600 s samples are lost for good.", ["vcenter"], registry=r)
        self.vcd_map_age = Gauge(
            "statsfeeder_vcd_map_age_seconds", "Age of the vCD entity map in use (+Inf before "
            "the first successful read).", registry=r)
        self.vcd_refresh_failures = Gauge(
            "statsfeeder_vcd_refresh_failures", "vCD API refreshes that failed since start.",
            registry=r)
        self.leases_held = Gauge(
            "statsfeeder_leases_held", "1 for each vCenter this instance collects (always 1 "
            "without ha; with ha, 1 while it holds the vCenter's lease).", ["vcenter"],
            registry=r)
        self.lease_events = Counter(
            "statsfeeder_lease_events_total", "Lease changes: acquired, released, expired "
            "(not renewed in time), taken (another instance owns it).", ["vcenter", "event"],
            registry=r)
        self.lease_errors = Counter(
            "statsfeeder_lease_errors_total", "Failed lease operations against Cassandra.",
            ["operation"], registry=r)
        self.rollup_vm_hours = Counter(
            "statsfeeder_rollup_vm_hours_total", "VM-hours rolled up from the raw rows.",
            registry=r)
        self.rollup_samples = Counter(
            "statsfeeder_rollup_samples_total", "Raw samples read to compute roll-ups.",
            registry=r)
        self.rollup_pass_duration = Histogram(
            "statsfeeder_rollup_pass_duration_seconds", "Wall time of one roll-up pass "
            "(including waits while collection cycles run).", buckets=CYCLE_BUCKETS,
            registry=r)
        self.rollup_errors = Counter(
            "statsfeeder_rollup_errors_total", "Roll-up passes or marks that failed, by kind "
            "(the hours are redone).", ["kind"], registry=r)
        self.rollup_last_success = Gauge(
            "statsfeeder_rollup_last_success_timestamp_seconds",
            "When the last roll-up pass ended without error.", registry=r)
        self.up = Gauge("statsfeeder_up", "1 while the service runs.", registry=r)
        self.sink_up = Gauge(
            "statsfeeder_sink_up", "1 once a sink is open; 0 while it is missing (unreachable "
            "since start-up: the others are collected into, it is retried and backfilled).",
            ["sink"], registry=r)
        self.sink_open_failures = Counter(
            "statsfeeder_sink_open_failures_total", "Failed attempts to open a sink.",
            ["sink"], registry=r)
        self.read_api = ReadApiMetrics(r)
        self.sink_problem: Callable[[], str | None] = lambda: None
        """Set by the service: one line naming the missing sinks, shown on /readyz."""

    def forget_vcenter(self, vcenter: str) -> None:
        """Another instance collects it now: stop exporting this instance's stale progress
        for it (alerts on freshness would fire here otherwise)."""
        for gauge in (self.cycle_last_success, self.watermark_lag):
            with contextlib.suppress(KeyError):
                gauge.remove(vcenter)

    def serve(self, listen: str, ready: threading.Event | None = None) -> ThreadingHTTPServer:
        return serve_registry(self.registry, listen, ready, lambda: self.sink_problem())


def serve_registry(registry: CollectorRegistry, listen: str,
                   ready: threading.Event | None = None,
                   problem: Callable[[], str | None] = lambda: None) -> ThreadingHTTPServer:
    """/metrics, /healthz and /readyz on ``listen`` (telemetry.listen), in a thread."""
    host, _, port = listen.rpartition(":")
    ready_flag = ready or threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.startswith("/metrics"):
                body, kind, code = generate_latest(registry), CONTENT_TYPE_LATEST, 200
            elif self.path == "/healthz":
                body, kind, code = b"ok\n", "text/plain", 200
            elif self.path == "/readyz":
                trouble = problem() if ready_flag.is_set() else None
                code = 200 if ready_flag.is_set() and trouble is None else 503
                text = ("starting" if not ready_flag.is_set() else trouble or "ready")
                body, kind = f"{text}\n".encode(), "text/plain"
            else:
                body, kind, code = b"not found\n", "text/plain", 404
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    try:
        server = ThreadingHTTPServer((host or "0.0.0.0", int(port)), Handler)
    except OSError as exc:  # in use (a second instance on this host), no such address
        reason = exc.strerror or str(exc)
        raise ConfigError(f"config: telemetry.listen: cannot listen on {listen}: "
                          f"{reason}") from None
    threading.Thread(target=server.serve_forever, name="telemetry", daemon=True).start()
    return server
