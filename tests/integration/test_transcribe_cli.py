"""``speechkit-operator transcribe`` as a user runs it: the real command in a subprocess, against a
moto S3 server and the SpeechKit emulator (both on loopback, in this process), with the shared
corpus. Transcripts, reruns, SIGKILLs at chosen moments and reruns after them, the cron script's
markers, the lock, local input."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

from tests.emulator import EmulatedOperation, SpeechKitEmulator
from tests.integration.conftest import API_KEY, upload
from tests.support.audio import audio_dir, reference_text

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

pytestmark = pytest.mark.integration

CORPUS = ["librivox-0870.wav", "librivox-0880.wav", "librivox-0890.wav", "librivox-0920.wav"]
STATE = "out/.speechkit/"
#: Each run's wall-clock limit (a hung run fails the test instead of the suite).
RUN_TIMEOUT = 60.0


def environment(s3_endpoint: str, speechkit: SpeechKitEmulator, **extra: str) -> dict[str, str]:
    """The cron script's variables (plus the endpoints of the fakes) and fast settings."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("SPEECHKIT_", "S3_", "AWS_", "API_SECRET"))
        and name not in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")
    }
    env.update(
        {
            "S3_KEY": "testing",
            "S3_SECRET": "testing",
            "S3_ENDPOINT": s3_endpoint,
            "S3_REGION": "us-east-1",
            "API_SECRET": API_KEY,
            "SPEECHKIT_FOLDER_ID": "b1gfolder",
            "NO_PROXY": "127.0.0.1,localhost",
            "SPEECHKIT_OPERATOR_STT_URL": speechkit.url,
            "SPEECHKIT_OPERATOR_STT_V3_URL": speechkit.url,
            "SPEECHKIT_OPERATOR_OPERATION_URL": speechkit.url,
            "SPEECHKIT_OPERATOR_IAM_TOKEN_URL": f"{speechkit.url}/iam/v1/tokens",
            "SPEECHKIT_OPERATOR_FIRST_CHECK_MIN_SECONDS": "0.1",
            "SPEECHKIT_OPERATOR_SECONDS_PER_AUDIO_MINUTE": "0",
            "SPEECHKIT_OPERATOR_POLL_INITIAL_INTERVAL_SECONDS": "0.1",
            "SPEECHKIT_OPERATOR_POLL_BACKOFF_FACTOR": "1.0",
            "SPEECHKIT_OPERATOR_POLL_MAX_INTERVAL_SECONDS": "0.3",
            "SPEECHKIT_OPERATOR_RETRY_ATTEMPTS": "2",
            "SPEECHKIT_OPERATOR_RETRY_BASE_DELAY": "0.01",
            "SPEECHKIT_OPERATOR_RETRY_MAX_DELAY": "0.2",
            "SPEECHKIT_OPERATOR_SUBMIT_RETRY_BASE_SECONDS": "0.2",
            "SPEECHKIT_OPERATOR_HTTP_TIMEOUT": "5",
            "SPEECHKIT_OPERATOR_QUOTA_WINDOW_SECONDS": "1",
            "SPEECHKIT_OPERATOR_SUBMIT_QUOTA": "10000",
            "SPEECHKIT_OPERATOR_CHECK_QUOTA": "100000",
            "SPEECHKIT_OPERATOR_SHUTDOWN_TIMEOUT_SECONDS": "5",
        }
    )
    env.update(extra)
    return env


@dataclass
class Finished:
    code: int
    stdout: str
    stderr: str


@dataclass
class Cli:
    """Runs ``python -m speechkit_operator transcribe`` with the environment of the fakes."""

    env: dict[str, str]
    cwd: Path

    async def start(self, *args: str, **env: str) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "speechkit_operator",
            "transcribe",
            "--progress",
            "plain",
            "--progress-interval",
            "0.5",
            *args,
            env={**self.env, **env},
            cwd=self.cwd,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )

    async def run(self, *args: str, **env: str) -> Finished:
        process = await self.start(*args, **env)
        return await finish(process)


async def finish(process: asyncio.subprocess.Process, timeout: float = RUN_TIMEOUT) -> Finished:
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        out, err = await process.communicate()
        raise AssertionError(f"the run did not end in {timeout} s:\n{out.decode()}\n{err.decode()}") from None
    assert process.returncode is not None
    return Finished(process.returncode, out.decode(), err.decode())


