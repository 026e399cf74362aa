"""The second review of the TranscriptionBatch controller (after its first review's fixes): each
test shows a defect it found, fixed since. The fakes are those of
``tests/unit/test_batch_controller.py``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

from speechkit_operator import batches
from speechkit_operator.clients.kube import KubeError
from speechkit_operator.clients.storage import ObjectHead, StorageError
from tests.unit.test_batch_controller import UID, Storage, name_of, old_child, rig, spec, until


@pytest.fixture(autouse=True)
def _fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batches, "STATUS_INTERVAL", 0.05)
    # The real pauses: a stopped scan is tried again in 30 s (5 s for old jobs), not at once.
    monkeypatch.setattr(batches, "SCAN_RETRY", 30.0)
    monkeypatch.setattr(batches, "OLD_JOB_RETRY", 5.0)


async def test_waiting_for_old_jobs_waits_instead_of_hammering_the_api_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    storage = Storage({"input/a.wav": b"x"})
    setup = rig(storage)
    name = name_of("input/a.wav")
    setup.jobs.objects[name] = old_child(name)
    posts = [0]
    create = setup.jobs.create_job

    async def counting(namespace: str, body: Mapping[str, Any]) -> dict[str, Any] | None:
        posts[0] += 1
        await asyncio.sleep(0.001)  # an API round trip
        return await create(namespace, body)

    monkeypatch.setattr(setup.jobs, "create_job", counting)
    setup.batch(spec())
    setup.controller.start()
    try:
        await asyncio.sleep(1.0)
    finally:
        await setup.controller.stop()
    assert posts[0] <= 2, f"{posts[0]} POSTs (and as many GETs and listings) in 1 s; OLD_JOB_RETRY is 5 s"


async def test_a_failing_create_waits_scan_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    storage = Storage({"input/a.wav": b"x"})
    setup = rig(storage)
    posts = [0]

    async def down(namespace: str, body: Mapping[str, Any]) -> dict[str, Any] | None:
        posts[0] += 1
        await asyncio.sleep(0.001)
        raise KubeError("POST: HTTP 503", 503)

    monkeypatch.setattr(setup.jobs, "create_job", down)
    setup.batch(spec())
    setup.controller.start()
    try:
        await asyncio.sleep(1.0)
    finally:
        await setup.controller.stop()
    assert posts[0] <= 2, f"{posts[0]} POSTs to a failing API server in 1 s; SCAN_RETRY is 30 s"


async def test_access_denied_on_the_output_probe_waits_scan_retry() -> None:
    class Denied(Storage):
        heads = 0

        async def head_or_none(self, bucket: str, key: str) -> ObjectHead | None:
            Denied.heads += 1
            await asyncio.sleep(0.001)
            raise StorageError("denied", f"s3://{bucket}/{key}: access denied (403)")

    storage = Denied({"input/a.wav": b"x"})
    setup = rig(storage)
    setup.batch(spec())
    setup.controller.start()
    try:
        await asyncio.sleep(1.0)
    finally:
        await setup.controller.stop()
    assert setup.jobs.status.get("reason") == "StorageAccessDenied"
    assert Denied.heads <= 2, f"{Denied.heads} HEADs, {storage.lists} listings in 1 s; SCAN_RETRY is 30 s"


@pytest.mark.parametrize("tag", ["channel", "speaker"])
async def test_multichannel_subtitle_only_outputs_are_not_found_and_the_object_is_paid_again(
    tag: str,
) -> None:
    """formats: [srt]; a stereo recording's transcripts are a.wav.channel-0.srt / .channel-1.srt (a v3
    job with speaker labels: a.wav.speaker-1.srt / .speaker-2.srt). Its succeeded child was deleted by
    its TTL (tombstone lost in a restart, or the batch was re-applied): the probe looks for
    out/input/a.wav.srt only, and the object is submitted again."""
    storage = Storage(
        {
            "input/a.wav": b"x",
            f"out/input/a.wav.{tag}-1.srt": b"1\n",
            f"out/input/a.wav.{tag}-2.srt": b"1\n",
        }
    )
    setup = rig(storage)
    setup.batch(
        spec(template={"output": {"formats": ["srt"]}, "ttlSecondsAfterFinished": 0}),
        status={"removedSucceeded": 1},  # a restart: the child was deleted by its TTL
    )
    setup.controller.start()
    try:
        await until(lambda: setup.jobs.status.get("passes") == 1 or bool(setup.jobs.creates))
    finally:
        await setup.controller.stop()
    assert setup.jobs.creates == [], "transcribed (and paid) a second time"


async def test_deleted_batch_whose_children_cannot_be_listed_leaks_its_task(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    setup = rig(Storage({"input/a.wav": b"x"}))

    async def forbidden(
        namespace: str, *, label_selector: str, limit: int = 500
    ) -> AsyncIterator[dict[str, Any]]:
        raise KubeError("GET jobs: HTTP 403", 403)
        yield {}  # pragma: no cover

    monkeypatch.setattr(setup.jobs, "list_jobs", forbidden)
    setup.batch(spec())
    setup.controller.start()
    task = setup.controller._batches[UID].task
    setup.controller.observe_batch(
        {"metadata": {"name": "calls-day", "namespace": "speech", "uid": UID}}, deleted=True
    )
    await asyncio.sleep(3.5)
    await setup.controller.stop()
    assert task is not None
    done = task.done()
    task.cancel()
    assert done, "the deleted batch's task lists for ever, and stop() no longer knows it"


async def test_deletion_event_carrying_succeeded_is_taken_for_a_person_deleting_a_running_child() -> None:
    """The watch may deliver the DELETED event without the preceding MODIFIED (a watch that expired:
    kopf starts again from a fresh list). Its body says Succeeded; the controller uses the phase it
    last knew (Running) and drops the object from its counts."""
    storage = Storage({"input/a.wav": b"x"})
    setup = rig(storage)
    setup.batch(spec(template={"ttlSecondsAfterFinished": 0}))
    setup.controller.start()
    a = name_of("input/a.wav")
    try:
        await until(lambda: a in setup.jobs.objects)
        obj = setup.jobs.objects.pop(a)
        obj["status"] = {"phase": "Succeeded", "reason": "Succeeded"}
        setup.controller.observe_job(obj, deleted=True)
        await until(lambda: setup.jobs.status.get("phase") in ("Complete", "Running"))
        await asyncio.sleep(0.3)
    finally:
        await setup.controller.stop()
    counts = setup.jobs.status["counts"]
    assert counts["succeeded"] == 1 and counts["discovered"] == 1, counts
