"""The subcommands that drive the pipeline over photos: ``run``, ``scan`` and ``check``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from dupwatch.cli_setup import EXIT_OK, command_config, setup_logging, state_dir
from dupwatch.config import Config, check_roots
from dupwatch.errors import ConfigError, UsageError
from dupwatch.records import Action, Tier


def cmd_run(args: argparse.Namespace) -> int:
    config = command_config(args).with_roots(args.roots)
    setup_logging(config)
    if not config.watch.roots:
        raise ConfigError(["no roots to watch: give directories on the command line or in [watch]"])
    problems = check_roots(config.watch.roots)
    if problems:
        raise ConfigError(problems)
    directory = state_dir(args)
    from dupwatch.daemon import Daemon
    from dupwatch.heap import return_large_blocks
    from dupwatch.runtime import open_services

    return_large_blocks()
    services = open_services(config, directory, config.watch.roots)
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
    config = command_config(args)
    # With --json, stdout carries only the report; logs go to stderr.
    setup_logging(config, to_stderr=True)
    for path in args.paths:
        if not (path.is_dir() or path.is_file()):
            raise UsageError(f"{path}: no such file or directory")
    directory = state_dir(args)
    from dupwatch.filters import PathFilter
    from dupwatch.reconcile import walk_files
    from dupwatch.runtime import open_services
    from dupwatch.workerpool import looking_ahead

    targets = _scan_targets(args.paths, config)
    roots = list(dict.fromkeys(root for root, _ in targets))
    path_filter = PathFilter(
        config.watch.include_extensions, config.watch.ignore, config.quarantine.dir_name
    )
    services = open_services(config, directory, roots, dry_run=args.dry_run, log_to_stderr=True)
    tiers: Counter[str] = Counter()
    moved = unchanged = 0
    started = time.monotonic()
    try:
        for root, start in targets:
            if start.is_file():
                files = [start]
            else:
                files = sorted(p for p, _ in walk_files(root, path_filter, start=start))
            for path in looking_ahead(files, services.worker):
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
    config = command_config(args)
    setup_logging(config, to_stderr=True)
    directory = state_dir(args)
    from dupwatch.runtime import open_services

    services = open_services(
        config, directory, [args.file.parent], dry_run=True, log_to_stderr=True
    )
    try:
        report = services.pipeline.explain(args.file.absolute())
    finally:
        services.close()
    print(report)
    return EXIT_OK
