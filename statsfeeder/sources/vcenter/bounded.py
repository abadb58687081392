"""Deadlines for blocking vCenter calls.

pyVmomi has no overall timeout: its version probe opens a socket without one, and a socket
timeout bounds each read, not a whole answer sent one byte a second. A thread blocked there
cannot be cancelled either. So each call runs in a daemon thread (it can never hold the
process at exit) and its caller waits only until the deadline; on giving up, every socket the
client opened is shut down, which makes the blocked read return and the thread end.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class SocketTracker:
    """Remembers the TLS sockets made with one SSL context, to shut them all down at once."""

    def __init__(self) -> None:
        self._sockets: weakref.WeakSet[ssl.SSLSocket] = weakref.WeakSet()
        self._lock = threading.Lock()

    def install(self, context: ssl.SSLContext) -> ssl.SSLContext:
        tracker = self

        class TrackedSocket(ssl.SSLSocket):
            # Registered before the handshake: a server that stalls there is cut off too.
            def do_handshake(self, block: bool = False) -> None:
                tracker._add(self)
                super().do_handshake(block)

        context.sslsocket_class = TrackedSocket
        return context

    def _add(self, sock: ssl.SSLSocket) -> None:
        with self._lock:
            self._sockets.add(sock)

    def shutdown_all(self) -> None:
        """Wake every reader; the sockets stay open (and known) until ``close_all``: closing
        one a thread is still reading could hand its descriptor to another socket."""
        for sock in self._live():
            # The plain-socket shutdown: it wakes a reader in another thread without touching
            # the TLS object that reader is using.
            with contextlib.suppress(OSError, ValueError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def close_all(self) -> None:
        """Shut down and close every socket still open: the client's end, when nothing is
        left to read them (a pool that lost its owner in an abort would keep them to exit)."""
        self.shutdown_all()
        for sock in self._live():
            with contextlib.suppress(OSError):
                sock.close()

    def _live(self) -> list[ssl.SSLSocket]:
        # Known until collected: a closed socket is dropped here only when nothing holds it.
        with self._lock:
            return list(self._sockets)


class CallAbandoned(Exception):
    """The call passed its deadline or was aborted; its thread is being shut down."""


class _Call:
    __slots__ = ("aborted", "done", "error", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self.aborted = False


class BoundedCaller:
    """Runs blocking calls with a deadline; ``abort`` ends every call in flight now."""

    def __init__(self, tracker: SocketTracker) -> None:
        self.tracker = tracker
        self._calls: set[_Call] = set()
        self._lock = threading.Lock()

    def call(self, what: str, timeout: float, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` or CallAbandoned after ``timeout`` seconds (the sockets are then shut,
        so the thread ends soon after)."""
        call = _Call()

        def target() -> None:
            try:
                call.result = fn(*args)
            except BaseException as exc:  # handed to the waiting caller
                call.error = exc
            finally:
                call.done.set()

        with self._lock:
            self._calls.add(call)
        try:
            threading.Thread(target=target, name=f"vcenter-{what}", daemon=True).start()
            if not call.done.wait(timeout):
                self.tracker.shutdown_all()
                raise CallAbandoned(f"{what} got no whole answer within {timeout:g} s")
            if call.aborted:
                raise CallAbandoned(f"{what} abandoned")
            if call.error is not None:
                raise call.error
            return call.result  # type: ignore[no-any-return]
        finally:
            with self._lock:
                self._calls.discard(call)

    def abort(self) -> None:
        with self._lock:
            calls = list(self._calls)
        for call in calls:
            call.aborted = True
            call.done.set()
        self.tracker.shutdown_all()
