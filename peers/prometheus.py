"""Prometheus (Debian's package, 2.42) as a development and test peer.

``prometheus`` and ``promtool`` come from Debian (``apt-get install --no-install-recommends
prometheus``, ~17 s, done once per machine when ``prometheus`` is not on PATH). Debian's package
registers a ``prometheus`` service running as the ``prometheus`` user on :9090; where the
install does start it, it is stopped right away: nothing here uses it.

Our instance ``prometheus`` listens on 127.0.0.1:19090 (plus ``STATSFEEDER_PEER_PORT_OFFSET``)
and runs from ``CACHE/run/prometheus``
(``prometheus.yml``, ``data/``, ``output.log``) with ``--web.enable-lifecycle``, ready on
``/-/ready`` in under a second. Its only scrape job is ``statsfeeder``; tests point it at their
exporters with ``set_scrape_targets(["127.0.0.1:PORT"], interval="1s")``, which rewrites the
config and POSTs ``/-/reload`` (synchronous: the new targets are in effect when it returns, and a
bad config raises). Scrape results: ``/api/v1/targets``; queries: ``/api/v1/query``.
``promtool_check_rules(path)`` validates alert/recording rule files;
``promtool_test_rules(path)`` runs rule unit tests.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import pwd
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from peers import common

NAME = "prometheus"
HOST = "127.0.0.1"
PORT = 19090 + int(os.environ.get("STATSFEEDER_PEER_PORT_OFFSET", "0"))
"""Plus the offset, as vcsim's and Cassandra's ports: a run with its own ``STATSFEEDER_CACHE``
starts its Prometheus beside another run's instead of failing on a taken port."""
URL = f"http://{HOST}:{PORT}"
JOB = "statsfeeder"
START_TIMEOUT = 60.0
PEER = "prometheus"


def _stop_system_service() -> None:
    """Stop a Prometheus the package's service started (user ``prometheus``), by PID."""
    try:
        uid = pwd.getpwnam("prometheus").pw_uid
    except KeyError:
        return
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if proc.stat().st_uid != uid:
                continue
            exe = os.readlink(proc / "exe")
        except OSError:
            continue
        if Path(exe).name == "prometheus":
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(proc.name), signal.SIGTERM)


def ensure_installed() -> tuple[str, str]:
    """``prometheus`` and ``promtool`` paths, installing Debian's package once if needed."""
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if prometheus and promtool:
        return prometheus, promtool
    if shutil.which("apt-get") is None:
        raise common.PeerError(f"{PEER}: 'prometheus' is not on PATH and there is no apt-get")
    with common.locked(common.CACHE / "prometheus.install.lock"):
        prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
        if not (prometheus and promtool):
            env = {"DEBIAN_FRONTEND": "noninteractive"}
            common.sh(["apt-get", "update", "-qq"], peer=PEER, env=env, timeout=600)
            common.sh(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "prometheus"],
                      peer=PEER, env=env, timeout=900)
            _stop_system_service()
            prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if not (prometheus and promtool):
        raise common.PeerError(f"{PEER}: installed Debian's package but prometheus/promtool "
                               "are still not on PATH")
    return prometheus, promtool


def config_path() -> Path:
    return common.RUN / NAME / "prometheus.yml"


def _config(targets: Sequence[str], interval: str, rule_files: Sequence[str]) -> str:
    # JSON is valid YAML: no YAML library needed.
    config: dict[str, Any] = {
        "global": {"scrape_interval": interval, "scrape_timeout": interval,
                   "evaluation_interval": interval},
        "scrape_configs": [{
            "job_name": JOB,
            "scrape_interval": interval,
            "scrape_timeout": interval,
            "static_configs": [{"targets": list(targets)}],
        }],
    }
    if rule_files:
        config["rule_files"] = [str(path) for path in rule_files]
    return json.dumps(config, indent=2) + "\n"


def _write_config(text: str) -> None:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".yml.partial")
    partial.write_text(text)
    os.replace(partial, path)


