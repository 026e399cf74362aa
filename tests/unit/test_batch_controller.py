"""The batch controller against fakes of the apiserver and of storage: which children it creates,
when, with what, and what it writes back, through restarts, the seed script's markers, failures
and an unreachable storage."""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from speechkit_operator import batches
from speechkit_operator.batches import BatchController
from speechkit_operator.clients.kube import KubeError
from speechkit_operator.clients.storage import ListedObject, ListPage, ObjectHead, StorageError
from speechkit_operator.logic.batch_selection import child_name
from speechkit_operator.models.job import JobRef
from speechkit_operator.workflow import JobWorkflow

BUCKET = "calls"
UID = "batch-uid-1"
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@dataclass
class Storage:
    """A bucket: keys in order, a page at most ``page`` keys; ``down`` fails every call."""

    objects: dict[str, bytes] = field(default_factory=dict)
    page: int = 1000
    down: bool = False
    lists: int = 0

    def _check(self) -> None:
        if self.down:
            raise StorageError("unavailable", "s3://calls/: connection refused")

    async def list_page(
        self, bucket: str, prefix: str, *, start_after: str | None = None, max_keys: int = 1000
    ) -> ListPage:
        self._check()
        self.lists += 1
        keys = sorted(
            k for k in self.objects if k.startswith(prefix) and (start_after is None or k > start_after)
        )
        size = min(max_keys, self.page)
        chosen = keys[:size]
        listed = tuple(ListedObject(key, len(self.objects[key]), "etag", NOW) for key in chosen)
        return ListPage(listed, truncated=len(keys) > size)

    async def head_or_none(self, bucket: str, key: str) -> ObjectHead | None:
        self._check()
        if key not in self.objects:
            return None
        return ObjectHead(len(self.objects[key]), None, NOW - timedelta(hours=1))

    async def read_small(self, bucket: str, key: str, *, limit: int) -> bytes | None:
        self._check()
        return self.objects.get(key)


class Jobs:
    """The apiserver's jobs and the batch's status, as the controller writes them."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.creates: list[str] = []
        self.status: dict[str, Any] = {}
        self.events: list[tuple[str, str, str]] = []
        self.status_writes = 0
        #: The TranscriptionBatches there are, by name (Rig.batch adds them).
        self.batches: dict[str, dict[str, Any]] = {}
        self._uids = itertools.count(1)

    async def create_job(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any] | None:
        name = body["metadata"]["name"]
        if name in self.objects:
            return None
        obj = copy.deepcopy(dict(body))
        obj["metadata"]["uid"] = f"job-{next(self._uids)}"
        self.objects[name] = obj
        self.creates.append(name)
        return copy.deepcopy(obj)

    async def get(self, job: JobRef) -> dict[str, Any] | None:
        found = self.objects.get(job.name)
        return copy.deepcopy(found) if found is not None else None

    async def list_jobs(
        self, namespace: str, *, label_selector: str, limit: int = 500
    ) -> AsyncIterator[dict[str, Any]]:
        label, value = label_selector.split("=")
        for obj in list(self.objects.values()):
            if obj["metadata"].get("labels", {}).get(label) == value:
                yield copy.deepcopy(obj)

    async def get_batch(self, namespace: str, name: str) -> dict[str, Any] | None:
        found = self.batches.get(name)
        return copy.deepcopy(found) if found is not None else None

    async def patch_batch_status(self, batch: JobRef, status: Mapping[str, Any]) -> dict[str, Any]:
        for key, value in status.items():
            if value is None:
                self.status.pop(key, None)
            else:
                self.status[key] = copy.deepcopy(value)
        self.status_writes += 1
        return {"status": copy.deepcopy(self.status)}

    async def post_event(self, ref: JobRef, type_: str, reason: str, message: str, *, kind: str = "") -> None:
        self.events.append((type_, reason, message))


@dataclass
class Workflow:
    jobs: Jobs
    storage: Storage

    async def storage_for(self, owner: JobRef, secret: str | None) -> Storage:
        return self.storage


@dataclass
class Rig:
    controller: BatchController
    jobs: Jobs
    storage: Storage
    offset: list[timedelta]

    def batch(
        self,
        spec: Mapping[str, Any],
        *,
        status: Mapping[str, Any] | None = None,
        generation: int = 1,
        uid: str = UID,
        name: str = "calls-day",
    ) -> None:
        body = {
            "metadata": {"name": name, "namespace": "speech", "uid": uid, "generation": generation},
            "spec": dict(spec),
            "status": dict(status or {}),
        }
        self.jobs.batches[name] = body
        self.controller.observe_batch(body)

    def finish(
        self, name: str, phase: str = "Succeeded", reason: str = "Succeeded", message: str = ""
    ) -> None:
        """The child's job reaches ``phase`` (as its watch event would say)."""
        obj = self.jobs.objects[name]
        obj["status"] = {"phase": phase, "reason": reason, "message": message}
        self.controller.observe_job(copy.deepcopy(obj))

    def children(self) -> list[str]:
        return sorted(self.jobs.objects)


