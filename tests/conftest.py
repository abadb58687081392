"""Session fixtures that bring up real peers once (or use ones named by environment variables).

A peer that cannot start fails the tests that need it with its one-line reason; nothing skips.
Set CASSANDRA_HOSTS (with CASSANDRA_PORT, CASSANDRA_CA_FILE, CASSANDRA_USERNAME,
CASSANDRA_PASSWORD), VCSIM_URL, KAIROSDB_URL or PROMETHEUS_URL to use peers you run yourself.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from peers.common import PeerError

Env = dict[str, str]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--cassandra-version", default=os.environ.get("STATSFEEDER_TEST_CASSANDRA",
                     "3.11"), choices=("3.11", "4.1", "5.0"),
                     help="Cassandra version the project starts for the tests")


def _options(config: pytest.Config, **overrides: Any) -> SimpleNamespace:
    base: dict[str, Any] = dict(
        cassandra=config.getoption("--cassandra-version"), cassandra_nodes=1, vcsim_vms=4,
        kairosdb_datastore="h2",
    )
    base.update(overrides)
    return SimpleNamespace(**base)


def _external(prefix_keys: tuple[str, ...]) -> Env | None:
    if os.environ.get(prefix_keys[0]):
        return {key: os.environ.get(key, "") for key in prefix_keys}
    return None


def _up(name: str, options: SimpleNamespace) -> Env:
    import importlib

    module = importlib.import_module(f"peers.{name}")
    try:
        return dict(module.up(options))
    except PeerError as exc:
        pytest.fail(f"peer {name} could not start: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def cassandra_env(request: pytest.FixtureRequest) -> Iterator[Env]:
    """A single Cassandra node with TLS (CA-verified) and password auth."""
    keys = ("CASSANDRA_HOSTS", "CASSANDRA_PORT", "CASSANDRA_CA_FILE", "CASSANDRA_USERNAME",
            "CASSANDRA_PASSWORD", "CASSANDRA_VERSION")
    external = _external(keys)
    if external:
        yield external
        return
    yield _up("cassandra", _options(request.config))
    # Left running for the next test session: `scripts/peers down` stops it, .ci/run does too.


@pytest.fixture(scope="session")
def cassandra_cluster_env(request: pytest.FixtureRequest) -> Iterator[Env]:
    """Three Cassandra nodes on 127.0.0.1-3 for replication-factor-3 tests."""
    yield _up("cassandra", _options(request.config, cassandra_nodes=3))


@pytest.fixture(scope="session")
def vcsim_env(request: pytest.FixtureRequest) -> Iterator[Env]:
    """The default vcsim: TLS with the project's test CA, username and password."""
    external = _external(("VCSIM_URL", "VCSIM_USERNAME", "VCSIM_PASSWORD", "VCSIM_CA_FILE"))
    if external:
        yield external
        return
    yield _up("vcsim", _options(request.config))


@pytest.fixture(scope="session")
def kairosdb_env(request: pytest.FixtureRequest) -> Iterator[Env]:
    external = _external(("KAIROSDB_URL",))
    if external:
        yield external
        return
    yield _up("kairosdb", _options(request.config))


@pytest.fixture(scope="session")
def prometheus_env(request: pytest.FixtureRequest) -> Iterator[Env]:
    external = _external(("PROMETHEUS_URL",))
    if external:
        yield external
        return
    yield _up("prometheus", _options(request.config))


@pytest.fixture(scope="session")
def kairosdb_cassandra_env(cassandra_env: Env) -> Iterator[Env]:
    """KairosDB on the Cassandra datastore (``kairosdb-cassandra``): the one that honours TTLs."""
    from peers import kairosdb

    try:
        env = dict(kairosdb.up_on_cassandra(cassandra_env))
    except PeerError as exc:
        pytest.fail(f"peer kairosdb-cassandra could not start: {exc}", pytrace=False)
    yield env
