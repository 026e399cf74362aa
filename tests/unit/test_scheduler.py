"""The scheduler: when each job's step runs, one submission at a time, stale events ignored."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from speechkit_operator.clients.kube import KubeError
from speechkit_operator.config import Settings
from speechkit_operator.models.timestamps import format_time
from speechkit_operator.scheduler import Scheduler
from speechkit_operator.workflow import Job, StepResult


def now() -> datetime:
    return datetime.now(UTC)


def body(
    name: str,
    *,
    status: Mapping[str, Any] | None = None,
    created: datetime | None = None,
    rv: str = "1",
    spec: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "calls",
            "uid": f"uid-{name}",
            "resourceVersion": rv,
            "creationTimestamp": format_time(created or now()),
        },
        "spec": dict(spec or {}),
        "status": dict(status or {}),
    }


def running(name: str, *, rv: str = "2", next_check: datetime | None = None) -> dict[str, Any]:
    status = {
        "phase": "Running",
        "reason": "Submitted",
        "operationId": f"op-{name}",
        "submittedAt": format_time(now()),
    }
    if next_check is not None:
        status["nextCheckAt"] = format_time(next_check)
    return body(name, status=status, rv=rv)


@dataclass
class FakeWorkflow:
    """Records the steps; submissions can be held to see what runs at once."""

    identity: str = "me-1"
    calls: list[tuple[str, str]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    hold_submissions: bool = False
    submitting: int = 0
    most_submitting: int = 0
    check_results: dict[str, StepResult] = field(default_factory=dict)
    fail_once: set[str] = field(default_factory=set)
    kube_down_once: set[str] = field(default_factory=set)

    @property
    def jobs(self) -> FakeWorkflow:
        return self

    async def get(self, ref: Any) -> dict[str, Any] | None:
        return running(ref.name, rv="99")

    def scope_of(self, job: Job) -> str | None:
        return "cloud"

    async def submit(self, job: Job) -> StepResult:
        self.calls.append(("submit", job.ref.name))
        self.submitting += 1
        self.most_submitting = max(self.most_submitting, self.submitting)
        try:
            if self.hold_submissions:
                await self.release.wait()
            if job.ref.name in self.fail_once:
                self.fail_once.discard(job.ref.name)
                raise RuntimeError("a bug")
            return StepResult(
                body=running(job.ref.name), next_check=now() + timedelta(seconds=0.05), checks=0, called=True
            )
        finally:
            self.submitting -= 1

    async def queued(self, job: Job, *, position: int, eta: datetime) -> StepResult:
        self.calls.append(("queued", f"{job.ref.name}@{position}"))
        return StepResult(body=body(job.ref.name, status={"phase": "Queued", "reason": "Queued"}))

    async def resolve_uncertain(self, job: Job) -> StepResult:
        self.calls.append(("resolve", job.ref.name))
        return StepResult(
            body=body(job.ref.name, status={"phase": "Failed", "reason": "SubmissionUncertain"})
        )

    async def check(self, job: Job) -> StepResult:
        self.calls.append(("check", job.ref.name))
        if job.ref.name in self.kube_down_once:
            self.kube_down_once.discard(job.ref.name)
            raise KubeError("connection refused")
        result = self.check_results.get(job.ref.name)
        if result is not None:
            return result
        done = {"phase": "Succeeded", "reason": "Succeeded", "operationId": job.status.operation_id}
        return StepResult(body=body(job.ref.name, status=done, rv="3"), checks=job.checks + 1)

    async def deadline(self, job: Job, seconds: int) -> StepResult:
        self.calls.append(("deadline", job.ref.name))
        return StepResult(body=body(job.ref.name, status={"phase": "Failed", "reason": "DeadlineExceeded"}))

    async def delete(self, job: Job) -> StepResult:
        self.calls.append(("delete", job.ref.name))
        return StepResult(gone=True)

    async def cancel(self, job: Job) -> None:
        if job.status.operation_id and job.status.phase is not None and job.status.phase.value == "Running":
            self.calls.append(("cancel", job.ref.name))


#: Budgets that never bind (a tight quota is a test of its own).
UNBOUND = {"quota_window_seconds": 1.0, "submit_quota": 100_000, "check_quota": 100_000}


@contextlib.asynccontextmanager
async def running_scheduler(workflow: FakeWorkflow, **settings: Any) -> AsyncIterator[Scheduler]:
    sole_actor = settings.pop("sole_actor", True)
    scheduler = Scheduler(workflow, Settings(**{**UNBOUND, **settings}), sole_actor=sole_actor)  # type: ignore[arg-type]
    scheduler.start()
    try:
        yield scheduler
    finally:
        await scheduler.stop(1.0)


async def until(condition: Any, timeout: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_a_new_job_is_submitted_then_checked_then_left() -> None:
    workflow = FakeWorkflow()
    async with running_scheduler(workflow) as scheduler:
        scheduler.observe(body("a"))
        await until(lambda: ("check", "a") in workflow.calls)
        await until(lambda: len(scheduler) == 0)  # finished: nothing more to do
    assert workflow.calls == [("submit", "a"), ("check", "a")]


async def test_submissions_run_one_at_a_time_oldest_first() -> None:
    workflow = FakeWorkflow(hold_submissions=True)
    base = now() - timedelta(minutes=10)
    async with running_scheduler(workflow) as scheduler:
        for index in (3, 1, 4, 0, 2):
            scheduler.observe(body(f"j{index}", created=base + timedelta(seconds=index)))
        await until(lambda: workflow.submitting == 1)
        await asyncio.sleep(0.1)
        assert workflow.most_submitting == 1
        assert scheduler.queued() == 4
        workflow.release.set()
        await until(lambda: sum(1 for call in workflow.calls if call[0] == "submit") == 5)
    submitted = [name for kind, name in workflow.calls if kind == "submit"]
    assert submitted[1:] == ["j1", "j2", "j3", "j4"]  # j3 came first and took the free slot
    assert workflow.most_submitting == 1


async def test_checks_run_concurrently_within_the_limit() -> None:
    workflow = FakeWorkflow()
    gate = asyncio.Event()
    active = 0
    most = 0

    async def slow_check(job: Job) -> StepResult:
        nonlocal active, most
        active += 1
        most = max(most, active)
        await gate.wait()
        active -= 1
        return StepResult(body=body(job.ref.name, status={"phase": "Succeeded"}))

    workflow.check = slow_check  # type: ignore[method-assign]
    async with running_scheduler(workflow, check_concurrency=3) as scheduler:
        for index in range(8):
            scheduler.observe(running(f"r{index}"))
        await until(lambda: active == 3)
        await asyncio.sleep(0.05)
        assert most == 3
        gate.set()
        await until(lambda: len(scheduler) == 0)


async def test_a_stale_event_never_leads_to_a_second_submission() -> None:
    workflow = FakeWorkflow()
    async with running_scheduler(workflow) as scheduler:
        workflow.check_results["a"] = StepResult(next_check=now() + timedelta(hours=1), checks=1)
        scheduler.observe(body("a"))
        await until(lambda: ("check", "a") in workflow.calls)
        # The watch stream delivers the job as it was before its submission was recorded.
        scheduler.observe(body("a", rv="1"))
        scheduler.observe(body("a", rv="7"))  # a newer version without the id: still an echo
        await asyncio.sleep(0.2)
    assert [call for call in workflow.calls if call[0] == "submit"] == [("submit", "a")]


async def test_deleting_a_running_job_cancels_its_operation() -> None:
    workflow = FakeWorkflow()
    async with running_scheduler(workflow) as scheduler:
        scheduler.observe(running("a", next_check=now() + timedelta(hours=1)))
        scheduler.observe(running("a"), deleted=True)
        await until(lambda: ("cancel", "a") in workflow.calls)
        assert len(scheduler) == 0


async def test_an_intent_of_a_dead_process_is_resolved_at_once_by_the_only_operator() -> None:
    workflow = FakeWorkflow()
    intent = {
        "phase": "Pending",
        "submission": {"nonce": "n1", "holder": "old-1", "startedAt": format_time(now())},
    }
    async with running_scheduler(workflow) as scheduler:
        scheduler.observe(body("a", status=intent))
        await until(lambda: ("resolve", "a") in workflow.calls)
    assert ("submit", "a") not in workflow.calls


async def test_without_leader_election_an_intent_of_another_operator_is_given_time() -> None:
    workflow = FakeWorkflow()
    intent = {
        "phase": "Pending",
        "submission": {"nonce": "n1", "holder": "other-1", "startedAt": format_time(now())},
    }
    async with running_scheduler(workflow, sole_actor=False, leader_election=False) as scheduler:
        scheduler.observe(body("a", status=intent))
        await asyncio.sleep(0.3)
    assert workflow.calls == []


async def test_a_finished_job_with_a_ttl_is_deleted_when_it_expires() -> None:
    workflow = FakeWorkflow()
    done = {"phase": "Succeeded", "completedAt": format_time(now())}
    async with running_scheduler(workflow) as scheduler:
        scheduler.observe(body("keep", status=done))
        scheduler.observe(body("drop", status=done, spec={"ttlSecondsAfterFinished": 0}))
        await until(lambda: ("delete", "drop") in workflow.calls)
        assert len(scheduler) == 0
    assert ("delete", "keep") not in workflow.calls


async def test_a_failed_child_of_a_batch_outlives_its_ttl_a_succeeded_one_does_not() -> None:
    workflow = FakeWorkflow()
    done = {"phase": "Succeeded", "completedAt": format_time(now())}
    failed = {"phase": "Failed", "reason": "Unavailable", "completedAt": format_time(now())}
    owner = {"apiVersion": "speechkit.dev/v1alpha1", "kind": "TranscriptionBatch", "name": "b", "uid": "u"}
    children = []
    for name, status in (("ok", done), ("bad", failed)):
        child = body(name, status=status, spec={"ttlSecondsAfterFinished": 0})
        child["metadata"]["ownerReferences"] = [owner]
        children.append(child)
    loose = body("loose", status=failed, spec={"ttlSecondsAfterFinished": 0})
    async with running_scheduler(workflow) as scheduler:
        for child in (*children, loose):
            scheduler.observe(child)
        await until(lambda: ("delete", "ok") in workflow.calls and ("delete", "loose") in workflow.calls)
        await asyncio.sleep(0.2)
    assert ("delete", "bad") not in workflow.calls


async def test_a_job_past_its_deadline_ends() -> None:
    workflow = FakeWorkflow()
    async with running_scheduler(workflow) as scheduler:
        old = running("a", next_check=now() + timedelta(hours=1))
        old["spec"] = {"activeDeadlineSeconds": 60}
        old["metadata"]["creationTimestamp"] = format_time(now() - timedelta(minutes=2))
        scheduler.observe(old)
        await until(lambda: ("deadline", "a") in workflow.calls)


async def test_a_step_that_raises_is_tried_again_later_not_in_a_loop() -> None:
    workflow = FakeWorkflow(fail_once={"a"})
    async with running_scheduler(workflow) as scheduler:
        scheduler.observe(body("a"))
        await until(lambda: ("submit", "a") in workflow.calls)
        await asyncio.sleep(0.3)
        assert workflow.calls.count(("submit", "a")) == 1  # the retry waits a minute
        assert len(scheduler) == 1


async def test_a_step_that_cannot_reach_kubernetes_is_tried_again_in_seconds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    workflow = FakeWorkflow(kube_down_once={"a"})
    async with running_scheduler(workflow) as scheduler:
        scheduler.observe(running("a", next_check=now()))
        await until(lambda: ("check", "a") in workflow.calls)
        await asyncio.sleep(0.3)
        assert workflow.calls.count(("check", "a")) == 1  # not at once, in a loop
        await until(lambda: workflow.calls.count(("check", "a")) == 2, timeout=6.0)  # nor a minute later
        assert len(scheduler) == 0
    assert not [record for record in caplog.records if record.exc_info], "no traceback for an outage"


async def test_stop_waits_for_the_submission_in_flight() -> None:
    workflow = FakeWorkflow(hold_submissions=True)
    scheduler = Scheduler(workflow, Settings(**UNBOUND))  # type: ignore[arg-type]
    scheduler.start()
    scheduler.observe(body("a"))
    await until(lambda: workflow.submitting == 1)
    stopping = asyncio.create_task(scheduler.stop(5.0))
    await asyncio.sleep(0.1)
    assert not stopping.done()
    workflow.release.set()
    await asyncio.wait_for(stopping, 2)
    assert workflow.submitting == 0


@pytest.mark.parametrize("jobs", [2000])
async def test_many_idle_jobs_cost_no_work(jobs: int) -> None:
    workflow = FakeWorkflow()
    async with running_scheduler(workflow) as scheduler:
        for index in range(jobs):
            scheduler.observe(running(f"r{index}", next_check=now() + timedelta(hours=1)))
        await asyncio.sleep(0.2)
        assert len(scheduler) == jobs
    assert workflow.calls == []


def timed_submissions(workflow: FakeWorkflow) -> list[float]:
    """The loop times of the workflow's submissions, as they happen."""
    stamps: list[float] = []
    submit = workflow.submit

    async def timed_submit(job: Job) -> StepResult:
        stamps.append(asyncio.get_running_loop().time())
        return await submit(job)

    workflow.submit = timed_submit  # type: ignore[method-assign]
    return stamps