def old_child(name: str) -> dict[str, Any]:
    """A running child of ``input/a.wav`` left by a batch (uid ``old-batch-uid``) that is gone."""
    return {
        "metadata": {
            "name": name,
            "uid": "old-child",
            "labels": {"speechkit.dev/batch-uid": "old-batch-uid", "speechkit.dev/object": name},
            "ownerReferences": [
                {
                    "apiVersion": "speechkit.dev/v1alpha1",
                    "kind": "TranscriptionBatch",
                    "name": "calls-day",
                    "uid": "old-batch-uid",
                    "controller": True,
                }
            ],
        },
        "spec": {"source": {"bucket": BUCKET, "key": "input/a.wav"}},
        "status": {"phase": "Running"},
    }


def rig(storage: Storage | None = None, jobs: Jobs | None = None) -> Rig:
    jobs = jobs or Jobs()
    storage = storage or Storage()
    offset = [timedelta(0)]

    def clock() -> datetime:
        return NOW + offset[0]

    workflow = Workflow(jobs, storage)
    controller = BatchController(cast(JobWorkflow, workflow), clock=clock)
    return Rig(controller, jobs, storage, offset)


def spec(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"source": {"bucket": BUCKET, "prefix": "input/"}, "maxInFlight": 100}
    base.update(overrides)
    return base


def name_of(key: str, prefix: str = "out/") -> str:
    return child_name(BUCKET, key, BUCKET, prefix)


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.01)


@pytest.fixture(autouse=True)
def _fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batches, "STATUS_INTERVAL", 0.05)
    monkeypatch.setattr(batches, "SCAN_RETRY", 0.1)


async def test_one_child_per_selected_object_with_its_language_owner_and_labels() -> None:
    storage = Storage(
        {
            "input/config.json": b'{"lang": "en-US"}',
            "input/a.wav": b"x",
            "input/b.mp3": b"x",
            "input/notes.txt": b"x",
            "input/sub/c.ogg": b"x",
            "input/skip-me.wav": b"x",
            "other/d.wav": b"x",
        }
    )
    setup = rig(storage)
    setup.batch(spec(source={"bucket": BUCKET, "prefix": "input/", "exclude": ["skip-*"]}, priority=5))
    setup.controller.start()
    try:
        await until(lambda: len(setup.jobs.creates) == 3)
        await until(lambda: setup.jobs.status.get("phase") == "Running")
    finally:
        await setup.controller.stop()
    keys = {obj["spec"]["source"]["key"]: obj for obj in setup.jobs.objects.values()}
    assert sorted(keys) == ["input/a.wav", "input/b.mp3", "input/sub/c.ogg"]
    child = keys["input/a.wav"]
    assert child["metadata"]["name"] == name_of("input/a.wav")
    assert child["spec"]["recognition"]["languageCode"] == "en-US"
    assert child["spec"]["priority"] == 5
    assert child["metadata"]["ownerReferences"][0]["uid"] == UID
    assert child["metadata"]["labels"]["speechkit.dev/batch"] == "calls-day"
    assert setup.jobs.status["counts"]["discovered"] == 3
    assert setup.jobs.status["progress"] == "0%"


