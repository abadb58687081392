"""Typed, validated configuration: one YAML file, ``STATSFEEDER_*`` environment overrides, and
secrets read from files or the environment. No I/O besides reading those files.

A bad key or value raises ``ConfigError`` with one line naming it, e.g.
``config: cassandra.ttl_days: Input should be greater than 0 (got -3)``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from statsfeeder.errors import ConfigError

DEFAULT_METRICS = (
    "cpu.usage.average",
    "cpu.usagemhz.average",
    "cpu.usage.maximum",
    "mem.usage.average",
    "disk.provisioned.latest",
    "disk.used.latest",
    "disk.read.average",
    "disk.write.average",
    "net.received.average",
    "net.transmitted.average",
)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _read_secret(value: SecretStr | None, file: Path | None, env: str | None,
                 where: str, environ: Mapping[str, str]) -> SecretStr | None:
    if file is not None:
        try:
            return SecretStr(file.read_text().strip())
        except OSError as exc:
            raise ValueError(f"cannot read {where}_file {file}: {exc.strerror}") from None
    if env is not None:
        if env not in environ:
            raise ValueError(f"{where}_env names {env}, which is not set")
        return SecretStr(environ[env])
    return value


class Credentials(Strict):
    username: str
    password: SecretStr | None = None
    password_file: Path | None = None
    password_env: str | None = None

    @model_validator(mode="after")
    def _resolve_password(self, info: ValidationInfo) -> Credentials:
        environ = (info.context or {}).get("environ", os.environ)
        resolved = _read_secret(self.password, self.password_file, self.password_env, "password",
                                environ)
        if resolved is None:
            raise ValueError("one of password, password_file or password_env is required")
        object.__setattr__(self, "password", resolved)
        return self

    def secret(self) -> str:
        assert self.password is not None
        return self.password.get_secret_value()


class TLS(Strict):
    ca_file: Path | None = None
    """PEM bundle to verify the server with; None uses the system store."""
    thumbprint: str | None = None
    """SHA-256 fingerprint of the server certificate, for self-signed vCenters."""
    insecure: bool = False
    """Skip verification entirely (logs a warning at every connect)."""

    @field_validator("thumbprint")
    @classmethod
    def _normalise_thumbprint(cls, value: str | None) -> str | None:
        if value is None:
            return None
        digits = value.replace(":", "").lower()
        if len(digits) != 64 or any(c not in "0123456789abcdef" for c in digits):
            raise ValueError("must be a SHA-256 fingerprint: 64 hex digits, colons allowed")
        return digits


class MetricSpec(Strict):
    name: Annotated[str, Field(pattern=r"^[a-zA-Z]+\.[a-zA-Z0-9_]+\.[a-z]+$")]
    per_instance: bool = False
    """Also collect one series per disk / NIC / vCPU (instance ``*``), not just the aggregate."""


class VCenterConfig(Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]+$")]
    url: Annotated[str, Field(pattern=r"^https?://[^/\s]+(/sdk)?/?$")]
    credentials: Credentials
    tls: TLS = TLS()
    connect_timeout_seconds: Annotated[float, Field(gt=0)] = 10.0
    read_timeout_seconds: Annotated[float, Field(gt=0)] = 120.0
    max_query_metrics: Annotated[int, Field(ge=1)] = 16_000
    """Upper bound on entity × metric ids in one QueryPerf; the server's own
    config.vpxd.stats.maxQueryMetrics lowers it further when set."""
    concurrency: Annotated[int, Field(ge=1, le=32)] = 2
    requests_per_second: Annotated[float, Field(gt=0)] = 20.0

    @property
    def sdk_url(self) -> str:
        base = self.url.rstrip("/")
        return base if base.endswith("/sdk") else base + "/sdk"


class CollectionConfig(Strict):
    interval_seconds: Annotated[int, Field(ge=20, le=3600)] = 300
    overlap_seconds: Annotated[int, Field(ge=0, le=3000)] = 60
    """Re-ask this much before each VM's watermark: vCenter posts samples late under load."""
    max_lookback_seconds: Annotated[int, Field(ge=60, le=3600)] = 3300
    """Never ask further back than vCenter's realtime retention."""
    inventory_refresh_seconds: Annotated[int, Field(ge=30)] = 900
    format: Literal["csv", "normal"] = "csv"
    metrics: list[MetricSpec] = Field(
        default_factory=lambda: [MetricSpec(name=n) for n in DEFAULT_METRICS]
    )

    @field_validator("metrics", mode="before")
    @classmethod
    def _names_as_specs(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"name": item} if isinstance(item, str) else item for item in value]
        return value

    @field_validator("metrics")
    @classmethod
    def _unique(cls, value: list[MetricSpec]) -> list[MetricSpec]:
        seen: set[str] = set()
        for spec in value:
            if spec.name in seen:
                raise ValueError(f"metric {spec.name} listed twice")
            seen.add(spec.name)
        if not value:
            raise ValueError("at least one metric is required")
        return value


