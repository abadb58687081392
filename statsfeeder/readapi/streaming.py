"""A blocking generator's pieces, made in a worker thread, as an async iterator with
back-pressure: what lets the read API send a Select's frame while the store reads it."""

from __future__ import annotations

import asyncio
import struct
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator

from aiohttp import web

from statsfeeder.readapi.instrument import SelectCounter
from statsfeeder.readapi.store import FAILURE


async def send_frame(response: web.StreamResponse, first: bytes, pieces: AsyncIterator[bytes],
                     counter: SelectCounter, failed: Callable[[BaseException], str]) -> None:
    """Writes a Select's pieces as they come; a failure midway ends the frame with the
    failure marker and ``failed``'s one line. The Select is counted before its last piece
    goes out: the engine may answer the query as soon as it has read it."""
    piece: bytes | None = first
    while piece is not None:
        counter.add(piece)
        if counter.ended:
            counter.finish()
        await response.write(piece)
        try:
            piece = await anext(pieces, None)
        except Exception as exc:
            message = failed(exc).encode()
            piece = struct.pack("<II", FAILURE, len(message)) + message
            counter.add(piece)
            counter.finish()
            await response.write(piece)
            break
    await response.write_eof()


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
