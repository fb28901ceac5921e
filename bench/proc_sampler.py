"""Resident memory, threads and open file descriptors of a process and its children, over time.

A sample is taken every few seconds from /proc: the process itself and every descendant
(analysis workers, a snapshot builder while it runs, multiprocessing's resource tracker), each
tagged "daemon" for the process itself and "children" for the rest, so a pool of workers is
measured as a whole whatever its size.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, slots=True)
class ProcStats:
    rss_mib: float
    threads: int
    fds: int
    # Anonymous memory (heap, arrays) apart from file-backed pages (libraries, mmapped
    # snapshots), which the kernel can drop and re-read: a leak shows in the first.
    rss_anon_mib: float = 0.0
    # Descriptors of search-index snapshot files (``snapshot-*.ann``): Annoy keeps the one it
    # searches open for as long as it is loaded, so one appears with the first snapshot.
    snapshot_fds: int = 0


@dataclass(frozen=True, slots=True)
class Sample:
    wall: float  # time.time(), to line samples up with the daemon's log
    elapsed_s: float
    progress: int  # whatever the caller counts (files processed so far)
    daemon: ProcStats
    children: ProcStats
    child_count: int


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (children of children too)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = list(Path(f"/proc/{parent}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            found += children
            todo += children
    return found


def proc_stats(pid: int) -> ProcStats | None:
    """One process's figures, or None if it is gone (or went while being read)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        links = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return None
    fds, snapshot_fds = len(links), 0
    for link in links:
        try:
            name = link.readlink().name
        except OSError:
            continue  # closed meanwhile
        snapshot_fds += name.startswith("snapshot-") and name.endswith(".ann")
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    try:
        rss_kib = int(fields["VmRSS"].split()[0])
        anon_kib = int(fields["RssAnon"].split()[0])
        threads = int(fields["Threads"])
    except (KeyError, ValueError, IndexError):
        return None  # a zombie has no VmRSS
    return ProcStats(rss_kib / 1024, threads, fds, anon_kib / 1024, snapshot_fds)


def _sum(stats: list[ProcStats]) -> ProcStats:
    return ProcStats(
        sum(s.rss_mib for s in stats),
        sum(s.threads for s in stats),
        sum(s.fds for s in stats),
        sum(s.rss_anon_mib for s in stats),
        sum(s.snapshot_fds for s in stats),
    )


@dataclass
class Sampler:
    """Samples ``pid`` and its descendants every ``every`` seconds in a thread; ``stop()`` it."""

    pid: int
    progress: Callable[[], int]
    every: float = 5.0
    samples: list[Sample] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="proc-sampler", daemon=True)
        self._thread.start()

    def take(self) -> Sample | None:
        own = proc_stats(self.pid)
        if own is None:
            return None
        children = [s for c in descendants(self.pid) if (s := proc_stats(c)) is not None]
        sample = Sample(
            time.time(),
            time.monotonic() - self._started,
            self.progress(),
            own,
            _sum(children),
            len(children),
        )
        self.samples.append(sample)
        return sample

    def _run(self) -> None:
        while not self._stop.is_set():
            self.take()
            self._stop.wait(self.every)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
