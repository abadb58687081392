"""A blocking generator's pieces, made in a worker thread, as an async iterator with
back-pressure: what lets the read API send a Select's frame while the store reads it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Callable, Iterator


async def stream_in_thread(make: Callable[[], Iterator[bytes]], ahead: int = 4
                           ) -> AsyncGenerator[bytes, None]:
    """The pieces of a blocking generator run in a worker thread, at most ``ahead`` of them
    waiting: a Select's frame is sent while it is read, never held whole. Closing this
    iterator (the engine went away) stops the thread at its next piece."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[bytes | None, BaseException | None]] = asyncio.Queue()
    room = threading.Semaphore(ahead)
    stop = threading.Event()

    def produce() -> None:
        try:
            for piece in make():
                while not room.acquire(timeout=0.5):
                    if stop.is_set():
                        return
                if stop.is_set():
                    return
                loop.call_soon_threadsafe(queue.put_nowait, (piece, None))
            loop.call_soon_threadsafe(queue.put_nowait, (None, None))
        except Exception as exc:
            loop.call_soon_threadsafe(queue.put_nowait, (None, exc))

    worker = loop.run_in_executor(None, produce)
    try:
        while True:
            piece, error = await queue.get()
            room.release()
            if error is not None:
                raise error
            if piece is None:
                return
            yield piece
    finally:
        stop.set()
        await asyncio.shield(worker)
