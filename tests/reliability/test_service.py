"""The service as systemd runs it: SIGTERM mid-batch, concurrent CLI use, refusing to start.

- SIGTERM while files are being processed: exit 0 within 10 s, the file in flight finished or
  rolled back (the audit after each run proves it).
- The CLI reading for a long time while the daemon ingests, and ``restore`` while it writes:
  no write fails and "database is locked" never reaches the user.
- A bad config, an unusable state directory or a CPU the chosen runtime cannot use: exit 78
  with one clear ``error:`` line.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from audit import Baseline, audit
from conftest import Home, stop, wait_for
from photos import encode, mixed_files, photo, write

from dupwatch.records import JournalState
from dupwatch.statepaths import database_path
from dupwatch.store import Store

STOP_LIMIT_S = 10.0
CI_SIGTERM_RUNS = 5  # about 6 s each; the long bench runs 20


def _started(home: Home, daemon: subprocess.Popen[bytes], count: int = 1) -> None:
    assert wait_for(
        lambda: home.log_text().count('"daemon_started"') >= count or daemon.poll() is not None,
        60,
    )
    assert daemon.poll() is None, home.log_text()[-3000:]


def sigterm_run(home: Home, daemons: list[subprocess.Popen[bytes]], seed: int) -> float:
    """Stop the daemon with SIGTERM while 40 files are being processed; returns seconds."""
    rng = random.Random(seed)
    daemon = home.start_daemon()
    daemons.append(daemon)
    _started(home, daemon)
    baseline = Baseline()
    for name, data in mixed_files(40, 100 + seed):
        baseline.add(write(home.root / name, data))
    # Wait until processing is under way, then stop at a random moment within it.
    assert wait_for(lambda: '"file_processed"' in home.log_text(), 60), home.log_text()[-2000:]
    time.sleep(rng.uniform(0, 1.5))
    asked = time.monotonic()
    daemon.send_signal(signal.SIGTERM)
    try:
        code = daemon.wait(timeout=STOP_LIMIT_S)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"no exit within {STOP_LIMIT_S} s") from None
    took = time.monotonic() - asked
    assert code == 0, home.log_text()[-3000:]
    assert '"daemon_stopped"' in home.log_text()
    audit(baseline, [home.root], home.state)
    return took


@pytest.mark.parametrize("seed", range(CI_SIGTERM_RUNS))
def test_sigterm_mid_batch_exits_0_within_10_s_and_keeps_every_file(
    make_home: Callable[..., Home], daemons: list[subprocess.Popen[bytes]], seed: int
) -> None:
    took = sigterm_run(make_home(), daemons, seed)
    print(f"SIGTERM run {seed}: exit 0 after {took:.1f} s")


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(20))
def test_sigterm_mid_batch_long(
    make_home: Callable[..., Home], daemons: list[subprocess.Popen[bytes]], seed: int
) -> None:
    took = sigterm_run(make_home(), daemons, seed)
    print(f"SIGTERM run {seed}: exit 0 after {took:.1f} s")


def test_a_long_cli_read_and_concurrent_restores_never_see_a_locked_database(
    make_home: Callable[..., Home], daemons: list[subprocess.Popen[bytes]]
) -> None:
    home = make_home()
    # A library with some duplicates already quarantined, to restore while the daemon works.
    keepers = [write(home.root / "old" / f"k{i}.jpg", encode(photo(200 + i))) for i in range(6)]
    copies = [write(home.root / "old" / f"c{i}.jpg", k.read_bytes()) for i, k in enumerate(keepers)]
    baseline = Baseline.take([*keepers, *copies])
    assert home.cli("scan", str(home.root)).returncode == 0
    daemon = home.start_daemon()
    daemons.append(daemon)
    _started(home, daemon)

    reader = sqlite3.connect(database_path(home.state), isolation_level=None)
    outputs: list[subprocess.CompletedProcess[str]] = []
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM files").fetchone()  # a read snapshot, held
        for name, data in mixed_files(60, 7):
            baseline.add(write(home.root / "new" / name, data))
        with Store.open(database_path(home.state)) as store:
            entries = store.journal_entries([JournalState.DONE])
        for entry in entries:
            outputs.append(home.cli("restore", str(entry.id)))
            outputs.append(home.cli("status"))
            outputs.append(home.cli("quarantine", "list", "--json"))
        # Every arrival is processed while the reader still holds its snapshot.
        assert wait_for(lambda: home.log_text().count('"file_processed"') >= 60, 300)
        reader.execute("SELECT count(*) FROM decisions").fetchone()
    finally:
        reader.execute("COMMIT")
        reader.close()
    for done in outputs:
        assert done.returncode == 0, done.stderr[-2000:]
        assert "database is locked" not in done.stdout + done.stderr
    # The reader has gone: the next checkpoint can copy the whole log back.
    write(home.root / "after.jpg", encode(photo(230)))
    assert wait_for(lambda: "after.jpg" in home.log_text(), 600), home.log_text()[-2000:]
    with sqlite3.connect(database_path(home.state)) as conn:
        busy, log_frames, done_frames = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    assert busy == 0 and log_frames == done_frames
    assert stop(daemon) == 0
    assert "database is locked" not in home.log_text()
    restored = [json.loads(o.stdout.splitlines()[0]) for o in outputs[2::3] if o.stdout]
    assert all("id" in r for r in restored)
    for entry in entries:
        baseline.forget(entry.original_path)  # restored: back at its place, then judged anew
        baseline.add(entry.original_path)
    audit(baseline, [home.root], home.state)


# --- refusing to start ------------------------------------------------------------------------

SIMULATED_OLD_CPU = """
import dupwatch.cpu as cpu
cpu.detect_cpu = lambda: cpu.CpuInfo("x86_64", False, ("no AVX (simulated)",))
"""


def _refused(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 78, (done.returncode, done.stderr[-2000:])
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) >= 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    return errors[0]


def test_a_bad_config_exits_78_naming_each_problem(make_home: Callable[..., Home]) -> None:
    home = make_home()
    home.config.write_text("[watch]\nsettle_secnds = 1\n[policy]\nsimilar_threshold = 1.5\n")
    done = home.cli("run", str(home.root), timeout=60)
    assert done.returncode == 78
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and "settle_secnds" in errors[0] + errors[1], done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("how", ["a file", "read-only", "missing parent is a file"])
def test_an_unusable_state_directory_exits_78_with_one_line(
    make_home: Callable[..., Home], tmp_path: Path, how: str
) -> None:
    home = make_home()
    state = tmp_path / "bad-state"
    if how == "a file":
        state.write_text("not a directory")
    elif how == "read-only":
        state.mkdir()
        if os.geteuid() == 0:
            done = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(state)], check=False
            )
            if done.returncode != 0:
                pytest.skip("cannot mount a read-only filesystem here (root ignores modes)")
        else:
            state.chmod(0o500)
    else:
        (tmp_path / "plain").write_text("x")
        state = tmp_path / "plain" / "state"
    try:
        argv = [sys.executable, "-m", "dupwatch.cli", "--state-dir", str(state)]
        done = subprocess.run(
            [*argv, "--config", str(home.config), "run", str(home.root)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        line = _refused(done)
        assert str(state) in line
    finally:
        if how == "read-only" and os.geteuid() == 0:
            subprocess.run(["umount", str(state)], check=False)


def test_a_cpu_the_chosen_runtime_cannot_use_exits_78_with_one_line(
    make_home: Callable[..., Home], tmp_path: Path
) -> None:
    home = make_home(config_extra='[model]\nbackend = "tensorflow"\n')
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(SIMULATED_OLD_CPU)
    env = {**os.environ, "PYTHONPATH": f"{shim}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = home.cli("run", str(home.root), timeout=300, env=env)
    line = _refused(done)
    assert "CPU" in line and "onnxruntime" in line, line
