"""The command line as a user meets it: output contracts, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data

from dupwatch.cli import main

JSON_KEYS = {"path", "tier", "duplicate_of", "similarity", "action", "reason"}


def dupwatch(*args: str, state: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dupwatch.cli", "--state-dir", str(state), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    root.mkdir()
    for name in ("astronaut", "coffee", "rocket"):
        rgb = getattr(data, name)()
        cv2.imwrite(str(root / f"{name}.jpg"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    shutil.copy(root / "coffee.jpg", root / "coffee (1).jpg")
    small = cv2.resize(data.astronaut(), (256, 256), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(root / "sent.jpg"), cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
    (root / "notes.jpg").write_text("not a photo\n")
    return root


def test_scan_json_prints_one_object_per_file_and_nothing_else(
    tmp_path: Path, photos: Path
) -> None:
    before = sorted(p.name for p in photos.iterdir())
    done = dupwatch("scan", "--dry-run", "--json", str(photos), state=tmp_path / "state")
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert all(row.keys() >= JSON_KEYS for row in rows)
    by_name = {Path(row["path"]).name: row for row in rows}
    assert set(by_name) == set(before)
    # "coffee (1).jpg" sorts first; when the older original arrives, the newer copy is moved.
    assert by_name["coffee (1).jpg"]["tier"] == "unique"
    assert by_name["coffee.jpg"]["tier"] == "exact"
    assert Path(by_name["coffee.jpg"]["moved"]).name == "coffee (1).jpg"
    assert by_name["sent.jpg"]["tier"] == "duplicate"
    assert Path(by_name["sent.jpg"]["duplicate_of"]).name == "astronaut.jpg"
    assert by_name["notes.jpg"]["tier"] == "failed"
    assert by_name["notes.jpg"]["reason"] == "not_an_image"
    assert by_name["rocket.jpg"]["tier"] == "unique"
    # A dry run changes nothing on disk, and the summary goes to stderr.
    assert sorted(p.name for p in photos.iterdir()) == before
    assert "would be quarantined" in done.stderr


def test_scan_then_quarantine_list_and_restore(tmp_path: Path, photos: Path) -> None:
    state = tmp_path / "state"
    scanned = dupwatch("scan", str(photos), state=state)
    assert scanned.returncode == 0, scanned.stderr
    assert "2 quarantined" in scanned.stdout
    listed = dupwatch("quarantine", "list", "--json", state=state)
    entries = [json.loads(line) for line in listed.stdout.splitlines()]
    assert {Path(e["original_path"]).name for e in entries} == {"coffee (1).jpg", "sent.jpg"}
    copy = next(e for e in entries if e["original_path"].endswith("coffee (1).jpg"))
    assert Path(copy["duplicate_of"]).name == "coffee.jpg"
    restored = dupwatch("restore", str(copy["id"]), state=state)
    assert restored.returncode == 0, restored.stderr
    assert (photos / "coffee (1).jpg").read_bytes() == (photos / "coffee.jpg").read_bytes()
    again = dupwatch("restore", str(copy["id"]), state=state)
    assert again.returncode == 1
    assert again.stderr.splitlines()[-1].startswith("error: ")
    report = dupwatch("report", state=state)
    assert "sent.jpg" in report.stdout


def test_bad_config_exits_78_with_one_line_per_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[policy]\nkeep = 'newest'\n[watch]\nroots = ['/no/such/dir']\n")
    code = main(["--config", str(config), "--state-dir", str(tmp_path / "s"), "config", "check"])
    assert code == 78
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "[policy] keep" in err[0]
    config.write_text("[watch]\nroots = ['/no/such/dir']\n")
    assert main(["--config", str(config), "config", "check"]) == 78
    assert "not an existing directory" in capsys.readouterr().err


def test_run_without_roots_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--state-dir", str(tmp_path / "s"), "run"]) == 78
    assert "no roots to watch" in capsys.readouterr().err


def test_status_before_the_first_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    state.mkdir()
    assert main(["--state-dir", str(state), "status"]) == 0
    assert "has not run here" in capsys.readouterr().out


def test_unwritable_state_dir_is_reported_with_exit_78(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["--state-dir", str(blocker / "state"), "scan", str(tmp_path)]) == 78
    assert "state directory" in capsys.readouterr().err


def test_usage_errors_exit_2() -> None:
    with pytest.raises(SystemExit) as caught:
        main(["frobnicate"])
    assert caught.value.code == 2


def test_check_explains_a_decision(tmp_path: Path, photos: Path) -> None:
    state = tmp_path / "state"
    assert dupwatch("scan", str(photos / "astronaut.jpg"), state=state).returncode == 0
    small = photos / "sent.jpg"
    done = dupwatch("check", str(small), state=state)
    assert done.returncode == 0, done.stderr
    assert "astronaut.jpg" in done.stdout
    assert "decision: duplicate" in done.stdout
    assert small.exists()


def test_non_utf8_names_are_escaped_in_listings(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    root.mkdir()
    rgb = np.ascontiguousarray(data.coffee()[..., ::-1])
    cv2.imwrite(str(root / "a.jpg"), rgb)
    odd = Path(os.fsdecode(os.fsencode(root) + b"/caf\xe9\nevil.jpg"))
    shutil.copy(root / "a.jpg", odd)
    state = tmp_path / "state"
    assert dupwatch("scan", str(root), state=state).returncode == 0
    listed = dupwatch("quarantine", "list", state=state)
    assert "caf\\xe9\\x0aevil.jpg" in listed.stdout


def test_forget_missing_accepts_deleted_files(tmp_path: Path, photos: Path) -> None:
    state = tmp_path / "state"
    assert dupwatch("scan", str(photos), state=state).returncode == 0
    (photos / "rocket.jpg").unlink()
    done = dupwatch("forget-missing", str(photos), state=state)
    assert done.returncode == 0, done.stderr
    assert "1 missing file(s)" in done.stdout
    from dupwatch.records import FileStatus
    from dupwatch.runtime import open_store

    store = open_store(state)
    try:
        record = store.file_by_path(photos / "rocket.jpg")
        assert record is not None and record.status is FileStatus.GONE
        kept = store.file_by_path(photos / "astronaut.jpg")
        assert kept is not None and kept.status is FileStatus.INDEXED
    finally:
        store.close()


def test_the_command_runs_numerical_libraries_on_one_thread(tmp_path: Path) -> None:
    """A spinning BLAS thread per core in the daemon would take a core from the workers."""
    probe = (
        "import sys\n"
        "from dupwatch.cli import main\n"
        f"main(['--state-dir', {str(tmp_path)!r}, 'config', 'check'])\n"
        "import numpy, threadpoolctl\n"
        "numpy.ones((64, 64)) @ numpy.ones((64, 64))\n"
        "blas = [p['num_threads'] for p in threadpoolctl.threadpool_info()"
        " if p['user_api'] == 'blas']\n"
        "print(max(blas))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == "1"
