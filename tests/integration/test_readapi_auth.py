"""Authentication of the read API, on the real server over TLS: API tokens (bearer and
basic), expiry, refusals in one line, and vCD session tokens checked against
tests/vcd_double.py (the one vCD double; no vCD simulator exists). Which orgs a reader sees
is read back through ``/api/v1/label/org/values`` over a fleet of three orgs."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from peers.common import ensure_certs
from statsfeeder.config import CassandraConfig
from statsfeeder.errors import ConfigError
from statsfeeder.readapi.access_config import parse_access
from statsfeeder.readapi.auth import server_context
from tests.helpers import cassandra_config, drop_keyspace
from tests.tenancy_fleet import ApiThread, fleet, write_fleet
from tests.vcd_double import VcdDouble

ACME = "acme-token-0123456789abcdef"
OPS = "ops-token-0123456789abcdef"
OLD = "old-token-0123456789abcdef"
ORGS = "/api/v1/label/org/values"


def sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


TOKENS = [{"name": "acme", "token_sha256": sha(ACME), "orgs": ["acme"]},
          {"name": "ops", "token_sha256": sha(OPS), "provider": True},
          {"name": "old", "token_sha256": sha(OLD), "orgs": ["acme"],
           "expires": "2021-06-01T00:00:00+00:00"}]


def tls() -> dict[str, str]:
    certs = ensure_certs()
    return {"cert_file": str(certs["cert"]), "key_file": str(certs["key"])}


def client(ca: str | None = None) -> httpx.Client:
    cafile = ca or str(ensure_certs()["ca"])
    return httpx.Client(verify=ssl.create_default_context(cafile=cafile), timeout=60)


@pytest.fixture(scope="module")
def keyspace(cassandra_env: dict[str, str]) -> Iterator[CassandraConfig]:
    config = cassandra_config(cassandra_env, keyspace=f"au_{uuid.uuid4().hex[:10]}")
    asyncio.run(write_fleet(config, fleet()))
    yield config
    from statsfeeder.sinks.cassandra.session import connect

    cluster, session = connect(config)
    drop_keyspace(session, config.keyspace)
    cluster.shutdown()


@pytest.fixture(scope="module")
def vcd() -> Iterator[VcdDouble]:
    with VcdDouble() as double:
        yield double


@pytest.fixture(scope="module")
def api(keyspace: CassandraConfig, vcd: VcdDouble) -> Iterator[ApiThread]:
    settings = {"tokens": TOKENS, "tls": tls(), "vcd_sessions": {
        "url": vcd.url, "tls": {"ca_file": vcd.ca_file}, "cache_seconds": 60}}
    with ApiThread(keyspace, settings) as server:
        yield server


def get(api: ApiThread, headers: dict[str, str] | None = None, *,
        auth: tuple[str, str] | None = None, path: str = ORGS) -> httpx.Response:
    with client() as http:
        return http.get(api.url + path, headers=headers or {}, auth=auth)


def refused_in_one_line(response: httpx.Response, status: int = 401) -> str:
    assert response.status_code == status, response.text
    assert response.text.count("\n") == 1 and response.text.endswith("\n")
    body = response.json()
    assert body["status"] == "error" and "data" not in body
    return str(body["error"])


def test_tokens_by_bearer_and_basic_read_their_orgs(api: ApiThread) -> None:
    assert get(api, {"Authorization": f"Bearer {ACME}"}).json()["data"] == ["acme"]
    assert get(api, auth=("grafana", ACME)).json()["data"] == ["acme"]
    assert get(api, {"Authorization": f"Bearer {OPS}"}).json()["data"] == [
        "acme", "beta", "gamma"]


def test_missing_wrong_expired_or_malformed_is_401(api: ApiThread,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = ACME[:-1] + "X"
    assert "missing credentials" in refused_in_one_line(get(api))
    assert refused_in_one_line(get(api, {"Authorization": f"Bearer {wrong}"})) == \
        "invalid token"
    assert refused_in_one_line(get(api, auth=("grafana", "nope-nope-nope-nope"))) == \
        "invalid token"
    assert "expired at 2021-06-01" in refused_in_one_line(
        get(api, {"Authorization": f"Bearer {OLD}"}))
    assert "malformed" in refused_in_one_line(get(api, {"Authorization": "Basic %%%"}))
    assert get(api, {"Authorization": f"Bearer {wrong}"}).headers[
        "WWW-Authenticate"].startswith("Bearer")
    assert "refused GET /api/v1/label/org/values" in caplog.text
    for secret in (ACME, wrong, OLD, "nope-nope-nope-nope", OPS):
        assert secret not in caplog.text


def test_only_tls_with_the_configured_certificate(api: ApiThread) -> None:
    with pytest.raises(httpx.HTTPError), httpx.Client() as plain:
        plain.get(api.url.replace("https", "http") + ORGS)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"), \
            client(str(ensure_certs()["other_ca"])) as other:
        other.get(api.url + ORGS)


def test_unloadable_certificate_is_one_line(tmp_path: Path) -> None:
    certs = ensure_certs()
    access = parse_access({"tls": {"cert_file": str(certs["cert"]),
                                   "key_file": str(certs["ca_key"])}}, {})
    assert access.tls is not None
    with pytest.raises(ConfigError, match=r"^config: read_api.tls: cert_file .* do not load"):
        server_context(access.tls)


def test_vcd_session_reads_as_its_org(api: ApiThread, vcd: VcdDouble) -> None:
    checker = api.api.authenticator.vcd if api.api.authenticator else None
    assert checker is not None
    before = checker.calls
    beta = {"Authorization": f"Bearer {vcd.tenant_session('alice', 'beta')}"}
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: get(api, beta), range(8)))
    assert {tuple(a.json()["data"]) for a in answers} == {("beta",)}
    assert checker.calls == before + 1  # concurrent requests share one vCD call, then cache
    asked = [r for r in vcd.requests if r[1] == "/cloudapi/1.0.0/sessions/current"]
    assert asked and asked[-1][3].startswith("application/json;version=37.0")
    get(api, {"Authorization": f"Bearer {ACME}"})
    assert checker.calls == before + 1  # an API token never reaches vCD
    bogus = {"Authorization": "Bearer not-a-vcd-session-token"}
    assert refused_in_one_line(get(api, bogus)) == "invalid token"
    assert refused_in_one_line(get(api, bogus)) == "invalid token"
    assert checker.calls == before + 2  # the refusal is cached too
    system = vcd.tenant_session("administrator", "System")
    refused_in_one_line(get(api, {"Authorization": f"Bearer {system}"}))
    vcd.go_down("503")
    try:
        fresh = {"Authorization": f"Bearer {vcd.tenant_session('bob', 'gamma')}"}
        assert "HTTP 503" in refused_in_one_line(get(api, fresh), 503)
    finally:
        vcd.come_back()
    assert get(api, fresh).json()["data"] == ["gamma"]


def test_ended_vcd_session_is_refused_once_the_cache_ends(keyspace: CassandraConfig,
                                                          vcd: VcdDouble) -> None:
    settings: dict[str, Any] = {"tls": tls(), "vcd_sessions": {
        "url": vcd.url, "tls": {"ca_file": vcd.ca_file}, "cache_seconds": 0,
        "system_org": "provider"}}
    with ApiThread(keyspace, settings) as api:
        token = vcd.tenant_session("administrator", "System")
        assert get(api, auth=("x", token)).json()["data"] == ["acme", "beta", "gamma"]
        vcd.expire_tokens()
        refused_in_one_line(get(api, auth=("x", token)))


def test_a_server_without_credentials_refuses_to_start(keyspace: CassandraConfig) -> None:
    with pytest.raises(ConfigError, match="read_api: no tokens and no vcd_sessions"), \
            ApiThread(keyspace, {}):
        pass
