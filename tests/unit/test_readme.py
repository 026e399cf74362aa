"""The README stays true: every setting documented, the two commands exist and CI runs the test one."""

from __future__ import annotations

import os
import re
from pathlib import Path

from speechkit_operator.config import Settings
from speechkit_operator.selfhosted.config import ServiceSettings

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _documented(section: str) -> set[str]:
    """Variable names in the first column of the tables of one README section."""
    text = README.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for first_cell in re.findall(r"^\| ([^|]+) \|", text, flags=re.MULTILINE):
        names.update(re.findall(r"`([A-Z][A-Z0-9_]*)`", first_cell))
    return names


def test_every_operator_setting_is_documented_in_the_configuration_table() -> None:
    assert _documented("Configuration") == {name.upper() for name in Settings.model_fields}


def test_every_service_setting_is_documented() -> None:
    documented = _documented("Self-hosted recognition")
    assert documented == {name.upper() for name in ServiceSettings.model_fields}


def test_the_quick_start_commands_exist_and_ci_runs_the_test_command() -> None:
    block = README.split("## Quick start", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.split("#", 1)[0].strip() for line in block.strip().splitlines()]
    assert commands == ["./scripts/demo", "./scripts/test"]
    for command in commands:
        path = ROOT / command
        assert path.is_file() and os.access(path, os.X_OK), command
    assert "./scripts/test" in (ROOT / ".ci" / "run").read_text()
