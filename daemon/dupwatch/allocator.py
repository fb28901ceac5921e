"""glibc's allocator, set for a process that runs for months.

By default glibc returns blocks of 128 KB or more to the system when they are freed, but
raises that limit to the size of the largest block freed so far: after the first large
buffer (a file's bytes, a worker's reply) is freed, every later one is carved from a heap
instead, and heaps
shrink only from their top, so freed photos stay resident. Threads that allocate get heaps of
their own (up to eight per core), each keeping its own free blocks. A fixed limit and two heaps
keep the daemon's memory where its work puts it.
"""

from __future__ import annotations

import ctypes
import sys

_M_MMAP_THRESHOLD = -3  # mallopt parameters, from glibc's malloc.h
_M_ARENA_MAX = -8

LARGE_BLOCK = 256 * 1024  # bytes: blocks this large are mapped, and unmapped when freed
HEAPS = 2


def steady_allocator() -> bool:
    """Set glibc's allocator as the module docstring says; False where it is not glibc's.

    Call it before threads start: a heap is given to a thread when it first allocates.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # another C library (musl has no mallopt)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, LARGE_BLOCK)) and bool(mallopt(_M_ARENA_MAX, HEAPS))
