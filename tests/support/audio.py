"""The shared real-speech corpus (``../shared/audio``), read in place and never copied into the repo."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest

AUDIO_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "audio"


def audio_dir() -> Path:
    if not (AUDIO_DIR / "manifest.json").is_file():
        pytest.skip(f"SHARED AUDIO MISSING: {AUDIO_DIR} (expected ../shared/audio beside the repo)")
    return AUDIO_DIR


@cache
def _manifest() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((audio_dir() / "manifest.json").read_text())
    return data


def manifest() -> dict[str, Any]:
    return _manifest()


def reference_text(name: str) -> dict[str, str]:
    """Channel tag -> reference text for one file (following ``same_as``)."""
    files = manifest()["files"]
    entry = files[name]
    while "text" not in entry and "channel_text" not in entry and "same_as" in entry:
        entry = files[entry["same_as"]]
    if "channel_text" in entry:
        return dict(entry["channel_text"])
    return {"1": entry["text"]}
