"""set_condition and get_condition: KEP-1623 semantics on plain dicts."""

from __future__ import annotations

import copy
from typing import Any

from speechkit_operator.logic.conditions import get_condition, set_condition

EARLIER = "2026-01-01T00:00:00.000Z"
NOW = "2026-01-01T00:05:00.000Z"


def condition(type: str, status: str, *, reason: str = "Because", at: str = EARLIER) -> dict[str, Any]:
    return {"type": type, "status": status, "reason": reason, "message": "old", "lastTransitionTime": at}


def test_adds_a_condition_to_an_empty_list() -> None:
    result = set_condition(
        [], type="Submitted", status="True", reason="Submitted", message="ok", now=NOW, generation=None
    )

    assert result == [
        {
            "type": "Submitted",
            "status": "True",
            "reason": "Submitted",
            "message": "ok",
            "lastTransitionTime": NOW,
        }
    ]


def test_adds_a_new_type_after_the_existing_ones() -> None:
    existing = [condition("Submitted", "True")]

    result = set_condition(
        existing, type="Succeeded", status="True", reason="Done", message="m", now=NOW, generation=None
    )

    assert [c["type"] for c in result] == ["Submitted", "Succeeded"]
    assert result[0] == existing[0]
    assert result[1]["lastTransitionTime"] == NOW


def test_replaces_the_condition_of_the_same_type() -> None:
    existing = [condition("Submitted", "False", reason="SecretMissing")]

    result = set_condition(
        existing,
        type="Submitted",
        status="False",
        reason="StorageUnavailable",
        message="new",
        now=NOW,
        generation=3,
    )

    assert result == [
        {
            "type": "Submitted",
            "status": "False",
            "reason": "StorageUnavailable",
            "message": "new",
            "lastTransitionTime": EARLIER,
            "observedGeneration": 3,
        }
    ]


def test_transition_time_is_kept_when_the_status_is_unchanged() -> None:
    result = set_condition(
        [condition("Submitted", "False")],
        type="Submitted",
        status="False",
        reason="Other",
        message="again",
        now=NOW,
        generation=None,
    )

    assert result[0]["lastTransitionTime"] == EARLIER
    assert result[0]["reason"] == "Other"
    assert result[0]["message"] == "again"


def test_transition_time_moves_when_the_status_changes() -> None:
    result = set_condition(
        [condition("Submitted", "False")],
        type="Submitted",
        status="True",
        reason="Submitted",
        message="ok",
        now=NOW,
        generation=None,
    )

    assert result[0]["status"] == "True"
    assert result[0]["lastTransitionTime"] == NOW


def test_transition_time_is_set_when_the_existing_condition_has_none() -> None:
    existing = [{"type": "Submitted", "status": "True", "reason": "Submitted"}]

    result = set_condition(
        existing, type="Submitted", status="True", reason="Submitted", message="", now=NOW, generation=None
    )

    assert result[0]["lastTransitionTime"] == NOW


def test_other_conditions_are_untouched_and_keep_their_order() -> None:
    first = condition("Submitted", "True", at="2025-12-31T00:00:00.000Z")
    first["observedGeneration"] = 1
    first["extra"] = "kept"
    last = condition("Failed", "False")
    existing = [first, condition("Succeeded", "Unknown"), last]

    result = set_condition(
        existing, type="Succeeded", status="True", reason="Done", message="m", now=NOW, generation=2
    )

    assert [c["type"] for c in result] == ["Submitted", "Succeeded", "Failed"]
    assert result[0] == first
    assert result[2] == last
    assert result[1]["status"] == "True"
    assert result[1]["lastTransitionTime"] == NOW


def test_input_is_not_mutated() -> None:
    existing = [condition("Submitted", "False"), condition("Failed", "False")]
    snapshot = copy.deepcopy(existing)

    result = set_condition(
        existing, type="Submitted", status="True", reason="Submitted", message="ok", now=NOW, generation=5
    )
    result[1]["status"] = "True"

    assert existing == snapshot
    assert all(a is not b for a, b in zip(result, existing, strict=True))


def test_observed_generation_only_when_given() -> None:
    without = set_condition(
        [], type="Submitted", status="True", reason="Submitted", message="", now=NOW, generation=None
    )
    with_generation = set_condition(
        [], type="Submitted", status="True", reason="Submitted", message="", now=NOW, generation=7
    )
    zero = set_condition(
        [], type="Submitted", status="True", reason="Submitted", message="", now=NOW, generation=0
    )

    assert "observedGeneration" not in without[0]
    assert with_generation[0]["observedGeneration"] == 7
    assert zero[0]["observedGeneration"] == 0


def test_stale_observed_generation_is_dropped_when_none_is_given() -> None:
    existing = [{**condition("Submitted", "True"), "observedGeneration": 1}]

    result = set_condition(
        existing, type="Submitted", status="True", reason="Submitted", message="", now=NOW, generation=None
    )

    assert "observedGeneration" not in result[0]


def test_accepts_any_iterable_of_mappings() -> None:
    existing = (c for c in [condition("Submitted", "True")])

    result = set_condition(
        existing, type="Failed", status="True", reason="Boom", message="", now=NOW, generation=None
    )

    assert [c["type"] for c in result] == ["Submitted", "Failed"]


def test_get_condition() -> None:
    conditions = [condition("Submitted", "True"), condition("Failed", "False")]

    assert get_condition(conditions, "Failed") == conditions[1]
    assert get_condition(conditions, "Succeeded") is None
    assert get_condition([], "Submitted") is None