async def killed(process: asyncio.subprocess.Process) -> None:
    """SIGKILL: no cleanup, no lock released, whatever was in flight left as it was."""
    if process.returncode is None:
        process.send_signal(signal.SIGKILL)
    await process.communicate()
    assert process.returncode == -signal.SIGKILL


async def until(predicate: Callable[[], bool | Awaitable[bool]], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        outcome = predicate()
        if not isinstance(outcome, bool):
            outcome = await outcome
        if outcome:
            return
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.02)


@pytest.fixture
def cli(s3_endpoint: str, speechkit: SpeechKitEmulator, tmp_path: Path) -> Cli:
    return Cli(environment(s3_endpoint, speechkit), tmp_path)


def put_corpus(s3: S3Client, bucket: str, prefix: str = "input/", copies: int = 1) -> list[str]:
    """The corpus files under ``prefix`` (``copies`` folders of them); their keys."""
    keys: list[str] = []
    for copy in range(copies):
        folder = f"{prefix}{copy:02d}/" if copies > 1 else prefix
        keys.extend(upload(s3, bucket, name, f"{folder}{name}") for name in CORPUS)
    return keys


def keys_under(s3: S3Client, bucket: str, prefix: str) -> set[str]:
    found: set[str] = set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        found.update(item["Key"] for item in page.get("Contents", []))
    return found


def jobs_in_state(s3: S3Client, bucket: str, state: str = STATE) -> dict[str, dict[str, Any]]:
    """The job objects the runs left in the bucket, by source key."""
    jobs: dict[str, dict[str, Any]] = {}
    for key in sorted(keys_under(s3, bucket, f"{state}jobs/")):
        try:
            body = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        except s3.exceptions.NoSuchKey:
            continue  # forgotten by a run meanwhile
        jobs[body["spec"]["source"]["key"]] = body
    return jobs


def submissions_per_key(speechkit: SpeechKitEmulator, bucket: str) -> collections.Counter[str]:
    """Operations the emulator created, by the source key they read."""
    return collections.Counter(
        operation.audio_path.removeprefix(f"/{bucket}/") for operation in speechkit.operations.values()
    )


def assert_transcribed(s3: S3Client, bucket: str, keys: list[str], prefix: str = "out/") -> None:
    present = keys_under(s3, bucket, prefix)
    for key in keys:
        for fmt in ("json", "txt", "srt", "vtt"):
            assert f"{prefix}{key}.{fmt}" in present, f"{prefix}{key}.{fmt} missing"


def text_of(s3: S3Client, bucket: str, key: str) -> str:
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()


# --------------------------------------------------------------------------------------------------


async def test_a_prefix_is_transcribed_and_a_second_run_submits_nothing(
    cli: Cli, s3: S3Client, bucket: str, speechkit: SpeechKitEmulator
) -> None:
    keys = put_corpus(s3, bucket)
    s3.put_object(Bucket=bucket, Key="input/notes.pdf", Body=b"%PDF")  # not audio: not selected

    first = await cli.run(f"s3://{bucket}/input/", "--language", "en-US")

    assert first.code == 0, first.stderr + first.stdout
    assert_transcribed(s3, bucket, keys)
    assert submissions_per_key(speechkit, bucket) == dict.fromkeys(keys, 1)
    text = text_of(s3, bucket, f"out/{keys[0]}.txt")
    assert reference_text(CORPUS[0])["1"].split()[0] in text.lower()
    assert "found" in first.stdout and "transcribed" in first.stdout
    assert f"s3://{bucket}/out/<key>.{{json,txt,srt,vtt}}" in first.stdout
    assert "4 in this run" in first.stdout
    # The state: the lock released, the batch complete.
    assert f"{STATE}lock.json" not in keys_under(s3, bucket, STATE)
    batch = json.loads(text_of(s3, bucket, f"{STATE}batch.json"))
    assert batch["status"]["phase"] == "Complete"
    assert batch["status"]["counts"]["succeeded"] == 4
    # A job that succeeded is dropped at once (memory and bucket): its transcripts are the record.
    assert jobs_in_state(s3, bucket) == {}

    second = await cli.run(f"s3://{bucket}/input/", "--language", "en-US")

    assert second.code == 0, second.stderr + second.stdout
    assert len(speechkit.operations) == 4  # nothing submitted again
    batch = json.loads(text_of(s3, bucket, f"{STATE}batch.json"))
    assert batch["status"]["counts"] == {
        "discovered": 4,
        "queued": 0,
        "running": 0,
        "succeeded": 0,
        "failed": 0,
        "skipped": 4,
    }
    assert batch["status"]["passes"] == 2
    assert "0 in this run" in second.stdout
    # The jobs that succeeded are forgotten once their pass is over: their transcripts say it.
    assert jobs_in_state(s3, bucket) == {}


