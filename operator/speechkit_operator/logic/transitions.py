"""How a job's status changes: pure functions from facts to status patches.

Each function returns the fields to merge into ``status``. Conditions are whole lists (a merge
patch replaces lists), computed from the current ones so that unchanged conditions keep their
``lastTransitionTime``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from speechkit_operator.clients.speech.base import OperationState
from speechkit_operator.contracts.grpc import GrpcCode
from speechkit_operator.logic.conditions import ConditionStatus, set_condition
from speechkit_operator.logic.redaction import redact
from speechkit_operator.logic.timestamps import format_time
from speechkit_operator.models.audio import AudioInfo
from speechkit_operator.models.job import ConditionType, Phase

Status = dict[str, Any]


@dataclass(frozen=True)
class Facts:
    """What every transition needs: the moment, the generation observed, the current conditions."""

    now: datetime
    generation: int | None
    conditions: Sequence[Mapping[str, Any]]

    @property
    def stamp(self) -> str:
        return format_time(self.now)


def _base(facts: Facts, phase: Phase, reason: str, message: str) -> Status:
    status: Status = {"phase": phase.value, "reason": reason, "message": redact(message)}
    if facts.generation is not None:
        status["observedGeneration"] = facts.generation
    return status


def _conditions(
    facts: Facts,
    *changes: tuple[ConditionType, ConditionStatus, str, str],
) -> list[dict[str, Any]]:
    """``facts.conditions`` with each ``(type, status, reason, message)`` set in turn."""
    conditions = [dict(c) for c in facts.conditions]
    for type_, status, reason, message in changes:
        conditions = set_condition(
            conditions,
            type=type_,
            status=status,
            reason=reason,
            message=message,
            now=facts.stamp,
            generation=facts.generation,
        )
    return conditions


def waiting(facts: Facts, reason: str, message: str, next_attempt: datetime | None = None) -> Status:
    """Not submitted yet, and will be retried (a missing Secret, storage or the API unavailable)."""
    status = _base(facts, Phase.PENDING, reason, message)
    status["submission"] = None
    status["nextAttemptAt"] = format_time(next_attempt) if next_attempt is not None else None
    status["conditions"] = _conditions(facts, (ConditionType.SUBMITTED, "False", reason, status["message"]))
    return status


def queued(facts: Facts, *, position: int, eta: datetime) -> Status:
    """Waiting for the quota: where it stands and when it should be submitted (as of now)."""
    message = f"waiting for the submission quota: about {position} in line; expected at {format_time(eta)}"
    status = _base(facts, Phase.QUEUED, "Queued", message)
    status["nextAttemptAt"] = format_time(eta)
    status["conditions"] = _conditions(facts, (ConditionType.SUBMITTED, "False", "Queued", status["message"]))
    return status


def intent(facts: Facts, *, nonce: str, holder: str) -> Status:
    """Written before a submission is sent: if the answer is lost, the job knows it may exist."""
    status = _base(facts, Phase.PENDING, "Submitting", "submitting to SpeechKit")
    status["submission"] = {"nonce": nonce, "holder": holder, "startedAt": facts.stamp}
    return status


def uncertain(facts: Facts, *, recorded: int, message: str, next_attempt: datetime) -> Status:
    """A submission whose answer was lost, to be made once more at ``next_attempt``."""
    status = _base(facts, Phase.PENDING, "SubmissionUncertain", message)
    status.update(submission=None, uncertainSubmissions=recorded, nextAttemptAt=format_time(next_attempt))
    status["conditions"] = _conditions(
        facts,
        (ConditionType.SUBMISSION_UNCERTAIN, "True", "SubmissionUncertain", status["message"]),
        (ConditionType.SUBMITTED, "False", "SubmissionUncertain", status["message"]),
    )
    return status


def uncertain_failed(facts: Facts, *, recorded: int, message: str) -> Status:
    """A submission whose answer was lost, and the job ends rather than submit again."""
    status = failed(facts, "SubmissionUncertain", message, submitted=False)
    status["uncertainSubmissions"] = recorded
    status["conditions"] = _conditions(
        replace(facts, conditions=status["conditions"]),
        (ConditionType.SUBMISSION_UNCERTAIN, "True", "SubmissionUncertain", status["message"]),
    )
    return status


def submitted(facts: Facts, *, operation_id: str, audio: AudioInfo, first_check: datetime) -> Status:
    message = f"submitted as operation {operation_id}; first check at {format_time(first_check)}"
    status = _base(facts, Phase.RUNNING, "Submitted", message)
    status.update(
        operationId=operation_id,
        submittedAt=facts.stamp,
        nextCheckAt=format_time(first_check),
        nextAttemptAt=None,
        submission=None,
        checks=0,
        audio=audio.to_status(),
    )
    status["conditions"] = _conditions(facts, (ConditionType.SUBMITTED, "True", "Submitted", message))
    return status


def adopted(
    facts: Facts, *, operation_id: str, submitted_at: datetime, audio: AudioInfo | None, first_check: datetime
) -> Status:
    """A job that took over an operation submitted elsewhere (the seed script's): running, as if
    submitted at ``submitted_at``, without a submission of its own."""
    message = (
        f"adopted operation {operation_id} (submitted elsewhere, not submitted again); "
        f"first check at {format_time(first_check)}"
    )
    status = _base(facts, Phase.RUNNING, "Adopted", message)
    status.update(
        operationId=operation_id,
        submittedAt=format_time(submitted_at),
        nextCheckAt=format_time(first_check),
        nextAttemptAt=None,
        submission=None,
        checks=0,
    )
    if audio is not None:
        status["audio"] = audio.to_status()
    status["conditions"] = _conditions(facts, (ConditionType.SUBMITTED, "True", "Adopted", message))
    return status


def checked(
    facts: Facts, *, checks: int, next_check: datetime, reason: str = "Running", message: str | None = None
) -> Status:
    """A check that did not finish the job. Only the scheduling fields and the message change."""
    return {
        "phase": Phase.RUNNING.value,
        "reason": reason,
        "message": redact(message or f"recognition in progress; next check at {format_time(next_check)}"),
        "lastCheckAt": facts.stamp,
        "checks": checks,
        "nextCheckAt": format_time(next_check),
    }


def failed(facts: Facts, reason: str, message: str, *, submitted: bool = True) -> Status:
    """The end of a job. ``submitted=False``: it never reached SpeechKit, and the ``Submitted``
    condition says why (instead of keeping an earlier "retrying" message)."""
    status = _base(facts, Phase.FAILED, reason, message)
    status["completedAt"] = facts.stamp
    status["nextCheckAt"] = None
    status["nextAttemptAt"] = None
    status["submission"] = None
    text = status["message"]
    changes: list[tuple[ConditionType, ConditionStatus, str, str]] = []
    if not submitted:
        changes.append((ConditionType.SUBMITTED, "False", reason, text))
    changes += [
        (ConditionType.FAILED, "True", reason, text),
        (ConditionType.SUCCEEDED, "False", reason, text),
    ]
    status["conditions"] = _conditions(facts, *changes)
    return status


def succeeded(facts: Facts, *, checks: int, outputs: Mapping[str, str], preview: str) -> Status:
    message = f"transcripts written: {', '.join(sorted(outputs))}" if outputs else "no outputs requested"
    if not preview:
        message += " (no speech was recognised)"
    status = _base(facts, Phase.SUCCEEDED, "Succeeded", message)
    status.update(
        completedAt=facts.stamp,
        lastCheckAt=facts.stamp,
        nextCheckAt=None,
        checks=checks,
        outputs=dict(outputs),
        preview=preview,
    )
    status["conditions"] = _conditions(facts, (ConditionType.SUCCEEDED, "True", "Succeeded", message))
    return status


@dataclass(frozen=True)
class StillRunning:
    pass


@dataclass(frozen=True)
class OperationFailed:
    reason: str
    message: str


@dataclass(frozen=True)
class OperationSucceeded:
    operation: OperationState


OperationVerdict = StillRunning | OperationFailed | OperationSucceeded


def judge_operation(operation: OperationState) -> OperationVerdict:
    """An error ends the job even while ``done`` is false (the API may report it early)."""
    if operation.error is not None:
        code = operation.error.code
        return OperationFailed(
            reason=(GrpcCode.from_wire(code) or GrpcCode.UNKNOWN).reason,
            message=f"recognition failed with code {code}: {operation.error.message}",
        )
    if not operation.done:
        return StillRunning()
    return OperationSucceeded(operation)


def retry_delay(attempt: int, *, base: float = 10.0, cap: float = 300.0) -> float:
    """Delay before retrying a handler for the ``attempt``-th time (0-based): 10 s doubling to 5 min."""
    return float(min(cap, base * 2 ** min(attempt, 16)))
