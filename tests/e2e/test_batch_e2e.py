"""TranscriptionBatch on the real components: the kube-apiserver (and its garbage collector), MinIO,
the SpeechKit emulator and the operator as shipped (``speechkit-operator run``, the chart's RBAC).

Each test creates a batch over a prefix of its own bucket and checks what the batch did where it
shows: the child TranscriptionJobs in the apiserver (their names, labels, owner and spec), the
submissions, operations and cancellations at the emulator (counted per object key), the transcripts
in MinIO, and the batch's status (counts, progress, phase, conditions, failures).

* test_config_json_sets_the_language_unless_the_template_does: the seed's config.json.
* test_a_listing_past_one_page_gives_every_object_one_child: 1,050 other keys push most of the
  audio onto the listing's second page.
* test_include_exclude_and_extensions_select_the_objects: globs and extensions.
* test_resume_skips_done_objects_and_a_sigkill_brings_no_second_child: outputs that exist, and
  a SIGKILL while the batch waits for room to create more children.
* test_the_seed_logs_operations_are_adopted_not_submitted_again: the seed script's markers.
* test_transient_failures_are_tried_again_up_to_max_attempts: maxAttempts.
* test_a_rescan_finds_new_objects: rescanInterval.
* test_deleting_a_batch_deletes_its_children_and_cancels_their_operations: the garbage collector.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import aiohttp
import pytest
import pytest_asyncio

from devstack.components import KubeCluster
from speechkit_operator.constants import (
    ADOPT_OPERATION_ANNOTATION,
    ADOPT_SUBMITTED_AT_ANNOTATION,
    API_VERSION,
    ATTEMPT_ANNOTATION,
    BATCH_KIND,
    BATCH_LABEL,
    BATCH_PLURAL,
    BATCH_UID_LABEL,
    GROUP,
    JOB_PLURAL,
    OBJECT_LABEL,
    VERSION,
)
from speechkit_operator.logic.batch_selection import child_name
from tests.e2e.crd_fixtures import InstalledCrd
from tests.e2e.operator_fixtures import API_KEY, E2E, FOLDER_ID, OperatorRunner
from tests.emulator import EmulatedOperation
from tests.support.audio import audio_dir, reference_text

in_module_loop = pytest.mark.asyncio(loop_scope="module")

#: The smallest file of the corpus (21 KB, 7 s): every key ends with its name, so that the emulator
#: (which finds transcripts by the key's ending) knows what it says.
AUDIO = "librivox-0870.mp3"
#: The emulator's default; tests that need operations to last longer set their own and restore this.
COMPLETION_DELAY = 0.3
#: A short Lease, so that an operator started after a SIGKILL takes over within seconds.
LEASE_SETTINGS = {
    "SPEECHKIT_OPERATOR_LEASE_DURATION_SECONDS": "5",
    "SPEECHKIT_OPERATOR_LEASE_RENEW_SECONDS": "1",
}
#: How long a small batch may take to complete (generous: the machine is shared).
BATCH_TIMEOUT = 90.0
FINISHED = ("Succeeded", "Failed")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def batches_served(kube_cluster: KubeCluster, operator_crd: InstalledCrd) -> None:
    """crd_installed applied deploy/crds/ (both CRDs); wait until TranscriptionBatches are served too,
    before the module's operator starts watching them."""
    del operator_crd
    path = f"/apis/{GROUP}/{VERSION}/{BATCH_PLURAL}"
    deadline = time.monotonic() + 60
    while (response := kube_cluster.request("GET", path)).status != 200:
        assert time.monotonic() < deadline, f"{path} is not served: {response.status} {response.body[:300]!r}"
        time.sleep(0.2)


@pytest_asyncio.fixture(loop_scope="module")
async def operator(operator_runner: OperatorRunner) -> AsyncIterator[OperatorRunner]:
    """The module's operator (as in operator_fixtures.py), with a short Lease for the restart test."""
    operator_runner.env.update(LEASE_SETTINGS)
    if operator_runner.current is None:
        await operator_runner.start()
    try:
        yield operator_runner
    finally:
        operator_runner.show_new_output()