class Replication(Strict):
    strategy: Literal["SimpleStrategy", "NetworkTopologyStrategy"] = "SimpleStrategy"
    replication_factor: Annotated[int, Field(ge=1, le=9)] = 1
    datacenters: dict[str, Annotated[int, Field(ge=1, le=9)]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _dcs_for_nts(self) -> Replication:
        if self.strategy == "NetworkTopologyStrategy" and not self.datacenters:
            raise ValueError("NetworkTopologyStrategy needs datacenters: {name: rf}")
        return self

    def cql(self) -> str:
        if self.strategy == "SimpleStrategy":
            return ("{'class': 'SimpleStrategy', 'replication_factor': "
                    f"{self.replication_factor}}}")
        dcs = ", ".join(f"'{dc}': {rf}" for dc, rf in sorted(self.datacenters.items()))
        return f"{{'class': 'NetworkTopologyStrategy', {dcs}}}"


class CassandraTLS(Strict):
    enabled: bool = True
    ca_file: Path | None = None
    client_cert_file: Path | None = None
    client_key_file: Path | None = None
    check_hostname: bool = True


class CassandraConfig(Strict):
    enabled: bool = True
    hosts: Annotated[list[str], Field(min_length=1)] = Field(default_factory=lambda: ["127.0.0.1"])
    port: Annotated[int, Field(ge=1, le=65535)] = 9042
    credentials: Credentials | None = None
    tls: CassandraTLS = CassandraTLS()
    keyspace: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,47}$")] = "vcloud_metrics"
    ttl_days: Annotated[int, Field(gt=0, le=3650)] = 14
    replication: Replication = Replication()
    consistency: Literal["ONE", "LOCAL_ONE", "QUORUM", "LOCAL_QUORUM", "ALL"] = "LOCAL_QUORUM"
    local_datacenter: str | None = None
    max_in_flight: Annotated[int, Field(ge=1, le=4096)] = 128
    request_timeout_seconds: Annotated[float, Field(gt=0)] = 12.0
    connect_timeout_seconds: Annotated[float, Field(gt=0)] = 10.0
    write_retries: Annotated[int, Field(ge=0, le=20)] = 5


