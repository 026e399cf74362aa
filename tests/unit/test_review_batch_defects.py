"""Adversarial review of the TranscriptionBatch controller: each test shows one defect the review
found, fixed since. The fakes are those of
``tests/unit/test_batch_controller.py``."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import pytest

from speechkit_operator import batches
from speechkit_operator.clients.kube import KubeError
from speechkit_operator.clients.storage import ListPage, ObjectHead, StorageError
from speechkit_operator.models.batch import BatchSourceSpec
from speechkit_operator.scheduler import _adoption
from tests.unit.test_batch_controller import (
    BUCKET,
    UID,
    Storage,
    name_of,
    old_child,
    rig,
    spec,
    until,
)


@pytest.fixture(autouse=True)
def _fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batches, "STATUS_INTERVAL", 0.05)
    monkeypatch.setattr(batches, "SCAN_RETRY", 0.1)
    monkeypatch.setattr(batches, "OLD_JOB_RETRY", 0.1)


class RealisticStorage(Storage):
    """Like the real client: ``read_small`` refuses an object above its limit (``too_large``), and
    S3 refuses keys longer than 1,024 bytes with a 400 (``invalid``), for a HEAD as for a GET."""

    def _refuse_long(self, key: str) -> None:
        if len(key.encode()) > 1024:
            raise StorageError("invalid", f"s3://{BUCKET}/…: storage refused the request (400)")

    async def head_or_none(self, bucket: str, key: str) -> ObjectHead | None:
        self._refuse_long(key)
        return await super().head_or_none(bucket, key)

    async def read_small(self, bucket: str, key: str, *, limit: int) -> bytes | None:
        self._refuse_long(key)
        data = await super().read_small(bucket, key, limit=limit)
        if data is not None and len(data) > limit:
            raise StorageError("too_large", f"s3://{bucket}/{key}: larger than the limit of {limit} bytes")
        return data


async def _cancel(task: asyncio.Task[None] | None) -> None:
    if task is not None and not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


# -- paid work more than once ------------------------------------------------------------------


async def test_review_batch_uppercase_seed_operation_id_is_never_resubmitted() -> None:
    """The scheduler adopts only ids of the one pattern; the batch refused to adopt others, then
    submitted them: now a marker whose id is not one is unreadable, and its object skipped."""
    storage = Storage(
        {"input/a.wav": b"x", "log/a.wav.json": json.dumps({"id": "E03Flying", "done": False}).encode()}
    )
    setup = rig(storage)
    setup.batch(spec(source={"bucket": BUCKET, "prefix": "input/", "seedLog": "log/"}))
    setup.controller.start()
    try:
        await until(lambda: setup.jobs.status.get("passes") == 1)
    finally:
        await setup.controller.stop()
    assert setup.jobs.creates == []
    [failure] = setup.jobs.status["failures"]
    assert failure["reason"] == "SeedMarkerInvalid"
    assert "E03Flying" in failure["message"]
    assert _adoption({"speechkit.dev/adopt-operation": "E03Flying"})[0] == "E03Flying", (
        "handed to the workflow, which fails the job (InvalidAdoption) rather than submit it"
    )


async def test_review_batch_seed_log_without_slash_under_a_slashed_prefix_does_not_resubmit() -> None:
    storage = Storage(
        {"input/a.wav": b"x", "log/a.wav.json": json.dumps({"id": "e03flying", "done": False}).encode()}
    )
    setup = rig(storage)
    setup.batch(spec(source={"bucket": BUCKET, "prefix": "input/", "seedLog": "log"}))
    setup.controller.start()
    try:
        await until(
            lambda: setup.jobs.status.get("passes") == 1 or setup.jobs.status.get("phase") == "Failed"
        )
    finally:
        await setup.controller.stop()
    # Acceptable: the spec is refused (slashes must agree), or the operation is adopted.
    for child in setup.jobs.objects.values():
        assert "speechkit.dev/adopt-operation" in child["metadata"].get("annotations", {})


async def test_review_batch_succeeded_child_deleted_by_its_ttl_is_not_created_again_on_rescan() -> None:
    storage = Storage({"input/a.wav": b"x"})
    setup = rig(storage)
    batch_spec = spec(rescanInterval=60, template={"ttlSecondsAfterFinished": 0})
    setup.batch(batch_spec)
    setup.controller.start()
    name = name_of("input/a.wav")
    try:
        await until(lambda: setup.jobs.status.get("passes") == 1)
        setup.finish(name)
        gone = setup.jobs.objects.pop(name)  # ttlSecondsAfterFinished: 0 deletes it
        setup.controller.observe_job(gone, deleted=True)
        setup.offset[0] += timedelta(seconds=61)
        setup.batch({**batch_spec, "maxInFlight": 99}, generation=2)  # wakes the batch
        await until(lambda: setup.jobs.status.get("passes") == 2)
        await until(lambda: setup.jobs.status_writes > 0 and setup.jobs.status.get("removedSucceeded") == 1)
    finally:
        await setup.controller.stop()
    assert setup.jobs.creates == [name], "created (and so submitted) a second time"
    assert setup.jobs.status["counts"]["succeeded"] == 1


async def test_review_batch_failed_child_deleted_by_a_person_is_tried_again_on_the_next_pass() -> None:
    """A failed child stays whatever its time to live (see test_lifecycle): deleting it is how a
    person asks for the object to be tried again."""
    storage = Storage({"input/a.wav": b"x"})
    setup = rig(storage)
    batch_spec = spec(rescanInterval=60, template={"ttlSecondsAfterFinished": 0})
    setup.batch(batch_spec)
    setup.controller.start()
    name = name_of("input/a.wav")
    try:
        await until(lambda: setup.jobs.status.get("passes") == 1)
        setup.finish(name, "Failed", "SubmissionUncertain", "the answer was lost")
        await until(lambda: (setup.jobs.status.get("counts") or {}).get("failed") == 1)
        setup.controller.observe_job(setup.jobs.objects.pop(name), deleted=True)
        setup.offset[0] += timedelta(seconds=61)
        setup.batch({**batch_spec, "maxInFlight": 99}, generation=2)
        await until(lambda: setup.jobs.status.get("passes") == 2)
    finally:
        await setup.controller.stop()
    assert setup.jobs.creates == [name, name]


async def test_review_batch_adopted_child_that_fails_result_expired_is_not_resubmitted() -> None:
    storage = Storage(
        {"input/a.wav": b"x", "log/a.wav.json": json.dumps({"id": "e03flying", "done": False}).encode()}
    )
    setup = rig(storage)
    setup.batch(spec(source={"bucket": BUCKET, "prefix": "input/", "seedLog": "log/"}))
    setup.controller.start()
    name = name_of("input/a.wav")
    try:
        await until(lambda: name in setup.jobs.objects)
        setup.finish(name, "Failed", "ResultExpired", "operation e03flying is unknown to SpeechKit")
        await asyncio.sleep(0.3)
    finally:
        await setup.controller.stop()
    assert f"{name}-2" not in setup.jobs.objects


# -- retries -----------------------------------------------------------------------------------


async def test_review_batch_retry_attempt_keeps_the_config_json_language() -> None:
    storage = Storage({"input/config.json": b'{"lang": "en-US"}', "input/a.wav": b"x"})
    setup = rig(storage)
    setup.batch(spec())
    setup.controller.start()
    name = name_of("input/a.wav")
    try:
        await until(lambda: name in setup.jobs.objects)
        setup.finish(name, "Failed", "Unavailable", "try later")
        await until(lambda: f"{name}-2" in setup.jobs.objects)
    finally:
        await setup.controller.stop()
    assert setup.jobs.objects[name]["spec"]["recognition"]["languageCode"] == "en-US"
    assert setup.jobs.objects[f"{name}-2"]["spec"]["recognition"]["languageCode"] == "en-US"


async def test_review_batch_retry_survives_a_failed_create_and_the_batch_completes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    storage = Storage({"input/a.wav": b"x"})
    setup = rig(storage)
    name = name_of("input/a.wav")
    create = setup.jobs.create_job
    failed_once: list[str] = []

    async def flaky(namespace: str, body: Mapping[str, Any]) -> dict[str, Any] | None:
        if body["metadata"]["name"] == f"{name}-2" and not failed_once:
            failed_once.append("503")
            raise KubeError("POST: HTTP 503", 503)
        return await create(namespace, body)

    monkeypatch.setattr(setup.jobs, "create_job", flaky)
    setup.batch(spec())
    setup.controller.start()
    try:
        await until(lambda: name in setup.jobs.objects)
        setup.finish(name, "Failed", "Unavailable", "try later")
        await until(lambda: f"{name}-2" in setup.jobs.objects, timeout=2)
        setup.finish(f"{name}-2")
        await until(lambda: setup.jobs.status.get("phase") == "Complete", timeout=2)
    finally:
        await setup.controller.stop()


# -- lost wake-ups -----------------------------------------------------------------------------


async def test_review_batch_failure_observed_while_the_scan_ends_is_retried() -> None:
    storage = Storage({"input/a.wav": b"x"})
    setup = rig(storage)
    name = name_of("input/a.wav")
    post_event = setup.jobs.post_event

    async def hooked(ref: Any, type_: str, reason: str, message: str, *, kind: str = "") -> None:
        await post_event(ref, type_, reason, message, kind=kind)
        if reason == "ScanComplete":  # the child's watch event arrives during this request
            setup.finish(name, "Failed", "Unavailable", "try later")

    setup.jobs.post_event = hooked  # type: ignore[method-assign]
    setup.batch(spec())
    setup.controller.start()
    try:
        await until(lambda: f"{name}-2" in setup.jobs.objects, timeout=2)
    finally:
        await setup.controller.stop()


async def test_review_batch_deleted_while_waiting_for_room_ends_its_task() -> None:
    storage = Storage({f"input/{index}.wav": b"x" for index in range(3)})
    setup = rig(storage)
    setup.batch(spec(maxInFlight=1))
    setup.controller.start()
    task = setup.controller._batches[UID].task
    try:
        await until(lambda: len(setup.jobs.creates) == 1)
        await asyncio.sleep(0.1)  # the scan waits for room
        setup.controller.observe_batch(
            {"metadata": {"name": "calls-day", "namespace": "speech", "uid": UID}}, deleted=True
        )
        await asyncio.sleep(0.5)
        assert task is not None
        done = task.done()
    finally:
        await setup.controller.stop()
        await _cancel(task)  # stop() does not: the leak this test shows
    assert done, "the deleted batch's task (and its children map) lives for ever"


# -- maxInFlight -------------------------------------------------------------------------------


async def test_review_batch_an_existing_own_child_does_not_free_two_places(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    storage = Storage({f"input/{letter}.wav": b"x" for letter in "abcd"})
    setup = rig(storage)
    create = setup.jobs.create_job
    gate = asyncio.Event()
    a, b = name_of("input/a.wav"), name_of("input/b.wav")

    async def racing(namespace: str, body: Mapping[str, Any]) -> dict[str, Any] | None:
        await asyncio.sleep(0)
        name = body["metadata"]["name"]
        if name == a:
            # Created meanwhile (a create whose answer timed out, a second replica), its event not
            # seen yet: the API server answers 409.
            obj = copy.deepcopy(dict(body))
            obj["metadata"]["uid"] = "job-a"
            setup.jobs.objects[name] = obj
            return None
        if name == b:
            await gate.wait()  # a slow create: its place is reserved meanwhile
        return await create(namespace, body)

    monkeypatch.setattr(setup.jobs, "create_job", racing)
    setup.batch(spec(maxInFlight=2))
    setup.controller.start()
    try:
        await asyncio.sleep(0.3)
        gate.set()
        await asyncio.sleep(0.3)
        unfinished = [n for n, obj in setup.jobs.objects.items() if not obj.get("status")]
    finally:
        gate.set()
        await setup.controller.stop()
    assert len(unfinished) <= 2, f"maxInFlight=2, unfinished children: {unfinished}"


# -- scans that stop for ever or lose objects --------------------------------------------------


async def test_review_batch_oversized_seed_marker_is_skipped_and_the_scan_goes_on() -> None:
    storage = RealisticStorage(
        {
            "input/a.wav": b"x",
            "log/a.wav.json": json.dumps({"id": "e03big", "done": False, "pad": "x" * 5000}).encode(),
            "input/b.wav": b"x",
        },
        page=1,
    )
    setup = rig(storage)
    setup.batch(spec(source={"bucket": BUCKET, "prefix": "input/", "seedLog": "log/"}))
    setup.controller.start()
    try:
        await until(lambda: setup.jobs.status.get("passes") == 1, timeout=2)
    finally:
        await setup.controller.stop()
    assert name_of("input/b.wav") in setup.jobs.objects
    assert name_of("input/a.wav") not in setup.jobs.objects, "unreadable marker: never submitted"
    assert {f["reason"] for f in setup.jobs.status["failures"]} == {"SeedMarkerInvalid"}


async def test_review_batch_key_whose_output_key_is_too_long_is_skipped_and_the_scan_goes_on() -> None:
    long_key = "input/" + "x" * 1006 + ".wav"  # 1,016 characters: a valid job source key
    storage = RealisticStorage({long_key: b"x", "input/z.wav": b"x"}, page=1)
    setup = rig(storage)
    setup.batch(spec())
    setup.controller.start()
    try:
        await until(lambda: setup.jobs.status.get("passes") == 1, timeout=2)
    finally:
        await setup.controller.stop()
    assert name_of("input/z.wav") in setup.jobs.objects


class StuckStorage(Storage):
    """An S3-compatible storage that ignores StartAfter: the same truncated page, again and again."""

    async def list_page(
        self, bucket: str, prefix: str, *, start_after: str | None = None, max_keys: int = 1000
    ) -> ListPage:
        await asyncio.sleep(0)
        page = await super().list_page(bucket, prefix, start_after=None, max_keys=max_keys)
        return ListPage(page.objects, truncated=True)


async def test_review_batch_storage_that_ignores_start_after_stops_the_scan_with_a_reason() -> None:
    storage = StuckStorage({"input/a.wav": b"x", "input/b.wav": b"x"}, page=1)
    setup = rig(storage)
    setup.batch(spec())
    setup.controller.start()
    try:
        await asyncio.sleep(0.5)
        lists = storage.lists
    finally:
        await setup.controller.stop()
    assert lists < 50, f"{lists} listings in 0.5 s"


async def test_review_batch_recreated_batch_transcribes_objects_of_its_deleted_predecessor() -> None:
    storage = Storage({"input/a.wav": b"x"})
    setup = rig(storage)
    name = name_of("input/a.wav")
    setup.jobs.objects[name] = old_child(name)
    setup.batch(spec())  # the same manifest, applied again: a new uid
    setup.controller.start()
    try:
        await until(lambda: setup.jobs.status.get("reason") == "WaitingForOldJobs")
        assert setup.jobs.creates == [], "the old job is still there: nothing is created"
        assert ("Warning", "WaitingForOldJobs") in [(type_, reason) for type_, reason, _ in setup.jobs.events]
        del setup.jobs.objects[name]  # the garbage collector catches up
        await until(
            lambda: (
                name in setup.jobs.objects
                and setup.jobs.objects[name]["metadata"]["ownerReferences"][0]["uid"] == UID
            ),
            timeout=2,
        )
    finally:
        await setup.controller.stop()


# -- counts ------------------------------------------------------------------------------------


async def test_review_batch_counts_survive_children_deleted_by_their_ttl() -> None:
    storage = Storage({"input/a.wav": b"x", "input/b.wav": b"x"})
    setup = rig(storage)
    setup.batch(spec(template={"ttlSecondsAfterFinished": 0}))
    setup.controller.start()
    try:
        await until(lambda: len(setup.jobs.creates) == 2)
        for name in list(setup.jobs.creates):
            setup.finish(name)
        await until(lambda: setup.jobs.status.get("phase") == "Complete")
        for name in list(setup.jobs.creates):
            setup.controller.observe_job(setup.jobs.objects.pop(name), deleted=True)
        await asyncio.sleep(0.3)
    finally:
        await setup.controller.stop()
    assert setup.jobs.status["counts"]["succeeded"] == 2
    assert setup.jobs.status["progress"] == "100%"


# -- hostile specs -----------------------------------------------------------------------------


def test_review_batch_glob_selection_cost_per_key_is_small() -> None:
    """The review's globs (64 of 62 ``*a*`` segments after ``**``) are refused by the spec; the
    worst the spec allows is timed in test_batch_selection."""
    globs = ["/".join(["**", *["*a*"] * 62, f"x{index}"]) for index in range(64)]
    with pytest.raises(ValueError, match="include"):
        BatchSourceSpec.model_validate({"bucket": BUCKET, "prefix": "input/", "include": globs})
