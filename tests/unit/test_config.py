"""Configuration errors are one line naming the key; secrets come from files or env."""

from __future__ import annotations

from pathlib import Path

import pytest

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
