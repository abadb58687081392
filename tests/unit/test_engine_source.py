"""The PromQL engine's Go sources (statsfeeder/readapi/engine) pass ``go vet`` (all checks but
stdmethods) and ``gofmt``, with the Go the read API builds the engine with (``go`` on PATH,
as engine.py finds it)."""

from __future__ import annotations

import shutil
import subprocess

from statsfeeder.readapi.engine import SOURCE


def go_tool(*args: str) -> subprocess.CompletedProcess[str]:
    go = shutil.which("go")
    assert go is not None, "the engine is built with Go: install it (see deploy/go_toolchain.py)"
    return subprocess.run([go, *args], cwd=SOURCE, capture_output=True, text=True,
                          timeout=600, check=False)


def test_go_vet_is_clean() -> None:
    # stdmethods off: chunkenc.Iterator's Seek(int64) is Prometheus's, which that check
    # takes for a wrong io.Seeker (packed.go's iterator implements it; Prometheus's own
    # iterators do the same).
    vetted = go_tool("vet", "-stdmethods=false", "./...")
    assert vetted.returncode == 0, vetted.stderr + vetted.stdout


def test_gofmt_has_nothing_to_change() -> None:
    root = go_tool("env", "GOROOT").stdout.strip()
    listed = subprocess.run([f"{root}/bin/gofmt", "-l", "."], cwd=SOURCE, capture_output=True,
                            text=True, timeout=120, check=False)
    assert listed.returncode == 0 and listed.stdout == "", listed.stdout + listed.stderr
