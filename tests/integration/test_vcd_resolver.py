"""VcdApiResolver against the vCD API double, seeded with the VMs of real vcsim inventories.

Three vcsim instances: the default one (``vc1``, 4 VMs), ``vcsim-vcd`` (``vc2``, 140 VMs in 2
clusters: more than one 128-record page) and ``vcsim-vcd-twin`` (``vc3``, the default's
parameters, hence the very same morefs as ``vc1``: vm-39, vm-42, ...). The extra instances
are stopped when the module ends. vCD itself has no simulator: ``tests/vcd_double.py`` is
the project's only peer double, built from the documented API.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import pytest_asyncio

from peers import vcsim
from peers.common import PeerError, ensure_certs
from statsfeeder.config import VcdConfig
from statsfeeder.model import Counter, EntityId, Series, SeriesBatch, VirtualMachine
from statsfeeder.sources.vcenter.source import VCenterSource
from statsfeeder.transforms.retag import Retagger
from statsfeeder.transforms.vcd import VcdApiResolver, VcdUnavailable
from tests.helpers import collection_config, vcenter_config
from tests.vcd_double import VcdDouble

Env = dict[str, str]
BIG = ("vcsim-vcd", 18987)
TWIN = ("vcsim-vcd-twin", 18998)
ADMIN = "administrator@System"
CPU = Counter("cpu.usage.average", 2, "percent")


def _start(name: str, port: int, **kwargs: Any) -> Env:
    try:
        return vcsim.start_instance(name, port, **kwargs)
    except PeerError as exc:
        pytest.fail(f"vcsim instance {name} could not start: {exc}", pytrace=False)


@pytest.fixture(scope="module")
def big_vcsim_env() -> Iterator[Env]:
    try:
        yield _start(*BIG, vms=70, hosts=2, clusters=2)
    finally:
        vcsim.stop_instance(BIG[0])


@pytest.fixture(scope="module")
def twin_vcsim_env() -> Iterator[Env]:
    try:
        yield _start(*TWIN, vms=4)  # the default instance's parameters: the same morefs
    finally:
        vcsim.stop_instance(TWIN[0])


@dataclass
class Inventories:
    urls: dict[str, str]
    vms: dict[str, dict[str, VirtualMachine]]

    def all(self) -> list[VirtualMachine]:
        return [vm for by_moref in self.vms.values() for vm in by_moref.values()]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def inventories(vcsim_env: Env, big_vcsim_env: Env, twin_vcsim_env: Env
                      ) -> AsyncIterator[Inventories]:
    found = Inventories({}, {})
    for name, env in (("vc1", vcsim_env), ("vc2", big_vcsim_env), ("vc3", twin_vcsim_env)):
        source = VCenterSource(vcenter_config(env, name),
                               collection_config(metrics=[CPU.name]))
        try:
            await source.start()
        finally:
            source.client.close()
        found.urls[name] = env["VCSIM_URL"]
        found.vms[name] = source.vms
    assert len(found.vms["vc2"]) == 140
    yield found


class Clock:
    def __init__(self) -> None:
        self.now = 10_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class World:
    """The double seeded from the inventories, and what each VM should resolve to."""

    double: VcdDouble
    inventories: Inventories
    vm_ids: dict[tuple[str, str], str]
    vc_ids: dict[str, str]
    vc_uuids: dict[str, str]

    def expected(self, vcenter: str, moref: str) -> EntityId:
        vm = self.double.vms[self.vm_ids[(vcenter, moref)]]
        return EntityId(f"urn:vcloud:vm:{vm.uuid}", vm.name, vm.vapp, vm.vdc, vm.org)

    def add(self, vcenter: str, vm: VirtualMachine, index: int) -> str:
        uuid = self.double.add_vm(self.vc_ids[vcenter], vm.moref, f"{vm.name}-vcd",
                                  vapp=f"{vcenter}-vapp-{index // 5}", vdc=f"vdc-{index % 3}",
                                  org=f"org-{index % 2}")
        self.vm_ids[(vcenter, vm.moref)] = uuid
        return uuid


@pytest.fixture
def world(inventories: Inventories) -> Iterator[World]:
    with VcdDouble() as double:
        vc_ids = {
            # vc1 is matched on its URL (host and port), vc2 by its vCD name, vc3 by its uuid.
            "vc1": double.add_vcenter("vcenter-one", inventories.urls["vc1"].removesuffix("/sdk")),
            "vc2": double.add_vcenter("vcenter-two", "https://vc2.provider.example"),
            "vc3": double.add_vcenter("vcenter-three", "https://vc3.provider.example"),
        }
        uuids = {name: double.vcenters[ident].uuid for name, ident in vc_ids.items()}
        world = World(double, inventories, {}, vc_ids, uuids)
        for vcenter, vms in inventories.vms.items():
            for index, vm in enumerate(sorted(vms.values(), key=lambda v: v.moref)):
                world.add(vcenter, vm, index)
            # What the map must leave out: templates, VMs not instantiated in vCenter.
            double.add_vm(vc_ids[vcenter], "vm-9001", "template", vapp="catalog-item",
                          vdc="vdc-0", org="org-0", template=True)
            double.add_vm(vc_ids[vcenter], "", "not-deployed", vapp="new", vdc="vdc-0",
                          org="org-0")
        # A vCenter statsfeeder does not collect: its VMs are counted, not mapped.
        elsewhere = double.add_vcenter("vcenter-elsewhere", "https://10.20.30.40")
        for index in range(3):
            double.add_vm(elsewhere, f"vm-{100 + index}", f"far-{index}", vapp="far",
                          vdc="far-vdc", org="org-0")
        yield world


def make(world: World, fmt: str = "json", clock: Callable[[], float] | None = None,
         **api: object) -> VcdApiResolver:
    raw: dict[str, object] = {
        "url": world.double.url, "format": fmt,
        "credentials": {"username": ADMIN, "password": world.double.password},
        "tls": {"ca_file": world.double.ca_file},
        "vcenter_names": {"vcenter-two": "vc2", world.vc_uuids["vc3"]: "vc3"},
        **api,
    }
    return VcdApiResolver(VcdConfig.Api.model_validate(raw), world.inventories.urls,
                          clock=clock or Clock())


def batch_of(vms: list[VirtualMachine]) -> SeriesBatch:
    stamps = np.arange(3, dtype=np.int64) * 20 + 1_700_000_000
    return SeriesBatch(vms[0].vcenter, [Series(vm.vcenter, vm.moref, CPU, "", stamps,
                                               np.ones(3, dtype=np.int64)) for vm in vms])


def assert_all_mapped(world: World, resolver: VcdApiResolver) -> None:
    for vm in world.inventories.all():
        assert resolver.resolve(vm) == world.expected(vm.vcenter, vm.moref), vm


# -- the map ----------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_every_vm_of_every_vcenter_is_mapped_across_pages(world: World, fmt: str) -> None:
    resolver = make(world, fmt)
    try:
        stats = resolver.refresh()
        assert_all_mapped(world, resolver)
        assert stats.vms == len(resolver) == 148
        assert stats.vms_unmatched_vcenter == 3 and stats.no_moref == 3
        assert {vc.name: vc.vcenter for vc in stats.vcenters} == {
            "vcenter-one": "vc1", "vcenter-two": "vc2", "vcenter-three": "vc3",
            "vcenter-elsewhere": None}
        # 154 non-template records in pages of at most 128: two pages, every one read.
        assert world.double.pages_served("adminVM") == 2
        queries = [(q, accept) for _, path, q, accept in world.double.requests
                   if path == "/api/query"]
        assert all(int(q["pageSize"]) <= 128 for q, _ in queries)
        assert all(accept == f"application/*+{fmt};version=37.0" for _, accept in queries)
        assert all(q["filter"] == "isVAppTemplate==false"
                   for q, _ in queries if q["type"] == "adminVM")
        assert resolver.map_age_seconds() == 0 and resolver.loaded
        # Retagged end to end: every series of the 140-VM vCenter gets its vCD id.
        vms = world.inventories.vms["vc2"]
        batch = batch_of(list(vms.values()))
        Retagger([resolver], unmapped="skip").apply(batch, vms)
        assert len(batch.series) == 140 and not batch.dropped
        assert all(s.entity == world.expected("vc2", s.moref) for s in batch.series)
    finally:
        resolver.close()


def test_small_pages_are_all_followed(world: World) -> None:
    resolver = make(world, "xml", page_size=10)
    try:
        assert resolver.refresh().vms == 148
        assert world.double.pages_served("adminVM") == 16  # 154 records
        assert_all_mapped(world, resolver)
    finally:
        resolver.close()


def test_same_moref_in_two_vcenters_does_not_collide(world: World) -> None:
    one, three = world.inventories.vms["vc1"], world.inventories.vms["vc3"]
    shared = sorted(set(one) & set(three))
    assert len(shared) == 4 and "vm-42" in shared
    resolver = make(world)
    try:
        resolver.refresh()
        for moref in shared:
            first, second = resolver.resolve(one[moref]), resolver.resolve(three[moref])
            assert first is not None and second is not None and first.vm != second.vm
            assert first == world.expected("vc1", moref)
            assert second == world.expected("vc3", moref)
    finally:
        resolver.close()


# -- vCD unavailable --------------------------------------------------------------------
@pytest.mark.parametrize("unmapped", ["keep", "skip"])
def test_vcd_down_at_start_vms_follow_the_unmapped_policy(world: World, unmapped: str) -> None:
    clock = Clock()
    resolver = make(world, clock=clock)
    world.double.go_down("refuse")
    try:
        with pytest.raises(VcdUnavailable, match=r"vCD https://127\.0\.0\.1:\d+: cannot connect"):
            resolver.refresh()
        assert not resolver.loaded and resolver.map_age_seconds() == math.inf
        assert resolver.failures == {"connect": 1}
        vms = world.inventories.vms["vc1"]
        batch = batch_of(list(vms.values()))
        Retagger([resolver], unmapped=unmapped).apply(batch, vms)  # type: ignore[arg-type]
        if unmapped == "keep":
            assert [s.entity.vm for s in batch.series] == [  # type: ignore[union-attr]
                f"urn:vcenter:{vms[s.moref].vcenter_uuid}:vm:{vms[s.moref].instance_uuid}"
                for s in batch.series]
        else:
            assert not batch.series and batch.dropped == {"not_vcd_managed": 12}
        # Retries are spaced by early_refresh_seconds and never raise.
        assert not resolver.refresh_due()
        clock.advance(60)
        assert resolver.refresh_due() and resolver.maybe_refresh() is False
        assert resolver.failures == {"connect": 2}
        world.double.come_back()
        clock.advance(60)
        assert resolver.maybe_refresh() is True
        assert_all_mapped(world, resolver)
    finally:
        resolver.close()


@pytest.mark.parametrize(("mode", "kind"), [("503", "http"), ("refuse", "connect"),
                                            ("stall", "timeout")])
def test_vcd_down_later_keeps_the_last_good_map(world: World, mode: str, kind: str,
                                                caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    resolver = make(world, "xml", clock=clock, timeout_seconds=1, connect_timeout_seconds=1)
    try:
        resolver.refresh()
        world.double.go_down(mode)  # type: ignore[arg-type]
        clock.advance(900)
        assert resolver.refresh_due()
        with caplog.at_level(logging.WARNING, "statsfeeder.transforms.vcd"):
            assert resolver.maybe_refresh() is False
        assert "keeping the map of 148 VMs read 900 s ago" in caplog.text
        assert resolver.failures == {kind: 1} and resolver.failures_total == 1
        assert_all_mapped(world, resolver)
        clock.advance(60)
        assert resolver.map_age_seconds() == 960
        assert resolver.maybe_refresh() is False and resolver.failures[kind] == 2
        assert_all_mapped(world, resolver)
        world.double.come_back()
        clock.advance(60)
        world.double.rename_vm(world.vm_ids[("vc1", "vm-42")], "renamed-while-down")
        assert resolver.maybe_refresh() is True
        assert resolver.map_age_seconds() == 0 and resolver.last_error is None
        assert resolver.resolve(world.inventories.vms["vc1"]["vm-42"]).name == (  # type: ignore[union-attr]
            "renamed-while-down")
    finally:
        resolver.close()


@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_malformed_answer_fails_the_refresh_and_keeps_the_map(world: World, fmt: str) -> None:
    resolver = make(world, fmt)
    try:
        resolver.refresh()
        world.double.garbage = b"<html><body>502 Bad Gateway</body>"
        with pytest.raises(VcdUnavailable, match="cannot parse the virtualCenter query page 1"):
            resolver.refresh()
        assert resolver.failures == {"parse": 1} and len(resolver) == 148
        assert_all_mapped(world, resolver)
    finally:
        resolver.close()


# -- changes in vCD ----------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_rename_move_and_delete_are_picked_up_at_refresh(world: World, fmt: str) -> None:
    clock = Clock()
    resolver = make(world, fmt, clock=clock)
    vms = world.inventories.vms["vc2"]
    renamed, moved, other_org, deleted = (vms[m] for m in sorted(vms)[:4])
    try:
        resolver.refresh()
        before = {vm.moref: resolver.resolve(vm) for vm in (renamed, moved, other_org, deleted)}
        double, ids = world.double, world.vm_ids
        double.rename_vm(ids[("vc2", renamed.moref)], "web-renamed")
        double.move_vm(ids[("vc2", moved.moref)], vapp="vapp-elsewhere", vdc="vdc-platinum")
        double.move_vm(ids[("vc2", other_org.moref)], org="org-new", vdc="vdc-new",
                       vapp="vapp-new")
        double.delete_vm(ids[("vc2", deleted.moref)])
        clock.advance(300)
        assert not resolver.refresh_due() and resolver.maybe_refresh() is False
        assert {vm.moref: resolver.resolve(vm)
                for vm in (renamed, moved, other_org, deleted)} == before  # until the refresh
        clock.advance(600)
        assert resolver.maybe_refresh() is True
        assert resolver.resolve(renamed) == EntityId(
            before[renamed.moref].vm, "web-renamed", before[renamed.moref].vapp,  # type: ignore[union-attr]
            before[renamed.moref].vdc, before[renamed.moref].org)  # type: ignore[union-attr]
        found = resolver.resolve(moved)
        assert found is not None and found.vm == before[moved.moref].vm  # type: ignore[union-attr]
        assert (found.vapp, found.vdc) == ("vapp-elsewhere", "vdc-platinum")
        assert resolver.resolve(other_org) == world.expected("vc2", other_org.moref)
        assert resolver.resolve(other_org).org == "org-new"  # type: ignore[union-attr]
        assert resolver.resolve(deleted) is None
        batch = batch_of([renamed, deleted])
        Retagger([resolver], unmapped="skip").apply(batch, vms)
        assert [s.moref for s in batch.series] == [renamed.moref]
        assert batch.dropped == {"not_vcd_managed": 3}
    finally:
        resolver.close()


def test_unknown_vm_triggers_one_rate_limited_early_refresh(world: World) -> None:
    clock = Clock()
    double = world.double
    vms = world.inventories.vms["vc2"]
    late = [vms[m] for m in sorted(vms)[-5:]]  # in vCenter, not yet in vCD
    for vm in late:
        double.delete_vm(world.vm_ids.pop(("vc2", vm.moref)))
    resolver = make(world, clock=clock)
    try:
        resolver.refresh()
        assert resolver.refreshes == 1
        assert all(resolver.resolve(vm) is None for vm in late)
        assert resolver.pending_misses() == 5
        clock.advance(10)
        assert not resolver.refresh_due()  # at most one refresh per early_refresh_seconds
        for index, vm in enumerate(late[:3]):
            world.add("vc2", vm, index)
        clock.advance(50)
        assert resolver.refresh_due() and resolver.maybe_refresh() is True
        assert resolver.early_refreshes == 1 and resolver.refreshes == 2
        assert [resolver.resolve(vm) == world.expected("vc2", vm.moref) for vm in late[:3]] \
            == [True] * 3
        # Still unknown after the refresh that followed their miss: not vCD's, no more early
        # refreshes for them...
        assert all(resolver.resolve(vm) is None for vm in late[3:])
        clock.advance(300)
        assert resolver.pending_misses() == 0 and not resolver.refresh_due()
        # ...until the regular refresh, which picks them up once vCD has them.
        for index, vm in enumerate(late[3:]):
            world.add("vc2", vm, index)
        clock.advance(600)
        assert resolver.maybe_refresh() is True and resolver.early_refreshes == 1
        assert all(resolver.resolve(vm) == world.expected("vc2", vm.moref) for vm in late)
        assert resolver.settled_misses() == 0, "mapped at last: no longer settled as unknown"
    finally:
        resolver.close()


def test_vms_vcd_does_not_manage_are_forgotten_a_day_after_they_stop_appearing(
        world: World) -> None:
    clock = Clock()
    vms = world.inventories.vms["vc2"]
    outsiders = [vms[m] for m in sorted(vms)[:4]]
    for vm in outsiders:
        world.double.delete_vm(world.vm_ids.pop(("vc2", vm.moref)))
    resolver = make(world, clock=clock)
    try:
        resolver.refresh()
        assert all(resolver.resolve(vm) is None for vm in outsiders)
        clock.advance(60)
        resolver.maybe_refresh()
        assert resolver.settled_misses() == 4 and resolver.pending_misses() == 0
        # Two stay in the inventory (asked every cycle), two were deleted (never asked again).
        for _ in range(2 * 24 * 4):  # two days of 15-min refreshes and 5-min cycles
            for _ in range(3):
                clock.advance(300)
                assert all(resolver.resolve(vm) is None for vm in outsiders[:2])
            resolver.maybe_refresh()
        assert resolver.settled_misses() == 2
        assert resolver.pending_misses() == 0 and resolver.early_refreshes == 1
        # A forgotten one that comes back asks for one early refresh again.
        assert resolver.resolve(outsiders[3]) is None and resolver.pending_misses() == 1
    finally:
        resolver.close()


# -- sessions ----------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_token_expired_mid_refresh_logs_in_again_once(world: World, fmt: str) -> None:
    resolver = make(world, fmt)
    try:
        resolver.refresh()
        assert resolver.logins == world.double.logins == 1
        # virtualCenter, organization and the first adminVM page pass; the second page is 401.
        world.double.expire_tokens_after(3)
        assert resolver.refresh().vms == 148
        assert resolver.logins == world.double.logins == 2
        assert world.double.pages_served("adminVM") == 5  # 2 + 2 + the repeated page 2
        assert_all_mapped(world, resolver)
        world.double.expire_tokens()  # idle timeout between two refreshes
        resolver.refresh()
        assert resolver.logins == 3 and not resolver.failures
    finally:
        resolver.close()


def test_login_refused_is_clear_and_never_shows_secrets(world: World,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    resolver = make(world)
    try:
        with caplog.at_level(logging.DEBUG):
            resolver.refresh()
            token = next(iter(world.double._tokens))
            world.double.password = "rotated-password"
            world.double.expire_tokens()
            with pytest.raises(VcdUnavailable, match=r"login refused for user "
                               r"'administrator@System' \(HTTP 401") as info:
                resolver.refresh()
        assert info.value.kind == "auth" and resolver.failures == {"auth": 1}
        assert len(resolver) == 148  # the last good map stays
        for secret in ("vcd-test-password", token):
            assert secret not in caplog.text and secret not in str(info.value)
            assert secret not in repr(resolver)
        tenant = make(world, credentials={"username": "administrator@acme",
                                          "password": "rotated-password"})
        with pytest.raises(VcdUnavailable, match="a System org user is needed"):
            tenant.refresh()
        tenant.close()
    finally:
        resolver.close()


# -- TLS -----------------------------------------------------------------------------------
def test_tls_is_verified_and_insecure_is_loud(world: World,
                                               caplog: pytest.LogCaptureFixture) -> None:
    other = make(world, tls={"ca_file": str(ensure_certs()["other_ca"])})
    with pytest.raises(VcdUnavailable, match=r"TLS failed: .*CERTIFICATE_VERIFY_FAILED"):
        other.refresh()
    assert other.failures == {"tls": 1}
    system_store = make(world, tls={})
    with pytest.raises(VcdUnavailable, match="TLS failed"):
        system_store.refresh()
    insecure = make(world, tls={"insecure": True})
    try:
        with caplog.at_level(logging.WARNING, "statsfeeder.transforms.vcd"):
            assert insecure.refresh().vms == 148
        assert "TLS verification is OFF" in caplog.text
    finally:
        for resolver in (other, system_store, insecure):
            resolver.close()


# -- the background refresher --------------------------------------------------------------
async def test_run_refresher_loads_the_map_and_stops(world: World) -> None:
    config = VcdConfig.Api.model_validate({
        "url": world.double.url, "credentials": {"username": ADMIN,
                                                 "password": world.double.password},
        "tls": {"ca_file": world.double.ca_file}, "vcenter_names": {"vcenter-two": "vc2"}})
    resolver = VcdApiResolver(config, world.inventories.urls, poll_seconds=0.05)
    stop = asyncio.Event()
    task = asyncio.create_task(resolver.run_refresher(stop))
    try:
        for _ in range(200):
            if resolver.loaded:
                break
            await asyncio.sleep(0.05)
        assert resolver.loaded and resolver.refreshes == 1
        vm = world.inventories.vms["vc2"]["vm-101"]
        assert resolver.resolve(vm) == world.expected("vc2", "vm-101")
        await asyncio.sleep(0.2)
        assert resolver.refreshes == 1  # nothing due: no polling of vCD
    finally:
        stop.set()
        await asyncio.wait_for(task, 2)
        resolver.close()
