"""Fetch Go's own toolchain from the Go module proxy (module ``golang.org/toolchain``, the
same zip that ``GOTOOLCHAIN=goX.Y.Z`` downloads), check it against a pinned ``h1:`` hash (the
module checksum that go.sum and the checksum database use) and unpack it.

Used by the Dockerfile's engine stage, whose base (python:3.11-slim) has Python but no Go, so
that one Dockerfile builds wherever the module proxy is reachable, with no Go image pulled.
A zip already in CACHE (a bind mount in CI, see peers/podman.py) is checked and reused.

usage: go_toolchain.py VERSION ARCH H1 CACHE DEST   e.g. go1.26.11 amd64 h1:... /cache /opt/go
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import sys
import urllib.request
import zipfile
from pathlib import Path

MODULE = "golang.org/toolchain"


def h1(archive: Path) -> str:
    """Go's dirhash Hash1 of a module zip: sha256 over the sorted 'sha256  name' lines."""
    summary = hashlib.sha256()
    with zipfile.ZipFile(archive) as zipped:
        for name in sorted(zipped.namelist()):
            if name.endswith("/"):
                continue
            digest = hashlib.sha256(zipped.read(name)).hexdigest()
            summary.update(f"{digest}  {name}\n".encode())
    return "h1:" + base64.b64encode(summary.digest()).decode()


def proxy() -> str:
    for entry in os.environ.get("GOPROXY", "https://proxy.golang.org").replace("|", ",").split(","):
        if entry.startswith(("https://", "http://")):
            return entry.rstrip("/")
    raise SystemExit("go_toolchain: GOPROXY names no http(s) proxy")


def fetch(version: str, arch: str, expected: str, cache: Path) -> Path:
    module_version = f"v0.0.1-{version}.linux-{arch}"
    archive = cache / f"{module_version}.zip"
    if archive.exists() and h1(archive) == expected:
        return archive
    cache.mkdir(parents=True, exist_ok=True)
    partial = archive.with_suffix(".partial")
    url = f"{proxy()}/{MODULE}/@v/{module_version}.zip"
    with urllib.request.urlopen(url, timeout=120) as answer, open(partial, "wb") as out:
        shutil.copyfileobj(answer, out, 1 << 20)
    got = h1(partial)
    if got != expected:
        partial.unlink()
        raise SystemExit(f"go_toolchain: {url} has checksum {got}, expected {expected}")
    os.replace(partial, archive)
    return archive


def unpack(archive: Path, version: str, arch: str, dest: Path) -> None:
    prefix = f"{MODULE}@v0.0.1-{version}.linux-{arch}/"
    with zipfile.ZipFile(archive) as zipped:
        for info in zipped.infolist():
            if not info.filename.startswith(prefix) or info.is_dir():
                continue
            target = dest / info.filename[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            with zipped.open(info) as source, open(target, "wb") as out:
                shutil.copyfileobj(source, out, 1 << 20)
            # Module zips carry no modes; Go's own unpacker makes bin/ and pkg/tool/ executable.
            if "/bin/" in f"/{target.relative_to(dest)}" or "pkg/tool/" in info.filename:
                target.chmod(0o755)


def main(argv: list[str]) -> None:
    if len(argv) != 5:
        raise SystemExit(__doc__.strip().splitlines()[-1] if __doc__ else "usage")
    version, arch, expected, cache, dest = argv
    archive = fetch(version, arch, expected, Path(cache))
    unpack(archive, version, arch, Path(dest))


if __name__ == "__main__":
    main(sys.argv[1:])
