"""Policy: tiers, vetoes, remembered verdicts and which copy stays."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from dupwatch.config import PolicyConfig
from dupwatch.policy import Candidate, PhotoFacts, decide, new_copy_is_better
from dupwatch.records import Action, Tier


def facts(name: str = "a.jpg", **changes: object) -> PhotoFacts:
    base = PhotoFacts(
        path=Path("/photos") / name,
        size=2_000_000,
        width=4000,
        height=3000,
        format="jpeg",
        mtime_ns=1_700_000_000_000_000_000,
        exif_tag_count=40,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def candidate(file_id: int = 1, **changes: object) -> Candidate:
    base = Candidate(
        file_id=file_id,
        facts=facts("known.jpg"),
        similarity=0.97,
        exact=False,
        verified=True,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


POLICY = PolicyConfig()


def test_identical_bytes_are_exact_and_quarantined() -> None:
    decision = decide(facts(), [candidate(exact=True, similarity=1.0)], POLICY)
    assert (decision.tier, decision.action, decision.rule) == (
        Tier.EXACT,
        Action.QUARANTINE,
        "sha256",
    )
    assert decision.quarantine_new


def test_verified_close_candidate_is_a_duplicate() -> None:
    decision = decide(facts(width=1280, height=960), [candidate()], POLICY)
    assert decision.tier is Tier.DUPLICATE
    assert decision.action is Action.QUARANTINE
    assert decision.match is not None and decision.match.file_id == 1


def test_unverified_close_candidate_is_only_similar_and_logged() -> None:
    decision = decide(facts(), [candidate(verified=False)], POLICY)
    assert (decision.tier, decision.action) == (Tier.SIMILAR, Action.LOG)


def test_far_candidate_leaves_the_file_unique() -> None:
    decision = decide(facts(), [candidate(verified=False, similarity=0.5)], POLICY)
    assert (decision.tier, decision.action, decision.rule) == (Tier.UNIQUE, Action.NONE, "no_match")


def test_no_candidates_is_unique() -> None:
    assert decide(facts(), [], POLICY).tier is Tier.UNIQUE


def test_same_camera_different_capture_time_is_never_a_duplicate() -> None:
    new = facts(camera="Canon EOS 80D", capture_time="2024:05:01 10:00:00.12")
    known = facts("k.jpg", camera="Canon EOS 80D", capture_time="2024:05:01 10:00:00.45")
    decision = decide(new, [candidate(facts=known, similarity=0.99)], POLICY)
    assert decision.tier is Tier.SIMILAR
    assert decision.rule == "veto:camera_time"
    disabled = dataclasses.replace(POLICY, camera_time_veto=False)
    assert decide(new, [candidate(facts=known, similarity=0.99)], disabled).tier is Tier.DUPLICATE


def test_same_capture_time_resaved_copy_is_still_a_duplicate() -> None:
    shot = {"camera": "Pixel 8", "capture_time": "2024:05:01 10:00:00"}
    decision = decide(facts(**shot), [candidate(facts=facts("k.jpg", **shot))], POLICY)
    assert decision.tier is Tier.DUPLICATE


def test_a_raw_file_and_the_picture_written_beside_it_are_a_pair_not_duplicates() -> None:
    # One shot, kept twice on purpose: whichever of the two arrives second.
    shot = {"camera": "Nikon Z 6", "capture_time": "2024:05:01 10:00:00"}
    raw, jpeg = facts("IMG_0001.NEF", format="tiff", **shot), facts("IMG_0001.JPG", **shot)
    for new, known in ((jpeg, raw), (raw, jpeg)):
        decision = decide(new, [candidate(facts=known, similarity=0.99)], POLICY)
        assert (decision.tier, decision.action, decision.rule) == (
            Tier.SIMILAR,
            Action.LOG,
            "veto:raw_pair",
        )
    # A copy of the picture elsewhere, or in another format that is not raw, is a duplicate.
    elsewhere = facts("sent/IMG_0001.JPG", **shot)
    assert decide(elsewhere, [candidate(facts=jpeg)], POLICY).tier is Tier.DUPLICATE
    png = facts("IMG_0001.png", format="png")
    assert decide(png, [candidate(facts=jpeg)], POLICY).tier is Tier.DUPLICATE


def test_restored_pair_is_never_quarantined_again() -> None:
    decision = decide(facts(), [candidate(exact=True, not_duplicate_verdict=True)], POLICY)
    assert decision.tier is Tier.UNIQUE
    assert decision.rule == "verdict:not_duplicate"


def test_log_action_never_quarantines() -> None:
    shadow = dataclasses.replace(POLICY, exact_action="log", duplicate_action="log")
    assert decide(facts(), [candidate(exact=True)], shadow).action is Action.LOG
    assert decide(facts(), [candidate()], shadow).action is Action.LOG


def test_better_arriving_original_puts_the_known_copy_in_quarantine() -> None:
    messenger_copy = facts("known.jpg", width=1280, height=960, size=200_000)
    decision = decide(facts(), [candidate(facts=messenger_copy)], POLICY)
    assert decision.tier is Tier.DUPLICATE
    assert not decision.quarantine_new
    assert decision.rule == "verified+keep_best"
    first_seen = dataclasses.replace(POLICY, keep="first-seen")
    assert decide(facts(), [candidate(facts=messenger_copy)], first_seen).quarantine_new


def test_keeper_order_pixels_then_format_then_size_then_exif_then_age() -> None:
    base = facts()
    assert new_copy_is_better(facts(width=5000), base)
    camera = facts(camera="Pixel 8")
    assert not new_copy_is_better(facts(format="png"), camera)  # a conversion, not an original
    assert new_copy_is_better(facts(format="png"), base)
    assert new_copy_is_better(facts(size=3_000_000), base)
    assert new_copy_is_better(facts(exif_tag_count=50), base)
    assert new_copy_is_better(facts(mtime_ns=base.mtime_ns - 1), base)
    assert not new_copy_is_better(base, base)  # a tie keeps the known copy


def test_best_match_is_the_most_similar_verified_candidate() -> None:
    decision = decide(
        facts(), [candidate(1, similarity=0.91), candidate(2, similarity=0.96)], POLICY
    )
    assert decision.match is not None and decision.match.file_id == 2


@given(
    similarity=st.floats(-1.0, 1.0),
    verified=st.booleans(),
    low=st.floats(0.0, 1.0),
    raise_by=st.floats(0.0, 1.0),
)
def test_raising_thresholds_never_turns_a_unique_file_into_a_duplicate(
    similarity: float, verified: bool, low: float, raise_by: float
) -> None:
    high = min(1.0, low + raise_by)
    loose = dataclasses.replace(POLICY, candidate_threshold=low, similar_threshold=max(low, 0.9))
    strict = dataclasses.replace(POLICY, candidate_threshold=high, similar_threshold=max(high, 0.9))
    pair = [candidate(similarity=similarity, verified=verified)]
    if decide(facts(), pair, loose).tier is not Tier.DUPLICATE:
        assert decide(facts(), pair, strict).tier is not Tier.DUPLICATE


def test_a_verified_near_hash_is_a_duplicate_whatever_its_similarity() -> None:
    # A grayscale copy: its embedding moved below the threshold, its pHash did not.
    low = POLICY.candidate_threshold - 0.2
    found = decide(facts(), [candidate(similarity=low, hash_near=True)], POLICY)
    assert (found.tier, found.rule) == (Tier.DUPLICATE, "verified")
    unverified = candidate(similarity=low, hash_near=True, verified=False)
    assert decide(facts(), [unverified], POLICY).tier is not Tier.DUPLICATE
    far = decide(facts(), [candidate(similarity=low, hash_near=False)], POLICY)
    assert far.tier is not Tier.DUPLICATE
