"""The real workflow under the real scheduler, around fakes of the cluster, Secrets, storage and
SpeechKit: what reaches SpeechKit and Kubernetes when jobs are deleted unseen, Secrets come late,
or the apiserver fails a write after SpeechKit was called."""

from __future__ import annotations

import asyncio
import copy
import itertools
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from prometheus_client import generate_latest

from speechkit_operator.clients.kube import JobStore, KubeError
from speechkit_operator.clients.secrets import SecretNotFoundError, SecretReader
from speechkit_operator.clients.speech.base import SpeechClient
from speechkit_operator.clients.speech.errors import SpeechApiError
from speechkit_operator.clients.storage import StorageFactory
from speechkit_operator.config import Settings
from speechkit_operator.models.credentials import Credentials
from speechkit_operator.models.job import JobRef
from speechkit_operator.models.operation import OperationState, RecognitionRequest
from speechkit_operator.models.timestamps import format_time
from speechkit_operator.scheduler import Scheduler, _adoption
from speechkit_operator.workflow import JobWorkflow
from tests.support.audio import audio_dir
from tests.unit.test_hardening_operator import KEYS, FakeStorages
from tests.unit.test_scheduler import body, in_any_window, now, until


class Cluster:
    """Job objects, status patches applied as the apiserver does, and the writes counted."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.writes: Counter[str] = Counter()
        self.log: list[tuple[str, str, str | None]] = []
        self.down = False
        self._versions = itertools.count(100)

    async def patch_status(
        self, job: JobRef, status: Mapping[str, Any], *, resource_version: str | None = None
    ) -> dict[str, Any]:
        if self.down:
            raise KubeError("connection refused")
        if job.name not in self.objects:
            raise KubeError(f"{job.name} not found", 404)
        obj = self.objects[job.name]
        if resource_version is not None and resource_version != obj["metadata"]["resourceVersion"]:
            raise KubeError("conflict", 409)
        current = obj.setdefault("status", {})
        for key, value in status.items():
            if value is None:
                current.pop(key, None)
            else:
                current[key] = copy.deepcopy(value)
        obj["metadata"]["resourceVersion"] = str(next(self._versions))
        self.writes[job.name] += 1
        self.log.append((job.name, "status", status.get("phase")))
        return copy.deepcopy(obj)

    async def post_event(self, job: JobRef, type_: str, reason: str, message: str) -> None:
        if self.down:
            raise KubeError("connection refused")
        self.writes[job.name] += 1
        self.log.append((job.name, "event", reason))

    async def get(self, job: JobRef) -> dict[str, Any] | None:
        found = self.objects.get(job.name)
        return copy.deepcopy(found) if found is not None else None


@dataclass
class Secrets:
    """The credentials Secret names ``folder``; it exists once ``ready``."""

    folder: str = ""
    ready: bool = True
    #: Namespaces without the Secret, whatever ``ready`` says.
    missing_in: set[str] = field(default_factory=set)

    async def read(self, namespace: str, name: str) -> Mapping[str, bytes]:
        if name == "speechkit-credentials":
            if not self.ready or namespace in self.missing_in:
                raise SecretNotFoundError(f"Secret {namespace}/{name} not found")
            data = {"api-key": b"key"}
            if self.folder:
                data["folder-id"] = self.folder.encode()
            return data
        return KEYS

    def forget(self, namespace: str, name: str) -> None:
        pass


@dataclass
class Speech:
    """Accepts submissions (429 for the keys in ``throttle``, once each); operations named in
    ``done`` are finished."""

    throttle: set[str] = field(default_factory=set)
    submitted: list[tuple[str, str | None]] = field(default_factory=list)  # key, folder
    looks: Counter[str] = field(default_factory=Counter)
    done: set[str] = field(default_factory=set)
    cancelled: list[str] = field(default_factory=list)
    #: Every submission call answered with this error (a timeout: None status).
    submit_error: SpeechApiError | None = None
    submit_calls: list[float] = field(default_factory=list)
    #: Every look at an operation answered with this error.
    look_error: SpeechApiError | None = None

    async def submit(self, request: RecognitionRequest, credentials: Credentials) -> OperationState:
        self.submit_calls.append(asyncio.get_running_loop().time())
        if self.submit_error is not None:
            raise self.submit_error
        key = request.audio_uri.rsplit("/", 1)[-1]
        if key in self.throttle:
            self.throttle.discard(key)
            raise SpeechApiError("quota exceeded", http_status=429, retry_after=0.5)
        self.submitted.append((key, credentials.folder_id))
        return OperationState(id=f"op-{len(self.submitted)}", done=False)

    async def get_operation(self, operation_id: str, credentials: Credentials) -> OperationState:
        self.looks[operation_id] += 1
        if self.look_error is not None:
            raise self.look_error
        return OperationState(id=operation_id, done=operation_id in self.done, response={"chunks": []})

    async def cancel(self, operation_id: str, credentials: Credentials) -> None:
        self.cancelled.append(operation_id)


@dataclass
class Rig:
    cluster: Cluster
    speech: Speech
    secrets: Secrets
    scheduler: Scheduler

    def add(
        self,
        name: str,
        *,
        status: Mapping[str, Any] | None = None,
        exists: bool = True,
        namespace: str = "calls",
        annotations: Mapping[str, str] | None = None,
    ) -> None:
        job = body(name, spec={"source": {"bucket": "calls", "key": f"{name}.ogg"}}, status=status)
        job["metadata"]["namespace"] = namespace
        if annotations:
            job["metadata"]["annotations"] = dict(annotations)
        if exists:
            self.cluster.objects[name] = job
        self.scheduler.observe(copy.deepcopy(job))


def rig(*, secrets: Secrets | None = None, **settings: Any) -> Rig:
    cluster, speech, secrets = Cluster(), Speech(), secrets or Secrets()
    storages = FakeStorages((audio_dir() / "librivox-all.ogg").read_bytes())
    config = Settings(
        **{"quota_window_seconds": 100.0, "submit_quota": 1000, "check_quota": 100_000, **settings}
    )
    workflow = JobWorkflow(
        config,
        speech=cast(SpeechClient, speech),
        storage=cast(StorageFactory, storages),
        secrets=cast(SecretReader, secrets),
        jobs=cast(JobStore, cluster),
        identity="me",
    )
    return Rig(cluster, speech, secrets, Scheduler(workflow, config))


def running(name: str, due_in: float) -> dict[str, Any]:
    return {
        "phase": "Running",
        "reason": "Submitted",
        "operationId": f"op-{name}",
        "submittedAt": format_time(now()),
        "nextCheckAt": format_time(now() + timedelta(seconds=due_in)),
        "audio": {"durationSeconds": 10, "channels": 1},
    }


async def test_a_job_deleted_unseen_is_forgotten_not_checked_over_and_over() -> None:
    """Its DELETED event never came (a watch gap): the first write that finds it gone ends it."""
    setup = rig()
    setup.speech.done.add("op-ghost")
    setup.scheduler.start()
    try:
        setup.add("ghost", status=running("ghost", -30), exists=False)
        setup.add("live", status=running("live", 1))
        await until(lambda: setup.speech.looks["op-live"] >= 1, timeout=5)
        await asyncio.sleep(0.5)
    finally:
        await setup.scheduler.stop(1.0)
    assert setup.speech.looks["op-ghost"] == 1
    assert len(setup.scheduler) == 1


async def test_a_job_queued_before_its_secret_existed_is_billed_to_its_folder() -> None:
    """With quotas per folder, a job whose Secret is missing at first cannot know its folder: once
    the Secret is there, its submission goes through its folder's budget, not the shared one."""
    setup = rig(
        secrets=Secrets(folder="b1gfolder", ready=False),
        quota_scope="folder-id",
        submit_retry_base_seconds=0.2,
        submit_retry_max_seconds=0.3,
    )
    setup.scheduler.start()
    try:
        setup.add("early")
        await until(lambda: setup.cluster.objects["early"].get("status", {}).get("phase") == "Pending")
        setup.secrets.ready = True
        setup.add("late")
        await until(lambda: len(setup.speech.submitted) == 2, timeout=10)
        scopes = {entry.job.ref.name: entry.scope for entry in setup.scheduler._jobs.values()}
    finally:
        await setup.scheduler.stop(1.0)
    assert scopes == {"early": "folder:b1gfolder", "late": "folder:b1gfolder"}
    assert [folder for _, folder in setup.speech.submitted] == ["b1gfolder", "b1gfolder"]


