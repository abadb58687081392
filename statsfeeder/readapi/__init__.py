"""The read side: Prometheus's HTTP query API over the samples stored in Cassandra, evaluated
by Prometheus's own PromQL engine (a Go child process). docs/read-api.md describes it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import TYPE_CHECKING

from statsfeeder.errors import StatsfeederError

if TYPE_CHECKING:  # config.py builds its read_api section from this package's access_config
    from statsfeeder.config import CassandraConfig, ReadApiConfig
    from statsfeeder.readapi.server import Authorizer, ReadApi

log = logging.getLogger(__name__)


async def keep_serving(api: ReadApi, stopping: asyncio.Event) -> None:
    """Inside ``run``: start the API, and while it cannot start (Cassandra unreachable, no
    engine yet) say why and try again with backoff; collection goes on meanwhile."""
    delay = 5.0
    while not stopping.is_set():
        try:
            await api.start()
            return
        except StatsfeederError as exc:
            log.error("read API not serving: %s; retrying in %.0f s", exc, delay)
            await api.stop()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), delay)
        delay = min(delay * 2, 120.0)


async def serve(cassandra: CassandraConfig, config: ReadApiConfig,
                authorize: Authorizer | None = None, telemetry_listen: str | None = None
                ) -> int:
    """``statsfeeder serve``: the API alone until SIGTERM/SIGINT (read replicas).
    ``authorize`` maps a request to its scope (default: the configured tokens and vCD
    sessions, ``auth.py``). With ``telemetry_listen`` the API's own metrics are served
    there (/metrics, /healthz, /readyz once the API answers)."""
    import threading

    from prometheus_client import CollectorRegistry

    from statsfeeder.memory import limit_heaps
    from statsfeeder.readapi.server import ReadApi
    from statsfeeder.telemetry import ReadApiMetrics, serve_registry

    limit_heaps()  # before the driver's and the server's threads start
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    registry = CollectorRegistry()
    api = ReadApi(config, cassandra, authorize, metrics=ReadApiMetrics(registry))
    ready = threading.Event()
    server = serve_registry(registry, telemetry_listen, ready) if telemetry_listen else None
    try:
        await api.start()
        ready.set()
        await stopping.wait()
    finally:
        await api.stop()
        if server is not None:
            server.shutdown()
            server.server_close()
    return 0
