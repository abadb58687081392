"""A Select's frame is streamed from the worker thread with back-pressure: the thread runs at
most ``ahead`` pieces in front of the sender, a failure reaches the sender after the pieces
before it, and closing the stream stops the thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from statsfeeder.readapi.streaming import stream_in_thread


async def test_pieces_arrive_in_order_and_the_producer_waits_for_the_sender() -> None:
    made: list[int] = []

    def pieces() -> Iterator[bytes]:
        for number in range(50):
            made.append(number)
            yield bytes([number])

    stream = stream_in_thread(pieces, ahead=3)
    first = await anext(stream)
    await asyncio.sleep(0.3)
    # One piece taken, three waiting, the fourth made and waiting for room.
    assert first == b"\x00" and len(made) <= 5
    rest = [piece async for piece in stream]
    assert [first, *rest] == [bytes([n]) for n in range(50)]


async def test_a_failure_midway_follows_the_pieces_before_it() -> None:
    def pieces() -> Iterator[bytes]:
        yield b"a"
        yield b"b"
        raise RuntimeError("cassandra went away")

    stream = stream_in_thread(pieces)
    assert await anext(stream) == b"a"
    assert await anext(stream) == b"b"
    with pytest.raises(RuntimeError, match="went away"):
        await anext(stream)


async def test_closing_the_stream_stops_the_producer() -> None:
    stopped = threading.Event()

    def pieces() -> Iterator[bytes]:
        try:
            while True:
                yield b"x" * 10
        finally:
            stopped.set()

    stream = stream_in_thread(pieces, ahead=2)
    await anext(stream)
    await stream.aclose()
    assert await asyncio.to_thread(stopped.wait, 5)
