"""The ``dupwatch`` command: argparse subcommands, dispatch, and exit codes.

Each subcommand is one function in a command module: ``cli_pipeline`` (run, scan, check) and
``cli_library`` (status, report, quarantine, restore, forget-missing), with what they all start
from in ``cli_setup``. Only these modules print. Library errors become one ``error: ...`` line
here and an exit code: 0 ok, 1 runtime error, 2 usage, 78 configuration or state directory
problem.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from dupwatch import __version__
from dupwatch.allocator import steady_allocator
from dupwatch.cli_library import (
    cmd_forget_missing,
    cmd_quarantine_list,
    cmd_quarantine_purge,
    cmd_report,
    cmd_restore,
    cmd_status,
)
from dupwatch.cli_pipeline import cmd_check, cmd_run, cmd_scan
from dupwatch.cli_setup import EXIT_CONFIG, EXIT_ERROR, EXIT_OK, EXIT_USAGE, cmd_config_check
from dupwatch.errors import ConfigError, DupwatchError
from dupwatch.maththreads import limit_math_threads

__all__ = ["EXIT_CONFIG", "EXIT_ERROR", "EXIT_OK", "EXIT_USAGE", "build_parser", "main"]


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
    # Before anything loads numpy: spinning BLAS threads would take a core from the workers.
    limit_math_threads(1)
    steady_allocator()  # before any thread starts
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
