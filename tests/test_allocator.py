"""The daemon's allocator settings: large blocks go back to the system when freed."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Allocates and frees one large block, then another made and written (so resident), then
# frees it: prints how much resident anonymous memory that left behind, in KB.
_PROBE = """
import sys
from pathlib import Path
from dupwatch.allocator import steady_allocator

def anon_kb():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])

if sys.argv[1] == "steady":
    assert steady_allocator()
block = bytearray(8 << 20)
del block  # glibc's default: the limit for mapping blocks rises to this size
before = anon_kb()
block = bytearray(8 << 20)  # zero-filled by the allocator: resident
del block
print(anon_kb() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc on Linux")
def test_a_freed_photo_sized_block_leaves_no_resident_memory_behind() -> None:
    def left(mode: str) -> int:
        out = subprocess.run(
            [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True
        )
        return int(out.stdout.strip())

    assert left("default") > 4 << 10  # the probe shows the problem: 8 MB kept after free
    assert left("steady") < 1 << 10  # and the setting removes it
