"""KairosDB encoder (tag sanitizing, placeholders, scaling, batching) and the writer's HTTP
behaviour (gzip, retries, rejections, in-flight bound) against a stub transport."""

from __future__ import annotations

import asyncio
import gzip
import json
import random

import httpx
import numpy as np
import pytest

from statsfeeder.config import KairosDBConfig
from statsfeeder.errors import BatchRejected, SinkUnavailable
from statsfeeder.model import Counter, EntityId, Series
from statsfeeder.sinks.kairosdb import writer as writer_module
from statsfeeder.sinks.kairosdb.encoder import (
    AGGREGATE,
    ALL_TAGS,
    PLACEHOLDER,
    Encoder,
    encode,
    plan,
    sanitize,
)
from statsfeeder.sinks.kairosdb.sink import KairosDBSink
from statsfeeder.sinks.kairosdb.writer import KairosDBWriter

CPU = Counter("cpu.usage.average", 2, "percent")
NET = Counter("net.received.average", 143, "kiloBytesPerSecond", per_instance=True)
T0 = 1_795_334_400
VM = EntityId("urn:vcloud:vm:0b3a6d0e-9f43-4c61-9b1e-2f7b7ad5e001", "web 01",
              "urn:vcloud:vapp:11", "urn:vcloud:vdc:22", "ACME Corp.")


def series(counter: Counter = CPU, values: list[int] | None = None, instance: str = "",
           entity: EntityId | None = VM, moref: str = "vm-42", start: int = T0) -> Series:
    values = [1234, 5000, 1, 0] if values is None else values
    stamps = [start + 20 * i for i in range(len(values))]
    return Series("vc-a.example", moref, counter, instance, np.array(stamps, dtype=np.int64),
                  np.array(values, dtype=np.int64), entity)


def decode(body: bytes) -> list[dict]:
    return json.loads(body)


# --- sanitizing and placeholders -----------------------------------------------------------------

def test_strict_sanitizing_keeps_only_kairosdb_safe_characters() -> None:
    assert sanitize("urn:vcloud:vm:0b3a") == "urn_vcloud_vm_0b3a"
    assert sanitize("ACME Corp. (EU)") == "ACME_Corp.__EU_"
    assert sanitize("a-b.c/d_E9") == "a-b.c/d_E9"
    assert sanitize("tenant=été") == "tenant__t_"
    assert sanitize("") == PLACEHOLDER


def test_relaxed_sanitizing_keeps_characters_but_never_empty() -> None:
    assert sanitize("urn:vcloud:vm:0b3a", strict=False) == "urn:vcloud:vm:0b3a"
    assert sanitize("ACME Corp.", strict=False) == "ACME Corp."
    assert sanitize("", strict=False) == PLACEHOLDER


def test_tags_use_placeholders_for_missing_entity_and_aggregate_instance() -> None:
    encoder = Encoder()
    tags = encoder.tag_values(series(entity=None))
    assert tags == {"vm": "none", "org": "none", "vdc": "none", "vapp": "none",
                    "vcenter": "vc-a.example", "moref": "vm-42", "instance": AGGREGATE}
    partial = encoder.tag_values(series(NET, instance="4000",
                                        entity=EntityId("urn:vcloud:vm:1", org="o")))
    assert partial["vapp"] == "none" and partial["vdc"] == "none" and partial["org"] == "o"
    assert partial["instance"] == "4000" and partial["vm"] == "urn_vcloud_vm_1"


def test_only_configured_tags_are_written() -> None:
    [body] = encode([series()], tags=("vm", "instance"))
    [metric] = decode(body)
    assert metric["tags"] == {"vm": "urn_vcloud_vm_0b3a6d0e-9f43-4c61-9b1e-2f7b7ad5e001",
                              "instance": "aggregate"}
    with pytest.raises(ValueError):
        Encoder(tags=())
    with pytest.raises(ValueError):
        Encoder(tags=("vm", "host"))


def test_tag_cache_follows_entity_changes() -> None:
    encoder = Encoder()
    first = decode(encoder.encode(plan([series()], 100)[0]))[0]["tags"]
    moved = series(entity=EntityId(VM.vm, VM.name, VM.vapp, VM.vdc, "Other Org"))
    second = decode(encoder.encode(plan([moved], 100)[0]))[0]["tags"]
    assert first["org"] == "ACME_Corp." and second["org"] == "Other_Org"


# --- the JSON document and value scaling ---------------------------------------------------------

def test_document_shape_name_prefix_milliseconds_ttl() -> None:
    [body] = encode([series(), series(NET, [7, 8], instance="4000")], prefix="vcloud.",
                    ttl_seconds=14 * 86400)
    cpu, net = decode(body)
    assert cpu["name"] == "vcloud.cpu.usage.average"
    assert net["name"] == "vcloud.net.received.average"
    assert cpu["ttl"] == 14 * 86400
    assert [stamp for stamp, _ in cpu["datapoints"]] == [(T0 + 20 * i) * 1000 for i in range(4)]
    assert net["datapoints"] == [[T0 * 1000, 7], [(T0 + 20) * 1000, 8]]
    assert set(cpu["tags"]) == set(ALL_TAGS)
    assert "ttl" not in decode(encode([series()])[0])[0]


