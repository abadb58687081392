"""The container files parse, follow the rules (slim, non-root, health check, labels, no
shared default secret) and mount a configuration that validates. The image itself is built
and run with podman in tests/integration/test_container.py."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import certifi
import yaml
from dockerfile_parse import DockerfileParser

from peers.common import ensure_certs
from statsfeeder.config import parse_config

ROOT = Path(__file__).resolve().parents[2]


def test_dockerfile_is_slim_non_root_with_a_health_check() -> None:
    parser = DockerfileParser(path=str(ROOT / "Dockerfile"))
    instructions = [(i["instruction"], i["value"]) for i in parser.structure]
    froms = [value for kind, value in instructions if kind == "FROM"]
    assert froms and all("-slim" in value for value in froms)
    users = [value for kind, value in instructions if kind == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert any(kind == "HEALTHCHECK" and "/healthz" in value for kind, value in instructions)
    copied = [value.split()[0] for kind, value in instructions if kind == "COPY"
              and not value.startswith("--from")]
    for source in copied:
        assert (ROOT / source).exists(), f"Dockerfile copies {source}, which does not exist"


def test_compose_file_mounts_what_the_repository_has_and_a_valid_config(tmp_path: Path) -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert set(compose["services"]) == {"cassandra", "cassandra-roles", "statsfeeder-schema",
                                        "cassandra-grants", "statsfeeder", "prometheus",
                                        "kairosdb", "grafana"}
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./") and "/certs/" not in source and ":" in volume:
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
    statsfeeder = compose["services"]["statsfeeder"]
    mounted = {v.split(":")[1]: v.split(":")[0] for v in statsfeeder["volumes"]}
    config_path = statsfeeder["command"][-1]
    raw = yaml.safe_load((ROOT / mounted[config_path]).read_text())
    for secret in compose["secrets"]:
        (tmp_path / secret).write_text("s3cret-long-enough-for-a-token\n")
    text = yaml.safe_dump(raw).replace("/run/secrets/", f"{tmp_path}/")
    text = text.replace("/etc/statsfeeder/cassandra-ca.pem", certifi.where())  # mounted there
    certs = ensure_certs()  # make-certs.sh's files are not in the repository
    for name, source in (("api.pem", "cert"), ("api.key", "key")):
        assert f"/etc/statsfeeder/{name}" in mounted
        text = text.replace(f"/etc/statsfeeder/{name}", str(certs[source]))
    config = parse_config(yaml.safe_load(text), environ={})
    assert config.cassandra.hosts == ["cassandra"]
    assert config.cassandra.credentials is not None
    assert config.cassandra.credentials.username == "statsfeeder"  # not the superuser
    assert config.telemetry.listen.endswith(":9274")
    assert config.read_api.enabled and config.read_api.listen.endswith(":9275")
    assert [t.name for t in config.read_api.tokens] == ["grafana"] and config.read_api.tls
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    assert prometheus["scrape_configs"][0]["static_configs"][0]["targets"] == ["statsfeeder:9274"]


def test_grafana_reads_the_api_with_a_token_from_a_secret() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    grafana = compose["services"]["grafana"]
    assert "grafana_api_token" in grafana["secrets"]
    for name in ("statsfeeder", "statsfeeder-schema"):  # both read the config's token_file
        assert "grafana_api_token" in compose["services"][name]["secrets"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"]}
    assert mounts["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    provisioning = ROOT / "deploy" / "grafana" / "provisioning"
    sources = yaml.safe_load((provisioning / "datasources" / "statsfeeder.yaml").read_text())
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus" and source["url"].startswith("https://statsfeeder:")
    assert source["url"].rsplit(":", 1)[1] in {p.split(":")[0] for p in
                                               compose["services"]["statsfeeder"]["ports"]}
    assert source["jsonData"]["httpHeaderName1"] == "Authorization"
    assert source["secureJsonData"]["httpHeaderValue1"] == \
        "Bearer $__file{/run/secrets/grafana_api_token}"
    boards = yaml.safe_load((provisioning / "dashboards" / "statsfeeder.yaml").read_text())
    assert boards["providers"][0]["options"]["path"] in mounts
    dashboards = sorted((ROOT / mounts[boards["providers"][0]["options"]["path"]]).glob("*.json"))
    assert [d.name for d in dashboards] == ["provider-overview.json", "vm-detail.json"]


def test_example_config_validates(tmp_path: Path) -> None:
    text = (ROOT / "config" / "statsfeeder.example.yaml").read_text()
    secret = tmp_path / "pw"
    secret.write_text("x\n")
    text = re.sub(r"/etc/statsfeeder/[\w-]+-ca\.pem", certifi.where(), text)  # PEM checked
    raw = yaml.safe_load(text.replace("/run/secrets/vc01-password", str(secret)))
    config = parse_config(raw, environ={"CASSANDRA_PASSWORD": "x"})
    assert config.collection.interval_seconds == 300 and config.cassandra.ttl_days == 14


def test_example_config_mentions_every_option() -> None:
    from pydantic import BaseModel

    from statsfeeder.config import Config

    text = (ROOT / "config" / "statsfeeder.example.yaml").read_text()

    def options(model: type[BaseModel], prefix: str = "") -> list[str]:
        found = []
        for name, field in model.model_fields.items():
            found.append(prefix + name)
            kind = field.annotation
            nested = [kind, *getattr(kind, "__args__", ())]
            for candidate in nested:
                if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                    found += options(candidate, f"{prefix}{name}.")
        return found

    missing = [o for o in options(Config) if f"{o.rsplit('.', 1)[-1]}:" not in text]
    assert not missing, f"options not in config/statsfeeder.example.yaml: {missing}"


def test_dockerfile_labels_carry_the_packaged_version() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    parser = DockerfileParser(path=str(ROOT / "Dockerfile"))
    assert parser.baseimage == "python:3.11-slim"  # what Docker users pull
    args = [value for i in parser.structure if i["instruction"] == "ARG"
            for value in [i["value"]]]
    assert f"VERSION={version}" in args
    assert parser.labels["org.opencontainers.image.version"] == version


def test_compose_has_no_shared_default_secret() -> None:
    """Every password is a secret file that deploy/make-certs.sh generates (the vCenter's is
    the provider's); the service logs in as its own role, the schema tool as another."""
    deploy = [ROOT / "docker-compose.yml", *sorted((ROOT / "deploy").iterdir())]
    for path in deploy:
        if path.is_file():
            text = path.read_text()
            assert "changeit" not in text, path
            assert not re.search(r"username:\s*cassandra\b", text), path
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    make_certs = (ROOT / "deploy" / "make-certs.sh").read_text()
    for name, secret in compose["secrets"].items():
        assert secret["file"] == f"./deploy/secrets/{name}"
        assert name == "vcenter_password" or name in make_certs, name
    schema = compose["services"]["statsfeeder-schema"]["command"]
    assert schema[:2] == ["schema", "create"]
    assert schema[schema.index("--username") + 1] == "statsfeeder_schema"
    for service in ("statsfeeder", "statsfeeder-schema"):
        assert compose["services"][service]["read_only"] is True
    readme = (ROOT / "deploy" / "README.md").read_text()
    for step in ("make-certs.sh", "vcenter_password", "cassandra-setup.sh", "docker compose up"):
        assert step in readme