async def test_an_explicit_template_language_wins_over_config_json() -> None:
    storage = Storage({"input/config.json": b"{'lang': 'kk-KZ'}", "input/a.wav": b"x"})
    setup = rig(storage)
    setup.batch(spec(template={"recognition": {"languageCode": "ru-RU"}}))
    setup.controller.start()
    try:
        await until(lambda: len(setup.jobs.creates) == 1)
    finally:
        await setup.controller.stop()
    [child] = setup.jobs.objects.values()
    assert child["spec"]["recognition"]["languageCode"] == "ru-RU"


async def test_a_malformed_config_json_pauses_the_scan_with_its_reason_and_creates_nothing() -> None:
    storage = Storage({"input/config.json": b'{"lang": 5}', "input/a.wav": b"x"})
    setup = rig(storage)
    setup.batch(spec())
    setup.controller.start()
    try:
        await until(lambda: setup.jobs.status.get("reason") == "InvalidConfig")
        assert setup.jobs.creates == []
        storage.objects["input/config.json"] = b'{"lang": "en-US"}'  # fixed: the scan goes on
        await until(lambda: len(setup.jobs.creates) == 1)
    finally:
        await setup.controller.stop()
    assert ("Warning", "InvalidConfig") in [(t, r) for t, r, _ in setup.jobs.events]


async def test_no_more_than_max_in_flight_unfinished_children() -> None:
    storage = Storage({f"input/{index:02}.wav": b"x" for index in range(10)})
    setup = rig(storage)
    setup.batch(spec(maxInFlight=3))
    setup.controller.start()
    try:
        await until(lambda: len(setup.jobs.creates) == 3)
        await asyncio.sleep(0.2)
        assert len(setup.jobs.creates) == 3
        setup.finish(setup.jobs.creates[0])
        await until(lambda: len(setup.jobs.creates) == 4)
        await asyncio.sleep(0.2)
        assert len(setup.jobs.creates) == 4
        for name in list(setup.jobs.creates):
            setup.finish(name)
        await until(lambda: len(setup.jobs.creates) == 7)
    finally:
        await setup.controller.stop()


async def test_objects_with_transcripts_are_skipped_and_the_batch_completes_once() -> None:
    storage = Storage(
        {"input/a.wav": b"x", "input/b.wav": b"x", "out/input/b.wav.json": b"{}", "input/c.wav": b"x"}
    )
    setup = rig(storage)
    setup.batch(spec())
    setup.controller.start()
    try:
        await until(lambda: len(setup.jobs.creates) == 2)
        for name in setup.jobs.creates:
            setup.finish(name)
        await until(lambda: setup.jobs.status.get("phase") == "Complete")
        await asyncio.sleep(0.2)
    finally:
        await setup.controller.stop()
    counts = setup.jobs.status["counts"]
    assert counts == {"discovered": 3, "queued": 0, "running": 0, "succeeded": 2, "failed": 0, "skipped": 1}
    assert setup.jobs.status["progress"] == "100%"
    assert [reason for _, reason, _ in setup.jobs.events].count("Complete") == 1
    assert name_of("input/b.wav") not in setup.jobs.objects


async def test_listing_goes_on_page_after_page_and_a_restart_resumes_after_the_last_page() -> None:
    storage = Storage({f"input/{index:04}.txt": b"" for index in range(25)}, page=10)
    storage.objects.update({"input/0003.wav": b"x", "input/0017.wav": b"x", "input/0024.wav": b"x"})
    setup = rig(storage)
    setup.batch(spec(maxInFlight=1))
    setup.controller.start()
    try:
        await until(lambda: len(setup.jobs.creates) == 1)
        await asyncio.sleep(0.2)  # waiting for room, in the second page
    finally:
        await setup.controller.stop()
    status = copy.deepcopy(setup.jobs.status)
    assert status["scan"]["after"] == "input/0008.txt", "the first page is done, the second is not"
    # A new process: the same children, the status as written. Nothing is created twice.
    again = rig(storage, setup.jobs)
    again.batch(spec(maxInFlight=10), status=status)
    again.controller.start()
    try:
        await until(lambda: len(setup.jobs.creates) == 3)
        await until(lambda: again.jobs.status.get("scan") is None and again.jobs.status.get("passes") == 1)
    finally:
        await again.controller.stop()
    assert sorted(setup.jobs.creates) == sorted(
        {name_of(k) for k in ("input/0003.wav", "input/0017.wav", "input/0024.wav")}
    )
    assert again.jobs.status["counts"]["discovered"] == 3


