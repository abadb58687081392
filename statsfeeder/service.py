"""The service: builds the stages from the configuration (sources, transforms, sinks, one
pipeline per vCenter), runs one cycle (``once``) or the scheduler with its signals, HA lease
wiring and telemetry server (``run``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from statsfeeder.config import Config
from statsfeeder.errors import StatsfeederError
from statsfeeder.memory import limit_heaps, return_free_memory

log = logging.getLogger("statsfeeder")


@dataclass
class Service:
    """What one process runs: a pipeline per vCenter sharing the sinks and the metadata store."""

    telemetry: Any
    pipelines: list[Any]
    sinks: list[Any]
    store: Any
    vcd: Any = None
    health: Any = None
    marks: Any = None
    """The sinks' open/missing state (``sink_health``) and where watermarks persist."""
    rollups: Any = None
    leases: Any = None
    """The roll-ups and (with ``ha``) the lease store: both on the Cassandra sink's session."""

    async def open(self) -> None:
        if self.marks is not None and self.marks.file is not None:
            await asyncio.to_thread(self.marks.file.open)
        await self.health.open_all()  # a missing sink is retried; the others are collected
        if self.rollups is not None and self.health.up("cassandra"):
            await asyncio.to_thread(self.rollups.store)  # prepares: not on the event loop
        if self.vcd is not None:
            from statsfeeder.transforms.vcd import VcdUnavailable

            try:
                await asyncio.to_thread(self.vcd.refresh)
            except VcdUnavailable as exc:  # start anyway: VMs follow vcd.unmapped meanwhile
                log.error("%s", exc)

    async def start_pipeline(self, pipeline: Any) -> None:
        # Watermarks first: the lag they give is exported even while vCenter cannot be reached.
        await asyncio.to_thread(pipeline.load_watermarks)
        await pipeline.source.start()
        self.telemetry.vcenter_logins.labels(pipeline.source.name).inc()
        if self.store is not None and self.health.up(self.store.name):
            await asyncio.to_thread(self.store.record_counters, pipeline.source.counters)

    async def sink_opened(self, sink: Any) -> None:
        """A sink that was missing is open: Cassandra gets the metric units it missed."""
        from statsfeeder.sink_health import record_counters

        if sink is self.store:
            await record_counters(sink, [p.source.counters for p in self.pipelines])
            # The sink may have connected afresh (its session replaced): what shares it
            # prepares its statements on the new one, off the event loop.
            if self.rollups is not None:
                await asyncio.to_thread(self.rollups.store)
            if self.leases is not None:
                await asyncio.to_thread(self.leases.use, sink.session)

    def close(self) -> None:
        if self.marks is not None:
            self.marks.close()
        for pipeline in self.pipelines:
            pipeline.source.client.close()
        if self.rollups is not None:
            self.rollups.close()
        for sink in self.sinks:
            sink.close()
        if self.vcd is not None:
            self.vcd.close()


def build_service(config: Config) -> Service:
    from statsfeeder.pipeline import Pipeline
    from statsfeeder.sink_health import SinkHealth
    from statsfeeder.sinks.cassandra.sink import CassandraSink
    from statsfeeder.sources.vcenter.source import VCenterSource
    from statsfeeder.telemetry import Telemetry
    from statsfeeder.transforms.retag import (
        NameHeuristicResolver,
        Resolver,
        Retagger,
        StaticMapResolver,
    )
    from statsfeeder.transforms.vcd import VcdApiResolver
    from statsfeeder.watermarks import WatermarkFile, WatermarkStore

    telemetry = Telemetry()
    resolvers: list[Resolver] = []
    if config.vcd.mapping_file:
        resolvers.append(StaticMapResolver.from_file(config.vcd.mapping_file))
    vcd = None
    if config.vcd.api is not None:
        vcd = VcdApiResolver(config.vcd.api, {vc.name: vc.url for vc in config.vcenters})
        resolvers.append(vcd)
        telemetry.vcd_map_age.set_function(vcd.map_age_seconds)
        telemetry.vcd_refresh_failures.set_function(lambda: float(vcd.failures_total))
    if config.vcd.name_heuristic:
        resolvers.append(NameHeuristicResolver())  # last: a guess from the VM's name
    retagger = Retagger(resolvers, config.vcd.unmapped)
    sinks: list[Any] = []
    store = None
    if config.cassandra.enabled:
        store = CassandraSink(config.cassandra)
        sinks.append(store)
    if config.kairosdb.enabled:
        from statsfeeder.sinks.kairosdb.sink import KairosDBSink

        sinks.append(KairosDBSink(config.kairosdb))
    service = Service(telemetry, [], sinks, store, vcd)
    service.health = SinkHealth(sinks, telemetry, max_backoff=config.collection.interval_seconds,
                                required=["cassandra"] if config.ha.enabled else [],
                                on_open=service.sink_opened)
    file = WatermarkFile(config.watermarks_file) if config.watermarks_file else None
    service.marks = WatermarkStore(store, file, lambda: service.health.up("cassandra"))
    service.pipelines = [Pipeline(VCenterSource(vc, config.collection), sinks, retagger,
                                  telemetry, service.marks, sink_up=service.health.up,
                                  sink_lost=service.health.lost)
                         for vc in config.vcenters]
    if store is not None and config.cassandra.rollups.enabled:
        from statsfeeder.rollups.hook import Rollups

        service.rollups = Rollups(store, config.cassandra, telemetry)
        for pipeline in service.pipelines:
            pipeline.after_store = service.rollups.mark
    return service


