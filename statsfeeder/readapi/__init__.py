"""The read side: Prometheus's HTTP query API over the samples stored in Cassandra, evaluated
by Prometheus's own PromQL engine (a Go child process). docs/read-api.md describes it."""

from __future__ import annotations

import asyncio
import signal
from typing import TYPE_CHECKING

from statsfeeder.config import CassandraConfig, ReadApiConfig

if TYPE_CHECKING:
    from statsfeeder.readapi.server import Authorizer


async def serve(cassandra: CassandraConfig, config: ReadApiConfig,
                authorize: Authorizer | None = None) -> int:
    """``statsfeeder serve``: the API alone until SIGTERM/SIGINT (read replicas).
    ``authorize`` maps a request to its scope (default: provider-wide)."""
    from statsfeeder.readapi.server import ReadApi, provider_wide

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    api = ReadApi(config, cassandra, authorize or provider_wide)
    try:
        await api.start()
        await stopping.wait()
    finally:
        await api.stop()
    return 0
