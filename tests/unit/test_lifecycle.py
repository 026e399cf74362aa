"""The pure plan of a job's next step: submit, resolve an uncertain submission, check, deadline, delete."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from speechkit_operator.logic.lifecycle import RETENTION, Limits, Plan, Step, after_uncertain, plan
from speechkit_operator.models.job import JobStatus
from speechkit_operator.models.timestamps import format_time

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
CREATED = NOW - timedelta(minutes=5)


def status(**fields: object) -> JobStatus:
    return JobStatus.model_validate(fields)


def at(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


def test_a_new_job_is_submitted_now() -> None:
    assert plan(status(), created_at=CREATED, limits=Limits(), now=NOW) == Plan(Step.SUBMIT, NOW)


def test_a_waiting_job_is_submitted_at_its_next_attempt() -> None:
    waiting = status(phase="Pending", nextAttemptAt=format_time(at(30)))
    assert plan(waiting, created_at=CREATED, limits=Limits(), now=NOW) == Plan(Step.SUBMIT, at(30))
    # What the scheduler holds in memory wins over the status's last write.
    assert plan(waiting, created_at=CREATED, limits=Limits(), now=NOW, next_attempt=at(5)).at == at(5)


def test_an_intent_without_an_operation_is_uncertain() -> None:
    intent = status(phase="Pending", submission={"nonce": "n", "holder": "h", "startedAt": format_time(NOW)})
    assert plan(intent, created_at=CREATED, limits=Limits(), now=NOW).step is Step.RESOLVE_UNCERTAIN
    # Written by another live operator: only once it could have settled.
    later = plan(intent, created_at=CREATED, limits=Limits(), now=NOW, intent_settles_at=at(300))
    assert later == Plan(Step.RESOLVE_UNCERTAIN, at(300))
    # Resolving it failed (the apiserver was down): the next try waits, it does not spin.
    retried = plan(intent, created_at=CREATED, limits=Limits(), now=NOW, next_attempt=at(3))
    assert retried == Plan(Step.RESOLVE_UNCERTAIN, at(3))


def test_a_running_job_is_checked_at_its_next_check_never_past_retention() -> None:
    running = status(
        phase="Running", operationId="op", nextCheckAt=format_time(at(40)), submittedAt=format_time(NOW)
    )
    assert plan(running, created_at=CREATED, limits=Limits(), now=NOW) == Plan(Step.CHECK, at(40))
    assert plan(running, created_at=CREATED, limits=Limits(), now=NOW, next_check=at(7)).at == at(7)
    # A schedule pushed out too far (a huge Retry-After, a corrupt duration) still checks in time.
    far = plan(running, created_at=CREATED, limits=Limits(), now=NOW, next_check=at(30 * 86400))
    assert far.step is Step.CHECK
    assert far.at is not None and far.at < NOW + RETENTION


def test_a_job_past_its_last_chance_before_retention_keeps_its_own_schedule() -> None:
    # 71 h after submission the retention check's time has passed: it must not be due again and
    # again (a clamp to a past time took every check token of its scope, tens of thousands a second).
    old = status(phase="Running", operationId="op", submittedAt=format_time(at(-71 * 3600)))
    assert plan(old, created_at=CREATED, limits=Limits(), now=NOW, next_check=at(300)) == Plan(
        Step.CHECK, at(300)
    )
    # Before that time it is still the latest a check may come.
    young = status(phase="Running", operationId="op", submittedAt=format_time(at(-69 * 3600)))
    assert plan(young, created_at=CREATED, limits=Limits(), now=NOW, next_check=at(7200)) == Plan(
        Step.CHECK, at(3600)
    )


def test_a_queued_jobs_estimated_turn_is_not_a_back_off() -> None:
    # After a restart a job that was Queued takes its place in line at once, so newer jobs do
    # not overtake it while its old estimate runs out.
    queued = status(phase="Queued", reason="Queued", nextAttemptAt=format_time(at(3600)))
    assert plan(queued, created_at=CREATED, limits=Limits(), now=NOW) == Plan(Step.SUBMIT, NOW)
    waiting = status(phase="Pending", reason="StorageUnavailable", nextAttemptAt=format_time(at(60)))
    assert plan(waiting, created_at=CREATED, limits=Limits(), now=NOW) == Plan(Step.SUBMIT, at(60))


def test_a_running_job_without_a_schedule_is_checked_now() -> None:
    restored = status(phase="Running", operationId="op")
    assert plan(restored, created_at=CREATED, limits=Limits(), now=NOW) == Plan(Step.CHECK, NOW)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, Step.DEADLINE),
        ({"phase": "Running", "operationId": "op"}, Step.DEADLINE),
        ({"phase": "Pending", "nextAttemptAt": "2026-11-30T13:00:00Z"}, Step.DEADLINE),
    ],
)
def test_a_job_past_its_deadline(fields: dict[str, object], expected: Step) -> None:
    result = plan(status(**fields), created_at=CREATED, limits=Limits(deadline_seconds=60), now=NOW)
    assert result == Plan(expected, NOW)


def test_a_deadline_before_the_next_step_comes_first() -> None:
    running = status(phase="Running", operationId="op", nextCheckAt=format_time(at(600)))
    result = plan(running, created_at=CREATED, limits=Limits(deadline_seconds=400), now=NOW)
    assert result == Plan(Step.DEADLINE, CREATED + timedelta(seconds=400))


def test_finished_jobs_are_deleted_after_their_ttl_or_left_alone() -> None:
    done = status(phase="Succeeded", completedAt=format_time(at(-10)))
    assert plan(done, created_at=CREATED, limits=Limits(deadline_seconds=1), now=NOW) == Plan(Step.NOTHING)
    assert plan(done, created_at=CREATED, limits=Limits(ttl_seconds=60), now=NOW) == Plan(Step.DELETE, at(50))
    failed = status(phase="Failed")
    assert plan(failed, created_at=CREATED, limits=Limits(ttl_seconds=0), now=NOW) == Plan(Step.DELETE, NOW)


def test_a_batch_child_that_failed_outlives_its_ttl_one_that_succeeded_does_not() -> None:
    """The failed child is the batch's record that its object is not to be submitted again."""
    limits = Limits(ttl_seconds=0, keep_failed=True)
    failed = status(phase="Failed", completedAt=format_time(at(-10)))
    assert plan(failed, created_at=CREATED, limits=limits, now=NOW) == Plan(Step.NOTHING)
    done = status(phase="Succeeded", completedAt=format_time(at(-10)))
    assert plan(done, created_at=CREATED, limits=limits, now=NOW) == Plan(Step.DELETE, at(-10))


