"""Field checks the configuration models share: secrets read from a file or the environment,
URLs without credentials in them, CA bundles that exist and hold PEM certificates, and names
safe to place in CQL. Each raises ``ValueError`` with a message that never contains a secret:
what an operator pasted into ``password_env`` or ``password_file`` may be the password itself.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import SecretStr

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
CONVENTIONAL_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
"""Names shown back in errors: a pasted password is rarely all capitals and underscores."""
DATACENTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
"""What snitches produce (dc1, us-east-1, DC_2); anything else never reaches CQL."""


def read_secret(value: SecretStr | None, file: Path | None, env: str | None,
                where: str, environ: Mapping[str, str]) -> SecretStr | None:
    if file is not None:
        # An absolute path is shown (it helps find the mount); anything else may be the secret.
        shown = f" {file}" if str(file).startswith("/") and " " not in str(file) else ""
        try:
            return SecretStr(file.read_bytes().decode("utf-8").strip())
        except OSError as exc:
            raise ValueError(f"cannot read {where}_file{shown}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ValueError(f"{where}_file{shown}: not UTF-8 text") from None
    if env is not None:
        if not ENV_NAME.match(env):
            raise ValueError(f"{where}_env: not a valid environment variable name (give the "
                             "variable's name, not the secret)")
        if env not in environ:
            if CONVENTIONAL_ENV_NAME.match(env):
                raise ValueError(f"{where}_env names {env}, which is not set")
            raise ValueError(f"{where}_env: the variable it names is not set")
        return SecretStr(environ[env])
    return value


def url_without_credentials(url: str) -> str:
    if "@" in urlsplit(url).netloc:
        raise ValueError("credentials inside the URL (user:password@) are not allowed: "
                         "use the credentials section")
    return url


def redact_url(text: str) -> str:
    """``https://u:p@host/x`` -> ``https://***@host/x`` for messages."""
    return re.sub(r"(?<=://)[^/@\s]*@", "***@", text)


def pem_ca_file(path: Path | None) -> Path | None:
    """A CA bundle must exist and hold at least one PEM certificate OpenSSL can load."""
    if path is None:
        return None
    if not path.is_file():
        raise ValueError("no such file" if not path.exists() else "not a regular file")
    try:
        text = path.read_bytes().decode("ascii")
    except OSError as exc:
        raise ValueError(f"cannot read it: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError("not a PEM file (binary content: convert DER with "
                         "'openssl x509 -inform der')") from None
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise ValueError("not a PEM certificate bundle (no BEGIN CERTIFICATE block)")
    try:
        ssl.create_default_context().load_verify_locations(cadata=text)
    except ssl.SSLError as exc:
        raise ValueError(f"not a valid PEM certificate bundle ({exc.reason or 'unreadable'})"
                         ) from None
    return path


def datacenter_name(name: str) -> str:
    if not DATACENTER_NAME.match(name):
        raise ValueError("not a valid datacenter name (letters, digits, '-', '_', '.'; as "
                         "nodetool status shows it)")
    return name
