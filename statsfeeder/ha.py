"""Sharing vCenters between statsfeeder instances (one beside each vCD cell) through leases.

Every third of the lease time each instance renews its membership and its leases, then
balances: it holds at most ceil(vCenters / live instances), gives back its least preferred
idle lease when over that (so a newcomer gets a share), and takes free leases when under it,
most preferred first (rendezvous hashing spreads the preferences). A dead instance's rows
expire after ``lease_seconds``; the others take its vCenters at their next renewal.

Never two collectors for one vCenter: a lease counts as held only until ``lease_seconds`` after
the last renewal was *sent* (so before Cassandra's TTL can end it) minus a margin; when that
passes or another instance owns the row, the holder is told (``on_lost``) and cancels the
vCenter's running cycle. Releases happen only between cycles (``busy``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from statsfeeder.sinks.cassandra.leases import LeaseSnapshot

log = logging.getLogger("statsfeeder.ha")


class LeaseBackend(Protocol):
    lease_seconds: int

    def acquire(self, name: str, owner: str) -> bool: ...

    def renew(self, name: str, owner: str) -> bool: ...

    def release(self, name: str, owner: str) -> bool: ...

    def join(self, instance: str) -> None: ...

    def leave(self, instance: str) -> None: ...

    def snapshot(self) -> LeaseSnapshot: ...


def preference(owner: str, name: str) -> int:
    """Rendezvous hash: each instance ranks the vCenters differently, stably."""
    return int.from_bytes(hashlib.sha256(f"{owner}\0{name}".encode()).digest()[:8], "big")


class LeaseKeeper:
    def __init__(self, store: LeaseBackend, owner: str, names: Iterable[str],
                 telemetry: Any = None, on_lost: Callable[[str], None] = lambda name: None,
                 busy: Callable[[str], bool] = lambda name: False) -> None:
        self.store = store
        self.owner = owner
        self.names = sorted(names)
        self.telemetry = telemetry
        self.on_lost = on_lost
        self.busy = busy
        self.renew_every = store.lease_seconds / 3
        self._valid_for = store.lease_seconds - self.renew_every / 2
        self._deadlines: dict[str, float] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._acquisitions: dict[str, int] = dict.fromkeys(self.names, 0)
        for name in self.names:
            self._set_gauge(name, 0)

    def holds(self, name: str) -> bool:
        return self._deadlines.get(name, 0.0) > time.monotonic()

    @property
    def held(self) -> list[str]:
        return sorted(name for name in self._deadlines if self.holds(name))

    def acquisitions(self, name: str) -> int:
        """Grows each time this instance newly takes the lease: the watermarks in memory may be
        stale then (another instance advanced them)."""
        return self._acquisitions[name]

    async def run(self, stopping: asyncio.Event) -> None:
        """Renew and balance until ``stopping``; leases stay held (release them after the
        running cycles have drained)."""
        while not stopping.is_set():
            await self.tick()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.renew_every)

    async def tick(self) -> None:
        try:
            await asyncio.to_thread(self.store.join, self.owner)
            snapshot = await asyncio.to_thread(self.store.snapshot)
        except Exception as exc:  # Cassandra down: keep leases until they lapse
            self._count_error("snapshot", exc)
            return
        for name in list(self._deadlines):
            await self._renew(name)
        for name, holder in snapshot.holders.items():
            # Ours but not known as ours: an acquire whose answer timed out, or a restart
            # with the same instance_id. Renewing proves it.
            if holder == self.owner and name in self._acquisitions and name not in self._deadlines:
                await self._renew(name, adopting=True)
        members = snapshot.members | {self.owner}
        share = math.ceil(len(self.names) / len(members))
        mine = self.held
        if len(mine) > share:
            idle = [name for name in mine if not self.busy(name)]
            if idle:
                await self._release(min(idle, key=lambda n: preference(self.owner, n)),
                                    "rebalanced")
        elif len(mine) < share:
            free = [name for name in self.names
                    if name not in snapshot.holders and name not in self._deadlines]
            free.sort(key=lambda n: preference(self.owner, n), reverse=True)
            for name in free[:share - len(mine)]:
                await self._acquire(name)

    async def release_all(self) -> None:
        for name in list(self._deadlines):
            await self._release(name, "stopping")
        try:
            await asyncio.to_thread(self.store.leave, self.owner)
        except Exception as exc:  # the membership row expires anyway
            self._count_error("leave", exc)

    async def _acquire(self, name: str) -> None:
        sent = time.monotonic()
        try:
            won = await asyncio.to_thread(self.store.acquire, name, self.owner)
        except Exception as exc:  # unknown outcome: adopted next tick if ours
            self._count_error("acquire", exc)
            return
        if won:
            self._acquisitions[name] += 1
            self._extend(name, sent)
            self._event(name, "acquired")
            log.info("lease: %s acquired by %s", name, self.owner)

    async def _renew(self, name: str, adopting: bool = False) -> None:
        sent = time.monotonic()
        try:
            kept = await asyncio.to_thread(self.store.renew, name, self.owner)
        except Exception as exc:  # held until its deadline passes
            self._count_error("renew", exc)
            return
        if kept:
            if adopting:
                self._acquisitions[name] += 1
                self._event(name, "acquired")
            self._extend(name, sent)
        elif not adopting:
            self._lose(name, "taken")

    async def _release(self, name: str, why: str) -> None:
        self._forget(name)
        self._event(name, "released")
        log.info("lease: %s released by %s (%s)", name, self.owner, why)
        try:
            await asyncio.to_thread(self.store.release, name, self.owner)
        except Exception as exc:  # it expires by TTL instead
            self._count_error("release", exc)

    def _extend(self, name: str, sent: float) -> None:
        deadline = sent + self._valid_for
        self._deadlines[name] = deadline
        timer = self._timers.pop(name, None)
        if timer is not None:
            timer.cancel()
        loop = asyncio.get_running_loop()
        self._timers[name] = loop.call_later(max(0.0, deadline - time.monotonic()),
                                             self._lose, name, "expired")
        self._set_gauge(name, 1)

    def _lose(self, name: str, why: str) -> None:
        if name not in self._deadlines:
            return
        self._forget(name)
        self._event(name, why)
        log.warning("lease: %s lost by %s (%s); its running cycle is cancelled", name,
                    self.owner, why)
        self.on_lost(name)

    def _forget(self, name: str) -> None:
        self._deadlines.pop(name, None)
        timer = self._timers.pop(name, None)
        if timer is not None:
            timer.cancel()
        self._set_gauge(name, 0)

    def _set_gauge(self, name: str, value: int) -> None:
        if self.telemetry is not None:
            self.telemetry.leases_held.labels(name).set(value)
            if not value:
                self.telemetry.forget_vcenter(name)

    def _event(self, name: str, event: str) -> None:
        if self.telemetry is not None:
            self.telemetry.lease_events.labels(name, event).inc()

    def _count_error(self, operation: str, exc: Exception) -> None:
        log.warning("lease: %s failed: %s", operation, exc)
        if self.telemetry is not None:
            self.telemetry.lease_errors.labels(operation).inc()
