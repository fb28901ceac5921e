"""Keeping a long-running process's memory from creeping up with freed buffers.

Each file moves a few large buffers through the daemon (its bytes, a worker's replies, the
messages read from the pipes in pieces), allocated and freed from several threads. glibc serves
such blocks from mmap at first but soon raises its threshold and carves them out of its heaps
instead, where what is freed is rarely given back: the daemon's resident memory then grows with
every thousand files although nothing is kept. Fixing the threshold keeps large blocks in mmap,
returned to the system as soon as they are freed.
"""

from __future__ import annotations

import ctypes
import ctypes.util

import structlog

log = structlog.get_logger(__name__)

_M_MMAP_THRESHOLD = -3  # mallopt parameter number in glibc's malloc.h
# Blocks from this size up come from mmap (glibc's own starting value, kept fixed).
LARGE_BLOCK = 128 * 1024


def return_large_blocks() -> bool:
    """Have large blocks always come from mmap; False where the C library has no mallopt."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries without mallopt
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    applied = bool(mallopt(_M_MMAP_THRESHOLD, LARGE_BLOCK))
    log.debug("heap_threshold_set", applied=applied, bytes=LARGE_BLOCK)
    return applied