def in_any_window(times: list[float], window: float) -> int:
    return max((sum(1 for t in times if start <= t < start + window) for start in times), default=0)


async def test_submissions_keep_within_the_quota_and_waiting_jobs_say_they_are_queued() -> None:
    workflow = FakeWorkflow()
    stamps = timed_submissions(workflow)
    async with running_scheduler(workflow, quota_window_seconds=2.0, submit_quota=4) as scheduler:
        for index in range(6):
            scheduler.observe(body(f"q{index}", created=now() + timedelta(milliseconds=index)))
        await until(lambda: len(stamps) >= 4, timeout=10)
    assert in_any_window(stamps, 2.0) <= 4
    queued = [name for kind, name in workflow.calls if kind == "queued"]
    assert queued, "jobs that wait for the quota say so"
    assert all("@" in name for name in queued)


async def test_a_429_slows_the_submissions_down() -> None:
    workflow = FakeWorkflow()
    stamps: list[float] = []

    async def refused_once(job: Job) -> StepResult:
        stamps.append(asyncio.get_running_loop().time())
        if len(stamps) == 1:
            return StepResult(next_attempt=now(), throttled=1.0, called=True)
        return StepResult(body=running(job.ref.name, next_check=now() + timedelta(hours=1)), called=True)

    workflow.submit = refused_once  # type: ignore[method-assign]
    async with running_scheduler(workflow) as scheduler:
        scheduler.observe(body("a"))
        await until(lambda: len(stamps) == 2, timeout=5)
    assert stamps[1] - stamps[0] >= 0.95, "Retry-After is honoured by the whole budget"