async def test_seed_markers_adopt_running_operations_and_skip_finished_ones() -> None:
    storage = Storage(
        {
            "input/flying.wav": b"x",
            "log/flying.wav.json": json.dumps({"id": "e03flying", "done": False}).encode(),
            "input/done.wav": b"x",
            "log/done.wav.json": json.dumps({"done": "true", "id": "e03done"}).encode(),
            "out/done.wav.json": b"{}",
            "input/lost.wav": b"x",
            "log/lost.wav.json": json.dumps({"done": "true", "id": "e03lost"}).encode(),
            "input/never.wav": b"x",
            "log/never.wav.json": b'{"Status": "None"}',
            "input/garbled.wav": b"x",
            "log/garbled.wav.json": b"{not json",
            "input/new.wav": b"x",
        }
    )
    setup = rig(storage)
    setup.batch(
        spec(
            source={"bucket": BUCKET, "prefix": "input/", "seedLog": "log/"},
            template={"output": {"prefix": "transcripts/"}},
        )
    )
    setup.controller.start()
    try:
        await until(lambda: setup.jobs.status.get("passes") == 1)
    finally:
        await setup.controller.stop()
    made = {
        obj["spec"]["source"]["key"]: obj["metadata"].get("annotations", {})
        for obj in setup.jobs.objects.values()
    }
    assert sorted(made) == ["input/flying.wav", "input/lost.wav", "input/never.wav", "input/new.wav"]
    assert made["input/flying.wav"]["speechkit.dev/adopt-operation"] == "e03flying"
    assert made["input/flying.wav"]["speechkit.dev/adopt-submitted-at"].startswith("2026-11-30T11:00:00")
    # Marked done but its result is gone: SpeechKit may still have it, so it is adopted, not paid again.
    assert made["input/lost.wav"]["speechkit.dev/adopt-operation"] == "e03lost"
    assert "speechkit.dev/adopt-operation" not in made["input/never.wav"]
    assert "speechkit.dev/adopt-operation" not in made["input/new.wav"]
    assert setup.jobs.status["counts"]["skipped"] == 2  # done, garbled
    [failure] = setup.jobs.status["failures"]
    assert (failure["key"], failure["reason"]) == ("input/garbled.wav", "SeedMarkerInvalid")


async def test_transient_failures_get_new_attempts_up_to_max_attempts_permanent_ones_none() -> None:
    storage = Storage({"input/flaky.wav": b"x", "input/broken.wav": b"x"})
    setup = rig(storage)
    setup.batch(spec(maxAttempts=3))
    setup.controller.start()
    flaky, broken = name_of("input/flaky.wav"), name_of("input/broken.wav")
    try:
        await until(lambda: len(setup.jobs.creates) == 2)
        setup.finish(broken, "Failed", "UnsupportedAudio", "not audio")
        setup.finish(flaky, "Failed", "Unavailable", "try later")
        await until(lambda: f"{flaky}-2" in setup.jobs.objects)
        setup.finish(f"{flaky}-2", "Failed", "Internal", "oops")
        await until(lambda: f"{flaky}-3" in setup.jobs.objects)
        setup.finish(f"{flaky}-3", "Failed", "Unavailable", "still")
        await until(lambda: setup.jobs.status.get("phase") == "Complete")
        await asyncio.sleep(0.2)
    finally:
        await setup.controller.stop()
    assert sorted(setup.jobs.creates) == sorted([broken, flaky, f"{flaky}-2", f"{flaky}-3"])
    counts = setup.jobs.status["counts"]
    assert (counts["discovered"], counts["failed"], counts["succeeded"]) == (2, 2, 0)
    assert {(f["key"], f["reason"]) for f in setup.jobs.status["failures"]} == {
        ("input/broken.wav", "UnsupportedAudio"),
        ("input/flaky.wav", "Unavailable"),
    }
    # An old attempt's late event changes nothing.
    setup.controller.observe_job(copy.deepcopy(setup.jobs.objects[flaky]))


