"""The KairosDB sink and purge against a real KairosDB 1.3: H2 (``kairosdb_env``), on Cassandra
for TTLs (``kairosdb_cassandra_env``), and an instance of this module's own with HTTPS and basic
auth that the outage test stops and starts."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pytest

from peers import common
from peers import kairosdb as kairosdb_peer
from statsfeeder.config import KairosDBConfig
from statsfeeder.errors import BatchRejected, ConfigError, SinkUnavailable
from statsfeeder.model import Counter, EntityId, Series
from statsfeeder.sinks.kairosdb.encoder import Encoder
from statsfeeder.sinks.kairosdb.purge import purge
from statsfeeder.sinks.kairosdb.sink import KairosDBSink
from statsfeeder.sinks.kairosdb.writer import client_options

CPU = Counter("cpu.usage.average", 2, "percent")
MHZ = Counter("cpu.usagemhz.average", 6, "megaHertz")
NET = Counter("net.received.average", 143, "kiloBytesPerSecond", per_instance=True)
VM1 = EntityId("urn:vcloud:vm:6f1c8a2e-1b7e-4d0c-9a55-0d3c1f1e0001", "db 01",
               "urn:vcloud:vapp:aa", "urn:vcloud:vdc:bb", "ACME Corp. (EU)")
VM2 = EntityId("urn:vcloud:vm:6f1c8a2e-1b7e-4d0c-9a55-0d3c1f1e0002", "web", org="Tenant-2")

SECURE_NAME = "kairosdb-secure"
SECURE_HTTP_PORT = 18084
SECURE_HTTPS_PORT = 18085
SECURE_USER = "statsfeeder"
SECURE_PASSWORD = "kairos-test-pw"
DAY = 86400


def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}."


def kairos_config(url: str, **extra: Any) -> KairosDBConfig:
    return KairosDBConfig.model_validate({"enabled": True, "url": url, "metric_prefix": prefix(),
                                          "retries": 2, **extra})


def make_series(counter: Counter, entity: EntityId | None, moref: str, start: int,
                values: list[int], instance: str = "") -> Series:
    stamps = [start + 20 * i for i in range(len(values))]
    return Series("vc-1.example", moref, counter, instance, np.array(stamps, dtype=np.int64),
                  np.array(values, dtype=np.int64), entity)


def query(config: KairosDBConfig, metrics: list[dict[str, Any]], start: int = 1,
          end: int | None = None) -> list[dict[str, Any]]:
    body: dict[str, Any] = {"start_absolute": start, "metrics": metrics}
    if end is not None:
        body["end_absolute"] = end
    with httpx.Client(**client_options(config)) as http:
        response = http.post("/api/v1/datapoints/query", json=body)
    assert response.status_code == 200, response.text
    queries: list[dict[str, Any]] = response.json()["queries"]
    return queries


def stored(config: KairosDBConfig, item: Series) -> dict[str, Any]:
    """The one KairosDB result of this series: all its tags as the filter."""
    encoder = Encoder(prefix=config.metric_prefix, tags=config.tags,
                      strict=config.tag_charset == "strict")
    tags = {key: [value] for key, value in encoder.tag_values(item).items()}
    [answer] = query(config, [{"name": encoder.metric_name(item), "tags": tags}])
    [result] = answer["results"]
    return result


async def wait_for(check: Any, what: str, timeout: float = 30.0) -> None:
    """Writes are queued in KairosDB (~0.15 s): poll."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.2)


def count(config: KairosDBConfig, item: Series) -> int:
    return len(stored(config, item)["values"])


# --- writes read back ----------------------------------------------------------------------------

