"""The long reliability runs: the whole tests/reliability suite including its slow variants.

CI runs the fast selection (``-m "not slow"``); this runs everything: kill -9 of the daemon
20 x 200 arriving files, SIGTERM mid-batch 20 times, 10,000 fuzzed files, 10,000 quarantine
attempts against a symlink swapped in, on top of the crash-point enumeration and the other
scenarios. It prints the figures the tests report as a Markdown block for the "Reliability"
section of bench/RESULTS.md. The soak (an hour of arrivals, renames and a share outage under
the running daemon) is a bench of its own: bench/soak.py.

    python bench/reliability_long.py                 # everything (tens of minutes on 2 cores)
    python bench/reliability_long.py -k kill9_long   # one scenario
"""

from __future__ import annotations

import argparse
import ast
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SUITE = HERE.parent / "tests" / "reliability"

_CRASH = re.compile(r"^(?P<name>.+): (?P<points>\d+) crash points, outcomes")
_KILL = re.compile(r"kill -9 run (?P<seed>\d+): (?P<figures>\{.*\})")
_TERM = re.compile(r"SIGTERM run (?P<seed>\d+): exit 0 after (?P<s>[\d.]+) s")
_FUZZ = re.compile(r"fuzz: (?P<figures>\{.*\})")
_SWAP = re.compile(r"symlink swap: (?P<figures>\{.*\})")
_BAD = re.compile(r"bad inputs: scan (?P<s>[\d.]+) s, worker peak RSS (?P<mib>\d+) MiB")
_SUMMARY = re.compile(r"(?P<text>\d+ (?:passed|failed)[^=]*?)(?: =+)?$")


def run(selection: list[str]) -> tuple[str, float, int]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", str(SUITE), "-s", "-q", "-p", "no:cacheprovider",
         *selection],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return done.stdout, time.monotonic() - started, done.returncode


def summarise(output: str, seconds: float) -> str:
    lines = output.splitlines()
    crash = [m for line in lines if (m := _CRASH.match(line.lstrip(".")))]
    kills = [ast.literal_eval(m["figures"]) for line in lines if (m := _KILL.search(line))]
    terms = [float(m["s"]) for line in lines if (m := _TERM.search(line))]
    fuzz = [ast.literal_eval(m["figures"]) for line in lines if (m := _FUZZ.search(line))]
    bad = [m for line in lines if (m := _BAD.search(line))]
    swaps = [ast.literal_eval(m["figures"]) for line in lines if (m := _SWAP.search(line))]
    summary = next((m["text"] for line in lines if (m := _SUMMARY.search(line))), "?")
    out = [f"Suite: {summary}, {seconds / 60:.1f} min.", ""]
    if crash:
        total = sum(int(m["points"]) for m in crash)
        out.append(f"- Crash points (pipeline + CLI restore, fresh-process recovery): {total}")
        out += [f"  - {m['name']}: {m['points']}" for m in crash]
    for files in sorted({k["files"] for k in kills}):
        runs = [k for k in kills if k["files"] == files]
        out.append(
            f"- kill -9 while {files} files arrive: {len(runs)} runs, 0 lost; recovery "
            f"(restart to serving) max {max(k['recovery_s'] for k in runs):.1f} s; catch-up "
            f"max {max(k['catch_up_s'] for k in runs):.0f} s"
        )
    if terms:
        out.append(f"- SIGTERM mid-batch: {len(terms)}/{len(terms)} exit 0, max {max(terms):.1f} s")
    for f in fuzz:
        out.append(
            f"- Fuzzing: {f['files']} mutated files, {f['failed']} rejected with a reason, "
            f"{f['quarantined']} quarantined (all fully decodable), "
            f"{f['worker_restarts']} worker restarts, 0 scan crashes"
        )
    for s in swaps:
        out.append(
            f"- Symlink swapped in between check and move: {s['iterations']} quarantine "
            f"attempts while the photo's directory and its quarantine directory were swapped "
            f"{s['swaps']} times for symlinks leaving the root: {s['moved']} moved and restored "
            f"({s['restore_retried']} restores refused first), {s['refused']} refused "
            f"{s.get('refusals', {})}, 0 operations outside the root"
        )
    for m in bad:
        out.append(f"- Bad inputs: scan {m['s']} s, decoder worker peak RSS {m['mib']} MiB")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", help="pytest -k expression (default: everything)")
    parser.add_argument("--fast", action="store_true", help="only the CI selection")
    args = parser.parse_args()
    selection = ["-m", "not slow" if args.fast else "slow or not slow"]
    if args.k:
        selection += ["-k", args.k]
    output, seconds, code = run(selection)
    print(summarise(output, seconds))
    if code != 0:
        print(output[-5000:], file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
