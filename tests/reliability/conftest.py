"""Shared pieces of the reliability suite: real photos, a config, the daemon in a subprocess."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from photos import encode, photo, write

from dupwatch.statepaths import model_cache_dir

CONFIG = """
[watch]
settle_seconds = {settle}
[decode]
worker_timeout = "30s"
[log]
format = "json"
"""


@dataclass
class Home:
    """A scenario's library root, state directory and configuration file."""

    root: Path
    state: Path
    config: Path

    def cli(
        self, *args: str, timeout: float = 300, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.argv(), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **kwargs,
        )

    def argv(self) -> list[str]:
        return [
            sys.executable, "-m", "dupwatch.cli",
            "--state-dir", str(self.state), "--config", str(self.config),
        ]  # fmt: skip

    def start_daemon(self, *extra: str) -> subprocess.Popen[bytes]:
        log = (self.state.parent / "daemon.log").open("ab")
        try:
            return subprocess.Popen(
                [*self.argv(), "run", *extra, str(self.root)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()

    def log_text(self) -> str:
        path = self.state.parent / "daemon.log"
        return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The exported model, made once, so every state directory starts with it cached."""
    home = tmp_path_factory.mktemp("model-home")
    (home / "lib").mkdir()
    write(home / "lib" / "one.jpg", encode(photo(0)))
    done = subprocess.run(
        [sys.executable, "-m", "dupwatch.cli", "--state-dir", str(home / "state"), "scan",
         str(home / "lib")],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return model_cache_dir(home / "state")


@pytest.fixture
def make_home(tmp_path: Path, model_cache: Path) -> Callable[..., Home]:
    def make(name: str = "home", *, settle: float = 0.3, config_extra: str = "") -> Home:
        base = tmp_path / name
        root, state = base / "photos", base / "state"
        root.mkdir(parents=True)
        state.mkdir()
        shutil.copytree(model_cache, model_cache_dir(state))
        config = base / "config.toml"
        config.write_text(CONFIG.format(settle=settle) + config_extra)
        return Home(root, state, config)

    return make


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30) -> int:
    """Signal a daemon and wait for it; kill it if it does not go."""
    if process.poll() is None:
        process.send_signal(sig)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)
        raise


def wait_for(predicate: Callable[[], bool], timeout: float, every: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return predicate()


@pytest.fixture
def daemons() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Daemons a test starts; any still running at the end are killed."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for process in started:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
