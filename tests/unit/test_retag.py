"""Retagging: the static mapping file, the name heuristic, the unmapped policy and its
counting by reason, and the vcd configuration section."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from statsfeeder.config import parse_config
from statsfeeder.errors import ConfigError
from statsfeeder.model import Counter, EntityId, Series, SeriesBatch, VirtualMachine
from statsfeeder.transforms.retag import (
    NameHeuristicResolver,
    Resolver,
    Retagger,
    StaticMapResolver,
    vcenter_based_id,
)

UUID = "3f2b8c1e-9a4d-4c6e-8f10-2b3c4d5e6f70"
CPU = Counter("cpu.usage.average", 2, "percent")


def vm(moref: str, vcenter: str = "vc1", name: str = "", instance_uuid: str = "") -> \
        VirtualMachine:
    return VirtualMachine(vcenter, moref, name or moref, instance_uuid or f"iu-{moref}",
                          f"bios-{moref}", True)


def series(moref: str, samples: int = 3, vcenter: str = "vc1") -> Series:
    stamps = np.arange(samples, dtype=np.int64) * 20 + 1_700_000_000
    return Series(vcenter, moref, CPU, "", stamps, np.ones(samples, dtype=np.int64))


# -- static mapping file -------------------------------------------------------------------
def test_csv_mapping_by_moref_per_vcenter_and_by_instance_uuid(tmp_path: Path) -> None:
    path = tmp_path / "map.csv"
    path.write_text(
        "vm_id,vcenter,moref,instance_uuid,name,vapp,vdc,org\n"
        "urn:vcloud:vm:aaaa,vc1,vm-42,,web,app1,vdc1,org1\n"
        "urn:vcloud:vm:bbbb,vc2,vm-42,,db,app2,vdc2,org2\n"
        "urn:vcloud:vm:cccc,,vm-7,,any,,,\n"
        f"urn:vcloud:vm:dddd,,,{UUID.upper()},byuuid,,,\n")
    resolver = StaticMapResolver.from_file(path)
    assert resolver.resolve(vm("vm-42", "vc1")) == EntityId("urn:vcloud:vm:aaaa", "web", "app1",
                                                              "vdc1", "org1")
    assert resolver.resolve(vm("vm-42", "vc2")) == EntityId("urn:vcloud:vm:bbbb", "db", "app2",
                                                              "vdc2", "org2")
    assert resolver.resolve(vm("vm-42", "vc3")) is None  # vCenter-specific rows only
    assert resolver.resolve(vm("vm-7", "vc9")).vm == "urn:vcloud:vm:cccc"  # type: ignore[union-attr]
    found = resolver.resolve(vm("vm-1", instance_uuid=UUID))
    assert found is not None and found.vm == "urn:vcloud:vm:dddd"


def test_yaml_mapping(tmp_path: Path) -> None:
    path = tmp_path / "map.yaml"
    path.write_text("- {vm_id: 'urn:vcloud:vm:1111', moref: vm-5, vcenter: vc1, vdc: gold}\n"
                    f"- {{vm_id: 'urn:vcloud:vm:2222', instance_uuid: '{UUID}'}}\n")
    resolver = StaticMapResolver.from_file(path)
    assert resolver.resolve(vm("vm-5")) == EntityId("urn:vcloud:vm:1111", vdc="gold")
    assert resolver.resolve(vm("vm-6", instance_uuid=UUID)) == EntityId("urn:vcloud:vm:2222")
    assert resolver.resolve(vm("vm-6")) is None


@pytest.mark.parametrize(("text", "message"), [
    ("vm_id,moref\nvm-1,vm-1\n", "entry 1: vm_id 'vm-1' is not urn:vcloud:vm:<uuid>"),
    ("vm_id,moref\nurn:vcloud:vm:1,\n", "entry 1: needs moref or instance_uuid"),
])
def test_bad_mapping_entries_are_named(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "map.csv"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        StaticMapResolver.from_file(path)


def test_missing_or_malformed_mapping_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        StaticMapResolver.from_file(tmp_path / "absent.csv")
    path = tmp_path / "map.yaml"
    path.write_text("vm_id: urn:vcloud:vm:1\n")
    with pytest.raises(ConfigError, match="expected a list"):
        StaticMapResolver.from_file(path)


# -- name heuristic ---------------------------------------------------------------------
@pytest.mark.parametrize(("name", "expected"), [
    (f"web01 ({UUID})", EntityId(f"urn:vcloud:vm:{UUID}", "web01")),
    (f"my vm (2) ({UUID.upper()})", EntityId(f"urn:vcloud:vm:{UUID}", "my vm (2)")),
    ("web01", None),
    (f"web01 ({UUID[:-1]})", None),
    (f"({UUID})", None),
    (f"web01 ({UUID}) copy", None),
])
def test_name_heuristic(name: str, expected: EntityId | None) -> None:
    assert NameHeuristicResolver().resolve(vm("vm-1", name=name)) == expected


# -- Retagger -------------------------------------------------------------------------------
class Fixed:
    def __init__(self, known: dict[str, EntityId]) -> None:
        self.known = known
        self.asked: list[str] = []

    def resolve(self, vm: VirtualMachine) -> EntityId | None:
        self.asked.append(vm.moref)
        return self.known.get(vm.moref)


def test_resolvers_are_asked_in_order_first_answer_wins() -> None:
    first = Fixed({"vm-1": EntityId("urn:vcloud:vm:first")})
    second = Fixed({"vm-1": EntityId("urn:vcloud:vm:second"),
                    "vm-2": EntityId("urn:vcloud:vm:two")})
    resolvers: list[Resolver] = [first, second, NameHeuristicResolver()]
    retagger = Retagger(resolvers)
    assert retagger.entity(vm("vm-1")) == EntityId("urn:vcloud:vm:first")
    assert retagger.entity(vm("vm-2")) == EntityId("urn:vcloud:vm:two")
    assert retagger.entity(vm("vm-3", name=f"x ({UUID})")).vm == f"urn:vcloud:vm:{UUID}"  # type: ignore[union-attr]
    assert second.asked == ["vm-2", "vm-3"]


def test_keep_tags_unmapped_vms_with_their_vcenter_id() -> None:
    vms = {m: vm(m) for m in ("vm-1", "vm-2")}
    retagger = Retagger([Fixed({"vm-1": EntityId("urn:vcloud:vm:one")})], unmapped="keep")
    batch = SeriesBatch("vc1", [series("vm-1"), series("vm-2"), series("vm-2", 2),
                                series("vm-gone", 4)])
    retagger.apply(batch, vms)
    assert [s.entity.vm for s in batch.series] == [  # type: ignore[union-attr]
        "urn:vcloud:vm:one", "urn:vcenter:vc1:vm:iu-vm-2", "urn:vcenter:vc1:vm:iu-vm-2"]
    assert vcenter_based_id(vms["vm-2"]) == EntityId("urn:vcenter:vc1:vm:iu-vm-2", "vm-2")
    # A moref missing from the inventory (deleted mid-cycle) is never kept: counted.
    assert batch.dropped == {"unknown_vm": 4}


def test_vcenter_based_id_uses_vcenter_s_uuid_not_the_configured_name() -> None:
    renamed = [VirtualMachine(name, "vm-7", "web", "iu-7", "bios-7", True,
                              vcenter_uuid="a1b2c3d4-0000-4000-8000-00000000000a")
               for name in ("vc-old", "vc-new")]
    ids = {vcenter_based_id(item) for item in renamed}
    assert ids == {EntityId("urn:vcenter:a1b2c3d4-0000-4000-8000-00000000000a:vm:iu-7", "web")}


def test_skip_counts_samples_by_reason() -> None:
    vms = {m: vm(m) for m in ("vm-1", "vm-2", "vm-3")}
    retagger = Retagger([Fixed({"vm-1": EntityId("urn:vcloud:vm:one")})], unmapped="skip")
    batch = SeriesBatch("vc1", [series("vm-1", 3), series("vm-2", 5), series("vm-3", 2),
                                series("vm-3", 1), series("vm-x", 7)])
    retagger.apply(batch, vms)
    assert [s.moref for s in batch.series] == ["vm-1"]
    assert batch.dropped == {"not_vcd_managed": 8, "unknown_vm": 7}
    kept = sum(len(s) for s in batch.series)
    assert kept + sum(batch.dropped.values()) == 3 + 5 + 2 + 1 + 7  # nothing silent


def test_resolver_asked_once_per_vm_per_batch() -> None:
    resolver = Fixed({})
    batch = SeriesBatch("vc1", [series("vm-1"), series("vm-1"), series("vm-2")])
    Retagger([resolver], unmapped="skip").apply(batch, {m: vm(m) for m in ("vm-1", "vm-2")})
    assert resolver.asked == ["vm-1", "vm-2"]


# -- configuration ----------------------------------------------------------------------
VC = {"name": "vc1", "url": "https://vc1.example/sdk",
      "credentials": {"username": "u", "password": "p"}}


def test_vcd_api_section_defaults_and_secrets(tmp_path: Path) -> None:
    secret = tmp_path / "vcd-pw"
    secret.write_text("t0p-secret\n")
    config = parse_config({"vcenters": [VC], "vcd": {"unmapped": "skip", "api": {
        "url": "https://vcd.example/api/",
        "credentials": {"username": "administrator@System", "password_file": str(secret)},
        "vcenter_names": {"vc-in-vcd": "vc1"}}}}, environ={})
    api = config.vcd.api
    assert api is not None and api.base_url == "https://vcd.example"
    assert (api.api_version, api.format, api.refresh_seconds, api.page_size) == \
        ("37.0", "json", 900, 128)
    assert api.early_refresh_seconds == 60 and api.tls.insecure is False
    assert api.credentials.secret() == "t0p-secret" and "t0p-secret" not in repr(config)
    assert config.vcd.name_heuristic is False and config.vcd.mapping_file is None
    default = parse_config({"vcenters": [VC]}, environ={})
    assert default.vcd.api is None and default.vcd.unmapped == "keep"


@pytest.mark.parametrize(("api", "message"), [
    ({"url": "http://vcd.example"}, "vcd.api.url"),
    ({"page_size": 129}, "vcd.api.page_size"),
    ({"format": "yaml"}, "vcd.api.format"),
    ({"refresh_seconds": 5}, "vcd.api.refresh_seconds"),
    ({"api_version": "latest"}, "vcd.api.api_version"),
    ({"colour": "blue"}, "vcd.api.colour: unknown key"),
    ({"credentials": {"username": "administrator@System"}}, "one of password"),
])
def test_bad_vcd_api_values_name_the_key(api: dict[str, object], message: str) -> None:
    raw = {"url": "https://vcd.example",
           "credentials": {"username": "administrator@System", "password": "x"}, **api}
    with pytest.raises(ConfigError) as info:
        parse_config({"vcenters": [VC], "vcd": {"api": raw}}, environ={})
    assert message in str(info.value) and "\n" not in str(info.value)


def test_vcenter_names_must_name_configured_vcenters() -> None:
    from statsfeeder.transforms.vcd import VcdApiResolver

    config = parse_config({"vcenters": [VC], "vcd": {"api": {
        "url": "https://vcd.example", "vcenter_names": {"vc-in-vcd": "vc9"},
        "credentials": {"username": "administrator@System", "password": "x"}}}}, environ={})
    assert config.vcd.api is not None
    with pytest.raises(ConfigError, match="vc9 is not a configured vCenter"):
        VcdApiResolver(config.vcd.api, {"vc1": str(VC["url"])})
