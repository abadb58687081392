"""Helpers for tests/integration/test_container.py: the container's config, mounts and
secrets as docker-compose.yml lays them out, deploy/cassandra-setup.sh, and podman calls."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

from peers import podman, prometheus
from peers.common import REPO

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


def start(image: str, deployment: Deployment, port: int, *extra: str,
          secrets_dir: Path | None = None, config: Path | None = None,
          command: Sequence[str] = ()) -> str:
    """``extra`` podman options; ``command`` replaces the image's (``run -c CONFIG``)."""
    name = f"statsfeeder-test-{uuid.uuid4().hex[:8]}"
    # As Docker does it: --read-only without podman's extra tmpfs mounts on /tmp and /run.
    podman.run(["run", "-d", "--name", name, "--label", podman.LABEL, "--network", "host",
                "--read-only", "--read-only-tmpfs=false", "--cap-drop=ALL",
                "--security-opt", "no-new-privileges",
                "-e", f"STATSFEEDER_TELEMETRY__LISTEN=127.0.0.1:{port}",
                *mounts(deployment, config or deployment.files["config"], secrets_dir), *extra,
                image, *command], check=True)
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
    """What the real Prometheus stored from this container's collector."""
    instance = f'instance="127.0.0.1:{port}"'
    return scraped_values(port, api, {
        "up": f"statsfeeder_up{{{instance}}}",
        "written": f'statsfeeder_samples_written_total{{sink="cassandra",{instance}}}',
        "leases": f'statsfeeder_leases_held{{vcenter="vcsim",{instance}}}'})


def scraped_values(port: int, api: str, queries: dict[str, str]) -> dict[str, float]:
    """The value of each query once the real Prometheus has scraped the container on
    ``port`` (other tests may move its targets: point them back here until all are in)."""
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