def uncertain_in_state(s3: S3Client, bucket: str) -> dict[str, int]:
    """Source key -> the uncertain submissions its job records."""
    return {
        key: int((body.get("status") or {}).get("uncertainSubmissions") or 0)
        for key, body in jobs_in_state(s3, bucket).items()
    }


def assert_at_most_one_submission_each(
    s3: S3Client,
    speechkit: SpeechKitEmulator,
    bucket: str,
    keys: list[str],
    recorded: Mapping[str, tuple[str, datetime]],
    uncertain_before: Mapping[str, int] | None = None,
) -> None:
    """Every object transcribed, with one submission, or one more per uncertain submission its
    state records (a run died between its intent and the answer; ``uncertain_before``: what earlier
    states recorded, as a job that succeeded is forgotten when the next pass starts). ``recorded``:
    key -> (operation id, when a run was killed with it in the state): nothing was submitted for
    that key after that."""
    assert_transcribed(s3, bucket, keys)
    counted = submissions_per_key(speechkit, bucket)
    uncertain = dict(uncertain_before or {})
    for key, number in uncertain_in_state(s3, bucket).items():
        uncertain[key] = max(number, uncertain.get(key, 0))
    for key in keys:
        assert 1 <= counted[key] <= 1 + uncertain.get(key, 0), (key, counted[key], uncertain.get(key, 0))
    for key, (operation_id, killed_at) in recorded.items():
        assert operation_id in speechkit.operations
        later = [
            operation.id
            for operation in speechkit.operations.values()
            if operation.audio_path == f"/{bucket}/{key}" and operation.created_at > killed_at
        ]
        assert not later, f"{key} had operation {operation_id} when a run was killed, and was submitted again"


def operations_in_state(s3: S3Client, bucket: str) -> dict[str, str]:
    """Source key -> operation id, for the jobs whose state has one."""
    return {
        key: body["status"]["operationId"]
        for key, body in jobs_in_state(s3, bucket).items()
        if (body.get("status") or {}).get("operationId")
    }


def submitted_or_done(s3: S3Client, bucket: str) -> set[str]:
    """Source keys with an operation in the state or with their transcripts."""
    done = {
        key[len("out/") : -len(".json")]
        for key in keys_under(s3, bucket, "out/input/")
        if key.endswith(".json")
    }
    return set(operations_in_state(s3, bucket)) | done


def intents_in_state(s3: S3Client, bucket: str) -> set[str]:
    """Source keys whose job has an intent without an operation id."""
    return {
        key
        for key, body in jobs_in_state(s3, bucket).items()
        if (body.get("status") or {}).get("submission") and not body["status"].get("operationId")
    }


async def test_killed_right_after_the_first_intent_write_the_rerun_resubmits_it_once_and_says_so(
    cli: Cli, s3: S3Client, bucket: str, speechkit: SpeechKitEmulator
) -> None:
    keys = put_corpus(s3, bucket)
    # The first submission hangs on the wire: the intent is in the bucket, its answer never comes.
    speechkit.inject("submit", None, delay=3.0)
    process = await cli.start(f"s3://{bucket}/input/")
    await until(lambda: speechkit.counts["submit"] >= 1)
    await killed(process)
    intents = intents_in_state(s3, bucket)
    assert len(intents) == 1 and not operations_in_state(s3, bucket)
    (interrupted,) = intents

    rerun = await cli.run(f"s3://{bucket}/input/")

    assert rerun.code == 0, rerun.stderr + rerun.stdout
    assert_at_most_one_submission_each(s3, speechkit, bucket, keys, {})
    job = jobs_in_state(s3, bucket)[interrupted]
    assert job["status"]["uncertainSubmissions"] == 1
    assert "uncertain" in rerun.stdout and interrupted in rerun.stdout
    # The killed run's lock was taken over at once: its process is gone.
    assert "is gone" in rerun.stderr