@dataclass
class Batches:
    """TranscriptionBatches in the test's namespace, and the jobs they create."""

    e2e: E2E

    def path(self, name: str = "") -> str:
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{self.e2e.namespace}/{BATCH_PLURAL}"
        return f"{path}/{name}" if name else path

    async def _request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        response = await asyncio.to_thread(self.e2e.cluster.request, method, path, body=body)
        return response.status, (response.json() if response.body else None)

    async def create(self, name: str, source: dict[str, Any], **spec: Any) -> dict[str, Any]:
        """Create a batch over this test's bucket (as the admin); returns it as created."""
        body = {
            "apiVersion": API_VERSION,
            "kind": BATCH_KIND,
            "metadata": {"name": name},
            "spec": {"source": {"bucket": self.e2e.bucket, **source}, **spec},
        }
        status, created = await self._request("POST", self.path(), body)
        assert status == 201, (status, created)
        assert isinstance(created, dict)
        return created

    async def get(self, name: str) -> dict[str, Any] | None:
        status, body = await self._request("GET", self.path(name))
        if status == 404:
            return None
        assert status == 200, (status, body)
        assert isinstance(body, dict)
        return body

    async def children(self, uid: str) -> list[dict[str, Any]]:
        """The jobs labelled with the batch's uid, by name."""
        selector = quote(f"{BATCH_UID_LABEL}={uid}", safe="")
        path = (
            f"/apis/{GROUP}/{VERSION}/namespaces/{self.e2e.namespace}/{JOB_PLURAL}?labelSelector={selector}"
        )
        status, listed = await self._request("GET", path)
        assert status == 200, (status, listed)
        items: list[dict[str, Any]] = listed["items"]
        return sorted(items, key=lambda job: job["metadata"]["name"])

    async def describe(self, name: str) -> str:
        """The batch's status and its children's phases, for failure messages."""
        batch = await self.get(name)
        if batch is None:
            return f"batch {name} does not exist"
        children = await self.children(batch["metadata"]["uid"])
        phases = {job["metadata"]["name"]: job.get("status", {}).get("phase") for job in children}
        return f"status: {json.dumps(batch.get('status'), indent=1)}\nchildren: {phases}"

    async def wait(
        self, name: str, predicate: Callable[[dict[str, Any]], bool], what: str, *, timeout: float
    ) -> dict[str, Any]:
        """The batch once ``predicate`` holds for its status."""

        async def probe() -> dict[str, Any] | None:
            batch = await self.get(name)
            return batch if batch is not None and predicate(batch.get("status") or {}) else None

        try:
            return await self.e2e.wait_for(f"batch {name} {what}", probe, timeout=timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{await self.describe(name)}") from None

    async def wait_phase(self, name: str, phase: str, *, timeout: float = BATCH_TIMEOUT) -> dict[str, Any]:
        return await self.wait(
            name, lambda status: status.get("phase") == phase, f"to be {phase}", timeout=timeout
        )

    async def delete_all(self) -> None:
        await self.e2e.kubectl(
            "delete",
            BATCH_PLURAL,
            "--all",
            "-n",
            self.e2e.namespace,
            "--timeout=30s",
            check=False,
            timeout=60,
        )


@pytest_asyncio.fixture(loop_scope="module")
async def batches(e2e: E2E) -> AsyncIterator[Batches]:
    """The test's batches; deleted afterwards, before e2e deletes the jobs (so that no batch creates
    a child again for an object whose child went)."""
    helper = Batches(e2e)
    try:
        yield helper
    finally:
        await helper.delete_all()


# --------------------------------------------------------------------------- helpers


def put(e2e: E2E, key: str, body: bytes) -> str:
    e2e.s3.put_object(Bucket=e2e.bucket, Key=key, Body=body)
    return key


def put_audio(e2e: E2E, *keys: str, name: str = AUDIO) -> list[str]:
    """Upload the corpus file ``name`` under each of ``keys``."""
    data = (audio_dir() / name).read_bytes()
    return [put(e2e, key, data) for key in keys]


def output_exists(e2e: E2E, key: str) -> bool:
    listed = e2e.s3.list_objects_v2(Bucket=e2e.bucket, Prefix=key)
    return any(item["Key"] == key for item in listed.get("Contents", []))


def source_key(job: dict[str, Any]) -> str:
    key: str = job["spec"]["source"]["key"]
    return key


def phases_of(children: Iterable[dict[str, Any]]) -> dict[str, str | None]:
    return {source_key(job): job.get("status", {}).get("phase") for job in children}


def submissions_per_key(e2e: E2E, prefix: str) -> Counter[str]:
    """Submissions SpeechKit accepted for keys under ``prefix`` of this test's bucket, per key."""
    start = f"/{e2e.bucket}/{prefix}"
    paths = (unquote(urlsplit(s["audio"]["uri"]).path) for s in e2e.speechkit.submissions)
    return Counter(path.removeprefix(f"/{e2e.bucket}/") for path in paths if path.startswith(start))


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    found: dict[str, Any] | None = next((c for c in status.get("conditions", []) if c["type"] == type_), None)
    assert found is not None, f"no {type_} condition in {status}"
    return found


def assert_children_of(
    batch: dict[str, Any], children: list[dict[str, Any]], output_prefix: str = "out/"
) -> None:
    """Every child carries the batch's labels and controller reference, and the deterministic name of
    its object (plus ``-<attempt>`` for a second attempt and later)."""
    meta = batch["metadata"]
    source = batch["spec"]["source"]
    for job in children:
        child = job["metadata"]
        key = source_key(job)
        attempt = int(child["annotations"][ATTEMPT_ANNOTATION])
        object_name = child_name(source["bucket"], key, source["bucket"], output_prefix)
        expected = object_name if attempt == 1 else f"{object_name}-{attempt}"
        assert child["name"] == expected, (key, attempt, child["name"])
        assert child["labels"][BATCH_UID_LABEL] == meta["uid"]
        assert child["labels"][BATCH_LABEL] == meta["name"]
        assert child["labels"][OBJECT_LABEL] == object_name
        owners = child["ownerReferences"]
        assert owners == [
            {
                "apiVersion": API_VERSION,
                "kind": BATCH_KIND,
                "name": meta["name"],
                "uid": meta["uid"],
                "controller": True,
            }
        ], owners
        assert job["spec"]["source"]["bucket"] == source["bucket"]


def assert_complete(status: dict[str, Any], **counts: int) -> None:
    """A run-once batch that is done: its counts (the rest are 0), 100 %, both conditions True."""
    expected = dict.fromkeys(("discovered", "queued", "running", "succeeded", "failed", "skipped"), 0)
    expected.update(counts)
    assert status["counts"] == expected, status
    assert status["phase"] == "Complete", status
    assert status["progress"] == "100%", status
    assert condition(status, "ScanComplete")["status"] == "True"
    assert condition(status, "Complete")["status"] == "True"
    assert status.get("scan") is None, status


async def seed_submit(e2e: E2E, key: str, language: str = "en-US") -> dict[str, Any]:
    """Submit ``key`` to SpeechKit as the seed script does (a presigned link, the REST API); the
    operation as SpeechKit answered, which the seed keeps as the object's marker."""
    url = e2e.s3.generate_presigned_url(
        "get_object", Params={"Bucket": e2e.bucket, "Key": key}, ExpiresIn=3600
    )
    body = {
        "config": {
            "specification": {"languageCode": language, "audioEncoding": "MP3"},
            "folderId": FOLDER_ID,
        },
        "audio": {"uri": url},
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{e2e.speechkit.url}/speech/stt/v2/longRunningRecognize",
            json=body,
            headers={"Authorization": f"Api-Key {API_KEY}"},
        ) as response,
    ):
        answer: dict[str, Any] = await response.json()
        assert response.status == 200, answer
    return answer


