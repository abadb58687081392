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
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from peers import podman, prometheus
from peers.common import REPO, PeerError
from statsfeeder import __version__
from statsfeeder.sinks.cassandra.session import connect
from tests.helpers import cassandra_config, drop_keyspace, free_port, metric, wait_for
from tests.integration.containers import (
    CONFIG,
    SUCCESS,
    Deployment,
    in_container,
    mounts,
    scraped,
    scraped_values,
    setup_script,
    start,
    status,
    stop_within,
    write_config,
)

pytestmark = pytest.mark.container


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
            drop_keyspace(session, deployment.keyspace)
            for role in (deployment.schema_role, deployment.service_role):
                session.execute(f"DROP ROLE IF EXISTS {role}")
        finally:
            cluster.shutdown()
    except Exception as exc:
        warnings.warn(f"left keyspace {deployment.keyspace} and its roles: {exc}", stacklevel=1)


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
        assert vm.startswith("urn:vcenter:") and ":vm:" in vm
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
        logs = podman.run(["logs", name])
        log = logs.stdout + logs.stderr
        assert "Traceback" not in log
        for secret in (deployment.secrets / "cassandra_password",
                       deployment.secrets / "vcenter_password"):
            assert secret.read_text().strip() not in log
    finally:
        prometheus.set_scrape_targets([])
        podman.remove(name)


def test_image_serves_the_read_api_with_its_own_engine(
        image: str, deployment: Deployment, prometheus_env: dict[str, str],
        tmp_path: Path) -> None:
    """The engine is in the image: `run` with read_api enabled and `serve` alone both answer
    Grafana's `1+1` and a query over what the cycle stored, read-only root and no capability,
    with no Go and nothing built at run time; `serve`'s /metrics is scraped by Prometheus."""
    token = secrets.token_hex(16)
    ports = {key: free_port() for key in ("run", "run_api", "serve", "serve_api")}
    raw = yaml.safe_load(deployment.files["config"].read_text())
    raw["read_api"] = {"enabled": True, "listen": f"127.0.0.1:{ports['run_api']}",
                       "tokens": [{"name": "grafana", "token_env": "SF_API_TOKEN",
                                   "provider": True}]}
    config = tmp_path / "statsfeeder.yaml"
    config.write_text(yaml.safe_dump(raw))
    config.chmod(0o444)
    headers = {"Authorization": f"Bearer {token}"}
    cpu = "vsphere_vm_cpu_usage_average_percent"

    def query(port: int, text: str) -> list[dict[str, Any]]:
        answer = httpx.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": text},
                           headers=headers, timeout=60)
        assert answer.status_code == 200, answer.text
        return list(answer.json()["data"]["result"])

    collector = start(image, deployment, ports["run"], "-e", f"SF_API_TOKEN={token}",
                      config=config)
    server = ""
    try:
        wait_for(lambda: (metric(ports["run"], SUCCESS) or 0) > 0, 120, "a stored cycle")
        wait_for(lambda: status(ports["run_api"], "/api/v1/status/buildinfo") == 401, 60,
                 "run's read API")
        answer = httpx.get(f"http://127.0.0.1:{ports['run_api']}/api/v1/query",
                           params={"query": "1+1"}, headers=headers, timeout=60).json()
        assert answer["data"]["result"][1] == "2", answer
        assert int(query(ports["run_api"], f"count({cpu})")[0]["value"][1]) > 0
        assert (metric(ports["run"], "statsfeeder_read_api_engine_up") or 0) == 1

        server = start(image, deployment, ports["serve"], "-e", f"SF_API_TOKEN={token}",
                       "-e", f"STATSFEEDER_READ_API__LISTEN=127.0.0.1:{ports['serve_api']}",
                       config=config, command=["serve", "-c", CONFIG])
        wait_for(lambda: status(ports["serve"], "/readyz") == 200, 60, "serve's /readyz")
        one = httpx.post(f"http://127.0.0.1:{ports['serve_api']}/api/v1/query",
                         data={"query": "1+1"}, headers=headers, timeout=60).json()
        assert one["data"] == {"resultType": "scalar", "result": [one["data"]["result"][0], "2"]}
        by_vm = query(ports["serve_api"], f"max by (vm) (max_over_time({cpu}[15m]))")
        assert by_vm and all(0 <= float(row["value"][1]) <= 100 for row in by_vm)
        refused = httpx.get(f"http://127.0.0.1:{ports['serve_api']}/api/v1/query",
                            params={"query": "1+1"}, headers={"Authorization": "Bearer x"})
        assert refused.status_code == 401
        assert "Read-only file system" in in_container(server, "open('/usr/local/x', 'w')")
        assert in_container(server, "import os; print(os.path.exists(os.path.expanduser("
                            "'~/.cache/statsfeeder')))") == "False"

        prom = prometheus_env["PROMETHEUS_URL"] + "/api/v1/query"
        instance = f'instance="127.0.0.1:{ports["serve"]}"'
        wanted = {"ok": f'statsfeeder_read_api_requests_total{{endpoint="/api/v1/query",'
                        f'code="200",{instance}}}',
                  "refused": f'statsfeeder_read_api_auth_failures_total{{reason="invalid",'
                             f'{instance}}}',
                  "series": f"statsfeeder_read_api_series_returned_total{{{instance}}}",
                  "engine": f"statsfeeder_read_api_engine_up{{{instance}}}"}
        seen = scraped_values(ports["serve"], prom, wanted)
        assert seen == {"ok": 2, "refused": 1, "series": seen.get("series", 0),
                        "engine": 1} and seen["series"] > 0, seen
        for name in (collector, server):
            logs = podman.run(["logs", name])
            log = logs.stdout + logs.stderr
            assert "Traceback" not in log and token not in log
            assert "building the PromQL engine" not in log
    finally:
        prometheus.set_scrape_targets([])
        podman.remove(collector)
        if server:
            podman.remove(server)


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


