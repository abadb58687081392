"""Keeping a long-running process's resident memory at its working set under glibc.

Two hours of soak showed RSS rising in steps at each backfill and then holding, while the
memory Python itself had allocated stayed flat (docs/performance.md): glibc keeps freed pages
in its heaps, one heap per thread that ever allocated (the driver's and ``to_thread``'s), and
gives them back only when asked. So the service limits the heaps to a few and, after each
cycle, asks glibc to return what is free. Both are no-ops where the C library is not glibc
(musl, macOS): the process then behaves as before.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from functools import cache

log = logging.getLogger(__name__)

M_ARENA_MAX = -8
"""mallopt's parameter for the most heaps glibc creates (malloc.h)."""
DEFAULT_ARENAS = 2


@cache
def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    if not (hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim")):
        return None
    return libc


def limit_heaps(arenas: int = DEFAULT_ARENAS) -> bool:
    """Cap glibc's heaps at ``arenas`` unless the operator set ``MALLOC_ARENA_MAX`` (theirs
    wins). Call before threads start: a thread that allocated keeps its heap."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    libc = _glibc()
    return libc is not None and libc.mallopt(M_ARENA_MAX, arenas) == 1


def return_free_memory() -> bool:
    """Give the pages glibc holds free back to the system (malloc_trim); True if any went.
    Takes milliseconds on a heap of a few hundred MB: run it off the event loop."""
    libc = _glibc()
    return libc is not None and libc.malloc_trim(0) == 1
