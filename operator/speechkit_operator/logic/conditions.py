"""KEP-1623 conditions: set one, keep the rest, move ``lastTransitionTime`` only on a change of status."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

ConditionStatus = Literal["True", "False", "Unknown"]


def set_condition(
    conditions: Iterable[Mapping[str, Any]],
    *,
    type: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    now: str,
    generation: int | None,
) -> list[dict[str, Any]]:
    """Return a new list with the condition of ``type`` set; the input is not modified."""
    result: list[dict[str, Any]] = []
    found = False
    for existing in conditions:
        if existing.get("type") != type:
            result.append(dict(existing))
            continue
        found = True
        transition = existing.get("lastTransitionTime") if existing.get("status") == status else None
        result.append(_condition(type, status, reason, message, transition or now, generation))
    if not found:
        result.append(_condition(type, status, reason, message, now, generation))
    return result


def get_condition(conditions: Iterable[Mapping[str, Any]], type: str) -> Mapping[str, Any] | None:
    return next((c for c in conditions if c.get("type") == type), None)


def _condition(
    type: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    transition: str,
    generation: int | None,
) -> dict[str, Any]:
    condition: dict[str, Any] = {
        "type": type,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": transition,
    }
    if generation is not None:
        condition["observedGeneration"] = generation
    return condition
