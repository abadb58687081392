"""The PromQL engine child: Prometheus's own ``promql`` package in a small Go program
(``engine/`` beside this file), built on demand once per source digest into
``~/.cache/statsfeeder/engine/<digest>/statsfeeder-engine`` (or ``read_api.engine_binary``),
started on 127.0.0.1 with a random port and a per-process secret, stopped with the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import subprocess
from pathlib import Path

from statsfeeder.errors import ConfigError, StatsfeederError

log = logging.getLogger(__name__)

SOURCE = Path(__file__).resolve().parent / "engine"
PROMETHEUS_VERSION = "v0.316.0"
"""The github.com/prometheus/prometheus module the engine embeds (Prometheus 3.16)."""
BUILD_TIMEOUT = 1200.0
START_TIMEOUT = 30.0


class EngineError(StatsfeederError):
    pass


def source_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted(SOURCE.iterdir()):
        if path.suffix == ".go" or path.name in ("go.mod", "go.sum"):
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "statsfeeder"


def binary_path() -> Path:
    return cache_root() / "engine" / source_digest() / "statsfeeder-engine"


def ensure_binary(configured: Path | None = None) -> Path:
    """The engine binary: the configured one, or built from the sources once (blocking)."""
    if configured is not None:
        if not (configured.is_file() and os.access(configured, os.X_OK)):
            raise ConfigError(f"config: read_api.engine_binary: {configured} is not an "
                              "executable file")
        return configured
    target = binary_path()
    if target.exists():
        return target
    go = shutil.which("go")
    if go is None:
        raise EngineError("read_api: the PromQL engine is built with Go, and 'go' is not on "
                          "PATH; install Go or set read_api.engine_binary")
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent.parent / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists():
            return target
        partial = target.with_name("statsfeeder-engine.partial")
        log.info("read_api: building the PromQL engine (once; a few minutes the first time)")
        try:
            done = subprocess.run([go, "build", "-trimpath", "-o", str(partial), "."],
                                  cwd=SOURCE, capture_output=True, text=True,
                                  timeout=BUILD_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            raise EngineError("read_api: building the PromQL engine took longer than "
                              f"{BUILD_TIMEOUT:.0f} s") from None
        if done.returncode != 0:
            detail = " ".join((done.stderr or done.stdout).split())[:300]
            raise EngineError(f"read_api: building the PromQL engine failed: {detail}")
        os.replace(partial, target)
    return target


class EngineProcess:
    """One running engine. ``url`` is its base URL once ``start`` returned."""

    def __init__(self, binary: Path, *, storage_url: str, secret: str, lookback_seconds: int,
                 timeout_seconds: float, max_samples: int, max_series: int,
                 rollup_min_step_seconds: int | None = None,
                 rollup_fresh_seconds: int = 0) -> None:
        """``rollup_min_step_seconds``: None keeps every Select on the raw samples;
        ``rollup_fresh_seconds``: the store's fresh hours (rollup_select.py), which a
        selector reads raw when all its buckets fall in them."""
        self._argv = [str(binary), "-listen", "127.0.0.1:0", "-storage-url", storage_url,
                      "-lookback", f"{lookback_seconds}s", "-timeout", f"{timeout_seconds}s",
                      "-max-samples", str(max_samples), "-max-series", str(max_series)]
        if rollup_min_step_seconds is not None:
            self._argv += ["-rollups", "-rollup-min-step", f"{rollup_min_step_seconds}s",
                           "-rollup-fresh", f"{rollup_fresh_seconds}s"]
        self._secret = secret
        self._process: asyncio.subprocess.Process | None = None
        self._drain: asyncio.Task[None] | None = None
        self.url = ""

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    async def start(self) -> None:
        env = {"PATH": os.environ.get("PATH", ""), "STATSFEEDER_ENGINE_SECRET": self._secret}
        self._process = await asyncio.create_subprocess_exec(
            *self._argv, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        assert self._process.stdout is not None
        try:
            line = await asyncio.wait_for(self._process.stdout.readline(), START_TIMEOUT)
        except TimeoutError:
            line = b""
        text = line.decode(errors="replace").strip()
        if not text.startswith("listening "):
            await self.stop()
            raise EngineError(f"read_api: the PromQL engine did not start: {text or 'no output'}")
        self.url = "http://" + text.removeprefix("listening ")
        self._drain = asyncio.create_task(self._log_stderr())

    async def _log_stderr(self) -> None:
        assert self._process is not None and self._process.stderr is not None
        async for line in self._process.stderr:
            log.warning("engine: %s", line.decode(errors="replace").rstrip())

    async def exited(self, within: float) -> bool:
        """Whether the child has exited (waiting up to ``within`` seconds for it)."""
        process = self._process
        if process is None:
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), within)
        return process.returncode is not None

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 5)
            except TimeoutError:
                process.kill()
                await process.wait()
        if self._drain is not None:
            self._drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drain
            self._drain = None