def test_percent_is_divided_exactly_and_integers_stay_integers() -> None:
    [body] = encode([series(), series(NET, [7, 8, 123456789012], instance="4000")])
    text = body.decode()
    assert "[1795334400000,12.34]" in text  # not 12.340000000000002
    assert "[1795334420000,50.0]" in text  # a double: one metric never mixes long and double
    assert "[1795334440000,0.01]" in text
    assert "[1795334400000,7]" in text and "123456789012]" in text
    cpu, net = decode(body)
    assert all(isinstance(value, float) for _, value in cpu["datapoints"])
    assert all(isinstance(value, int) for _, value in net["datapoints"])


def test_scaled_values_match_series_scaled() -> None:
    rng = np.random.default_rng(3)
    raw = rng.integers(0, 10_001, 500).tolist()
    item = series(values=raw)
    [body] = encode([item], max_samples=1000)
    values = [value for _, value in decode(body)[0]["datapoints"]]
    assert values == pytest.approx(item.scaled().tolist(), abs=1e-12)
    assert values == [v / 100 for v in raw]


def test_unusual_scale_falls_back_to_multiplication() -> None:
    class Thirds(Counter):
        @property
        def scale(self) -> float:
            return 0.3

    item = series(Thirds("x.y.z", 9, "number"), [10, 3])
    [body] = encode([item])
    assert [v for _, v in decode(body)[0]["datapoints"]] == pytest.approx([3.0, 0.9])


# --- batching ------------------------------------------------------------------------------------

def test_plan_splits_long_series_and_keeps_order() -> None:
    items = [series(values=list(range(10)), moref="vm-1"), series(values=[], moref="vm-2"),
             series(values=list(range(3)), moref="vm-3"), series(values=[5], moref="vm-4")]
    batches = plan(items, 4)
    assert [sum(p.samples for p in b) for b in batches] == [4, 4, 4, 2]
    flat = [(p.series.moref, p.begin, p.end) for b in batches for p in b]
    assert flat == [("vm-1", 0, 4), ("vm-1", 4, 8), ("vm-1", 8, 10), ("vm-3", 0, 2),
                    ("vm-3", 2, 3), ("vm-4", 0, 1)]
    assert plan([], 10) == [] and plan([series(values=[])], 10) == []
    with pytest.raises(ValueError):
        plan(items, 0)


def test_batches_carry_every_sample_exactly_once() -> None:
    rng = random.Random(11)
    items = [series(NET, [rng.randint(0, 10**6) for _ in range(rng.randint(0, 90))],
                    instance=str(i), moref=f"vm-{i}") for i in range(60)]
    for max_samples in (1, 7, 90, 100_000):
        bodies = encode(items, max_samples=max_samples)
        got: dict[str, list[list[int]]] = {}
        for body in bodies:
            metrics = decode(body)
            assert sum(len(m["datapoints"]) for m in metrics) <= max_samples
            for metric in metrics:
                got.setdefault(metric["tags"]["moref"], []).extend(metric["datapoints"])
        for item in items:
            expected = [[s * 1000, v] for s, v in zip(item.timestamps.tolist(),
                                                      item.values.tolist(), strict=True)]
            assert got.get(item.moref, []) == expected


# --- the writer against a stub transport ---------------------------------------------------------

def config(**extra: object) -> KairosDBConfig:
    return KairosDBConfig.model_validate({"enabled": True, "url": "http://kairos.test:8080",
                                          **extra})


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer_module, "FIRST_BACKOFF", 0.01)


def body_of(request: httpx.Request) -> list[dict]:
    raw = request.content
    if request.headers.get("content-encoding") == "gzip":
        raw = gzip.decompress(raw)
    return json.loads(raw)


async def test_gzip_body_and_retries_on_5xx_and_connection_errors() -> None:
    answers = [httpx.Response(503, text="busy"), "drop", httpx.Response(204)]
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = answers.pop(0)
        if answer == "drop":
            raise httpx.ConnectError("connection refused", request=request)
        assert isinstance(answer, httpx.Response)
        return answer

    writer = KairosDBWriter(config(metric_prefix="p."), transport=httpx.MockTransport(handler))
    result = await writer.write([series()])
    assert (result.rows, result.samples, result.requests) == (1, 4, 1)
    assert len(seen) == 3 and writer.retries == 2
    request = seen[-1]
    assert request.url.path == "/api/v1/datapoints"
    assert request.headers["content-encoding"] == "gzip"
    assert body_of(request)[0]["name"] == "p.cpu.usage.average"
    await writer.aclose()