async def run_once(config: Config) -> int:
    service = build_service(config)
    await service.open()
    try:
        # A configured vCD whose map could not be read: still collect (per vcd.unmapped),
        # but say so in the exit code.
        status = 1 if service.vcd is not None and not service.vcd.loaded else 0
        deadline = config.collection.cycle_deadline
        for pipeline in service.pipelines:
            try:
                async with asyncio.timeout(deadline):
                    await service.start_pipeline(pipeline)
                    for problem in pipeline.source.counter_problems:  # the others are collected
                        print(f"statsfeeder: {problem}", file=sys.stderr)
                        status = 1
                    report = await pipeline.run_cycle()
            except TimeoutError:
                print(f"statsfeeder: vCenter {pipeline.source.name}: cycle abandoned after "
                      f"{deadline:g} s (collection.cycle_deadline_seconds)", file=sys.stderr)
                status = 1
                continue
            except Exception as exc:  # one line per vCenter, whatever vCenter answered
                print(f"statsfeeder: {cycle_error(pipeline.source.name, exc)}", file=sys.stderr)
                status = 1
                continue
            print(report.summary())
            if not report.ok:
                status = 1
        for name, why in service.health.missing().items():
            print(f"statsfeeder: sink {name} missed this cycle ({why}); the next cycle "
                  "backfills it from its watermarks once it is reachable", file=sys.stderr)
            status = 1
        # cron users get roll-ups of the settled hours too
        if service.rollups is not None and service.health.up("cassandra"):
            rolled = await service.rollups.run_pass()
            print(f"roll-ups: {rolled.vm_hours} VM-hours, {rolled.tenant_hours} VDC/org-hours")
        return status
    finally:
        await asyncio.to_thread(service.close)


def cycle_error(name: str, exc: Exception) -> str:
    if isinstance(exc, StatsfeederError):
        return str(exc)
    return f"vCenter {name}: cycle failed: {type(exc).__name__}: {exc}"


