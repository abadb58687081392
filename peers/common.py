"""Shared plumbing for the peer scripts: cache paths, PID files, readiness, certificates."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

CACHE = Path(
    os.environ.get("STATSFEEDER_CACHE")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "statsfeeder"
)
RUN = CACHE / "run"
REPO = Path(__file__).resolve().parent.parent


class PeerError(RuntimeError):
    """A peer could not be provisioned or started; the message is one line naming the peer."""


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive file lock: one provisioning or start of a peer at a time, across
    processes (tests, scripts/peers, benchmarks)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_dir(name: str) -> Path:
    path = RUN / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def pid_of(name: str) -> int | None:
    """PID recorded by ``start`` for this peer instance if that process is still alive."""
    pidfile = RUN / name / "pid"
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    # A zombie or a recycled PID is not ours: check the recorded command line marker.
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    if ") Z" in stat:
        return None
    marker = (RUN / name / "marker").read_text() if (RUN / name / "marker").exists() else ""
    # Between fork and exec the command line can read empty: that process is still ours.
    if marker and cmdline and marker.encode() not in cmdline:
        return None
    return pid


def start(
    name: str,
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    marker: str = "",
) -> Path:
    """Start a detached process for peer instance ``name``; returns its log file path.

    ``marker`` is a string present in the command line, used to recognise the process later.
    """
    directory = run_dir(name)
    log = directory / "output.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    (directory / "pid").write_text(str(proc.pid))
    (directory / "marker").write_text(marker or str(argv[0]))
    return log


def stop(name: str, timeout: float = 30.0) -> bool:
    """Stop the process ``start`` recorded for ``name`` (TERM, then KILL). True if one ran."""
    pid = pid_of(name)
    if pid is None:
        (RUN / name / "pid").unlink(missing_ok=True)
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and pid_of(name) is not None:
        time.sleep(0.2)
    if pid_of(name) is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        time.sleep(0.5)
    (RUN / name / "pid").unlink(missing_ok=True)
    return True


def port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def wait_until(
    ready: Callable[[], bool],
    *,
    peer: str,
    log: Path,
    timeout: float,
    alive: Callable[[], bool] | None = None,
) -> None:
    """Poll ``ready`` until true; on timeout or early death raise one line naming peer and log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if alive is not None and not alive():
            raise PeerError(f"{peer} exited during start-up; see {log}")
        time.sleep(0.5)
    raise PeerError(f"{peer} not ready after {timeout:.0f} s; see {log}")


def log_contains(log: Path, text: str, since: int = 0) -> bool:
    try:
        with open(log, "rb") as handle:
            handle.seek(since)
            return text.encode() in handle.read()
    except OSError:
        return False


def sh(argv: Sequence[str], *, peer: str, cwd: Path | None = None,
       env: dict[str, str] | None = None, timeout: float = 1800) -> str:
    """Run a provisioning command; failure raises one line with the command's last output line."""
    try:
        done = subprocess.run(
            list(argv), cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True,
            text=True, timeout=timeout, check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PeerError(f"{peer}: {argv[0]} failed: {exc}") from exc
    if done.returncode != 0:
        tail = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise PeerError(f"{peer}: {' '.join(argv[:3])} … exited {done.returncode}: {tail[0]}")
    return done.stdout


CERT_DIR = CACHE / "certs"


def ensure_certs() -> dict[str, Path]:
    """A test CA and one server certificate for 127.0.0.1/127.0.0.2/127.0.0.3/localhost (PEM),
    a PKCS12 keystore of it for Java peers (password ``changeit``), and a client certificate
    signed by the same CA for mutual-TLS tests. Generated once with openssl."""
    files = {
        "ca": CERT_DIR / "ca.pem",
        "ca_key": CERT_DIR / "ca.key",
        "cert": CERT_DIR / "server.pem",
        "key": CERT_DIR / "server.key",
        "p12": CERT_DIR / "server.p12",
        "client_cert": CERT_DIR / "client.pem",
        "client_key": CERT_DIR / "client.key",
        "other_ca": CERT_DIR / "other-ca.pem",
    }
    if all(path.exists() for path in files.values()):
        return files
    CERT_DIR.mkdir(parents=True, exist_ok=True)
    d = str(CERT_DIR)
    ossl = ["openssl"]

    def run(*args: str) -> None:
        sh([*ossl, *args], peer="certificates", cwd=CERT_DIR)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650", "-subj",
        "/CN=statsfeeder test CA", "-keyout", f"{d}/ca.key", "-out", f"{d}/ca.pem")
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650", "-subj",
        "/CN=unrelated CA", "-keyout", f"{d}/other-ca.key", "-out", f"{d}/other-ca.pem")
    (CERT_DIR / "san.ext").write_text(
        "subjectAltName=IP:127.0.0.1,IP:127.0.0.2,IP:127.0.0.3,DNS:localhost\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
    )
    for stem, cn in (("server", "localhost"), ("client", "statsfeeder client")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}",
            "-keyout", f"{d}/{stem}.key", "-out", f"{d}/{stem}.csr")
        run("x509", "-req", "-in", f"{d}/{stem}.csr", "-CA", f"{d}/ca.pem", "-CAkey",
            f"{d}/ca.key", "-CAcreateserial", "-days", "3650", "-extfile", f"{d}/san.ext",
            "-out", f"{d}/{stem}.pem")
    run("pkcs12", "-export", "-in", f"{d}/server.pem", "-inkey", f"{d}/server.key",
        "-certfile", f"{d}/ca.pem", "-name", "node", "-passout", "pass:changeit",
        "-out", f"{d}/server.p12")
    return files


def maven_fetch(coordinates: Sequence[str], dest: Path, *, peer: str,
                copy_dependencies: bool = True) -> None:
    """Copy artifacts (``group:artifact:version``) and their runtime dependencies into ``dest``
    via a throwaway pom, once; a marker file makes later calls free."""
    done_marker = dest / ".complete"
    if done_marker.exists():
        return
    dest.mkdir(parents=True, exist_ok=True)
    deps = "".join(
        "<dependency><groupId>{}</groupId><artifactId>{}</artifactId><version>{}</version>"
        "</dependency>".format(*coord.split(":")[:3])
        for coord in coordinates
    )
    pom = (
        '<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion>'
        "<groupId>statsfeeder.peers</groupId><artifactId>fetch</artifactId><version>0</version>"
        f"<packaging>pom</packaging><dependencies>{deps}</dependencies></project>"
    )
    work = dest.parent / f".{dest.name}.pom"
    work.mkdir(parents=True, exist_ok=True)
    (work / "pom.xml").write_text(pom)
    goal = "dependency:copy-dependencies" if copy_dependencies else "dependency:copy"
    sh(["mvn", "-B", "-q", goal, "-DincludeScope=runtime", f"-DoutputDirectory={dest}"],
       peer=peer, cwd=work)
    done_marker.write_text("ok\n")


def built_once(peer: str, target: Path, lock: Path, build: Callable[[str], None]) -> Path:
    """``target``, built by ``build(go)`` unless it exists; under ``lock``, so a second run
    started meanwhile waits and then reuses it."""
    if target.exists():
        return target
    go = shutil.which("go")
    if go is None:
        raise PeerError(f"{peer}: the Go toolchain ('go') is not on PATH")
    with locked(lock):
        if not target.exists():
            build(go)
    return target
