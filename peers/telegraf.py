"""Telegraf with its vSphere input, for side-by-side benchmarks against statsfeeder.

Not a service peer (no up/down): benchmarks call ``ensure_telegraf()`` and run the binary with
a config of their own. A full ``go install …/telegraf@VERSION`` fails on this project's machines
(some of its modules are refused), so it is built with Telegraf's custom-build tags, keeping
only the plugins a benchmark needs: ``inputs.vsphere``, ``inputs.internal`` (Telegraf's own
CPU and memory figures), ``outputs.file`` and ``outputs.discard``. Telegraf 1.40 needs a newer
Go than the system's, fetched as a toolchain module through ``GOTOOLCHAIN``. The binary is
installed once into ``CACHE/telegraf/<version>/telegraf`` (``GOBIN``); Go's module and build
caches are the user's defaults.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from peers import common

VERSION = "1.40.1"
GO_TOOLCHAIN = "go1.27.0"
TAGS = "custom,inputs.vsphere,inputs.internal,outputs.file,outputs.discard"
PACKAGE = "github.com/influxdata/telegraf/cmd/telegraf"
PEER = "telegraf"


def binary_path() -> Path:
    return common.CACHE / "telegraf" / VERSION / "telegraf"


def ensure_telegraf() -> Path:
    """Path of the Telegraf binary, built once (about 1.5 min on a warm Go module cache)."""
    target = binary_path()

    def build(go: str) -> None:
        # `go install` writes GOBIN/telegraf directly: build into a side directory, then move,
        # so an interrupted build never leaves a half-written binary at the cached path.
        staging = target.parent / ".gobin"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        common.sh(
            [go, "install", "-trimpath", "-tags", TAGS, "-ldflags",
             f"-s -w -X github.com/influxdata/telegraf/internal.Version={VERSION}",
             f"{PACKAGE}@v{VERSION}"],
            peer=PEER, cwd=target.parent,
            env={"GOTOOLCHAIN": GO_TOOLCHAIN, "GOBIN": str(staging)},
            timeout=3600,
        )
        built = staging / "telegraf"
        if not built.exists():
            raise common.PeerError(f"{PEER}: go install finished but {built} is missing")
        os.replace(built, target)
        shutil.rmtree(staging, ignore_errors=True)

    return common.built_once(PEER, target, target.parent / ".build.lock", build)


def version() -> str:
    """``telegraf --version`` of the cached binary (builds it if needed)."""
    return common.sh([str(ensure_telegraf()), "--version"], peer=PEER).strip()