@pytest.mark.parametrize(
    ("recorded", "policy", "limit", "expected"),
    [
        (1, "resubmit", 3, "resubmit"),
        (2, "resubmit", 3, "resubmit"),
        (3, "resubmit", 3, "fail"),
        (1, "resubmit", 1, "fail"),
        (1, "fail", 3, "fail"),
    ],
)
def test_after_an_uncertain_submission(recorded: int, policy: str, limit: int, expected: str) -> None:
    assert after_uncertain(recorded, policy, limit) == expected  # type: ignore[arg-type]


def test_a_job_created_to_adopt_an_operation_adopts_it_instead_of_submitting() -> None:
    assert plan(status(), created_at=CREATED, limits=Limits(), now=NOW, adopt=True) == Plan(Step.ADOPT, NOW)
    # Once it has an operation (its own or the adopted one), it is checked like any other.
    running = status(phase="Running", operationId="e03op", nextCheckAt=format_time(at(10)))
    assert plan(running, created_at=CREATED, limits=Limits(), now=NOW, adopt=True).step is Step.CHECK
    # An intent of its own wins: the job did try to submit, and that is resolved first.
    intent = status(phase="Pending", submission={"nonce": "n", "holder": "h", "startedAt": format_time(NOW)})
    assert (
        plan(intent, created_at=CREATED, limits=Limits(), now=NOW, adopt=True).step is Step.RESOLVE_UNCERTAIN
    )