async def test_checks_whose_status_write_fails_still_count_against_the_check_quota() -> None:
    """SpeechKit was asked, then the apiserver failed the write: the call counts all the same,
    so an apiserver outage never lets the checks exceed their quota."""
    setup = rig(quota_window_seconds=2.0, check_quota=10)
    stamps: list[float] = []
    looks = setup.speech.get_operation

    async def timed(operation_id: str, credentials: Credentials) -> OperationState:
        stamps.append(asyncio.get_running_loop().time())
        return await looks(operation_id, credentials)

    setup.speech.get_operation = timed  # type: ignore[method-assign]
    for index in range(30):
        setup.speech.done.add(f"op-j{index}")
    setup.cluster.down = True
    setup.scheduler.start()
    try:
        for index in range(30):
            setup.add(f"j{index}", status=running(f"j{index}", -1))
        await asyncio.sleep(6.0)
    finally:
        await setup.scheduler.stop(1.0)
    assert len(stamps) >= 10, "the checks went on through the outage"
    assert in_any_window(stamps, 2.0) <= 10


async def test_a_missing_secret_while_others_wait_in_line_writes_once() -> None:
    """A repeated problem updates the status when its reason changes, not each time the job is
    back in line."""
    setup = rig(
        secrets=Secrets(missing_in={"other"}),
        quota_window_seconds=100.0,
        submit_quota=100,
        submit_retry_base_seconds=0.3,
        submit_retry_max_seconds=0.5,
    )
    setup.scheduler.start()
    try:
        for index in range(12):  # a backlog: jobs wait in line, and say so
            setup.add(f"bulk-{index}")
        setup.add("waiting", namespace="other")
        await asyncio.sleep(6.0)
    finally:
        await setup.scheduler.stop(1.0)
    # The first problem: a status write and a RetryScheduled Event; nothing on the retries.
    assert setup.cluster.writes["waiting"] <= 3, setup.cluster.log


