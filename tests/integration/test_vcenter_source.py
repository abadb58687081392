"""The vCenter source against real vcsim processes with TLS on."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from peers import vcsim
from statsfeeder.errors import VCenterUnavailable
from statsfeeder.model import REALTIME_INTERVAL
from statsfeeder.sources.vcenter.source import CollectedChunk, VCenterSource
from tests.helpers import collection_config, vcenter_config

METRICS = ["cpu.usage.average", "mem.usage.average", "net.received.average"]


async def collect_all(source: VCenterSource, watermarks: dict[str, int] | None = None,
                      ) -> tuple[list[CollectedChunk], int]:
    now = await source.vcenter_now()
    chunks = source.plan(watermarks or {}, now)
    return [c async for c in source.collect(chunks)], now


async def started(env: dict[str, str], name: str = "vc1", fmt: str = "csv",
                  **vc: object) -> VCenterSource:
    source = VCenterSource(vcenter_config(env, name, **vc),
                           collection_config(metrics=METRICS, format=fmt))
    await source.start()
    return source


@pytest.mark.parametrize("fmt", ["csv", "normal"])
async def test_collects_every_powered_on_vm(vcsim_env: dict[str, str], fmt: str) -> None:
    source = await started(vcsim_env, fmt=fmt)
    try:
        assert [c.name for c in source.counters] == METRICS
        on = set(source.powered_on())
        assert on and on <= set(source.vms)
        results, now = await collect_all(source)
        assert all(r.error is None for r in results)
        series = [s for r in results for s in r.batch.series]
        assert {s.moref for s in series} == on
        for item in series:
            assert np.all(np.diff(item.timestamps) == REALTIME_INTERVAL)
            assert np.all(item.timestamps % REALTIME_INTERVAL == 0)
            assert item.timestamps[-1] <= now
        expected = sum(r.batch.expected_samples for r in results)
        collected = sum(r.batch.samples for r in results)
        dropped = sum(sum(r.batch.dropped.values()) for r in results)
        assert 0 < collected <= expected
        if fmt == "csv":
            assert collected == expected  # windows end on the grid, so vcsim's samples do too
        if fmt == "csv":
            assert dropped == 0
    finally:
        source.client.close()


async def test_watermark_limits_the_window(vcsim_env: dict[str, str]) -> None:
    source = await started(vcsim_env)
    try:
        now = await source.vcenter_now()
        moref = source.powered_on()[0]
        mark = now - 40
        chunks = source.plan({moref: mark}, now)
        window = next(vm for c in chunks for vm in c.vms if vm.moref == moref)
        assert window.start % 300 == 0 and window.start <= mark - 60
        results = [c async for c in source.collect(chunks)]
        mine = [s for r in results for s in r.batch.series if s.moref == moref]
        assert mine and all(s.timestamps[0] > window.start for s in mine)
    finally:
        source.client.close()


async def test_parsed_timestamps_are_kept_for_one_cycle_only(vcsim_env: dict[str, str]
                                                            ) -> None:
    """A sampleInfo string is parsed once per cycle; the next cycle's windows differ, so a
    cache kept across cycles would only grow (up to its capacity) with dead entries."""
    source = await started(vcsim_env)
    try:
        now = await source.vcenter_now()
        kept = []
        for behind in (600, 1200, 1800):
            marks = dict.fromkeys(source.powered_on(), now - behind)
            assert all(c.error is None for c in (await collect_all(source, marks))[0])
            kept.append(set(source._timestamps._entries))
        assert all(kept)
        assert kept[0].isdisjoint(kept[2]) and kept[1].isdisjoint(kept[2])
    finally:
        source.client.close()


async def test_two_vcenters_and_a_slow_one_times_out_alone(vcsim_env: dict[str, str]) -> None:
    slow_env = vcsim.start_instance("vcsim-slow", 18991, vms=2, method_delay="QueryPerf:8000")
    fast = await started(vcsim_env, "fast")
    slow = await started(slow_env, "slow", read_timeout_seconds=2)
    try:
        began = time.monotonic()
        (fast_results, _), (slow_results, _) = await asyncio.gather(
            collect_all(fast), collect_all(slow))
        assert all(r.error is None for r in fast_results)
        assert sum(r.batch.samples for r in fast_results) > 0
        assert slow_results and all(isinstance(r.error, VCenterUnavailable)
                                    for r in slow_results)
        assert "timed out" in str(slow_results[0].error)
        assert time.monotonic() - began < 30
    finally:
        fast.client.close()
        slow.client.close()
        vcsim.stop_instance("vcsim-slow")


async def test_session_lost_mid_cycle_logs_in_again(vcsim_env: dict[str, str]) -> None:
    source = await started(vcsim_env)
    try:
        logins = source.client.logins
        si = source.client.connect()
        si.content.sessionManager.Logout()  # what an expired session looks like to the collector
        results, _ = await collect_all(source)
        assert all(r.error is None for r in results)
        assert sum(r.batch.samples for r in results) > 0
        assert source.client.logins == logins + 1
    finally:
        source.client.close()


async def test_restarted_vcenter_is_collected_again(vcsim_env: dict[str, str]) -> None:
    env = vcsim.start_instance("vcsim-restart", 18992, vms=2)
    source = await started(env, "restart")
    try:
        first, _ = await collect_all(source)
        assert all(r.error is None for r in first)
        vcsim.stop_instance("vcsim-restart")
        with pytest.raises(VCenterUnavailable):
            await collect_all(source)
        vcsim.start_instance("vcsim-restart", 18992, vms=2)
        again, _ = await collect_all(source)
        assert all(r.error is None for r in again)
        assert sum(r.batch.samples for r in again) > 0
    finally:
        source.client.close()
        vcsim.stop_instance("vcsim-restart")


async def test_windows_follow_vcenter_time_not_the_collector_clock(
        vcsim_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    source = await started(vcsim_env)
    try:
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() + 7200)  # collector two hours ahead
        results, now = await collect_all(source)
        assert abs(now - real()) < 120
        assert sum(r.batch.samples for r in results) > 0
    finally:
        source.client.close()


async def test_wrong_ca_and_wrong_password_are_clear(vcsim_env: dict[str, str]) -> None:
    from peers.common import ensure_certs

    bad_ca = VCenterSource(vcenter_config(vcsim_env, tls={"ca_file": str(ensure_certs()
                                                          ["other_ca"])}), collection_config())
    with pytest.raises(VCenterUnavailable, match="TLS failed"):
        await bad_ca.start()
    env = dict(vcsim_env, VCSIM_PASSWORD="wrong")
    bad_password = VCenterSource(vcenter_config(env), collection_config())
    with pytest.raises(VCenterUnavailable, match="login refused") as info:
        await bad_password.start()
    assert "wrong" not in str(info.value)


async def test_thumbprint_pins_the_certificate(vcsim_env: dict[str, str]) -> None:
    import hashlib
    import ssl
    from urllib.parse import urlsplit

    parts = urlsplit(vcsim_env["VCSIM_URL"])
    pem = ssl.get_server_certificate((parts.hostname, parts.port))
    digest = hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()
    pinned = VCenterSource(vcenter_config(vcsim_env, tls={"thumbprint": digest}),
                           collection_config(metrics=METRICS))
    await pinned.start()
    pinned.client.close()
    wrong = VCenterSource(vcenter_config(vcsim_env, tls={"thumbprint": "00" * 32}),
                          collection_config(metrics=METRICS))
    with pytest.raises(VCenterUnavailable, match=r"does not match tls\.thumbprint"):
        await wrong.start()


async def test_chunk_over_the_server_limit_is_halved_never_dropped() -> None:
    env = vcsim.start_instance("vcsim-limited", 18993, vms=6, max_query_metrics=7)
    source = await started(env, "limited", max_query_metrics=64000)
    try:
        on = set(source.powered_on())
        assert len(on) >= 6  # 6 VMs x 3 metrics = 18 ids per call at first: over the limit
        results, _ = await collect_all(source)
        assert all(r.error is None for r in results)
        assert max(len(r.chunk.vms) for r in results) * len(METRICS) <= 7
        assert {s.moref for r in results for s in r.batch.series} == on
    finally:
        source.client.close()
        vcsim.stop_instance("vcsim-limited")


async def test_unmapped_ids_depend_on_vcenter_not_on_the_configured_name(
        vcsim_env: dict[str, str]) -> None:
    """Renaming a vCenter's entry in the configuration must not split its VMs' history."""
    from statsfeeder.transforms.retag import Retagger

    old, new = await started(vcsim_env, "dc-east"), await started(vcsim_env, "east-renamed")
    try:
        about = old.client.connect().RetrieveContent().about.instanceUuid
        assert about and set(old.vms) == set(new.vms)
        retagger = Retagger([], unmapped="keep")
        for moref, vm in old.vms.items():
            before, after = retagger.entity(vm), retagger.entity(new.vms[moref])
            assert before == after
            assert before is not None
            assert before.vm == f"urn:vcenter:{about}:vm:{vm.instance_uuid}"
    finally:
        old.client.close()
        new.client.close()


async def test_probe_reads_one_page_of_a_large_inventory() -> None:
    """validate's probe stops at the first page holding a powered-on VM (vcsim cannot cancel
    the rest, a real vCenter can: either way the probe answers)."""
    from statsfeeder.sources.vcenter.probe import PAGE, probe

    env = vcsim.start_instance("vcsim-probe", 18972, vms=60, clusters=2)
    source = VCenterSource(vcenter_config(env, "probe"), collection_config(metrics=METRICS))
    try:
        checked = await asyncio.to_thread(probe, source.client, source.collection)
        assert checked.problems == []
        [note] = checked.notes
        assert "3 of 3 metrics known; QueryPerf allowed" in note
        assert PAGE < 120  # more VMs than one page
    finally:
        source.client.close()
        vcsim.stop_instance("vcsim-probe")
