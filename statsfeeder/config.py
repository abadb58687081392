"""Typed, validated configuration: one YAML file, ``STATSFEEDER_*`` environment overrides, and
secrets read from files or the environment. No I/O besides reading those files.

A bad key or value raises ``ConfigError`` with one line naming it, e.g.
``config: cassandra.ttl_days: Input should be greater than 0 (got -3)``.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from statsfeeder.config_base import TLS as TLS
from statsfeeder.config_base import CAFile, PlainURL, Strict
from statsfeeder.config_base import Credentials as Credentials
from statsfeeder.config_checks import (
    datacenter_name,
)
from statsfeeder.config_integrations import KairosDBConfig as KairosDBConfig
from statsfeeder.config_integrations import VcdConfig as VcdConfig
from statsfeeder.errors import ConfigError
from statsfeeder.readapi.access_config import ReadApiAccess

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




class MetricSpec(Strict):
    name: Annotated[str, Field(pattern=r"^[a-zA-Z]+\.[a-zA-Z0-9_]+\.[a-z]+$")]
    per_instance: bool = False
    """Also collect one series per disk / NIC / vCPU (instance ``*``), not just the aggregate."""


class VCenterConfig(Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]+$")]
    url: Annotated[str, Field(pattern=r"^https?://[^/\s]+(/sdk)?/?$"), PlainURL]
    credentials: Credentials
    tls: TLS = TLS()
    connect_timeout_seconds: Annotated[float, Field(gt=0)] = 10.0
    read_timeout_seconds: Annotated[float, Field(gt=0)] = 120.0
    """Longest any one vCenter call (login, inventory, one QueryPerf) may take, start to last
    byte: a vCenter that stalls or drips its answer is cut off here."""
    max_answer_bytes: Annotated[int, Field(ge=1_048_576)] | None = None
    """Largest QueryPerf answer read; a bigger one is treated like vCenter's own size limit
    (the chunk is halved). Default: sized from the chunk asked for (at least 16 MiB)."""
    max_query_metrics: Annotated[int, Field(ge=1)] = 16_000
    """Upper bound on entity × metric ids in one QueryPerf; the server's own
    config.vpxd.stats.maxQueryMetrics lowers it further when set."""
    concurrency: Annotated[int, Field(ge=1, le=32)] = 2
    requests_per_second: Annotated[float, Field(gt=0)] = 20.0

    @field_validator("url")
    @classmethod
    def _https_only(cls, value: str) -> str:
        if not value.startswith("https://"):
            raise ValueError("must be https:// (vCenter's SDK answers QueryPerf over HTTPS "
                             "only)")
        return value

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
    cycle_deadline_seconds: Annotated[float, Field(gt=0)] | None = None
    """A cycle still running this long after its start is abandoned (and counted); the next
    slot asks again. Default 0.8 x interval_seconds; must stay below it."""
    format: Literal["csv", "normal"] = "csv"
    metrics: list[MetricSpec] = Field(
        default_factory=lambda: [MetricSpec(name=n) for n in DEFAULT_METRICS]
    )

    @model_validator(mode="after")
    def _deadline_below_interval(self) -> CollectionConfig:
        if self.cycle_deadline_seconds is not None \
                and self.cycle_deadline_seconds >= self.interval_seconds:
            raise ValueError(f"cycle_deadline_seconds ({self.cycle_deadline_seconds:g}) must "
                             f"be below interval_seconds ({self.interval_seconds})")
        return self

    @property
    def cycle_deadline(self) -> float:
        return self.cycle_deadline_seconds or 0.8 * self.interval_seconds

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
    datacenters: dict[Annotated[str, AfterValidator(datacenter_name)],
                      Annotated[int, Field(ge=1, le=9)]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _dcs_for_nts(self) -> Replication:
        if self.strategy == "NetworkTopologyStrategy" and not self.datacenters:
            raise ValueError("NetworkTopologyStrategy needs datacenters: {name: rf}")
        return self

    def cql(self) -> str:
        if self.strategy == "SimpleStrategy":
            return ("{'class': 'SimpleStrategy', 'replication_factor': "
                    f"{self.replication_factor}}}")
        # Names are checked (datacenter_name); the quotes are doubled all the same.
        dcs = ", ".join(f"'{dc.replace(chr(39), chr(39) * 2)}': {rf}"
                        for dc, rf in sorted(self.datacenters.items()))
        return f"{{'class': 'NetworkTopologyStrategy', {dcs}}}"


class CassandraTLS(Strict):
    enabled: bool = True
    ca_file: CAFile | None = None
    client_cert_file: Path | None = None
    client_key_file: Path | None = None
    check_hostname: bool = True


class RollupConfig(Strict):
    """Hourly and daily roll-ups beside the raw samples (statsfeeder/rollups/, docs/schema.md):
    recomputed from the stored samples after each acknowledged write, so they match them."""

    enabled: bool = True
    hourly_days: Annotated[int, Field(gt=0, le=3650)] = 90
    """Retention of the hourly tier (per VM and per VDC/org), in days."""
    daily_days: Annotated[int, Field(gt=0, le=3650)] = 400
    """Retention of the daily tier, in days."""
    settle_seconds: Annotated[int, Field(ge=0, le=7200)] = 900
    """An hour is rolled up this long after it ends; samples that come later roll it up
    again. Less means fresher roll-ups, more work for hours still being written."""
    scan_hours: Annotated[int, Field(ge=2, le=720)] = 72
    """How far back the worker looks for hours marked for roll-up (and how long a mark
    lives): a service stopped longer with marks pending needs 'statsfeeder rollups rebuild'."""
    max_in_flight: Annotated[int, Field(ge=1, le=256)] = 16
    """Cassandra requests the roll-up worker keeps in flight (it also waits while a
    collection cycle runs, so roll-ups never delay collection)."""


class CassandraConfig(Strict):
    enabled: bool = True
    hosts: Annotated[list[str], Field(min_length=1)] = Field(default_factory=lambda: ["127.0.0.1"])
    port: Annotated[int, Field(ge=1, le=65535)] = 9042
    credentials: Credentials | None = None
    tls: CassandraTLS = CassandraTLS()
    keyspace: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,47}$")] = "vcloud_metrics"
    ttl_days: Annotated[int, Field(gt=0, le=3650)] = 14
    """Retention applied by ``schema create`` and ``schema update``; writes follow the samples
    table's default_time_to_live (a mismatch is reported at start-up and by validate)."""
    replication: Replication = Replication()
    consistency: Literal["ONE", "LOCAL_ONE", "QUORUM", "LOCAL_QUORUM", "ALL"] = "LOCAL_QUORUM"
    local_datacenter: Annotated[str, AfterValidator(datacenter_name)] | None = None
    max_in_flight: Annotated[int, Field(ge=1, le=4096)] = 128
    request_timeout_seconds: Annotated[float, Field(gt=0)] = 12.0
    connect_timeout_seconds: Annotated[float, Field(gt=0)] = 10.0
    write_retries: Annotated[int, Field(ge=0, le=20)] = 5
    rollups: RollupConfig = RollupConfig()