async def test_due_checks_keep_within_the_check_quota_most_overdue_first() -> None:
    workflow = FakeWorkflow()
    order: list[str] = []

    async def check(job: Job) -> StepResult:
        order.append(job.ref.name)
        return StepResult(next_check=now() + timedelta(hours=1), checks=1, called=True)

    workflow.check = check  # type: ignore[method-assign]
    async with running_scheduler(workflow, quota_window_seconds=4.0, check_quota=2) as scheduler:
        scheduler.observe(running("late", next_check=now() - timedelta(minutes=10)))
        scheduler.observe(running("later", next_check=now() - timedelta(minutes=20)))
        scheduler.observe(running("latest", next_check=now() - timedelta(minutes=30)))
        await until(lambda: len(order) >= 1, timeout=5)
        await asyncio.sleep(1.0)
    assert order[0] == "latest"
    assert len(order) <= 2


async def test_v3_checks_have_their_own_budget_and_do_not_wait_for_v2s() -> None:
    """v2's hourly check quota is spent; API v3 jobs (5 checks a second) are still checked, at their own
    pace, and v2's backlog stays within its budget."""
    workflow = FakeWorkflow()
    checked: list[tuple[str, float]] = []

    async def check(job: Job) -> StepResult:
        checked.append((job.ref.name, time.monotonic()))
        return StepResult(next_check=now() + timedelta(milliseconds=1), checks=1, called=True)

    workflow.check = check  # type: ignore[method-assign]
    settings = {
        "quota_window_seconds": 3600.0,
        "check_quota": 2,
        "v3_check_quota": 5,
        "v3_check_window_seconds": 1.0,
    }
    async with running_scheduler(workflow, **settings) as scheduler:
        for name in ("v2-a", "v2-b", "v2-c"):
            scheduler.observe(running(name, next_check=now() - timedelta(minutes=1)))
        for name in ("v3-a", "v3-b"):
            job = running(name, next_check=now() - timedelta(minutes=1))
            job["spec"] = {"recognition": {"api": "v3"}}
            scheduler.observe(job)
        await asyncio.sleep(2.5)
    v2 = [stamp for name, stamp in checked if name.startswith("v2")]
    v3 = [stamp for name, stamp in checked if name.startswith("v3")]
    assert v2 == [], "a quota of 2 an hour leaves no token for a new process's checks"
    assert len(v3) >= 4, "v3 jobs are checked again and again within their own budget"
    for first, later in zip(v3, v3[5:], strict=False):
        assert later - first >= 1.0, "never more than 5 v3 checks in a second"


