"""Read API access configuration: tokens only from files or the environment, each bound to
orgs or provider-wide; bad entries are one line naming the key, never echoing a token."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

import pytest

from statsfeeder.errors import ConfigError
from statsfeeder.readapi.access_config import ReadApiAccess, parse_access
from statsfeeder.readapi.auth import credential

TOKEN = "t0k3n-0123456789abcdef"


def access(raw: dict[str, Any], environ: dict[str, str] | None = None) -> ReadApiAccess:
    return parse_access(raw, environ or {})


def test_tokens_from_file_env_and_digest(tmp_path: Path) -> None:
    path = tmp_path / "acme.token"
    path.write_text(TOKEN + "\n")
    digest = hashlib.sha256(b"another-token-0123456789").hexdigest()
    config = access({"tokens": [
        {"name": "acme", "token_file": str(path), "orgs": ["acme"]},
        {"name": "ops", "token_env": "OPS_TOKEN", "provider": True},
        {"name": "hashed", "token_sha256": digest, "orgs": ["beta", "gamma"],
         "expires": "2027-01-01T00:00:00Z"},
    ]}, {"OPS_TOKEN": "ops-token-0123456789"})
    acme, ops, hashed = config.tokens
    assert acme.digest == hashlib.sha256(TOKEN.encode()).digest()
    assert acme.scope == frozenset({"acme"}) and ops.scope is None
    assert hashed.scope == frozenset({"beta", "gamma"})
    assert TOKEN not in repr(config) and "ops-token" not in repr(config)


@pytest.mark.parametrize(("entry", "message"), [
    ({"name": "a", "token": TOKEN, "orgs": ["x"]}, "read_api.tokens.0.token: unknown key"),
    ({"name": "a", "token_sha256": TOKEN, "orgs": ["x"]}, "tokens.0.token_sha256: String"),
    ({"name": "a", "token_env": "T", "orgs": ["x"], "provider": True}, "either orgs"),
    ({"name": "a", "token_env": "T"}, "either orgs"),
    ({"name": "a", "orgs": ["x"]}, "exactly one of token_file"),
    ({"name": "a", "token_env": "UNSET", "orgs": ["x"]}, "token_env names UNSET"),
    ({"name": "a", "token_env": "SHORT", "orgs": ["x"]}, "shorter than 16"),
    ({"name": "a", "token_file": "/nonexistent/t", "orgs": ["x"]}, "cannot read token_file"),
    ({"name": "a", "token_env": "T", "orgs": ["x"], "expires": "2027-01-01T00:00:00"},
     "timezone"),
])
def test_bad_token_entries_say_why_without_the_token(entry: dict[str, Any],
                                                     message: str) -> None:
    with pytest.raises(ConfigError) as info:
        access({"tokens": [entry]}, {"T": TOKEN, "SHORT": "abc"})
    assert message in str(info.value)
    assert TOKEN not in str(info.value) and "\n" not in str(info.value)


def test_names_and_values_unique() -> None:
    env = {"A": TOKEN, "B": TOKEN}
    with pytest.raises(ConfigError, match="same value as an earlier one"):
        access({"tokens": [{"name": "a", "token_env": "A", "orgs": ["x"]},
                           {"name": "b", "token_env": "B", "orgs": ["y"]}]}, env)
    with pytest.raises(ConfigError, match="token name a used twice"):
        access({"tokens": [{"name": "a", "token_env": "A", "orgs": ["x"]},
                           {"name": "a", "token_sha256": "0" * 64, "orgs": ["y"]}]}, env)


def test_api_tls_files_must_be_readable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read cert_file"):
        access({"tls": {"cert_file": str(tmp_path / "no.pem"), "key_file": str(tmp_path)}})


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(("header", "token"), [
    (f"Bearer {TOKEN}", TOKEN),
    (f"bearer   {TOKEN} ", TOKEN),
    (basic("grafana", TOKEN), TOKEN),
    (basic(TOKEN, ""), TOKEN),
    (basic("user", "pass:with:colons"), "pass:with:colons"),
    (None, None),
    ("", None),
    ("Bearer", None),
    ("Bearer a b", None),
    ("Basic !!!", None),
    ("Digest abc", None),
    ("Bearer " + "x" * 9000, None),
    ("Bearer tok\x00en", None),
])
def test_credential_from_bearer_or_basic(header: str | None, token: str | None) -> None:
    assert credential(header) == token


def test_validate_offline_checks_the_read_api(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from peers.common import ensure_certs
    from statsfeeder.config import parse_config
    from statsfeeder.validate import validate

    certs = ensure_certs()
    vc = {"name": "vc1", "url": "https://vc1.example/sdk",
          "credentials": {"username": "u", "password": "p"}}

    def config(read_api: dict[str, Any]) -> Any:
        return parse_config({"vcenters": [vc], "read_api": {"enabled": True, **read_api}},
                            environ={"T": TOKEN})

    token = [{"name": "a", "token_env": "T", "orgs": ["acme"]}]
    good = {"cert_file": str(certs["cert"]), "key_file": str(certs["key"])}
    assert validate(config({"tokens": token, "tls": good}), offline=True) == 0
    assert validate(config({}), offline=True) == 1
    assert "no tokens and no vcd_sessions" in capsys.readouterr().err
    bad = {"cert_file": str(certs["cert"]), "key_file": str(certs["ca_key"])}
    assert validate(config({"tokens": token, "tls": bad}), offline=True) == 1
    assert "read_api.tls: cert_file" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="anonymous: true is for a loopback"):
        config({"anonymous": True, "listen": "0.0.0.0:9275"})
    assert validate(config({"anonymous": True}), offline=True) == 0


async def test_expiry_is_checked_at_each_request() -> None:
    from datetime import UTC, datetime, timedelta

    from statsfeeder.readapi.auth import Authenticator, Unauthorized

    expires = datetime(2027, 1, 1, tzinfo=UTC)
    config = access({"tokens": [{"name": "a", "token_env": "T", "orgs": ["acme"],
                                 "expires": expires.isoformat()}]}, {"T": TOKEN})
    clock = [expires - timedelta(seconds=1)]
    auth = Authenticator(config, now=lambda: clock[0])
    assert (await auth.authenticate(f"Bearer {TOKEN}")).scope == frozenset({"acme"})
    clock[0] = expires
    with pytest.raises(Unauthorized, match="token a expired at 2027-01-01") as info:
        await auth.authenticate(f"Bearer {TOKEN}")
    assert info.value.kind == "expired"
    anonymous = Authenticator(access({"anonymous": True}))
    assert (await anonymous.authenticate(None)).scope is None
    with pytest.raises(Unauthorized, match="invalid token"):
        await anonymous.authenticate(f"Bearer {TOKEN}")  # a wrong token is never anonymous
