"""KairosDB 1.3 as a development and test peer (H2 by default, or on our Cassandra).

The distribution tar.gz (``org.kairosdb:kairosdb:1.3.0-1:tar.gz``, 32 MB) is unpacked once from
Maven Central into ``CACHE/kairosdb/1.3.0-1/kairosdb/{lib,conf,bin,webroot}`` with
``mvn dependency:unpack``; a ``.complete`` marker makes later calls free.

Each instance runs on the system Java 17 from ``CACHE/run/<instance>``: its own config folder
(``conf/kairosdb.conf``, given with ``-p``, read over the jar's built-in defaults; HOCON, so the
objects written here merge with the defaults), an INFO ``logback.xml`` appending to
``output.log`` (the file that also takes the JVM's stdout/stderr), and the H2 database, the file
queue and the temp dir inside the run dir. Telnet and the self-reporter are disabled. Java 17
needs both ``--add-opens java.base/java.lang`` and ``java.base/java.util`` (without the second,
group_by queries return 500). Ready when ``GET /api/v1/health/check`` answers 204: ~1.5 s on H2,
~3.5 s on Cassandra; RSS ~140 MB (heap capped at 512 MB). A running instance of ours with the
same configuration is reused, one with another configuration is restarted. A failed start raises
``PeerError`` naming the instance, the log and the root cause found in it.

Instances:

* ``kairosdb`` on 127.0.0.1:18080, H2 datastore: ``up(options)`` with the default
  ``options.kairosdb_datastore == "h2"``. H2 accepts a per-datapoint ``ttl`` and ignores it.
* ``kairosdb-cassandra`` on 127.0.0.1:18081, Cassandra datastore (honours ``ttl``):
  ``up_on_cassandra(cassandra_env)`` with the ``CASSANDRA_*`` facts of ``peers.cassandra.up``
  (or ``up(options)`` with ``options.kairosdb_datastore == "cassandra"``, which takes them from
  ``options.cassandra_env``, else from ``CASSANDRA_*`` environment variables, else starts
  ``peers.cassandra``). KairosDB 1.3 uses the DataStax Java driver 3.10: ``use_ssl: true`` calls
  ``Cluster.Builder.withSSL()``, i.e. the JDK's default SSLContext, so the CA goes in through
  ``-Djavax.net.ssl.trustStore`` (a PKCS12 truststore built from ``CASSANDRA_CA_FILE`` with
  ``keytool -importcert``); that driver does no hostname verification. ``cql_host_list`` entries
  are ``host:port``; auth is ``auth { user_name, password }``. ``start_async: false`` makes
  KairosDB exit at start if Cassandra refuses it: a wrong CA shows as ``NoHostAvailableException
  … TransportException … Error writing``, a wrong password as ``AuthenticationException``.
  Keyspace ``kairosdb`` (SimpleStrategy, RF 1), consistency ONE. Cassandra 4+ has no COMPACT
  STORAGE, so ``data_points`` is created with ``table_create_with.data_points: ""`` unless
  ``CASSANDRA_VERSION`` says 3.x. Verified against Cassandra 3.11.19 with TLS and password auth:
  a datapoint with ``ttl: 3`` is readable after ~0.15 s and gone ~3 s later.

Writes are queued: data is queryable ~0.15 s later, so tests poll. Errors are HTTP 400
``{"errors": ["…"]}`` (e.g. a metric without tags: 1.3 requires at least one).
``POST /api/v1/datapoints`` takes plain JSON, gzip-compressed JSON as
``Content-Type: application/gzip``, or JSON with ``Content-Encoding: gzip``.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import time
import urllib.request
from pathlib import Path
from typing import Any

from peers import common

VERSION = "1.3.0-1"
ARTIFACT = f"org.kairosdb:kairosdb:{VERSION}:tar.gz"
HOST = "127.0.0.1"
DEFAULT_NAME = "kairosdb"
DEFAULT_PORT = 18080
CASSANDRA_NAME = "kairosdb-cassandra"
CASSANDRA_PORT = 18081
JAVA = "/usr/bin/java"
KEYTOOL = "/usr/bin/keytool"
TRUSTSTORE_PASSWORD = "changeit"
START_TIMEOUT = 120.0
PEER = "kairosdb"
JVM_FLAGS = (
    "--add-opens", "java.base/java.lang=ALL-UNNAMED",
    "--add-opens", "java.base/java.util=ALL-UNNAMED",
    "-Xms64m", "-Xmx512m", "-XX:+UseSerialGC", "-XX:+ExitOnOutOfMemoryError",
)
MAIN_CLASS = "org.kairosdb.core.Main"
INSTANCES = (DEFAULT_NAME, CASSANDRA_NAME)


def home() -> Path:
    """The unpacked distribution (``lib/``, ``webroot/``…), whether or not fetched yet."""
    return common.CACHE / "kairosdb" / VERSION / "kairosdb"


def ensure_distribution() -> Path:
    """Unpack the distribution from Maven Central once; returns its ``kairosdb`` folder."""
    base = common.CACHE / "kairosdb" / VERSION
    marker = base / ".complete"
    if marker.exists():
        return base / "kairosdb"
    if shutil.which("mvn") is None:
        raise common.PeerError(f"{PEER}: Maven ('mvn') is not on PATH")
    with common.locked(base.parent / ".fetch.lock"):
        if marker.exists():
            return base / "kairosdb"
        partial = base.parent / f".{VERSION}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        # Run from a folder without a pom.xml (dependency:unpack needs no project); without a
        # project its markers land in a literal "${project.basedir}" folder: keep it aside.
        scratch = base.parent / ".mvn-scratch"
        scratch.mkdir(exist_ok=True)
        common.sh(["mvn", "-B", "-q", "dependency:unpack", f"-Dartifact={ARTIFACT}",
                   f"-DoutputDirectory={partial}", f"-DmarkersDirectory={scratch / 'markers'}"],
                  peer=PEER, cwd=scratch, timeout=900)
        shutil.rmtree(scratch, ignore_errors=True)
        if not (partial / "kairosdb" / "lib" / f"kairosdb-{VERSION}.jar").exists():
            raise common.PeerError(f"{PEER}: {ARTIFACT} unpacked without its lib/ jar")
        shutil.rmtree(base, ignore_errors=True)
        os.replace(partial, base)
        marker.write_text("ok\n")
    return base / "kairosdb"


def url_for(port: int) -> str:
    return f"http://{HOST}:{port}"


def healthy(url: str) -> bool:
    """True if ``/api/v1/health/check`` answers 204."""
    try:
        with urllib.request.urlopen(f"{url}/api/v1/health/check", timeout=5) as response:
            return response.status == 204
    except (OSError, ValueError, http.client.HTTPException):
        return False


def _hocon(value: Any) -> str:
    """A value for kairosdb.conf: JSON is valid HOCON."""
    return json.dumps(value)


LOGBACK = """<?xml version="1.0" encoding="UTF-8"?>
<configuration>
  <appender name="file" class="ch.qos.logback.core.FileAppender">
    <file>{log}</file>
    <append>true</append>
    <encoder>
      <pattern>%d{{HH:mm:ss.SSS}} [%thread] %-5level %logger{{36}} - %msg%n</pattern>
    </encoder>
  </appender>
  <logger name="org.kairosdb.datastore.h2.orm" level="WARN"/>
  <logger name="org.eclipse.jetty" level="WARN"/>
  <logger name="com.datastax.driver" level="WARN"/>
  <logger name="com.mchange" level="WARN"/>
  <logger name="org.quartz" level="WARN"/>
  <!-- Jersey's WADL generator wants JAXB, absent on Java 17: a harmless ERROR at every start -->
  <logger name="com.sun.jersey.server.impl.wadl" level="OFF"/>
  <root level="INFO"><appender-ref ref="file"/></root>
