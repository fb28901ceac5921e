"""What verification costs end to end: a dry-run scan with verification on and off.

Each folder is scanned in-process through the real pipeline (read, sha256, decode, embed,
search, verify, decide, record) with a fresh state directory, once as shipped and once with
no candidate verified (``MAX_VERIFIED_CANDIDATES = 0``) and no glance made (glances are
verification's first step, made for every file; the rest of the flow is unchanged).
Reports images/s in wall time and per CPU-second (this process plus its analysis worker), and
how many verifications ran. Run it on a quiet machine for figures that mean something.

Usage: python bench/verify_cost.py FOLDER... [--limit N]
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any

from dupwatch.maththreads import limit_math_threads

# As the dupwatch command does, before numpy loads: spinning BLAS threads would count as CPU.
limit_math_threads(1)

import structlog  # noqa: E402

from dupwatch import candidates, runtime  # noqa: E402
from dupwatch.config import Config  # noqa: E402
from dupwatch.filters import PathFilter  # noqa: E402
from dupwatch.logs import configure_logging  # noqa: E402
from dupwatch.reconcile import walk_files  # noqa: E402
from dupwatch.runtime import open_services  # noqa: E402
from dupwatch.worker import WorkerSettings  # noqa: E402


def _cpu() -> float:
    """CPU seconds of this process and its live children (the analysis worker), Linux only."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    total = own.ru_utime + own.ru_stime
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path("/proc/self/task").iterdir():
        for pid in (task / "children").read_text().split():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def scan(folder: Path, files: list[Path], verify: bool) -> dict[str, float]:
    """Scan ``files`` once (the first one warms up and is not counted)."""
    saved = candidates.MAX_VERIFIED_CANDIDATES
    candidates.MAX_VERIFIED_CANDIDATES = saved if verify else 0
    runtime.WorkerSettings = functools.partial(WorkerSettings, glances=verify)  # type: ignore[attr-defined,assignment]
    verified = in_full = 0

    def count(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
        nonlocal verified, in_full
        if event.get("event") == "candidate_examined" and event.get("verified") is not None:
            verified += 1
            in_full += event.get("reason") != "different_at_a_glance"
        raise structlog.DropEvent

    try:
        with tempfile.TemporaryDirectory(prefix="dupwatch-verify-cost-") as state:
            services = open_services(Config(), Path(state), [folder], dry_run=True)
            # Counting needs the debug events; nothing is rendered.
            structlog.configure(
                processors=[count], wrapper_class=structlog.make_filtering_bound_logger(10)
            )
            services.pipeline.process(files[0])  # warm up: model graph, caches
            cpu0, wall0 = _cpu(), time.perf_counter()
            for path in files[1:]:
                services.pipeline.process(path)
            wall, cpu = time.perf_counter() - wall0, _cpu() - cpu0
            services.close()
    finally:
        candidates.MAX_VERIFIED_CANDIDATES = saved
        runtime.WorkerSettings = WorkerSettings  # type: ignore[attr-defined]
        configure_logging("warning", "console", stream=sys.stderr)
    n = len(files) - 1
    return {"files": n, "wall": wall, "cpu": cpu, "verified": verified, "in_full": in_full}


def _added(total: dict[str, float], more: dict[str, float]) -> dict[str, float]:
    return {key: total.get(key, 0.0) + value for key, value in more.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--limit", type=int, default=0, help="scan at most N files per folder")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="scan each folder N times each way, off and on in turn, and add them up "
        "(a folder of a few dozen photos takes under a second of CPU: one scan is noisy)",
    )
    parser.add_argument("--write", action="store_true", help="rewrite bench/RESULTS.md's section")
    args = parser.parse_args(argv)
    configure_logging("warning", "console", stream=sys.stderr)
    config = Config()
    path_filter = PathFilter(
        config.watch.include_extensions, config.watch.ignore, config.quarantine.dir_name
    )
    lines = [
        "| folder | files | verification | candidates verified (in full) | images/s (wall) |"
        " images per CPU-second | on/off (CPU) |",
        "|---|---|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    for folder in args.folders:
        folder = folder.resolve()
        files = sorted(p for p, _ in walk_files(folder, path_filter, start=folder))
        if args.limit:
            files = files[: args.limit]
        off: dict[str, float] = {}
        on: dict[str, float] = {}
        for _ in range(max(1, args.repeat)):  # in turn, so a change in load touches both
            off = _added(off, scan(folder, files, verify=False))
            on = _added(on, scan(folder, files, verify=True))
        for label, r in (("off", off), ("on", on)):
            ratio = (r["files"] / r["cpu"]) / (off["files"] / off["cpu"])
            lines.append(
                f"| {folder.name} | {r['files']:.0f} | {label} | {r['verified']:.0f} "
                f"({r['in_full']:.0f}) "
                f"| {r['files'] / r['wall']:.1f} | {r['files'] / r['cpu']:.1f} | {ratio:.2f} |"
            )
            print(lines[-1], flush=True)
    if args.write:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from results import write_section

        repeated = ""
        if args.repeat > 1:
            repeated = f", {args.repeat} times each way in turn (files and figures add them up)"
        body = [
            "## Verification cost",
            "",
            f"Run by `python bench/verify_cost.py {' '.join(str(f) for f in args.folders)}"
            f"{f' --limit {args.limit}' if args.limit else ''}"
            f"{f' --repeat {args.repeat}' if args.repeat > 1 else ''}` on"
            f" {time.strftime('%Y-%m-%d')}"
            f" ({platform.machine()}, 2 cores, quiet machine; CPU figures count this process and"
            " its analysis workers). Each folder"
            " is scanned in dry-run mode from a fresh state directory, with no candidate"
            " verified and as shipped"
            f"{repeated}; the first file of a scan warms up and is not counted.",
            "",
            *lines,
        ]
        write_section("Verification cost", "\n".join(body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
