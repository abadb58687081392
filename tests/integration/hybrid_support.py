"""Helpers of the hybrid-mode tests (test_hybrid.py, test_kairosdb_only.py): configuration,
the service as a subprocess, reading both stores back, and a TCP relay."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from statsfeeder.config import Config
from statsfeeder.sinks.cassandra.reader import read_series
from statsfeeder.sinks.cassandra.session import connect
from tests.helpers import drop_keyspace
from tests.integration.test_pipeline import write_config

Env = dict[str, str]
WRITTEN = 'statsfeeder_samples_written_total{sink="%s"}'
SINK_UP = 'statsfeeder_sink_up{sink="%s"}'
STATSFEEDER = [sys.executable, "-m", "statsfeeder"]


def hybrid_config(tmp_path: Path, vcsim_env: Env, cassandra_env: Env, kairos_url: str, *,
                  telemetry_port: int, **extra: Any) -> tuple[Path, str]:
    """A 20-s-interval hybrid configuration on a fresh keyspace and metric prefix (the
    dedicated KairosDB keeps earlier runs' datapoints); returns (path, prefix)."""
    keyspace = f"hy_{uuid.uuid4().hex[:8]}"
    prefix = f"t{uuid.uuid4().hex[:8]}."
    path = write_config(tmp_path / "c.yaml", vcsim_env, cassandra_env, keyspace)
    raw = yaml.safe_load(path.read_text())
    raw["collection"]["interval_seconds"] = 20
    raw["cassandra"]["connect_timeout_seconds"] = 3
    raw["telemetry"] = {"listen": f"127.0.0.1:{telemetry_port}"}
    raw["kairosdb"] = {"enabled": True, "url": kairos_url, "metric_prefix": prefix,
                       "retries": 1, "timeout_seconds": 5, "connect_timeout_seconds": 2}
    raw.update(extra)
    path.write_text(yaml.safe_dump(raw))
    return path, prefix


def cli_env(vcsim_env: Env, cassandra_env: Env) -> Env:
    return {"VCSIM_PASSWORD": vcsim_env["VCSIM_PASSWORD"],
            "CASSANDRA_PASSWORD": cassandra_env["CASSANDRA_PASSWORD"], "PATH": os.environ["PATH"]}


def drop_config_keyspace(config: Config) -> None:
    """Clean-up right after a node restart: connecting may fail a few times first."""
    for _ in range(10):
        try:
            cluster, session = connect(config.cassandra)
        except Exception:  # the node is still starting: try again
            time.sleep(2)
            continue
        try:
            drop_keyspace(session, config.cassandra.keyspace)
            return
        finally:
            cluster.shutdown()


def create_schema(path: Path, env: Env) -> None:
    """Other test sessions stop the shared node for outage tests: wait for it (a minute)."""
    for _ in range(12):
        done = subprocess.run([*STATSFEEDER, "schema", "create", "-c", str(path)], env=env,
                              capture_output=True, text=True, timeout=120)
        if done.returncode == 0:
            return
        time.sleep(5)
    raise AssertionError(f"schema create: {done.stderr}")


def readyz(port: int) -> tuple[int, str]:
    try:
        answer = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
    except httpx.HTTPError:
        return 0, ""
    return answer.status_code, answer.text


def kairos_series(url: str, prefix: str, vm_id: str, since: int) -> tuple[list[int], list[float]]:
    """cpu.usage.average of one VM, asked by its exact vCD id."""
    query = {"start_absolute": since * 1000, "metrics": [
        {"name": prefix + "cpu.usage.average",
         "tags": {"vm": [vm_id], "instance": ["aggregate"]}}]}
    answer = httpx.post(f"{url}/api/v1/datapoints/query", json=query, timeout=10)
    assert answer.status_code == 200, answer.text
    values = answer.json()["queries"][0]["results"][0]["values"]
    return [int(ts) // 1000 for ts, _ in values], [float(v) for _, v in values]


def compare_stores(config: Config, url: str, prefix: str, since: int,
                   both_since: int = 0) -> dict[str, int]:
    """Every powered-on VM's cpu.usage.average: in Cassandra on the 20-s grid without a gap
    since ``since``; in KairosDB the same timestamps and values (percent there, hundredths in
    Cassandra) from ``both_since`` (default: Cassandra's first sample). Returns the counts
    (VMs, Cassandra's samples since ``since``, each store's over the compared range, gaps)."""
    cluster, session = connect(config.cassandra)
    counts = {"vms": 0, "cassandra_all": 0, "cassandra": 0, "kairosdb": 0, "gaps": 0}
    try:
        keyspace = config.cassandra.keyspace
        vms = [row.vm_id for row in session.execute(f"SELECT vm_id FROM {keyspace}.entities")]
        assert vms
        for vm_id in vms:
            [stored] = read_series(session, keyspace, vm_id, ["cpu.usage.average"], since,
                                   int(time.time()) + 60)
            counts["gaps"] += int(np.sum(np.diff(stored.timestamps) != 20))
            counts["cassandra_all"] += len(stored.timestamps)
            keep = stored.timestamps >= both_since
            stamps, values = stored.timestamps[keep].tolist(), stored.values[keep] * 0.01
            deadline = time.monotonic() + 15
            while True:  # KairosDB queues writes: poll until they are queryable
                k_stamps, k_values = kairos_series(url, prefix, vm_id, since)
                if k_stamps[-1:] == stamps[-1:] or time.monotonic() > deadline:
                    break
                time.sleep(0.3)
            k_stamps, k_values = zip(*[(t, v) for t, v in zip(k_stamps, k_values, strict=True)
                                       if t >= stamps[0]], strict=True)
            counts["vms"] += 1
            counts["cassandra"] += len(stamps)
            counts["kairosdb"] += len(k_stamps)
            counts["gaps"] += int(np.sum(np.diff(k_stamps) != 20))
            assert list(k_stamps) == stamps, f"{vm_id}: the stores hold different samples"
            assert list(k_values) == pytest.approx(values.tolist())
    finally:
        cluster.shutdown()
    assert counts["gaps"] == 0, counts
    return counts


def stop_service(service: subprocess.Popen[str]) -> str:
    """SIGTERM, exit 0, and its log."""
    service.send_signal(signal.SIGTERM)
    try:
        assert service.wait(timeout=90) == 0
    finally:
        if service.poll() is None:
            service.kill()
    assert service.stdout is not None
    return service.stdout.read()




class Relay:
    """Relays TCP connections from ``port`` to the real Cassandra node. "Cassandra down" is
    nothing listening on the address the service is configured with, which is what a client
    sees of a stopped node (connection refused); "back" is the relay listening. Not a double:
    every byte is the real node's (TLS and authentication end to end). Used instead of
    stopping the shared node: a test session that starts while that node is stopped restarts
    it from empty data (peers.cassandra.up), wiping the other sessions' keyspaces."""

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self.port, self.target = port, target
        self._server: socket.socket | None = None
        self._sockets: list[socket.socket] = []

    def start(self) -> None:
        self._server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self._server,), daemon=True).start()

    def stop(self) -> None:
        server, self._server = self._server, None
        for each in [*([server] if server else []), *self._sockets]:
            with contextlib.suppress(OSError):
                each.close()
        self._sockets.clear()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for each in (source, sink):
                with contextlib.suppress(OSError):
                    each.shutdown(socket.SHUT_RDWR)