async def test_a_submission_answered_429_costs_few_writes() -> None:
    setup = rig()
    setup.speech.throttle.add("once.ogg")
    setup.scheduler.start()
    try:
        setup.add("once")
        await until(lambda: len(setup.speech.submitted) == 1, timeout=10)
        await asyncio.sleep(0.2)
    finally:
        await setup.scheduler.stop(1.0)
    # intent, waiting (429), intent, recorded, Submitted Event; the job's end adds two more.
    assert setup.cluster.writes["once"] <= 5, setup.cluster.log


async def test_a_job_found_gone_by_a_write_has_its_running_operation_cancelled() -> None:
    setup = rig()
    setup.speech.look_error = SpeechApiError("bad gateway", http_status=502)  # the check writes
    setup.scheduler.start()
    try:
        setup.add("ghost", status=running("ghost", -1), exists=False)  # its DELETED event missed
        await until(lambda: setup.speech.cancelled == ["op-ghost"], timeout=5)
    finally:
        await setup.scheduler.stop(1.0)
    assert len(setup.scheduler) == 0


async def test_submissions_that_may_have_reached_speechkit_count_against_the_quota() -> None:
    """Timeouts (uncertain: possibly processed) spend their tokens: a brownout does not turn the
    backlog into a burst of possibly billed submissions."""
    setup = rig(
        quota_window_seconds=4.0,
        submit_quota=4,
        submit_retry_base_seconds=0.05,
        submit_retry_max_seconds=0.05,
    )
    setup.speech.submit_error = SpeechApiError("read timed out")
    setup.scheduler.start()
    try:
        for index in range(10):
            setup.add(f"j{index}")
        await asyncio.sleep(5.0)
    finally:
        await setup.scheduler.stop(1.0)
    assert setup.speech.submit_calls, "the submissions were tried"
    assert in_any_window(setup.speech.submit_calls, 4.0) <= 4