</configuration>
"""


def _config(directory: Path, dist: Path, port: int, datastore: dict[str, Any]) -> str:
    settings: dict[str, Any] = {
        "kairosdb.jetty.port": port,
        "kairosdb.jetty.address": HOST,
        "kairosdb.jetty.static_web_root": str(dist / "webroot"),
        "kairosdb.service.telnet": "<disabled>",
        "kairosdb.service.reporter": "<disabled>",
        "kairosdb.datastore.h2.database_path": str(directory / "h2db"),
        # The Cassandra datastore's file queue (memory-mapped pages of 50 MB by default; less
        # than 32 MB is refused at start).
        "kairosdb.queue_processor.queue_path": str(directory / "queue"),
        **datastore,
    }
    return "".join(f"{key}: {_hocon(value)}\n" for key, value in settings.items())


def _owned_and_current(name: str, config: str) -> bool:
    conf = common.RUN / name / "conf" / "kairosdb.conf"
    try:
        return conf.read_text() == config
    except OSError:
        return False


def start_instance(name: str, port: int, *, datastore: dict[str, Any] | None = None,
                   jvm_flags: tuple[str, ...] = ()) -> dict[str, str]:
    """Start (or reuse) one KairosDB instance; ``datastore`` holds extra ``kairosdb.*`` settings.

    A running instance of ours with the same configuration, or any server already answering
    the health check on the port when none of ours runs there, is reused.
    """
    url = url_for(port)
    env = {"KAIROSDB_URL": url}
    dist = ensure_distribution()
    directory = common.run_dir(name)
    config = _config(directory, dist, port, datastore or {})
    # The JVM flags (the truststore) are part of what a running instance must match.
    config += f"# jvm flags: {' '.join(jvm_flags)}\n"
    pid = common.pid_of(name)
    if pid is not None:
        if _owned_and_current(name, config) and healthy(url):
            return env
        common.stop(name)
    elif healthy(url):
        return env
    if common.port_open(HOST, port):
        raise common.PeerError(f"{PEER}: port {port} is taken by something that is not KairosDB")
    conf_dir = directory / "conf"
    shutil.rmtree(conf_dir, ignore_errors=True)
    conf_dir.mkdir(parents=True)
    (conf_dir / "kairosdb.conf").write_text(config)
    log = directory / "output.log"
    logback = directory / "logback.xml"
    logback.write_text(LOGBACK.format(log=log))
    tmp = directory / "tmp"
    tmp.mkdir(exist_ok=True)
    marker = f"-Dstatsfeeder.peer={name}:{port}"
    argv = [
        JAVA, *JVM_FLAGS, *jvm_flags, marker,
        f"-Dlogback.configurationFile={logback}", f"-Djava.io.tmpdir={tmp}",
        "-cp", f"{dist / 'lib'}/*", MAIN_CLASS, "-c", "run", "-p", str(conf_dir / "kairosdb.conf"),
    ]
    since = log.stat().st_size if log.exists() else 0
    log = common.start(name, argv, cwd=directory, marker=marker)
    try:
        common.wait_until(lambda: healthy(url), peer=f"{PEER} ({name})", log=log,
                          timeout=START_TIMEOUT, alive=lambda: _alive(name))
    except common.PeerError as exc:
        common.stop(name)
        cause = _cause(log, since)
        raise common.PeerError(f"{exc}{': ' + cause if cause else ''}") from None
    return env


def _cause(log: Path, since: int) -> str:
    """The root cause of a failed start, from the log written since offset ``since``."""
    try:
        with open(log, "rb") as handle:
            handle.seek(since)
            lines = handle.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    # "Error in custom provider, <exception>: <message>" is Guice's report of what failed;
    # later "Caused by" lines are mostly the shutdown that follows.
    for line in lines:
        if "Error in custom provider, " in line:
            return line.split("Error in custom provider, ", 1)[1].strip()[:300]
    causes = [line for line in lines
              if line.startswith("Caused by: ") and "Shutdown in progress" not in line
              and "JAXB" not in line and "ContextFactory" not in line]
    errors = [line for line in lines if " ERROR " in line and "JAXB" not in line]
    picked = causes[0].removeprefix("Caused by: ") if causes else (errors[:1] or [""])[0]
    return picked.strip()[:300]


def _alive(name: str) -> bool:
    """``common.pid_of`` with a second look: right after the start /proc/PID/cmdline of the
    java launcher can read empty for a moment, which ``pid_of`` takes for "not ours"."""
    if common.pid_of(name) is not None:
        return True
    time.sleep(0.3)
    return common.pid_of(name) is not None


def _truststore(directory: Path, ca_file: str) -> Path:
    """A PKCS12 truststore holding the CA PEM, rebuilt when the CA changes."""
    ca = Path(ca_file).read_bytes()
    digest = hashlib.sha256(ca).hexdigest()[:16]
    store = directory / f"truststore-{digest}.p12"
    if store.exists():
        return store
    for old in directory.glob("truststore-*.p12"):
        old.unlink()
    partial = directory / "truststore.partial.p12"
    partial.unlink(missing_ok=True)
    common.sh([KEYTOOL, "-importcert", "-noprompt", "-alias", "cassandra-ca", "-file", ca_file,
               "-keystore", str(partial), "-storetype", "PKCS12",
               "-storepass", TRUSTSTORE_PASSWORD], peer=PEER)
    os.replace(partial, store)
    return store


def up_on_cassandra(cassandra_env: dict[str, str]) -> dict[str, str]:
    """KairosDB with the Cassandra datastore (``kairosdb-cassandra``, port 18081) writing to the
    Cassandra described by ``CASSANDRA_HOSTS`` (comma-separated), ``CASSANDRA_PORT``,
    ``CASSANDRA_USERNAME``/``CASSANDRA_PASSWORD`` and, for TLS, ``CASSANDRA_CA_FILE``.

    Returns ``KAIROSDB_URL`` and ``KAIROSDB_KEYSPACE``."""
    hosts = [h.strip() for h in cassandra_env.get("CASSANDRA_HOSTS", "").split(",") if h.strip()]
    if not hosts:
        raise common.PeerError(f"{PEER}: no CASSANDRA_HOSTS to put the Cassandra datastore on")
    port = int(cassandra_env.get("CASSANDRA_PORT") or 9042)
    keyspace = "kairosdb"
    version = cassandra_env.get("CASSANDRA_VERSION", "")
    cluster: dict[str, Any] = {
        "name": "write_cluster",
        "keyspace": keyspace,
        "replication": "{'class': 'SimpleStrategy','replication_factor' : 1}",
        "cql_host_list": [f"{host}:{port}" for host in hosts],
        "read_consistency_level": "ONE",
        "write_consistency_level": "ONE",
        "use_ssl": bool(cassandra_env.get("CASSANDRA_CA_FILE")),
    }
    if cassandra_env.get("CASSANDRA_USERNAME"):
        # Nested, not "auth.user_name": a quoted HOCON key with a dot is one key, not a path.
        cluster["auth"] = {"user_name": cassandra_env["CASSANDRA_USERNAME"],
                           "password": cassandra_env.get("CASSANDRA_PASSWORD", "")}
    datastore: dict[str, Any] = {
        "kairosdb.service.datastore": "org.kairosdb.datastore.cassandra.CassandraModule",
        "kairosdb.datastore.cassandra.start_async": False,
        "kairosdb.datastore.cassandra.table_create_with.data_points":
            "WITH COMPACT STORAGE" if version.startswith("3.") else "",
        "kairosdb.datastore.cassandra.write_cluster": cluster,
    }
    jvm: tuple[str, ...] = ()
    if cluster["use_ssl"]:
        store = _truststore(common.run_dir(CASSANDRA_NAME), cassandra_env["CASSANDRA_CA_FILE"])
        jvm = (f"-Djavax.net.ssl.trustStore={store}", "-Djavax.net.ssl.trustStoreType=PKCS12",
               f"-Djavax.net.ssl.trustStorePassword={TRUSTSTORE_PASSWORD}")
    env = start_instance(CASSANDRA_NAME, CASSANDRA_PORT, datastore=datastore, jvm_flags=jvm)
    return {**env, "KAIROSDB_KEYSPACE": keyspace}


def up(options: Any) -> dict[str, str]:
    """Start the KairosDB that ``options.kairosdb_datastore`` names ("h2", the default, or
    "cassandra"); returns ``KAIROSDB_URL``."""
    if getattr(options, "kairosdb_datastore", "h2") == "cassandra":
        # Cassandra facts: options.cassandra_env, else a Cassandra named by CASSANDRA_HOSTS
        # & co. in the environment (as tests/conftest.py does), else our peers.cassandra.
        cassandra_env = getattr(options, "cassandra_env", None)
        if not cassandra_env and os.environ.get("CASSANDRA_HOSTS"):
            cassandra_env = {key: value for key, value in os.environ.items()
                             if key.startswith("CASSANDRA_")}
        if not cassandra_env:
            import importlib

            cassandra_env = importlib.import_module("peers.cassandra").up(options)
        return up_on_cassandra(dict(cassandra_env))
    return start_instance(DEFAULT_NAME, DEFAULT_PORT)


def down() -> None:
    for name in INSTANCES:
        common.stop(name)


def _rss_mb(pid: int) -> str:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return f"{int(line.split()[1]) // 1024} MB"
    except (OSError, ValueError, IndexError):
        pass
    return "?"


def status() -> str:
    parts = []
    for name, port in ((DEFAULT_NAME, DEFAULT_PORT), (CASSANDRA_NAME, CASSANDRA_PORT)):
        pid = common.pid_of(name)
        url = url_for(port)
        if pid is not None:
            state = "healthy" if healthy(url) else "not healthy"
            parts.append(f"{name} {state} at {url} (pid {pid}, RSS {_rss_mb(pid)})")
        elif name == DEFAULT_NAME:
            foreign = f" ({url} answers: not ours)" if healthy(url) else ""
            parts.append(f"{name} stopped{foreign}")
    return "; ".join(parts)
