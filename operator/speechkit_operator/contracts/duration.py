"""protobuf ``Duration`` in its JSON form: a decimal number of seconds followed by ``s``."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def parse_duration(value: str | int | float | Mapping[str, Any]) -> float:
    """Seconds in a protobuf Duration.

    Accepts the JSON form (``"0.879999999s"``, ``"1s"``, ``"-1.5s"``; the ``s`` may be missing),
    a plain number of seconds, or the object form ``{"seconds": ..., "nanos": ...}`` where
    ``seconds`` may be an int64 written as a string. Raises :class:`TypeError` for values of another
    type and :class:`ValueError` for text that is not a number.
    """
    if isinstance(value, bool):
        raise TypeError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        seconds = _number(value)
    elif isinstance(value, str):
        text = value.strip()
        if text.endswith("s"):
            text = text[:-1]
        if not text:
            raise ValueError(f"not a duration: {value!r}")
        seconds = float(text)
    elif isinstance(value, Mapping):
        seconds = _number(value.get("seconds", 0)) + _number(value.get("nanos", 0)) / 1e9
    else:
        raise TypeError(f"not a duration: {value!r}")
    if math.isnan(seconds) or math.isinf(seconds):
        raise ValueError(f"not a finite duration: {value!r}")
    return seconds


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError(f"not a number: {value!r}")
    try:
        return float(value)
    except OverflowError:  # an integer beyond a float (JSON allows it)
        raise ValueError("a number out of range") from None


def format_duration(seconds: float) -> str:
    """A protobuf Duration in its canonical JSON form: ``1s``, ``0.880s``, ``1.000250s``, ``0.879999999s``."""
    if not math.isfinite(seconds):
        raise ValueError(f"not a finite duration: {seconds!r}")
    total_nanos = round(seconds * 1_000_000_000)
    sign = "-" if total_nanos < 0 else ""
    whole, nanos = divmod(abs(total_nanos), 1_000_000_000)
    if nanos == 0:
        return f"{sign}{whole}s"
    if nanos % 1_000_000 == 0:
        return f"{sign}{whole}.{nanos // 1_000_000:03d}s"
    if nanos % 1_000 == 0:
        return f"{sign}{whole}.{nanos // 1_000:06d}s"
    return f"{sign}{whole}.{nanos:09d}s"