async def test_with_quotas_per_folder_checks_move_to_their_folder_once_its_secret_is_read() -> None:
    secrets = Secrets(folder="b1gfolder", ready=False)
    setup = rig(secrets=secrets, quota_scope="folder-id")
    setup.scheduler.start()
    try:
        setup.add("r", status=running("r", -1))
        await until(lambda: setup.scheduler._jobs["uid-r"].scope is not None, timeout=5)
        secrets.ready = True
        await until(lambda: setup.speech.looks["op-r"] >= 1, timeout=60)
        scope = setup.scheduler._jobs["uid-r"].scope
    finally:
        await setup.scheduler.stop(1.0)
    assert scope == "folder:b1gfolder"


async def test_a_job_created_to_adopt_an_operation_is_checked_never_submitted() -> None:
    """The seed script's operation becomes the job's own: no submission, no submission token, the
    Submitted condition says Adopted, and the job ends with the operation's result."""
    setup = rig(submit_quota=1)  # one token an hour: adoptions must not need any
    setup.speech.done.add("e03seedop1")
    setup.scheduler.start()
    try:
        setup.add(
            "seeded",
            annotations={
                "speechkit.dev/adopt-operation": "e03seedop1",
                "speechkit.dev/adopt-submitted-at": "2026-11-29T10:00:00Z",
            },
        )
        setup.add("seeded-too", annotations={"speechkit.dev/adopt-operation": "e03seedop2"})
        await until(lambda: setup.cluster.objects["seeded"].get("status", {}).get("phase") == "Succeeded")
        await until(lambda: setup.speech.looks["e03seedop2"] >= 1)
    finally:
        await setup.scheduler.stop(1.0)
    assert setup.speech.submitted == []
    status = setup.cluster.objects["seeded"]["status"]
    assert status["operationId"] == "e03seedop1"
    assert status["submittedAt"] == "2026-11-29T10:00:00.000Z"
    submitted = next(c for c in status["conditions"] if c["type"] == "Submitted")
    assert (submitted["status"], submitted["reason"]) == ("True", "Adopted")
    assert ("seeded", "event", "Adopted") in setup.cluster.log
    assert setup.cluster.objects["seeded-too"]["status"]["operationId"] == "e03seedop2"


def test_the_adopt_annotation_reaches_the_workflow_as_written() -> None:
    """The scheduler does not judge the id (the workflow fails a malformed one): a present but
    malformed or empty annotation must never read as "no annotation", which would submit the job."""
    adopt, at = "speechkit.dev/adopt-operation", "speechkit.dev/adopt-submitted-at"
    assert _adoption({adopt: "e03ok", at: "2026-11-29T10:00:00Z"}) == (
        "e03ok",
        datetime(2026, 11, 29, 10, tzinfo=UTC),
    )
    assert _adoption({adopt: "e03ok", at: "not a time"}) == ("e03ok", None)
    assert _adoption({adopt: "E03Flying"}) == ("E03Flying", None)
    assert _adoption({adopt: "../../etc/passwd"}) == ("../../etc/passwd", None)
    assert _adoption({adopt: ""}) == ("", None)
    assert _adoption({adopt: 42}) == (None, None)  # never from the API server: annotations are strings
    assert _adoption({at: "2026-11-29T10:00:00Z"}) == (None, None)
    assert _adoption(None) == (None, None)


