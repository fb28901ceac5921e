"""The subcommands that read or change what dupwatch has recorded about a library.

``status``, ``report``, ``quarantine list``, ``quarantine purge``, ``restore`` and
``forget-missing``: none of them loads the model, so they start instantly.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from dupwatch.cli_setup import (
    EXIT_OK,
    command_config,
    reading_store,
    required_store,
    setup_logging,
    state_dir,
)
from dupwatch.config import parse_duration
from dupwatch.errors import ConfigError, RestoreRefused, UsageError
from dupwatch.logs import printable

if TYPE_CHECKING:
    from dupwatch.quarantine import Quarantine
    from dupwatch.store import Store
    from dupwatch.store.records import FileRecord


def _age(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 86400:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"


def _open_quarantine(args: argparse.Namespace) -> tuple[Store, Quarantine]:
    config = command_config(args)
    directory = state_dir(args, create=False)
    from dupwatch.runtime import open_quarantine, remembered_roots

    store = required_store(directory)
    roots = list(dict.fromkeys([*config.watch.roots, *remembered_roots(store)]))
    return store, open_quarantine(store, config, roots)


def cmd_status(args: argparse.Namespace) -> int:
    from dupwatch.records import FileStatus
    from dupwatch.status import read_daemon_status

    directory, store = reading_store(args)
    if store is None:
        return EXIT_OK
    try:
        counts = store.file_counts()
        daemon = read_daemon_status(store)
    finally:
        store.close()
    print(f"state directory: {directory}")
    print(
        f"files: {counts[FileStatus.INDEXED]} indexed, {counts[FileStatus.QUARANTINED]} "
        f"quarantined, {counts[FileStatus.FAILED]} failed, {counts[FileStatus.GONE]} gone"
    )
    print(daemon)
    return EXIT_OK


def cmd_quarantine_list(args: argparse.Namespace) -> int:
    setup_logging(command_config(args), to_stderr=True)
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
    setup_logging(command_config(args), to_stderr=True)
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
    setup_logging(command_config(args), to_stderr=True)
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

    _, store = reading_store(args)
    if store is None:
        return EXIT_OK
    try:
        print(summarise(store, limit=args.limit))
    finally:
        store.close()
    return EXIT_OK


def cmd_forget_missing(args: argparse.Namespace) -> int:
    """Accept that files under ROOT were deleted: mark those no longer on disk as gone."""
    setup_logging(command_config(args), to_stderr=True)
    directory = state_dir(args, create=False)
    from dupwatch.filters import absolute_root
    from dupwatch.records import FileStatus

    root = absolute_root(args.root)
    if not root.is_dir():
        raise UsageError(f"{root}: not a directory (is the share mounted?)")
    store = required_store(directory)
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
