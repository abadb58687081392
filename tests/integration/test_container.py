"""The container image, built from the project's Dockerfile with podman (peers/podman.py) and
run for real: read-only root filesystem, its non-root user (and an arbitrary one, OpenShift
style), config and secrets mounted as files, ``--network host`` to the real Cassandra (TLS +
password, through the restricted role deploy/cassandra-setup.sh creates), vcsim and Prometheus.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml

from peers import podman, prometheus
from peers.common import REPO, PeerError
from statsfeeder import __version__
from statsfeeder.sinks.cassandra.session import connect
from tests.helpers import cassandra_config

pytestmark = pytest.mark.container
METRICS = ["cpu.usage.average", "mem.usage.average"]
CONFIG = "/etc/statsfeeder/statsfeeder.yaml"
SUCCESS = 'statsfeeder_cycle_last_success_timestamp_seconds{vcenter="vcsim"}'


@dataclass
class Deployment:
    """A keyspace made by the schema role, and the service role allowed only into it."""

    keyspace: str
    schema_role: str
    service_role: str
    secrets: Path
    files: dict[str, Path] = field(default_factory=dict)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def metric(port: int, name: str) -> float | None:
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except httpx.HTTPError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def status(port: int, path: str) -> int:
    try:
        return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2).status_code
    except httpx.HTTPError:
        return 0


def setup_script(phase: str, cassandra_env: dict[str, str], deployment: Deployment) -> None:
    """deploy/cassandra-setup.sh, with the peer's superuser standing in for the admin role."""
    env = {**os.environ, "SECRETS_DIR": str(deployment.secrets),
           "CASSANDRA_HOST": cassandra_env["CASSANDRA_HOSTS"].split(",")[0],
           "CASSANDRA_PORT": cassandra_env["CASSANDRA_PORT"],
           "CASSANDRA_CA_FILE": cassandra_env["CASSANDRA_CA_FILE"],
           "ADMIN_ROLE": cassandra_env["CASSANDRA_USERNAME"],
           "SCHEMA_ROLE": deployment.schema_role, "SERVICE_ROLE": deployment.service_role,
           "KEYSPACE": deployment.keyspace, "CQLSH": str(Path(sys.executable).parent / "cqlsh")}
    done = subprocess.run(["bash", str(REPO / "deploy" / "cassandra-setup.sh"), phase], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "password" not in done.stdout.lower()


def mounts(deployment: Deployment, config: Path, secrets_dir: Path | None = None) -> list[str]:
    """Config, CA and secrets as files, where docker-compose.yml mounts them."""
    args = ["-v", f"{config}:{CONFIG}:ro"]
    args += ["-v", f"{deployment.files['cassandra_ca']}:/etc/statsfeeder/cassandra-ca.pem:ro",
             "-v", f"{deployment.files['vcenter_ca']}:/etc/statsfeeder/vcenter-ca.pem:ro"]
    for name in ("vcenter_password", "cassandra_password", "cassandra_schema_password"):
        secret = (secrets_dir or deployment.secrets) / name
        args += ["-v", f"{secret}:/run/secrets/{name}:ro"]
    return args


def write_config(path: Path, deployment: Deployment, vcsim_env: dict[str, str],
                 cassandra_env: dict[str, str]) -> Path:
    raw = {
        "vcenters": [{"name": "vcsim", "url": vcsim_env["VCSIM_URL"],
                      "credentials": {"username": vcsim_env["VCSIM_USERNAME"],
                                      "password_file": "/run/secrets/vcenter_password"},
                      "tls": {"ca_file": "/etc/statsfeeder/vcenter-ca.pem"}}],
        "collection": {"metrics": METRICS},
        "cassandra": {"hosts": cassandra_env["CASSANDRA_HOSTS"].split(","),
                      "port": int(cassandra_env["CASSANDRA_PORT"]),
                      "credentials": {"username": deployment.service_role,
                                      "password_file": "/run/secrets/cassandra_password"},
                      "tls": {"ca_file": "/etc/statsfeeder/cassandra-ca.pem"},
                      "keyspace": deployment.keyspace, "consistency": "ONE",
                      "replication": {"replication_factor": 1}},
        # Leases are lightweight transactions: the restricted role must be able to take them.
        "ha": {"enabled": True, "lease_seconds": 30, "instance_id": f"ctr-{uuid.uuid4().hex[:6]}"},
    }
    path.write_text(yaml.safe_dump(raw))
    path.chmod(0o444)
    return path


@pytest.fixture(scope="module")
def image() -> str:
    try:
        seconds = podman.build_image()
    except PeerError as exc:
        pytest.fail(f"image build failed: {exc}", pytrace=False)
    print(f"image build: {seconds:.1f} s")
    return podman.IMAGE


@pytest.fixture(scope="module")
def deployment(image: str, cassandra_env: dict[str, str], vcsim_env: dict[str, str],
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """Roles by deploy/cassandra-setup.sh, the schema by the image's `schema create` as the
    schema role, then the service role's grants: the order docker-compose.yml runs them in."""
    tag = uuid.uuid4().hex[:8]
    directory = tmp_path_factory.mktemp("container")
    deployment = Deployment(f"ctr_{tag}", f"sfschema_{tag}", f"sfsvc_{tag}",
                            directory / "secrets")
    deployment.secrets.mkdir()
    values = {"vcenter_password": vcsim_env["VCSIM_PASSWORD"],
              "cassandra_admin_password": cassandra_env["CASSANDRA_PASSWORD"],
              "cassandra_schema_password": secrets.token_hex(16),
              "cassandra_password": secrets.token_hex(16)}
    for name, value in values.items():
        (deployment.secrets / name).write_text(value + "\n")
        # Owner and group root, group-readable: the image's user is in group 0 (make-certs.sh).
        (deployment.secrets / name).chmod(0o640)
    deployment.files["cassandra_ca"] = Path(cassandra_env["CASSANDRA_CA_FILE"])
    deployment.files["vcenter_ca"] = Path(vcsim_env["VCSIM_CA_FILE"])
    setup_script("roles", cassandra_env, deployment)
    config = write_config(directory / "statsfeeder.yaml", deployment, vcsim_env, cassandra_env)
    created = podman.run(["run", "--rm", "--network", "host", "--read-only",
                          *mounts(deployment, config), image, "schema", "create", "-c", CONFIG,
                          "--username", deployment.schema_role,
                          "--password-file", "/run/secrets/cassandra_schema_password"],
                         timeout=180)
    assert created.returncode == 0, created.stdout + created.stderr
    setup_script("grants", cassandra_env, deployment)
    deployment.files["config"] = config
    yield deployment
    try:  # best effort: other tests may have Cassandra down for an outage right now
        cluster, session = connect(cassandra_config(cassandra_env))
        try:
            session.execute(f"DROP KEYSPACE IF EXISTS {deployment.keyspace}")
            for role in (deployment.schema_role, deployment.service_role):
                session.execute(f"DROP ROLE IF EXISTS {role}")
        finally:
            cluster.shutdown()
    except Exception as exc:
        warnings.warn(f"left keyspace {deployment.keyspace} and its roles: {exc}", stacklevel=1)


def start(image: str, deployment: Deployment, port: int, *extra: str,
          secrets_dir: Path | None = None) -> str:
    name = f"statsfeeder-test-{uuid.uuid4().hex[:8]}"
    # As Docker does it: --read-only without podman's extra tmpfs mounts on /tmp and /run.
    podman.run(["run", "-d", "--name", name, "--label", podman.LABEL, "--network", "host",
                "--read-only", "--read-only-tmpfs=false", "--cap-drop=ALL",
                "--security-opt", "no-new-privileges",
                "-e", f"STATSFEEDER_TELEMETRY__LISTEN=127.0.0.1:{port}",
                *mounts(deployment, deployment.files["config"], secrets_dir), *extra, image],
               check=True)
    return name


def in_container(name: str, code: str) -> str:
    done = podman.run(["exec", name, "python", "-c", code])
    return (done.stdout + done.stderr).strip()


def stop_within(name: str, seconds: float) -> tuple[int, float]:
    began = time.monotonic()
    podman.run(["kill", "--signal", "TERM", name], check=True)
    code = podman.run(["wait", name], timeout=seconds + 30).stdout.strip()
    return int(code), time.monotonic() - began


def scraped(port: int, api: str) -> dict[str, float]:
    """What the real Prometheus stored from this container (other tests may move its targets:
    point them back here until the samples are in)."""
    instance = f'instance="127.0.0.1:{port}"'
    queries = {"up": f"statsfeeder_up{{{instance}}}",
               "written": f'statsfeeder_samples_written_total{{sink="cassandra",{instance}}}',
               "leases": f'statsfeeder_leases_held{{vcenter="vcsim",{instance}}}'}
    values: dict[str, float] = {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(values) < len(queries):
        prometheus.set_scrape_targets([f"127.0.0.1:{port}"], interval="1s")
        time.sleep(2)
        for key, query in queries.items():
            result = httpx.get(api, params={"query": query}).json()["data"]["result"]
            if result:
                values[key] = float(result[0]["value"][1])
    return values


def test_image_runs_read_only_as_its_user_against_the_real_peers(
        image: str, deployment: Deployment, prometheus_env: dict[str, str]) -> None:
    port = free_port()
    began = time.monotonic()
    name = start(image, deployment, port)
    try:
        wait_for(lambda: status(port, "/readyz") == 200, 60, "/readyz")
        ready_after = time.monotonic() - began
        print(f"time to ready: {ready_after:.1f} s")
        assert status(port, "/healthz") == 200
        assert in_container(name, "import os; print(os.getuid(), os.getgid())") == "10001 0"
        assert "Read-only file system" in in_container(name, "open('/usr/local/x', 'w')")
        wait_for(lambda: (metric(port, SUCCESS) or 0) > 0, 120, "a stored cycle")

        # Read back with the image's own `statsfeeder query`, as the restricted service role.
        listed = podman.run(["run", "--rm", "--network", "host", "--read-only",
                             *mounts(deployment, deployment.files["config"]), image,
                             "entities", "-c", CONFIG], timeout=120)
        assert listed.returncode == 0, listed.stderr
        vm = listed.stdout.splitlines()[0].split("\t")[0]
        assert vm.startswith("urn:vcenter:vcsim:vm:")
        shown = podman.run(["run", "--rm", "--network", "host", "--read-only",
                            *mounts(deployment, deployment.files["config"]), image, "query",
                            "-c", CONFIG, "--vm", vm, "--metric", "cpu.usage.average",
                            "--since", "15m", "--format", "csv"], timeout=120)
        assert shown.returncode == 0, shown.stderr
        rows = shown.stdout.splitlines()[1:]
        assert len(rows) >= 15 and all(0 <= float(r.split(",")[3]) <= 100 for r in rows)

        values = scraped(port, prometheus_env["PROMETHEUS_URL"] + "/api/v1/query")
        assert values.get("up") == 1 and values.get("leases") == 1, values
        assert values.get("written", 0) > 0, values

        health = podman.run(["healthcheck", "run", name], timeout=30)
        assert health.returncode == 0, health.stdout + health.stderr

        code, took = stop_within(name, 10)
        assert (code, took < 10) == (0, True), f"exit {code} after {took:.1f} s"
        log = podman.run(["logs", name]).stdout + podman.run(["logs", name]).stderr
        assert "Traceback" not in log
        for secret in (deployment.secrets / "cassandra_password",
                       deployment.secrets / "vcenter_password"):
            assert secret.read_text().strip() not in log
    finally:
        prometheus.set_scrape_targets([])
        podman.remove(name)


def test_image_runs_under_an_arbitrary_uid(image: str, deployment: Deployment) -> None:
    """OpenShift runs images as a random uid in group 0: nothing in the image may need 10001."""
    port = free_port()
    name = start(image, deployment, port, "--user", "123456:0")
    try:
        wait_for(lambda: status(port, "/readyz") == 200, 60, "/readyz")
        assert in_container(name, "import os; print(os.getuid(), os.getgid())") == "123456 0"
        wait_for(lambda: (metric(port, SUCCESS) or 0) > 0, 120, "a stored cycle")
        code, took = stop_within(name, 10)
        assert (code, took < 10) == (0, True), f"exit {code} after {took:.1f} s"
    finally:
        podman.remove(name)


def test_a_wrong_secret_file_is_one_line_and_a_non_zero_exit(
        image: str, deployment: Deployment, tmp_path: Path) -> None:
    for secret in deployment.secrets.iterdir():
        (tmp_path / secret.name).write_text(secret.read_text())
        (tmp_path / secret.name).chmod(0o640)
    (tmp_path / "cassandra_password").write_text("not-the-password\n")
    name = start(image, deployment, free_port(), secrets_dir=tmp_path)
    try:
        code = int(podman.run(["wait", name], timeout=120).stdout.strip())
        logs = podman.run(["logs", name])
        lines = [line for line in (logs.stdout + logs.stderr).splitlines() if line.strip()]
        assert code != 0
        assert len(lines) == 1, lines
        assert f"authentication failed for user '{deployment.service_role}'" in lines[0]
        assert "not-the-password" not in lines[0]
    finally:
        podman.remove(name)


def test_image_has_labels_no_build_tools_and_only_locked_dependencies(image: str) -> None:
    inspected = podman.inspect_image(image)
    labels = inspected["Labels"]
    assert labels["org.opencontainers.image.version"] == __version__
    assert labels["org.opencontainers.image.title"] == "statsfeeder"
    assert inspected["Config"]["User"] == "10001"
    assert inspected["Healthcheck"]["Test"][0] == "CMD"
    print(f"image size: {inspected['Size'] / 1e6:.0f} MB")
    probe = ("import importlib.metadata as m, json, shutil; print(json.dumps({'tools': "
             "[t for t in ('gcc', 'cc', 'c++', 'g++', 'make', 'ld', 'as', 'clang', 'cargo', "
             "'git') if shutil.which(t)], 'dists': {d.metadata['Name']: d.version "
             "for d in m.distributions()}}))")
    done = podman.run(["run", "--rm", "--read-only", "--network", "none", "--entrypoint",
                       "python", image, "-c", probe], check=True)
    found = json.loads(done.stdout)
    assert found["tools"] == []
    lock = {re.sub(r"[-_.]+", "-", line.split("==")[0]).lower(): line.split("==")[1].strip()
            for line in (REPO / "requirements.lock").read_text().splitlines() if "==" in line}
    installed = {re.sub(r"[-_.]+", "-", n).lower(): v for n, v in found["dists"].items()}
    base = {"pip", "setuptools", "wheel", "statsfeeder"}
    unpinned = {n: v for n, v in installed.items() if n not in base and lock.get(n) != v}
    assert not unpinned, f"not as in requirements.lock: {unpinned}"
    assert installed["statsfeeder"] == __version__


def test_compose_brings_up_the_statsfeeder_service(
        image: str, deployment: Deployment, tmp_path: Path) -> None:
    """podman-compose builds and runs docker-compose.yml's statsfeeder service as written
    (build, read-only root, config and CA mounts, secrets, the image's health check). Peers
    outside compose stand in for what cannot be pulled here: the shared Cassandra 3.11 (with
    the roles deploy/cassandra-setup.sh made, as compose's cassandra-roles/-grants would) for
    the cassandra service, vcsim for the vCenter; an override file (!reset, as in Docker
    Compose) points the service at them over the host network."""
    port = free_port()
    project = f"sftest{uuid.uuid4().hex[:6]}"
    override = tmp_path / "override.yml"
    config, ca = deployment.files["config"], deployment.files
    override.write_text(f"""\
services:
  statsfeeder:
    network_mode: host
    ports: !reset []
    environment:
      STATSFEEDER_TELEMETRY__LISTEN: "127.0.0.1:{port}"
    volumes:
      - {config}:/etc/statsfeeder/statsfeeder.yaml:ro
      - {ca["cassandra_ca"]}:/etc/statsfeeder/cassandra-ca.pem:ro
      - {ca["vcenter_ca"]}:/etc/statsfeeder/vcenter-ca.pem:ro
secrets:
""" + "".join(f"  {s.name}: {{file: {s}}}\n" for s in deployment.secrets.iterdir()))
    compose = [str(Path(sys.executable).parent / "podman-compose"), "-p", project,
               "-f", str(REPO / "docker-compose.yml"), "-f", str(override),
               "--podman-build-args=" + " ".join(podman.build_args())]
    env = {**os.environ, **podman.env()}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*compose, *args], env=env, capture_output=True, text=True,
                              timeout=600, check=False)

    try:
        began = time.monotonic()
        up = run("up", "-d", "--build", "--no-deps", "statsfeeder")
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-2000:]
        name = f"{project}_statsfeeder_1"
        try:
            wait_for(lambda: status(port, "/readyz") == 200, 90, "/readyz")
        except AssertionError as exc:
            logs = podman.run(["logs", name])
            raise AssertionError(f"{exc}: {up.stdout[-3000:]} {logs.stdout} {logs.stderr}"
                                 ) from None
        print(f"compose build and start to ready: {time.monotonic() - began:.1f} s")
        [info] = json.loads(podman.run(["inspect", name], check=True).stdout)
        assert info["HostConfig"]["ReadonlyRootfs"] is True
        assert in_container(name, "import os; print(os.getuid(), os.getgid())") == "10001 0"
        wait_for(lambda: (metric(port, SUCCESS) or 0) > 0, 120, "a stored cycle")
        health = podman.run(["healthcheck", "run", name], timeout=30)
        assert health.returncode == 0, health.stdout + health.stderr
        stopped = run("stop", "-t", "10", "statsfeeder")
        assert stopped.returncode == 0, stopped.stderr
        [info] = json.loads(podman.run(["inspect", name], check=True).stdout)
        assert info["State"]["ExitCode"] == 0
    finally:
        run("down", "-t", "0")
