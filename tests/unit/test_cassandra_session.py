"""The Cassandra driver's reconnection schedule: it must outlast any outage."""

from __future__ import annotations

import itertools

from statsfeeder.sinks.cassandra.session import reconnection_policy


def test_reconnection_never_gives_up() -> None:
    """An outage of hours (vCenter keeps one; the service must write again when Cassandra
    is back): the schedule goes on past the driver's default of 64 attempts, at most 10 s
    apart."""
    delays = list(itertools.islice(reconnection_policy().new_schedule(), 1000))
    assert len(delays) == 1000
    assert 0.5 <= delays[0] <= 0.6  # the driver adds up to 15 % of jitter
    assert max(delays) <= 10
    assert sum(delays) > 2 * 3600
