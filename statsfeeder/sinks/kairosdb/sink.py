"""The KairosDB sink: the same interface as the Cassandra sink (``name``, blocking ``open``,
``async write`` returning a ``WriteResult``, ``close``) plus ``async health``.

KairosDB keeps no watermarks or entity metadata: the pipeline keeps this sink's watermarks in
Cassandra under the sink name ``kairosdb``, and in the local state file when one is configured
(always without Cassandra: ``statsfeeder/watermarks.py``).
"""

from __future__ import annotations

import logging

import httpx

from statsfeeder.config import KairosDBConfig
from statsfeeder.errors import SinkUnavailable
from statsfeeder.model import Series, WriteResult
from statsfeeder.sinks.kairosdb.writer import (
    HEALTH,
    KairosDBWriter,
    client_options,
    describe,
    error_text,
)

log = logging.getLogger(__name__)

VERSION = "/api/v1/version"


class KairosDBSink:
    name = "kairosdb"

    def __init__(self, config: KairosDBConfig, *,
                 transport: httpx.AsyncBaseTransport | None = None,
                 sync_transport: httpx.BaseTransport | None = None) -> None:
        self.config = config
        self._writer = KairosDBWriter(config, transport=transport)
        self._sync_transport = sync_transport
        self.version = ""

    def open(self) -> None:
        """Blocking (call from a worker thread): the health check must answer 204, and
        ``/api/v1/version`` must accept the credentials (the health check needs none)."""
        where = self.config.base_url
        if self.config.tls.insecure and where.startswith("https:"):
            log.warning("kairosdb: TLS verification is off for %s (tls.insecure)", where)
        with httpx.Client(**client_options(self.config), transport=self._sync_transport) as http:
            try:
                health = http.get(HEALTH)
                if health.status_code != 204:
                    raise SinkUnavailable(f"kairosdb: {where}{HEALTH} answered HTTP "
                                          f"{health.status_code}, not 204: {error_text(health)}")
                version = http.get(VERSION)
            except httpx.HTTPError as exc:
                raise SinkUnavailable(f"kairosdb: cannot reach {where}: {describe(exc)}") from None
        if version.status_code in (401, 403):
            raise SinkUnavailable(f"kairosdb: {where} refused the credentials (HTTP "
                                  f"{version.status_code}): check kairosdb.credentials")
        if version.status_code != 200:
            raise SinkUnavailable(f"kairosdb: {where}{VERSION} answered HTTP "
                                  f"{version.status_code}: {error_text(version)}")
        try:
            self.version = str(version.json().get("version", ""))
        except (ValueError, AttributeError):
            self.version = ""
        log.info("kairosdb: %s at %s", self.version or "unknown version", where)

    def probe(self) -> None:
        """Blocking: does KairosDB answer again after it was unreachable? The same checks as
        ``open``, keeping the writer's connection pool (nothing to rebuild)."""
        self.open()

    @property
    def in_flight(self) -> int:
        return self._writer.in_flight

    @property
    def writer(self) -> KairosDBWriter:
        return self._writer

    async def write(self, series: list[Series]) -> WriteResult:
        return await self._writer.write(series)

    async def health(self) -> bool:
        return await self._writer.health()

    async def aclose(self) -> None:
        await self._writer.aclose()

    def close(self) -> None:
        self._writer.close()
