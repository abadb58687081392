"""Builds configuration for tests from the peers' KEY=VALUE facts."""

from __future__ import annotations

from typing import Any

from statsfeeder.config import CassandraConfig, CollectionConfig, VCenterConfig, parse_config


def vcenter_config(env: dict[str, str], name: str = "vc1", **extra: Any) -> VCenterConfig:
    raw = {"name": name, "url": env["VCSIM_URL"],
           "credentials": {"username": env["VCSIM_USERNAME"], "password": env["VCSIM_PASSWORD"]},
           "tls": {"ca_file": env["VCSIM_CA_FILE"]}, **extra}
    return VCenterConfig.model_validate(raw)


def collection_config(**extra: Any) -> CollectionConfig:
    return CollectionConfig.model_validate(extra)


def cassandra_config(env: dict[str, str], **extra: Any) -> CassandraConfig:
    raw = {"hosts": env["CASSANDRA_HOSTS"].split(","), "port": int(env["CASSANDRA_PORT"]),
           "credentials": {"username": env["CASSANDRA_USERNAME"],
                           "password": env["CASSANDRA_PASSWORD"]},
           "tls": {"ca_file": env["CASSANDRA_CA_FILE"]}, "consistency": "ONE", **extra}
    vc = {"name": "x", "url": "https://x", "credentials": {"username": "x", "password": "x"}}
    return parse_config({"vcenters": [vc], "cassandra": raw}, environ={}).cassandra
