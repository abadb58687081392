"""``/api/v1/labels`` and ``/api/v1/label/<name>/values`` answered from the series index and the
entities (no series frame), against the real Cassandra: a tenant's ``match[]`` never reveals
another org's values, ``limit`` truncates with Prometheus's warning, and a range without data
has no labels. (Matcher semantics against the real Prometheus: test_readapi_diff.py.)"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from aiohttp import web

from statsfeeder.readapi.store import Scope
from statsfeeder.sinks.cassandra import series_index
from statsfeeder.sinks.cassandra.sink import CassandraSink
from tests.readapi_fleet import LAYOUT, Fleet, served, stored_fleet

C = "vsphere_vm_cpu_usage_average_percent"
END = int(time.time()) // 300 * 300 - 300
START = END - 2 * 3600
FLEET = Fleet.generate(START, END)
# (moref, name, vapp, vdc, org) → label name → values
COLUMNS = {"moref": 0, "vm_name": 1, "vapp": 2, "vdc": 3, "org": 4}
ACME = [row for row in LAYOUT if row[4] == "acme"]


def values(rows: list[tuple[str, ...]], label: str) -> list[str]:
    return sorted({row[COLUMNS[label]] for row in rows} - {""})


@pytest.fixture(scope="module")
def sink(cassandra_env: dict[str, str]) -> Iterator[CassandraSink]:
    with stored_fleet(cassandra_env, FLEET) as stored:
        yield stored


async def only_acme(request: web.Request) -> Scope:
    return frozenset({"acme"})


@pytest.fixture(scope="module")
def acme(sink: CassandraSink) -> Iterator[str]:
    with served(sink, only_acme) as url:
        yield url


@pytest.fixture(scope="module")
def provider(sink: CassandraSink) -> Iterator[str]:
    # A series cap far below the fleet's series: label answers are no query and read none.
    with served(sink, max_series=3) as url:
        yield url


def get(base: str, path: str, **fields: Any) -> dict[str, Any]:
    answer = httpx.get(f"{base}{path}", params=fields, timeout=60)
    body: dict[str, Any] = answer.json()
    assert answer.status_code == 200 and body["status"] == "success", body
    return body


@pytest.mark.parametrize("match", [
    None, '{org="globex"}', '{org=~".+"}', '{org!="acme", __name__=~".+"}', '{org=~"glob.*|acme"}',
    '{vm_name=~"app-.*"}', '{__name__=~".+"}', '{vm_name!~"web-.*", __name__=~".+"}',
    '{vm=~"urn:vcloud:vm:0+-0+-0+-0+-0+4"}', '{org="", vm=~".+"}', '{vapp="", __name__=~".+"}'])
def test_a_tenant_learns_only_its_own_values_whatever_it_matches(acme: str, match: str | None
                                                                 ) -> None:
    fields = {"match[]": match} if match else {}
    every_name: set[str] = set()
    for label in COLUMNS:
        answer = get(acme, f"/api/v1/label/{label}/values", **fields)
        assert set(answer["data"]) <= set(values(ACME, label)), (label, answer)
        if match in (None, '{org=~".+"}', '{__name__=~".+"}', '{org=~"glob.*|acme"}'):
            assert answer["data"] == values(ACME, label)
        if answer["data"]:
            every_name.add(label)
    names = get(acme, "/api/v1/labels", **fields)["data"]
    assert every_name <= set(names)
    if not every_name:  # nothing of acme's matched: no label of anyone else's either
        assert names == []


def test_match_narrows_to_the_matching_vms(acme: str, provider: str) -> None:
    assert get(acme, "/api/v1/label/vm_name/values",
               **{"match[]": '{vm_name!~"web-.*", __name__=~".+"}'})["data"] == ["db-1"]
    assert get(provider, "/api/v1/label/vm_name/values",
               **{"match[]": '{vm_name!~"web-.*", org!=""}'})["data"] == [
        "app-1", "app-2", "batch-1", "db-1"]
    assert get(provider, "/api/v1/label/vm_name/values",
               **{"match[]": f'{C}{{org=""}}'})["data"] == ["orphan"]
    assert get(provider, "/api/v1/label/device/values")["data"] == ["scsi0:0", "scsi0:1"]
    assert "device" not in get(provider, "/api/v1/labels", **{"match[]": C})["data"]
    orphan = get(provider, "/api/v1/labels", **{"match[]": '{vm_name="orphan"}'})["data"]
    assert "org" not in orphan and "vm_name" in orphan and "device" in orphan


def test_limit_truncates_with_prometheus_warning(provider: str) -> None:
    every = [row[1] for row in LAYOUT]
    truncated = get(provider, "/api/v1/label/vm_name/values", limit="2")
    assert truncated["data"] == sorted(every)[:2]
    assert truncated["warnings"] == ["results truncated due to limit"]
    whole = get(provider, "/api/v1/label/vm_name/values", limit=str(len(every)))
    assert whole["data"] == sorted(every) and "warnings" not in whole
    names = get(provider, "/api/v1/labels", limit="3")
    assert names["data"] == ["__name__", "device", "moref"]
    assert names["warnings"] == ["results truncated due to limit"]
    # with match[] (the engine applies the matchers), the same
    acme = {"match[]": '{org="acme"}'}
    truncated = get(provider, "/api/v1/label/vm_name/values", limit="2", **acme)
    assert truncated["data"] == ["db-1", "web-1"]
    assert truncated["warnings"] == ["results truncated due to limit"]
    whole = get(provider, "/api/v1/label/vm_name/values", limit="3", **acme)
    assert whole["data"] == ["db-1", "web-1", "web-2"] and "warnings" not in whole
    names = get(provider, "/api/v1/labels", limit="1", **acme)
    assert names == {"status": "success", "data": ["__name__"],
                     "warnings": ["results truncated due to limit"]}
    refused = httpx.get(f"{provider}/api/v1/labels", params={"limit": "-1"}, timeout=60)
    assert refused.status_code == 400 and refused.json()["errorType"] == "bad_data"


@pytest.mark.parametrize(("start", "end"), [(START - 86400, START - 43200),
                                            (END + 3 * 3600, END + 4 * 3600)])
def test_a_range_without_data_has_no_labels(provider: str, start: int, end: int) -> None:
    window = {"start": str(start), "end": str(end)}
    assert get(provider, "/api/v1/labels", **window)["data"] == []
    assert get(provider, "/api/v1/label/vm/values", **window)["data"] == []
    assert get(provider, "/api/v1/label/vm/values", **window,
               **{"match[]": '{vm=~".+"}'})["data"] == []
    # ...while the data's own range has them all, past the series cap
    around = {"start": str(START), "end": str(END)}
    assert len(get(provider, "/api/v1/label/vm/values", **around)["data"]) == len(LAYOUT)


def test_days_written_before_the_index_answer_alike(sink: CassandraSink) -> None:
    """Without the index's marker every day is listed from the windows (the store's own
    series listing): the same names and values, with and without match[]."""
    asks: list[tuple[str, dict[str, str]]] = [
        ("/api/v1/labels", {}), ("/api/v1/labels", {"match[]": f'{C}{{org="globex"}}'})]
    for label in ("vm_name", "device", "__name__", "org"):
        asks += [(f"/api/v1/label/{label}/values", {}),
                 (f"/api/v1/label/{label}/values", {"match[]": '{vdc=~"gold-.+|silver"}'}),
                 (f"/api/v1/label/{label}/values", {"match[]": '{vm_name!="web-1", org!=""}'})]
    ks = sink.config.keyspace
    with served(sink, entities_cache_seconds=0) as url:
        indexed = [get(url, path, **fields)["data"] for path, fields in asks]
        sink.session.execute(f"DELETE FROM {ks}.schema_info WHERE key = %s",
                             (series_index.MARKER,))
        try:
            scanned = [get(url, path, **fields)["data"] for path, fields in asks]
        finally:
            series_index.mark_indexed_from(sink.session, ks, 0)
    assert scanned == indexed
    assert indexed[0] == ["__name__", "device", "moref", "org", "vapp", "vcenter", "vdc", "vm",
                          "vm_name"]
    assert all(indexed[2:])  # every label asked has values under each match[]
