"""Thread counts of the numerical libraries, fixed before they are loaded.

OpenBLAS, OpenMP, MKL and OpenCV start one thread per core the first time they run, and
OpenBLAS's threads spin while they wait for work. The matrix products of this program are small (one
query against a few thousand vectors, least squares on a few hundred points): threads never
pay for themselves, and on a two-core NAS a spinning one takes a core from the analysis
workers. The libraries read these variables once, when they load.
"""

from __future__ import annotations

import os

_VARIABLES = (
    "OPENBLAS_NUM_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    # OpenCV's own pool: the daemon matches glances' features with it, and splitting a
    # half-millisecond product over both cores costs more than it saves.
    "OPENCV_FOR_THREADS_NUM",
)


def limit_math_threads(threads: int) -> None:
    """Use at most ``threads`` threads in numerical libraries loaded from now on, in this
    process and the processes it starts. A value the owner set in the environment is kept."""
    for name in _VARIABLES:
        os.environ.setdefault(name, str(threads))
