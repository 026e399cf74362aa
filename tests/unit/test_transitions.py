"""Status builders, judge_operation and retry_delay."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from speechkit_operator.contracts.stt_v2 import AudioEncoding
from speechkit_operator.logic import transitions
from speechkit_operator.logic.conditions import get_condition
from speechkit_operator.logic.transitions import (
    Facts,
    OperationFailed,
    OperationSucceeded,
    StillRunning,
    judge_operation,
    retry_delay,
)
from speechkit_operator.models.audio import AudioInfo, ContainerFormat
from speechkit_operator.models.job import Reason
from speechkit_operator.models.operation import OperationError, OperationState

NOW = datetime(2026, 3, 4, 5, 6, 7, 890_000, tzinfo=UTC)
NOW_TEXT = "2026-03-04T05:06:07.890Z"
EARLIER_TEXT = "2026-03-04T05:00:00.000Z"
RFC3339_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")

PRESIGNED = (
    "https://storage.example.net/calls/a.wav?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=AKIDEXAMPLE%2F20260304%2Fru-central1%2Fs3%2Faws4_request"
    "&X-Amz-Signature=deadbeefcafebabe0123456789"
)
LEAKY = f"could not fetch {PRESIGNED} with header Authorization: Api-Key xyzSecretKey123"
SECRETS = ("X-Amz-Signature", "deadbeefcafebabe0123456789", "AKIDEXAMPLE", "xyzSecretKey123")


# The transitions return typed patches; these tests read them as written (JobStatusPatch.to_patch).


def waiting(
    facts: Facts, reason: Reason, message: str, next_attempt: datetime | None = None
) -> dict[str, Any]:
    return transitions.waiting(facts, reason, message, next_attempt).to_patch()


def submitted(facts: Facts, *, operation_id: str, audio: AudioInfo, first_check: datetime) -> dict[str, Any]:
    return transitions.submitted(
        facts, operation_id=operation_id, audio=audio, first_check=first_check
    ).to_patch()


def checked(
    facts: Facts,
    *,
    checks: int,
    next_check: datetime,
    reason: Reason = Reason.RUNNING,
    message: str | None = None,
) -> dict[str, Any]:
    return transitions.checked(
        facts, checks=checks, next_check=next_check, reason=reason, message=message
    ).to_patch()


def failed(facts: Facts, reason: Reason, message: str, *, submitted: bool = True) -> dict[str, Any]:
    return transitions.failed(facts, reason, message, submitted=submitted).to_patch()


def succeeded(facts: Facts, *, checks: int, outputs: dict[str, str], preview: str) -> dict[str, Any]:
    return transitions.succeeded(facts, checks=checks, outputs=outputs, preview=preview).to_patch()


def facts(conditions: list[dict[str, Any]] | None = None, generation: int | None = 4) -> Facts:
    return Facts(now=NOW, generation=generation, conditions=conditions or [])


def audio() -> AudioInfo:
    return AudioInfo(
        encoding=AudioEncoding.LINEAR16_PCM,
        container=ContainerFormat.WAV,
        sample_rate_hertz=16000,
        channels=1,
        duration_seconds=61.0,
        size_bytes=1_952_044,
    )


def condition_of(status: dict[str, Any], type: str) -> dict[str, Any]:
    found = get_condition(status["conditions"], type)
    assert found is not None, f"no {type} condition in {status['conditions']}"
    return dict(found)


def assert_redacted(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


def all_text(status: dict[str, Any]) -> str:
    return repr(status)


# --- Facts ---------------------------------------------------------------------------------------


def test_facts_stamp_is_rfc3339_utc_with_z() -> None:
    assert facts().stamp == NOW_TEXT


def test_facts_stamp_converts_other_zones_to_utc() -> None:
    moscow = timezone(timedelta(hours=3))
    shifted = Facts(now=datetime(2026, 3, 4, 8, 6, 7, 890_000, tzinfo=moscow), generation=None, conditions=[])

    assert shifted.stamp == NOW_TEXT


# --- waiting -------------------------------------------------------------------------------------


def test_waiting() -> None:
    status = waiting(facts(), Reason.CREDENTIALS_SECRET_NOT_FOUND, "Secret default/creds does not exist")

    assert status["phase"] == "Pending"
    assert status["reason"] == "CredentialsSecretNotFound"
    assert status["message"] == "Secret default/creds does not exist"
    assert status["observedGeneration"] == 4
    assert condition_of(status, "Submitted") == {
        "type": "Submitted",
        "status": "False",
        "reason": "CredentialsSecretNotFound",
        "message": "Secret default/creds does not exist",
        "lastTransitionTime": NOW_TEXT,
        "observedGeneration": 4,
    }
    assert "nextCheckAt" not in status
    assert "operationId" not in status


def test_waiting_again_keeps_the_transition_time() -> None:
    first = waiting(
        Facts(now=NOW - timedelta(minutes=5), generation=1, conditions=[]),
        Reason.CREDENTIALS_SECRET_NOT_FOUND,
        "missing",
    )

    again = waiting(facts(first["conditions"]), Reason.STORAGE_UNAVAILABLE, "storage down")

    submitted_condition = condition_of(again, "Submitted")
    assert submitted_condition["reason"] == "StorageUnavailable"
    assert submitted_condition["lastTransitionTime"] == "2026-03-04T05:01:07.890Z"


def test_waiting_without_generation_has_no_observed_generation() -> None:
    status = waiting(facts(generation=None), Reason.CREDENTIALS_SECRET_NOT_FOUND, "missing")

    assert "observedGeneration" not in status
    assert "observedGeneration" not in condition_of(status, "Submitted")


def test_waiting_message_is_redacted() -> None:
    status = waiting(facts(), Reason.STORAGE_UNAVAILABLE, LEAKY)

    assert_redacted(all_text(status))
    assert status["message"].startswith("could not fetch https://storage.example.net/calls/a.wav?")
    assert condition_of(status, "Submitted")["message"] == status["message"]


# --- submitted -----------------------------------------------------------------------------------


def test_submitted() -> None:
    first_check = NOW + timedelta(seconds=10, milliseconds=500)
    previous = waiting(
        Facts(now=NOW - timedelta(minutes=1), generation=4, conditions=[]),
        Reason.CREDENTIALS_SECRET_NOT_FOUND,
        "missing",
    )

    status = submitted(
        facts(previous["conditions"]), operation_id="op-123", audio=audio(), first_check=first_check
    )

    assert status["phase"] == "Running"
    assert status["reason"] == "Submitted"
    assert "op-123" in status["message"]
    assert "2026-03-04T05:06:18.390Z" in status["message"]
    assert status["operationId"] == "op-123"
    assert status["submittedAt"] == NOW_TEXT
    assert status["nextCheckAt"] == "2026-03-04T05:06:18.390Z"
    assert status["checks"] == 0
    assert status["observedGeneration"] == 4
    assert status["audio"] == {
        "encoding": "LINEAR16_PCM",
        "sampleRateHertz": 16000,
        "channels": 1,
        "durationSeconds": 61.0,
        "sizeBytes": 1_952_044,
    }
    submitted_condition = condition_of(status, "Submitted")
    assert submitted_condition["status"] == "True"
    assert submitted_condition["reason"] == "Submitted"
    assert submitted_condition["lastTransitionTime"] == NOW_TEXT  # False -> True moves it
    assert get_condition(status["conditions"], "Succeeded") is None
    assert get_condition(status["conditions"], "Failed") is None
    for field in ("submittedAt", "nextCheckAt"):
        assert RFC3339_Z.match(status[field])


# --- checked -------------------------------------------------------------------------------------


def test_checked() -> None:
    next_check = NOW + timedelta(seconds=7, milliseconds=500)

    status = checked(facts(), checks=2, next_check=next_check)

    assert status == {
        "phase": "Running",
        "reason": "Running",
        "message": "recognition in progress; next check at 2026-03-04T05:06:15.390Z",
        "lastCheckAt": NOW_TEXT,
        "checks": 2,
        "nextCheckAt": "2026-03-04T05:06:15.390Z",
    }


def test_checked_with_reason_and_redacted_message() -> None:
    status = checked(
        facts(),
        checks=5,
        next_check=NOW + timedelta(minutes=1),
        reason=Reason.RESOURCE_EXHAUSTED,
        message=LEAKY,
    )

    assert status["reason"] == "ResourceExhausted"
    assert status["phase"] == "Running"
    assert_redacted(status["message"])
    assert "conditions" not in status


# --- failed --------------------------------------------------------------------------------------


def test_failed() -> None:
    previous = submitted(
        Facts(now=NOW - timedelta(minutes=2), generation=4, conditions=[]),
        operation_id="op-1",
        audio=audio(),
        first_check=NOW,
    )

    status = failed(
        facts(previous["conditions"]), Reason.INVALID_ARGUMENT, "recognition failed with code 3: bad audio"
    )

    assert status["phase"] == "Failed"
    assert status["reason"] == "InvalidArgument"
    assert status["message"] == "recognition failed with code 3: bad audio"
    assert status["completedAt"] == NOW_TEXT
    assert "nextCheckAt" in status
    assert status["nextCheckAt"] is None
    assert status["observedGeneration"] == 4
    failed_condition = condition_of(status, "Failed")
    succeeded_condition = condition_of(status, "Succeeded")
    assert (failed_condition["status"], failed_condition["reason"]) == ("True", "InvalidArgument")
    assert (succeeded_condition["status"], succeeded_condition["reason"]) == ("False", "InvalidArgument")
    assert failed_condition["lastTransitionTime"] == NOW_TEXT
    # The Submitted condition from before is carried over unchanged.
    assert condition_of(status, "Submitted") == condition_of(previous, "Submitted")
    assert condition_of(status, "Submitted")["lastTransitionTime"] == "2026-03-04T05:04:07.890Z"


def test_failed_message_is_redacted_everywhere() -> None:
    status = failed(facts(), Reason.INTERNAL, LEAKY)

    assert_redacted(all_text(status))
    assert condition_of(status, "Failed")["message"] == status["message"]
    assert condition_of(status, "Succeeded")["message"] == status["message"]


# --- succeeded -----------------------------------------------------------------------------------


def test_succeeded() -> None:
    outputs = {"txt": "out/a.txt", "json": "out/a.json"}
    previous = [
        {
            "type": "Submitted",
            "status": "True",
            "reason": "Submitted",
            "message": "x",
            "lastTransitionTime": EARLIER_TEXT,
        }
    ]

    status = succeeded(facts(previous), checks=3, outputs=outputs, preview="привет мир")

    assert status["phase"] == "Succeeded"
    assert status["reason"] == "Succeeded"
    assert status["message"] == "transcripts written: json, txt"
    assert status["completedAt"] == NOW_TEXT
    assert status["lastCheckAt"] == NOW_TEXT
    assert "nextCheckAt" in status
    assert status["nextCheckAt"] is None
    assert status["checks"] == 3
    assert status["outputs"] == outputs
    assert status["outputs"] is not outputs
    assert status["preview"] == "привет мир"
    succeeded_condition = condition_of(status, "Succeeded")
    assert succeeded_condition["status"] == "True"
    assert succeeded_condition["reason"] == "Succeeded"
    assert succeeded_condition["lastTransitionTime"] == NOW_TEXT
    assert condition_of(status, "Submitted")["lastTransitionTime"] == EARLIER_TEXT
    assert get_condition(status["conditions"], "Failed") is None


def test_succeeded_without_speech_says_so() -> None:
    status = succeeded(facts(), checks=1, outputs={"txt": "out/a.txt"}, preview="")

    assert status["message"] == "transcripts written: txt (no speech was recognised)"


def test_succeeded_without_outputs() -> None:
    status = succeeded(facts(), checks=1, outputs={}, preview="hello")

    assert status["message"] == "no outputs requested"
    assert status["outputs"] == {}


# --- judge_operation -----------------------------------------------------------------------------


def test_judge_running() -> None:
    assert judge_operation(OperationState(id="op", done=False)) == StillRunning()


def test_judge_done_with_response() -> None:
    operation = OperationState(id="op", done=True, response={"chunks": []})

    verdict = judge_operation(operation)

    assert verdict == OperationSucceeded(operation)


def test_judge_done_with_error() -> None:
    operation = OperationState(id="op", done=True, error=OperationError(code=3, message="bad audio"))

    verdict = judge_operation(operation)

    assert verdict == OperationFailed(
        reason=Reason.INVALID_ARGUMENT, message="recognition failed with code 3: bad audio"
    )


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (3, "InvalidArgument"),
        (13, "Internal"),
        (8, "ResourceExhausted"),
        (16, "Unauthenticated"),
        (99, "Unknown"),
    ],
)
def test_judge_error_while_not_done_fails(code: int, reason: str) -> None:
    operation = OperationState(id="op", done=False, error=OperationError(code=code, message="boom"))

    verdict = judge_operation(operation)

    assert isinstance(verdict, OperationFailed)
    assert verdict.reason == reason
    assert verdict.message == f"recognition failed with code {code}: boom"


# --- retry_delay ---------------------------------------------------------------------------------


def test_retry_delay_doubles_up_to_the_cap() -> None:
    assert [retry_delay(n) for n in range(7)] == [10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0]


def test_retry_delay_with_custom_base_and_cap() -> None:
    assert [retry_delay(n, base=1.0, cap=5.0) for n in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_retry_delay_for_a_huge_attempt_stays_at_the_cap() -> None:
    assert retry_delay(10**9) == 300.0
    assert isinstance(retry_delay(3), float)


def test_a_job_that_fails_before_submission_says_so_in_its_submitted_condition() -> None:
    waited = waiting(facts(), Reason.CREDENTIALS_SECRET_NOT_FOUND, "Secret missing")

    status = failed(facts(waited["conditions"]), Reason.SOURCE_NOT_FOUND, "no such object", submitted=False)

    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Submitted"]["status"] == "False"
    assert conditions["Submitted"]["reason"] == "SourceNotFound"
    assert conditions["Failed"]["status"] == "True"
    assert conditions["Succeeded"]["status"] == "False"
