"""Which sinks are open, and opening the missing ones again.

A sink that cannot be reached at start-up (``SinkUnavailable``) must not stop the others: the
service starts with the sinks that opened, the pipelines collect into those, and the missing
sink is opened again with backoff (in the background under ``run``). Its watermarks stay where
they were, so once it is back the next cycle asks vCenter from there (backfill, within vCenter's
one-hour realtime retention). Errors that retrying cannot cure (a wrong schema, a bad
configuration) still end the start-up, as does no sink opening at all: there would be nowhere
to collect into.

A sink that was open and then cannot be reached at all (``SinkUnreachable`` from a write:
every Cassandra node down, KairosDB not answering) is set aside the same way (``lost``): the
cycles stop collecting for it, so an outage costs neither vCenter queries whose samples
could not be stored nor the memory they would take, and it is probed with the same backoff
until it answers (``probe``, on the client it has, where the sink has one).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from statsfeeder.errors import SinkUnavailable
from statsfeeder.telemetry import Telemetry

log = logging.getLogger("statsfeeder")

FIRST_BACKOFF = 2.0
"""Seconds before the first new attempt to open a missing sink; doubled after each failure."""


@dataclass
class _State:
    up: bool = False
    lost: bool = False
    """Was open, then unreachable: probed rather than opened anew."""
    error: str = ""
    attempts: int = 0
    next_attempt: float = 0.0
    backoff: float = FIRST_BACKOFF


class SinkHealth:
    """The open/missing state of every sink, exported as ``statsfeeder_sink_up{sink}`` and on
    ``/readyz``. ``max_backoff`` bounds the wait between attempts (the service passes the
    collection interval, so a returned sink is found before the next cycle or the one after)."""

    def __init__(self, sinks: Sequence[Any], telemetry: Telemetry, *, max_backoff: float,
                 required: Sequence[str] = (),
                 on_open: Callable[[Any], Awaitable[None]] | None = None) -> None:
        self.sinks = list(sinks)
        self.telemetry = telemetry
        self.max_backoff = max(max_backoff, FIRST_BACKOFF)
        self.required = set(required)
        self.on_open = on_open
        self._state = {sink.name: _State() for sink in self.sinks}
        self._lock = asyncio.Lock()
        telemetry.sink_problem = self.problem
        for sink in self.sinks:
            telemetry.sink_up.labels(sink.name).set(0)

    def up(self, name: str) -> bool:
        state = self._state.get(name)
        return state is not None and state.up

    def missing(self) -> dict[str, str]:
        """Missing sink name -> why its last attempt to open failed."""
        return {name: state.error for name, state in self._state.items() if not state.up}

    def problem(self) -> str | None:
        """One line for ``/readyz`` while a sink is missing, else None."""
        missing = self.missing()
        if not missing:
            return None
        names = ", ".join(sorted(missing))
        open_ = ", ".join(name for name, state in self._state.items() if state.up) or "none"
        reasons = "; ".join(error for error in missing.values() if error)
        return (f"degraded: sink {names} missing, collecting into {open_}; retrying"
                + (f" ({reasons})" if reasons else ""))

    def lost(self, name: str, why: str) -> None:
        """An open sink could not be reached at all: no more cycles collect for it until a
        probe (``run``) finds it back."""
        state = self._state.get(name)
        if state is None or not state.up:
            return
        state.up, state.lost, state.error = False, True, why
        state.next_attempt = time.monotonic() + state.backoff
        self.telemetry.sink_up.labels(name).set(0)
        log.error("%s; not collecting for %s until it answers again (probed from %.0f s, "
                  "backing off to %.0f s), then backfilling it from its watermarks",
                  why, name, state.backoff, self.max_backoff)

    async def open_all(self) -> None:
        """First attempt for every sink. Raises if a required sink, or every sink, failed,
        or on an error that retrying cannot cure."""
        first: SinkUnavailable | None = None
        for sink in self.sinks:
            try:
                await self._open(sink)
            except SinkUnavailable as exc:
                first = first or exc
                if sink.name in self.required:
                    raise
                log.error("%s; starting without it, retrying in the background", exc)
        if first is not None and not any(state.up for state in self._state.values()):
            raise first

    async def retry_due(self) -> list[str]:
        """Try each missing sink whose backoff has passed; the names that opened."""
        opened = []
        for sink in self.sinks:
            state = self._state[sink.name]
            if state.up or time.monotonic() < state.next_attempt:
                continue
            try:
                await self._open(sink, retrying=True)
            except Exception as exc:  # the driver's own errors too, while a node starts
                log.warning("%s (attempt %d; next in %.0f s)", exc, state.attempts,
                            state.next_attempt - time.monotonic())
                continue
            log.info("%s: open again after %d attempt(s); backfilling it from its watermarks",
                     sink.name, state.attempts)
            opened.append(sink.name)
        return opened

    async def run(self, stopping: asyncio.Event) -> None:
        """Background: keep opening missing sinks until ``stopping`` is set."""
        while not stopping.is_set():
            try:
                await self.retry_due()
            except Exception:  # a bug must not end the retries silently
                log.exception("sinks: opening a missing sink failed unexpectedly")
            waits = [state.next_attempt - time.monotonic()
                     for state in self._state.values() if not state.up]
            delay = max(0.5, min(waits)) if waits else self.max_backoff
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), delay)

    async def _open(self, sink: Any, *, retrying: bool = False) -> None:
        """One attempt. At start-up only ``SinkUnavailable`` counts as "missing, retry"; once
        running, any error does (a node that is starting can answer with an incomplete schema
        or time out for a moment): it is logged at every attempt."""
        state = self._state[sink.name]
        retried: type[Exception] = Exception if retrying else SinkUnavailable
        probing = state.lost and hasattr(sink, "probe")
        async with self._lock:
            state.attempts += 1
            try:
                await asyncio.to_thread(sink.probe if probing else sink.open)
                if self.on_open is not None:  # e.g. Cassandra's metric units
                    await self.on_open(sink)
            except retried as exc:
                state.error = str(exc)
                state.next_attempt = time.monotonic() + state.backoff
                state.backoff = min(state.backoff * 2, self.max_backoff)
                self.telemetry.sink_open_failures.labels(sink.name).inc()
                if not probing:
                    with contextlib.suppress(Exception):  # a half-open client must not leak
                        sink.close()
                raise
            state.up, state.lost, state.error, state.backoff = True, False, "", FIRST_BACKOFF
            self.telemetry.sink_up.labels(sink.name).set(1)


async def record_counters(cassandra: Any, counters: Sequence[Sequence[Any]]) -> None:
    """The metric units of the vCenters already started, into a Cassandra that was missing."""
    for each in counters:
        if not each:
            continue
        try:
            await asyncio.to_thread(cassandra.record_counters, each)
        except Exception as exc:  # the driver's own errors: the node went away again
            raise SinkUnavailable(f"cassandra: metric units not recorded: {exc}") from None
