"""Numerical libraries in the daemon run on one thread each (see dupwatch.maththreads)."""

from __future__ import annotations

import os
import subprocess
import sys

# The thread count OpenCV settles on when it loads after the limit is set.
_PROBE = """
from dupwatch.maththreads import limit_math_threads
limit_math_threads(1)
import cv2
print(cv2.getNumThreads())
"""


def test_opencv_in_a_limited_process_uses_one_thread() -> None:
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_FOR_THREADS_NUM"}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True, env=env
    )
    assert int(out.stdout.strip()) == 1


def test_a_thread_count_set_by_the_owner_is_kept() -> None:
    env = {**os.environ, "OPENCV_FOR_THREADS_NUM": "2"}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True, env=env
    )
    assert int(out.stdout.strip()) == 2