async def test_killed_while_the_answer_is_on_the_wire_the_second_submission_is_counted_and_explained(
    cli: Cli, s3: S3Client, bucket: str, speechkit: SpeechKitEmulator
) -> None:
    keys = put_corpus(s3, bucket)
    process = await cli.start(f"s3://{bucket}/input/")

    def kill_before_the_answer(operation: EmulatedOperation) -> None:
        speechkit.on_submission = None
        os.kill(process.pid, signal.SIGKILL)

    speechkit.on_submission = kill_before_the_answer
    assert (await finish(process)).code == -signal.SIGKILL
    (sent,) = speechkit.operations.values()  # SpeechKit has it; the job does not know its id
    assert not operations_in_state(s3, bucket)

    rerun = await cli.run(f"s3://{bucket}/input/")

    assert rerun.code == 0, rerun.stderr + rerun.stdout
    assert_at_most_one_submission_each(s3, speechkit, bucket, keys, {})
    key = sent.audio_path.removeprefix(f"/{bucket}/")
    assert submissions_per_key(speechkit, bucket)[key] == 2
    assert jobs_in_state(s3, bucket)[key]["status"]["uncertainSubmissions"] == 1
    assert "may have charged twice" in rerun.stdout


async def test_killed_after_submissions_and_mid_batch_no_object_is_submitted_twice(
    cli: Cli, s3: S3Client, bucket: str, speechkit: SpeechKitEmulator
) -> None:
    keys = put_corpus(s3, bucket, copies=3)  # 12 objects
    speechkit.completion_delay = 1.5  # operations outlive the kills
    args = (f"s3://{bucket}/input/", "--max-in-flight", "5")
    known: dict[str, tuple[str, datetime]] = {}
    uncertain: dict[str, int] = {}
    # Killed after the first submission is recorded, then mid-batch (some transcribed), then
    # with most of them submitted: each rerun goes on from the state the kill left.
    for enough in (1, 5, 9):
        process = await cli.start(*args)
        # Submitted: an operation in the state, or transcribed (a job that succeeded is dropped).
        await until(lambda n=enough: len(submitted_or_done(s3, bucket)) >= n)  # type: ignore[misc]
        await killed(process)
        killed_at = datetime.now(UTC)
        for key, operation_id in operations_in_state(s3, bucket).items():
            first = known.setdefault(key, (operation_id, killed_at))
            assert first[0] == operation_id, f"{key}: the operation id in the state was replaced"
        for key, number in uncertain_in_state(s3, bucket).items():
            uncertain[key] = max(number, uncertain.get(key, 0))

    final = await cli.run(*args)

    assert final.code == 0, final.stderr + final.stdout
    assert_at_most_one_submission_each(s3, speechkit, bucket, keys, known, uncertain)


async def test_the_cron_scripts_operations_are_adopted_not_submitted_again(
    s3_endpoint: str, s3: S3Client, bucket: str, speechkit: SpeechKitEmulator, tmp_path: Path
) -> None:
    """The seed's own layout: S3_PREFIX=input, S3_PREFIX_LOG=log, S3_PREFIX_OUT=out, no SOURCE."""
    names = CORPUS[:3]
    for name in names:
        upload(s3, bucket, name, f"input/{name}")
    running, done, fresh = names
    # The seed submitted `running` (SpeechKit has it) and finished `done` (its result is in out/).
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": f"input/{running}"})
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{speechkit.url}/speech/stt/v2/longRunningRecognize",
            json={"config": {"specification": {"languageCode": "en-US"}}, "audio": {"uri": url}},
            headers={"Authorization": f"Api-Key {API_KEY}"},
        ) as answer,
    ):
        seed_operation = (await answer.json())["id"]
    s3.put_object(
        Bucket=bucket, Key=f"log/{running}.json", Body=json.dumps({"id": seed_operation, "done": False})
    )
    s3.put_object(Bucket=bucket, Key=f"log/{done}.json", Body=json.dumps({"id": "e03done", "done": "true"}))
    s3.put_object(Bucket=bucket, Key=f"out/{done}.json", Body=b"{}")
    cli = Cli(
        environment(
            s3_endpoint,
            speechkit,
            S3_BUCKET=bucket,
            S3_PREFIX="input",
            S3_PREFIX_LOG="log",
            S3_PREFIX_OUT="out",
        ),
        tmp_path,
    )

    first = await cli.run()

    assert first.code == 0, first.stderr + first.stdout
    counted = submissions_per_key(speechkit, bucket)
    assert counted == {f"input/{running}": 1, f"input/{fresh}": 1}  # the seed's one, and the new one
    # Transcripts under out/ + the full key, beside the seed's results (out/<name>.json).
    assert_transcribed(s3, bucket, [f"input/{running}", f"input/{fresh}"])
    assert f"out/input/{done}.json" not in keys_under(s3, bucket, "out/input/")
    adopted = jobs_in_state(s3, bucket)[f"input/{running}"]
    assert adopted["status"]["operationId"] == seed_operation
    assert adopted["status"]["phase"] == "Succeeded"
    assert "1 operations of the cron script" in first.stdout
    batch = json.loads(text_of(s3, bucket, "out/.speechkit/batch.json"))
    assert batch["spec"]["source"] == {
        "bucket": bucket,
        "prefix": "input",
        "include": [],
        "exclude": [],
        "extensions": [".wav", ".ogg", ".opus", ".mp3"],
        "seedLog": "log",
        "seedOutput": "out",
    }
    assert batch["status"]["counts"]["skipped"] == 1

    again = await cli.run()

    assert again.code == 0, again.stderr + again.stdout
    assert submissions_per_key(speechkit, bucket) == counted  # the marker is not adopted again either