async def test_after_a_restart_recent_submissions_count_against_the_quota_until_they_age_out() -> None:
    """10 per 4 s (9 kept to): 9 submissions made 1 s before the start fill the window. The new process waits
    for them to leave it (3 s), then goes on at the budget's pace: no window ever holds more than
    the quota, and the earlier submissions do not hold it up any longer."""
    workflow = FakeWorkflow()
    stamps = timed_submissions(workflow)
    loop = asyncio.get_running_loop()
    async with running_scheduler(workflow, quota_window_seconds=4.0, submit_quota=10) as scheduler:
        started = loop.time()
        earlier = [started - 1.0 + index * 0.01 for index in range(9)]
        for index, at in enumerate(earlier):
            recent = running(f"earlier-{index}")
            recent["status"]["submittedAt"] = format_time(now() - timedelta(seconds=started - at))
            for _ in range(2):  # seen twice (a relist): counted once
                scheduler.observe(recent)
        for index in range(6):
            scheduler.observe(body(f"new-{index}", created=now() + timedelta(milliseconds=index)))
        await until(lambda: len(stamps) >= 3, timeout=15)
    assert stamps[0] - started >= 2.5, "the first new submission waits for the earlier ones to age out"
    assert stamps[0] - started <= 5.0, "and not longer"
    assert in_any_window(earlier + stamps, 4.0) <= 10


