"""``dupwatch report``: what was decided, and what was (or in log mode would be) quarantined."""

from __future__ import annotations

from dupwatch.logs import printable
from dupwatch.records import Action, Tier
from dupwatch.store import Store

_SCAN_DECISIONS = 20_000


def summarise(store: Store, *, limit: int = 50) -> str:
    counts = store.decision_counts()
    lines = ["decisions by tier (latest per file):"]
    for tier in Tier:
        by_action = {a: n for (t, a), n in counts.items() if t is tier and n}
        if not by_action:
            continue
        detail = ", ".join(f"{n} {a.value}" for a, n in sorted(by_action.items(), key=str))
        lines.append(f"  {tier.value:<10} {sum(by_action.values()):>7}  ({detail})")
    copies = [
        d for d in store.recent_decisions(_SCAN_DECISIONS) if d.tier in (Tier.EXACT, Tier.DUPLICATE)
    ]
    logged = [d for d in copies if d.action is Action.LOG]
    if logged:
        lines.append(f"would have been quarantined (log mode), newest first, up to {limit}:")
    elif copies:
        lines.append(f"quarantined, newest first, up to {limit}:")
    for decision in (logged or copies)[:limit]:
        record = store.file(decision.file_id)
        keeper = store.file(decision.neighbour_id) if decision.neighbour_id else None
        similarity = "" if decision.similarity is None else f" {decision.similarity:.3f}"
        path = "?" if record is None else printable(record.path)
        lines.append(f"  {decision.tier.value}{similarity} ({decision.rule}) {path}")
        if keeper is not None:
            lines.append(f"      copy of {printable(keeper.path)}")
    if not copies:
        lines.append("no duplicates found so far")
    return "\n".join(lines)
