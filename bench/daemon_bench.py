"""The running daemon under a steady stream of arriving photos: throughput, latency, memory.

Run: ``python bench/daemon_bench.py`` (first run fetches Debian wallpaper packages into
``bench/.cache/`` through bench/photo_sets.py and cuts the photo set from them). Two runs of
``dupwatch run``, each on an empty root and a fresh state directory:

1. throughput: files arrive faster than the daemon can take them (twice the reference rate);
   sustained files/s = decisions per second between the first and the last decision;
2. latency: files arrive at half the sustained rate; latency = from the moment a file is closed
   to the timestamp of its ``file_processed`` line (settling included).

Peak RSS is sampled from /proc for the daemon and its worker together. The reference rate is
the embedding pipeline alone (read_file -> decode_image -> perceptual_hash -> embed, one
thread) on the same files, measured in this run under the same load. Writes the "Daemon"
section of ``bench/RESULTS.md`` and prints it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from photo_sets import CACHE, PACKAGES, SOURCES, _to_4_3  # noqa: E402
from results import write_section  # noqa: E402

SIZES = {"2mp": (1600, 1200), "12mp": (4000, 3000)}
ONE_THREAD = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


# --- the photo set -----------------------------------------------------------------------------


SET_DIR = CACHE / "daemon-set"


def _sources() -> list[Path]:
    """photo_sets.py's wallpaper photographs, unpacked into this benchmark's own cache."""
    root = SET_DIR / "packages"
    done = root / ".unpacked"
    if not done.exists():
        debs = SET_DIR / "debs"
        debs.mkdir(parents=True, exist_ok=True)
        if not any(debs.glob("*.deb")):
            subprocess.run(["apt-get", "download", *PACKAGES], cwd=debs, check=True)
        for deb in sorted(debs.glob("*.deb")):
            subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
        done.touch()
    return [root / rel for rel in SOURCES]


def _variant(job: tuple[Path, int, int, tuple[int, int]]) -> None:
    """One crop of a source photo at phone size, with mild sensor-like noise."""
    source, _index, out_index, (width, height) = job
    out = SET_DIR / f"{width}x{height}" / f"{out_index:05d}.jpg"
    if out.exists():
        return
    rng = np.random.default_rng(out_index)
    bgr = cv2.imread(str(source), cv2.IMREAD_COLOR)
    if bgr is None:
        raise SystemExit(f"cannot read source photo {source}")
    h, w = bgr.shape[:2]
    # A window of 45-90 % of the photo's height at 4:3, anywhere in it, and sometimes upright.
    upright = rng.random() < 0.25
    ch = int(h * rng.uniform(0.45, 0.9))
    cw = min(w, int(ch * (3 / 4 if upright else 4 / 3)))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = bgr[y : y + ch, x : x + cw]
    size = (height, width) if upright else (width, height)
    photo = _to_4_3(crop, *size) if not upright else cv2.resize(crop, size, cv2.INTER_AREA)
    noisy = photo.astype(np.int16) + rng.normal(0, 2.5, photo.shape).astype(np.int16)
    quality = int(rng.integers(85, 95))
    cv2.imwrite(
        str(out), np.clip(noisy, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )


def photo_set(count: int, size: str) -> list[Path]:
    """``count`` distinct phone-sized JPEGs cut from the wallpaper photographs (cached)."""
    width, height = SIZES[size]
    folder = SET_DIR / f"{width}x{height}"
    folder.mkdir(parents=True, exist_ok=True)
    sources = _sources()
    jobs = [
        (sources[i % len(sources)], i // len(sources), i, (width, height)) for i in range(count)
    ]
    with Pool(2) as pool:
        pool.map(_variant, jobs, chunksize=16)
    return [folder / f"{i:05d}.jpg" for i in range(count)]


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
    """Peak resident memory of a process and its children, summed, sampled from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_total_mb = 0.0
        self.peak_mb: dict[str, float] = {}
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
            self.peak_total_mb = max(self.peak_total_mb, total)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _timestamp(event: dict[str, Any]) -> float:
    return dt.datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


