"""The running daemon under a steady stream of arriving photos: throughput, latency, memory.

Run: ``python bench/daemon_bench.py [--set library|crops] [--count 2000]``. The default set,
``library`` (bench/library_set.py), is a NAS-like stream: distinct real photos and about 15 %
copies of files that arrived earlier; the first run fetches the accuracy benchmark's source
packages into ``bench/.cache/`` and cuts the set (several minutes). ``crops``
(bench/crop_set.py) is a stress set of overlapping crops of 23 wallpapers that makes nearly
every file a verification case. Two runs of ``dupwatch run``, each on an empty root and a fresh
state directory, feed the files in the set's order:

1. throughput: files arrive faster than the daemon can take them (twice the reference rate);
   sustained files/s = decisions per second between the first and the last decision;
2. latency: files arrive at half the sustained rate; latency = from the moment a file is closed
   to the timestamp of its ``file_processed`` line (settling included).

A run waits at most ``--drain`` seconds after its last file for the remaining decisions, then
reports what it received and how many files were left undecided. Peak RSS is sampled from /proc
for the daemon and its worker together. The reference rate is the embedding pipeline alone
(read_file -> decode_image -> perceptual_hash -> embed, one thread) on the same files, measured
in this run under the same load. Writes the "Daemon" section of ``bench/RESULTS.md`` and prints
it (``--no-write``: print only).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from crop_set import crop_set  # noqa: E402
from daemon_report import check_decisions, section  # noqa: E402
from library_set import Item, composition, library_stream  # noqa: E402
from photo_sets import CACHE  # noqa: E402
from results import write_section  # noqa: E402

SIZES = {"2mp": (1600, 1200), "12mp": (4000, 3000)}
ONE_THREAD = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


# --- reference: the embedding pipeline alone ------------------------------------------------

_REFERENCE = """
import sys, time, json
from pathlib import Path
from dupwatch.embedder import load_embedder
from dupwatch.images import decode_image, read_file
from dupwatch.phash import perceptual_hash
files = [Path(p) for p in json.loads(sys.argv[1])]
e = load_embedder("auto", threads=1, cache_dir=Path(sys.argv[2]))
def one(p):
    d = decode_image(read_file(p), working_size=512)
    perceptual_hash(d.pixels)
    e.embed([d.pixels])
one(files[0])
t = time.perf_counter()
for p in files:
    one(p)