def recover_on_second_try(e2e: E2E, key: str) -> Callable[[EmulatedOperation], None]:
    """An ``on_submission`` hook for an object whose operations a failure rule fails: its second
    operation and later get another path, which the rule does not match (the transcript rule, on
    the corpus file's name, still does). The emulator has no "fail only the next operation"."""
    path = f"{e2e.bucket}/{key}"
    seen = 0
    renamed = key.rpartition("/")[2]

    def hook(operation: EmulatedOperation) -> None:
        nonlocal seen
        if operation.audio_path.endswith(path):
            seen += 1
            if seen > 1:
                operation.audio_path = operation.audio_path.removesuffix(renamed) + "again-" + renamed

    return hook


# --------------------------------------------------------------------------- config.json


@in_module_loop
async def test_config_json_sets_the_language_unless_the_template_does(e2e: E2E, batches: Batches) -> None:
    configured = put_audio(e2e, f"cfg/a-{AUDIO}", f"cfg/b-{AUDIO}")
    put(e2e, "cfg/config.json", b'{"lang": "en-US"}')
    unconfigured = put_audio(e2e, f"plain/c-{AUDIO}")

    from_config = await batches.create("from-config", {"prefix": "cfg/"})
    # ru-RU is also the default: only a template that says it explicitly keeps it.
    explicit = await batches.create(
        "explicit",
        {"prefix": "cfg/"},
        template={"output": {"prefix": "explicit/"}, "recognition": {"languageCode": "ru-RU"}},
    )
    no_config = await batches.create("no-config", {"prefix": "plain/"})

    expected = {"from-config": "en-US", "explicit": "ru-RU", "no-config": "ru-RU"}
    for batch, keys, output_prefix in (
        (from_config, configured, "out/"),
        (explicit, configured, "explicit/"),
        (no_config, unconfigured, "out/"),
    ):
        name = batch["metadata"]["name"]
        status = (await batches.wait_phase(name, "Complete"))["status"]
        assert_complete(status, discovered=len(keys), succeeded=len(keys))
        children = await batches.children(batch["metadata"]["uid"])
        assert_children_of(batch, children, output_prefix)
        assert sorted(source_key(job) for job in children) == sorted(keys)  # config.json is no object
        languages = {source_key(job): job["spec"]["recognition"]["languageCode"] for job in children}
        assert languages == dict.fromkeys(keys, expected[name]), name
        for job in children:
            assert output_exists(e2e, f"{output_prefix}{source_key(job)}.json"), job["status"]

    # At SpeechKit: each configured object once in en-US (from-config), once in ru-RU (explicit).
    for key in configured:
        sent = sorted(s["config"]["specification"]["languageCode"] for s in e2e.submissions_for(key))
        assert sent == ["en-US", "ru-RU"], key
    assert [s["config"]["specification"]["languageCode"] for s in e2e.submissions_for(unconfigured[0])] == [
        "ru-RU"
    ]
    # What kubectl describe shows for the batch.
    complete = await e2e.wait_for_event("from-config", "Complete")
    assert complete["involvedObject"]["kind"] == BATCH_KIND
    assert complete["message"] == "2 objects: 2 succeeded, 0 failed, 0 skipped", complete["message"]
    await e2e.wait_for_event("from-config", "ScanComplete")
    e2e.assert_operator_log_clean()


