"""Where dupwatch keeps its state: the database, search snapshots and cached model files."""

from __future__ import annotations

import os
from pathlib import Path

from dupwatch.errors import StateDirError

DATABASE_NAME = "dupwatch.db"


def default_state_dir() -> Path:
    """$STATE_DIRECTORY (systemd), else $XDG_STATE_HOME/dupwatch, else ~/.local/state/dupwatch."""
    systemd_dirs = os.environ.get("STATE_DIRECTORY")
    if systemd_dirs:
        # systemd passes a colon-separated list when the unit names several directories.
        return Path(systemd_dirs.split(":")[0])
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / "dupwatch"


def prepare_state_dir(path: Path, *, create: bool = True) -> Path:
    """Make sure ``path`` exists (if ``create``) and is a writable directory; return it."""
    if create:
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StateDirError(f"{path}: cannot create the state directory: {exc}") from exc
    if not path.is_dir():
        raise StateDirError(f"{path}: state directory does not exist")
    if not os.access(path, os.W_OK | os.X_OK):
        raise StateDirError(f"{path}: state directory is not writable by this user")
    return path


def database_path(state_dir: Path) -> Path:
    return state_dir / DATABASE_NAME


def model_cache_dir(state_dir: Path) -> Path:
    return state_dir / "models"


def snapshot_dir(state_dir: Path) -> Path:
    return state_dir / "snapshots"
