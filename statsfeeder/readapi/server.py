"""The read API's HTTP front: Prometheus's query API (GET and POST form) with its JSON
envelope, error types and status codes, over the samples stored in Cassandra.

Queries are checked here and evaluated by the engine child (Prometheus's ``promql``); its
Selects come back to this process's internal endpoint (127.0.0.1, a random port, a random
per-process secret) and are answered from Cassandra by ``SeriesStore``, limited to the
caller's scope. A scope travels through the engine as an opaque per-request token, so the
engine can neither widen nor forge it. ``authorize`` turns a request into a scope (``None``:
provider-wide) or refuses it before any work; the default checks the configured API tokens
and vCD sessions (``auth.py``). With ``read_api.tls`` the API speaks only HTTPS.

Cassandra is reached through a ``StoreConnection`` (``connection.py``), which gives the current
store, roll-up select and retention, and connects afresh when reads find no node.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import logging
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from statsfeeder import __version__
from statsfeeder.config import CassandraConfig, ReadApiConfig
from statsfeeder.errors import ConfigError
from statsfeeder.readapi import params
from statsfeeder.readapi.auth import Authenticator, Unauthorized, refusal, server_context
from statsfeeder.readapi.connection import StoreConnection, open_store
from statsfeeder.readapi.engine import PROMETHEUS_VERSION, EngineProcess, ensure_binary
from statsfeeder.readapi.instrument import SelectCounter, request_metrics
from statsfeeder.readapi.metadata import distinct_answer, label_table_response
from statsfeeder.readapi.params import ApiError
from statsfeeder.readapi.rollup_select import RollupRequest
from statsfeeder.readapi.store import Scope, SelectRequest
from statsfeeder.readapi.streaming import send_frame, stream_in_thread
from statsfeeder.readapi.vcd_sessions import VcdCheckUnavailable
from statsfeeder.telemetry import ReadApiMetrics

log = logging.getLogger(__name__)

Authorizer = Callable[[web.Request], Awaitable[Scope]]
SECRET_HEADER = "X-Statsfeeder-Secret"
Form = dict[str, list[str]]


async def provider_wide(request: web.Request) -> Scope:
    return None


def success(data: Any, **extra: Any) -> web.Response:
    return web.json_response({"status": "success", "data": data, **extra})


def failure(error: ApiError) -> web.Response:
    return web.json_response({"status": "error", "errorType": error.error_type,
                              "error": error.message}, status=error.status)


class ReadApi:
    def __init__(self, config: ReadApiConfig, cassandra: CassandraConfig,
                 authorize: Authorizer | None = None,
                 metrics: ReadApiMetrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or ReadApiMetrics(CollectorRegistry())
        self.metrics.engine_up.set_function(
            lambda: 1.0 if self._engine is not None and self._engine.running else 0.0)
        self.cassandra = cassandra
        self.authenticator: Authenticator | None = None
        if authorize is None:
            self.authenticator = Authenticator(config)
            authorize = self._authorize
        self.authorize = authorize
        self._secret = secrets.token_urlsafe(32)
        self._scopes: dict[str, Scope] = {}
        self.connection = StoreConnection(
            cassandra, functools.partial(open_store, cassandra, config, self.metrics))
        self._engine: EngineProcess | None = None
        self._engine_lock = asyncio.Lock()
        self._client: aiohttp.ClientSession | None = None
        self._runners: list[web.AppRunner] = []
        self.port = 0

    @property
    def engine(self) -> EngineProcess | None:
        return self._engine

    async def _authorize(self, request: web.Request) -> Scope:
        assert self.authenticator is not None
        try:
            principal = await self.authenticator.authenticate(
                request.headers.get("Authorization"))
        except Unauthorized as exc:
            self.metrics.auth_failures.labels(exc.kind).inc()
            log.info("read API: refused %s %s from %s: %s", request.method, request.path,
                     request.remote, exc)
            raise refusal(str(exc)) from None
        except VcdCheckUnavailable as exc:
            self.metrics.auth_failures.labels("vcd_unavailable").inc()
            log.warning("read API: cannot check a vCD session: %s", exc)
            raise refusal(f"cannot check the vCD session now: {exc}", 503) from None
        return principal.scope

    # --- life cycle -------------------------------------------------------------------
    async def start(self) -> None:
        if self.authenticator is not None and not (
                self.config.tokens or self.config.vcd_sessions or self.config.anonymous):
            raise ConfigError("config: read_api: no tokens and no vcd_sessions: every request "
                              "would be refused (read_api.tokens)")
        tls = server_context(self.config.tls) if self.config.tls is not None else None
        # Roll-ups that no worker writes (cassandra.rollups.enabled: false) would answer
        # with holes: the raw samples answer everything then.
        await self.connection.open(self.config.rollups and self.cassandra.rollups.enabled)
        internal = web.Application(client_max_size=1 << 20)
        internal.router.add_post("/select", self._select)
        internal.router.add_post("/labels", self._label_table)
        internal_port = await self._serve(internal, "127.0.0.1", 0)
        binary = await asyncio.to_thread(ensure_binary, self.config.engine_binary)
        self._engine = EngineProcess(
            binary, storage_url=f"http://127.0.0.1:{internal_port}/select", secret=self._secret,
            lookback_seconds=self.config.lookback_minutes * 60,
            timeout_seconds=self.config.query_timeout_seconds,
            max_samples=self.config.max_samples, max_series=self.config.max_series,
            rollup_min_step_seconds=(self.config.rollups_min_step_hours * 3600
                                     if self.connection.rollups is not None else None),
            rollup_fresh_seconds=self.config.rollups_fresh_hours * 3600)
        await self._engine.start()
        self._client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(
            total=self.config.query_timeout_seconds + 30))
        host, _, port = self.config.listen.rpartition(":")
        self.port = await self._serve(self.application(), host or "0.0.0.0", int(port), tls)
        log.info("read API: Prometheus query API on %s://%s:%d (lookback %d min)",
                 "https" if tls else "http", host or "0.0.0.0", self.port,
                 self.config.lookback_minutes)

    async def _serve(self, app: web.Application, host: str, port: int,
                     tls: ssl.SSLContext | None = None) -> int:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port, ssl_context=tls)
        await site.start()
        self._runners.append(runner)
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        return int(sockets[0].getsockname()[1]) if sockets else port

    async def stop(self) -> None:
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        if self._client is not None:
            await self._client.close()
        if self._engine is not None:
            await self._engine.stop()
        await self.connection.close()
        if self.authenticator is not None:
            await self.authenticator.close()

    def application(self) -> web.Application:
        app = web.Application(client_max_size=1 << 20,
                              middlewares=[request_metrics(self.metrics)])
        routes = [("/api/v1/query", self._query), ("/api/v1/query_range", self._query_range),
                  ("/api/v1/series", self._series), ("/api/v1/labels", self._labels),
                  ("/api/v1/label/{name}/values", self._label_values),
                  ("/api/v1/metadata", self._metadata),
                  ("/api/v1/status/buildinfo", self._buildinfo)]
        for path, handler in routes:
            app.router.add_get(path, self._wrap(handler))
            app.router.add_post(path, self._wrap(handler))
        return app

    # --- public endpoints ---------------------------------------------------------------
    def _wrap(self, handler: Callable[[web.Request, Form, Scope], Awaitable[web.Response]]
              ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def run(request: web.Request) -> web.StreamResponse:
            scope = await self.authorize(request)  # raises its own 401 before any work
            form: Form = {}
            for key, value in request.query.items():
                form.setdefault(key, []).append(value)
            if request.method == "POST":
                for key, item in (await request.post()).items():
                    if isinstance(item, str):
                        form.setdefault(key, []).append(item)
            try:
                return await handler(request, form, scope)
            except ApiError as exc:
                return failure(exc)
        return run

    async def _query(self, request: web.Request, form: Form, scope: Scope) -> web.Response:
        limit = params.limit_param(form)
        at = params.time_param(form, "time", round(time.time(), 3))
        timeout = params.timeout_param(form, self.config.query_timeout_seconds)
        return await self._forward("/query", [("query", params.first(form, "query")),
                                              ("time", repr(at)), ("timeout", repr(timeout)),
                                              ("limit", str(limit)),
                                              *params.lookback_param(form)], scope)

    async def _query_range(self, request: web.Request, form: Form, scope: Scope
                           ) -> web.Response:
        limit = params.limit_param(form)
        start, end, step = params.range_params(form)
        timeout = params.timeout_param(form, self.config.query_timeout_seconds)
        return await self._forward("/query_range", [
            ("query", params.first(form, "query")), ("start", repr(start)), ("end", repr(end)),
            ("step", repr(step)), ("timeout", repr(timeout)), ("limit", str(limit)),
            *params.lookback_param(form)], scope)

    def _metadata_range(self, form: Form) -> tuple[float, float]:
        now = time.time()
        # Prometheus's defaults are all of time; nothing older than the TTL is stored.
        start = params.time_param(form, "start", params.MIN_TIME)
        end = params.time_param(form, "end", params.MAX_TIME)
        start = min(max(start, now - self.connection.retention_seconds - 86400), now + 86400)
        return start, max(min(end, now + 86400), start)

    def _metadata_fields(self, form: Form) -> list[tuple[str, str]]:
        limit = params.limit_param(form)
        start, end = self._metadata_range(form)
        fields = [("start", repr(start)), ("end", repr(end)), ("limit", str(limit)),
                  ("timeout", repr(self.config.query_timeout_seconds))]
        return fields + [("match[]", item) for item in form.get("match[]", [])]

    async def _series(self, request: web.Request, form: Form, scope: Scope) -> web.Response:
        return await self._forward("/series", self._metadata_fields(form), scope)

    async def _labels(self, request: web.Request, form: Form, scope: Scope) -> web.Response:
        if "match[]" not in form:
            return await self._distinct(form, scope, None)
        return await self._forward("/labels", self._metadata_fields(form), scope)

    async def _label_values(self, request: web.Request, form: Form, scope: Scope
                            ) -> web.Response:
        if "match[]" not in form:
            return await self._distinct(form, scope, request.match_info["name"])
        fields = [("name", request.match_info["name"]), *self._metadata_fields(form)]
        return await self._forward("/label_values", fields, scope)

    async def _distinct(self, form: Form, scope: Scope, name: str | None) -> web.Response:
        """Label names or values with no matcher to apply: answered here, no engine."""
        store = self.connection.store
        assert store is not None
        limit = params.limit_param(form)
        start, end = self._metadata_range(form)
        found = await distinct_answer(store, start, end, scope, name, self.connection.failed)
        if limit and len(found) > limit:
            return success(found[:limit], warnings=["results truncated due to limit"])
        return success(found)

    async def _metadata(self, request: web.Request, form: Form, scope: Scope) -> web.Response:
        store = self.connection.store
        assert store is not None
        limit = params.limit_param(form)
        only = params.first(form, "metric")
        try:
            catalog = await asyncio.to_thread(store.metrics)
        except Exception as exc:  # Cassandra unreachable, timeouts: one line to the caller
            raise ApiError(params.INTERNAL, self.connection.failed(exc, "metadata")) from None
        data: dict[str, list[dict[str, str]]] = {}
        for name, info in sorted(catalog.items()):
            if only and name != only:
                continue
            if limit and len(data) >= limit:
                break
            data[name] = [{"type": "gauge", "unit": info.unit,
                           "help": f"vCenter counter {info.metric} ({info.unit or 'number'}), "
                                   "20-second samples"}]
        return success(data)

    async def _buildinfo(self, request: web.Request, form: Form, scope: Scope) -> web.Response:
        # Prometheus 3.16's engine is embedded: clients that gate features on the version
        # see what it can do.
        return success({"version": "3.16.0", "revision": f"statsfeeder-{__version__}",
                        "branch": "statsfeeder", "buildUser": "", "buildDate": "",
                        "goVersion": "", "engine": f"prometheus {PROMETHEUS_VERSION}"})

    # --- engine round trip ----------------------------------------------------------------
    async def _forward(self, path: str, fields: list[tuple[str, str]], scope: Scope
                       ) -> web.Response:
        token = secrets.token_urlsafe(16)
        self._scopes[token] = scope
        self.metrics.in_flight.inc()
        try:
            for attempt in (1, 2):
                engine = await self._running_engine()
                assert self._client is not None
                try:
                    async with self._client.post(
                            engine.url + path, data=[*fields, ("scope", token)],
                            headers={SECRET_HEADER: self._secret}) as answer:
                        body = await answer.read()
                        return web.Response(body=body, status=answer.status,
                                            content_type="application/json")
                except aiohttp.ClientConnectorError:
                    # Refused before the request was sent: a dead engine not yet noticed.
                    if attempt == 2 or not await engine.exited(2.0):
                        raise ApiError(params.UNAVAILABLE,
                                       "the query engine is not reachable") from None
                    log.error("read API: the PromQL engine exited; restarting it")
                except aiohttp.ClientConnectionError:
                    # It went away with this query in it: not sent again (a query that
                    # kills the engine would kill the next one too); the engine is restarted
                    # for the queries after it.
                    if await engine.exited(2.0):
                        log.error("read API: the PromQL engine exited during a query; "
                                  "restarting it")
                        await self._running_engine()
                    raise ApiError(params.UNAVAILABLE, "the query engine stopped during the "
                                   "query; it was restarted, try again") from None
            raise AssertionError("unreachable")
        except TimeoutError:
            raise ApiError(params.TIMEOUT, "query timed out") from None
        finally:
            self.metrics.in_flight.dec()
            self._scopes.pop(token, None)

    async def _running_engine(self) -> EngineProcess:
        assert self._engine is not None
        async with self._engine_lock:
            if not self._engine.running:
                await self._engine.stop()
                await self._engine.start()
                self.metrics.engine_restarts.inc()
        return self._engine

    # --- internal: the engine's Selects ------------------------------------------------------
    async def _engine_request(self, request: web.Request) -> tuple[dict[str, Any], Scope]:
        """An internal request's JSON body and the scope it was issued for: only from our
        engine (the per-process secret) and only for a scope this process handed out."""
        given = request.headers.get(SECRET_HEADER, "")
        if not hmac.compare_digest(given.encode(), self._secret.encode()):
            raise web.HTTPForbidden()
        body = json.loads(await request.read())
        token = str(body.get("scope", ""))
        if token not in self._scopes:
            raise web.HTTPForbidden(text="unknown scope")
        return body, self._scopes[token]

    async def _select(self, request: web.Request) -> web.StreamResponse:
        body, scope = await self._engine_request(request)
        select = SelectRequest.from_json(body)
        store, rollups = self.connection.store, self.connection.rollups
        assert store is not None
        wanted = RollupRequest.from_json(body) if rollups is not None else None
        if wanted is not None and rollups is not None:
            pieces = stream_in_thread(lambda: rollups.select(wanted, scope))
        else:
            pieces = stream_in_thread(lambda: store.select(select, scope))
        counter = SelectCounter(self.metrics)
        try:
            try:
                # Until the first piece, a failure is the whole answer's (HTTP 500).
                first = await anext(pieces)
            except Exception as exc:  # Cassandra unreachable, timeouts: one line
                counter.outcome = "error"
                raise web.HTTPInternalServerError(text=self._failed(exc)) from None
            response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
            await response.prepare(request)
            try:
                await send_frame(response, first, pieces, counter, self._failed)
            except ConnectionResetError:  # the engine gave the query up (another Select failed)
                counter.outcome = "canceled"
            return response
        finally:
            counter.finish()
            await pieces.aclose()

    def _failed(self, exc: BaseException) -> str:
        return self.connection.failed(exc, "series")

    async def _label_table(self, request: web.Request) -> web.Response:
        """The engine's label names/values: distinct projections, no series frame."""
        body, scope = await self._engine_request(request)
        store = self.connection.store
        assert store is not None
        return await label_table_response(store, body, scope, self.connection.failed)


async def serve_forever(api: ReadApi, stopping: asyncio.Event) -> None:
    await api.start()
    try:
        await stopping.wait()
    finally:
        with contextlib.suppress(Exception):
            await api.stop()
