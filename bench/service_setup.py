"""What the service benchmarks share: a configuration for the ten default metrics against
the given vcsim and Cassandra, in a fresh work directory and keyspace, with its schema made."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.integration.test_pipeline import write_config

STATSFEEDER = [sys.executable, "-m", "statsfeeder"]


@dataclass(frozen=True)
class Prepared:
    workdir: Path
    config: Path
    env: dict[str, str]
    """The environment the statsfeeder process needs (passwords included)."""


def prepare(label: str, env_vc: dict[str, str], env_c: dict[str, str],
            edit: Callable[[dict[str, Any]], None]) -> Prepared:
    """``edit`` changes the raw configuration before it is written."""
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"statsfeeder-{label}-{uuid.uuid4().hex[:6]}"
    workdir.mkdir(parents=True)
    path = write_config(workdir / "config.yaml", env_vc, env_c,
                        f"{label}_{uuid.uuid4().hex[:8]}")
    raw = yaml.safe_load(path.read_text())
    raw["collection"].pop("metrics")  # the ten defaults
    edit(raw)
    path.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "VCSIM_PASSWORD": env_vc["VCSIM_PASSWORD"],
           "CASSANDRA_PASSWORD": env_c["CASSANDRA_PASSWORD"]}
    subprocess.run([*STATSFEEDER, "schema", "create", "-c", str(path)], env=env, check=True,
                   capture_output=True)
    return Prepared(workdir, path, env)
