"""The pipeline end to end on real photos, the real model, a real store and real moves."""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from numpy.typing import NDArray
from skimage import data

from dupwatch.config import Config, PolicyConfig
from dupwatch.records import Action, FileStatus, JournalState, Tier
from dupwatch.runtime import Services, open_services


def write_jpeg(path: Path, rgb: NDArray[np.uint8], quality: int = 92) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok = cv2.imwrite(
        str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    assert ok
    return path


def resized(rgb: NDArray[np.uint8], factor: float) -> NDArray[np.uint8]:
    h, w = rgb.shape[:2]
    size = (round(w * factor), round(h * factor))
    return np.asarray(cv2.resize(rgb, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)


PHOTOS = {
    "astronaut": data.astronaut(),
    "coffee": data.coffee(),
    "rocket": data.rocket(),
    "chelsea": data.chelsea(),
}


@pytest.fixture
def library(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    for name, rgb in PHOTOS.items():
        write_jpeg(root / f"{name}.jpg", rgb)
    return root


@pytest.fixture
def services(tmp_path: Path, library: Path) -> Iterator[Services]:
    opened = open_services(Config(), tmp_path / "state", [library])
    try:
        for path in sorted(library.glob("*.jpg")):
            result = opened.pipeline.process(path)
            assert result is not None and result.tier is Tier.UNIQUE, result
        yield opened
    finally:
        opened.close()


@pytest.fixture(autouse=True)
def _state_dir(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()


def in_quarantine(root: Path) -> list[str]:
    return sorted(p.name for p in (root / ".dupwatch-quarantine").rglob("*") if p.is_file())


def test_byte_copy_is_exact_and_moved_to_the_quarantine(services: Services, library: Path) -> None:
    copy = library / "sub" / "coffee copy.jpg"
    copy.parent.mkdir()
    shutil.copy2(library / "coffee.jpg", copy)
    result = services.pipeline.process(copy)
    assert result is not None
    assert (result.tier, result.action, result.rule) == (Tier.EXACT, Action.QUARANTINE, "sha256")
    assert result.duplicate_of == library / "coffee.jpg"
    assert not copy.exists()
    assert (library / ".dupwatch-quarantine" / "sub" / "coffee copy.jpg").read_bytes() == (
        library / "coffee.jpg"
    ).read_bytes()
    [entry] = services.store.journal_entries({JournalState.DONE})
    assert entry.original_path == copy
    record = services.store.file_by_path(copy)
    assert record is not None and record.status is FileStatus.QUARANTINED


def test_messenger_copy_is_a_verified_duplicate(services: Services, library: Path) -> None:
    for name in ("astronaut", "rocket"):
        copy = write_jpeg(library / f"{name}-whatsapp.jpg", resized(PHOTOS[name], 0.5), 70)
        result = services.pipeline.process(copy)
        assert result is not None
        assert result.tier is Tier.DUPLICATE, result
        assert result.duplicate_of == library / f"{name}.jpg"
        assert result.similarity is not None and result.similarity >= 0.9
        assert not copy.exists()
    assert in_quarantine(library) == ["astronaut-whatsapp.jpg", "rocket-whatsapp.jpg"]


def test_quarter_turned_copy_is_found_through_the_hashes(services: Services, library: Path) -> None:
    turned = write_jpeg(library / "coffee-turned.jpg", np.rot90(PHOTOS["coffee"]).copy(), 90)
    result = services.pipeline.process(turned)
    assert result is not None
    assert result.tier is Tier.DUPLICATE, result
    assert result.duplicate_of == library / "coffee.jpg"


def test_different_photos_and_a_moved_subject_stay_in_place(
    services: Services, library: Path
) -> None:
    scene = PHOTOS["astronaut"].copy()
    # The same scene with the subject's face region moved: another frame, not a copy.
    patch = scene[60:200, 160:320].copy()
    scene[60:200, 160:320] = scene[300:440, 160:320]
    scene[300:440, 160:320] = patch
    other = write_jpeg(library / "astronaut-next-frame.jpg", scene)
    camera = write_jpeg(library / "camera.jpg", data.camera()[..., None].repeat(3, axis=2))
    for path in (other, camera):
        result = services.pipeline.process(path)
        assert result is not None
        assert result.tier in (Tier.UNIQUE, Tier.SIMILAR), result
        assert result.action is not Action.QUARANTINE
        assert path.exists()


def test_corrupt_file_is_recorded_as_failed_and_left_alone(
    services: Services, library: Path
) -> None:
    broken = library / "broken.jpg"
    broken.write_bytes((library / "rocket.jpg").read_bytes()[:3000])
    result = services.pipeline.process(broken)
    assert result is not None
    assert (result.tier, result.reason) == (Tier.FAILED, "truncated")
    assert broken.exists()
    record = services.store.file_by_path(broken)
    assert record is not None and record.status is FileStatus.FAILED
    # Unchanged, it is not retried in a loop; once it changes (completed upload), it is.
    assert services.pipeline.process(broken) is None
    shutil.copy(library / "rocket.jpg", broken)
    again = services.pipeline.process(broken)
    assert again is not None and again.tier is Tier.EXACT


def test_unchanged_known_file_is_skipped(services: Services, library: Path) -> None:
    assert services.pipeline.process(library / "coffee.jpg") is None


def test_hard_link_is_never_its_own_duplicate(services: Services, library: Path) -> None:
    link = library / "coffee-link.jpg"
    os.link(library / "coffee.jpg", link)
    result = services.pipeline.process(link)
    assert result is not None
    assert result.tier is Tier.UNIQUE
    assert link.exists() and (library / "coffee.jpg").exists()


def test_restored_copy_is_not_quarantined_again(services: Services, library: Path) -> None:
    copy = library / "rocket-again.jpg"
    shutil.copy2(library / "rocket.jpg", copy)
    first = services.pipeline.process(copy)
    assert first is not None and first.action is Action.QUARANTINE
    [entry] = services.store.journal_entries({JournalState.DONE})
    assert services.quarantine is not None
    assert services.quarantine.restore(entry.id) == copy
    again = services.pipeline.process(copy)
    assert again is not None
    assert again.tier is Tier.UNIQUE and again.rule == "verdict:not_duplicate"
    assert copy.exists()


def test_content_synced_back_after_quarantine_is_recognised(
    services: Services, library: Path
) -> None:
    small = write_jpeg(library / "chelsea-small.jpg", resized(PHOTOS["chelsea"], 0.5), 80)
    saved = small.read_bytes()
    first = services.pipeline.process(small)
    assert first is not None and first.tier is Tier.DUPLICATE
    back = library / "synced" / "chelsea-small.jpg"
    back.parent.mkdir()
    back.write_bytes(saved)
    again = services.pipeline.process(back)
    assert again is not None
    assert again.tier is Tier.EXACT
    assert again.duplicate_of == library / "chelsea.jpg"
    assert not back.exists()


def test_better_original_arriving_later_sends_the_known_copy_away(
    tmp_path: Path,
) -> None:
    root = tmp_path / "library"
    small = write_jpeg(root / "from-chat.jpg", resized(PHOTOS["astronaut"], 0.5), 75)
    services = open_services(Config(), tmp_path / "state", [root])
    try:
        assert services.pipeline.process(small) is not None
        original = write_jpeg(root / "camera" / "astronaut.jpg", PHOTOS["astronaut"], 95)
        result = services.pipeline.process(original)
        assert result is not None
        assert result.tier is Tier.DUPLICATE
        assert result.rule == "verified+keep_best"
        assert result.moved == small
        assert original.exists() and not small.exists()
    finally:
        services.close()


def test_byte_copy_is_matched_to_the_copy_still_in_place_among_many_logged_ones(
    tmp_path: Path, library: Path
) -> None:
    shadow = dataclasses.replace(Config(), policy=PolicyConfig(exact_action="log"))
    copies = [library / "many" / f"coffee-{i:02d}.jpg" for i in range(12)]
    copies[0].parent.mkdir()
    services = open_services(shadow, tmp_path / "state", [library])
    try:
        services.pipeline.process(library / "coffee.jpg")
        for copy in copies:
            shutil.copy(library / "coffee.jpg", copy)
            services.pipeline.process(copy)
        # The oldest copies change behind dupwatch's back; only the last one is as recorded.
        for changed in (library / "coffee.jpg", *copies[:-1]):
            os.utime(changed, ns=(0, 10**9))
        arriving = library / "coffee-again.jpg"
        shutil.copy(copies[-1], arriving)
        result = services.pipeline.process(arriving)
    finally:
        services.close()
    assert result is not None
    assert (result.tier, result.rule, result.duplicate_of) == (Tier.EXACT, "sha256", copies[-1])


def test_log_only_mode_and_dry_run_never_move_a_file(tmp_path: Path, library: Path) -> None:
    shadow = dataclasses.replace(
        Config(), policy=PolicyConfig(exact_action="log", duplicate_action="log")
    )
    copy = library / "coffee-2.jpg"
    shutil.copy(library / "coffee.jpg", copy)
    for config, dry_run in ((shadow, False), (Config(), True)):
        services = open_services(config, tmp_path / "state", [library], dry_run=dry_run)
        try:
            for path in sorted(library.glob("*.jpg")):
                services.pipeline.process(path)
        finally:
            services.close()
        assert copy.exists()
        assert not (library / ".dupwatch-quarantine").exists()
