"""Reading the configuration: the YAML file (UTF-8), ``STATSFEEDER_*`` environment overrides
(into sections and list entries), and one-line errors that name the key and never a secret.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from statsfeeder.config import CassandraConfig, Config, ReadApiConfig, TelemetryConfig
from statsfeeder.config_checks import redact_url
from statsfeeder.errors import ConfigError

ENV_PREFIX = "STATSFEEDER_"
SECRET_WORDS = ("password", "credentials", "secret", "token")
"""A value under a key containing one of these is never shown back."""


def _apply_env(raw: dict[str, Any], environ: dict[str, str]) -> dict[str, Any]:
    """``STATSFEEDER_CASSANDRA__TTL_DAYS=7`` sets ``cassandra.ttl_days``;
    ``STATSFEEDER_VCENTERS__0__URL`` the first vCenter's url. Values parse as YAML."""
    for key, text in sorted(environ.items()):
        if not key.startswith(ENV_PREFIX) or "__" not in key:
            continue
        path = key[len(ENV_PREFIX):].lower().split("__")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            # The value may be a secret: name the variable and the problem only.
            problem = getattr(exc, "problem", None) or "invalid YAML"
            raise ConfigError(f"config: environment {key}: not valid YAML ({problem})") from None
        node: Any = raw
        for depth, part in enumerate(path):
            where = ".".join(path[:depth]) or "(top level)"
            last = depth == len(path) - 1
            if isinstance(node, dict):
                if last:
                    node[part] = value
                elif part not in node and path[depth + 1].isdigit():
                    name = ".".join(path[:depth + 1])
                    raise ConfigError(f"config: environment {key}: {name} is not in the file, "
                                      "so it has no entries to index; override the whole list "
                                      f"(STATSFEEDER_{'__'.join(path[:depth + 1]).upper()}="
                                      "'[...]')")
                else:
                    node = node.setdefault(part, {})
            elif isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"config: environment {key}: {where} has {len(node)} "
                                      f"entries; {part} is not an index into it (0-based)")
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
            else:
                raise ConfigError(f"config: environment {key}: {where} is not a section")
    return raw


def _shown(where: str, got: Any) -> str:
    if isinstance(got, dict | list) or any(word in where.lower() for word in SECRET_WORDS):
        return ""
    text = repr(got)
    return f" (got {redact_url(text)})"


def _one_line(exc: ValidationError, prefix: str = "") -> str:
    error = exc.errors()[0]
    loc = [str(p) for p in error["loc"]]
    if loc[-1:] == ["[key]"]:  # a mapping's key at fault: name the mapping, show the key
        loc = loc[:-2]
    where = ".".join([prefix, *loc] if prefix else loc) or "(top level)"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return f"config: {where}: unknown key"
    if error["type"] == "missing":
        return f"config: {where}: required key missing"
    more = f" [+{len(exc.errors()) - 1} more]" if len(exc.errors()) > 1 else ""
    return f"config: {where}: {message}{_shown(where, error.get('input'))}{more}"


def _sections(raw: Any, environ: dict[str, str] | None
              ) -> tuple[dict[str, Any], dict[str, str]]:
    """The file's top-level mapping with the ``STATSFEEDER_*`` overrides applied, and the
    environment that secrets are read from."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("config: the top level must be a mapping of sections")
    environ = dict(os.environ if environ is None else environ)
    return _apply_env(raw, environ), environ


def parse_config(raw: Any, environ: dict[str, str] | None = None) -> Config:
    raw, environ = _sections(raw, environ)
    try:
        return Config.model_validate(raw, context={"environ": environ})
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None


def load_config(path: Path, environ: dict[str, str] | None = None) -> Config:
    return parse_config(_read_yaml(path), environ)


def load_read_config(path: Path, environ: dict[str, str] | None = None
                     ) -> tuple[CassandraConfig, ReadApiConfig, TelemetryConfig]:
    """The cassandra, read_api and telemetry sections alone (``statsfeeder serve``): a read
    replica needs no vCenter credentials."""
    raw, environ = _sections(_read_yaml(path), environ)
    cassandra = parse_cassandra(raw.get("cassandra") or {}, environ)
    try:
        read_api = ReadApiConfig.model_validate(raw.get("read_api") or {},
                                                context={"environ": environ})
    except ValidationError as exc:
        raise ConfigError(_one_line(exc, "read_api")) from None
    try:
        telemetry = TelemetryConfig.model_validate(raw.get("telemetry") or {})
    except ValidationError as exc:
        raise ConfigError(_one_line(exc, "telemetry")) from None
    return cassandra, read_api, telemetry


def _read_yaml(path: Path) -> Any:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"config: cannot read {path}: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ConfigError(f"config: {path} line {line}: not UTF-8 text (byte "
                          f"0x{data[exc.start]:02x}); save the file as UTF-8") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"config: {path}{where}: {problem}") from None
    return raw


def parse_cassandra(raw: dict[str, Any], environ: dict[str, str] | None = None
                    ) -> CassandraConfig:
    """The cassandra section alone (the schema, query and entities commands)."""
    try:
        return CassandraConfig.model_validate(
            raw, context={"environ": dict(os.environ if environ is None else environ)})
    except ValidationError as exc:
        raise ConfigError(_one_line(exc, "cassandra")) from None
