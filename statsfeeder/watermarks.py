"""Where the per-VM watermarks persist: Cassandra's ``watermarks`` table when Cassandra is
enabled and open, and a local state file when one is configured (always in KairosDB-only mode,
where there is no Cassandra to keep them).

``WatermarkStore`` is what the pipeline sees as its metadata store. Reading merges the file and
Cassandra by taking the later mark of each VM (a mark only ever says "acknowledged up to here",
so the later of two is true of both). While Cassandra is missing, marks are kept in memory and
in the file; once it is back the pipeline reads Cassandra's again before writing to it, so its
own backfill starts from where it was.

The file is JSON ``{"version": 1, "vcenters": {vcenter: {sink: {moref: epoch}}}}``, rewritten
whole at the end of every cycle and at close: written to a temporary file in the same
directory, flushed to disk, then renamed over the old one, so a crash leaves either the old or
the new file, never a torn one. A crash between two flushes costs one cycle of re-reading
(writes are idempotent), not a gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from statsfeeder.errors import ConfigError, SinkError, SinkUnavailable
from statsfeeder.model import VirtualMachine

log = logging.getLogger("statsfeeder")

FORMAT_VERSION = 1
Marks = dict[str, dict[str, int]]


class WatermarkFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._data: dict[str, Marks] = {}
        self._dirty = False

    def open(self) -> None:
        """Read the file if it exists and make sure it can be written: one-line ConfigError
        naming ``state.watermarks_file`` otherwise."""
        where = f"config: state.watermarks_file: {self.path}"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"{where}: cannot create its folder: {exc.strerror}") from None
        if not os.access(self.path.parent, os.W_OK):
            raise ConfigError(f"{where}: its folder is not writable")
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read it: {exc.strerror}") from None
        try:
            raw = json.loads(text)
            if raw.get("version") != FORMAT_VERSION:
                raise ValueError(f"version {raw.get('version')!r}, expected {FORMAT_VERSION}")
            self._data = {str(vc): {str(sink): {str(m): int(t) for m, t in marks.items()}
                                    for sink, marks in sinks.items()}
                          for vc, sinks in raw["vcenters"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"{where}: not a statsfeeder watermark file ({exc}); move it "
                              "away to start from vCenter's last interval") from None

    def load(self, vcenter: str) -> Marks:
        return {sink: dict(marks) for sink, marks in self._data.get(vcenter, {}).items()}

    def update(self, vcenter: str, sink: str, marks: Mapping[str, int]) -> None:
        current = self._data.setdefault(vcenter, {}).setdefault(sink, {})
        for moref, mark in marks.items():
            if mark > current.get(moref, 0):
                current[moref] = mark
                self._dirty = True

    def flush(self) -> None:
        """Blocking: write the file atomically if anything changed since the last flush."""
        if not self._dirty:
            return
        body = json.dumps({"version": FORMAT_VERSION, "vcenters": self._data},
                          separators=(",", ":"), sort_keys=True)
        self._dirty = False
        handle, temporary = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp",
                                             dir=self.path.parent)
        try:
            with os.fdopen(handle, "w") as out:
                out.write(body)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.path)
        except OSError:
            self._dirty = True
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself survives a power loss
        finally:
            os.close(directory)


class WatermarkStore:
    """The pipeline's metadata store over an optional Cassandra sink and an optional file.

    ``cassandra_up`` says whether the Cassandra sink is open now (see ``sink_health``)."""

    def __init__(self, cassandra: Any | None, file: WatermarkFile | None,
                 cassandra_up: Callable[[], bool] = lambda: True) -> None:
        self.cassandra = cassandra
        self.file = file
        self._cassandra_up = cassandra_up

    @property
    def cassandra_open(self) -> bool:
        return self.cassandra is not None and self._cassandra_up()

    def holds(self, sink: str) -> bool:
        """Whether what ``load_watermarks`` returns now is where every sink's marks are kept
        (Cassandra open, or no Cassandra and the file alone): a VM missing there has none."""
        return self.cassandra_open or self.cassandra is None

    def load_watermarks(self, vcenter: str) -> Marks:
        marks = self.file.load(vcenter) if self.file is not None else {}
        if self.cassandra_open:
            assert self.cassandra is not None
            for sink, stored in self.cassandra.load_watermarks(vcenter).items():
                mine = marks.setdefault(sink, {})
                for moref, mark in stored.items():
                    mine[moref] = max(mark, mine.get(moref, 0))
        return marks

    async def save_watermarks(self, vcenter: str, sink: str, marks: Mapping[str, int]) -> None:
        if self.file is not None:
            self.file.update(vcenter, sink, marks)
        if self.cassandra_open:  # else read back and caught up when Cassandra returns
            assert self.cassandra is not None
            await self.cassandra.save_watermarks(vcenter, sink, marks)

    async def save_entities(self, vms: list[VirtualMachine]) -> None:
        if self.cassandra is None:
            return
        if not self.cassandra_open:  # raised, so the pipeline sends them again later
            raise SinkUnavailable("cassandra: not open; entity metadata kept for later")
        await self.cassandra.save_entities(vms)

    async def flush(self) -> None:
        if self.file is None:
            return
        try:
            await asyncio.to_thread(self.file.flush)
        except OSError as exc:
            raise SinkError(f"state.watermarks_file {self.file.path}: {exc.strerror}") from None

    def close(self) -> None:
        if self.file is not None:
            try:
                self.file.flush()
            except OSError as exc:
                log.error("watermarks not saved to %s: %s", self.file.path, exc.strerror)