async def test_a_second_run_is_refused_while_one_runs_and_the_first_is_not_disturbed(
    cli: Cli, s3: S3Client, bucket: str, speechkit: SpeechKitEmulator
) -> None:
    keys = put_corpus(s3, bucket)
    speechkit.completion_delay = 2.0
    first = await cli.start(f"s3://{bucket}/input/")
    await until(lambda: f"{STATE}lock.json" in keys_under(s3, bucket, STATE))
    await asyncio.sleep(0.7)  # past the first run's read-back of its lock

    second = await cli.run(f"s3://{bucket}/input/")

    assert second.code == 4  # not a usage error: cron's next run simply comes later
    assert "another run holds the lock" in second.stderr and "--force-unlock" in second.stderr
    done = await finish(first)
    assert done.code == 0, done.stderr + done.stdout
    assert submissions_per_key(speechkit, bucket) == dict.fromkeys(keys, 1)


async def test_a_run_whose_lock_is_taken_over_stops_with_status_3(
    cli: Cli, s3: S3Client, bucket: str, speechkit: SpeechKitEmulator
) -> None:
    put_corpus(s3, bucket)
    speechkit.completion_delay = 30.0  # it would run for long
    process = await cli.start(f"s3://{bucket}/input/", "--lock-seconds", "1.5")
    await until(lambda: len(speechkit.operations) >= 1)
    # Another run, on another machine, forced its way in.
    future = datetime.now(UTC).replace(year=datetime.now(UTC).year + 1)
    s3.put_object(
        Bucket=bucket,
        Key=f"{STATE}lock.json",
        Body=json.dumps({"owner": "elsewhere", "host": "other", "expiresAt": future.isoformat()}).encode(),
    )

    done = await finish(process, timeout=20)

    assert done.code == 3, done.stderr + done.stdout
    assert "another run took the lock" in done.stderr
    assert json.loads(text_of(s3, bucket, f"{STATE}lock.json"))["owner"] == "elsewhere"  # left alone


async def test_one_object_is_a_batch_of_that_object_only(
    cli: Cli, s3: S3Client, bucket: str, speechkit: SpeechKitEmulator
) -> None:
    key = upload(s3, bucket, CORPUS[0], f"input/{CORPUS[0]}")
    # Keys that merely start with the same text, and a neighbour in the folder.
    upload(s3, bucket, CORPUS[1], f"input/{CORPUS[0]}.copy.wav")
    upload(s3, bucket, CORPUS[2], f"input/{CORPUS[2]}")

    done = await cli.run(f"s3://{bucket}/{key}")

    assert done.code == 0, done.stderr + done.stdout
    assert submissions_per_key(speechkit, bucket) == {key: 1}
    assert_transcribed(s3, bucket, [key])