def test_a_build_that_needs_anything_else_fails_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM docker.io/library/alpine:3.19\nRUN true\n")
    with pytest.raises(PeerError) as failed:
        podman.build_image("localhost/statsfeeder-test:unbuildable", tmp_path)
    assert "\n" not in str(failed.value)
    assert str(failed.value).endswith("docker.io/library/alpine:3.19: image not known")


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
             "'git', 'go', 'gofmt') if shutil.which(t)], 'dists': {d.metadata['Name']: d.version "
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
    # The read API's certificate and Grafana's token: not read by this config (no read_api),
    # but compose mounts them; make-certs.sh makes the real ones.
    token = tmp_path / "grafana_api_token"
    token.write_text(secrets.token_hex(16) + "\n")
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
      - {ca["cassandra_ca"]}:/etc/statsfeeder/api.pem:ro
      - {ca["cassandra_ca"]}:/etc/statsfeeder/api.key:ro
secrets:
  grafana_api_token: {{file: {token}}}
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
            state = podman.run(["inspect", "--format", "{{json .State}}", name])
            raise AssertionError(f"{exc}: {state.stdout} {state.stderr} {logs.stdout[-2000:]} "
                                 f"{logs.stderr[-2000:]} {up.stderr[-1000:]}") from None
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


def test_service_role_reads_and_writes_its_tables_and_nothing_more(
        deployment: Deployment, cassandra_env: dict[str, str]) -> None:
    """The rights cassandra-setup.sh grants are enough for the service (the runs above use
    them: writes, reads, ha's lightweight transactions) and no more than that."""
    from cassandra import Unauthorized

    password = (deployment.secrets / "cassandra_password").read_text().strip()
    config = cassandra_config({**cassandra_env, "CASSANDRA_USERNAME": deployment.service_role,
                               "CASSANDRA_PASSWORD": password})
    ks = deployment.keyspace
    cluster, session = connect(config)
    try:
        taken = session.execute(f"INSERT INTO {ks}.leases (name, owner, acquired) VALUES "
                                "('vcenter:rights', 'me', toTimestamp(now())) IF NOT EXISTS")
        assert taken.one().applied
        again = session.execute(f"UPDATE {ks}.leases SET owner = 'other' "
                                "WHERE name = 'vcenter:rights' IF owner = 'nobody'")
        assert not again.one().applied
        assert session.execute(f"SELECT owner FROM {ks}.leases WHERE name = 'vcenter:rights'"
                               ).one().owner == "me"
        for denied in (f"CREATE TABLE {ks}.extra (k int PRIMARY KEY)",
                       f"DROP TABLE {ks}.samples",
                       f"ALTER TABLE {ks}.samples WITH gc_grace_seconds = 0",
                       "CREATE KEYSPACE sf_denied WITH replication = "
                       "{'class': 'SimpleStrategy', 'replication_factor': 1}",
                       f"GRANT SELECT ON KEYSPACE {ks} TO {deployment.schema_role}"):
            with pytest.raises(Unauthorized):
                session.execute(denied)
    finally:
        cluster.shutdown()
