"""Authentication of the read API over real TLS: API tokens (bearer and basic), expiry, and
vCD session tokens checked against tests/vcd_double.py (the one vCD double; no vCD simulator
exists). The handler behind the middleware only echoes the reader it was given, so these
tests hold for every endpoint the server mounts behind it."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import ssl
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from aiohttp import web

from peers.common import ensure_certs
from statsfeeder.errors import ConfigError
from statsfeeder.readapi.access_config import parse_access
from statsfeeder.readapi.auth import Authenticator, middleware, principal_of, server_context
from tests.vcd_double import VcdDouble

ACME = "acme-token-0123456789abcdef"
OPS = "ops-token-0123456789abcdef"
OLD = "old-token-0123456789abcdef"
ENV = {"ACME": ACME, "OPS": OPS, "OLD": OLD}


async def echo(request: web.Request) -> web.Response:
    principal = principal_of(request)
    scope = None if principal.scope is None else sorted(principal.scope)
    return web.json_response({"name": principal.name, "scope": scope})


async def healthy(request: web.Request) -> web.Response:
    return web.Response(text="ok")


class Api:
    def __init__(self, raw: dict[str, Any]) -> None:
        certs = ensure_certs()
        raw = {"tls": {"cert_file": str(certs["cert"]), "key_file": str(certs["key"])}, **raw}
        self.access = parse_access(raw, ENV)
        self.authenticator = Authenticator(self.access)
        self.refused: list[str] = []
        self.ca = str(certs["ca"])
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application(middlewares=[middleware(
            self.authenticator, open_paths=["/-/healthy"], on_refused=self.refused.append)])
        app.router.add_get("/api/v1/labels", echo)
        app.router.add_get("/-/healthy", healthy)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        assert self.access.tls is not None
        site = web.TCPSite(self.runner, "127.0.0.1", 0,
                           ssl_context=server_context(self.access.tls))
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"https://127.0.0.1:{port}"

    async def get(self, headers: dict[str, str] | None = None, *,
                  auth: tuple[str, str] | None = None) -> httpx.Response:
        async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=self.ca)
                                     ) as client:
            return await client.get(self.url + "/api/v1/labels", headers=headers or {},
                                    auth=auth)

    async def close(self) -> None:
        await self.authenticator.close()
        if self.runner is not None:
            await self.runner.cleanup()


SESSION_LOOP = pytest.mark.asyncio(loop_scope="session")  # the loop the api fixture serves on
TOKENS = [{"name": "acme", "token_env": "ACME", "orgs": ["acme"]},
          {"name": "ops", "token_env": "OPS", "provider": True},
          {"name": "old", "token_env": "OLD", "orgs": ["acme"],
           "expires": (datetime.now(UTC) - timedelta(seconds=1)).isoformat()}]


@pytest_asyncio.fixture(loop_scope="session")
async def api() -> AsyncIterator[Api]:
    server = Api({"tokens": TOKENS})
    await server.start()
    yield server
    await server.close()


def refused_in_one_line(response: httpx.Response, status: int = 401) -> str:
    assert response.status_code == status
    assert response.text.count("\n") == 1 and response.text.endswith("\n")
    body = response.json()
    assert body["status"] == "error" and "data" not in body
    return str(body["error"])


@SESSION_LOOP
async def test_tokens_by_bearer_and_basic_give_their_scope(api: Api) -> None:
    answer = await api.get({"Authorization": f"Bearer {ACME}"})
    assert answer.json() == {"name": "acme", "scope": ["acme"]}
    answer = await api.get(auth=("grafana", ACME))
    assert answer.json() == {"name": "acme", "scope": ["acme"]}
    answer = await api.get({"Authorization": f"Bearer {OPS}"})
    assert answer.json() == {"name": "ops", "scope": None}


@SESSION_LOOP
async def test_missing_wrong_or_expired_is_401_in_one_line(
        api: Api, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    assert "missing credentials" in refused_in_one_line(await api.get())
    wrong = ACME[:-1] + "X"
    assert refused_in_one_line(await api.get({"Authorization": f"Bearer {wrong}"})) \
        == "invalid token"
    assert refused_in_one_line(await api.get(auth=("grafana", "nope-nope-nope-nope"))) \
        == "invalid token"
    assert "expired" in refused_in_one_line(await api.get({"Authorization": f"Bearer {OLD}"}))
    assert "malformed" in refused_in_one_line(await api.get({"Authorization": "Basic %%%"}))
    assert api.refused == ["missing", "invalid", "invalid", "expired", "malformed"]
    assert (await api.get({"Authorization": f"Bearer {wrong}"})).headers[
        "WWW-Authenticate"].startswith("Bearer")
    for secret in (ACME, wrong, OLD, "nope-nope-nope-nope"):
        assert secret not in caplog.text
    async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=api.ca)) as client:
        assert (await client.get(api.url + "/-/healthy")).text == "ok"


@SESSION_LOOP
async def test_tls_only_with_the_configured_certificate(api: Api) -> None:
    with pytest.raises(httpx.HTTPError):
        async with httpx.AsyncClient() as client:
            await client.get(api.url.replace("https", "http") + "/api/v1/labels")
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        other = ssl.create_default_context(cafile=str(ensure_certs()["other_ca"]))
        async with httpx.AsyncClient(verify=other) as client:
            await client.get(api.url + "/api/v1/labels")


def test_unloadable_certificate_is_one_line(tmp_path: Path) -> None:
    certs = ensure_certs()
    access = parse_access({"tls": {"cert_file": str(certs["cert"]),
                                   "key_file": str(certs["ca_key"])}}, {})
    assert access.tls is not None
    with pytest.raises(ConfigError, match=r"^config: read_api.tls: cert_file .* do not load"):
        server_context(access.tls)


@pytest.fixture
def vcd() -> Any:
    with VcdDouble() as double:
        yield double


async def test_vcd_session_token_reads_as_its_org(vcd: VcdDouble) -> None:
    api = Api({"tokens": TOKENS, "vcd_sessions": {
        "url": vcd.url, "tls": {"ca_file": vcd.ca_file}, "cache_seconds": 60}})
    await api.start()
    try:
        beta = vcd.tenant_session("alice", "beta")
        headers = {"Authorization": f"Bearer {beta}"}
        answers = await asyncio.gather(*(api.get(headers) for _ in range(8)))
        assert {a.text for a in answers} == {json.dumps(
            {"name": "vcd:alice@beta", "scope": ["beta"]})}
        checker = api.authenticator.vcd
        assert checker is not None and checker.calls == 1  # one vCD call, then the cache
        asked = [r for r in vcd.requests if r[1] == "/cloudapi/1.0.0/sessions/current"]
        assert asked and asked[0][3].startswith("application/json;version=37.0")
        # A static token never reaches vCD.
        assert (await api.get({"Authorization": f"Bearer {ACME}"})).status_code == 200
        assert checker.calls == 1
        # vCD refuses it: 401, and the refusal is cached too.
        bogus = {"Authorization": "Bearer not-a-vcd-session-token"}
        assert refused_in_one_line(await api.get(bogus)) == "invalid token"
        assert refused_in_one_line(await api.get(bogus)) == "invalid token"
        assert checker.calls == 2
        # The System org is refused by default.
        provider = vcd.tenant_session("administrator", "System")
        refused_in_one_line(await api.get({"Authorization": f"Bearer {provider}"}))
        # vCD down: 503 in one line, never an answer.
        vcd.go_down("503")
        fresh = vcd.tenant_session("bob", "beta")
        message = refused_in_one_line(await api.get({"Authorization": f"Bearer {fresh}"}), 503)
        assert "HTTP 503" in message
        vcd.come_back()
        assert (await api.get({"Authorization": f"Bearer {fresh}"})).json()["scope"] == ["beta"]
    finally:
        await api.close()


async def test_vcd_session_ended_is_refused_after_the_cache(vcd: VcdDouble) -> None:
    api = Api({"vcd_sessions": {"url": vcd.url, "tls": {"ca_file": vcd.ca_file},
                                "cache_seconds": 0, "system_org": "provider"}})
    await api.start()
    try:
        token = vcd.tenant_session("administrator", "System")
        headers = {"Authorization": "Basic " + base64.b64encode(f"x:{token}".encode()).decode()}
        assert (await api.get(headers)).json() == {"name": "vcd:administrator@System",
                                                   "scope": None}
        vcd.expire_tokens()
        refused_in_one_line(await api.get(headers))
    finally:
        await api.close()
