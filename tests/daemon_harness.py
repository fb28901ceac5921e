"""``dupwatch run`` in a subprocess for end-to-end tests: config, JSON log lines, photos.

The daemon runs exactly as installed (``python -m dupwatch.cli``), or through
``daemon_crash_child.py`` when a test wants it killed at a chosen step. Its stdout (JSON lines
from the daemon and its worker) is read by a thread into a list the test can wait on.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import skimage.data

from dupwatch.statepaths import database_path
from dupwatch.store import Store

CRASH_CHILD = Path(__file__).with_name("daemon_crash_child.py")

Event = dict[str, Any]


def write_config(
    path: Path,
    *,
    settle: float = 0.5,
    rescan: str = "1h",
    extra: str = "",
) -> Path:
    path.write_text(
        "[watch]\n"
        f"settle_seconds = {settle}\n"
        f'rescan_interval = "{rescan}"\n'
        "[decode]\n"
        'worker_timeout = "30s"\n'
        "[log]\n"
        'format = "json"\n' + extra
    )
    return path


def rgb_photo(name: str) -> np.ndarray:
    """A scikit-image sample photo as an RGB array."""
    image = getattr(skimage.data, name)()
    return image[0] if isinstance(image, tuple) else image


def jpeg(rgb: np.ndarray, quality: int = 92) -> bytes:
    ok, data = cv2.imencode(
        ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    assert ok
    return data.tobytes()


def png(rgb: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return data.tobytes()


class DaemonProcess:
    """One ``dupwatch run``; ``events`` fills as it logs. Always ``close()`` it in finally."""

    def __init__(
        self,
        state_dir: Path,
        config: Path,
        roots: Sequence[Path],
        *,
        crash_at: str | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.events: list[Event] = []
        self.raw: list[str] = []
        self._lock = threading.Lock()
        argv = ["--config", str(config), "--state-dir", str(state_dir), "run", *map(str, roots)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if crash_at is None:
            command = [sys.executable, "-m", "dupwatch.cli", *argv]
        else:
            command = [sys.executable, str(CRASH_CHILD), crash_at, *argv]
        self.proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._stderr: list[bytes] = []
        self._err_reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._err_reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            text = line.decode("utf-8", "replace").strip()
            with self._lock:
                self.raw.append(text)
                try:
                    event = json.loads(text)
                except ValueError:
                    continue
                if isinstance(event, dict):
                    self.events.append(event)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line)

    @property
    def stderr(self) -> str:
        return b"".join(self._stderr).decode("utf-8", "replace")

    def snapshot(self) -> list[Event]:
        with self._lock:
            return list(self.events)

    def named(self, event: str, path: Path | None = None) -> list[Event]:
        return [
            e
            for e in self.snapshot()
            if e.get("event") == event and (path is None or e.get("path") == str(path))
        ]

    def outcomes(self, path: Path) -> list[Event]:
        """The ``file_processed`` and ``file_failed`` lines for ``path``, in order."""
        return [
            e
            for e in self.snapshot()
            if e.get("event") in ("file_processed", "file_failed") and e.get("path") == str(path)
        ]

    def wait_for(
        self, condition: Callable[[], Any], timeout: float = 60.0, what: str = "condition"
    ) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = condition()
            if result:
                return result
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"the daemon exited ({self.proc.returncode}) while waiting for {what}\n"
                    + "\n".join(self.raw[-20:])
                    + self.stderr[-3000:]
                )
            time.sleep(0.05)
        raise AssertionError(
            f"timed out after {timeout} s waiting for {what}\n" + "\n".join(self.raw[-20:])
        )

    def wait_started(self, timeout: float = 120.0) -> None:
        self.wait_for(lambda: self.named("daemon_started"), timeout, "daemon_started")

    def wait_outcome(self, path: Path, count: int = 1, timeout: float = 60.0) -> Event:
        found = self.wait_for(
            lambda: len(self.outcomes(path)) >= count and self.outcomes(path),
            timeout,
            f"outcome {count} for {path}",
        )
        return found[count - 1]

    def stop(self, timeout: float = 10.0) -> tuple[int, float]:
        """SIGTERM; (exit code, seconds it took). Fails the test if it takes longer."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        return code, time.monotonic() - started

    def wait_exit(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self._reader.join(timeout=10)
        self._err_reader.join(timeout=10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def open_store(state_dir: Path) -> Store:
    """The daemon's database; only read from it in tests."""
    return Store.open(database_path(state_dir))


def files_on_disk(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
