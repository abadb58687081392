"""Configuration errors are one line naming the key; secrets come from files or env."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import certifi
import pytest
import yaml

from statsfeeder.config import load_config, parse_config
from statsfeeder.errors import ConfigError

VC = {"name": "vc1", "url": "https://vc1.example/sdk",
      "credentials": {"username": "u", "password": "p"}}


def test_defaults_are_vcds_metrics_plus_network() -> None:
    config = parse_config({"vcenters": [VC]}, environ={})
    names = [m.name for m in config.collection.metrics]
    assert names[:8] == ["cpu.usage.average", "cpu.usagemhz.average", "cpu.usage.maximum",
                         "mem.usage.average", "disk.provisioned.latest", "disk.used.latest",
                         "disk.read.average", "disk.write.average"]
    assert names[8:] == ["net.received.average", "net.transmitted.average"]
    assert config.cassandra.ttl_days == 14


@pytest.mark.parametrize(("raw", "message"), [
    ({"vcenters": [VC], "cassandra": {"ttl_days": -3}}, "cassandra.ttl_days"),
    ({"vcenters": [VC], "cassandra": {"tll_days": 3}}, "cassandra.tll_days: unknown key"),
    ({"vcenters": [VC, VC]}, "vCenter name vc1 used twice"),
    ({"vcenters": [{**VC, "url": "vc1"}]}, "vcenters.0.url"),
    ({"vcenters": [VC], "collection": {"metrics": ["cpu.usage"]}}, "collection.metrics.0.name"),
])
def test_bad_values_name_the_key(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, environ={})
    assert message in str(info.value) and "\n" not in str(info.value)


def test_password_never_echoed(tmp_path: Path) -> None:
    raw = {"vcenters": [{**VC, "credentials": {"username": "u", "password": 12345}}]}
    with pytest.raises(ConfigError) as info:
        parse_config(raw, environ={})
    assert "12345" not in str(info.value)
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    config = parse_config({"vcenters": [{**VC, "credentials": {"username": "u",
                                         "password_file": str(secret)}}]}, environ={})
    assert config.vcenters[0].credentials.secret() == "s3cret"
    assert "s3cret" not in repr(config)


def test_environment_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("vcenters:\n  - {name: a, url: 'https://a', credentials: {username: u, "
                    "password_env: VC_PW}}\n")
    config = load_config(path, environ={"STATSFEEDER_CASSANDRA__TTL_DAYS": "30", "VC_PW": "x"})
    assert config.cassandra.ttl_days == 30
    with pytest.raises(ConfigError, match="password_env names VC_PW"):
        load_config(path, environ={})


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("vcenters:\n  - name: [a\n")
    with pytest.raises(ConfigError, match="line"):
        load_config(path)


def test_sizing_uses_measured_bytes_and_shows_vcds_formula(capsys: pytest.CaptureFixture[str]
                                                           ) -> None:
    from statsfeeder.cli import MEASURED_BYTES_PER_SAMPLE, main

    assert main(["sizing", "--vms", "30000", "--metrics", "8", "--ttl", "42", "--rf", "3"]) == 0
    out = capsys.readouterr().out
    ours = 30000 * 8 * 4320 * 42 * 3 * MEASURED_BYTES_PER_SAMPLE / 1e9
    assert f"disk {ours:,.1f} GB" in out
    assert "disk 3,447.4 GB (114 kB/metric/day)" in out  # vCAT: n·m·t·r·114 kB
    assert "72,000 write IOPS" in out  # vCAT: n·m·r/10


# --- careless configuration: one line naming the key, exit != 0, no traceback, no secret ----

SECRET = "S3cr3t-Pa55w0rd"
CERTS = Path(__file__).resolve().parents[1] / "data"


def refused(raw: Any, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, environ=environ or {})
    message = str(info.value)
    assert "\n" not in message and SECRET not in message, message
    return message


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "statsfeeder", *args], env={"PATH": "",
                          **(env or {})}, capture_output=True, text=True, timeout=60,
                          check=False)


def one_line_refusal(done: subprocess.CompletedProcess[str], *expected: str) -> str:
    assert done.returncode == 2, done
    assert "Traceback" not in done.stderr and SECRET not in done.stdout + done.stderr
    [line] = done.stderr.strip().splitlines()
    for text in expected:
        assert text in line, line
    return line


def test_config_bytes_not_utf8_are_one_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(b"vcenters:\n  - name: v\xe9\n")  # Latin-1, as an old editor saves it
    with pytest.raises(ConfigError, match=r"line 2: not UTF-8 text \(byte 0xe9\)"):
        load_config(path, environ={})
    one_line_refusal(cli("validate", "--offline", "-c", str(path)), "not UTF-8")


def test_environment_override_not_yaml_names_the_variable_not_the_value() -> None:
    message = refused({"vcenters": [VC]},
                      {"STATSFEEDER_CASSANDRA__CREDENTIALS__PASSWORD": f"{SECRET}: [x"})
    assert message.startswith("config: environment STATSFEEDER_CASSANDRA__CREDENTIALS__PASSWORD"
                              ": not valid YAML")


def test_environment_override_into_a_list_works_or_is_refused() -> None:
    config = parse_config({"vcenters": [VC, {**VC, "name": "vc2"}], "kairosdb": {
        "tags": ["vm", "org"]}}, environ={
        "STATSFEEDER_VCENTERS__1__URL": "https://vc2.example", "STATSFEEDER_KAIROSDB__TAGS__1":
        "vdc", "STATSFEEDER_VCENTERS__0__TLS__THUMBPRINT": "ab" * 32})
    assert config.vcenters[1].url == "https://vc2.example"
    assert config.kairosdb.tags == ("vm", "vdc")
    assert "kairosdb.tags is not in the file" in refused(
        {"vcenters": [VC]}, {"STATSFEEDER_KAIROSDB__TAGS__0": "vm"})
    assert config.vcenters[0].url == VC["url"] and config.vcenters[0].tls.thumbprint == "ab" * 32
    assert refused({"vcenters": [VC]}, {"STATSFEEDER_VCENTERS__2__URL": "https://x"}) == (
        "config: environment STATSFEEDER_VCENTERS__2__URL: vcenters has 1 entries; 2 is not an "
        "index into it (0-based)")
    assert "is not an index" in refused({"vcenters": [VC]},
                                        {"STATSFEEDER_VCENTERS__URL": "https://x"})


@pytest.mark.parametrize("section", ["vcenter", "vcd", "kairosdb", "cassandra"])
def test_ca_file_missing_or_not_pem(tmp_path: Path, section: str) -> None:
    not_pem = tmp_path / "ca.der"
    not_pem.write_bytes(b"0\x82\x03\x00 binary DER")
    text_not_cert = tmp_path / "notes.pem"
    text_not_cert.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n"
                             "-----END CERTIFICATE-----\n")

    def raw(ca: Path) -> dict[str, Any]:
        tls = {"ca_file": str(ca)}
        base: dict[str, Any] = {"vcenters": [VC]}
        if section == "vcenter":
            base["vcenters"] = [{**VC, "tls": tls}]
        elif section == "vcd":
            base["vcd"] = {"api": {"url": "https://vcd.example", "tls": tls,
                                   "credentials": {"username": "a", "password": "p"}}}
        else:
            base[section] = {"enabled": True, "tls": tls}
        return base

    where = {"vcenter": "vcenters.0.tls.ca_file", "vcd": "vcd.api.tls.ca_file",
             "kairosdb": "kairosdb.tls.ca_file", "cassandra": "cassandra.tls.ca_file"}[section]
    assert refused(raw(tmp_path / "absent.pem")).startswith(f"config: {where}: no such file")
    assert refused(raw(not_pem)).startswith(f"config: {where}: not a PEM file")
    assert refused(raw(text_not_cert)).startswith(f"config: {where}: not a valid PEM")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw(not_pem)))
    one_line_refusal(cli("validate", "--offline", "-c", str(path)), where)
    good = raw(Path(certifi.where()))
    assert parse_config(good, environ={})


@pytest.mark.parametrize(("raw", "expected"), [
    ({"vcenters": [{**VC, "url": "http://vc1.example/sdk"}]},
     "config: vcenters.0.url: must be https://"),
    ({"vcenters": [{**VC, "url": f"https://admin:{SECRET}@vc1.example/sdk"}]},
     "config: vcenters.0.url: credentials inside the URL (user:password@) are not allowed"),
    ({"vcenters": [VC], "kairosdb": {"url": f"http://u:{SECRET}@127.0.0.1:8080"}},
     "config: kairosdb.url: credentials inside the URL"),
    ({"vcenters": [VC], "vcd": {"api": {"url": f"https://u:{SECRET}@vcd.example",
                                        "credentials": {"username": "a", "password": "p"}}}},
     "config: vcd.api.url: credentials inside the URL"),
    ({"vcenters": [{**VC, "tls": {"insecure": True, "thumbprint": "ab" * 32}}]},
     "config: vcenters.0.tls: insecure and thumbprint together"),
    ({"vcenters": [VC], "cassandra": {"enabled": False}},
     "config: (top level): no sink enabled"),
    ({"vcenters": [VC], "telemetry": {"listen": "127.0.0.1:70000"}},
     "config: telemetry.listen: the port must be between 0 and 65535"),
    ({"vcenters": [VC], "kairosdb": {"enabled": True, "url": "http://kairos.example:8080",
                                     "credentials": {"username": "u", "password": SECRET}}},
     "config: kairosdb: credentials over an http:// url send the password in clear text"),
    ({"vcenters": [VC], "cassandra": {"replication": {
        "strategy": "NetworkTopologyStrategy", "datacenters": {"dc1'}; DROP KEYSPACE x; --": 3}}}},
     "config: cassandra.replication.datacenters: not a valid datacenter name"),
    ({"vcenters": [VC], "read_api": {"cache_settled_minutes": 60}},
     "config: read_api: cache_settled_minutes (60) must exceed "
     "collection.max_lookback_seconds (3300 s) plus 5 minutes"),
])
def test_careless_values_are_refused(raw: dict[str, Any], expected: str) -> None:
    assert refused(raw).startswith(expected) or expected in refused(raw)


def test_basic_auth_over_http_when_explicitly_allowed() -> None:
    config = parse_config({"vcenters": [VC], "kairosdb": {
        "enabled": True, "url": "http://127.0.0.1:8080", "allow_credentials_over_http": True,
        "credentials": {"username": "u", "password": SECRET}}}, environ={})
    assert config.kairosdb.credentials is not None


def test_validate_offline_refuses_no_sink_and_url_credentials(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"vcenters": [VC], "cassandra": {"enabled": False}}))
    one_line_refusal(cli("validate", "--offline", "-c", str(path)), "no sink enabled")
    path.write_text(yaml.safe_dump({"vcenters": [VC], "kairosdb": {
        "enabled": True, "url": f"http://statsfeeder:{SECRET}@127.0.0.1:18080"}}))
    one_line_refusal(cli("validate", "--offline", "-c", str(path)), "kairosdb.url",
                     "(got 'http://***@127.0.0.1:18080')")


@pytest.mark.parametrize(("credentials", "expected"), [
    ({"username": "u", "password_env": SECRET},
     "password_env: not a valid environment variable name"),
    ({"username": "u", "password_env": "s3cretpassword"},
     "password_env: the variable it names is not set"),
    ({"username": "u", "password_file": SECRET}, "cannot read password_file: No such file"),
    (SECRET, "vcenters.0.credentials: Input should be a valid dictionary"),
])
def test_a_password_pasted_in_the_wrong_key_is_never_echoed(
        credentials: Any, expected: str, tmp_path: Path) -> None:
    raw = {"vcenters": [{**VC, "credentials": credentials}]}
    assert expected in refused(raw)
    if isinstance(credentials, dict) and "password_env" in credentials:
        assert "s3cretpassword" not in refused(raw)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    done = cli("validate", "--offline", "-c", str(path))
    one_line_refusal(done, expected)
    assert "s3cretpassword" not in done.stderr


def test_telemetry_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump({"vcenters": [VC], "telemetry": {
            "listen": f"127.0.0.1:{port}"}}))
        done = cli("run", "-c", str(path))
    one_line_refusal(done, f"config: telemetry.listen: cannot listen on 127.0.0.1:{port}: "
                           "Address already in use")


@pytest.mark.parametrize("args", [["--vms", "0"], ["--vms", "-5"], ["--vms", "10", "--ttl", "0"],
                                  ["--vms", "10", "--rf", "-1"], ["--vms", "10", "--metrics",
                                                                  "0"]])
def test_sizing_refuses_zero_and_negative(args: list[str]) -> None:
    done = cli("sizing", *args)
    one_line_refusal(done, f"--{args[-2].lstrip('-')} {args[-1]}: must be between 1")


@pytest.mark.parametrize(("args", "expected"), [
    (["--replication-factor", "0"], "--replication-factor 0: must be between 1 and 9"),
    (["--datacenters", "dc1':3"], "--datacenters: \"dc1'\" is not a datacenter name"),
    (["--datacenters", "dc1:0"], "--datacenters: dc1: the replication factor must be 1 to 9"),
    (["--datacenters", "dc1:3", "--replication-factor", "3"], "give one"),
])
def test_schema_replication_flags_refused_before_any_cql(args: list[str], expected: str) -> None:
    # Port 1: nothing listens there, so reaching the connect step would fail differently.
    done = cli("schema", "update", "--cluster-nodes", "127.0.0.1", "--port", "1", "--no-ssl",
               *args)
    one_line_refusal(done, expected)


def test_shown_values_are_exact() -> None:
    import numpy as np

    from statsfeeder.sinks.cassandra.reader import StoredSeries

    def shown(values: list[int], scale: float) -> list[Any]:
        stamps = np.arange(len(values), dtype=np.int64)
        return StoredSeries("vm", "m", "", stamps, np.array(values, dtype=np.int64), scale,
                            "").shown_values()

    assert shown([16777216, 7], 1.0) == [16777216, 7]
    assert shown([332, 4980, 1], 0.01) == [3.32, 49.8, 0.01]
    assert [str(v) for v in shown([332, 4980, 10000], 0.01)] == ["3.32", "49.8", "100.0"]


def test_cycle_deadline_defaults_below_the_interval_and_must_stay_there() -> None:
    config = parse_config({"vcenters": [VC], "collection": {"interval_seconds": 300}},
                          environ={})
    assert config.collection.cycle_deadline == 240
    with pytest.raises(ConfigError) as info:
        parse_config({"vcenters": [VC], "collection": {"interval_seconds": 60,
                                                       "cycle_deadline_seconds": 60}},
                     environ={})
    assert "cycle_deadline_seconds" in str(info.value) and "\n" not in str(info.value)
