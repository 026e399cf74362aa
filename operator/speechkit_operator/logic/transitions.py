"""How a job's status changes: pure functions from facts to status patches.

Each function returns a :class:`~speechkit_operator.models.job.JobStatusPatch`: the fields to merge
into ``status`` (its ``to_patch`` makes the JSON). Conditions are whole lists (a merge
patch replaces lists), computed from the current ones so that unchanged conditions keep their
``lastTransitionTime``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from speechkit_operator.logic.conditions import ConditionStatus, set_condition
from speechkit_operator.logic.redaction import redact
from speechkit_operator.models.audio import AudioInfo
from speechkit_operator.models.job import (
    Condition,
    ConditionType,
    JobStatusPatch,
    Phase,
    Reason,
    SubmissionIntent,
)
from speechkit_operator.models.operation import OperationState
from speechkit_operator.models.timestamps import format_time


@dataclass(frozen=True)
class Facts:
    """What every transition needs: the moment, the generation observed, the current conditions."""

    now: datetime
    generation: int | None
    conditions: Sequence[Mapping[str, Any]]

    @property
    def stamp(self) -> str:
        return format_time(self.now)


def _base(facts: Facts, phase: Phase, reason: Reason, message: str) -> dict[str, Any]:
    """The fields of every patch, by their Python names (``JobStatusPatch(**fields)``)."""
    fields: dict[str, Any] = {"phase": phase, "reason": reason, "message": redact(message)}
    if facts.generation is not None:
        fields["observed_generation"] = facts.generation
    return fields


def _conditions(
    facts: Facts,
    *changes: tuple[ConditionType, ConditionStatus, Reason, str],
) -> list[Condition]:
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
    return [Condition.model_validate(c) for c in conditions]


def _dicts(conditions: Sequence[Condition]) -> list[dict[str, Any]]:
    return [c.model_dump(mode="json", by_alias=True, exclude_none=True) for c in conditions]


def waiting(
    facts: Facts, reason: Reason, message: str, next_attempt: datetime | None = None
) -> JobStatusPatch:
    """Not submitted yet, and will be retried (a missing Secret, storage or the API unavailable)."""
    fields = _base(facts, Phase.PENDING, reason, message)
    return JobStatusPatch(
        **fields,
        submission=None,
        next_attempt_at=format_time(next_attempt) if next_attempt is not None else None,
        conditions=_conditions(facts, (ConditionType.SUBMITTED, "False", reason, fields["message"])),
    )


def queued(facts: Facts, *, position: int, eta: datetime) -> JobStatusPatch:
    """Waiting for the quota: where it stands and when it should be submitted (as of now)."""
    message = f"waiting for the submission quota: about {position} in line; expected at {format_time(eta)}"
    fields = _base(facts, Phase.QUEUED, Reason.QUEUED, message)
    return JobStatusPatch(
        **fields,
        next_attempt_at=format_time(eta),
        conditions=_conditions(facts, (ConditionType.SUBMITTED, "False", Reason.QUEUED, fields["message"])),
    )


def intent(facts: Facts, *, nonce: str, holder: str) -> JobStatusPatch:
    """Written before a submission is sent: if the answer is lost, the job knows it may exist."""
    return JobStatusPatch(
        **_base(facts, Phase.PENDING, Reason.SUBMITTING, "submitting to SpeechKit"),
        submission=SubmissionIntent(nonce=nonce, holder=holder, started_at=facts.stamp),
    )


def uncertain(facts: Facts, *, recorded: int, message: str, next_attempt: datetime) -> JobStatusPatch:
    """A submission whose answer was lost, to be made once more at ``next_attempt``."""
    fields = _base(facts, Phase.PENDING, Reason.SUBMISSION_UNCERTAIN, message)
    return JobStatusPatch(
        **fields,
        submission=None,
        uncertain_submissions=recorded,
        next_attempt_at=format_time(next_attempt),
        conditions=_conditions(
            facts,
            (ConditionType.SUBMISSION_UNCERTAIN, "True", Reason.SUBMISSION_UNCERTAIN, fields["message"]),
            (ConditionType.SUBMITTED, "False", Reason.SUBMISSION_UNCERTAIN, fields["message"]),
        ),
    )


def uncertain_failed(facts: Facts, *, recorded: int, message: str) -> JobStatusPatch:
    """A submission whose answer was lost, and the job ends rather than submit again."""
    status = failed(facts, Reason.SUBMISSION_UNCERTAIN, message, submitted=False)
    conditions = _conditions(
        replace(facts, conditions=_dicts(status.conditions or [])),
        (ConditionType.SUBMISSION_UNCERTAIN, "True", Reason.SUBMISSION_UNCERTAIN, status.message),
    )
    return status.model_copy(update={"uncertain_submissions": recorded, "conditions": conditions})


def submitted(facts: Facts, *, operation_id: str, audio: AudioInfo, first_check: datetime) -> JobStatusPatch:
    message = f"submitted as operation {operation_id}; first check at {format_time(first_check)}"
    return JobStatusPatch(
        **_base(facts, Phase.RUNNING, Reason.SUBMITTED, message),
        operation_id=operation_id,
        submitted_at=facts.stamp,
        next_check_at=format_time(first_check),
        next_attempt_at=None,
        submission=None,
        checks=0,
        audio=audio.to_status(),
        conditions=_conditions(facts, (ConditionType.SUBMITTED, "True", Reason.SUBMITTED, message)),
    )


def adopted(
    facts: Facts, *, operation_id: str, submitted_at: datetime, audio: AudioInfo | None, first_check: datetime
) -> JobStatusPatch:
    """A job that took over an operation submitted elsewhere (the seed script's): running, as if
    submitted at ``submitted_at``, without a submission of its own."""
    message = (
        f"adopted operation {operation_id} (submitted elsewhere, not submitted again); "
        f"first check at {format_time(first_check)}"
    )
    fields = _base(facts, Phase.RUNNING, Reason.ADOPTED, message)
    if audio is not None:
        fields["audio"] = audio.to_status()
    return JobStatusPatch(
        **fields,
        operation_id=operation_id,
        submitted_at=format_time(submitted_at),
        next_check_at=format_time(first_check),
        next_attempt_at=None,
        submission=None,
        checks=0,
        conditions=_conditions(facts, (ConditionType.SUBMITTED, "True", Reason.ADOPTED, message)),
    )


def checked(
    facts: Facts,
    *,
    checks: int,
    next_check: datetime,
    reason: Reason = Reason.RUNNING,
    message: str | None = None,
) -> JobStatusPatch:
    """A check that did not finish the job. Only the scheduling fields and the message change
    (not the observed generation nor the conditions)."""
    return JobStatusPatch(
        phase=Phase.RUNNING,
        reason=reason,
        message=redact(message or f"recognition in progress; next check at {format_time(next_check)}"),
        last_check_at=facts.stamp,
        checks=checks,
        next_check_at=format_time(next_check),
    )


def failed(facts: Facts, reason: Reason, message: str, *, submitted: bool = True) -> JobStatusPatch:
    """The end of a job. ``submitted=False``: it never reached SpeechKit, and the ``Submitted``
    condition says why (instead of keeping an earlier "retrying" message)."""
    fields = _base(facts, Phase.FAILED, reason, message)
    text = fields["message"]
    changes: list[tuple[ConditionType, ConditionStatus, Reason, str]] = []
    if not submitted:
        changes.append((ConditionType.SUBMITTED, "False", reason, text))
    changes += [
        (ConditionType.FAILED, "True", reason, text),
        (ConditionType.SUCCEEDED, "False", reason, text),
    ]
    return JobStatusPatch(
        **fields,
        completed_at=facts.stamp,
        next_check_at=None,
        next_attempt_at=None,
        submission=None,
        conditions=_conditions(facts, *changes),
    )


def finished_checking(status: JobStatusPatch, *, checks: int) -> JobStatusPatch:
    """A failure found by a check: the checks made, and the last one at the failure's time."""
    return status.model_copy(update={"checks": checks, "last_check_at": status.completed_at})


def succeeded(
    facts: Facts,
    *,
    checks: int,
    outputs: Mapping[str, str],
    preview: str,
    detected_language: str | None = None,
) -> JobStatusPatch:
    message = f"transcripts written: {', '.join(sorted(outputs))}" if outputs else "no outputs requested"
    if not preview:
        message += " (no speech was recognised)"
    return JobStatusPatch(
        **_base(facts, Phase.SUCCEEDED, Reason.SUCCEEDED, message),
        completed_at=facts.stamp,
        last_check_at=facts.stamp,
        next_check_at=None,
        checks=checks,
        outputs=dict(outputs),
        preview=preview,
        **({"detected_language": detected_language} if detected_language else {}),
        conditions=_conditions(facts, (ConditionType.SUCCEEDED, "True", Reason.SUCCEEDED, message)),
    )


@dataclass(frozen=True)
class StillRunning:
    pass


@dataclass(frozen=True)
class OperationFailed:
    reason: Reason
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
            reason=Reason.from_grpc(code),
            message=f"recognition failed with code {code}: {operation.error.message}",
        )
    if not operation.done:
        return StillRunning()
    return OperationSucceeded(operation)


def retry_delay(attempt: int, *, base: float = 10.0, cap: float = 300.0) -> float:
    """Delay before retrying a handler for the ``attempt``-th time (0-based): 10 s doubling to 5 min."""
    return float(min(cap, base * 2 ** min(attempt, 16)))