def ready(url: str = URL) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=5) as response:
            return response.status == 200
    except (OSError, ValueError, http.client.HTTPException):
        return False


def _alive() -> bool:
    """``common.pid_of`` with a second look (a just-exec'd process's cmdline can read empty)."""
    if common.pid_of(NAME) is not None:
        return True
    time.sleep(0.3)
    return common.pid_of(NAME) is not None


def up(options: Any = None) -> dict[str, str]:
    """Start (or reuse) our Prometheus on 127.0.0.1:PORT; returns ``PROMETHEUS_URL``."""
    env = {"PROMETHEUS_URL": URL}
    binary, _ = ensure_installed()
    if common.pid_of(NAME) is not None:
        if ready():
            return env
        common.stop(NAME)
    if common.port_open(HOST, PORT):
        raise common.PeerError(f"{PEER}: port {PORT} is taken by a process that is not ours")
    directory = common.run_dir(NAME)
    _write_config(_config([], "1s", ()))  # a fresh start scrapes nothing until told
    argv = [
        binary,
        f"--config.file={config_path()}",
        f"--storage.tsdb.path={directory / 'data'}",
        "--storage.tsdb.retention.time=1d",
        f"--web.listen-address={HOST}:{PORT}",
        "--web.enable-lifecycle",
        "--log.level=info",
    ]
    log = common.start(NAME, argv, cwd=directory, marker=f"--config.file={config_path()}")
    common.wait_until(ready, peer=PEER, log=log, timeout=START_TIMEOUT, alive=_alive)
    return env


def _reload(url: str = URL) -> None:
    request = urllib.request.Request(f"{url}/-/reload", method="POST", data=b"")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            if response.status != 200:
                raise common.PeerError(f"{PEER}: /-/reload answered {response.status}")
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace").strip().replace("\n", " ")
        raise common.PeerError(f"{PEER}: /-/reload failed ({exc.code}): {detail}") from exc
    except (OSError, http.client.HTTPException) as exc:
        raise common.PeerError(f"{PEER}: /-/reload failed: {exc}") from exc


def set_scrape_targets(targets: list[str], interval: str = "1s", *,
                       rule_files: Sequence[str | Path] = ()) -> None:
    """Point the ``statsfeeder`` job at ``targets`` ("127.0.0.1:PORT") scraped every
    ``interval``, optionally loading alert/recording ``rule_files``; reloads Prometheus."""
    text = _config(targets, interval, [str(path) for path in rule_files])
    previous = config_path().read_text() if config_path().exists() else None
    _write_config(text)
    try:
        _reload()
    except common.PeerError:
        if previous is not None:
            _write_config(previous)
        raise


def promtool_check_rules(path: str | Path) -> None:
    """``promtool check rules PATH``; a failure raises PeerError with promtool's message."""
    _, promtool = ensure_installed()
    done = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                          text=True, timeout=60, check=False)
    if done.returncode != 0:
        lines = [line.strip() for line in (done.stderr + done.stdout).splitlines()
                 if line.strip() and not line.startswith("Checking ")
                 and line.strip() != "FAILED:"]
        raise common.PeerError(f"{PEER}: promtool check rules {path}: " + " | ".join(lines))


def promtool_test_rules(path: str | Path) -> str:
    """``promtool test rules PATH`` (rule unit tests); a failure raises PeerError with what
    promtool printed. Returns its output."""
    _, promtool = ensure_installed()
    done = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True,
                          text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise common.PeerError(f"{PEER}: promtool test rules {path}: "
                               + " | ".join(line.strip() for line in
                                            (done.stderr + done.stdout).splitlines()
                                            if line.strip()))
    return done.stdout


def down() -> None:
    common.stop(NAME)


def status() -> str:
    pid = common.pid_of(NAME)
    if pid is None:
        return "stopped" + (f" ({URL} answers: not ours)" if ready() else "")
    rss = "?"
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = f"{int(line.split()[1]) // 1024} MB"
    return f"{'ready' if ready() else 'not ready'} at {URL} (pid {pid}, RSS {rss})"
