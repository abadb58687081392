"""The engine's own Go tests (statsfeeder/readapi/engine/*_test.go): the packed windows'
decoding and the query answer's JSON, run with the Go toolchain that builds the engine."""

from __future__ import annotations

import shutil
import subprocess

from statsfeeder.readapi.engine import SOURCE


def test_the_engines_go_tests_pass() -> None:
    go = shutil.which("go")
    assert go is not None, "the read API's engine is built with Go; install it"
    done = subprocess.run([go, "test", "./..."], cwd=SOURCE, capture_output=True, text=True,
                          timeout=1200, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