def run_daemon(files: list[Path], rate: float, settle: float, work: Path) -> dict[str, Any]:
    """Feed ``files`` at ``rate`` per second into a fresh daemon; decisions and timings."""
    root, state = work / "photos", work / "state"
    shutil.rmtree(work, ignore_errors=True)
    root.mkdir(parents=True)
    config = work / "config.toml"
    config.write_text(
        f'[watch]\nsettle_seconds = {settle}\nrescan_interval = "6h"\n[log]\nformat = "json"\n'
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
    events: list[dict[str, Any]] = []
    started = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            events.append(event)
            if event.get("event") == "daemon_started":
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    sampler = RssSampler(proc.pid)
    closed: dict[str, float] = {}
    try:
        if not started.wait(300):
            raise SystemExit("the daemon did not start")
        begin = time.monotonic()
        for i, source in enumerate(files):
            delay = begin + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            target = root / f"IMG_{i:05d}.jpg"
            target.write_bytes(source.read_bytes())
            closed[str(target)] = time.time()
        deadline = time.monotonic() + 600 + len(files) / 2
        while time.monotonic() < deadline:
            done = {
                e["path"] for e in events if e.get("event") in ("file_processed", "file_failed")
            }
            if set(closed) <= done:
                break
            if proc.poll() is not None:
                raise SystemExit(f"the daemon exited with {proc.returncode}")
            time.sleep(0.2)
        else:
            raise SystemExit("timed out waiting for decisions")
    finally:
        sampler.stop()
        proc.terminate()
        proc.wait(timeout=30)
        reader.join(timeout=10)
    decided = {e["path"]: e for e in events if e.get("event") in ("file_processed", "file_failed")}
    stamps = sorted(_timestamp(e) for e in decided.values())
    latencies = sorted(_timestamp(decided[p]) - closed[p] for p in closed)
    return {
        "files": len(closed),
        "offered_rate": rate,
        "sustained": (len(stamps) - 1) / (stamps[-1] - stamps[0]),
        "latency": {q: np.percentile(latencies, q) for q in (50, 95, 99)},
        "tiers": Counter(e["tier"] for e in decided.values()),
        "processing_ms": statistics.median(e["duration_ms"] for e in decided.values()),
        "rss_total": sampler.peak_total_mb,
        "rss": dict(sampler.peak_mb),
    }


# --- report ------------------------------------------------------------------------------------


def _section(r: dict[str, Any]) -> str:
    fast, slow = r["throughput"], r["latency"]
    target_rate = 0.8 * r["reference"]
    peak_rss = max(fast["rss_total"], slow["rss_total"])
    lat = slow["latency"]
    tiers = ", ".join(f"{k} {v}" for k, v in sorted(fast["tiers"].items()))
    lines = [
        "## Daemon",
        "",
        f"Run of `python bench/daemon_bench.py` on {r['when']} ({platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}). **The machine was shared "
        "with other jobs while this ran**, so figures are conservative. Photos: "
        f"{fast['files']} distinct {r['size']} JPEGs ({r['dims']}, quality 85-94, mild noise), "
        "each a crop of one of the 23 photographic Debian wallpapers listed in "
        "bench/photo_sets.py "
        "(so neighbouring crops of one photo are often verified duplicates or similar, as "
        "bursts are in a real library). Each run is `dupwatch run` on an empty root with a fresh "
        f"state directory, default config except `settle_seconds = {r['settle']}` (the default "
        "5 s would put every latency above 5 s: a file is handed over only after a quiet "
        "settle period and a second identical stat sample), model threads 1.",
        "",
        "| run | offered files/s | sustained files/s | latency p50 / p95 / p99, s | "
        "median processing, ms | peak RSS daemon + worker, MB |",
        "|---|---|---|---|---|---|",
    ]
    for name, run in (("throughput", fast), ("latency", slow)):
        q = run["latency"]
        parts = " + ".join(f"{run['rss'].get(k, 0):.0f}" for k in ("daemon", "worker"))
        lines.append(
            f"| {name} | {run['offered_rate']:.1f} | {run['sustained']:.1f} | "
            f"{q[50]:.2f} / {q[95]:.2f} / {q[99]:.2f} | {run['processing_ms']:.0f} | "
            f"{run['rss_total']:.0f} ({parts}) |"
        )
    quoted = r["results_md"]
    quoted_text = (
        f"; the Embedding section above reports {quoted:.1f} on 1 core for its {r['size']} set"
        if quoted
        else ""
    )
    lines += [
        "",
        f"Decisions in the throughput run: {tiers}. Latency in the throughput run is queueing "
        "(files offered faster than they can be taken).",
        "",
        f"Reference: the embedding pipeline alone on the same files, one thread, in this run: "
        f"**{r['reference']:.1f} images/s**{quoted_text}.",
        "",
        f"Targets: sustained >= 80% of the reference ({target_rate:.1f} files/s): "
        f"{fast['sustained']:.1f} ({'met' if fast['sustained'] >= target_rate else 'NOT met'}); "
        f"p95 latency < 2 s at half that rate: {lat[95]:.2f} s "
        f"({'met' if lat[95] < 2 else 'NOT met'}); RSS < 1 GiB: {peak_rss:.0f} MB "
        f"({'met' if peak_rss < 1024 else 'NOT met'}).",
        "",
    ]
    return "\n".join(lines)


def _warm_model_cache() -> Path:
    from dupwatch.embedder import load_embedder

    cache = CACHE / "daemon-bench-models"
    load_embedder("auto", threads=1, cache_dir=cache)
    return cache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="photos per run")
    parser.add_argument("--size", choices=sorted(SIZES), default="2mp")
    parser.add_argument("--settle", type=float, default=0.5, help="settle_seconds")
    parser.add_argument("--no-write", action="store_true", help="print, do not edit RESULTS.md")
    args = parser.parse_args()
    files = photo_set(args.count, args.size)
    models = _warm_model_cache()
    reference = reference_rate(files[:300], models)
    print(f"reference {reference:.1f} images/s", flush=True)
    work = Path(tempfile.mkdtemp(prefix="dupwatch-daemon-bench-"))
    try:
        fast = run_daemon(files, 2 * reference, args.settle, work / "throughput")
        print(f"throughput {fast['sustained']:.1f} files/s", flush=True)
        slow = run_daemon(files, fast["sustained"] / 2, args.settle, work / "latency")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    width, height = SIZES[args.size]
    section = _section(
        {
            "when": dt.date.today().isoformat(),
            "size": args.size,
            "dims": f"{width} x {height}",
            "settle": args.settle,
            "reference": reference,
            "results_md": results_md_rate(args.size),
            "throughput": fast,
            "latency": slow,
        }
    )
    print(section)
    if not args.no_write:
        write_section("Daemon", section)


if __name__ == "__main__":
    main()
