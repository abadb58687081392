"""KairosDB tags against a real KairosDB 1.3 (``kairosdb_env``): exact vCD ids by default, and
tag sets that would let series overwrite each other refused (issue 19)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from statsfeeder.model import EntityId
from statsfeeder.sinks.kairosdb.sink import KairosDBSink
from tests.integration.test_kairosdb_sink import (
    CPU,
    NET,
    VM1,
    count,
    kairos_config,
    make_series,
    query,
    stored,
    wait_for,
)


async def test_default_tags_are_exact_and_a_query_by_the_vcd_urn_finds_the_series(
        kairosdb_env: dict[str, str]) -> None:
    """Issue 19: the default charset used to store urn:vcloud:vm:… as urn_vcloud_vm_…, so a
    query by the vCD id found nothing. KairosDB 1.3's REST API keeps every character."""
    config = kairos_config(kairosdb_env["KAIROSDB_URL"])
    assert config.tag_charset == "any"
    odd = EntityId("urn:vcloud:vm:6f1c8a2e-1b7e-4d0c-9a55-0d3c1f1e0099", "db",
                   vapp="a=b,c|d;e", vdc="Zürich Süd – ÉTÉ", org="東京 データ センター")
    twin = EntityId("urn:vcloud:vm:6f1c8a2e-1b7e-4d0c-9a55-0d3c1f1e0098", "db",
                    org="db prod")
    other = EntityId("urn:vcloud:vm:6f1c8a2e-1b7e-4d0c-9a55-0d3c1f1e0097", "db",
                     org="db:prod")
    start = int(time.time()) // 20 * 20 - 900
    items = [make_series(CPU, odd, "vm-21", start, [5244, 100, 7]),
             make_series(CPU, twin, "vm-22", start, [1, 2]),
             make_series(CPU, other, "vm-23", start, [3])]
    sink = KairosDBSink(config)
    sink.open()
    await sink.write(items)
    name = config.metric_prefix + CPU.name

    def by(tag: str, value: str) -> list[dict[str, Any]]:
        [answer] = query(config, [{"name": name, "tags": {tag: [value]}}])
        return [r for r in answer["results"] if r["values"]]

    await wait_for(lambda: len(by("vm", odd.vm)) == 1, "a query by the exact URN")
    [found] = by("vm", odd.vm)
    assert [value for _, value in found["values"]] == [52.44, 1.0, 0.07]
    assert found["tags"] == {"vm": [odd.vm], "org": [odd.org], "vdc": [odd.vdc],
                             "vapp": [odd.vapp], "vcenter": ["vc-1.example"],
                             "moref": ["vm-21"], "instance": ["aggregate"]}
    for tag, value in (("org", odd.org), ("vdc", odd.vdc), ("vapp", odd.vapp)):
        assert [r["tags"]["vm"] for r in by(tag, value)] == [[odd.vm]], tag
    # "db prod" and "db:prod" stay two orgs (strict made both db_prod)
    assert [r["tags"]["moref"] for r in by("org", "db prod")] == [["vm-22"]]
    assert [r["tags"]["moref"] for r in by("org", "db:prod")] == [["vm-23"]]
    await sink.aclose()


def test_tags_that_do_not_identify_a_series_are_refused_in_one_line(
        tmp_path: Path, kairosdb_env: dict[str, str]) -> None:
    """Issue 19: ``tags: [org]`` was accepted, after which VMs overwrote each other's series."""

    def validate(tags: list[str], metrics: list[Any]) -> subprocess.CompletedProcess[str]:
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump({
            "vcenters": [{"name": "vc", "url": "https://vc.example",
                          "credentials": {"username": "u", "password": "p"}}],
            "collection": {"metrics": metrics},
            "cassandra": {"enabled": False},
            "kairosdb": {"enabled": True, "url": kairosdb_env["KAIROSDB_URL"], "tags": tags}}))
        return subprocess.run([sys.executable, "-m", "statsfeeder", "validate", "--offline",
                                "-c", str(path)], capture_output=True, text=True, timeout=60,
                               check=False)

    cpu, net = "cpu.usage.average", {"name": "net.received.average", "per_instance": True}
    refused = validate(["org"], [cpu])
    assert refused.returncode != 0
    assert refused.stderr.strip().splitlines() == [
        "statsfeeder: config: kairosdb: tags [org] do not identify a VM, so different VMs' "
        "series would overwrite each other: add vm (or vcenter and moref)"]
    no_instance = validate(["vm", "org"], [cpu, net])
    assert no_instance.returncode != 0 and len(no_instance.stderr.strip().splitlines()) == 1
    assert "net.received.average" in no_instance.stderr and "add instance" in no_instance.stderr
    assert validate(["vm", "org"], [cpu]).returncode == 0
    assert validate(["vcenter", "moref", "instance"], [cpu, net]).returncode == 0


async def test_the_smallest_accepted_tag_set_keeps_every_series_apart(
        kairosdb_env: dict[str, str]) -> None:
    """What the refusal protects: with vcenter+moref+instance, two VMs of one org and two
    NICs of one VM are four series in KairosDB, every sample kept."""
    config = kairos_config(kairosdb_env["KAIROSDB_URL"], tags=["vcenter", "moref", "instance"])
    start = int(time.time()) // 20 * 20 - 1200
    items = [make_series(NET, VM1, "vm-31", start, [1, 2, 3], instance="4000"),
             make_series(NET, VM1, "vm-31", start, [4, 5, 6], instance="4001"),
             make_series(NET, VM1, "vm-32", start, [7, 8, 9], instance="4000"),
             make_series(NET, VM1, "vm-32", start, [10, 11, 12], instance="")]
    sink = KairosDBSink(config)
    sink.open()
    await sink.write(items)
    await wait_for(lambda: all(count(config, item) == 3 for item in items), "four series")
    assert [[v for _, v in stored(config, item)["values"]] for item in items] == [
        item.values.tolist() for item in items]
    await sink.aclose()