# --------------------------------------------------------------------------- pagination


#: Non-audio keys between the first audio key and the rest: the listing's first page (1,000 keys)
#: ends among them, so that most of the audio is on the second page.
FILLERS = 1050


@in_module_loop
async def test_a_listing_past_one_page_gives_every_object_one_child(e2e: E2E, batches: Batches) -> None:
    first_page_audio = [f"page/0-{AUDIO}"]  # "0" sorts before "a"
    fillers = [f"page/a-{number:04d}.txt" for number in range(FILLERS)]
    second_page_audio = [f"page/m-{number}-{AUDIO}" for number in range(3)]
    after = [f"page/z-{number}.txt" for number in range(5)]
    audio = put_audio(e2e, *first_page_audio, *second_page_audio)

    def upload_fillers() -> None:
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda key: put(e2e, key, b"not audio\n"), [*fillers, *after]))

    await asyncio.to_thread(upload_fillers)
    listed = e2e.s3.list_objects_v2(Bucket=e2e.bucket, Prefix="page/")
    assert listed["IsTruncated"], "the fillers should make the listing longer than one page"
    assert listed["Contents"][-1]["Key"] < second_page_audio[0]

    batch = await batches.create("paged", {"prefix": "page/"}, template={"output": {"formats": ["json"]}})
    status = (await batches.wait_phase("paged", "Complete", timeout=120))["status"]

    assert_complete(status, discovered=len(audio), succeeded=len(audio))
    assert status["passes"] == 1
    children = await batches.children(batch["metadata"]["uid"])
    assert_children_of(batch, children)
    assert sorted(source_key(job) for job in children) == sorted(audio)
    assert set(phases_of(children).values()) == {"Succeeded"}
    assert submissions_per_key(e2e, "page/") == Counter(dict.fromkeys(audio, 1))
    for key in audio:
        assert output_exists(e2e, f"out/{key}.json"), key
    e2e.assert_operator_log_clean()


# --------------------------------------------------------------------------- selection


@in_module_loop
async def test_include_exclude_and_extensions_select_the_objects(e2e: E2E, batches: Batches) -> None:
    chosen = [
        f"calls/2024/a-{AUDIO}",
        f"calls/2024/q1/deep/b-{AUDIO}".replace(".mp3", ".MP3"),  # extensions ignore case
        "calls/2024/e-librivox-0880.wav",
        f"calls/2025-02/f-{AUDIO}",
        f"calls/2024/\u0417\u0432\u043e\u043d\u043e\u043a 1-{AUDIO}",  # a space, Cyrillic letters
    ]
    put_audio(e2e, "calls/2024/e-librivox-0880.wav", name="librivox-0880.wav")
    put_audio(e2e, *(key for key in chosen if not key.endswith(".wav")))
    left_out = [
        f"calls/2024/skip-{AUDIO}",  # exclude **/skip-*
        f"calls/2024/q1/skip-b-{AUDIO}",  # exclude, deeper
        f"calls/2023/c-{AUDIO}",  # no include matches
        f"calls/2025-04/g-{AUDIO}",  # [1-3] does not take 4
        f"calls/2025-02/sub/h-{AUDIO}",  # * does not cross a /
        "calls/2024.mp3",  # 2024/** wants a folder
        f"calls-old/2024/x-{AUDIO}",  # a prefix "calls/" does not cover calls-old/
        "calls/2024/d-librivox-0870.ogg",  # not one of the extensions
    ]
    put_audio(e2e, *left_out)
    put(e2e, "calls/2024/notes.txt", b"notes\n")
    put(e2e, "calls/2024/", b"")  # a "folder"

    batch = await batches.create(
        "selected",
        {
            "prefix": "calls/",
            "include": ["2024/**", "2025-0[1-3]/*.mp3"],
            "exclude": ["**/skip-*"],
            "extensions": [".mp3", ".wav"],
        },
        template={"output": {"formats": ["json"]}},
    )
    status = (await batches.wait_phase("selected", "Complete"))["status"]

    children = await batches.children(batch["metadata"]["uid"])
    assert_children_of(batch, children)
    assert sorted(source_key(job) for job in children) == sorted(chosen)
    assert_complete(status, discovered=len(chosen), succeeded=len(chosen))
    assert submissions_per_key(e2e, "calls") == Counter(dict.fromkeys(chosen, 1))
    for key in chosen:
        assert output_exists(e2e, f"out/{key}.json"), key
    e2e.assert_operator_log_clean()


# --------------------------------------------------------------------------- resume