async def test_a_failed_object_is_listed_with_its_reason_and_the_exit_status_is_1(
    cli: Cli, s3: S3Client, bucket: str, speechkit: SpeechKitEmulator
) -> None:
    keys = [upload(s3, bucket, CORPUS[0], f"input/{CORPUS[0]}")]
    s3.put_object(Bucket=bucket, Key="input/broken.wav", Body=b"RIFF\x00\x00not really a wave file at all")

    done = await cli.run(f"s3://{bucket}/input/")

    assert done.code == 1, done.stderr + done.stdout
    assert_transcribed(s3, bucket, keys)
    assert "failure: input/broken.wav: " in done.stdout
    assert submissions_per_key(speechkit, bucket) == {keys[0]: 1}

    again = await cli.run(f"s3://{bucket}/input/")  # a failure stays one: not submitted again

    assert again.code == 1
    assert submissions_per_key(speechkit, bucket) == {keys[0]: 1}


async def test_a_wrong_api_key_fails_every_object_and_retry_failed_tries_them_again(
    cli: Cli, s3: S3Client, bucket: str, speechkit: SpeechKitEmulator
) -> None:
    keys = put_corpus(s3, bucket)[:2]
    s3.delete_object(Bucket=bucket, Key=f"input/{CORPUS[2]}")
    s3.delete_object(Bucket=bucket, Key=f"input/{CORPUS[3]}")

    refused = await cli.run(f"s3://{bucket}/input/", API_SECRET="not-the-key")

    assert refused.code == 1, refused.stderr + refused.stdout
    assert not speechkit.operations
    assert all(f"failure: {key}: Unauthenticated" in refused.stdout for key in keys)
    assert "not-the-key" not in refused.stdout + refused.stderr

    fixed = await cli.run(f"s3://{bucket}/input/", "--retry-failed")

    assert fixed.code == 0, fixed.stderr + fixed.stdout
    assert submissions_per_key(speechkit, bucket) == dict.fromkeys(keys, 1)


async def test_local_files_are_uploaded_transcribed_and_copied_back(
    cli: Cli, s3: S3Client, bucket: str, speechkit: SpeechKitEmulator, tmp_path: Path
) -> None:
    folder = tmp_path / "recordings"
    (folder / "day 1").mkdir(parents=True)
    for name in CORPUS[:2]:
        (folder / "day 1" / name).write_bytes((audio_dir() / name).read_bytes())
    (folder / "notes.txt").write_text("not audio")

    refused = await cli.run(str(folder))
    assert refused.code == 2
    assert "--bucket" in refused.stderr and "--upload-prefix" in refused.stderr

    done = await cli.run(
        str(folder), "--bucket", bucket, "--upload-prefix", "uploads", "--local-output", "copies"
    )

    assert done.code == 0, done.stderr + done.stdout
    uploaded = [f"uploads/day 1/{name}" for name in CORPUS[:2]]
    assert keys_under(s3, bucket, "uploads/") == set(uploaded)
    assert_transcribed(s3, bucket, uploaded)
    copies = cli.cwd / "copies" / "day 1"
    assert sorted(path.name for path in copies.iterdir()) == sorted(
        f"{name}.{fmt}" for name in CORPUS[:2] for fmt in ("json", "srt", "txt", "vtt")
    )
    assert (copies / f"{CORPUS[0]}.txt").read_text() == text_of(s3, bucket, f"out/{uploaded[0]}.txt")

    again = await cli.run(
        str(folder), "--bucket", bucket, "--upload-prefix", "uploads/", "--local-output", "copies"
    )

    assert again.code == 0, again.stderr + again.stdout
    assert "2 already there" in again.stdout
    assert len(speechkit.operations) == 2


async def test_api_v3_options_go_to_v3_and_are_refused_on_v2_with_the_options_named(
    cli: Cli, s3: S3Client, bucket: str, speechkit: SpeechKitEmulator
) -> None:
    keys = put_corpus(s3, bucket)

    refused = await cli.run(f"s3://{bucket}/input/", "--language", "en-US", "--text-normalization")
    assert refused.code == 2, refused.stderr + refused.stdout
    assert "--api, --text-normalization, --speaker-labeling" in refused.stderr
    assert "API v3 options" in refused.stderr

    done = await cli.run(
        f"s3://{bucket}/input/", "--language", "en-US", "--api", "v3", "--text-normalization"
    )

    assert done.code == 0, done.stderr + done.stdout
    assert_transcribed(s3, bucket, keys)
    assert speechkit.submissions == []
    assert len(speechkit.v3_submissions) == len(keys)
    assert {
        body["recognitionModel"]["textNormalization"]["textNormalization"]
        for body in speechkit.v3_submissions
    } == {"TEXT_NORMALIZATION_ENABLED"}
