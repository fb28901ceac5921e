"""Memory that follows the library, not a step function: found by the soak (bench/soak.py).

The buffer of recent vectors doubles its capacity as it fills. The daemon's resident memory
must grow with the rows written, not jump by the whole new capacity at each doubling.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from dupwatch.buffer import Buffer

DIM = 1280


def _anonymous_mib() -> float:
    status = Path("/proc/self/status").read_text()
    match = re.search(r"RssAnon:\s+(\d+) kB", status)
    assert match is not None
    return int(match.group(1)) / 1024


def test_the_buffer_takes_memory_as_rows_are_written_not_its_whole_capacity() -> None:
    rows = 4097  # one past a doubling: capacity 8,192 rows
    vectors = np.random.default_rng(7).standard_normal((rows, DIM)).astype(np.float32)
    buffer = Buffer(DIM)
    before = _anonymous_mib()
    for file_id, vector in enumerate(vectors):
        buffer.append(file_id, vector)
    grown = _anonymous_mib() - before
    written = rows * DIM * 4 / 2**20
    assert buffer.full is not None and buffer.full.shape[0] >= 2 * (rows - 1)  # its capacity
    # Filling the capacity would take twice the rows; allow some slack for the allocator.
    assert grown < 1.5 * written, f"{grown:.0f} MiB for {written:.0f} MiB of rows"
    assert len(buffer) == rows