print(len(files) / (time.perf_counter() - t))
"""


def reference_rate(files: list[Path], model_cache: Path) -> float:
    done = subprocess.run(
        [sys.executable, "-c", _REFERENCE, json.dumps([str(f) for f in files]), str(model_cache)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **ONE_THREAD},
    )
    return float(done.stdout.strip().splitlines()[-1])


def results_md_rate(size: str) -> float | None:
    """The 1-core end-to-end images/s the Embedding section reports for this set, if any."""
    path = HERE / "RESULTS.md"
    if not path.exists():
        return None
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0] == size:
            try:
                return float(cells[1])
            except ValueError:
                return None
    return None


# --- one daemon run ----------------------------------------------------------------------------


class RssSampler:
    """Peak resident memory of a process and its children, summed, sampled from /proc; and
    the CPU seconds each kind of process used (the last reading of each process, summed)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_total_mb = 0.0
        self.peak_mb: dict[str, float] = {}
        self._cpu: dict[int, tuple[str, float]] = {}
        self._cpu_at_mark: dict[str, float] = {}
        self._tick = os.sysconf("SC_CLK_TCK")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _tree(self) -> list[int]:
        pids, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            pids.append(pid)
            try:
                for task in Path(f"/proc/{pid}/task").iterdir():
                    children = (task / "children").read_text().split()
                    todo += [int(c) for c in children]
            except OSError:
                pass
        return pids

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            total = 0.0
            for pid in self._tree():
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                rss = next(
                    (
                        int(row.split()[1]) / 1024
                        for row in status.splitlines()
                        if row.startswith("VmRSS")
                    ),
                    0.0,
                )
                name = (
                    "worker"
                    if b"multiprocessing" in cmd
                    else "daemon"
                    if pid == self.pid
                    else "other"
                )
                self.peak_mb[name] = max(self.peak_mb.get(name, 0.0), rss)
                total += rss
                self._cpu[pid] = (name, (int(stat[11]) + int(stat[12])) / self._tick)
            self.peak_total_mb = max(self.peak_total_mb, total)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def mark(self) -> None:
        """Count CPU from now on (start-up, the model loading, is left out)."""
        time.sleep(0.5)  # at least one fresh sample
        self._cpu_at_mark = self._totals()

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds by kind of process ("daemon", "worker", "other") since ``mark``."""
        return {k: v - self._cpu_at_mark.get(k, 0.0) for k, v in self._totals().items()}

    def _totals(self) -> dict[str, float]:
        used: dict[str, float] = {}
        for name, seconds in list(self._cpu.values()):
            used[name] = used.get(name, 0.0) + seconds
        return used


def _timestamp(event: dict[str, Any]) -> float:
    return dt.datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


def run_daemon(
    files: list[Path], rate: float, settle: float, work: Path, drain: float, workers: int = 0
) -> dict[str, Any]:
    """Feed ``files`` at ``rate`` per second into a fresh daemon; decisions and timings.

    Waits at most ``drain`` seconds after the last file for the decisions still due, and never
    raises for missing ones: the result says how many files were left undecided and why.
    """
    root, state = work / "photos", work / "state"
    shutil.rmtree(work, ignore_errors=True)
    root.mkdir(parents=True)
    config = work / "config.toml"
    config.write_text(
        f'[watch]\nsettle_seconds = {settle}\nrescan_interval = "6h"\n[log]\nformat = "json"\n'
        f"[model]\nworkers = {workers}\n"
    )
    # Share the model cache so each run starts from a converted model, as a service does.
    models = state / "models"
    models.parent.mkdir(parents=True)
    shutil.copytree(CACHE / "daemon-bench-models", models, dirs_exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "dupwatch.cli", "--config", str(config), "--state-dir", str(state),
         "run", str(root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )  # fmt: skip
    decided: dict[str, dict[str, Any]] = {}
    started = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") in ("file_processed", "file_failed"):
                decided.setdefault(event["path"], event)
            elif event.get("event") == "daemon_started":
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    sampler = RssSampler(proc.pid)
    closed: dict[str, float] = {}
    ended = "all decided"
    try:
        if not started.wait(300):
            raise SystemExit("the daemon did not start")
        sampler.mark()
        begin = time.monotonic()
        for i, source in enumerate(files):
            delay = begin + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            # The source's suffix, so PNG copies arrive as .png files.
            target = root / f"IMG_{i:05d}{source.suffix}"
            target.write_bytes(source.read_bytes())
            closed[str(target)] = time.time()
            if proc.poll() is not None:
                break
        deadline = time.monotonic() + drain
        while len(decided.keys() & closed.keys()) < len(closed):
            if proc.poll() is not None:
                ended = f"the daemon exited with {proc.returncode}"
                break
            if time.monotonic() > deadline:
                ended = f"stopped waiting {drain:.0f} s after the last file"
                break
            time.sleep(0.2)
    finally:
        sampler.stop()
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
        reader.join(timeout=10)
    mine = {p: decided[p] for p in closed if p in decided}
    stamps = sorted(_timestamp(e) for e in mine.values())
    latencies = sorted(_timestamp(e) - closed[p] for p, e in mine.items())
    return {
        "files": len(files),
        "decided": len(mine),
        "missing": len(files) - len(mine),
        "ended": ended,
        "paths": [str(root / f"IMG_{i:05d}{f.suffix}") for i, f in enumerate(files)],
        "events": mine,
        "offered_rate": rate,
        "sustained": (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else None,
        "latency": {q: np.percentile(latencies, q) for q in (50, 95, 99)} if latencies else None,
        "tiers": Counter(e["tier"] for e in mine.values()),
        "processing_ms": statistics.median(e["duration_ms"] for e in mine.values())
        if mine
        else None,
        "rss_total": sampler.peak_total_mb,
        "rss": dict(sampler.peak_mb),
        "cpu": sampler.cpu_seconds(),
    }


def _warm_model_cache() -> Path:
    from dupwatch.embedder import load_embedder

    cache = CACHE / "daemon-bench-models"
    load_embedder("auto", threads=1, cache_dir=cache)
    return cache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", choices=("library", "crops"), default="library")
    parser.add_argument("--count", type=int, default=2000, help="photos per run")
    parser.add_argument("--size", choices=sorted(SIZES), default="2mp")
    parser.add_argument("--settle", type=float, default=0.5, help="settle_seconds")
    parser.add_argument(
        "--drain", type=float, default=600, help="seconds to wait for decisions after the last file"
    )
    parser.add_argument(
        "--workers", type=int, default=0, help="[model] workers (0: the default, one per core)"
    )
    parser.add_argument("--no-write", action="store_true", help="print, do not edit RESULTS.md")
    args = parser.parse_args()
    width, height = SIZES[args.size]
    items: list[Item] = []
    held: dict[str, Any] | None = None
    if args.set == "library":
        stream = library_stream(args.count, (width, height))
        files, items, held = stream.files, list(stream.items), composition(stream)
    else:
        files = crop_set(args.count, (width, height))
    models = _warm_model_cache()
    load = os.getloadavg()[0]  # other work on the machine skews every figure
    reference_files = files[:300]
    reference = reference_rate(reference_files, models)
    print(f"reference {reference:.1f} images/s", flush=True)
    work = Path(tempfile.mkdtemp(prefix="dupwatch-daemon-bench-"))
    try:
        fast = run_daemon(
            files, 2 * reference, args.settle, work / "throughput", args.drain, args.workers
        )
        print(f"throughput {fast['sustained'] or 0:.1f} files/s", flush=True)
        # Half the sustained rate; a floor keeps a run that decided almost nothing finite.
        slow_rate = max((fast["sustained"] or 0.0) / 2, 0.2)
        slow = run_daemon(files, slow_rate, args.settle, work / "latency", args.drain, args.workers)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if items:
        fast["check"] = check_decisions(items, fast["paths"], fast["events"])
    text = section(
        {
            "set": args.set,
            "count": args.count,
            "when": dt.date.today().isoformat(),
            "load": load,
            "size": args.size,
            "dims": f"{width} x {height}",
            "settle": args.settle,
            "workers": args.workers,
            "drain": args.drain,
            "reference": reference,
            "reference_files": len(reference_files),
            "results_md": results_md_rate(args.size),
            "composition": held,
            "throughput": fast,
            "latency": slow,
        }
    )
    print(text)
    if not args.no_write:
        write_section("Daemon", text)


if __name__ == "__main__":
    main()