@in_module_loop
async def test_resume_skips_done_objects_and_a_sigkill_brings_no_second_child(
    e2e: E2E, batches: Batches
) -> None:
    done = put_audio(e2e, f"in/done-0-{AUDIO}", f"in/done-1-{AUDIO}")
    for key in done:
        put(e2e, f"out/{key}.json", b'{"chunks": []}')  # transcribed before
    todo = put_audio(e2e, *(f"in/todo-{number}-{AUDIO}" for number in range(7)))
    max_in_flight = 3
    e2e.speechkit.completion_delay = 4.0  # the first children are still running at the kill
    try:
        batch = await batches.create(
            "resumed",
            {"prefix": "in/"},
            maxInFlight=max_in_flight,
            template={"output": {"formats": ["json"]}},
        )
        uid = batch["metadata"]["uid"]

        async def first_children_running() -> list[dict[str, Any]] | None:
            children = await batches.children(uid)
            running = [job for job in children if job.get("status", {}).get("operationId")]
            return children if len(running) >= max_in_flight else None

        before_kill = await e2e.wait_for("the first children to be running", first_children_running)
        await e2e.operator.kill()
        at_kill = await batches.children(uid)
        assert len(at_kill) < len(todo), "the batch should have been killed mid-way"
        unfinished = [job for job in at_kill if job.get("status", {}).get("phase") not in FINISHED]
        assert len(unfinished) <= max_in_flight, phases_of(at_kill)
        assert {job["metadata"]["uid"] for job in before_kill} <= {job["metadata"]["uid"] for job in at_kill}
        await e2e.operator.start()

        # While it runs on, never more than maxInFlight unfinished children.
        most = 0

        async def complete() -> dict[str, Any] | None:
            nonlocal most
            children = await batches.children(uid)
            most = max(most, sum(job.get("status", {}).get("phase") not in FINISHED for job in children))
            current = await batches.get("resumed")
            assert current is not None
            return current if current.get("status", {}).get("phase") == "Complete" else None

        try:
            finished = await e2e.wait_for("batch resumed to complete", complete, timeout=BATCH_TIMEOUT)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{await batches.describe('resumed')}") from None
    finally:
        e2e.speechkit.completion_delay = COMPLETION_DELAY

    assert_complete(
        finished["status"], discovered=len(done) + len(todo), succeeded=len(todo), skipped=len(done)
    )
    assert most <= max_in_flight
    children = await batches.children(uid)
    assert_children_of(batch, children)
    # One child per object to do (the same ones the killed operator created are still there), none
    # for the objects already transcribed.
    assert sorted(source_key(job) for job in children) == sorted(todo)
    assert {job["metadata"]["uid"] for job in at_kill} <= {job["metadata"]["uid"] for job in children}
    assert all(job["metadata"]["annotations"][ATTEMPT_ANNOTATION] == "1" for job in children)
    assert set(phases_of(children).values()) == {"Succeeded"}
    # At SpeechKit: each object to do exactly once, the done ones never.
    assert submissions_per_key(e2e, "in/") == Counter(dict.fromkeys(todo, 1))
    e2e.assert_operator_log_clean()


# --------------------------------------------------------------------------- the seed script


