"""Files deleted or replaced between the event and the open, and between the hash and the move.

The real pipeline, store and quarantine handle an exact copy of a known photo while the file
changes under them at the worst moment. Nothing may be moved that is not the file examined,
nothing may crash, and the audit must hold. A directory swapped for a symlink leaving the root,
over and over while a photo is quarantined and restored, never makes either act outside it.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from audit import Baseline, Facts, audit, sha256_of
from offline import scan_offline
from photos import encode, photo, write
from test_crash_points import Scene

from dupwatch.errors import QuarantineError
from dupwatch.quarantine import Quarantine
from dupwatch.records import Action, StatKey, Tier
from dupwatch.store import Store


def _replace(path: Path) -> None:
    fresh = write(path.with_name(".incoming"), encode(photo(90)))
    fresh.replace(path)  # another program's atomic save: new inode, new bytes


def _delete(path: Path) -> None:
    path.unlink()


def _rewrite_in_place(path: Path) -> None:
    with path.open("r+b") as fh:
        fh.seek(100)
        fh.write(b"\x00" * 16)


def _audit(scene: Scene, expected: dict[Path, bool]) -> None:
    baseline = Baseline.take([p for p, present in expected.items() if present])
    audit(
        baseline,
        [scene.root],
        scene.state,
        reconcile=lambda: scan_offline(scene.config, scene.state, [scene.root], scene.model_id),
    )


def test_a_file_deleted_between_event_and_open_is_reported_once_and_nothing_moves(
    tmp_path: Path, model_cache: Path
) -> None:
    scene = Scene(tmp_path, model_cache, quarantined=False)
    scene.copy.unlink()
    with scene.services() as services:
        result = services.pipeline.process(scene.copy)
    assert result is not None and result.tier is Tier.FAILED and result.rule == "vanished"
    _audit(scene, {scene.keeper: True, scene.bystander: True})


@pytest.mark.parametrize("change", [_replace, _delete, _rewrite_in_place])
def test_a_file_changed_between_hash_and_move_is_never_moved(
    tmp_path: Path, model_cache: Path, monkeypatch: pytest.MonkeyPatch, change: Callable[..., Any]
) -> None:
    scene = Scene(tmp_path, model_cache, quarantined=False)
    real_move = Quarantine.move

    def move_after_change(self: Quarantine, path: Path, **kwargs: Any) -> Any:
        change(path)
        return real_move(self, path, **kwargs)

    monkeypatch.setattr(Quarantine, "move", move_after_change)
    with scene.services() as services:
        result = services.pipeline.process(scene.copy)
    monkeypatch.undo()
    assert result is not None and result.action is Action.NONE and result.reason == "changed"
    assert not (scene.root / ".dupwatch-quarantine" / "album" / scene.copy.name).exists()
    present = scene.copy.exists()
    expected = {scene.keeper: True, scene.bystander: True}
    if present:
        expected[scene.copy] = True  # whatever bytes are there now belong to the owner
    # Only byte-level invariants here: a replaced file is a different photo (judging it needs
    # the model), and a deleted one is marked gone by the daemon's deletion event or walk,
    # which a scan does not do.
    audit(Baseline.take(list(expected)), [scene.root], scene.state, check_store=False)


class _Swapper:
    """Swaps ``dirs`` for symlinks to places outside the root and back, as fast as it can.

    Each symlink points in turn at a directory holding a hard link of the photo (so an
    identity check made through it would pass) and at an empty one (where a restore through
    it would leave a new file). ``pause()`` returns with every directory real again.
    """

    def __init__(self, dirs: list[Path], targets: list[Path]) -> None:
        self._dirs, self._targets = dirs, targets
        self._run, self._stop, self._idle = threading.Event(), threading.Event(), threading.Event()
        self._run.set()
        self.swaps = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="symlink-swapper", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        try:
            self._swap_until_stopped()
        except BaseException as exc:
            self.error = exc
            self._idle.set()
            raise

    def _swap_until_stopped(self) -> None:
        while not self._stop.is_set():
            if not self._run.is_set():
                self._idle.set()
                self._run.wait(0.1)
                continue
            self._idle.clear()
            for n, directory in enumerate(self._dirs):
                self._swap(directory, self._targets[(self.swaps + n) % len(self._targets)])
            self.swaps += 1

    @staticmethod
    def _swap(directory: Path, target: Path) -> None:
        aside = directory.with_name(directory.name + ".real")
        directory.rename(aside)
        try:
            directory.symlink_to(target)
        except FileExistsError:
            pass  # a move or restore recreated the directory at once, inside the root
        else:
            time.sleep(0)  # let the other thread run while the symlink is in place
            directory.unlink()
        try:
            aside.rename(directory)
        except OSError:
            # Recreated meanwhile (and used); the directory set aside is empty then.
            aside.rmdir()

    def pause(self) -> None:
        self._idle.clear()
        self._run.clear()
        assert self._idle.wait(10), "the swapper did not pause"
        assert self.error is None, f"the swapper failed: {self.error!r}"

    def resume(self) -> None:
        self._run.set()

    def stop(self) -> None:
        self._stop.set()
        self._run.set()
        self._thread.join(timeout=10)
        assert not self._thread.is_alive()


def _tree(top: Path) -> list[tuple[str, int, int, int]]:
    """Every entry below ``top`` with its inode, size and mtime (a directory's changes too)."""
    out = []
    for path in sorted([top, *top.rglob("*")]):
        st = path.lstat()
        out.append((str(path.relative_to(top)), st.st_ino, st.st_size, st.st_mtime_ns))
    return out


def symlink_swap_run(tmp_path: Path, iterations: int) -> dict[str, Any]:
    """Quarantine and restore one photo ``iterations`` times while its directory and its
    quarantine directory are swapped for symlinks leaving the root; returns the counts."""
    root, outside = tmp_path / "photos", tmp_path / "outside"
    photo_path = write(root / "album" / "a.jpg", encode(photo(91)))
    (root / ".dupwatch-quarantine" / "album").mkdir(parents=True)
    (outside / "linked").mkdir(parents=True)
    (outside / "empty").mkdir()
    os.link(photo_path, outside / "linked" / "a.jpg")  # same inode: only the path differs
    expected, digest = StatKey.of(photo_path), sha256_of(photo_path)
    before = _tree(outside)
    counts: dict[str, Any] = {
        "iterations": iterations, "moved": 0, "refused": 0, "restore_retried": 0,
    }  # fmt: skip
    refusals: Counter[str] = Counter()
    with Store.open(tmp_path / "dupwatch.db") as store:
        quarantine = Quarantine(store, [root])
        swapper = _Swapper(
            [root / "album", root / ".dupwatch-quarantine" / "album"],
            [outside / "linked", outside / "empty"],
        )
        try:
            for _ in range(iterations):
                try:
                    entry = quarantine.move(
                        photo_path, expected=expected, sha256=digest, file_id=None,
                        duplicate_of=None, tier=Tier.EXACT, similarity=1.0, rule="race",
                    )  # fmt: skip
                except (QuarantineError, OSError) as exc:
                    # A directory removed mid-move surfaces as the OSError it is; the
                    # daemon's pipeline defers such a move. Either way nothing moved.
                    counts["refused"] += 1
                    refusals[type(exc).__name__] += 1
                else:
                    counts["moved"] += 1
                    try:
                        quarantine.restore(entry.id)
                    except (QuarantineError, OSError):
                        counts["restore_retried"] += 1
                        swapper.pause()
                        quarantine.restore(entry.id)
                        swapper.resume()
                assert _tree(outside) == before, "an operation reached outside the root"
            swapper.pause()
            counts["swaps"] = swapper.swaps
            counts["refusals"] = dict(refusals)
        finally:
            swapper.stop()
        recovered = quarantine.recover()
        assert store.journal_pending() == [] and recovered == []
    assert _tree(outside) == before
    audit(
        Baseline({photo_path: Facts.of(outside / "linked" / "a.jpg")}),
        [root],
        tmp_path,
        check_store=False,
    )
    assert photo_path.lstat().st_ino == expected.inode
    return counts


def test_a_symlink_swapped_in_between_check_and_move_never_leads_outside_the_root(
    tmp_path: Path,
) -> None:
    counts = symlink_swap_run(tmp_path, 300)
    print(f"symlink swap: {counts}")
    assert counts["moved"] > 0 and counts["refused"] > 0  # both sides of the race were run


@pytest.mark.slow
def test_symlink_swap_long(tmp_path: Path) -> None:
    counts = symlink_swap_run(tmp_path, 10_000)
    print(f"symlink swap: {counts}")
    assert counts["moved"] > 0 and counts["refused"] > 0