async def test_gzip_off_sends_plain_json() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert "content-encoding" not in request.headers
        assert json.loads(request.content)[0]["datapoints"][0] == [T0 * 1000, 12.34]
        return httpx.Response(204)

    writer = KairosDBWriter(config(gzip=False), transport=httpx.MockTransport(handler))
    assert (await writer.write([series()])).samples == 4
    await writer.aclose()


async def test_gives_up_after_retries_with_one_line() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(500, json={"errors": ["datastore down"]})

    writer = KairosDBWriter(config(retries=2), transport=httpx.MockTransport(handler))
    with pytest.raises(SinkUnavailable, match=r"failed after 3 attempts: HTTP 500: datastore down"):
        await writer.write([series()])
    assert calls == 3
    await writer.aclose()


async def test_once_a_batch_gives_up_the_others_fail_fast() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        raise httpx.ConnectError("connection refused", request=request)

    writer = KairosDBWriter(config(retries=1, batch_max_samples=2, max_in_flight=1),
                            transport=httpx.MockTransport(handler))
    with pytest.raises(SinkUnavailable) as caught:
        await writer.write([series(values=list(range(20)))])
    assert calls == 2  # the first batch and its one retry; nine batches never sent
    assert str(caught.value) == ("kairosdb: write to http://kairos.test:8080 failed after 2 "
                                 "attempts: ConnectError: connection refused (10 of 10 batches "
                                 "failed)")
    await writer.aclose()


async def test_empty_write_and_close_from_another_thread() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(204)

    writer = KairosDBWriter(config(), transport=httpx.MockTransport(handler))
    assert await writer.write([]) == writer_module.WriteResult(0, 0, 0)
    await writer.write([series()])
    client = writer._client
    assert client is not None and not client.is_closed
    await asyncio.to_thread(writer.close)  # how the CLI closes sinks
    assert client.is_closed
    await writer.write([series()])  # a closed writer opens a new client when used again
    await writer.aclose()


def test_close_after_the_loop_is_gone() -> None:
    writer = KairosDBWriter(config(), transport=httpx.MockTransport(
        lambda request: httpx.Response(204)))
    asyncio.run(writer.write([series()]))
    writer.close()  # the loop is closed: nothing to await, no error


async def test_400_is_rejected_with_kairosdb_text_not_retried_and_counted() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if body_of(request)[0]["tags"]["moref"] == "vm-bad":
            return httpx.Response(400, json={"errors": ["metric[0].name may not be empty."]})
        return httpx.Response(204)

    writer = KairosDBWriter(config(batch_max_samples=4), transport=httpx.MockTransport(handler))
    items = [series(moref="vm-1"), series(moref="vm-bad"), series(moref="vm-3")]
    with pytest.raises(BatchRejected) as caught:
        await writer.write(items)
    assert "metric[0].name may not be empty." in str(caught.value)
    assert "1 of 3 batches failed" in str(caught.value)
    assert calls == 3 and writer.rejected_batches == 1 and writer.rejected_samples == 4
    assert writer.requests == 2  # the good batches were stored
    await writer.aclose()


async def test_401_is_unavailable_without_retries() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(401)

    writer = KairosDBWriter(config(), transport=httpx.MockTransport(handler))
    with pytest.raises(SinkUnavailable, match=r"check kairosdb\.credentials"):
        await writer.write([series()])
    assert calls == 1
    await writer.aclose()


async def test_in_flight_requests_are_bounded() -> None:
    active = peak = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.02)
        active -= 1
        return httpx.Response(204)

    writer = KairosDBWriter(config(batch_max_samples=2, max_in_flight=2),
                            transport=httpx.MockTransport(handler))
    result = await writer.write([series(values=list(range(20)))])
    assert result.requests == 10 and peak == 2 and writer.in_flight == 0
    await writer.aclose()


def test_sink_open_reports_health_and_credentials_in_one_line() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/v1/health/check":
            return httpx.Response(503, json={"errors": ["JVM thread deadlock"]})
        return httpx.Response(200, json={"version": "KairosDB 1.3.0-1"})

    sink = KairosDBSink(config(), sync_transport=httpx.MockTransport(handler))
    with pytest.raises(SinkUnavailable) as caught:
        sink.open()
    assert str(caught.value) == ("kairosdb: http://kairos.test:8080/api/v1/health/check answered "
                                 "HTTP 503, not 204: JVM thread deadlock")

    def refusing(request: httpx.Request) -> httpx.Response:
        return httpx.Response(204 if request.url.path.endswith("/check") else 401)

    sink = KairosDBSink(config(credentials={"username": "u", "password": "bad"},
                               allow_credentials_over_http=True),
                        sync_transport=httpx.MockTransport(refusing))
    with pytest.raises(SinkUnavailable, match=r"refused the credentials \(HTTP 401\)"):
        sink.open()