@in_module_loop
@pytest.mark.parametrize(
    ("prefix", "seed_log"),
    [("input/", "log/"), ("input", "log")],
    ids=["folders", "seed-style-prefixes"],  # the seed's own S3_PREFIX=input, S3_PREFIX_LOG=log
)
async def test_the_seed_logs_operations_are_adopted_not_submitted_again(
    e2e: E2E, batches: Batches, prefix: str, seed_log: str
) -> None:
    in_flight, done_kept, done_lost, marker_without_id, new = put_audio(
        e2e,
        f"input/inflight-{AUDIO}",
        f"input/done-{AUDIO}",
        f"input/lost-{AUDIO}",
        f"input/none-{AUDIO}",
        f"input/new-{AUDIO}",
    )
    # The seed's language file, in the single-quoted form its documentation shows.
    put(e2e, "input/config.json", b"{\n    'lang': 'en-US'\n}\n")

    # The seed's run: three objects submitted; the operations are still running when the batch
    # starts (SpeechKit takes 5 s for them).
    e2e.speechkit.completion_delay = 5.0
    try:
        operations = {key: await seed_submit(e2e, key) for key in (in_flight, done_kept, done_lost)}
        for operation in operations.values():
            assert operation["done"] is False and operation["id"]
        # Wait until the operations have read their audio and sleep on the 5 s (the delay is read then).

        async def downloaded() -> bool | None:
            return (
                all(e2e.speechkit.operations[o["id"]].downloaded_bytes for o in operations.values()) or None
            )

        await e2e.wait_for("the seed's operations to download their audio", downloaded, timeout=20)
    finally:
        e2e.speechkit.completion_delay = COMPLETION_DELAY
    submits_before = e2e.speechkit.counts["submit"]

    def relative(key: str) -> str:
        return key.removeprefix("input/")

    # Its markers: in flight (the operation as SpeechKit answered it), done with the result kept in
    # out/, done but the result not written (SpeechKit still has it), and SpeechKit answered without
    # an operation.
    put(e2e, f"log/{relative(in_flight)}.json", json.dumps(operations[in_flight]).encode())
    put(
        e2e,
        f"log/{relative(done_kept)}.json",
        json.dumps({"done": "true", "id": operations[done_kept]["id"]}).encode(),
    )
    put(e2e, f"out/{relative(done_kept)}.json", b'{"chunks": []}')
    put(
        e2e,
        f"log/{relative(done_lost)}.json",
        json.dumps({"done": "true", "id": operations[done_lost]["id"]}).encode(),
    )
    put(e2e, f"log/{relative(marker_without_id)}.json", b'{"Status": "None"}')

    # Both spellings name the same markers (log/inflight-....json) and results (out/done-....json).
    batch = await batches.create("takeover", {"prefix": prefix, "seedLog": seed_log})
    status = (await batches.wait_phase("takeover", "Complete"))["status"]

    assert_complete(status, discovered=5, succeeded=4, skipped=1)
    children = {source_key(job): job for job in await batches.children(batch["metadata"]["uid"])}
    assert_children_of(batch, list(children.values()))
    assert sorted(children) == sorted([in_flight, done_lost, marker_without_id, new])
    for key in (in_flight, done_lost):
        job = children[key]
        operation_id = operations[key]["id"]
        annotations = job["metadata"]["annotations"]
        assert annotations[ADOPT_OPERATION_ANNOTATION] == operation_id
        assert ADOPT_SUBMITTED_AT_ANNOTATION in annotations
        assert job["status"]["phase"] == "Succeeded", job["status"]
        assert job["status"]["operationId"] == operation_id
        assert condition(job["status"], "Submitted")["reason"] == "Adopted"
        # The adopted operation's result, written where the child writes its transcripts.
        written = json.loads(e2e.read_output(job["status"]["outputs"]["json"])[0])
        assert written == e2e.speechkit.operations[operation_id].response
        assert e2e.speechkit.operations[operation_id].checks >= 1
        assert len(e2e.submissions_for(key)) == 1, f"{key} was submitted again"
    for key in (marker_without_id, new):
        job = children[key]
        assert ADOPT_OPERATION_ANNOTATION not in job["metadata"]["annotations"]
        assert job["spec"]["recognition"]["languageCode"] == "en-US"
        assert len(e2e.submissions_for(key)) == 1
        assert e2e.submissions_for(key)[0]["config"]["specification"]["languageCode"] == "en-US"
    txt = e2e.read_output(children[new]["status"]["outputs"]["txt"])[0]
    assert txt.strip() == reference_text(AUDIO)["1"]
    assert len(e2e.submissions_for(done_kept)) == 1  # the seed's, none since
    assert e2e.speechkit.counts["submit"] - submits_before == 2
    e2e.assert_operator_log_clean()


# --------------------------------------------------------------------------- maxAttempts


@in_module_loop
async def test_transient_failures_are_tried_again_up_to_max_attempts(e2e: E2E, batches: Batches) -> None:
    flaky, broken, recovers = put_audio(
        e2e, f"try/flaky-{AUDIO}", f"try/broken-{AUDIO}", f"try/recovers-{AUDIO}"
    )
    # The rules match the end of the audio's path, the bucket included: no other test meets them.
    e2e.speechkit.fail_operations(f"{e2e.bucket}/{flaky}", code=14, message="service unavailable")
    e2e.speechkit.fail_operations(f"{e2e.bucket}/{broken}", code=3, message="bad audio")
    e2e.speechkit.fail_operations(f"{e2e.bucket}/{recovers}", code=13, message="internal error")
    e2e.speechkit.on_submission = recover_on_second_try(e2e, recovers)
    try:
        batch = await batches.create(
            "retried", {"prefix": "try/"}, maxAttempts=3, template={"output": {"formats": ["json"]}}
        )
        status = (await batches.wait_phase("retried", "Complete"))["status"]
    finally:
        e2e.speechkit.on_submission = None

    assert_complete(status, discovered=3, succeeded=1, failed=2)
    children = await batches.children(batch["metadata"]["uid"])
    assert_children_of(batch, children)
    attempts = {
        (source_key(job), int(job["metadata"]["annotations"][ATTEMPT_ANNOTATION])): (
            job["status"]["phase"],
            job["status"]["reason"],
        )
        for job in children
    }
    assert attempts == {
        # Unavailable is transient: three attempts, all failed.
        (flaky, 1): ("Failed", "Unavailable"),
        (flaky, 2): ("Failed", "Unavailable"),
        (flaky, 3): ("Failed", "Unavailable"),
        # InvalidArgument is not: one attempt.
        (broken, 1): ("Failed", "InvalidArgument"),
        # Internal is transient: the second attempt succeeded.
        (recovers, 1): ("Failed", "Internal"),
        (recovers, 2): ("Succeeded", "Succeeded"),
    }
    assert submissions_per_key(e2e, "try/") == Counter({flaky: 3, broken: 1, recovers: 2})
    failures = {failure["key"]: failure["reason"] for failure in status["failures"]}
    assert failures == {flaky: "Unavailable", broken: "InvalidArgument"}
    assert output_exists(e2e, f"out/{recovers}.json")
    e2e.assert_operator_log_clean()


