"""Requests for rows grouped by partition: an unlogged batch of up to ``per_batch`` rows of
one partition (Cassandra exempts single-partition batches from its batch size limits), a
plain bound statement where a group has one row left."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from cassandra.query import BatchStatement, BatchType


def partition_batches(prepared: Any, partitions: Iterable[Sequence[Any]],
                      per_batch: int) -> list[Any]:
    out: list[Any] = []
    for rows in partitions:
        for begin in range(0, len(rows), per_batch):
            part = rows[begin:begin + per_batch]
            if len(part) == 1:
                out.append(prepared.bind(part[0]))
                continue
            batch = BatchStatement(batch_type=BatchType.UNLOGGED)
            for row in part:
                batch.add(prepared, row)
            out.append(batch)
    return out
