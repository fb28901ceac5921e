"""Large buffers are handed back to the system when freed, however many came before."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Runs in a fresh interpreter: the allocator's thresholds are process-wide.
_PROBE = """
import ctypes, ctypes.util, sys
from dupwatch.heap import return_large_blocks

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL(ctypes.util.find_library("c"))
try:
    libc.mallinfo2.restype = MallInfo2
except AttributeError:
    sys.exit(3)
if sys.argv[1] == "fixed" and not return_large_blocks():
    sys.exit(4)
big = bytearray(8 * 2**20)
del big  # freeing an mmapped block this large makes glibc raise its threshold past 1 MiB
before = libc.mallinfo2().hblkhd
block = bytearray(2**20)
grown = libc.mallinfo2().hblkhd - before
print(1 if grown >= 2**20 else 0)
"""


def _mmapped(mode: str) -> bool:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, timeout=60
    )
    if done.returncode in (3, 4):
        pytest.skip("this C library has no mallinfo2/mallopt")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1] == "1"


def test_large_buffers_stay_in_mmap_after_a_larger_one_was_freed() -> None:
    assert _mmapped("fixed")


def test_without_it_the_allocator_keeps_them_in_its_heap() -> None:
    # The behaviour return_large_blocks exists to change; if glibc stops doing this, the
    # call is no longer needed.
    assert not _mmapped("default")
