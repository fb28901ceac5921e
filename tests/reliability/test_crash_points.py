"""Crash at every filesystem and database write of a whole pipeline run, then recover.

tests/test_quarantine.py crashes the quarantine module alone at every step. Here the crash
points are those of the complete flow a user runs: the pipeline recording an exact copy and
quarantining it (same filesystem, and across filesystems by an injected EXDEV), and the CLI's
``restore``. Each database statement that writes counts as a crash point as well as each disk
change, so the points between the journal, the files table and the rename are covered. After
each crash a fresh process recovers, reconciles once and audits every invariant.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from audit import Baseline, audit, run_scan
from faults import exdev_once, run_in_fork
from offline import model_id_of, offline_services, scan_offline
from photos import encode, photo, write

from dupwatch import fsops
from dupwatch.cli import main as cli_main
from dupwatch.config import Config
from dupwatch.records import JournalState
from dupwatch.statepaths import database_path
from dupwatch.store import Store
from dupwatch.store import base as store_base

CRASHED = 70
_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE", "COMMIT")
STAMP = 1_600_000_000_123_456_789


def _install_crash_at(k: int, store: Store | None = None) -> None:
    """Die (as abruptly as SIGKILL) at the k-th disk change or database write from now on,
    on ``store``'s connection and on every connection opened later."""
    seen = [0]

    def tick(_what: str) -> None:
        seen[0] += 1
        if seen[0] == k:
            os._exit(CRASHED)

    def on_sql(statement: str) -> None:
        if statement.lstrip().upper().startswith(_WRITES):
            tick(statement)

    real_connect = store_base.connect

    def connect(path: Path) -> sqlite3.Connection:
        conn = real_connect(path)
        conn.set_trace_callback(on_sql)
        return conn

    store_base.connect = connect  # type: ignore[assignment]  # in the forked child only
    if store is not None:
        store._conn.set_trace_callback(on_sql)
    fsops.set_fault_hook(tick)


class Scene:
    """A library with one known photo and a byte copy of it arriving, both with metadata.

    Built once per scenario at a fixed place and saved; each crash point starts from a fresh
    copy of the saved state at the same place, so the paths in the database stay true.
    """

    def __init__(self, base: Path, model_cache: Path, *, quarantined: bool) -> None:
        self.work, self.saved = base / "scene", base / "saved"
        self.root, self.state = self.work / "photos", self.work / "state"
        self.state.mkdir(parents=True)
        shutil.copytree(model_cache, self.state / "models")
        self.model_id = model_id_of(model_cache)
        self.config = Config()
        data = encode(photo(3))
        self.keeper = write(self.root / "keeper.jpg", data, mtime_ns=STAMP - 10**9)
        self.copy = write(self.root / "album" / "copy of keeper.jpg", data, mtime_ns=STAMP)
        self.copy.chmod(0o640)
        with contextlib.suppress(OSError):
            os.setxattr(self.copy, "user.dupwatch.test", b"kept \x00 bytes")
        self.bystander = write(self.root / "album" / "other.jpg", encode(photo(5)))
        self.baseline = Baseline.take([self.keeper, self.copy, self.bystander])
        hidden = self.copy.with_name(".hidden")
        self.copy.rename(hidden)  # the library as it was before the copy arrived
        run_scan(self.state, [self.root])  # the keeper and the bystander, really decoded
        hidden.rename(self.copy)
        if quarantined:
            with self.services() as services:
                result = services.pipeline.process(self.copy)
                assert result is not None and result.moved == self.copy
        self.work.rename(self.saved)  # the inodes the store recorded live on in ``saved``
        self.reset()

    def reset(self) -> None:
        """The saved state again. Photos are hard links to the saved ones: same inodes, so the
        store's records still describe them, and no step ever writes into a source file."""
        shutil.rmtree(self.work, ignore_errors=True)
        shutil.copytree(self.saved / "state", self.state)
        shutil.copytree(self.saved / "photos", self.root, copy_function=os.link)

    def services(self) -> Any:
        return offline_services(self.config, self.state, [self.root], self.model_id)


def _process(scene: Scene, patch: Callable[[], object], k: int) -> Callable[[], None]:
    def work() -> None:
        patch()
        with scene.services() as services:
            _install_crash_at(k, services.store)
            services.pipeline.process(scene.copy)

    return work


def _restore(scene: Scene, patch: Callable[[], object], k: int) -> Callable[[], None]:
    def work() -> None:
        patch()
        _install_crash_at(k)
        code = cli_main(["--state-dir", str(scene.state), "restore", "1"])
        if code != 0:
            raise SystemExit(code)

    return work


def _nothing() -> None:
    pass


SCENARIOS: dict[str, tuple[Callable[..., Callable[[], None]], Callable[[], object], bool]] = {
    "same-fs quarantine": (_process, _nothing, False),
    "cross-fs quarantine": (_process, exdev_once, False),
    "restore": (_restore, _nothing, True),
    "cross-fs restore": (_restore, exdev_once, True),
}


def _where_is_the_copy(scene: Scene) -> str:
    with Store.open(database_path(scene.state)) as store:
        states = [e.state for e in store.journal_entries()]
    if scene.copy.exists():
        return "in place"
    assert JournalState.DONE in states
    return "quarantined"


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_every_crash_point_of_a_pipeline_run_recovers_with_every_invariant(
    tmp_path: Path, model_cache: Path, scenario: str
) -> None:
    make_work, patch, quarantined = SCENARIOS[scenario]
    scene = Scene(tmp_path, model_cache, quarantined=quarantined)
    outcomes = []
    for k in range(1, 200):
        scene.reset()
        code = run_in_fork(make_work(scene, patch, k))
        assert code in (CRASHED, 0), f"{scenario}: crash point {k}: the child failed ({code})"

        def reconcile() -> None:
            scan_offline(scene.config, scene.state, [scene.root], scene.model_id)

        audit(scene.baseline, [scene.root], scene.state, reconcile=reconcile)
        outcomes.append(_where_is_the_copy(scene))
        if code == 0:
            break
    else:
        raise AssertionError(f"{scenario}: the run never completed")
    points = len(outcomes) - 1
    # The counts go into the reliability figures; -s shows them.
    print(f"{scenario}: {points} crash points, outcomes {sorted(set(outcomes))}")
    if quarantined:
        # A restore is all or nothing: the copy is back, or still safely in the quarantine.
        assert outcomes[-1] == "in place"
    else:
        # Wherever the crash fell, the copy ends in the quarantine: moved then, or found
        # again at start-up or by the reconciliation as the duplicate it still is.
        assert set(outcomes) == {"quarantined"}
    assert points >= 5
