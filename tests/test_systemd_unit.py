"""The shipped systemd unit: hardened, restart-safe, notify-driven."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "dupwatch.service"


def directives() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key, []).append(value)
    return found


def test_unit_restarts_on_failure_but_not_on_bad_config() -> None:
    unit = directives()
    assert unit["Type"] == ["notify"]
    assert unit["Restart"] == ["on-failure"]
    assert unit["RestartPreventExitStatus"] == ["78"]
    assert unit["StateDirectory"] == ["dupwatch"]
    assert "WatchdogSec" in unit


def test_every_hardening_line_says_when_to_relax_it_or_needs_none() -> None:
    text = UNIT.read_text(encoding="utf-8")
    for key in ("ProtectHome", "PrivateUsers", "ReadWritePaths", "MemoryDenyWriteExecute"):
        block = text.split(f"\n{key}=")[0].rsplit("\n\n", 1)[-1]
        assert "Relax" in block, f"{key} has no comment saying when to relax it"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_exposure_is_at_most_two(tmp_path: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0