class KairosDBConfig(Strict):
    """KairosDB 1.3 over its REST API, written next to Cassandra ("hybrid mode").

    Metric names are ``metric_prefix`` + the vCenter counter (``cpu.usage.average``); values
    are in the unit vCD shows (percent, not hundredths); tags are those of ``tags``."""

    class ServerTLS(Strict):
        ca_file: Path | None = None
        """PEM bundle to verify an https ``url`` with; None uses the system store."""
        insecure: bool = False
        """Skip certificate verification entirely (logs a warning at open)."""

    enabled: bool = False
    url: Annotated[str, Field(pattern=r"^https?://[^/\s]+(/\S*)?$")] = "http://127.0.0.1:8080"
    """Base URL: ``/api/v1/...`` is appended (a path prefix behind a reverse proxy is kept)."""
    credentials: Credentials | None = None
    """HTTP basic auth (``kairosdb.jetty.basic_auth.user`` on the server)."""
    tls: ServerTLS = ServerTLS()
    metric_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9./_-]*$", max_length=100)] = ""
    """E.g. ``vcloud.`` gives ``vcloud.cpu.usage.average``."""
    tags: tuple[Literal["vm", "org", "vdc", "vapp", "vcenter", "moref", "instance"], ...] = (
        "vm", "org", "vdc", "vapp", "vcenter", "moref", "instance")
    """Tags written with every datapoint; KairosDB needs at least one."""
    tag_charset: Literal["strict", "any"] = "strict"
    """``strict``: tag values keep only ``A-Za-z0-9-./_`` (others become ``_``), the set every
    KairosDB version and its telnet API accept; ``any``: sent as they are (1.2+ REST API)."""
    ttl_days: Annotated[int, Field(gt=0, le=3650)] = 14
    """Per-datapoint TTL, as cassandra.ttl_days (honoured by KairosDB's Cassandra datastore;
    H2 ignores it). ``statsfeeder kairosdb purge`` refuses to delete inside it."""
    ttl_seconds_override: Annotated[int, Field(gt=0)] | None = None
    """Replaces ttl_days for the datapoints' TTL (tests: a few seconds)."""
    batch_max_samples: Annotated[int, Field(ge=1, le=1_000_000)] = 20_000
    """Datapoints per POST /api/v1/datapoints."""
    timeout_seconds: Annotated[float, Field(gt=0)] = 30.0
    connect_timeout_seconds: Annotated[float, Field(gt=0)] = 10.0
    retries: Annotated[int, Field(ge=0, le=20)] = 5
    """Retries of one request on connection errors, timeouts and HTTP 5xx (backoff + jitter)."""
    max_in_flight: Annotated[int, Field(ge=1, le=64)] = 4
    gzip: bool = True
    """Send request bodies gzip-compressed (``Content-Encoding: gzip``), about 4x smaller."""

    @field_validator("tags")
    @classmethod
    def _tags_unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one tag is required (KairosDB refuses a metric without)")
        if len(set(value)) != len(value):
            raise ValueError("a tag is listed twice")
        return value

    @property
    def ttl_seconds(self) -> int:
        return self.ttl_seconds_override or self.ttl_days * 86400

    @property
    def base_url(self) -> str:
        return self.url.rstrip("/")


class VcdConfig(Strict):
    """Where VMs get their vCD identity. Resolvers are asked in this order: ``mapping_file``
    (explicit overrides), ``api`` (the vCD query service), ``name_heuristic``."""

    class Api(Strict):
        """The vCD query service, read as system administrator (``transforms/vcd.py``)."""

        url: Annotated[str, Field(pattern=r"^https://[^/\s]+(/api|/cloudapi)?/?$")]
        """Base URL of the vCD cells (load balancer), e.g. ``https://vcd.example``."""
        credentials: Credentials
        """A provider (System org) user: ``administrator@System``."""
        tls: TLS = TLS()
        api_version: Annotated[str, Field(pattern=r"^\d+\.\d+$")] = "37.0"
        format: Literal["json", "xml"] = "json"
        """Media type asked of the query service; both carry the same records."""
        refresh_seconds: Annotated[int, Field(ge=60, le=86400)] = 900
        early_refresh_seconds: Annotated[int, Field(ge=1, le=3600)] = 60
        """Least spacing between two refreshes: an early one (a VM the map does not know yet
        appeared) or a retry after a failure."""
        page_size: Annotated[int, Field(ge=1, le=128)] = 128
        """Records per query page; vCD's maximum is 128."""
        timeout_seconds: Annotated[float, Field(gt=0)] = 60.0
        connect_timeout_seconds: Annotated[float, Field(gt=0)] = 10.0
        vcenter_names: dict[str, str] = Field(default_factory=dict)
        """vCD vCenter (its name in vCD, its uuid, or its vimServer id) -> statsfeeder vCenter
        name. vCD vCenters not listed are matched on their URL's host (and port)."""

        @property
        def base_url(self) -> str:
            base = self.url.rstrip("/")
            for suffix in ("/api", "/cloudapi"):
                base = base.removesuffix(suffix)
            return base

    mapping_file: Path | None = None
    """CSV or YAML exported by the provider: vm_id per (vcenter, moref) or instance_uuid."""
    api: Api | None = None
    """Map every VM from the vCD query service (authoritative); refreshed periodically."""
    name_heuristic: bool = False
    """Heuristic: a VM named ``<name> (<uuid>)`` in vCenter (how vCD names the VMs it
    creates) gets ``urn:vcloud:vm:<uuid>``. Off by default: names can be edited."""
    unmapped: Literal["keep", "skip"] = "keep"
    """VMs with no vCD id: keep them under urn:vcenter:<vCenter uuid>:vm:<instanceUuid>, or
    skip them: not queried at all, counted in statsfeeder_vms{state="skipped"}."""


