"""SinkHealth's bookkeeping for a sink that was open and then reached no node (the outage
itself, against real Cassandra and KairosDB, is in tests/integration/test_pipeline.py and
test_hybrid.py). The sink here is a recorder of the calls made to it, nothing more."""

from __future__ import annotations

import asyncio

from statsfeeder.errors import SinkUnavailable
from statsfeeder.sink_health import FIRST_BACKOFF, SinkHealth
from statsfeeder.telemetry import Telemetry


class RecordingSink:
    name = "cassandra"

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.answers = True

    def open(self) -> None:
        self.calls.append("open")

    def probe(self) -> None:
        self.calls.append("probe")
        if not self.answers:
            raise SinkUnavailable("cassandra: still unreachable")

    def close(self) -> None:
        self.calls.append("close")


def test_a_lost_sink_is_probed_on_its_client_and_never_closed() -> None:
    async def scenario() -> None:
        sink, telemetry = RecordingSink(), Telemetry()
        health = SinkHealth([sink], telemetry, max_backoff=300)
        await health.open_all()
        assert health.up("cassandra") and sink.calls == ["open"]

        health.lost("cassandra", "cassandra: write failed: NoHostAvailable")
        assert not health.up("cassandra")
        assert telemetry.sink_up.labels("cassandra")._value.get() == 0
        assert health.missing() == {"cassandra": "cassandra: write failed: NoHostAvailable"}
        assert await health.retry_due() == []  # within the first backoff: not even probed
        assert sink.calls == ["open"]

        sink.answers = False
        health._state["cassandra"].next_attempt = 0
        assert await health.retry_due() == []
        assert sink.calls == ["open", "probe"]  # the session stays: the driver reconnects
        assert health._state["cassandra"].backoff == 2 * FIRST_BACKOFF

        sink.answers = True
        health._state["cassandra"].next_attempt = 0
        assert await health.retry_due() == ["cassandra"]
        assert sink.calls == ["open", "probe", "probe"]
        assert health.up("cassandra") and health.missing() == {}
        assert telemetry.sink_up.labels("cassandra")._value.get() == 1

        health.lost("cassandra", "again")  # lost twice in a row: one transition
        health.lost("cassandra", "and again")
        assert health.missing() == {"cassandra": "again"}

    asyncio.run(scenario())