async def test_a_rescan_finds_new_objects_and_only_those() -> None:
    storage = Storage({"input/a.wav": b"x"})
    setup = rig(storage)
    setup.batch(spec(rescanInterval=60))
    setup.controller.start()
    try:
        await until(lambda: setup.jobs.status.get("passes") == 1)
        setup.finish(setup.jobs.creates[0])
        await until(lambda: setup.jobs.status.get("phase") == "Waiting")
        storage.objects["input/b.wav"] = b"x"
        setup.offset[0] = timedelta(seconds=61)
        setup.batch(spec(rescanInterval=60, maxInFlight=50), generation=2)  # an edit wakes the batch
        await until(lambda: setup.jobs.status.get("passes") == 2)
    finally:
        await setup.controller.stop()
    assert sorted(setup.jobs.creates) == sorted([name_of("input/a.wav"), name_of("input/b.wav")])


async def test_an_unreachable_storage_pauses_the_scan_and_it_goes_on_afterwards() -> None:
    storage = Storage({"input/a.wav": b"x"}, down=True)
    setup = rig(storage)
    setup.batch(spec())
    setup.controller.start()
    try:
        await until(lambda: setup.jobs.status.get("reason") == "StorageUnavailable")
        assert "connection refused" in setup.jobs.status["message"]
        storage.down = False
        await until(lambda: len(setup.jobs.creates) == 1)
        await until(lambda: setup.jobs.status.get("reason") != "StorageUnavailable")
    finally:
        await setup.controller.stop()
    warnings = [reason for type_, reason, _ in setup.jobs.events if type_ == "Warning"]
    assert warnings == ["StorageUnavailable"], "one warning, not one per retry"


async def test_a_deleted_batch_creates_nothing_more() -> None:
    storage = Storage({f"input/{index}.wav": b"x" for index in range(5)})
    setup = rig(storage)
    setup.batch(spec(maxInFlight=1))
    setup.controller.start()
    try:
        await until(lambda: len(setup.jobs.creates) == 1)
        setup.controller.observe_batch(
            {"metadata": {"name": "calls-day", "namespace": "speech", "uid": UID}}, deleted=True
        )
        setup.finish(setup.jobs.creates[0])
        await asyncio.sleep(0.3)
    finally:
        await setup.controller.stop()
    assert len(setup.jobs.creates) == 1
    assert len(setup.controller) == 0


async def test_an_invalid_spec_fails_the_batch_with_the_reason() -> None:
    setup = rig(Storage({"input/a.wav": b"x"}))
    setup.batch({"source": {"bucket": "Not A Bucket"}})
    setup.controller.start()
    try:
        await until(lambda: setup.jobs.status.get("phase") == "Failed")
    finally:
        await setup.controller.stop()
    assert setup.jobs.status["reason"] == "InvalidSpec"
    assert "bucket" in setup.jobs.status["message"]
    assert setup.jobs.creates == []


