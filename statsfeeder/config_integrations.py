"""Configuration of the optional integrations: KairosDB (hybrid mode) and the vCD API that
maps vCenter VMs to vCD entities."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from statsfeeder.config_base import TLS, CAFile, Credentials, PlainURL, Strict


class KairosDBConfig(Strict):
    """KairosDB 1.3 over its REST API, written next to Cassandra ("hybrid mode").

    Metric names are ``metric_prefix`` + the vCenter counter (``cpu.usage.average``); values
    are in the unit vCD shows (percent, not hundredths); tags are those of ``tags``."""

    class ServerTLS(Strict):
        ca_file: CAFile | None = None
        """PEM bundle to verify an https ``url`` with; None uses the system store."""
        insecure: bool = False
        """Skip certificate verification entirely (logs a warning at open)."""

    enabled: bool = False
    url: Annotated[str, Field(pattern=r"^https?://[^/\s]+(/\S*)?$"),
                   PlainURL] = "http://127.0.0.1:8080"
    """Base URL: ``/api/v1/...`` is appended (a path prefix behind a reverse proxy is kept)."""
    credentials: Credentials | None = None
    """HTTP basic auth (``kairosdb.jetty.basic_auth.user`` on the server)."""
    allow_credentials_over_http: bool = False
    """Basic auth over an ``http://`` url sends the password in clear text: refused unless
    this is true (e.g. KairosDB on the same host or behind a tunnel)."""
    tls: ServerTLS = ServerTLS()
    metric_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9./_-]*$", max_length=100)] = ""
    """E.g. ``vcloud.`` gives ``vcloud.cpu.usage.average``."""
    tags: tuple[Literal["vm", "org", "vdc", "vapp", "vcenter", "moref", "instance"], ...] = (
        "vm", "org", "vdc", "vapp", "vcenter", "moref", "instance")
    """Tags written with every datapoint; KairosDB needs at least one."""
    tag_charset: Literal["any", "strict"] = "any"
    """``any``: tag values sent exactly as they are (``urn:vcloud:vm:<uuid>``, "ACME Corp"),
    which KairosDB 1.2+ stores and returns unchanged through its REST API; ``strict``: only
    ``A-Za-z0-9-./_`` kept (others become ``_``), for tools that read through the telnet API
    or older KairosDB."""
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

    @model_validator(mode="after")
    def _no_clear_text_password(self) -> KairosDBConfig:
        if (self.enabled and self.credentials is not None and self.url.startswith("http://")
                and not self.allow_credentials_over_http):
            raise ValueError("credentials over an http:// url send the password in clear "
                             "text: use https, or set kairosdb.allow_credentials_over_http: true")
        return self

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
        """The vCD query service, read as system administrator (``transforms/vcd/``)."""

        url: Annotated[str, Field(pattern=r"^https://[^/\s]+(/api|/cloudapi)?/?$"), PlainURL]
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
