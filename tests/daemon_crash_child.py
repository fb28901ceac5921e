"""Run ``dupwatch`` (argv after the first argument) and SIGKILL it at one step of a move.

Test-only entry point for tests/test_daemon_crash.py: the daemon is the real one, started as
``dupwatch.cli.main`` would be, with one hook installed first. ``crash_at`` is
``before_rename`` (the journal holds the intent; the file has not moved) or ``before_done``
(the file is in the quarantine; the journal still says intent). The kill is a real SIGKILL to
this process: no cleanup, no flush, as after ``kill -9``.
"""

from __future__ import annotations

import os
import signal
import sys

from dupwatch import fsops
from dupwatch.cli import main
from dupwatch.records import JournalState
from dupwatch.store import Store


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _install(crash_at: str) -> None:
    if crash_at == "before_rename":
        # fsops calls the hook before each change to the disk; the daemon's first rename is the
        # first quarantine move (recovery at start-up has nothing to do in a fresh state dir).
        fsops.set_fault_hook(lambda operation: _die() if operation == "rename" else None)
    elif crash_at == "before_done":
        real = Store.journal_set_state

        def set_state(self: Store, entry_id: int, state: JournalState) -> None:
            if state is JournalState.DONE:
                _die()
            real(self, entry_id, state)

        Store.journal_set_state = set_state  # type: ignore[method-assign]
    else:
        raise SystemExit(f"unknown crash point {crash_at!r}")


if __name__ == "__main__":
    _install(sys.argv[1])
    sys.exit(main(sys.argv[2:]))