@in_module_loop
async def test_a_new_attempt_keeps_the_config_json_language(e2e: E2E, batches: Batches) -> None:
    (key,) = put_audio(e2e, f"lang/retried-{AUDIO}")
    put(e2e, "lang/config.json", b'{"lang": "en-US"}')
    e2e.speechkit.fail_operations(f"{e2e.bucket}/{key}", code=14, message="service unavailable")
    e2e.speechkit.on_submission = recover_on_second_try(e2e, key)
    try:
        batch = await batches.create(
            "relang", {"prefix": "lang/"}, maxAttempts=2, template={"output": {"formats": ["json"]}}
        )
        status = (await batches.wait_phase("relang", "Complete"))["status"]
    finally:
        e2e.speechkit.on_submission = None

    assert_complete(status, discovered=1, succeeded=1)
    children = await batches.children(batch["metadata"]["uid"])
    assert len(children) == 2, phases_of(children)
    assert len(e2e.submissions_for(key)) == 2
    languages = {
        job["metadata"]["annotations"][ATTEMPT_ANNOTATION]: job["spec"]["recognition"]["languageCode"]
        for job in children
    }
    sent = [s["config"]["specification"]["languageCode"] for s in e2e.submissions_for(key)]
    assert (languages, sent) == ({"1": "en-US", "2": "en-US"}, ["en-US", "en-US"])


@in_module_loop
async def test_children_removed_after_their_ttl_keep_their_counts(e2e: E2E, batches: Batches) -> None:
    keys = put_audio(e2e, *(f"ttl/{number}-{AUDIO}" for number in range(2)))
    batch = await batches.create(
        "short-lived",
        {"prefix": "ttl/"},
        template={"output": {"formats": ["json"]}, "ttlSecondsAfterFinished": 1},
    )
    status = (await batches.wait_phase("short-lived", "Complete"))["status"]
    assert_complete(status, discovered=2, succeeded=2)

    async def children_gone() -> bool | None:
        return not await batches.children(batch["metadata"]["uid"]) or None

    await e2e.wait_for("the operator to delete the finished children", children_gone, timeout=30)
    await asyncio.sleep(3)  # a status write (every 2 s) after the deletions
    after = await batches.get("short-lived")
    assert after is not None
    assert all(output_exists(e2e, f"out/{key}.json") for key in keys)  # the transcripts stay
    assert_complete(after["status"], discovered=2, succeeded=2)


# --------------------------------------------------------------------------- rescan


@in_module_loop
async def test_a_rescan_finds_new_objects(e2e: E2E, batches: Batches) -> None:
    (first,) = put_audio(e2e, f"watch/first-{AUDIO}")
    batch = await batches.create(
        "watching", {"prefix": "watch/"}, rescanInterval=30, template={"output": {"formats": ["json"]}}
    )
    uid = batch["metadata"]["uid"]

    waiting = (
        await batches.wait(
            "watching",
            lambda status: (
                status.get("phase") == "Waiting" and status.get("counts", {}).get("succeeded") == 1
            ),
            "to wait for its next scan with its first object done",
            timeout=BATCH_TIMEOUT,
        )
    )["status"]
    assert waiting["passes"] == 1
    assert waiting["nextScanAt"], waiting
    assert condition(waiting, "Complete")["status"] == "False"
    assert condition(waiting, "Complete")["reason"] == "WaitingForNextScan"

    (second,) = put_audio(e2e, f"watch/second-{AUDIO}")
    put(e2e, "watch/second.txt", b"not audio\n")
    # The next pass comes 30 s after the first one ended.
    status = (
        await batches.wait(
            "watching",
            lambda status: (
                status.get("passes", 0) >= 2
                and status.get("phase") == "Waiting"
                and status.get("counts", {}).get("succeeded") == 2
            ),
            "to find and transcribe the new object",
            timeout=75,
        )
    )["status"]

    assert status["counts"] == {
        "discovered": 2,
        "queued": 0,
        "running": 0,
        "succeeded": 2,
        "failed": 0,
        "skipped": 0,
    }
    children = await batches.children(uid)
    assert_children_of(batch, children)
    assert sorted(source_key(job) for job in children) == sorted([first, second])
    assert submissions_per_key(e2e, "watch/") == Counter({first: 1, second: 1})
    e2e.assert_operator_log_clean()


# --------------------------------------------------------------------------- deletion


