"""bench/RESULTS.md: each benchmark rewrites only its own "## Heading" section."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def replace_section(text: str, heading: str, body: str) -> str:
    """``text`` with the section under ``## heading`` replaced by ``body`` (or appended)."""
    title = f"## {heading}"
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == title), None)
    if start is None:
        return (text.rstrip() + "\n\n" if text.strip() else "") + body.rstrip() + "\n"
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    kept = lines[:start] + body.rstrip().splitlines() + ([""] if end < len(lines) else [])
    return "\n".join(kept + lines[end:]).rstrip() + "\n"


def write_section(heading: str, body: str, path: Path = RESULTS) -> None:
    """Rewrite one section of RESULTS.md; the others are left as they are."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    path.write_text(replace_section(text, heading, body), encoding="utf-8")