@pytest.mark.parametrize("gzip", [True, False])
async def test_every_value_and_tag_reads_back(kairosdb_env: dict[str, str], gzip: bool) -> None:
    config = kairos_config(kairosdb_env["KAIROSDB_URL"], batch_max_samples=7, gzip=gzip,
                           tag_charset="strict")
    sink = KairosDBSink(config)
    sink.open()
    assert sink.version.startswith("KairosDB 1.3")
    now = int(time.time()) // 20 * 20 - 3600
    items = [
        make_series(CPU, VM1, "vm-11", now, [1234, 5000, 1, 0, 9999, 10000, 250, 7, 42, 3]),
        make_series(MHZ, VM1, "vm-11", now, [2400, 0, 123456789012]),
        make_series(NET, VM1, "vm-11", now, [10, 20, 30, 40], instance="4000"),
        make_series(NET, VM1, "vm-11", now, [1, 2, 3, 4], instance=""),
        make_series(CPU, VM2, "vm-12", now + 20, [100, 200]),
        make_series(CPU, None, "vm-13", now, [5]),
        make_series(CPU, VM2, "vm-14", now, []),
    ]
    result = await sink.write(items)
    total = sum(len(item) for item in items)
    assert result.samples == total == 24
    assert result.requests == 4 and result.rows >= 6  # 7 samples per batch: the CPU series splits
    assert await sink.health()
    written = [item for item in items if len(item)]
    await wait_for(lambda: all(count(config, item) == len(item) for item in written),
                   "every datapoint to be queryable")
    for item in written:
        result_row = stored(config, item)
        stamps = [stamp // 1000 for stamp, _ in result_row["values"]]
        values = [value for _, value in result_row["values"]]
        assert stamps == item.timestamps.tolist()
        if item.counter.scale == 1.0:
            assert values == item.values.tolist()
            assert all(isinstance(value, int) for value in values)
        else:
            assert values == pytest.approx(item.scaled().tolist(), abs=1e-9)
        assert result_row["name"] == config.metric_prefix + item.metric
    cpu_vm1 = stored(config, items[0])["tags"]
    assert cpu_vm1 == {
        "vm": ["urn_vcloud_vm_6f1c8a2e-1b7e-4d0c-9a55-0d3c1f1e0001"], "org": ["ACME_Corp.__EU_"],
        "vdc": ["urn_vcloud_vdc_bb"], "vapp": ["urn_vcloud_vapp_aa"],
        "vcenter": ["vc-1.example"], "moref": ["vm-11"], "instance": ["aggregate"]}
    assert stored(config, items[2])["tags"]["instance"] == ["4000"]
    assert stored(config, items[4])["tags"]["vapp"] == ["none"]
    assert stored(config, items[5])["tags"]["vm"] == ["none"]
    await sink.aclose()


async def test_relaxed_charset_and_tag_subset(kairosdb_env: dict[str, str]) -> None:
    config = kairos_config(kairosdb_env["KAIROSDB_URL"], tag_charset="any",
                           tags=["vm", "org", "instance"])
    sink = KairosDBSink(config)
    sink.open()
    item = make_series(CPU, VM1, "vm-11", int(time.time()) - 600, [1, 2, 3])
    await sink.write([item])
    await wait_for(lambda: count(config, item) == 3, "the datapoints")
    assert stored(config, item)["tags"] == {"vm": [VM1.vm], "org": ["ACME Corp. (EU)"],
                                            "instance": ["aggregate"]}
    sink.close()


async def test_rejected_batch_carries_kairosdb_text_and_others_are_stored(
        kairosdb_env: dict[str, str]) -> None:
    # No prefix: a counter without a name makes a metric without a name, which KairosDB refuses.
    config = kairos_config(kairosdb_env["KAIROSDB_URL"], batch_max_samples=7, metric_prefix="")
    sink = KairosDBSink(config)
    now = int(time.time()) - 900
    good = [make_series(CPU, VM1, f"vm-{uuid.uuid4().hex[:8]}", now, [1, 2, 3, 4, 5, 6, 7]),
            make_series(MHZ, VM2, f"vm-{uuid.uuid4().hex[:8]}", now, [9, 8, 7, 6, 5, 4, 3])]
    nameless = make_series(Counter("", 0, "number"), VM1, "vm-bad", now, [1] * 7)
    with pytest.raises(BatchRejected) as caught:
        await sink.write([good[0], nameless, good[1]])  # one batch each
    assert str(caught.value) == ("kairosdb: HTTP 400 for a batch of 7 samples: metric[0].name "
                                 "may not be empty. (1 of 3 batches failed)")
    assert not caught.value.retriable
    assert sink.writer.rejected_batches == 1 and sink.writer.rejected_samples == 7
    assert sink.writer.retries == 0
    await wait_for(lambda: all(count(config, item) == 7 for item in good), "the good batches")
    await sink.aclose()


# --- TTL (KairosDB on Cassandra) -----------------------------------------------------------------

async def test_ttl_expires_datapoints_on_cassandra(kairosdb_cassandra_env: dict[str, str]) -> None:
    url = kairosdb_cassandra_env["KAIROSDB_URL"]
    short = kairos_config(url, ttl_seconds_override=8)
    kept = short.model_copy(update={"ttl_seconds_override": None})  # 14 days, same prefix
    short_sink, kept_sink = KairosDBSink(short), KairosDBSink(kept)
    short_sink.open()
    now = int(time.time()) // 20 * 20 - 300
    expiring = make_series(CPU, VM1, "vm-ttl", now, [100, 200, 300])
    staying = make_series(CPU, VM2, "vm-kept", now, [400, 500, 600])
    written = time.monotonic()
    await short_sink.write([expiring])
    await kept_sink.write([staying])
    await wait_for(lambda: count(short, expiring) == 3 and count(kept, staying) == 3,
                   "the datapoints on Cassandra")
    assert time.monotonic() - written < 8, "too slow to see them before the TTL"
    await wait_for(lambda: count(short, expiring) == 0, "the 8-s TTL to expire", timeout=60)
    # Cassandra keeps expiry times in whole seconds: a TTL can end up to a second early.
    assert time.monotonic() - written >= 6.5
    assert count(kept, staying) == 3
    await short_sink.aclose()
    await kept_sink.aclose()


# --- HTTPS, basic auth, outage -------------------------------------------------------------------

@dataclass
class SecureKairos:
    url: str
    ca_file: str
    other_ca_file: str
    start: Callable[[], None]


@pytest.fixture(scope="module")
def secure_kairosdb() -> Iterator[SecureKairos]:
    """This module's own KairosDB (H2): HTTPS with the test CA's certificate and basic auth
    through Jetty JAAS (``auth_module_name``); plain HTTP too, for the peer's health check.
    Stopped at the end of the module."""
    certs = common.ensure_certs()
    directory = common.run_dir(SECURE_NAME)
    users = directory / "users.props"
    users.write_text(f"{SECURE_USER}: {SECURE_PASSWORD}\n")
    jaas = directory / "jaas.conf"
    jaas.write_text("statsfeeder {\n  org.eclipse.jetty.jaas.spi.PropertyFileLoginModule "
                    f'required\n  file="{users}";\n}};\n')
    settings = {
        "kairosdb.jetty.ssl.port": SECURE_HTTPS_PORT,
        "kairosdb.jetty.ssl.keystore.path": str(certs["p12"]),
        "kairosdb.jetty.ssl.keystore.password": "changeit",
        "kairosdb.jetty.auth_module_name": "statsfeeder",
    }
    flags = (f"-Djava.security.auth.login.config={jaas}",)

    def start() -> None:
        try:
            kairosdb_peer.start_instance(SECURE_NAME, SECURE_HTTP_PORT, datastore=settings,
                                         jvm_flags=flags)
        except common.PeerError as exc:
            pytest.fail(f"peer {SECURE_NAME} could not start: {exc}", pytrace=False)

    start()
    yield SecureKairos(f"https://127.0.0.1:{SECURE_HTTPS_PORT}", str(certs["ca"]),
                       str(certs["other_ca"]), start)
    common.stop(SECURE_NAME)


def secure_config(secure: SecureKairos, **extra: Any) -> KairosDBConfig:
    settings: dict[str, Any] = {
        "credentials": {"username": SECURE_USER, "password": SECURE_PASSWORD},
        "tls": {"ca_file": secure.ca_file}, **extra}
    return kairos_config(secure.url, **settings)


def test_https_and_basic_auth_are_checked_at_open(secure_kairosdb: SecureKairos) -> None:
    env = secure_kairosdb
    KairosDBSink(secure_config(env)).open()
    wrong_password = secure_config(env, credentials={"username": SECURE_USER, "password": "x"})
    with pytest.raises(SinkUnavailable, match=r"refused the credentials \(HTTP 401\)"):
        KairosDBSink(wrong_password).open()
    with pytest.raises(SinkUnavailable, match=r"refused the credentials"):
        KairosDBSink(secure_config(env, credentials=None)).open()
    wrong_ca = secure_config(env, tls={"ca_file": env.other_ca_file})
    with pytest.raises(SinkUnavailable, match=r"cannot reach .*CERTIFICATE_VERIFY_FAILED"):
        KairosDBSink(wrong_ca).open()
    insecure = secure_config(env, tls={"insecure": True})
    KairosDBSink(insecure).open()


async def test_nothing_listening_is_unavailable_after_retries() -> None:
    port = _free_port()
    config = kairos_config(f"http://127.0.0.1:{port}", retries=2, connect_timeout_seconds=2)
    sink = KairosDBSink(config)
    with pytest.raises(SinkUnavailable) as opened:
        sink.open()
    assert str(opened.value).startswith(f"kairosdb: cannot reach http://127.0.0.1:{port}: "
                                        "ConnectError")
    assert "\n" not in str(opened.value)
    item = make_series(CPU, VM1, "vm-1", int(time.time()), [1])
    began = time.monotonic()
    with pytest.raises(SinkUnavailable, match=r"failed after 3 attempts: ConnectError"):
        await sink.write([item])
    assert sink.writer.retries == 2 and time.monotonic() - began < 10
    assert not await sink.health()
    await sink.aclose()


async def test_outage_then_recovery(secure_kairosdb: SecureKairos) -> None:
    config = secure_config(secure_kairosdb, retries=2)
    sink = KairosDBSink(config)
    sink.open()
    now = int(time.time()) // 20 * 20 - 600
    before = make_series(CPU, VM1, "vm-out", now, [1000, 2000])
    during = make_series(CPU, VM1, "vm-out", now + 40, [3000, 4000])
    await sink.write([before])
    await wait_for(lambda: count(config, before) == 2, "the first write")

    common.stop(SECURE_NAME)
    try:
        assert not await sink.health()
        with pytest.raises(SinkUnavailable, match=r"failed after 3 attempts") as caught:
            await sink.write([during])
        assert caught.value.retriable
        with pytest.raises(SinkUnavailable, match="cannot reach"):
            KairosDBSink(config).open()
    finally:
        secure_kairosdb.start()

    assert await sink.health()
    result = await sink.write([during])
    assert result.samples == 2 and result.requests == 1
    both = make_series(CPU, VM1, "vm-out", now, [1000, 2000, 3000, 4000])
    await wait_for(lambda: count(config, both) == 4, "all four datapoints after recovery")
    assert [v for _, v in stored(config, both)["values"]] == [10, 20, 30, 40]
    await sink.aclose()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- purge ---------------------------------------------------------------------------------------

async def test_purge_dry_run_yes_and_refusal_inside_retention(
        kairosdb_env: dict[str, str]) -> None:
    config = kairos_config(kairosdb_env["KAIROSDB_URL"], ttl_days=2)
    sink = KairosDBSink(config)
    now = int(time.time()) // 20 * 20
    old_cpu = make_series(CPU, VM1, "vm-p", now - 5 * DAY, [1, 2, 3, 4])
    old_net = make_series(NET, VM1, "vm-p", now - 4 * DAY, [5, 6], instance="4000")
    recent_cpu = make_series(CPU, VM1, "vm-p", now - DAY, [7, 8, 9])
    foreign = make_series(Counter("other.thing.value", 1, "number"), VM1, "vm-p",
                          now - 5 * DAY, [1, 2])  # same prefix, not a statsfeeder metric
    other_prefix = kairos_config(kairosdb_env["KAIROSDB_URL"], ttl_days=2)
    elsewhere = make_series(CPU, VM2, "vm-q", now - 5 * DAY, [1, 1])

    await sink.write([old_cpu, old_net, recent_cpu, foreign])
    await KairosDBSink(other_prefix).write([elsewhere])
    cpu_name = config.metric_prefix + CPU.name
    net_name = config.metric_prefix + NET.name

    def counts() -> tuple[int, ...]:
        cpu, net, other = query(config, [{"name": cpu_name}, {"name": net_name},
                                         {"name": config.metric_prefix + foreign.metric}])
        return (cpu["sample_size"], net["sample_size"], other["sample_size"],
                query(other_prefix, [{"name": other_prefix.metric_prefix + CPU.name}])[0]
                ["sample_size"])

    await wait_for(lambda: counts() == (7, 2, 2, 2), "the datapoints to purge")

    with pytest.raises(ConfigError) as refused:
        purge(config, 1, yes=True)
    assert str(refused.value) == ("kairosdb purge: 1 days is inside the retention window "
                                  "(kairosdb.ttl_days = 2): refusing to delete data that is "
                                  "meant to be kept")
    assert counts() == (7, 2, 2, 2)

    dry = purge(config, 3, yes=False, metrics=[CPU.name, NET.name, MHZ.name])
    assert dry.dry_run and dry.datapoints == {cpu_name: 4, net_name: 2}
    assert dry.total == 6 and "would delete 6 datapoints older than 3 days" in dry.summary()
    assert abs(dry.cutoff - (time.time() - 3 * DAY)) < 60
    assert counts() == (7, 2, 2, 2)

    done = purge(config, 3, yes=True, metrics=[CPU.name, NET.name, MHZ.name])
    assert not done.dry_run and done.datapoints == {cpu_name: 4, net_name: 2}
    assert "deleted 6 datapoints" in done.summary()
    await wait_for(lambda: counts() == (3, 0, 2, 2), "the purge to delete")
    [remaining] = query(config, [{"name": cpu_name}])[0]["results"]
    assert [v for _, v in remaining["values"]] == [0.07, 0.08, 0.09]

    again = purge(config, 3, yes=False, metrics=[CPU.name, NET.name])
    assert again.datapoints == {} and again.total == 0
