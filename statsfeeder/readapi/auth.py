"""Authentication of the query API: every request names a reader, whose scope (the vCD orgs
it may see, None for provider-wide) the read paths apply.

Credentials: ``Authorization: Bearer <token>``, or basic auth with the token as password
(Grafana's data source can send either). A token is matched against the configured API
tokens by SHA-256 digest with constant-time comparisons over all of them; a token that
matches none is, when ``vcd_sessions`` is configured, asked of vCD as a session token.
Missing, wrong or expired credentials: HTTP 401 and one line (``refusal``), before any work; vCD
unable to answer: 503. Tokens are never logged; refusals are logged with the reason, the
client address and the token's name when one matched.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import ssl
from collections.abc import Callable
from datetime import UTC, datetime

from aiohttp import web

from statsfeeder.errors import ConfigError
from statsfeeder.readapi.access_config import ApiTLS, ReadApiAccess, token_digest
from statsfeeder.readapi.vcd_sessions import Principal, VcdSessionChecker

log = logging.getLogger(__name__)

MAX_TOKEN_LENGTH = 8192
ANONYMOUS = Principal("anonymous", None)


class Unauthorized(Exception):
    """Refused credentials; the message is the one line the client sees, ``kind`` one of
    missing, malformed, invalid, expired."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class Authenticator:
    def __init__(self, access: ReadApiAccess, *,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC),
                 vcd: VcdSessionChecker | None = None) -> None:
        self.access = access
        self._now = now
        self._tokens = list(access.tokens)
        self.vcd = vcd if vcd is not None else (
            VcdSessionChecker(access.vcd_sessions) if access.vcd_sessions else None)

    async def authenticate(self, authorization: str | None) -> Principal:
        """The reader named by an ``Authorization`` header value; ``Unauthorized`` or
        ``VcdCheckUnavailable`` otherwise."""
        token = credential(authorization)
        if token is None:
            if self.access.anonymous and not authorization:
                return ANONYMOUS
            if not authorization:
                raise Unauthorized("missing credentials: send Authorization: Bearer <token>",
                                   "missing")
            raise Unauthorized("malformed Authorization header", "malformed")
        digest = token_digest(token)
        matched = None
        for candidate in self._tokens:
            # Every digest is compared, so the time taken does not tell which one matched.
            if hmac.compare_digest(candidate.digest, digest) and matched is None:
                matched = candidate
        if matched is not None:
            if matched.expires is not None and self._now() >= matched.expires:
                raise Unauthorized(f"token {matched.name} expired at "
                                   f"{matched.expires.isoformat()}", "expired")
            return Principal(matched.name, matched.scope)
        if self.vcd is not None:
            found = await self.vcd.principal(token)
            if found is not None:
                return found
        raise Unauthorized("invalid token", "invalid")

    async def close(self) -> None:
        if self.vcd is not None:
            await self.vcd.close()


def credential(authorization: str | None) -> str | None:
    """The token in a ``Bearer`` or ``Basic`` (token as password, or as user name when the
    password is empty) header value, None when there is none or it is malformed."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    value = value.strip()
    token: str | None = None
    if scheme.lower() == "bearer":
        token = value
    elif scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, _, password = decoded.partition(":")
        token = password or user
    if not token or len(token) > MAX_TOKEN_LENGTH or not token.isprintable() or " " in token:
        return None
    return token


def refusal(message: str, status: int = 401) -> web.HTTPException:
    """A 401 (or 503) in Prometheus's error envelope on one line, so Grafana shows the
    reason; raised by the server's authorize hook before any work."""
    error_type = "unauthorized" if status == 401 else "unavailable"
    body = json.dumps({"status": "error", "errorType": error_type, "error": message})
    headers = {"WWW-Authenticate": 'Bearer realm="statsfeeder"'} if status == 401 else {}
    kind = web.HTTPUnauthorized if status == 401 else web.HTTPServiceUnavailable
    return kind(text=body + "\n", content_type="application/json", headers=headers)


def server_context(tls: ApiTLS, where: str = "read_api.tls") -> ssl.SSLContext:
    """The API's TLS context (1.2 or newer) from its certificate chain and key files."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    except ssl.SSLError as exc:  # before OSError, its base class
        raise ConfigError(f"config: {where}: cert_file {tls.cert_file} and key_file "
                          f"{tls.key_file} do not load ({exc.reason or exc})") from None
    except OSError as exc:
        raise ConfigError(f"config: {where}: cannot read {exc.filename or 'a file'}: "
                          f"{exc.strerror}") from None
    return context
