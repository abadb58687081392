"""Write stamps: one row per writing process that moves after every write of sample windows,
so a reader can tell, with one small read, that nothing was written since it last looked.

The read API keeps the newest (unsettled) hours in memory only while the stamps it read
before reading those hours are unchanged (docs/read-api.md, "How it works"). The order that
makes this exact: the writer moves its stamp after Cassandra acknowledged the windows (or
after a write that may have stored some of them failed), and the reader reads the stamps
before the windows. A window the reader missed was therefore acknowledged after its stamp
read, and the stamp moved after that.

A row per ``CassandraWriter`` (a random id per process and connection), in one partition;
rows expire after two days, so writers that stopped leave nothing behind. A stamp is a
``timeuuid`` from the coordinator: each move is a new value whatever the clocks say.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

log = logging.getLogger(__name__)

TABLE = "write_stamps"
ROW_TTL_SECONDS = 2 * 86400

EXPECTED_COLUMNS: dict[str, dict[str, str]] = {
    TABLE: {"shard": "int", "writer": "text", "stamp": "timeuuid"},
}

Generation = frozenset[tuple[str, Any]]
"""Every writer's current stamp: equal generations mean no window was written between."""


def table_cql(keyspace: str) -> str:
    return f"""CREATE TABLE IF NOT EXISTS {keyspace}.{TABLE} (
            shard int, writer text, stamp timeuuid,
            PRIMARY KEY (shard, writer)
        ) WITH gc_grace_seconds = 10800"""


class StampWriter:
    def __init__(self, session: Any, keyspace: str) -> None:
        self.writer = uuid.uuid4().hex
        self._insert = session.prepare(
            f"INSERT INTO {keyspace}.{TABLE} (shard, writer, stamp) VALUES (0, ?, now()) "
            f"USING TTL {ROW_TTL_SECONDS}")

    def statement(self) -> Any:
        return self._insert.bind((self.writer,))


class StampReader:
    """The read API's side. A keyspace without the table (a read API started before
    ``schema update`` added it) gives no generation: nothing unsettled is kept."""

    def __init__(self, session: Any, keyspace: str) -> None:
        self._session = session
        self._query = f"SELECT writer, stamp FROM {keyspace}.{TABLE} WHERE shard = 0"
        self._warned = False

    def generation(self) -> Generation | None:
        try:
            rows = self._session.execute(self._query)
        except Exception as exc:  # the Select's own reads will say what is wrong
            if not self._warned:
                log.warning("read API: cannot read %s (%s); the newest hours are read from "
                            "Cassandra every time", TABLE, type(exc).__name__)
                self._warned = True
            return None
        return frozenset((row.writer, row.stamp) for row in rows)
