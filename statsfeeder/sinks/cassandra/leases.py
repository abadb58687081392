"""Leases and instance membership as rows of ``<keyspace>.leases`` that expire by TTL.

A lease row (``vcenter:<name>``) is only ever created, renewed or deleted by a lightweight
transaction conditioned on its owner, at SERIAL consistency (never LOCAL_SERIAL: instances in
two datacenters must see each other's leases). A membership row (``member:<instance>``) is a
plain upsert each instance repeats; it tells the others how many instances share the work.
Every call blocks: run them off the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cassandra import ConsistencyLevel, ReadTimeout, WriteTimeout
from cassandra.policies import WriteType

MEMBER_PREFIX = "member:"
LEASE_PREFIX = "vcenter:"


@dataclass(frozen=True)
class LeaseSnapshot:
    members: frozenset[str]
    holders: dict[str, str]
    """Lease name (without prefix) → owner, for leases that are currently held."""


class LeaseStore:
    def __init__(self, session: Any, keyspace: str, lease_seconds: int) -> None:
        self._session: Any = None
        self._keyspace = keyspace
        self.lease_seconds = lease_seconds
        self.use(session)

    def use(self, session: Any) -> None:
        """Prepare the statements on ``session`` and work through it from then on (the
        Cassandra sink's, which it replaces when it connects afresh after an outage)."""
        if session is self._session:
            return
        table = f"{self._keyspace}.leases"

        def prepare(cql: str, lwt: bool = True) -> Any:
            statement = session.prepare(cql)
            if lwt:
                statement.serial_consistency_level = ConsistencyLevel.SERIAL
            return statement

        self._acquire = prepare(
            f"INSERT INTO {table} (name, owner, acquired) VALUES (?, ?, toTimestamp(now())) "
            "IF NOT EXISTS USING TTL ?")
        self._renew = prepare(
            f"UPDATE {table} USING TTL ? SET owner = ?, acquired = toTimestamp(now()) "
            "WHERE name = ? IF owner = ?")
        self._release = prepare(f"DELETE FROM {table} WHERE name = ? IF owner = ?")
        self._join = prepare(
            f"INSERT INTO {table} (name, owner, acquired) VALUES (?, ?, toTimestamp(now())) "
            "USING TTL ?", lwt=False)
        self._leave = prepare(f"DELETE FROM {table} WHERE name = ?", lwt=False)
        self._scan = prepare(f"SELECT name, owner FROM {table}", lwt=False)
        self._owner = prepare(f"SELECT owner FROM {table} WHERE name = ?", lwt=False)
        self._owner.consistency_level = ConsistencyLevel.SERIAL  # completes a pending round
        self._session = session

    def acquire(self, name: str, owner: str) -> bool:
        return self._applied(self._acquire, (LEASE_PREFIX + name, owner, self.lease_seconds),
                             name, owner)

    def renew(self, name: str, owner: str) -> bool:
        return self._applied(self._renew, (self.lease_seconds, owner, LEASE_PREFIX + name, owner),
                             name, owner)

    def release(self, name: str, owner: str) -> bool:
        return self._applied(self._release, (LEASE_PREFIX + name, owner), name, None)

    def join(self, instance: str) -> None:
        self._session.execute(self._join, (MEMBER_PREFIX + instance, instance,
                                           self.lease_seconds))

    def leave(self, instance: str) -> None:
        self._session.execute(self._leave, (MEMBER_PREFIX + instance,))

    def snapshot(self) -> LeaseSnapshot:
        members: set[str] = set()
        holders: dict[str, str] = {}
        for row in self._session.execute(self._scan):
            if row.owner is None:
                continue
            if row.name.startswith(MEMBER_PREFIX):
                members.add(row.owner)
            elif row.name.startswith(LEASE_PREFIX):
                holders[row.name[len(LEASE_PREFIX):]] = row.owner
        return LeaseSnapshot(frozenset(members), holders)

    def _applied(self, statement: Any, values: tuple[Any, ...], name: str,
                 owner_after: str | None) -> bool:
        """Whether the transaction took effect. A CAS write that timed out (contention, a
        replica down) may or may not have: a read at SERIAL finishes any round in progress
        and shows the owner, which says which."""
        try:
            return bool(self._session.execute(statement, values).was_applied)
        except WriteTimeout as exc:
            if exc.write_type != WriteType.CAS:
                raise
        attempts = 3
        for attempt in range(1, attempts + 1):
            try:
                row = self._session.execute(self._owner, (LEASE_PREFIX + name,)).one()
                break
            except (ReadTimeout, WriteTimeout):  # the read's own Paxos round met contention
                if attempt == attempts:
                    raise
        return (row.owner if row is not None else None) == owner_after
