"""Files deleted or replaced between the event and the open, and between the hash and the move.

The real pipeline, store and quarantine handle an exact copy of a known photo while the file
changes under them at the worst moment. Nothing may be moved that is not the file examined,
nothing may crash, and the audit must hold.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from audit import Baseline, audit
from offline import scan_offline
from photos import encode, photo, write
from test_crash_points import Scene

from dupwatch.quarantine import Quarantine
from dupwatch.records import Action, Tier


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
