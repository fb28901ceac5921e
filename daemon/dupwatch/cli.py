"""The ``dupwatch`` command: argparse subcommands, one function each.

The only module that prints or exits. Library errors become one ``error: ...`` line and an exit
code: 0 ok, 1 runtime error, 2 usage, 78 configuration or state directory problem.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from dupwatch import __version__
from dupwatch.config import Config, check_roots, load_config, parse_duration
from dupwatch.errors import (
    ConfigError,
    DupwatchError,
    RestoreRefused,
    StateDirError,
    UsageError,
)
from dupwatch.logs import configure_logging, printable
from dupwatch.records import Action, Tier
from dupwatch.statepaths import database_path, default_state_dir, prepare_state_dir

if TYPE_CHECKING:
    from dupwatch.quarantine import Quarantine
    from dupwatch.store import Store
    from dupwatch.store.records import FileRecord

log = structlog.get_logger(__name__)

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_CONFIG = 0, 1, 2, 78


# --- shared helpers -----------------------------------------------------------------------


def _config(args: argparse.Namespace) -> Config:
    config = load_config(args.config)
    if args.verbose:
        config = dataclasses.replace(config, log=dataclasses.replace(config.log, level="debug"))
    return config


def _state_dir(args: argparse.Namespace, *, create: bool = True) -> Path:
    path: Path = args.state_dir if args.state_dir is not None else default_state_dir()
    return prepare_state_dir(path.expanduser(), create=create)


def _setup_logging(config: Config, *, to_stderr: bool = False) -> None:
    configure_logging(config.log.level, config.log.format, stream=sys.stderr if to_stderr else None)


def _existing_store(state_dir: Path) -> Store | None:
    """The database in ``state_dir``, or None (with a note on stdout) if there is none yet."""
    from dupwatch.runtime import open_store

    if not database_path(state_dir).exists():
        print(f"no database yet in {state_dir}: dupwatch has not run here")
        return None
    return open_store(state_dir)


def _reading_store(args: argparse.Namespace) -> tuple[Path, Store | None]:
    """For commands that only read: logging set up, the state directory and its database."""
    _setup_logging(_config(args), to_stderr=True)
    state_dir = _state_dir(args, create=False)
    return state_dir, _existing_store(state_dir)


def _required_store(state_dir: Path) -> Store:
    """The database in ``state_dir``; commands that change it need one to exist."""
    from dupwatch.runtime import open_store

    if not database_path(state_dir).exists():
        raise StateDirError(f"{state_dir}: no database here: dupwatch has not run with it")
    return open_store(state_dir)


def _age(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 86400:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"


# --- commands -----------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    config = _config(args).with_roots(args.roots)
    _setup_logging(config)
    if not config.watch.roots:
        raise ConfigError(["no roots to watch: give directories on the command line or in [watch]"])
    problems = check_roots(config.watch.roots)
    if problems:
        raise ConfigError(problems)
    state_dir = _state_dir(args)
    from dupwatch.daemon import Daemon
    from dupwatch.runtime import open_services

    services = open_services(config, state_dir, config.watch.roots)
    try:
        return Daemon(services).run()
    finally:
        services.close()


def _scan_targets(paths: Sequence[Path], config: Config) -> list[tuple[Path, Path]]:
    """(root, start) for each scanned path: its configured root if inside one, else itself."""
    from dupwatch.filters import absolute_root, root_of

    roots = [absolute_root(r) for r in config.watch.roots]
    targets = []
    for raw in paths:
        start = absolute_root(raw)
        own = start if start.is_dir() else start.parent
        targets.append((root_of(start, roots) or own, start))
    return targets


def cmd_scan(args: argparse.Namespace) -> int:
    config = _config(args)
    # With --json, stdout carries only the report; logs go to stderr.
    _setup_logging(config, to_stderr=True)
    for path in args.paths:
        if not (path.is_dir() or path.is_file()):
            raise UsageError(f"{path}: no such file or directory")
    state_dir = _state_dir(args)
    from dupwatch.filters import PathFilter
    from dupwatch.reconcile import walk_files
    from dupwatch.runtime import open_services

    targets = _scan_targets(args.paths, config)
    roots = list(dict.fromkeys(root for root, _ in targets))
    path_filter = PathFilter(
        config.watch.include_extensions, config.watch.ignore, config.quarantine.dir_name
    )
    services = open_services(config, state_dir, roots, dry_run=args.dry_run, log_to_stderr=True)
    tiers: Counter[str] = Counter()
    moved = unchanged = 0
    started = time.monotonic()
    try:
        for root, start in targets:
            if start.is_file():
                files = [start]
            else:
                files = sorted(p for p, _ in walk_files(root, path_filter, start=start))
            for path in files:
                result = services.pipeline.process(path)
                if result is None:
                    unchanged += 1
                    continue
                tiers[result.tier.value] += 1
                moved += result.action is Action.QUARANTINE
                if args.json:
                    print(json.dumps(result.as_json()), flush=True)
    finally:
        services.close()
    out = sys.stderr if args.json else sys.stdout
    verb = "would be quarantined" if args.dry_run else "quarantined"
    print(f"scanned {sum(tiers.values())} files in {time.monotonic() - started:.1f} s", file=out)
    for tier in Tier:
        print(f"  {tier.value:<10} {tiers[tier.value]:>7}", file=out)
    print(f"  {'unchanged':<10} {unchanged:>7}", file=out)
    print(f"{moved} {verb}", file=out)
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    config = _config(args)
    _setup_logging(config, to_stderr=True)
    state_dir = _state_dir(args)
    from dupwatch.runtime import open_services

    services = open_services(
        config, state_dir, [args.file.parent], dry_run=True, log_to_stderr=True
    )
    try:
        report = services.pipeline.explain(args.file.absolute())
    finally:
        services.close()
    print(report)
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from dupwatch.records import FileStatus
    from dupwatch.status import read_daemon_status

    state_dir, store = _reading_store(args)
    if store is None:
        return EXIT_OK
    try:
        counts = store.file_counts()
        daemon = read_daemon_status(store)
    finally:
        store.close()
    print(f"state directory: {state_dir}")
    print(
        f"files: {counts[FileStatus.INDEXED]} indexed, {counts[FileStatus.QUARANTINED]} "
        f"quarantined, {counts[FileStatus.FAILED]} failed, {counts[FileStatus.GONE]} gone"
    )
    print(daemon)
    return EXIT_OK


def _open_quarantine(args: argparse.Namespace) -> tuple[Store, Quarantine]:
    config = _config(args)
    state_dir = _state_dir(args, create=False)
    from dupwatch.runtime import open_quarantine, remembered_roots

    store = _required_store(state_dir)
    roots = list(dict.fromkeys([*config.watch.roots, *remembered_roots(store)]))
    return store, open_quarantine(store, config, roots)


def cmd_quarantine_list(args: argparse.Namespace) -> int:
    _setup_logging(_config(args), to_stderr=True)
    store, quarantine = _open_quarantine(args)
    try:
        entries = quarantine.entries()
        keepers: dict[int | None, FileRecord | None] = {
            e.entry.duplicate_of: store.file(e.entry.duplicate_of)
            for e in entries
            if e.entry.duplicate_of is not None
        }
    finally:
        store.close()
    if args.json:
        for item in entries:
            keeper = keepers.get(item.entry.duplicate_of)
            print(
                json.dumps(
                    {
                        "id": item.entry.id,
                        "original_path": os.fsdecode(item.entry.original_path),
                        "quarantine_path": os.fsdecode(item.entry.quarantine_path),
                        "duplicate_of": None if keeper is None else os.fsdecode(keeper.path),
                        "tier": item.entry.tier.value,
                        "similarity": item.entry.similarity,
                        "rule": item.entry.rule,
                        "size": item.size,
                        "age_seconds": round(item.age_seconds),
                    }
                )
            )
        return EXIT_OK
    if not entries:
        print("the quarantine is empty")
        return EXIT_OK
    for item in entries:
        keeper = keepers.get(item.entry.duplicate_of)
        similarity = "" if item.entry.similarity is None else f" {item.entry.similarity:.3f}"
        print(
            f"{item.entry.id:>6}  {_age(item.age_seconds):>4}  {item.entry.tier.value}"
            f"{similarity} ({item.entry.rule})  {printable(item.entry.original_path)}"
        )
        if keeper is not None:
            print(f"{'':>14}copy of {printable(keeper.path)}")
    print(f"{len(entries)} file(s); restore one with: dupwatch restore ID")
    return EXIT_OK


def cmd_restore(args: argparse.Namespace) -> int:
    _setup_logging(_config(args), to_stderr=True)
    store, quarantine = _open_quarantine(args)
    try:
        target: str = args.target
        if target.isdigit():
            entry_id = int(target)
        else:
            found = quarantine.find(Path(target))
            if not found:
                raise RestoreRefused(f"{target}: not in the quarantine")
            entry_id = found[-1].id
        restored = quarantine.restore(entry_id)
    finally:
        store.close()
    print(f"restored {printable(restored)}; it will not be quarantined again as that copy")
    return EXIT_OK


def cmd_quarantine_purge(args: argparse.Namespace) -> int:
    _setup_logging(_config(args), to_stderr=True)
    try:
        seconds = parse_duration(args.older_than)
    except ValueError as exc:
        raise ConfigError([f"--older-than: {exc}"]) from None
    store, quarantine = _open_quarantine(args)
    try:
        purged = quarantine.purge(seconds)
    finally:
        store.close()
    print(f"deleted {len(purged)} quarantined file(s) older than {args.older_than}")
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from dupwatch.report import summarise

    _, store = _reading_store(args)
    if store is None:
        return EXIT_OK
    try:
        print(summarise(store, limit=args.limit))
    finally:
        store.close()
    return EXIT_OK


def cmd_forget_missing(args: argparse.Namespace) -> int:
    """Accept that files under ROOT were deleted: mark those no longer on disk as gone."""
    _setup_logging(_config(args), to_stderr=True)
    state_dir = _state_dir(args, create=False)
    from dupwatch.filters import absolute_root
    from dupwatch.records import FileStatus

    root = absolute_root(args.root)
    if not root.is_dir():
        raise UsageError(f"{root}: not a directory (is the share mounted?)")
    store = _required_store(state_dir)
    forgotten = 0
    try:
        for record in store.files_under(root, (FileStatus.INDEXED, FileStatus.FAILED)):
            if not (record.path.exists() or record.path.is_symlink()):
                store.set_file_status(record.id, FileStatus.GONE)
                forgotten += 1
    finally:
        store.close()
    print(f"{forgotten} missing file(s) under {printable(root)} marked gone")
    return EXIT_OK


def cmd_config_check(args: argparse.Namespace) -> int:
    config = _config(args)
    problems = check_roots(config.watch.roots)
    if problems:
        raise ConfigError(problems)
    where = args.config or "built-in defaults"
    print(f"{where}: ok ({len(config.watch.roots)} root(s))")
    return EXIT_OK


# --- parser -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dupwatch",
        description="Keep a photo library free of duplicates: watch, detect, quarantine.",
    )
    parser.add_argument("--version", action="version", version=f"dupwatch {__version__}")
    parser.add_argument("--config", type=Path, help="TOML configuration file")
    parser.add_argument(
        "--state-dir",
        type=Path,
        help="database and caches (default: $STATE_DIRECTORY, $XDG_STATE_HOME/dupwatch "
        "or ~/.local/state/dupwatch)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="watch roots and act on duplicates as they arrive")
    run.add_argument("roots", nargs="*", type=Path, metavar="ROOT")
    run.set_defaults(func=cmd_run)

    scan = sub.add_parser("scan", help="process the photos under PATH once, then summarise")
    scan.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    scan.add_argument("--dry-run", action="store_true", help="change nothing; show what would")
    scan.add_argument("--json", action="store_true", help="one JSON object per file on stdout")
    scan.set_defaults(func=cmd_scan)

    check = sub.add_parser("check", help="explain what dupwatch would do with FILE")
    check.add_argument("file", type=Path, metavar="FILE")
    check.set_defaults(func=cmd_check)

    status = sub.add_parser("status", help="counts, the daemon's state, the last snapshot")
    status.set_defaults(func=cmd_status)

    restore = sub.add_parser("restore", help="put a quarantined file back (by ID or path)")
    restore.add_argument("target", metavar="ID|PATH")
    restore.set_defaults(func=cmd_restore)

    report = sub.add_parser("report", help="what was (or in log mode, would be) quarantined")
    report.add_argument("--limit", type=int, default=50, help="rows to list (default 50)")
    report.set_defaults(func=cmd_report)

    quarantine = sub.add_parser("quarantine", help="list or purge the quarantine")
    qsub = quarantine.add_subparsers(dest="quarantine_command", required=True, metavar="ACTION")
    qlist = qsub.add_parser("list", help="what is in the quarantine and why")
    qlist.add_argument("--json", action="store_true", help="one JSON object per entry")
    qlist.set_defaults(func=cmd_quarantine_list)
    purge = qsub.add_parser("purge", help="delete quarantined files for good")
    purge.add_argument("--older-than", required=True, metavar="AGE", help='e.g. "30d"')
    purge.set_defaults(func=cmd_quarantine_purge)

    forget = sub.add_parser(
        "forget-missing",
        help="accept that files under ROOT were deleted (after a mass-change pause)",
    )
    forget.add_argument("root", type=Path, metavar="ROOT")
    forget.set_defaults(func=cmd_forget_missing)

    config = sub.add_parser("config", help="configuration tools")
    csub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    ccheck = csub.add_parser("check", help="validate the configuration")
    ccheck.set_defaults(func=cmd_config_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    except DupwatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