class TelemetryConfig(Strict):
    listen: Annotated[str, Field(pattern=r"^[^:\s]*:\d{1,5}$")] = "127.0.0.1:9274"

    @field_validator("listen")
    @classmethod
    def _port_in_range(cls, value: str) -> str:
        if int(value.rpartition(":")[2]) > 65535:
            raise ValueError("the port must be between 0 and 65535")
        return value


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


DEFAULT_WATERMARKS_FILE = Path("/var/lib/statsfeeder/watermarks.json")


class StateConfig(Strict):
    watermarks_file: Path | None = None
    """Local file (on a volume) keeping the per-VM watermarks across restarts, written
    atomically at the end of every cycle. Unset: /var/lib/statsfeeder/watermarks.json when
    cassandra is disabled (KairosDB only), none with Cassandra (watermarks live in its
    keyspace; set it to also keep KairosDB's progress across a restart during a Cassandra
    outage)."""


class ReadApiConfig(ReadApiAccess):
    """The Prometheus query API over the stored samples (``statsfeeder serve``, or inside
    ``run`` when enabled); docs/read-api.md. Who may read (``tokens``, ``vcd_sessions``,
    ``tls``, ``anonymous``) comes from ``ReadApiAccess``."""

    enabled: bool = False
    listen: Annotated[str, Field(pattern=r"^[^:\s]*:\d{1,5}$")] = "127.0.0.1:9275"
    lookback_minutes: Annotated[int, Field(ge=1, le=1440)] = 10
    """How far an instant selector looks back: samples land in 5-minute batches, often late."""
    query_timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = 120.0
    max_series: Annotated[int, Field(ge=1)] = 50_000
    """Most series one selector may load; more is refused (HTTP 422)."""
    max_samples: Annotated[int, Field(ge=1)] = 50_000_000
    """Most samples one query may hold in memory (Prometheus's query.max-samples)."""
    read_concurrency: Annotated[int, Field(ge=1, le=512)] = 32
    """Cassandra reads in flight for one query."""
    entities_cache_seconds: Annotated[float, Field(ge=0)] = 60.0
    """How long the VM list and metric units are reused before they are read again."""
    engine_binary: Path | None = None
    """A prebuilt PromQL engine; by default it is built once with Go and cached."""
    cache_mb: Annotated[int, Field(ge=0, le=1 << 20)] = 256
    """Memory for the stored windows of settled hours (0: every Select reads Cassandra)."""
    cache_settled_minutes: Annotated[int, Field(ge=10, le=10080)] = 90
    """Hours that ended this long ago are final and may be kept: more than a collector's
    ``collection.max_lookback_seconds`` plus one 5-minute window."""
    rollups: bool = True
    """Answer avg/max/min/sum/count_over_time over whole hours or days at an hour-aligned
    step from the roll-up tables (docs/operations.md lists exactly which queries)."""
    rollups_min_step_hours: Annotated[int, Field(ge=1, le=8760)] = 1
    """Smallest range-query step (whole hours) read from roll-ups; finer steps read raw."""
    rollups_fresh_hours: Annotated[int, Field(ge=0, le=72)] = 4
    """Buckets that ended this recently are folded from the raw samples instead (the
    roll-up worker may still be rewriting them with late samples)."""

    @model_validator(mode="after")
    def _anonymous_only_on_loopback(self) -> ReadApiConfig:
        if self.anonymous and self.listen.rpartition(":")[0] not in ("127.0.0.1", "localhost"):
            raise ValueError("anonymous: true is for a loopback listen address only "
                             "(127.0.0.1:PORT)")
        return self


