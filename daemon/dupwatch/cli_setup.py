"""What every ``dupwatch`` subcommand starts from: config, state directory, logging, database.

Shared by the command modules (``cli_photos``, ``cli_library``); only they and ``cli`` print.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from dupwatch.config import Config, check_roots, load_config
from dupwatch.errors import ConfigError, StateDirError
from dupwatch.logs import configure_logging
from dupwatch.statepaths import database_path, default_state_dir, prepare_state_dir

if TYPE_CHECKING:
    from dupwatch.store import Store

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_CONFIG = 0, 1, 2, 78


def command_config(args: argparse.Namespace) -> Config:
    """The configuration named by ``--config`` (or the defaults), at debug level with ``-v``."""
    config = load_config(args.config)
    if args.verbose:
        config = dataclasses.replace(config, log=dataclasses.replace(config.log, level="debug"))
    return config


def state_dir(args: argparse.Namespace, *, create: bool = True) -> Path:
    """The state directory from ``--state-dir`` or the default, checked (and made if asked)."""
    path: Path = args.state_dir if args.state_dir is not None else default_state_dir()
    return prepare_state_dir(path.expanduser(), create=create)


def setup_logging(config: Config, *, to_stderr: bool = False) -> None:
    """Logging as configured; ``to_stderr`` keeps stdout for the command's own output."""
    configure_logging(config.log.level, config.log.format, stream=sys.stderr if to_stderr else None)


def existing_store(state_dir: Path) -> Store | None:
    """The database in ``state_dir``, or None (with a note on stdout) if there is none yet."""
    from dupwatch.runtime import open_store

    if not database_path(state_dir).exists():
        print(f"no database yet in {state_dir}: dupwatch has not run here")
        return None
    return open_store(state_dir)


def reading_store(args: argparse.Namespace) -> tuple[Path, Store | None]:
    """For commands that only read: logging set up, the state directory and its database."""
    setup_logging(command_config(args), to_stderr=True)
    directory = state_dir(args, create=False)
    return directory, existing_store(directory)


def required_store(state_dir: Path) -> Store:
    """The database in ``state_dir``; commands that change it need one to exist."""
    from dupwatch.runtime import open_store

    if not database_path(state_dir).exists():
        raise StateDirError(f"{state_dir}: no database here: dupwatch has not run with it")
    return open_store(state_dir)


def cmd_config_check(args: argparse.Namespace) -> int:
    config = command_config(args)
    problems = check_roots(config.watch.roots)
    if problems:
        raise ConfigError(problems)
    where = args.config or "built-in defaults"
    print(f"{where}: ok ({len(config.watch.roots)} root(s))")
    return EXIT_OK