async def test_an_earlier_finished_submission_counts_too() -> None:
    workflow = FakeWorkflow()
    async with running_scheduler(workflow, quota_window_seconds=3600.0, submit_quota=100) as scheduler:
        done = body(
            "earlier", status={"phase": "Succeeded", "submittedAt": format_time(now() - timedelta(minutes=5))}
        )
        for _ in range(3):  # relists after a dropped watch
            scheduler.observe(done)
        carried = scheduler._scopes["cloud"].carried
        assert carried is not None and len(carried.earlier) == 1


async def test_a_late_event_never_brings_a_finished_job_back() -> None:
    """The watch lags: the job's intent arrives after the job failed and left the registry."""
    workflow = FakeWorkflow()
    async with running_scheduler(workflow) as scheduler:
        scheduler.observe(body("a", rv="1"))
        await until(lambda: ("check", "a") in workflow.calls)
        await until(lambda: len(scheduler) == 0)
        intent = {
            "phase": "Pending",
            "submission": {"nonce": "n", "holder": "me-1", "startedAt": format_time(now())},
        }
        scheduler.observe(body("a", status=intent, rv="2"))
        scheduler.observe(body("a", status={"phase": "Running", "operationId": "op-a"}, rv="3"))
        await asyncio.sleep(0.2)
        assert len(scheduler) == 0
        # Its DELETED event ends the tombstone; a job created again under the name is new.
        scheduler.observe(body("a", rv="4"), deleted=True)
    assert workflow.calls == [("submit", "a"), ("check", "a")]


