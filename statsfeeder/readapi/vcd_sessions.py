"""vCD session tokens as API credentials: a tenant's existing vCD access token is checked
with ``GET /cloudapi/1.0.0/sessions/current`` and its org becomes the reader's scope.

Answers are cached by the token's SHA-256 (never the token itself) for ``cache_seconds``;
tokens vCD refused for ``refused_cache_seconds``, so a client retrying a bad token does not
turn into a stream of vCD calls. Concurrent requests with the same uncached token (a Grafana
dashboard opening twenty panels at once) share one call to vCD.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from statsfeeder.config import TLS
from statsfeeder.errors import StatsfeederError
from statsfeeder.readapi.access_config import VcdSessions, token_digest
from statsfeeder.tls import TLSSetupError, client_context

log = logging.getLogger(__name__)

SESSION_PATH = "/cloudapi/1.0.0/sessions/current"
CACHE_ENTRIES = 10_000
"""Cached sessions at most (least recently used go first): memory stays bounded."""
SYSTEM_ORG = "system"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is reading: ``scope`` is the set of vCD org names it may see, None for all."""

    name: str
    scope: frozenset[str] | None


class VcdCheckUnavailable(StatsfeederError):
    """vCD could not say whether a session is valid (down, timeout, unexpected answer)."""

    retriable = True


class VcdSessionChecker:
    def __init__(self, config: VcdSessions, *, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.config = config
        self._clock = clock
        self._cache: OrderedDict[bytes, tuple[float, Principal | None]] = OrderedDict()
        self._pending: dict[bytes, asyncio.Task[Principal | None]] = {}
        self._http: httpx.AsyncClient | None = None
        self.calls = 0
        """Requests sent to vCD (tests and the cache's effect)."""

    async def principal(self, token: str) -> Principal | None:
        """The session's reader, or None when vCD does not know the token (or it belongs to
        the System org and ``system_org`` is ``refuse``)."""
        key = token_digest(token)
        cached = self._cache.get(key)
        now = self._clock()
        if cached is not None and cached[0] > now:
            self._cache.move_to_end(key)
            return cached[1]
        task = self._pending.get(key)
        if task is None:
            # Its own task: a requester that goes away does not cancel the others' answer.
            task = asyncio.create_task(self._check(key, token))
            self._pending[key] = task
            task.add_done_callback(lambda done: self._settled(key, done))
        return await asyncio.shield(task)

    def _settled(self, key: bytes, task: asyncio.Task[Principal | None]) -> None:
        self._pending.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved: every waiter that remains gets it too

    async def _check(self, key: bytes, token: str) -> Principal | None:
        found = await self._ask(token)
        ttl = self.config.cache_seconds if found else self.config.refused_cache_seconds
        if ttl > 0:
            self._cache[key] = (self._clock() + ttl, found)
            self._cache.move_to_end(key)
            while len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return found

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            try:
                # A pinned thumbprint fetches the certificate: blocking, so in a thread.
                tls = TLS(ca_file=self.config.tls.ca_file, insecure=self.config.tls.insecure)
                context = await asyncio.to_thread(
                    client_context, tls, self.config.base_url,
                    label=f"vCD {self.config.base_url}", key="vcd_sessions.tls",
                    timeout=self.config.timeout_seconds)
            except TLSSetupError as exc:
                raise VcdCheckUnavailable(str(exc)) from None
            self._http = httpx.AsyncClient(verify=context,
                                           timeout=self.config.timeout_seconds,
                                           limits=httpx.Limits(max_connections=8))
        return self._http

    async def _ask(self, token: str) -> Principal | None:
        self.calls += 1
        url = self.config.base_url + SESSION_PATH
        headers = {"Authorization": f"Bearer {token}",
                   "Accept": f"application/json;version={self.config.api_version}"}
        try:
            response = await (await self._client()).get(url, headers=headers)
        except httpx.TimeoutException:
            raise VcdCheckUnavailable(f"vCD {self.config.base_url}: session check timed out"
                                      ) from None
        except httpx.HTTPError as exc:
            raise VcdCheckUnavailable(f"vCD {self.config.base_url}: session check failed: "
                                      f"{exc.__class__.__name__}") from None
        if response.status_code in (401, 403):
            return None
        if response.status_code != 200:
            raise VcdCheckUnavailable(f"vCD {self.config.base_url}: session check answered "
                                      f"HTTP {response.status_code}")
        try:
            body = response.json()
            org = str(body["org"]["name"])
            user = str((body.get("user") or {}).get("name", "?"))
        except (ValueError, KeyError, TypeError):
            raise VcdCheckUnavailable(f"vCD {self.config.base_url}: session answer has no "
                                      "org name") from None
        if not org:
            raise VcdCheckUnavailable(f"vCD {self.config.base_url}: session answer has an "
                                      "empty org name")
        name = f"vcd:{user}@{org}"
        if org.lower() == SYSTEM_ORG:
            if self.config.system_org == "refuse":
                log.info("read API: vCD session of %s refused (System org; "
                         "vcd_sessions.system_org is refuse)", name)
                return None
            return Principal(name, None)
        return Principal(name, frozenset({org}))
