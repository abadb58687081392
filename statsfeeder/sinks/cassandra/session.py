"""Cassandra connections: TLS (PEM files, CA and hostname verified), password auth,
token-aware and DC-aware load balancing. Every failure becomes one clear line.

Host names: the driver connects to IP addresses (it resolves contact points and learns the
other nodes from system.peers), and would check each certificate against that IP. A node
configured by name is checked against the name instead, also when the driver later reaches it
through its peer row; a node known only from system.peers is checked against its IP.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from typing import Any

from cassandra import AuthenticationFailed, ConsistencyLevel, OperationTimedOut
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, NoHostAvailable
from cassandra.connection import DefaultEndPoint, DefaultEndPointFactory
from cassandra.policies import (
    DCAwareRoundRobinPolicy,
    ExponentialReconnectionPolicy,
    TokenAwarePolicy,
)

from statsfeeder.config import CassandraConfig
from statsfeeder.errors import ConfigError, SinkUnavailable


def reconnection_policy() -> ExponentialReconnectionPolicy:
    """0.5 s doubling to 10 s, and never giving up: the driver's default of 64 attempts ran out
    about ten minutes into an outage (the 2-hour soak), after which the service never wrote
    to Cassandra again, though it was back, until restarted."""
    return ExponentialReconnectionPolicy(0.5, 10, max_attempts=None)

def ssl_context(config: CassandraConfig) -> ssl.SSLContext | None:
    tls = config.tls
    if not tls.enabled:
        return None
    if tls.ca_file is not None and not tls.ca_file.is_file():
        raise ConfigError(f"config: cassandra.tls.ca_file: {tls.ca_file} is not a file")
    context = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = tls.check_hostname
    if tls.client_cert_file:
        try:
            context.load_cert_chain(str(tls.client_cert_file),
                                    str(tls.client_key_file) if tls.client_key_file else None)
        except (ssl.SSLError, OSError) as exc:
            reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
            raise ConfigError(f"config: cassandra.tls.client_cert_file/client_key_file: cannot "
                              f"load {tls.client_cert_file}: {reason}") from None
    return context


class NamedEndPoint(DefaultEndPoint):  # type: ignore[misc]
    """A node reached at an IP whose certificate is checked against ``name``. Equal to the
    driver's own endpoint for that IP, so its metadata keeps one host per node."""

    def __init__(self, name: str, address: str, port: int) -> None:
        super().__init__(address, port)
        self._name = name

    @property
    def ssl_options(self) -> dict[str, str]:
        return {"server_hostname": self._name}


class NamedEndPointFactory(DefaultEndPointFactory):  # type: ignore[misc]
    """Endpoints for nodes found in system.local/peers: named when their IP is one the
    configured names resolved to."""

    def __init__(self, names: dict[str, str], port: int) -> None:
        super().__init__(port)
        self._names = names

    def create(self, row: Any) -> Any:
        endpoint = super().create(row)
        name = self._names.get(endpoint.address)
        return NamedEndPoint(name, endpoint.address, endpoint.port) if name else endpoint


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def contact_points(config: CassandraConfig) -> tuple[list[Any], dict[str, str]]:
    """Contact points, and {IP: configured name} for the names whose certificate is checked."""
    if not (config.tls.enabled and config.tls.check_hostname):
        return list(config.hosts), {}
    points: list[Any] = []
    names: dict[str, str] = {}
    unresolved = []
    for host in config.hosts:
        if _is_ip(host):
            points.append(host)
            continue
        try:
            found = socket.getaddrinfo(host, config.port, type=socket.SOCK_STREAM)
        except OSError:
            unresolved.append(host)
            continue
        for address in dict.fromkeys(str(info[4][0]) for info in found):
            names[address] = host
            points.append(NamedEndPoint(host, address, config.port))
    if not points:
        raise SinkUnavailable(f"cassandra: cannot resolve {', '.join(unresolved)} "
                              "(cassandra.hosts)")
    return points, names


