"""The read side: Prometheus's HTTP query API over the samples stored in Cassandra, evaluated
by Prometheus's own PromQL engine (a Go child process). docs/read-api.md describes it."""

from __future__ import annotations

import asyncio
import signal

from statsfeeder.config import CassandraConfig, ReadApiConfig


async def serve(cassandra: CassandraConfig, config: ReadApiConfig) -> int:
    """``statsfeeder serve``: the API alone until SIGTERM/SIGINT (read replicas)."""
    from statsfeeder.readapi.server import ReadApi

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    api = ReadApi(config, cassandra)
    try:
        await api.start()
        await stopping.wait()
    finally:
        await api.stop()
    return 0