async def test_an_adopt_annotation_never_replaces_an_operation_and_a_malformed_one_fails_the_job() -> None:
    """A job that already has an operation keeps it (a copied manifest carries the annotation). An
    annotation that is not an operation id (a path, uppercase, empty) fails the job for good with
    InvalidAdoption, and nothing is submitted for it: the operation its author meant may be running,
    and a submission would pay for the audio a second time."""
    setup = rig()
    malformed = {"odd": "../../etc/passwd", "upper": "E03Flying", "empty": ""}
    setup.scheduler.start()
    try:
        setup.add(
            "own",
            status=running("own", 30),
            annotations={"speechkit.dev/adopt-operation": "e03other"},
        )
        for name, value in malformed.items():
            setup.add(name, annotations={"speechkit.dev/adopt-operation": value})
        setup.add("plain")  # no annotation: submitted as usual
        await until(
            lambda: all(
                setup.cluster.objects[name].get("status", {}).get("phase") == "Failed" for name in malformed
            )
        )
        await until(lambda: len(setup.speech.submitted) == 1)
        await asyncio.sleep(0.2)
    finally:
        await setup.scheduler.stop(1.0)
    assert setup.speech.submitted == [("plain.ogg", None)]
    assert setup.cluster.objects["own"]["status"]["operationId"] == "op-own"
    assert setup.speech.looks["e03other"] == 0
    for name, value in malformed.items():
        status = setup.cluster.objects[name]["status"]
        assert (status["phase"], status["reason"]) == ("Failed", "InvalidAdoption"), name
        assert "operationId" not in status
        assert "submission" not in status, "no intent was written: nothing was about to be sent"
        message = status["message"]
        assert f"speechkit.dev/adopt-operation: {value!r} is not a SpeechKit operation id" in message
        assert "not submitted" in message
        assert "delete the job and create it without the annotation" in message
        submitted = next(c for c in status["conditions"] if c["type"] == "Submitted")
        assert (submitted["status"], submitted["reason"]) == ("False", "InvalidAdoption")
        assert (name, "event", "Failed") in setup.cluster.log


async def test_a_refused_submission_is_counted_in_the_metrics() -> None:
    setup = rig()
    setup.speech.throttle.add("once.ogg")
    setup.scheduler.start()
    try:
        setup.add("once")
        await until(lambda: len(setup.speech.submitted) == 1, timeout=10)
    finally:
        await setup.scheduler.stop(1.0)
    text = generate_latest(setup.scheduler.workflow.metrics.registry).decode()
    assert 'speechkit_operator_api_throttled_total{endpoint="submit"} 1.0' in text
    assert 'speechkit_operator_api_calls_total{code="429",endpoint="submit"} 1.0' in text
    assert 'speechkit_operator_api_calls_total{code="200",endpoint="submit"} 1.0' in text


async def test_deleting_a_job_that_adopted_an_operation_never_cancels_it() -> None:
    """A migration batch deleted to be applied again (its source is immutable) deletes its children:
    the seed script's operations they adopted run on, for the new batch's children to adopt."""
    setup = rig()
    adopted = {
        **running("seeded", 3600),
        "operationId": "e03seedop1",
        "conditions": [
            {
                "type": "Submitted",
                "status": "True",
                "reason": "Adopted",
                "lastTransitionTime": format_time(now()),
            }
        ],
    }
    setup.scheduler.start()
    try:
        setup.add("seeded", status=adopted, annotations={"speechkit.dev/adopt-operation": "e03seedop1"})
        # Its annotation edited away since: its condition still says whose operation it is.
        setup.add("edited", status={**adopted, "operationId": "e03seedop2"})
        setup.add("own", status=running("own", 3600))
        await asyncio.sleep(0.1)
        for name in ("seeded", "edited", "own"):
            setup.scheduler.observe(setup.cluster.objects.pop(name), deleted=True)
        await until(lambda: setup.speech.cancelled == ["op-own"], timeout=5)
        await asyncio.sleep(0.2)
    finally:
        await setup.scheduler.stop(1.0)
    assert setup.speech.cancelled == ["op-own"]