class Config(Strict):
    vcenters: Annotated[list[VCenterConfig], Field(min_length=1)]
    collection: CollectionConfig = CollectionConfig()
    cassandra: CassandraConfig = CassandraConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    vcd: VcdConfig = VcdConfig()
    kairosdb: KairosDBConfig = KairosDBConfig()
    ha: HAConfig = HAConfig()
    state: StateConfig = StateConfig()
    read_api: ReadApiConfig = ReadApiConfig()

    @property
    def watermarks_file(self) -> Path | None:
        if self.state.watermarks_file is not None:
            return self.state.watermarks_file
        return None if self.cassandra.enabled else DEFAULT_WATERMARKS_FILE

    @field_validator("kairosdb")
    @classmethod
    def _tags_identify_a_series(cls, value: KairosDBConfig, info: ValidationInfo
                                ) -> KairosDBConfig:
        """Tags that leave two VMs (or two instances) alike make KairosDB overwrite one
        series with the other: refused."""
        if not value.enabled:
            return value
        tags = set(value.tags)
        shown = "[" + ", ".join(value.tags) + "]"
        if "vm" not in tags and not {"vcenter", "moref"} <= tags:
            raise ValueError(f"tags {shown} do not identify a VM, so different VMs' series "
                             "would overwrite each other: add vm (or vcenter and moref)")
        collection = info.data.get("collection")
        per_instance = [m.name for m in collection.metrics if m.per_instance] \
            if isinstance(collection, CollectionConfig) else []
        if per_instance and "instance" not in tags:
            raise ValueError(f"tags {shown} lack instance, which "
                             f"{per_instance[0]} (per_instance) needs: add instance")
        return value

    @model_validator(mode="after")
    def _a_sink_and_the_leases_store(self) -> Config:
        if not self.cassandra.enabled and not self.kairosdb.enabled:
            raise ValueError("no sink enabled: set cassandra.enabled or kairosdb.enabled "
                             "to true")
        if self.ha.enabled and not self.cassandra.enabled:
            raise ValueError("ha.enabled needs cassandra.enabled: the leases live there")
        if self.read_api.enabled and not self.cassandra.enabled:
            raise ValueError("read_api.enabled needs cassandra.enabled: it reads from there")
        return self

    @field_validator("read_api")
    @classmethod
    def _settled_after_the_lookback(cls, value: ReadApiConfig, info: ValidationInfo
                                    ) -> ReadApiConfig:
        """Hours a collector may still rewrite must not be kept by the read API."""
        collection = info.data.get("collection")
        if collection is not None and value.cache_mb and (
                value.cache_settled_minutes * 60 <= collection.max_lookback_seconds + 300):
            raise ValueError(
                f"cache_settled_minutes ({value.cache_settled_minutes}) must exceed "
                f"collection.max_lookback_seconds ({collection.max_lookback_seconds} s) plus "
                "5 minutes: those hours may still be rewritten")
        return value

    @field_validator("vcenters")
    @classmethod
    def _unique_names(cls, value: list[VCenterConfig]) -> list[VCenterConfig]:
        names = [vc.name for vc in value]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"vCenter name {duplicates[0]} used twice")
        return value


# The loaders need the models above; importing them here keeps ``statsfeeder.config`` the one
# place callers take configuration from.
from statsfeeder.config_loading import (  # noqa: E402
    ENV_PREFIX,
    load_config,
    load_read_config,
    parse_cassandra,
    parse_config,
)

__all__ = ["ENV_PREFIX", "Config", "ConfigError", "ReadApiConfig", "load_config",
           "load_read_config", "parse_cassandra", "parse_config"]
