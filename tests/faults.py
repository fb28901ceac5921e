"""Faults and filesystems the unit and reliability tests need but cannot meet on demand.

- ``exdev_once``: the tests' files all live on one filesystem, so one rename is made to fail
  with EXDEV and the code under test takes its cross-filesystem path (copy, verify, rename,
  unlink) for real. The only faked fault.
- ``tmpfs_at``: a real second (or small, soon full) filesystem, where mounting is allowed.
- ``run_in_fork``: work in a child process that a test may crash at any point, with
  ``os._exit``, as abruptly as SIGKILL, while the test process goes on to recover.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from dupwatch import fsops


def exdev_once(monkeypatch: pytest.MonkeyPatch | None = None) -> list[str]:
    """Make the next ``fsops.rename_noreplace`` fail with EXDEV, as across a mount point.

    Returns the source names of every rename tried from now on, the failed one first. With
    ``monkeypatch`` the real rename comes back when the test ends; without it (in a forked child
    that exits after its work) the stand-in stays.
    """
    real = fsops.rename_noreplace
    calls: list[str] = []

    def rename(src_dir: int, src: str, dst_dir: int, dst: str) -> None:
        calls.append(src)
        if len(calls) == 1:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real(src_dir, src, dst_dir, dst)

    if monkeypatch is not None:
        monkeypatch.setattr(fsops, "rename_noreplace", rename)
    else:
        fsops.rename_noreplace = rename  # type: ignore[assignment]  # a forked child only
    return calls


@contextmanager
def tmpfs_at(where: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted (with mount ``-o options``) on the directory ``where``, unmounted after.

    Skips the test where nothing may be mounted (no mount command, not root, a container).
    """
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def run_in_fork(work: Callable[[], object]) -> int:
    """Run ``work`` in a forked child; its exit code: 0 if it returned, 1 if it raised (the
    traceback goes to stderr), or whatever code it crashed with through ``os._exit``."""
    pid = os.fork()
    if pid == 0:  # the child never returns into the test
        code = 1
        try:
            work()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)
