"""`statsfeeder run` as a process: health endpoints, SIGKILL mid-cycle, SIGTERM drain."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import yaml

from peers import vcsim
from statsfeeder.config import load_config
from statsfeeder.sinks.cassandra.reader import read_series
from statsfeeder.sinks.cassandra.session import connect
from tests.helpers import drop_keyspace, free_port, metric, wait_for
from tests.integration.test_pipeline import write_config


def test_sigkill_mid_cycle_loses_nothing_and_sigterm_exits_cleanly(
        tmp_path: Path, vcsim_env: dict[str, str], cassandra_env: dict[str, str]) -> None:
    slow = vcsim.start_instance("vcsim-service", 18997, vms=3, method_delay="QueryPerf:4000")
    keyspace = f"svc_{uuid.uuid4().hex[:8]}"
    path = write_config(tmp_path / "c.yaml", slow, cassandra_env, keyspace)
    raw = yaml.safe_load(path.read_text())
    port = free_port()
    raw["collection"]["interval_seconds"] = 20
    raw["telemetry"] = {"listen": f"127.0.0.1:{port}"}
    path.write_text(yaml.safe_dump(raw))
    env = {"VCSIM_PASSWORD": slow["VCSIM_PASSWORD"],
           "CASSANDRA_PASSWORD": cassandra_env["CASSANDRA_PASSWORD"], "PATH": os.environ["PATH"]}
    statsfeeder = [sys.executable, "-m", "statsfeeder"]
    subprocess.run([*statsfeeder, "schema", "create", "-c", str(path)], env=env, check=True,
                   capture_output=True, timeout=120)
    success = 'statsfeeder_cycle_last_success_timestamp_seconds{vcenter="vcsim"}'
    written = 'statsfeeder_samples_written_total{sink="cassandra"}'
    try:
        service = subprocess.Popen([*statsfeeder, "run", "-c", str(path)], env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
                 if metric(port, "statsfeeder_up") else False, 60, "readiness")
        wait_for(lambda: (metric(port, success) or 0) > 0, 90, "a first stored cycle")
        first_written = metric(port, written) or 0
        assert first_written > 0
        # The next cycle starts on a 20-s boundary and waits 4 s in QueryPerf: kill it there.
        time.sleep(20 - time.time() % 20 + 1.5)
        service.kill()
        service.wait(timeout=10)

        once = subprocess.run([*statsfeeder, "once", "-c", str(path)], env=env, text=True,
                              capture_output=True, timeout=120)
        assert once.returncode == 0, once.stdout + once.stderr

        config = load_config(path, environ=env)
        cluster, session = connect(config.cassandra)
        try:
            entities = list(session.execute(f"SELECT vm_id, moref FROM {keyspace}.entities"))
            assert len(entities) == 3
            now = int(time.time())
            for row in entities:
                [series] = read_series(session, keyspace, row.vm_id, ["cpu.usage.average"],
                                       now - 3600, now + 60)
                assert np.all(np.diff(series.timestamps) == 20), "the kill left a gap"
                assert series.timestamps[-1] >= now - 60
        finally:
            cluster.shutdown()

        # Warnings of what it leaves open (ignored by default) are shown.
        service = subprocess.Popen([sys.executable, "-W", "always::ResourceWarning",
                                    *statsfeeder[1:], "run", "-c", str(path)], env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wait_for(lambda: metric(port, "statsfeeder_up") == 1, 60, "the restarted service")
        time.sleep(1)
        began = time.monotonic()
        service.send_signal(signal.SIGTERM)
        assert service.wait(timeout=90) == 0
        assert time.monotonic() - began < 70
        assert service.stdout is not None
        said = service.stdout.read()
        assert "Traceback" not in said, said
        # Nothing is left unclosed: the telemetry server's socket, the vCenter client's
        # (pyVmomi's pool, httpx's pool, the tracked TLS sockets), anything else.
        assert f"laddr=('127.0.0.1', {port})" not in said, said
        assert "ResourceWarning: unclosed" not in said, said
    finally:
        if service.poll() is None:
            service.kill()
        vcsim.stop_instance("vcsim-service")
        cluster, session = connect(load_config(path, environ=env).cassandra)
        drop_keyspace(session, keyspace)
        cluster.shutdown()