def connect(config: CassandraConfig, keyspace: str | None = None) -> tuple[Cluster, Any]:
    context = ssl_context(config)
    points, names = contact_points(config)
    auth = None
    if config.credentials is not None:
        auth = PlainTextAuthProvider(config.credentials.username, config.credentials.secret())
    profile = ExecutionProfile(
        load_balancing_policy=TokenAwarePolicy(
            DCAwareRoundRobinPolicy(local_dc=config.local_datacenter)),
        consistency_level=getattr(ConsistencyLevel, config.consistency),
        request_timeout=config.request_timeout_seconds,
    )
    cluster = Cluster(
        contact_points=points, port=config.port, auth_provider=auth, ssl_context=context,
        endpoint_factory=NamedEndPointFactory(names, config.port) if names else None,
        protocol_version=4, execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        connect_timeout=config.connect_timeout_seconds, control_connection_timeout=
        config.connect_timeout_seconds, reconnection_policy=reconnection_policy(),
    )
    try:
        session = cluster.connect(keyspace)
    except NoHostAvailable as exc:
        cluster.shutdown()
        raise SinkUnavailable(f"cassandra: {_explain(exc, config)}") from None
    except (OperationTimedOut, OSError) as exc:
        cluster.shutdown()
        raise SinkUnavailable(f"cassandra: cannot reach {_where(config)}: {exc}") from None
    except Exception as exc:
        cluster.shutdown()
        if "does not exist" in str(exc) or "Keyspace" in str(exc):
            raise SinkUnavailable(f"cassandra: keyspace {keyspace} does not exist; "
                                  "run 'statsfeeder schema create'") from None
        raise
    return cluster, session


def one_line(exc: BaseException) -> str:
    """An error as one short line: its type and its text, whitespace folded."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"


def connection_failure(exc: BaseException) -> str:
    """Why a fresh ``connect`` failed, in one line: ``connect``'s own refusals are one line
    already (e.g. authentication failed), the driver's errors (a node starting) are folded."""
    if isinstance(exc, SinkUnavailable):
        return str(exc).removeprefix("cassandra: ")
    return one_line(exc)


def accepts_tcp(config: CassandraConfig) -> bool:
    """Whether a configured node accepts a plain TCP connection: where a fresh cluster may
    connect at all, checked before building one (no cluster per attempt while every node is
    simply down)."""
    for host in config.hosts:
        try:
            socket.create_connection((host, config.port),
                                     timeout=config.connect_timeout_seconds).close()
        except OSError:
            continue
        return True
    return False


def _where(config: CassandraConfig) -> str:
    return ",".join(f"{host}:{config.port}" for host in config.hosts)


def _explain(exc: NoHostAvailable, config: CassandraConfig) -> str:
    errors = list(getattr(exc, "errors", {}).values())
    for error in errors:
        if isinstance(error, AuthenticationFailed):
            user = config.credentials.username if config.credentials else "(none)"
            return f"authentication failed for user {user!r} at {_where(config)}"
    text = " ".join(str(e) for e in errors)
    lowered = text.lower()
    if "certificate verify failed" in lowered or "certificate_verify_failed" in lowered:
        hint = ("the certificate is not issued for the host name or address configured "
                "(cassandra.hosts; tls.check_hostname)") if "hostname" in lowered or \
            "ip address" in lowered else "server certificate not trusted by tls.ca_file"
        return f"TLS verification failed at {_where(config)}: {hint}"
    if "authentication" in lowered or "authenticator" in lowered:
        return f"the server at {_where(config)} requires credentials (set cassandra.credentials)"
    if "connection refused" in lowered:
        return f"connection refused at {_where(config)}"
    if config.tls.enabled and ("ssl" in lowered or "eof" in lowered or "wrong version" in lowered):
        return f"TLS handshake failed at {_where(config)}: {text[:160]}"
    if not config.tls.enabled and errors:
        return f"no answer from {_where(config)} (does the node require TLS?): {text[:120]}"
    return f"no node reachable at {_where(config)}: {text[:200] or exc}"