@dataclass
class FolderWorkflow(FakeWorkflow):
    """Jobs bill the folder their name starts with (``a-1`` bills folder ``a``)."""

    looked_up: list[str] = field(default_factory=list)

    def scope_of(self, job: Job) -> str | None:
        return None

    async def look_up_scope(self, job: Job) -> str:
        self.looked_up.append(job.ref.name)
        return f"folder:{job.ref.name.split('-')[0]}"


async def test_with_quotas_per_folder_one_folders_backlog_does_not_hold_up_another() -> None:
    workflow = FolderWorkflow()
    async with running_scheduler(workflow, quota_window_seconds=4.0, submit_quota=4) as scheduler:
        for index in range(6):
            scheduler.observe(body(f"a-{index}", created=now() + timedelta(milliseconds=index)))
        await until(lambda: sum(1 for kind, _ in workflow.calls if kind == "submit") >= 1, timeout=10)
        scheduler.observe(body("b-0", created=now()))
        # Folder b has a budget of its own: its job goes within its own first token's time, while
        # folder a still has a backlog (4 per 4 s, 1 per second at most).
        await until(lambda: ("submit", "b-0") in workflow.calls, timeout=3)
        submitted_a = [name for kind, name in workflow.calls if kind == "submit" and name.startswith("a-")]
        assert len(submitted_a) < 6
        assert set(scheduler.budget_state()) == {"folder:a", "folder:b"}
    assert "b-0" in workflow.looked_up


@dataclass
class SelfHostedWorkflow(FakeWorkflow):
    """A self-hosted service that takes ``capacity`` operations at once and answers 429 beyond."""

    capacity: int = 3
    in_flight: set[str] = field(default_factory=set)
    refusals: int = 0
    most_in_flight: int = 0

    def scope_of(self, job: Job) -> str:
        return "self-hosted"

    async def submit(self, job: Job) -> StepResult:
        self.calls.append(("submit", job.ref.name))
        if len(self.in_flight) >= self.capacity:
            self.refusals += 1
            return StepResult(next_attempt=now() + timedelta(seconds=0.2), throttled=0.2)
        self.in_flight.add(job.ref.name)
        self.most_in_flight = max(self.most_in_flight, len(self.in_flight))
        return StepResult(body=running(job.ref.name), next_check=now() + timedelta(seconds=0.3), called=True)

    async def check(self, job: Job) -> StepResult:
        self.calls.append(("check", job.ref.name))
        self.in_flight.discard(job.ref.name)
        done = {"phase": "Succeeded", "reason": "Succeeded", "operationId": job.status.operation_id}
        return StepResult(body=body(job.ref.name, status=done, rv="3"), checks=job.checks + 1)


async def test_the_self_hosted_budget_is_its_concurrency_learned_from_429s() -> None:
    workflow = SelfHostedWorkflow(capacity=3)
    settings = {
        "backend": "self-hosted",
        "self_hosted_url": "http://recognizer:8080",
        "self_hosted_concurrency": 16,
    }
    async with running_scheduler(workflow, **settings) as scheduler:
        for index in range(20):
            scheduler.observe(body(f"s{index}", created=now() + timedelta(milliseconds=index)))
        await until(lambda: sum(1 for kind, _ in workflow.calls if kind == "check") >= 20, timeout=20)
        state = scheduler.budget_state()["self-hosted"]
    # It starts at a quarter of 16 (4): one 429 teaches it the service's size; few more follow.
    assert workflow.most_in_flight <= 3
    assert 1 <= workflow.refusals <= 5, workflow.refusals
    assert state["running"] == 0
    assert state["concurrency"] <= 16


async def test_a_job_deleted_while_its_check_waits_for_the_budget_has_its_operation_cancelled() -> None:
    workflow = FakeWorkflow()
    async with running_scheduler(workflow, quota_window_seconds=100.0, check_quota=2) as scheduler:
        scheduler.observe(running("waits", next_check=now()))
        await asyncio.sleep(0.2)  # due, waiting for a check token (the first comes in ~100 s)
        assert ("check", "waits") not in workflow.calls
        scheduler.observe(running("waits"), deleted=True)
        await until(lambda: ("cancel", "waits") in workflow.calls)


