"""`statsfeeder validate`: the file, then every configured endpoint (vcsim, Cassandra, the vCD
API double, KairosDB), each problem one line, secrets never shown."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from statsfeeder.config import load_config
from statsfeeder.sinks.cassandra import schema
from statsfeeder.sinks.cassandra.session import connect
from tests.helpers import drop_keyspace
from tests.integration.test_pipeline import write_config
from tests.vcd_double import VcdDouble

Env = dict[str, str]


@pytest.fixture
def config_file(tmp_path: Path, vcsim_env: Env, cassandra_env: Env) -> Iterator[Path]:
    keyspace = f"val_{uuid.uuid4().hex[:8]}"
    path = write_config(tmp_path / "c.yaml", vcsim_env, cassandra_env, keyspace)
    config = load_config(path, environ=env_of(vcsim_env, cassandra_env))
    cluster, session = connect(config.cassandra)
    schema.create(session, config.cassandra)
    yield path
    drop_keyspace(session, keyspace)
    cluster.shutdown()


def env_of(vcsim_env: Env, cassandra_env: Env) -> Env:
    return {"VCSIM_PASSWORD": vcsim_env["VCSIM_PASSWORD"],
            "CASSANDRA_PASSWORD": cassandra_env["CASSANDRA_PASSWORD"], "PATH": ""}


def validate(path: Path, env: Env, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "statsfeeder", "validate", "-c", str(path),
                           *extra], env=env, capture_output=True, text=True, timeout=120,
                          check=False)


def edit(path: Path, change: dict[str, Any]) -> None:
    raw = yaml.safe_load(path.read_text())
    raw.update(change)
    path.write_text(yaml.safe_dump(raw))


def test_every_endpoint_reached(config_file: Path, vcsim_env: Env, cassandra_env: Env) -> None:
    done = validate(config_file, env_of(vcsim_env, cassandra_env))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"config: {config_file} is valid (1 vCenter(s)")
    assert "vCenter vcsim: reachable, logged in" in lines
    assert any(line.startswith("cassandra: reachable, keyspace val_") for line in lines)


def test_wrong_passwords_each_get_one_line_and_are_never_shown(
        config_file: Path, vcsim_env: Env, cassandra_env: Env) -> None:
    env = {**env_of(vcsim_env, cassandra_env), "VCSIM_PASSWORD": "wrong-vc-secret",
           "CASSANDRA_PASSWORD": "wrong-db-secret"}
    done = validate(config_file, env)
    assert done.returncode == 1
    errors = done.stderr.strip().splitlines()
    assert len(errors) == 2, errors
    assert "vCenter vcsim" in errors[0] and "login refused" in errors[0]
    assert "cassandra" in errors[1] and "authentication failed" in errors[1]
    assert "wrong-vc-secret" not in done.stdout + done.stderr
    assert "wrong-db-secret" not in done.stdout + done.stderr


def test_offline_checks_the_file_only(config_file: Path, vcsim_env: Env,
                                      cassandra_env: Env) -> None:
    edit(config_file, {"collection": {"interval_seconds": 5}})
    done = validate(config_file, env_of(vcsim_env, cassandra_env), "--offline")
    assert done.returncode != 0
    assert done.stderr.strip() == ("statsfeeder: config: collection.interval_seconds: Input "
                                   "should be greater than or equal to 20 (got 5)")


def test_vcd_api_login_and_which_vcenters_it_knows(
        config_file: Path, vcsim_env: Env, cassandra_env: Env) -> None:
    with VcdDouble() as double:
        vcd = {"api": {"url": double.url, "tls": {"ca_file": double.ca_file},
                       "credentials": {"username": "administrator@System",
                                       "password_env": "VCD_PASSWORD"}}}
        edit(config_file, {"vcd": vcd})
        env = {**env_of(vcsim_env, cassandra_env), "VCD_PASSWORD": double.password}

        unknown = validate(config_file, env)
        assert unknown.returncode == 1
        assert f"vCD {double.url}: logged in; it manages 0 vCenter(s)" in unknown.stdout
        assert unknown.stderr.strip() == (
            f"statsfeeder: vcd.api: vCenter vcsim ({vcsim_env['VCSIM_URL']}) is not among "
            "vCD's vCenters: its VMs keep vcd.unmapped (set vcd.api.vcenter_names)")

        double.add_vcenter("vc-in-vcd", vcsim_env["VCSIM_URL"].removesuffix("/sdk"))
        known = validate(config_file, env)
        assert known.returncode == 0, known.stderr
        assert f"vCD {double.url}: logged in; it manages 1 vCenter(s)" in known.stdout

        refused = validate(config_file, {**env, "VCD_PASSWORD": "not-the-vcd-one"})
        assert refused.returncode == 1
        [line] = refused.stderr.strip().splitlines()
        assert "login refused for user 'administrator@System'" in line
        assert "not-the-vcd-one" not in refused.stdout + refused.stderr


def test_retention_mismatch_is_a_warning_naming_both(config_file: Path, vcsim_env: Env,
                                                     cassandra_env: Env) -> None:
    raw = yaml.safe_load(config_file.read_text())
    raw["cassandra"]["ttl_days"] = 2  # the keyspace was created with the default 14
    config_file.write_text(yaml.safe_dump(raw))
    done = validate(config_file, env_of(vcsim_env, cassandra_env))
    assert done.returncode == 0, done.stderr
    [warning] = done.stderr.strip().splitlines()
    keyspace = raw["cassandra"]["keyspace"]
    assert warning == (f"statsfeeder: warning: cassandra: retention: the config says ttl_days 2, "
                       f"but {keyspace}.samples keeps rows 14 days, and writes follow the table; "
                       "'statsfeeder schema update --ttl 2' applies the config's")


def test_user_who_may_not_read_performance_data_is_named(
        config_file: Path, vcsim_env: Env, cassandra_env: Env) -> None:
    """vcsim behind a double that answers QueryPerf as vCenter does for a user without
    System.Read on the VMs: login, CurrentTime, inventory and counters all succeed."""
    from tests.no_permission_vcenter import NoPermissionVCenter

    with NoPermissionVCenter(vcsim_env["VCSIM_URL"]) as restricted:
        raw = yaml.safe_load(config_file.read_text())
        raw["vcenters"][0]["url"] = restricted.url
        config_file.write_text(yaml.safe_dump(raw))
        done = validate(config_file, env_of(vcsim_env, cassandra_env))
        assert restricted.refused, "validate never tried a QueryPerf"
        once = subprocess.run([sys.executable, "-m", "statsfeeder", "once", "-c",
                               str(config_file)], env=env_of(vcsim_env, cassandra_env),
                              capture_output=True, text=True, timeout=120, check=False)
    assert once.returncode == 1
    assert "missing privilege System.Read on VirtualMachine" in once.stderr, once.stderr
    assert done.returncode == 1
    assert "vCenter vcsim: reachable, logged in" in done.stdout
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"statsfeeder: vCenter vcsim: user '{vcsim_env['VCSIM_USERNAME']}' "
                           "may not read performance data: ")
    assert f"missing privilege System.Read on VirtualMachine {restricted.refused[0]}" in line
    assert vcsim_env["VCSIM_PASSWORD"] not in done.stdout + done.stderr


def test_query_perf_is_tried_and_answers(config_file: Path, vcsim_env: Env,
                                         cassandra_env: Env) -> None:
    done = validate(config_file, env_of(vcsim_env, cassandra_env))
    assert done.returncode == 0, done.stderr
    [line] = [x for x in done.stdout.splitlines() if "QueryPerf" in x]
    assert re.fullmatch(r"vCenter vcsim: 3 of 3 metrics known; QueryPerf allowed \(\d+ samples "
                        r"of cpu\.usage\.average for vm-\d+\)", line), line


def test_counter_vcenter_does_not_have_is_named_with_the_nearest(
        config_file: Path, vcsim_env: Env, cassandra_env: Env) -> None:
    edit(config_file, {"collection": {"metrics": ["cpu.usagee.average", "mem.usage.average",
                                                  "zzz.nothing.average"]}})
    env = env_of(vcsim_env, cassandra_env)
    done = validate(config_file, env)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "statsfeeder: collection.metrics: vCenter vcsim has no counter cpu.usagee.average "
        "(did you mean cpu.usage.average?)",
        "statsfeeder: collection.metrics: vCenter vcsim has no counter zzz.nothing.average "
        "(no similar name)"]
    assert "1 of 3 metrics known; QueryPerf allowed" in done.stdout  # the one it has is read

    once = subprocess.run([sys.executable, "-m", "statsfeeder", "once", "-c", str(config_file)],
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert once.returncode == 1, once.stdout + once.stderr
    assert ("statsfeeder: collection.metrics: vCenter vcsim has no counter cpu.usagee.average "
            "(did you mean cpu.usage.average?)") in once.stderr.splitlines()
    assert "(0 failed)" in once.stdout  # the metrics it has are still collected


def test_no_known_counter_queries_nothing(config_file: Path, vcsim_env: Env,
                                          cassandra_env: Env) -> None:
    """A QueryPerf without metricId makes a real vCenter return every metric it has."""
    edit(config_file, {"collection": {"metrics": ["cpu.usagee.average"]}})
    once = subprocess.run([sys.executable, "-m", "statsfeeder", "once", "-c", str(config_file)],
                          env=env_of(vcsim_env, cassandra_env), capture_output=True, text=True,
                          timeout=120, check=False)
    assert once.returncode == 1
    assert "vCenter vcsim: 0 VMs in 0 chunks" in once.stdout, once.stdout + once.stderr
