"""Configuration of who may read through the query API: API tokens (each provider-wide or
bound to vCD orgs, optionally expiring), vCD session tokens checked against vCD, and the
API's TLS certificate. Token values come from files or the environment (or only their
SHA-256 is written in the file); an inline token is refused, so a config file can be shared.

Validation reads the token files and environment variables, as ``Credentials`` does for
passwords; only each token's SHA-256 digest is kept. This module imports nothing from
``statsfeeder.config``, so that ``config.py`` can build its ``read_api`` section from it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from statsfeeder.errors import ConfigError

MIN_TOKEN_LENGTH = 16
"""Shorter tokens are refused: guessable, and they suggest a password pasted by mistake."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClientTLS(Strict):
    """How the API verifies vCD: ``ca_file`` (PEM) or the system store; ``insecure`` skips
    verification (logged at every new connection)."""

    ca_file: Path | None = None
    insecure: bool = False


class ApiToken(Strict):
    """One API token. ``orgs`` binds it to those vCD orgs (by name, as stored in the ``org``
    label); ``provider: true`` lets it read every org. Exactly one of the two."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.@:-]{1,64}$")]
    """Shown in logs and errors instead of the token."""
    token_file: Path | None = None
    token_env: str | None = None
    token_sha256: Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")] | None = None
    """The hex SHA-256 of the token, for files that must not hold the token itself."""
    orgs: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    provider: bool = False
    expires: AwareDatetime | None = None
    """After this instant (ISO 8601 with a zone) the token is refused with a 401."""
    _digest: bytes = PrivateAttr(default=b"")

    @model_validator(mode="after")
    def _resolve(self, info: ValidationInfo) -> ApiToken:
        if self.provider == bool(self.orgs):
            raise ValueError("give either orgs: [...] or provider: true (not both, not neither)")
        sources = [s for s in (self.token_file, self.token_env, self.token_sha256)
                   if s is not None]
        if len(sources) != 1:
            raise ValueError("exactly one of token_file, token_env or token_sha256 is required")
        environ = (info.context or {}).get("environ", os.environ)
        if self.token_sha256 is not None:
            self._digest = bytes.fromhex(self.token_sha256)
            return self
        if self.token_file is not None:
            try:
                token = self.token_file.read_text().strip()
            except (OSError, UnicodeDecodeError) as exc:
                reason = getattr(exc, "strerror", None) or "not text"
                raise ValueError(f"cannot read token_file {self.token_file}: {reason}") from None
            where = f"token_file {self.token_file}"
        else:
            assert self.token_env is not None
            if self.token_env not in environ:
                raise ValueError(f"token_env names {self.token_env}, which is not set")
            token = environ[self.token_env].strip()
            where = f"token_env {self.token_env}"
        if len(token) < MIN_TOKEN_LENGTH:
            raise ValueError(f"the token in {where} is shorter than {MIN_TOKEN_LENGTH} "
                             "characters")
        self._digest = token_digest(token)
        return self

    @property
    def digest(self) -> bytes:
        return self._digest

    @property
    def scope(self) -> frozenset[str] | None:
        return None if self.provider else frozenset(self.orgs)


class VcdSessions(Strict):
    """Accept vCD session tokens (``Authorization: Bearer <vCD access token>``) and learn
    their org from ``GET /cloudapi/1.0.0/sessions/current``; the answer is cached briefly."""

    url: Annotated[str, Field(pattern=r"^https://[^/\s]+/?$")]
    """Base URL of the vCD cells, e.g. ``https://vcd.example``."""
    tls: ClientTLS = ClientTLS()
    api_version: Annotated[str, Field(pattern=r"^\d+\.\d+$")] = "37.0"
    cache_seconds: Annotated[int, Field(ge=0, le=3600)] = 60
    """How long a session's org is trusted without asking vCD again (a session vCD ended
    keeps reading this long)."""
    refused_cache_seconds: Annotated[int, Field(ge=0, le=3600)] = 10
    """How long a token vCD refused is refused without asking again (no amplification)."""
    timeout_seconds: Annotated[float, Field(gt=0)] = 10.0
    system_org: Literal["refuse", "provider"] = "refuse"
    """A session of vCD's System org: refused, or read provider-wide."""

    @property
    def base_url(self) -> str:
        return self.url.rstrip("/")


class ApiTLS(Strict):
    """The API's own certificate (PEM chain first, then its key, each in a file)."""

    cert_file: Path
    key_file: Path

    @model_validator(mode="after")
    def _readable(self) -> ApiTLS:
        for key in ("cert_file", "key_file"):
            path: Path = getattr(self, key)
            try:
                path.read_bytes()
            except OSError as exc:
                raise ValueError(f"cannot read {key} {path}: {exc.strerror}") from None
        return self


class ReadApiAccess(Strict):
    """Who may read. With no tokens and no vcd_sessions every request is refused, unless
    ``anonymous: true`` (development on a loopback listener only)."""

    tokens: list[ApiToken] = Field(default_factory=list)
    vcd_sessions: VcdSessions | None = None
    tls: ApiTLS | None = None
    anonymous: bool = False
    """Answer requests without credentials provider-wide. Never on a shared network."""

    @field_validator("tokens")
    @classmethod
    def _unique(cls, value: list[ApiToken]) -> list[ApiToken]:
        names: set[str] = set()
        digests: set[bytes] = set()
        for token in value:
            if token.name in names:
                raise ValueError(f"token name {token.name} used twice")
            if token.digest in digests:
                raise ValueError(f"token {token.name} has the same value as an earlier one")
            names.add(token.name)
            digests.add(token.digest)
        return value


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def parse_access(raw: Any, environ: Mapping[str, str] | None = None,
                 where: str = "read_api") -> ReadApiAccess:
    """The access section alone; ``ConfigError`` with one line that never shows a token."""
    from statsfeeder.config_loading import _one_line

    try:
        return ReadApiAccess.model_validate(
            raw or {}, context={"environ": dict(os.environ if environ is None else environ)})
    except ValidationError as exc:
        raise ConfigError(_one_line(exc, where)) from None