@in_module_loop
async def test_deleting_a_batch_deletes_its_children_and_cancels_their_operations(
    e2e: E2E, batches: Batches
) -> None:
    keys = put_audio(e2e, *(f"gone/{number}-{AUDIO}" for number in range(3)))
    e2e.speechkit.completion_delay = 300.0  # never finishes during this test
    try:
        batch = await batches.create(
            "doomed", {"prefix": "gone/"}, maxInFlight=2, template={"output": {"formats": ["json"]}}
        )
        uid = batch["metadata"]["uid"]

        async def two_running() -> list[dict[str, Any]] | None:
            children = await batches.children(uid)
            running = [job for job in children if job.get("status", {}).get("operationId")]
            return running if len(running) == 2 else None

        running = await e2e.wait_for("two children to be running", two_running, timeout=60)
        operation_ids = sorted(job["status"]["operationId"] for job in running)
        submits = e2e.speechkit.counts["submit"]
        # kubectl's default: the batch goes at once, the garbage collector deletes its children.
        await e2e.kubectl("delete", BATCH_PLURAL, "doomed", "-n", e2e.namespace, "--timeout=30s")
        assert await batches.get("doomed") is None

        async def children_gone() -> bool | None:
            return not await batches.children(uid) or None

        await e2e.wait_for("the garbage collector to delete the children", children_gone, timeout=90)

        async def cancelled() -> bool | None:
            return all(operation_id in e2e.speechkit.cancelled for operation_id in operation_ids) or None

        try:
            await e2e.wait_for("the children's operations to be cancelled", cancelled, timeout=30)
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}\ncancelled: {e2e.speechkit.cancelled}, wanted {operation_ids}"
            ) from None
        # Nothing comes after: no child for the third object, no submission.
        await asyncio.sleep(3)
        assert await batches.children(uid) == []
        assert e2e.speechkit.counts["submit"] == submits
    finally:
        e2e.speechkit.completion_delay = COMPLETION_DELAY

    assert sorted(cancel for cancel in e2e.speechkit.cancelled if cancel in operation_ids) == operation_ids
    assert sum(submissions_per_key(e2e, "gone/").values()) == 2
    assert all(e2e.speechkit.operations[operation_id].done for operation_id in operation_ids)
    assert not any(output_exists(e2e, f"out/{key}.json") for key in keys)
    e2e.assert_operator_log_clean()


#: A finalizer of the test's own: it keeps a deleted job in the apiserver (deletionTimestamp set)
#: as long as the test wants, which the garbage collector otherwise does for a moment only.
HOLD = "e2e.speechkit.dev/hold"


@in_module_loop
async def test_a_batch_created_again_transcribes_objects_whose_old_children_are_going(
    e2e: E2E, batches: Batches
) -> None:
    held_key, other_key = put_audio(e2e, f"again/held-{AUDIO}", f"again/other-{AUDIO}")
    spec: dict[str, Any] = {"template": {"output": {"formats": ["json"]}}}
    e2e.speechkit.completion_delay = 300.0
    held: dict[str, Any] | None = None
    try:
        first = await batches.create("again", {"prefix": "again/"}, **spec)
        first_uid = first["metadata"]["uid"]

        async def both_running() -> list[dict[str, Any]] | None:
            children = await batches.children(first_uid)
            running = [job for job in children if job.get("status", {}).get("operationId")]
            return running if len(running) == 2 else None

        running = await e2e.wait_for("both children to be running", both_running, timeout=60)
        held = next(job for job in running if source_key(job) == held_key)
        patch = json.dumps({"metadata": {"finalizers": [HOLD]}})
        name = held["metadata"]["name"]
        await e2e.kubectl("patch", JOB_PLURAL, name, "-n", e2e.namespace, "--type=merge", "-p", patch)
        # Deleted as users delete a batch to start it afresh: kubectl delete, then create again.
        await e2e.kubectl("delete", BATCH_PLURAL, "again", "-n", e2e.namespace, "--timeout=30s")

        async def old_children_going() -> bool | None:
            children = await batches.children(first_uid)
            names = {job["metadata"]["name"]: job["metadata"].get("deletionTimestamp") for job in children}
            return (list(names) == [name] and names[name] is not None) or None

        await e2e.wait_for("the garbage collector to delete the old children", old_children_going, timeout=90)
        e2e.speechkit.completion_delay = COMPLETION_DELAY
        second = await batches.create("again", {"prefix": "again/"}, **spec)

        # The other object is transcribed at once; the held one once its old child has gone.
        async def other_done() -> bool | None:
            children = await batches.children(second["metadata"]["uid"])
            return phases_of(children).get(other_key) == "Succeeded" or None

        await e2e.wait_for("the new child of the other object to succeed", other_done, timeout=60)
        await asyncio.sleep(2)
    finally:
        e2e.speechkit.completion_delay = COMPLETION_DELAY
        if held is not None:
            await e2e.kubectl(
                "patch",
                JOB_PLURAL,
                held["metadata"]["name"],
                "-n",
                e2e.namespace,
                "--type=merge",
                "-p",
                '{"metadata": {"finalizers": null}}',
                check=False,
            )

    status = (await batches.wait_phase("again", "Complete", timeout=60))["status"]
    assert status["failures"] == [], status["failures"]
    assert_complete(status, discovered=2, succeeded=2)
    children = await batches.children(second["metadata"]["uid"])
    assert sorted(source_key(job) for job in children) == sorted([held_key, other_key])
    # Each object: the first batch's operation (cancelled) and the new batch's.
    assert submissions_per_key(e2e, "again/") == Counter({held_key: 2, other_key: 2})