@dataclass
class StaleWorkflow(SelfHostedWorkflow):
    """Every submission meets a changed job; reading it again waits for ``gate``."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)

    async def submit(self, job: Job) -> StepResult:
        self.calls.append(("submit", job.ref.name))
        return StepResult(stale=True)

    async def get(self, ref: Any) -> dict[str, Any] | None:
        await self.gate.wait()
        return running(ref.name, rv="99")


async def test_a_job_deleted_while_it_is_read_again_leaves_no_operation_in_flight_behind() -> None:
    workflow = StaleWorkflow()
    settings = {"backend": "self-hosted", "self_hosted_url": "http://recognizer:8080"}
    async with running_scheduler(workflow, **settings) as scheduler:
        scheduler.observe(body("a"))
        await until(lambda: ("submit", "a") in workflow.calls)
        scheduler.observe(body("a"), deleted=True)
        workflow.gate.set()
        await asyncio.sleep(0.2)
        assert len(scheduler) == 0
        assert scheduler.budget_state()["self-hosted"]["running"] == 0


async def test_with_quotas_per_folder_finished_jobs_earlier_submissions_count_in_their_folder() -> None:
    workflow = FolderWorkflow()
    async with running_scheduler(workflow, quota_window_seconds=100.0, submit_quota=10) as scheduler:
        done = {
            "phase": "Succeeded",
            "reason": "Succeeded",
            "operationId": "op",
            # Before this process started (a submission after it is this process's own): the
            # scheduler's start and now() could fall in the same millisecond, or not.
            "submittedAt": format_time(now() - timedelta(seconds=1)),
            "completedAt": format_time(now()),
        }
        for index in range(5):
            scheduler.observe(body(f"a-{index}", status=done))
        await until(lambda: "folder:a" in scheduler._scopes)
        await asyncio.sleep(0.1)
        carried = scheduler._scopes["folder:a"].carried
        assert carried is not None and len(carried.earlier) == 5


async def test_a_job_past_its_last_chance_before_retention_does_not_take_every_check() -> None:
    workflow = FakeWorkflow()
    seen: list[str] = []

    async def check(job: Job) -> StepResult:
        seen.append(job.ref.name)
        return StepResult(next_check=now() + timedelta(minutes=5), checks=job.checks + 1, called=True)

    workflow.check = check  # type: ignore[method-assign]
    async with running_scheduler(workflow, quota_window_seconds=10.0, check_quota=100) as scheduler:
        old = running("old")
        old["status"]["submittedAt"] = format_time(now() - timedelta(hours=71))
        scheduler.observe(old)
        scheduler.observe(running("young", next_check=now()))
        await asyncio.sleep(1.0)
    assert seen.count("old") == 1
    assert seen.count("young") == 1


async def test_a_queued_job_keeps_its_place_across_a_restart() -> None:
    workflow = FakeWorkflow()
    async with running_scheduler(workflow) as scheduler:
        # The previous process said it was queued, expected in an hour.
        scheduler.observe(
            body(
                "old",
                created=now() - timedelta(minutes=10),
                status={
                    "phase": "Queued",
                    "reason": "Queued",
                    "nextAttemptAt": format_time(now() + timedelta(hours=1)),
                },
            )
        )
        scheduler.observe(body("new", created=now()))
        await until(lambda: len([c for c in workflow.calls if c[0] == "submit"]) == 2)
    assert [name for kind, name in workflow.calls if kind == "submit"] == ["old", "new"]


async def test_a_deadline_that_passes_in_line_fails_the_job_without_submitting_it() -> None:
    workflow = FakeWorkflow()
    # The bucket starts empty: the first token comes after a few seconds, past the deadline.
    async with running_scheduler(workflow, quota_window_seconds=20.0, submit_quota=2) as scheduler:
        scheduler.observe(body("short", spec={"activeDeadlineSeconds": 1}))
        await until(lambda: ("deadline", "short") in workflow.calls, timeout=4)
        # Left the line at its deadline, before any token came.
        assert scheduler.queued() == 0
    assert ("submit", "short") not in workflow.calls