async def run_service(config: Config, drain_seconds: float = 6.0) -> int:
    """Cycles aligned to wall-clock multiples of the interval; never two cycles of one vCenter
    at once (an overrun skips that vCenter's next start, counted); a cycle still running at
    ``collection.cycle_deadline`` is abandoned (counted). With ``ha.enabled`` only the
    vCenters whose lease this instance holds are collected. SIGTERM/SIGINT: no new cycle
    starts, running ones stop asking vCenter at once and get ``drain_seconds`` to write what
    they collected, leases are released, exit 0. After each cycle the allocator's free pages
    go back to the system (statsfeeder.memory), so a backfill's peak does not stay."""
    limit_heaps()  # before any thread starts
    service = build_service(config)
    telemetry = service.telemetry
    ready = threading.Event()
    server = telemetry.serve(config.telemetry.listen, ready)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    interval = config.collection.interval_seconds
    deadline = config.collection.cycle_deadline
    running: dict[str, asyncio.Task[None]] = {}
    loaded: dict[str, int] = {}  # vCenter → lease acquisition its watermarks were read under

    def busy(name: str) -> bool:
        task = running.get(name)
        return task is not None and not task.done()

    def lease_lost(name: str) -> None:
        if busy(name):
            running[name].cancel()

    keeper = None

    async def cycle(pipeline: Any, slot: int) -> None:
        name = pipeline.source.name
        acquisition = keeper.acquisitions(name) if keeper is not None else 0
        scope = asyncio.timeout(deadline)
        try:
            async with scope:
                if name not in loaded:
                    await service.start_pipeline(pipeline)
                elif loaded[name] != acquisition:  # another instance advanced them meanwhile
                    await asyncio.to_thread(pipeline.load_watermarks)
                loaded[name] = acquisition
                report = await pipeline.run_cycle()
            log.info("cycle %s: %s", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(slot)),
                     report.summary())
        except TimeoutError as exc:
            if not scope.expired():  # a TimeoutError of its own, not the deadline
                telemetry.vcenter_errors.labels(name, type(exc).__name__).inc()
                log.error("%s", cycle_error(name, exc))
                return
            telemetry.cycles_abandoned.labels(name).inc()
            log.error("vCenter %s: cycle abandoned after %g s (collection.cycle_deadline_"
                      "seconds); the next slot asks again", name, deadline)
        except Exception as exc:  # whatever vCenter answered: one line, counted, no traceback
            telemetry.vcenter_errors.labels(name, type(exc).__name__).inc()
            log.error("%s", cycle_error(name, exc))
        except asyncio.CancelledError:
            if not stopping.is_set():
                log.warning("vCenter %s: cycle cancelled: lease lost", name)
                return
            raise
        await asyncio.to_thread(return_free_memory)

    background: list[asyncio.Task[None]] = []
    read_api = None
    try:
        await service.open()
        if config.read_api.enabled:
            from statsfeeder.readapi import keep_serving
            from statsfeeder.readapi.server import ReadApi

            read_api = ReadApi(config.read_api, config.cassandra, metrics=telemetry.read_api)
            background.append(asyncio.create_task(keep_serving(read_api, stopping)))
        if service.vcd is not None:
            background.append(asyncio.create_task(service.vcd.run_refresher(stopping)))
        background.append(asyncio.create_task(service.health.run(stopping)))
        if config.ha.enabled:
            from statsfeeder.ha import LeaseKeeper
            from statsfeeder.sinks.cassandra.leases import LeaseStore

            service.leases = LeaseStore(service.store.session, config.cassandra.keyspace,
                                        config.ha.lease_seconds)
            keeper = LeaseKeeper(service.leases, config.ha.instance_id,
                                 [p.source.name for p in service.pipelines], telemetry,
                                 on_lost=lease_lost, busy=busy)
            log.info("ha: instance %s shares %d vCenter(s), lease %d s", keeper.owner,
                     len(keeper.names), config.ha.lease_seconds)
            await keeper.tick()
            background.append(asyncio.create_task(keeper.run(stopping)))
        else:
            for pipeline in service.pipelines:
                telemetry.leases_held.labels(pipeline.source.name).set(1)
        if service.rollups is not None:  # one instance rolls up: the holder of the first lease
            first = min(p.source.name for p in service.pipelines)
            background.append(asyncio.create_task(service.rollups.run(stopping, lambda: (
                service.health.up("cassandra")
                and not any(busy(p.source.name) for p in service.pipelines)
                and (keeper is None or keeper.holds(first))))))
        ready.set()
        telemetry.up.set(1)
        slot = int(time.time())
        while not stopping.is_set():
            for pipeline in service.pipelines:
                name = pipeline.source.name
                if keeper is not None and not keeper.holds(name):
                    continue
                pipeline.update_lag()  # every tick, however stuck the cycle is
                if busy(name):
                    telemetry.cycle_overruns.labels(name).inc()
                    log.warning("vCenter %s: previous cycle still running; skipped", name)
                    continue
                running[name] = asyncio.create_task(cycle(pipeline, slot))
            delay = interval - time.time() % interval
            slot = int(time.time() + delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), delay)
        log.info("stopping: writing what running cycles collected (up to %.0f s)",
                 drain_seconds)
        pending = [task for task in running.values() if not task.done()]
        for task in pending:  # stops their vCenter calls; run_cycle drains its sink buffers
            task.cancel()
        if pending:
            _, late = await asyncio.wait(pending, timeout=drain_seconds)
            for task in late:
                task.cancel()
        await asyncio.gather(*background)
        if keeper is not None:
            await keeper.release_all()
        return 0
    finally:
        telemetry.up.set(0)
        server.shutdown()
        server.server_close()
        if read_api is not None:
            await read_api.stop()
        await asyncio.to_thread(service.close)