async def test_a_failing_create_pauses_the_scan_without_losing_the_object(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    storage = Storage({"input/a.wav": b"x", "input/b.wav": b"x"})
    setup = rig(storage)
    create = setup.jobs.create_job
    failures = [2]

    async def flaky(namespace: str, body: Mapping[str, Any]) -> dict[str, Any] | None:
        if failures[0] > 0:
            failures[0] -= 1
            raise KubeError("POST: HTTP 503", 503)
        return await create(namespace, body)

    monkeypatch.setattr(setup.jobs, "create_job", flaky)
    setup.batch(spec())
    setup.controller.start()
    try:
        await until(lambda: len(setup.jobs.creates) == 2, timeout=10)
        await until(lambda: setup.jobs.status.get("passes") == 1)
    finally:
        await setup.controller.stop()
    assert setup.jobs.status["counts"]["discovered"] == 2


async def test_a_copied_batch_skips_the_objects_another_batch_transcribes() -> None:
    """Two batches over the same objects and outputs (a copied manifest): one job per object."""
    storage = Storage({"input/a.wav": b"x", "input/b.wav": b"x"})
    setup = rig(storage)
    setup.batch(spec())
    setup.controller.start()
    try:
        await until(lambda: len(setup.jobs.creates) == 2)
    finally:
        await setup.controller.stop()
    copied = rig(storage, Jobs())
    copied.jobs.objects = setup.jobs.objects  # the same namespace
    copied.jobs.batches = setup.jobs.batches
    copied.batch(spec(), uid="copied-uid", name="calls-day-copy")
    copied.controller.start()
    try:
        await until(lambda: copied.jobs.status.get("phase") == "Complete")
    finally:
        await copied.controller.stop()
    assert copied.jobs.creates == []
    assert copied.jobs.status["counts"]["skipped"] == 2
    assert {f["reason"] for f in copied.jobs.status["failures"]} == {"TakenByAnotherJob"}


def stuck_job(name: str, key: str) -> dict[str, Any]:
    """A job of ``name`` being deleted that never goes: a person's, held by a foreign finalizer."""
    return {
        "metadata": {
            "name": name,
            "uid": "person",
            "deletionTimestamp": "2026-11-30T11:00:00Z",
            "finalizers": ["example.com/backup"],
        },
        "spec": {"source": {"bucket": BUCKET, "key": key}},
        "status": {"phase": "Running"},
    }


async def test_an_object_whose_old_job_never_goes_is_skipped_after_a_while_and_the_batch_completes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(batches, "OLD_JOB_RETRY", 0.05)
    storage = Storage({f"input/{index:04}.wav": b"x" for index in range(30)}, page=10)
    setup = rig(storage)
    stuck = name_of("input/0003.wav")
    setup.jobs.objects[stuck] = stuck_job(stuck, "input/0003.wav")
    setup.batch(spec())
    setup.controller.start()
    try:
        await until(lambda: setup.jobs.status.get("reason") == "WaitingForOldJobs")
        await asyncio.sleep(0.3)  # the page is looked at again and again: its wait goes on
        assert not setup.jobs.status.get("passes")
        assert len(setup.jobs.creates) == 9
        setup.offset[0] = timedelta(seconds=batches.OLD_JOB_PATIENCE + 1)
        await until(lambda: setup.jobs.status.get("passes") == 1)
        assert len(setup.jobs.creates) == 29
        for name in list(setup.jobs.creates):
            setup.finish(name)
        await until(lambda: setup.jobs.status.get("phase") == "Complete")
    finally:
        await setup.controller.stop()
    counts = setup.jobs.status["counts"]
    assert (counts["discovered"], counts["succeeded"], counts["skipped"]) == (30, 29, 1)
    [failure] = setup.jobs.status["failures"]
    assert (failure["key"], failure["reason"]) == ("input/0003.wav", "WaitingForOldJob")
    assert "next pass tries again" in failure["message"]


async def test_an_object_given_up_waiting_is_tried_again_by_the_next_pass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(batches, "OLD_JOB_RETRY", 0.05)
    monkeypatch.setattr(batches, "OLD_JOB_PATIENCE", 0.0)
    storage = Storage({"input/a.wav": b"x"})
    setup = rig(storage)
    stuck = name_of("input/a.wav")
    setup.jobs.objects[stuck] = stuck_job(stuck, "input/a.wav")
    setup.batch(spec(rescanInterval=60))
    setup.controller.start()
    try:
        await until(lambda: setup.jobs.status.get("passes") == 1)
        assert setup.jobs.creates == []
        del setup.jobs.objects[stuck]  # its finalizer is removed: it goes
        setup.offset[0] = timedelta(seconds=61)
        setup.batch(spec(rescanInterval=60, maxInFlight=50), generation=2)  # an edit wakes the batch
        await until(lambda: setup.jobs.status.get("passes") == 2)
    finally:
        await setup.controller.stop()
    assert setup.jobs.creates == [stuck]


async def test_a_retry_whose_old_job_never_goes_is_given_up_and_the_batch_completes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(batches, "OLD_JOB_RETRY", 0.05)
    storage = Storage({"input/a.wav": b"x"})
    setup = rig(storage)
    first = name_of("input/a.wav")
    setup.jobs.objects[f"{first}-2"] = stuck_job(f"{first}-2", "input/a.wav")
    setup.batch(spec(maxAttempts=3))
    setup.controller.start()
    try:
        await until(lambda: len(setup.jobs.creates) == 1)
        setup.finish(first, "Failed", "Unavailable", "try later")
        await until(lambda: setup.jobs.status.get("reason") == "WaitingForOldJobs")
        setup.offset[0] = timedelta(seconds=batches.OLD_JOB_PATIENCE + 1)
        await until(lambda: setup.jobs.status.get("phase") == "Complete")
    finally:
        await setup.controller.stop()
    assert setup.jobs.creates == [first]
    assert {f["reason"] for f in setup.jobs.status["failures"]} == {"WaitingForOldJob"}


async def test_an_adopted_object_whose_transcripts_exist_is_not_adopted_again() -> None:
    """The seed's marker says in flight for ever (the seed never ran again); the child that adopted
    its operation succeeded and was deleted after its TTL: a new pass (a restart, the batch applied
    again) finds our transcripts and skips the object."""
    storage = Storage(
        {
            "input/a.wav": b"x",
            "log/a.wav.json": json.dumps({"id": "e03abc", "done": False}).encode(),
            "out/input/a.wav.json": b"{}",
            "out/input/a.wav.txt": b"hi",
        }
    )
    setup = rig(storage)
    setup.batch(spec(source={"bucket": BUCKET, "prefix": "input/", "seedLog": "log/"}))
    setup.controller.start()
    try:
        await until(lambda: setup.jobs.status.get("phase") == "Complete")
    finally:
        await setup.controller.stop()
    assert setup.jobs.creates == []
    assert setup.jobs.status["counts"]["skipped"] == 1


async def test_a_seed_result_that_is_a_failed_operation_is_transcribed_anew() -> None:
    failed = {"id": "e03bad", "done": True, "error": {"code": 3, "message": "audio is too long"}}
    succeeded = {"id": "e03good", "done": True, "response": {"chunks": []}}
    storage = Storage(
        {
            "input/bad.wav": b"x",
            "log/bad.wav.json": json.dumps({"done": "true", "id": "e03bad"}).encode(),
            "out/bad.wav.json": json.dumps(failed, indent=2).encode(),
            "input/good.wav": b"x",
            "log/good.wav.json": json.dumps({"done": "true", "id": "e03good"}).encode(),
            "out/good.wav.json": json.dumps(succeeded).encode(),
            "out/good.wav.tag1.txt": b"hi",
            "input/huge.wav": b"x",
            "log/huge.wav.json": json.dumps({"done": "true", "id": "e03huge"}).encode(),
            # Larger than a failure is: not read, a transcription.
            "out/huge.wav.json": json.dumps({**failed, "pad": "x" * batches.SEED_RESULT_LIMIT}).encode(),
        }
    )
    setup = rig(storage)
    setup.batch(spec(source={"bucket": BUCKET, "prefix": "input/", "seedLog": "log/"}))
    setup.controller.start()
    try:
        await until(lambda: setup.jobs.status.get("passes") == 1)
    finally:
        await setup.controller.stop()
    assert setup.jobs.creates == [name_of("input/bad.wav")]
    [child] = setup.jobs.objects.values()
    assert "speechkit.dev/adopt-operation" not in child["metadata"]["annotations"], "a new submission"
    assert setup.jobs.status["counts"]["skipped"] == 2