class TelemetryConfig(Strict):
    listen: Annotated[str, Field(pattern=r"^[^:\s]*:\d{1,5}$")] = "127.0.0.1:9274"


class HAConfig(Strict):
    """Several instances (one beside each vCD cell) share the vCenters through leases held in
    Cassandra with lightweight transactions: each vCenter is collected by one instance at a
    time, and a dead instance's vCenters move to the others within about lease_seconds."""

    enabled: bool = False
    lease_seconds: Annotated[int, Field(ge=3, le=3600)] = 60
    """How long a lease outlives its holder's last renewal (renewed every third of it)."""
    instance_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:@-]{1,128}$")] = Field(
        default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    """Unique per running instance; the default, host:pid, is."""


class Config(Strict):
    vcenters: Annotated[list[VCenterConfig], Field(min_length=1)]
    collection: CollectionConfig = CollectionConfig()
    cassandra: CassandraConfig = CassandraConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    vcd: VcdConfig = VcdConfig()
    kairosdb: KairosDBConfig = KairosDBConfig()
    ha: HAConfig = HAConfig()

    @model_validator(mode="after")
    def _leases_need_cassandra(self) -> Config:
        if self.ha.enabled and not self.cassandra.enabled:
            raise ValueError("ha.enabled needs cassandra.enabled: the leases live there")
        return self

    @field_validator("vcenters")
    @classmethod
    def _unique_names(cls, value: list[VCenterConfig]) -> list[VCenterConfig]:
        names = [vc.name for vc in value]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"vCenter name {duplicates[0]} used twice")
        return value


ENV_PREFIX = "STATSFEEDER_"


def _apply_env(raw: dict[str, Any], environ: dict[str, str]) -> dict[str, Any]:
    """``STATSFEEDER_CASSANDRA__TTL_DAYS=7`` sets ``cassandra.ttl_days``; values parse as YAML."""
    for key, text in environ.items():
        if not key.startswith(ENV_PREFIX) or "__" not in key:
            continue
        path = key[len(ENV_PREFIX):].lower().split("__")
        node: Any = raw
        for part in path[:-1]:
            node = node.setdefault(part, {}) if isinstance(node, dict) else None
            if node is None:
                raise ConfigError(f"config: environment {key}: {part} is not a section")
        if isinstance(node, dict):
            node[path[-1]] = yaml.safe_load(text)
    return raw


def _one_line(exc: ValidationError, prefix: str = "") -> str:
    error = exc.errors()[0]
    where = ".".join([prefix, *(str(p) for p in error["loc"])] if prefix else
                     [str(p) for p in error["loc"]]) or "(top level)"
    message = error["msg"].removeprefix("Value error, ")
    got = error.get("input")
    if error["type"] == "extra_forbidden":
        return f"config: {where}: unknown key"
    if error["type"] == "missing":
        return f"config: {where}: required key missing"
    shown = "" if isinstance(got, dict | list) or "password" in where else f" (got {got!r})"
    more = f" [+{len(exc.errors()) - 1} more]" if len(exc.errors()) > 1 else ""
    return f"config: {where}: {message}{shown}{more}"


def parse_config(raw: Any, environ: dict[str, str] | None = None) -> Config:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("config: the top level must be a mapping of sections")
    environ = dict(os.environ if environ is None else environ)
    raw = _apply_env(raw, environ)
    try:
        return Config.model_validate(raw, context={"environ": environ})
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None


def load_config(path: Path, environ: dict[str, str] | None = None) -> Config:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"config: cannot read {path}: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"config: {path}{where}: {problem}") from None
    return parse_config(raw, environ)


def parse_cassandra(raw: dict[str, Any], environ: dict[str, str] | None = None
                    ) -> CassandraConfig:
    """The cassandra section alone (the schema, query and entities commands)."""
    try:
        return CassandraConfig.model_validate(
            raw, context={"environ": dict(os.environ if environ is None else environ)})
    except ValidationError as exc:
        raise ConfigError(_one_line(exc, "cassandra")) from None
