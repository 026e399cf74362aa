"""The README stays true: every setting documented, the two commands exist and CI runs the test one."""

from __future__ import annotations

import os
import re
from pathlib import Path

from speechkit_operator.config import Settings

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_every_setting_is_documented_in_the_configuration_table() -> None:
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", README, flags=re.MULTILINE))
    expected = {name.upper() for name in Settings.model_fields}
    assert documented == expected


def test_the_quick_start_commands_exist_and_ci_runs_the_test_command() -> None:
    block = README.split("## Quick start", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.split("#", 1)[0].strip() for line in block.strip().splitlines()]
    assert commands == ["./scripts/demo", "./scripts/test"]
    for command in commands:
        path = ROOT / command
        assert path.is_file() and os.access(path, os.X_OK), command
    assert "./scripts/test" in (ROOT / ".ci" / "run").read_text()
