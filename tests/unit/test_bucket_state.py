"""BucketJobStore and BucketLock against a real (moto) S3 server: the apiserver's semantics
(preconditions, 404s, merge patches, a refused second creation), durability (a write is in the
bucket when it returns, and never in memory when its PUT failed), a restart that finds everything,
watch-like deliveries, and a lock that keeps two runs apart. Also the environment's credentials."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import socket
import sys
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pytest

from speechkit_operator.clients.bucket_state import (
    BucketJobStore,
    BucketLock,
    LockHeldError,
    merge_patch,
)
from speechkit_operator.clients.env_secrets import EnvSecrets, storage_endpoint
from speechkit_operator.clients.kube import JobStore, KubeError
from speechkit_operator.clients.secrets import SecretNotFoundError
from speechkit_operator.clients.storage import ObjectStorage, StorageError
from speechkit_operator.config import Settings
from speechkit_operator.models.job import JobRef
from speechkit_operator.models.storage import StorageConfig
from speechkit_operator.models.timestamps import format_time
from tests.support.moto_server import moto_s3_server

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

REGION = "us-east-1"
PREFIX = "out/.speechkit/"
NAMESPACE = "transcribe"


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with moto_s3_server() as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def storage(endpoint: str) -> ObjectStorage:
    config = StorageConfig(endpoint=endpoint, region=REGION, access_key_id="k", secret_access_key="s")
    return ObjectStorage(config, timeout=5.0)


@pytest.fixture(scope="module")
def s3(endpoint: str) -> S3Client:
    client: S3Client = boto3.client(
        "s3", endpoint_url=endpoint, region_name=REGION, aws_access_key_id="k", aws_secret_access_key="s"
    )
    return client


@pytest.fixture
def bucket(s3: S3Client) -> str:
    name = f"state-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def store(storage: ObjectStorage, bucket: str) -> BucketJobStore:
    return BucketJobStore(storage, bucket, PREFIX)


def job_body(name: str, *, labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "speechkit.dev/v1alpha1",
        "kind": "TranscriptionJob",
        "metadata": {"name": name, "labels": dict(labels or {})},
        "spec": {"source": {"bucket": "calls", "key": f"input/{name}.wav"}},
    }


def in_bucket(s3: S3Client, bucket: str, key: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    return data


def ref(body: Mapping[str, Any]) -> JobRef:
    meta = body["metadata"]
    return JobRef(meta["namespace"], meta["name"], uid=meta["uid"])


# -- the apiserver's semantics --------------------------------------------------------------------


async def test_create_assigns_identity_and_a_second_creation_of_the_name_is_refused(
    store: BucketJobStore, s3: S3Client, bucket: str
) -> None:
    created = await store.create_job(NAMESPACE, job_body("call-1"))

    assert created is not None
    meta = created["metadata"]
    assert meta["namespace"] == NAMESPACE and meta["uid"] and meta["resourceVersion"].isdigit()
    assert datetime.strptime(meta["creationTimestamp"], "%Y-%m-%dT%H:%M:%SZ")
    assert in_bucket(s3, bucket, f"{PREFIX}jobs/call-1.json") == created
    assert await store.create_job(NAMESPACE, job_body("call-1")) is None
    assert store.writes.counts == {"create": 1}


async def test_patch_honours_the_resource_version_and_the_uid_like_the_apiserver(
    store: BucketJobStore, s3: S3Client, bucket: str
) -> None:
    created = await store.create_job(NAMESPACE, job_body("call-1"))
    assert created is not None
    version = created["metadata"]["resourceVersion"]

    written = await store.patch_status(ref(created), {"phase": "Pending"}, resource_version=version)

    assert written["status"] == {"phase": "Pending"}
    assert int(written["metadata"]["resourceVersion"]) > int(version)
    # The intent is in the bucket when the write returns: a crash now loses nothing.
    assert in_bucket(s3, bucket, f"{PREFIX}jobs/call-1.json") == written
    with pytest.raises(KubeError) as stale:
        await store.patch_status(ref(created), {"phase": "Running"}, resource_version=version)
    assert stale.value.conflict
    with pytest.raises(KubeError) as replaced:
        await store.patch_status(JobRef(NAMESPACE, "call-1", uid="another-uid"), {"phase": "Running"})
    assert replaced.value.gone
    with pytest.raises(KubeError) as unknown:
        await store.patch_status(JobRef(NAMESPACE, "nobody"), {"phase": "Running"})
    assert unknown.value.gone
    with pytest.raises(KubeError) as elsewhere:
        await store.patch_status(JobRef("other", "call-1"), {"phase": "Running"})
    assert elsewhere.value.gone
    assert (await store.get(ref(created)) or {})["status"] == {"phase": "Pending"}
    assert await store.get(JobRef(NAMESPACE, "nobody")) is None


async def test_status_patches_merge_as_json_merge_patches(store: BucketJobStore) -> None:
    created = await store.create_job(NAMESPACE, job_body("call-1"))
    assert created is not None
    await store.patch_status(
        ref(created),
        {
            "phase": "Pending",
            "submission": {"nonce": "n1", "holder": "me", "startedAt": "2026-01-01T00:00:00Z"},
            "audio": {"channels": 1, "encoding": "MP3"},
            "conditions": [{"type": "A"}, {"type": "B"}],
        },
    )

    written = await store.patch_status(
        ref(created),
        {
            "submission": None,
            "operationId": "e03abc",
            "audio": {"channels": 2},
            "conditions": [{"type": "C"}],
        },
    )

    assert written["status"] == {
        "phase": "Pending",
        "operationId": "e03abc",
        "audio": {"channels": 2, "encoding": "MP3"},  # objects merge key by key
        "conditions": [{"type": "C"}],  # lists are replaced
    }


def test_merge_patch_is_rfc_7386() -> None:
    target = {"a": "b", "c": {"d": "e", "f": "g"}, "keep": [1]}
    patch = {"a": "z", "c": {"f": None, "h": {"i": None}}, "n": None}

    assert merge_patch(target, patch) == {"a": "z", "c": {"d": "e", "h": {}}, "keep": [1]}
    assert target == {"a": "b", "c": {"d": "e", "f": "g"}, "keep": [1]}  # untouched
    assert merge_patch({"a": 1}, [1, 2]) == [1, 2]
    assert merge_patch("text", {"a": None, "b": 1}) == {"b": 1}


async def test_a_write_whose_put_fails_changes_nothing_and_says_unavailable(
    store: BucketJobStore, storage: ObjectStorage, monkeypatch: pytest.MonkeyPatch, s3: S3Client, bucket: str
) -> None:
    created = await store.create_job(NAMESPACE, job_body("call-1"))
    assert created is not None

    async def refuse(*args: Any, **kwargs: Any) -> None:
        raise StorageError("unavailable", "s3://x: storage unreachable")

    monkeypatch.setattr(storage, "put", refuse)
    with pytest.raises(KubeError) as failed:
        await store.patch_status(ref(created), {"submission": {"nonce": "n1"}})

    assert failed.value.status == 0 and not failed.value.conflict and not failed.value.gone
    monkeypatch.undo()
    # Neither memory nor the bucket has the intent: nothing was sent after it.
    assert (await store.get(ref(created)) or {}).get("status") is None
    assert "status" not in in_bucket(s3, bucket, f"{PREFIX}jobs/call-1.json")
    assert store.writes.counts == {"create": 1}


async def test_concurrent_writes_to_one_job_leave_the_latest_in_the_bucket(
    store: BucketJobStore, s3: S3Client, bucket: str
) -> None:
    created = await store.create_job(NAMESPACE, job_body("call-1"))
    assert created is not None

    await asyncio.gather(*(store.patch_status(ref(created), {f"k{i}": i, "last": i}) for i in range(12)))

    held = await store.get(ref(created))
    assert held is not None
    assert {f"k{i}" for i in range(12)} <= set(held["status"])
    assert in_bucket(s3, bucket, f"{PREFIX}jobs/call-1.json") == held


async def test_list_jobs_selects_by_label_and_namespace(store: BucketJobStore) -> None:
    await store.create_job(NAMESPACE, job_body("a", labels={"speechkit.dev/batch-uid": "u1"}))
    await store.create_job(NAMESPACE, job_body("b", labels={"speechkit.dev/batch-uid": "u2"}))
    await store.create_job("elsewhere", job_body("c", labels={"speechkit.dev/batch-uid": "u1"}))

    listed = [
        job["metadata"]["name"]
        async for job in store.list_jobs(NAMESPACE, label_selector="speechkit.dev/batch-uid=u1")
    ]
    others = [
        job["metadata"]["name"]
        async for job in store.list_jobs(NAMESPACE, label_selector="speechkit.dev/batch-uid!=u1")
    ]

    assert listed == ["a"]
    assert others == ["b"]


async def test_delete_removes_the_object_only_if_it_is_the_same_job(
    store: BucketJobStore, s3: S3Client, bucket: str
) -> None:
    created = await store.create_job(NAMESPACE, job_body("call-1"))
    assert created is not None

    await store.delete(JobRef(NAMESPACE, "call-1", uid="not-its-uid"))
    assert await store.get(ref(created)) is not None

    await store.delete(ref(created))
    await store.delete(ref(created))  # gone already: fine

    assert await store.get(ref(created)) is None
    assert not s3.list_objects_v2(Bucket=bucket, Prefix=f"{PREFIX}jobs/").get("Contents")


# -- restarts ------------------------------------------------------------------------------------


async def test_a_new_store_finds_every_job_and_the_batch_and_versions_keep_growing(
    storage: ObjectStorage, bucket: str, s3: S3Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = BucketJobStore(storage, bucket, PREFIX)
    names = [f"call-{i:03d}" for i in range(7)]
    for name in names:
        created = await first.create_job(NAMESPACE, job_body(name))
        assert created is not None
        await first.patch_status(ref(created), {"phase": "Running", "operationId": f"op{name[-3:]}"})
    await first.write_batch(
        {"metadata": {"name": "transcribe", "namespace": NAMESPACE, "uid": "b"}, "status": {}}
    )
    # Not a job's state: ignored with a warning.
    s3.put_object(Bucket=bucket, Key=f"{PREFIX}jobs/garbage.json", Body=b"{not json")
    s3.put_object(
        Bucket=bucket, Key=f"{PREFIX}jobs/renamed.json", Body=json.dumps(job_body("other")).encode()
    )
    highest = max(int(body["metadata"]["resourceVersion"]) for body in first.jobs())
    # Listed a page of 3 keys at a time: the loading pages on.
    original = storage.list_page

    async def small_pages(
        bucket: str, prefix: str, *, start_after: str | None = None, max_keys: int = 1000
    ) -> Any:
        return await original(bucket, prefix, start_after=start_after, max_keys=3)

    monkeypatch.setattr(storage, "list_page", small_pages)

    second = BucketJobStore(storage, bucket, PREFIX)
    assert await second.load() == len(names)

    assert sorted(body["metadata"]["name"] for body in second.jobs()) == names
    assert second.batch is not None and second.batch["metadata"]["uid"] == "b"
    assert {body["status"]["operationId"] for body in second.jobs()} == {f"op{n[-3:]}" for n in names}
    created = await second.create_job(NAMESPACE, job_body("later"))
    assert created is not None and int(created["metadata"]["resourceVersion"]) > highest


async def test_the_initial_listing_and_each_write_reach_the_observers_after_the_write_returns(
    store: BucketJobStore,
) -> None:
    seen: list[tuple[str, str | None, bool]] = []

    def observe(body: Mapping[str, Any], *, deleted: bool = False) -> None:
        seen.append((body["metadata"]["name"], (body.get("status") or {}).get("phase"), deleted))

    existing = await store.create_job(NAMESPACE, job_body("existing"))
    assert existing is not None
    store.subscribe(observe)
    assert store.deliver_listing() == 1
    assert seen == []  # not from inside the call: from the loop, like a watch event

    created = await store.create_job(NAMESPACE, job_body("new"))
    assert created is not None
    written = await store.patch_status(ref(created), {"phase": "Queued"})
    await store.delete(ref(created))
    await asyncio.sleep(0)

    assert seen == [
        ("existing", None, False),
        ("new", None, False),
        ("new", "Queued", False),
        ("new", "Queued", True),
    ]
    # Each observer gets its own copy.
    written["status"]["phase"] = "changed"
    assert (await store.get(ref(existing)) or {}).get("status") is None


async def test_events_go_to_the_callback_and_a_failing_callback_is_harmless(
    storage: ObjectStorage, bucket: str
) -> None:
    events: list[tuple[str, str, str, str, str]] = []
    store = BucketJobStore(storage, bucket, PREFIX, on_event=lambda r, *rest: events.append((r.name, *rest)))

    await store.post_event(JobRef(NAMESPACE, "call-1"), "Warning", "Failed", "no audio")
    assert events == [("call-1", "Warning", "Failed", "no audio", "TranscriptionJob")]

    def broken(*args: Any) -> None:
        raise RuntimeError("boom")

    store.on_event = broken
    await store.post_event(
        JobRef(NAMESPACE, "call-1"), "Normal", "Succeeded", "ok", kind="TranscriptionBatch"
    )


async def test_batch_status_patches_merge_and_reach_the_batch_observers(
    store: BucketJobStore, s3: S3Client, bucket: str
) -> None:
    seen: list[dict[str, Any]] = []
    store.subscribe_batch(seen.append)
    batch_ref = JobRef(NAMESPACE, "transcribe", uid="batch-1")
    with pytest.raises(KubeError) as missing:
        await store.patch_batch_status(batch_ref, {"phase": "Scanning"})
    assert missing.value.gone
    await store.write_batch(
        {
            "metadata": {"name": "transcribe", "namespace": NAMESPACE, "uid": "batch-1"},
            "status": {"passes": 1},
        }
    )

    written = await store.patch_batch_status(batch_ref, {"phase": "Scanning", "scan": {"after": "a.wav"}})
    written = await store.patch_batch_status(batch_ref, {"phase": "Complete", "scan": None})

    assert written["status"] == {"passes": 1, "phase": "Complete"}
    assert in_bucket(s3, bucket, f"{PREFIX}batch.json") == written
    with pytest.raises(KubeError):
        await store.patch_batch_status(JobRef(NAMESPACE, "transcribe", uid="another"), {"phase": "Running"})
    await asyncio.sleep(0)
    assert [body["status"]["phase"] for body in seen] == ["Scanning", "Complete"]


async def test_the_learned_paces_are_kept_under_the_state_prefix(
    storage: ObjectStorage, bucket: str, s3: S3Client
) -> None:
    store = BucketJobStore(storage, bucket, PREFIX)
    assert await store.read_config(NAMESPACE, "paces") is None

    await store.write_config(NAMESPACE, "paces", {"rates.json": '{"general": 0.1}'})

    assert in_bucket(s3, bucket, f"{PREFIX}config/paces.json") == {"data": {"rates.json": '{"general": 0.1}'}}
    assert await BucketJobStore(storage, bucket, PREFIX).read_config(NAMESPACE, "paces") == {
        "rates.json": '{"general": 0.1}'
    }


def test_the_store_has_every_method_of_the_job_store_with_the_same_parameters() -> None:
    """The scheduler, the workflow and the batch controller call these: a drift would break
    ``transcribe`` only at run time."""
    public = [
        name for name, _ in inspect.getmembers(JobStore, inspect.isfunction) if not name.startswith("_")
    ]
    assert public
    for name in public:
        ours = getattr(BucketJobStore, name, None)
        assert ours is not None, name
        theirs = inspect.signature(getattr(JobStore, name))
        assert list(inspect.signature(ours).parameters) == list(theirs.parameters), name
        assert inspect.iscoroutinefunction(ours) == inspect.iscoroutinefunction(getattr(JobStore, name)) or (
            inspect.isasyncgenfunction(ours) and inspect.isasyncgenfunction(getattr(JobStore, name))
        ), name


# -- the lock -------------------------------------------------------------------------------------

LOCK = f"{PREFIX}lock.json"


def lock(storage: ObjectStorage, bucket: str, owner: str, **kwargs: Any) -> BucketLock:
    kwargs.setdefault("settle_seconds", 0.05)
    return BucketLock(storage, bucket, LOCK, owner=owner, **kwargs)


async def test_a_second_run_is_refused_while_the_first_holds_the_lock(
    storage: ObjectStorage, bucket: str, s3: S3Client
) -> None:
    first = lock(storage, bucket, "run-1", description="speechkit-operator transcribe s3://calls/")
    assert await first.acquire() is None
    record = in_bucket(s3, bucket, LOCK)
    assert record["owner"] == "run-1" and record["pid"] == os.getpid()
    assert record["command"] == "speechkit-operator transcribe s3://calls/"

    with pytest.raises(LockHeldError) as refused:
        await lock(storage, bucket, "run-2").acquire()

    assert "another run holds the lock" in str(refused.value) and "run-1" in str(refused.value)
    await first.release()
    assert not s3.list_objects_v2(Bucket=bucket, Prefix=LOCK).get("Contents")
    assert await lock(storage, bucket, "run-2").acquire() is None


async def test_an_expired_lock_is_taken_and_a_live_one_only_when_forced(
    storage: ObjectStorage, bucket: str, s3: S3Client
) -> None:
    past = datetime.now(UTC) - timedelta(seconds=1)
    s3.put_object(
        Bucket=bucket,
        Key=LOCK,
        Body=json.dumps(
            {"owner": "gone", "host": "elsewhere", "pid": 1, "expiresAt": format_time(past)}
        ).encode(),
    )
    assert await lock(storage, bucket, "run-1").acquire() is None
    assert in_bucket(s3, bucket, LOCK)["owner"] == "run-1"

    with pytest.raises(LockHeldError):
        await lock(storage, bucket, "run-2").acquire()
    forced = await lock(storage, bucket, "run-2").acquire(force=True)

    assert forced is not None and "--force-unlock" in forced and "run-1" in forced
    assert in_bucket(s3, bucket, LOCK)["owner"] == "run-2"


async def test_a_live_lock_of_a_dead_process_of_this_host_is_taken_over(
    storage: ObjectStorage, bucket: str, s3: S3Client
) -> None:
    dead = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await dead.wait()
    future = datetime.now(UTC) + timedelta(minutes=5)
    for host, pid in ((socket.gethostname(), dead.pid), ("another-host", dead.pid)):
        s3.put_object(
            Bucket=bucket,
            Key=LOCK,
            Body=json.dumps(
                {"owner": "killed", "host": host, "pid": pid, "expiresAt": format_time(future)}
            ).encode(),
        )
        if host == "another-host":
            # Another machine's process cannot be looked at: its lock holds until it expires.
            with pytest.raises(LockHeldError):
                await lock(storage, bucket, "run-1").acquire()
        else:
            taken = await lock(storage, bucket, "run-1").acquire()
            assert taken is not None and f"its process {dead.pid} is gone" in taken


async def test_simultaneous_acquisitions_let_exactly_one_run_in(storage: ObjectStorage, bucket: str) -> None:
    contenders = [lock(storage, bucket, f"run-{i}", settle_seconds=0.3) for i in range(4)]

    outcomes = await asyncio.gather(*(each.acquire() for each in contenders), return_exceptions=True)

    winners = [
        each
        for each, outcome in zip(contenders, outcomes, strict=True)
        if not isinstance(outcome, BaseException)
    ]
    assert len(winners) == 1, outcomes
    assert all(
        isinstance(outcome, LockHeldError) for outcome in outcomes if isinstance(outcome, BaseException)
    )


async def test_the_lock_is_renewed_and_a_takeover_is_noticed(
    storage: ObjectStorage, bucket: str, s3: S3Client
) -> None:
    held = lock(storage, bucket, "run-1", ttl_seconds=0.6)
    await held.acquire()
    first_expiry = in_bucket(s3, bucket, LOCK)["expiresAt"]
    lost: list[str] = []
    held.start_renewing(lost.append)

    await asyncio.sleep(0.5)
    assert in_bucket(s3, bucket, LOCK)["expiresAt"] > first_expiry
    assert lost == []
    await lock(storage, bucket, "run-2").acquire(force=True)
    await asyncio.sleep(0.5)

    assert len(lost) == 1 and "took the lock" in lost[0]
    await held.release()
    assert in_bucket(s3, bucket, LOCK)["owner"] == "run-2"  # not ours any more: left alone


# -- credentials from the environment -------------------------------------------------------------

SETTINGS = Settings()


async def test_the_seed_variables_become_the_default_secrets() -> None:
    secrets = EnvSecrets(
        SETTINGS,
        {
            "API_SECRET": "seed-key",
            "S3_KEY": "AKIA",
            "S3_SECRET": "shh",
            "SPEECHKIT_FOLDER_ID": "b1g",
            "S3_REGION": "r",
        },
    )

    assert await secrets.read("any", SETTINGS.default_credentials_secret) == {
        "api-key": b"seed-key",
        "folder-id": b"b1g",
    }
    assert await secrets.read("any", SETTINGS.default_storage_secret) == {
        "access-key-id": b"AKIA",
        "secret-access-key": b"shh",
        "region": b"r",
    }
    assert secrets.speech_sources() == ["API_SECRET", "SPEECHKIT_FOLDER_ID"]
    with pytest.raises(SecretNotFoundError):
        await secrets.read("any", "some-other-secret")


async def test_the_usual_names_work_too_and_pairs_are_not_mixed() -> None:
    secrets = EnvSecrets(
        SETTINGS,
        {
            "SPEECHKIT_IAM_TOKEN": "t1.token",
            "S3_KEY": "seed-half",  # a seed pair without its secret is not mixed with AWS's
            "AWS_ACCESS_KEY_ID": "AKIA",
            "AWS_SECRET_ACCESS_KEY": "aws-secret",
        },
    )

    assert await secrets.read("ns", SETTINGS.default_credentials_secret) == {"iam-token": b"t1.token"}
    assert (await secrets.read("ns", SETTINGS.default_storage_secret))["access-key-id"] == b"AKIA"
    assert storage_endpoint({"S3_ENDPOINT": " http://127.0.0.1:9000 "}) == "http://127.0.0.1:9000"
    assert storage_endpoint({}) is None


async def test_missing_credentials_are_named_never_shown() -> None:
    secrets = EnvSecrets(SETTINGS, {"S3_KEY": "AKIA-SECRET-VALUE"})

    with pytest.raises(SecretNotFoundError) as speech:
        await secrets.read("ns", SETTINGS.default_credentials_secret)
    with pytest.raises(SecretNotFoundError) as storage:
        await secrets.read("ns", SETTINGS.default_storage_secret)

    assert "API_SECRET" in str(speech.value) and "SPEECHKIT_API_KEY" in str(speech.value)
    assert str(storage.value) == "S3_KEY is set but S3_SECRET is not"
    assert "AKIA-SECRET-VALUE" not in str(storage.value)
    assert "S3_KEY and S3_SECRET" in (EnvSecrets(SETTINGS, {}).storage_problem() or "")


# -- what the store and the command need of ObjectStorage ------------------------------------------


async def test_storage_uploads_a_file_and_deletes_an_object(
    storage: ObjectStorage, bucket: str, s3: S3Client, tmp_path: Path
) -> None:
    path = tmp_path / "call.wav"
    path.write_bytes(b"RIFF" + bytes(100_000))

    await storage.upload_file(bucket, "uploads/call.wav", path, "audio/wav")

    head = s3.head_object(Bucket=bucket, Key="uploads/call.wav")
    assert head["ContentLength"] == 100_004 and head["ContentType"] == "audio/wav"
    await storage.delete(bucket, "uploads/call.wav")
    await storage.delete(bucket, "uploads/call.wav")  # absent: fine
    assert await storage.head_or_none(bucket, "uploads/call.wav") is None
    with pytest.raises(StorageError) as missing:
        await storage.upload_file("no-such-bucket-here", "a.wav", path, "audio/wav")
    assert missing.value.kind == "not_found"


async def test_a_store_that_drops_succeeded_jobs_holds_none_after_they_succeed(
    storage: ObjectStorage, s3: S3Client, bucket: str
) -> None:
    """``transcribe`` over 100,000 objects: a job's state (a few KiB) goes once it succeeded, from
    memory and from the bucket, its observers told it was deleted (as after a TTL); a job that
    adopted an operation, and one that failed, stay."""
    store = BucketJobStore(storage, bucket, PREFIX, drop_succeeded=True)
    seen: list[tuple[str, str | None, bool]] = []

    def observe(body: Mapping[str, Any], *, deleted: bool = False) -> None:
        seen.append((body["metadata"]["name"], (body.get("status") or {}).get("phase"), deleted))

    store.subscribe(observe)
    names = [f"call-{index}" for index in range(20)]
    for name in names:
        created = await store.create_job(NAMESPACE, job_body(name))
        assert created is not None
        await store.patch_status(ref(created), {"phase": "Running", "operationId": f"op{name[5:]}"})
        await store.patch_status(ref(created), {"phase": "Succeeded"})
    adopting = job_body("adopted")
    adopting["metadata"]["annotations"] = {"speechkit.dev/adopt-operation": "e03seed"}
    adopted = await store.create_job(NAMESPACE, adopting)
    failing = await store.create_job(NAMESPACE, job_body("failed"))
    uncertain = await store.create_job(NAMESPACE, job_body("uncertain"))
    assert adopted is not None and failing is not None and uncertain is not None
    await store.patch_status(ref(adopted), {"phase": "Succeeded"})
    await store.patch_status(ref(failing), {"phase": "Failed"})
    await store.patch_status(ref(uncertain), {"phase": "Succeeded", "uncertainSubmissions": 1})
    await asyncio.sleep(0)

    kept = ["adopted", "failed", "uncertain"]
    assert sorted(body["metadata"]["name"] for body in store.jobs()) == kept
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"{PREFIX}jobs/").get("Contents") or []
    assert sorted(entry["Key"] for entry in listed) == [f"{PREFIX}jobs/{name}.json" for name in kept]
    assert seen.count(("call-3", "Succeeded", False)) == 1
    assert seen.count(("call-3", "Succeeded", True)) == 1
    assert ("adopted", "Succeeded", True) not in seen
    assert await store.get(JobRef(NAMESPACE, "call-3")) is None
