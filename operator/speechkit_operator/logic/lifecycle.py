"""What a job needs next, and when: a pure function of its status, its times and the settings.

The scheduler asks :func:`plan` whenever a job changes or its time comes, and carries out the step;
the workflow does each step's I/O. Nothing here reads a clock: ``now`` is passed in.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from speechkit_operator.models.job import JobStatus, Phase, Reason
from speechkit_operator.models.timestamps import parse_time

#: SpeechKit keeps a result for 3 days; a job never schedules anything for later than this.
RETENTION = timedelta(days=3)
#: Checks are kept this far inside the retention, so a late check still finds the result.
RETENTION_MARGIN = timedelta(hours=2)


class Step(enum.StrEnum):
    SUBMIT = "submit"
    #: Take over an operation submitted elsewhere (the seed script's): record it, send nothing.
    ADOPT = "adopt"
    #: An intent without an operation id: a submission whose answer was lost.
    RESOLVE_UNCERTAIN = "resolve-uncertain"
    CHECK = "check"
    DEADLINE = "deadline"
    #: ``ttlSecondsAfterFinished`` has passed: delete the job.
    DELETE = "delete"
    NOTHING = "nothing"


@dataclass(frozen=True)
class Plan:
    step: Step
    at: datetime | None = None


@dataclass(frozen=True)
class Limits:
    """The job's effective deadline and time-to-live in seconds (spec, else the operator's default)."""

    deadline_seconds: int | None = None
    ttl_seconds: int | None = None
    #: A TranscriptionBatch's child: when it failed it stays, whatever its time to live, as the
    #: batch's record that its object is not to be submitted again (deleting it asks for a retry).
    keep_failed: bool = False


def plan(
    status: JobStatus,
    *,
    created_at: datetime,
    limits: Limits,
    now: datetime,
    next_check: datetime | None = None,
    next_attempt: datetime | None = None,
    intent_settles_at: datetime | None = None,
    adopt: bool = False,
) -> Plan:
    """The next step and its time. ``next_check``/``next_attempt`` are what the scheduler holds in
    memory (the status has them only as of its last write); ``intent_settles_at`` is when an intent
    written by another process counts as abandoned (None: at once); ``adopt``: the job was created
    to take over an operation submitted elsewhere, which replaces its submission."""
    if status.phase is not None and status.phase.terminal:
        if limits.ttl_seconds is None or (limits.keep_failed and status.phase is Phase.FAILED):
            return Plan(Step.NOTHING)
        finished = parse_time(status.completed_at) or now
        return Plan(Step.DELETE, finished + timedelta(seconds=limits.ttl_seconds))

    if status.operation_id:
        step, at = Step.CHECK, next_check or parse_time(status.next_check_at) or now
        submitted = parse_time(status.submitted_at)
        # One check before the results expire; once that time has passed, the job's own
        # schedule goes on (a clamp to a past time would make it due again at once, forever).
        last_chance = submitted + RETENTION - RETENTION_MARGIN if submitted is not None else None
        if last_chance is not None and last_chance > now:
            at = min(at, last_chance)
    elif status.submission is not None:
        # An attempt that failed (the apiserver was down, say) backs off here as well.
        step, at = Step.RESOLVE_UNCERTAIN, max(now, intent_settles_at or now, next_attempt or now)
    elif adopt:
        step, at = Step.ADOPT, next_attempt or now
    else:
        # A Queued job's nextAttemptAt is its estimated turn, not a back-off: after a restart it
        # takes its place in line at once (else newer jobs would overtake it).
        recorded = None if status.reason == Reason.QUEUED else parse_time(status.next_attempt_at)
        step, at = Step.SUBMIT, next_attempt or recorded or now

    if limits.deadline_seconds is not None:
        deadline = created_at + timedelta(seconds=limits.deadline_seconds)
        if deadline <= max(at, now):
            return Plan(Step.DEADLINE, max(deadline, now))
    return Plan(step, at)


UncertainPolicy = Literal["resubmit", "fail"]


def after_uncertain(recorded: int, policy: UncertainPolicy, limit: int) -> Literal["resubmit", "fail"]:
    """What to do about a job's ``recorded``-th uncertain submission (1-based): submit once more
    (a transcript matters more than a possible second charge), or fail. Each uncertain submission
    is followed by at most one new one, and a job fails once it has had ``limit`` of them, so a
    job never costs more than ``limit`` possible extra charges."""
    if policy == "resubmit" and recorded < limit:
        return "resubmit"
    return "fail"


def is_terminal(status: JobStatus) -> bool:
    return status.phase in (Phase.SUCCEEDED, Phase.FAILED)
