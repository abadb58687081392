"""Podman (Debian's, 4.3) to build and run the project's container image in the tests.

There is no Docker engine here and no container registry is reachable, so:

* ``podman``, ``runc`` and ``mmdebstrap`` come from Debian (``apt-get update`` once, then
  ``apt-get install --no-install-recommends``, ~30 s, once per machine when one is missing);
  ``podman-compose`` comes from PyPI with the ``test`` extra (the project's ``.venv``).
* ``CACHE/podman/containers.conf``, named by ``CONTAINERS_CONF`` in every podman call (``env()``),
  makes plain ``podman`` (and ``podman-compose``) work on this machine: the ``runc`` runtime
  (crun fails: "cgroups in hybrid mode not supported"), the ``cgroupfs`` manager and a file
  event log (systemd is not running), no default ulimits (they cannot be raised here:
  "setrlimit RLIMIT_NOFILE: Operation not permitted"), ``k8s-file`` container logs.
* The Dockerfile's ``FROM python:3.11-slim`` cannot be pulled. ``ensure_base()`` makes a
  stand-in once: ``mmdebstrap`` of Debian bookworm with python3, python3-venv and
  ca-certificates (docs, man pages and locales left out; ~60-120 s, tar cached as
  ``CACHE/podman/bookworm-python3.tar``), imported, plus one layer (``python3 -m venv
  /usr/local``) that gives ``/usr/local/bin/python``, ``pip`` and
  ``/usr/local/lib/python3.11/site-packages`` as in the official image, tagged
  ``docker.io/library/python:3.11-slim`` in podman's own storage (``/var/lib/containers``).
  A real ``python:3.11-slim`` already in that storage is used as it is.
* ``build_image()`` builds the unchanged Dockerfile with ``--format docker`` (the OCI format
  drops ``HEALTHCHECK``), ``--pull=never`` (an image that is not here fails at once, in one
  line, instead of trying a registry), ``--network host`` and the host's CA bundle mounted at
  ``/etc/ssl/certs`` (read-only) for the ``RUN pip install`` steps (PyPI is reached through
  it; Debian's pip uses the system bundle). Layers are cached: an unchanged tree rebuilds in
  a few seconds; the dependency layer is rebuilt only when pyproject.toml or the lock change.
  The engine stage's ``/cache/go`` is ``CACHE/go`` bind-mounted (not part of any layer): Go's
  toolchain zip from the module proxy (~70 MB), the modules and Go's build cache are fetched
  and compiled once per machine, so a fresh clone's cold image build only links the engine.

Without systemd, ``podman run`` of an image with a ``HEALTHCHECK`` logs two "unable to get
systemd connection" errors (no timer for the periodic check) and runs the container anyway;
``podman healthcheck run NAME`` runs the check on demand. Test containers carry the label
``io.statsfeeder.test``; ``down()`` removes them.
Every failure raises ``PeerError`` with one line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from peers import common

PEER = "podman"
DIR = common.CACHE / "podman"
CONF = DIR / "containers.conf"
BASE_TAR = DIR / "bookworm-python3.tar"
BASE = "docker.io/library/python:3.11-slim"
ROOTFS = "localhost/statsfeeder-standin-rootfs:bookworm"
IMAGE = "localhost/statsfeeder:test"
GO_CACHE = common.CACHE / "go"
"""The engine stage's Go toolchain zip, module and build caches (``/cache/go`` in the build)."""
LABEL = "io.statsfeeder.test"
APT_PACKAGES = ("podman", "runc", "mmdebstrap")
CONTAINERS_CONF = """\
# Written by peers/podman.py: what podman needs on this machine (see its docstring).
[containers]
default_ulimits = []
log_driver = "k8s-file"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""
# The official image's layout on top of Debian's python: a venv at /usr/local.
STANDIN = f"""\
FROM {ROOTFS}
RUN python3 -m venv /usr/local && /usr/local/bin/python -c "import pip, ssl"
ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8
CMD ["python3"]
"""
MMDEBSTRAP = [
    "mmdebstrap", "--variant=apt", "--include=python3,python3-venv,ca-certificates",
    *(f"--dpkgopt=path-exclude=/usr/share/{d}/*" for d in ("doc", "man", "locale", "info")),
    "--format=tar", "bookworm",
]
BUILD_TIMEOUT = 1200.0


def ensure_installed() -> str:
    """Path of ``podman``, installing Debian's podman, runc and mmdebstrap once if missing."""
    if all(shutil.which(tool) for tool in APT_PACKAGES):
        return str(shutil.which("podman"))
    if shutil.which("apt-get") is None:
        raise common.PeerError(f"{PEER}: podman, runc or mmdebstrap missing and no apt-get")
    with common.locked(DIR / "install.lock"):
        if not all(shutil.which(tool) for tool in APT_PACKAGES):
            apt_env = {"DEBIAN_FRONTEND": "noninteractive"}
            common.sh(["apt-get", "update", "-qq"], peer=PEER, env=apt_env, timeout=600)
            common.sh(["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                       *APT_PACKAGES], peer=PEER, env=apt_env, timeout=900)
    missing = [tool for tool in APT_PACKAGES if shutil.which(tool) is None]
    if missing:
        raise common.PeerError(f"{PEER}: installed Debian's packages but {missing} not on PATH")
    return str(shutil.which("podman"))


def env() -> dict[str, str]:
    """Environment for podman and podman-compose: ``CONTAINERS_CONF`` (written if missing)."""
    DIR.mkdir(parents=True, exist_ok=True)
    if not CONF.exists() or CONF.read_text() != CONTAINERS_CONF:
        partial = CONF.with_suffix(".partial")
        partial.write_text(CONTAINERS_CONF)
        os.replace(partial, CONF)
    return {"CONTAINERS_CONF": str(CONF)}


def run(args: Sequence[str], *, timeout: float = 120.0, check: bool = False
        ) -> subprocess.CompletedProcess[str]:
    """``podman ARGS``; with ``check`` a failure raises one line with podman's last words."""
    argv = ["podman", *args]
    if check:
        out = common.sh(argv, peer=PEER, env=env(), timeout=timeout)
        return subprocess.CompletedProcess(argv, 0, out, "")
    try:
        return subprocess.run(argv, env={**os.environ, **env()}, capture_output=True,
                              text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise common.PeerError(f"{PEER}: podman {' '.join(args[:2])} failed: {exc}") from exc


def image_exists(name: str) -> bool:
    return run(["image", "exists", name]).returncode == 0


def inspect_image(name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = json.loads(run(["image", "inspect", name], check=True).stdout)
    return found[0]


def ensure_base() -> None:
    """``python:3.11-slim`` in podman's storage: the stand-in, made once (see the docstring)."""
    ensure_installed()
    if image_exists(BASE):
        return
    with common.locked(DIR / "base.lock"):
        if image_exists(BASE):
            return
        if not BASE_TAR.exists():
            partial = BASE_TAR.with_suffix(".partial")
            partial.unlink(missing_ok=True)
            common.sh([*MMDEBSTRAP, str(partial)], peer=f"{PEER} stand-in base", timeout=900)
            os.replace(partial, BASE_TAR)
        run(["import", str(BASE_TAR), ROOTFS], check=True, timeout=600)
        context = DIR / "standin"
        context.mkdir(parents=True, exist_ok=True)
        (context / "Containerfile").write_text(STANDIN)
        run(["build", "--format", "docker", "--network", "host", "-t", BASE, str(context)],
            check=True, timeout=600)


def build_args() -> list[str]:
    """What ``podman build`` needs here beyond the Dockerfile (podman-compose gets them too)."""
    GO_CACHE.mkdir(parents=True, exist_ok=True)
    return ["--format", "docker", "--pull=never", "--network", "host",
            "-v", "/etc/ssl/certs:/etc/ssl/certs:ro", "-v", f"{GO_CACHE}:/cache/go"]


def build_image(tag: str = IMAGE, context: Path = common.REPO) -> float:
    """Build ``context``'s Dockerfile as ``tag`` on the (stand-in) base; returns seconds taken."""
    ensure_base()
    with common.locked(DIR / "build.lock"):
        began = time.monotonic()
        run(["build", *build_args(), "-t", tag, str(context)], check=True, timeout=BUILD_TIMEOUT)
        took = time.monotonic() - began
        # Each code change leaves the previous layers untagged; those a week old go (the build
        # cache is among them, so a cold build once a week at most).
        run(["image", "prune", "-f", "--filter", "until=168h"], timeout=300)
        return took


def remove(name: str) -> None:
    run(["rm", "-f", "-t", "0", name], timeout=60)


def up(options: Any = None) -> dict[str, str]:
    """Build the image (``python -m peers up podman``); returns ``STATSFEEDER_IMAGE``."""
    build_image()
    return {"STATSFEEDER_IMAGE": IMAGE, "CONTAINERS_CONF": str(CONF)}


def down() -> None:
    """Remove the test containers left behind (images and the stand-in base stay cached)."""
    if shutil.which("podman") is None:
        return
    listed = run(["ps", "-aq", "--filter", f"label={LABEL}"]).stdout.split()
    for container in listed:
        remove(container)


def status() -> str:
    if shutil.which("podman") is None:
        return "not installed"
    base = "stand-in base cached" if image_exists(BASE) else "no base image yet"
    image = f"{IMAGE} built" if image_exists(IMAGE) else f"{IMAGE} not built"
    running = len(run(["ps", "-q", "--filter", f"label={LABEL}"]).stdout.split())
    return f"{base}; {image}; {running} test container(s) running"
