"""A TranscriptionJob's whole life, with the real operator against KMock, moto S3 and the emulator."""

from __future__ import annotations

import asyncio
import json
import re
from typing import TYPE_CHECKING, Any

import pytest

from speechkit_operator.constants import GROUP, JOB_PLURAL, LEGACY_OPERATION_ANNOTATION, VERSION
from tests.emulator import SpeechKitEmulator
from tests.integration.conftest import NAMESPACE, Cluster, Starter, upload
from tests.support.audio import reference_text

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

pytestmark = pytest.mark.integration

SRT_TIME = re.compile(r"^(\d{2}):(\d{2}):(\d{2}),(\d{3}) --> (\d{2}):(\d{2}):(\d{2}),(\d{3})$", re.M)


def read(s3: S3Client, uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    answer = s3.get_object(Bucket=bucket, Key=key)
    return answer["Body"].read().decode(), answer["ContentType"]


def spec(bucket: str, key: str, **extra: Any) -> dict[str, Any]:
    return {"source": {"bucket": bucket, "key": key}, "recognition": {"languageCode": "en-US"}, **extra}


async def test_wav_job_succeeds_with_all_four_outputs(
    k8s: Cluster, s3: S3Client, bucket: str, speechkit: SpeechKitEmulator, start_operator: Starter
) -> None:
    key = upload(s3, bucket, "librivox-0870.wav")
    await start_operator()
    await k8s.create_job("meeting", spec(bucket, key))

    status = await k8s.wait_for_phase("meeting", "Succeeded", "Failed")

    assert status["phase"] == "Succeeded", status
    assert status["operationId"]
    # The operator keeps nothing in the job's metadata: no annotations, no finalizer.
    metadata = (k8s.job("meeting") or {})["metadata"]
    assert not metadata.get("annotations") and not metadata.get("finalizers")
    assert status.get("submission") is None
    assert status["audio"] == {
        "encoding": "LINEAR16_PCM",
        "sampleRateHertz": 16000,
        "channels": 1,
        "durationSeconds": pytest.approx(7.1, abs=0.05),
        "sizeBytes": 227244,
    }
    assert set(status["outputs"]) == {"json", "txt", "srt", "vtt"}
    expected = reference_text("librivox-0870.wav")["1"]
    assert status["preview"].startswith("and mister john dashwood")
    assert status["checks"] >= 1
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Submitted"]["status"] == "True"
    assert conditions["Succeeded"]["status"] == "True"

    # The request SpeechKit got: the WAV header's rate, never a blind 48 kHz.
    submitted = speechkit.submissions[0]["config"]
    assert submitted["specification"]["audioEncoding"] == "LINEAR16_PCM"
    assert submitted["specification"]["sampleRateHertz"] == 16000
    assert submitted["specification"]["languageCode"] == "en-US"
    assert submitted["folderId"] == "b1gfolder"

    txt, txt_type = read(s3, status["outputs"]["txt"])
    assert txt.strip() == expected
    assert txt_type.startswith("text/plain")
    raw, json_type = read(s3, status["outputs"]["json"])
    assert json_type.startswith("application/json")
    words = [w["word"] for c in json.loads(raw)["chunks"] for w in c["alternatives"][0]["words"]]
    assert " ".join(words) == expected
    srt, srt_type = read(s3, status["outputs"]["srt"])
    assert srt_type.startswith("application/x-subrip")
    assert SRT_TIME.search(srt)
    assert " ".join(line for line in srt.splitlines() if re.search("[a-z]", line)) == expected
    vtt, vtt_type = read(s3, status["outputs"]["vtt"])
    assert vtt.startswith("WEBVTT") and vtt_type.startswith("text/vtt")
    assert status["outputs"]["txt"] == f"s3://{bucket}/out/{key}.txt"

    succeeded = await k8s.wait_for_event("Succeeded")
    assert succeeded["type"] == "Normal"
    assert succeeded["involvedObject"]["name"] == "meeting"
    reasons = [event["reason"] for event in k8s.events()]
    assert reasons.count("Submitted") == 1 and reasons.count("Succeeded") == 1


async def test_stereo_ogg_and_output_bucket(
    k8s: Cluster, s3: S3Client, bucket: str, speechkit: SpeechKitEmulator, start_operator: Starter
) -> None:
    stereo = upload(s3, bucket, "librivox-stereo-0880L-0930R.wav")
    ogg = upload(s3, bucket, "librivox-0870.ogg")
    s3.create_bucket(Bucket=f"{bucket}-out")
    await start_operator()
    await k8s.create_job("stereo", spec(bucket, stereo, output={"bucket": f"{bucket}-out", "prefix": "t/"}))
    await k8s.create_job("opus", spec(bucket, ogg, output={"formats": ["txt"]}))

    stereo_status = await k8s.wait_for_phase("stereo", "Succeeded", "Failed")
    opus_status = await k8s.wait_for_phase("opus", "Succeeded", "Failed")

    assert stereo_status["phase"] == "Succeeded", stereo_status
    assert set(stereo_status["outputs"]) == {"json", "txt", "srt:1", "srt:2", "vtt:1", "vtt:2"}
    txt, _ = read(s3, stereo_status["outputs"]["txt"])
    assert "[channel 1] he was not an ill disposed young man" in txt
    assert "[channel 2] he might even have been made amiable himself" in txt
    assert stereo_status["outputs"]["txt"].startswith(f"s3://{bucket}-out/t/")
    assert opus_status["phase"] == "Succeeded", opus_status
    assert set(opus_status["outputs"]) == {"txt"}
    assert opus_status["audio"]["encoding"] == "OGG_OPUS"
    specs = [submission["config"]["specification"] for submission in speechkit.submissions]
    assert {s["audioEncoding"] for s in specs} == {"LINEAR16_PCM", "OGG_OPUS"}
    pcm = next(s for s in specs if s["audioEncoding"] == "LINEAR16_PCM")
    assert pcm["audioChannelCount"] == 2
    opus = next(s for s in specs if s["audioEncoding"] == "OGG_OPUS")
    assert "sampleRateHertz" not in opus and "audioChannelCount" not in opus


async def test_missing_object_fails_with_source_not_found(
    k8s: Cluster, bucket: str, speechkit: SpeechKitEmulator, start_operator: Starter
) -> None:
    await start_operator()
    await k8s.create_job("ghost", spec(bucket, "incoming/nothing-here.wav"))

    status = await k8s.wait_for_phase("ghost", "Failed", "Succeeded")

    assert status["phase"] == "Failed"
    assert status["reason"] == "SourceNotFound"
    assert "incoming/nothing-here.wav" in status["message"]
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "SourceNotFound"
    assert speechkit.counts["submit"] == 0


async def test_invalid_spec_fails_with_a_clear_message(
    k8s: Cluster, bucket: str, speechkit: SpeechKitEmulator, start_operator: Starter
) -> None:
    await start_operator()
    await k8s.create_job("bad", {"source": {"bucket": bucket}, "output": {"formats": ["docx"]}})

    status = await k8s.wait_for_phase("bad", "Failed")

    assert status["reason"] == "InvalidSpec"
    assert "spec.source.key" in status["message"]
    assert "spec.output.formats.0" in status["message"]
    assert speechkit.counts["submit"] == 0


async def test_unauthenticated_fails_without_retrying(
    k8s: Cluster, s3: S3Client, bucket: str, speechkit: SpeechKitEmulator, start_operator: Starter
) -> None:
    key = upload(s3, bucket, "librivox-0880.wav")
    await k8s.create_secret("wrong-key", {"api-key": "not-a-valid-key"})
    await start_operator()
    await k8s.create_job("denied", spec(bucket, key, credentialsSecret="wrong-key"))

    status = await k8s.wait_for_phase("denied", "Failed", "Succeeded")

    assert status["reason"] == "Unauthenticated"
    assert "not-a-valid-key" not in json.dumps(status)
    assert speechkit.counts["submit"] == 1


async def test_operation_error_fails_the_job(
    k8s: Cluster, s3: S3Client, bucket: str, speechkit: SpeechKitEmulator, start_operator: Starter
) -> None:
    key = upload(s3, bucket, "librivox-0890.wav")
    speechkit.fail_operations("librivox-0890.wav", code=3, message="audio is too noisy")
    await start_operator()
    await k8s.create_job("noisy", spec(bucket, key))

    status = await k8s.wait_for_phase("noisy", "Failed", "Succeeded")

    assert status["reason"] == "InvalidArgument"
    assert "audio is too noisy" in status["message"]
    assert status["operationId"]
    failed = await k8s.wait_for_event("Failed")
    assert failed["type"] == "Warning"
    assert "audio is too noisy" in failed["message"]


async def test_error_while_not_done_fails_the_job(
    k8s: Cluster, s3: S3Client, bucket: str, speechkit: SpeechKitEmulator, start_operator: Starter
) -> None:
    key = upload(s3, bucket, "librivox-0890.wav")
    speechkit.fail_operations(
        "librivox-0890.wav", code=13, message="engine crashed", visible_while_running=True
    )
    await start_operator()
    await k8s.create_job("crashed", spec(bucket, key))

    status = await k8s.wait_for_phase("crashed", "Failed", "Succeeded")

    assert status["reason"] == "Internal"


async def test_429_and_5xx_storm_then_success(
    k8s: Cluster, s3: S3Client, bucket: str, speechkit: SpeechKitEmulator, start_operator: Starter
) -> None:
    key = upload(s3, bucket, "librivox-0920.wav")
    speechkit.inject("submit", 429, count=2, retry_after=0.1)
    speechkit.inject("submit", 503, count=1)
    speechkit.inject("operation", 429, count=2, retry_after=0.1)
    speechkit.inject("operation", 500, count=3)
    await start_operator()
    await k8s.create_job("storm", spec(bucket, key))

    status = await k8s.wait_for_phase("storm", "Succeeded", "Failed", timeout=30)

    assert status["phase"] == "Succeeded", status
    assert speechkit.counts["submit"] == 4  # three refused, one accepted
    assert len(speechkit.submissions) == 1
    assert speechkit.counts["operation"] >= 6


async def test_expired_operation_fails_with_result_expired(
    k8s: Cluster, s3: S3Client, bucket: str, speechkit: SpeechKitEmulator, start_operator: Starter
) -> None:
    speechkit.completion_delay = 30
    key = upload(s3, bucket, "librivox-0930.wav")
    await start_operator()
    await k8s.create_job("old", spec(bucket, key))
    running = await k8s.wait_for_phase("old", "Running")

    speechkit.expire(running["operationId"])
    status = await k8s.wait_for_phase("old", "Failed", "Succeeded")

    assert status["reason"] == "ResultExpired"


async def test_restart_between_submit_and_completion_submits_once(
    k8s: Cluster, s3: S3Client, bucket: str, speechkit: SpeechKitEmulator, start_operator: Starter
) -> None:
    speechkit.completion_delay = 2.0
    key = upload(s3, bucket, "librivox-0870.wav")
    first = await start_operator()
    await k8s.create_job("restart", spec(bucket, key))
    running = await k8s.wait_for_phase("restart", "Running")
    await first.stop()

    await start_operator()
    status = await k8s.wait_for_phase("restart", "Succeeded", "Failed")

    assert status["phase"] == "Succeeded"
    assert status["operationId"] == running["operationId"]
    assert speechkit.counts["submit"] == 1
    assert len(speechkit.submissions) == 1


async def test_deletion_while_running_leaves_no_finalizer(
    k8s: Cluster, s3: S3Client, bucket: str, speechkit: SpeechKitEmulator, start_operator: Starter
) -> None:
    speechkit.completion_delay = 60
    key = upload(s3, bucket, "librivox-0880.wav")
    await start_operator()
    await k8s.create_job("doomed", spec(bucket, key))
    await k8s.wait_for_phase("doomed", "Running")

    await k8s.delete_job("doomed")

    for _ in range(200):
        if k8s.job("doomed") is None:
            break
        await asyncio.sleep(0.05)
    assert k8s.job("doomed") is None


async def test_secrets_never_reach_status_or_events(
    k8s: Cluster, s3: S3Client, bucket: str, speechkit: SpeechKitEmulator, start_operator: Starter
) -> None:
    key = upload(s3, bucket, "librivox-0880.wav")
    speechkit.fail_operations(
        "librivox-0880.wav", code=7, message="cannot read https://x/y?X-Amz-Signature=abc"
    )
    await start_operator()
    await k8s.create_job("leaky", spec(bucket, key))

    status = await k8s.wait_for_phase("leaky", "Failed", "Succeeded")
    await k8s.wait_for_event("Failed")

    written = json.dumps(status) + json.dumps(k8s.events())
    assert "X-Amz-Signature=abc" not in written
    assert "test-api-key" not in written
    assert status["reason"] == "PermissionDenied"


async def test_missing_secret_waits_then_proceeds_once_it_exists(
    k8s: Cluster, s3: S3Client, bucket: str, speechkit: SpeechKitEmulator, start_operator: Starter
) -> None:
    key = upload(s3, bucket, "librivox-0930.wav")
    await start_operator()
    await k8s.create_job("patient", spec(bucket, key, credentialsSecret="arrives-later"))

    waiting = await k8s.wait_for(
        "patient", lambda status: status.get("reason") == "CredentialsSecretNotFound"
    )
    assert waiting["phase"] == "Pending"
    assert "arrives-later" in waiting["message"]
    submitted = next(c for c in waiting["conditions"] if c["type"] == "Submitted")
    assert submitted["status"] == "False"
    retry = await k8s.wait_for_event("RetryScheduled")
    assert retry["type"] == "Warning"
    assert speechkit.counts["submit"] == 0

    await k8s.create_secret("arrives-later", {"api-key": "test-api-key"})
    status = await k8s.wait_for_phase("patient", "Succeeded", "Failed", timeout=30)

    assert status["phase"] == "Succeeded", status
    assert speechkit.counts["submit"] == 1


async def test_deletion_while_pending_finishes(
    k8s: Cluster, bucket: str, speechkit: SpeechKitEmulator, start_operator: Starter
) -> None:
    await start_operator()
    await k8s.create_job("stuck", spec(bucket, "incoming/a.wav", storageSecret="never-created"))
    await k8s.wait_for("stuck", lambda status: status.get("phase") == "Pending")

    await k8s.delete_job("stuck")

    for _ in range(100):
        if k8s.job("stuck") is None:
            break
        await asyncio.sleep(0.05)
    assert k8s.job("stuck") is None


async def test_credentials_refused_while_checking_keep_the_result(
    k8s: Cluster, s3: S3Client, bucket: str, speechkit: SpeechKitEmulator, start_operator: Starter
) -> None:
    """An expired token or a rotated key at check time must not throw away a result SpeechKit keeps."""
    key = upload(s3, bucket, "librivox-0880.wav")
    speechkit.inject("operation", 401, count=3)
    await start_operator()
    await k8s.create_job("rotated", spec(bucket, key))

    refused = await k8s.wait_for("rotated", lambda status: status.get("reason") == "Unauthenticated")
    assert refused["phase"] == "Running"
    assert "credentials Secret" in refused["message"]
    status = await k8s.wait_for_phase("rotated", "Succeeded", "Failed", timeout=30)

    assert status["phase"] == "Succeeded", status
    assert speechkit.counts["submit"] == 1


async def test_stereo_audio_with_speech_on_one_channel_still_gets_per_channel_outputs(
    k8s: Cluster, s3: S3Client, bucket: str, speechkit: SpeechKitEmulator, start_operator: Starter
) -> None:
    key = upload(s3, bucket, "librivox-stereo-0880L-0930R.wav", key="incoming/one-sided.wav")
    speechkit.transcripts["one-sided.wav"] = {"2": [("hello", 0.5, 0.9), ("there", 1.0, 1.4)]}
    await start_operator()
    await k8s.create_job("one-sided", spec(bucket, key))

    status = await k8s.wait_for_phase("one-sided", "Succeeded", "Failed")

    assert status["audio"]["channels"] == 2
    assert set(status["outputs"]) == {"json", "txt", "srt:1", "srt:2", "vtt:1", "vtt:2"}
    txt, _ = read(s3, status["outputs"]["txt"])
    assert txt.strip() == "[channel 2] hello there"


async def test_a_copied_manifest_is_a_new_job_and_never_adopts_another_jobs_operation(
    k8s: Cluster, s3: S3Client, bucket: str, speechkit: SpeechKitEmulator, start_operator: Starter
) -> None:
    """`kubectl get tj a -o yaml`, name and key edited, applied: the annotations and status of the
    original come along; the copy must be submitted for its own recording."""
    original_key = upload(s3, bucket, "librivox-0880.wav")
    copy_key = upload(s3, bucket, "librivox-0930.wav")
    await start_operator()
    await k8s.create_job("original", spec(bucket, original_key))
    original = await k8s.wait_for_phase("original", "Succeeded", "Failed")
    assert original["phase"] == "Succeeded", original

    copied_spec = spec(bucket, copy_key)
    await k8s.create(
        f"/apis/{GROUP}/{VERSION}/namespaces/{NAMESPACE}/{JOB_PLURAL}",
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "TranscriptionJob",
            "metadata": {
                "name": "copy",
                "namespace": NAMESPACE,
                "annotations": {
                    # What 0.1.0 kept in its jobs; a copy carries it along.
                    LEGACY_OPERATION_ANNOTATION: original["operationId"],
                    f"{GROUP}/last-handled-configuration": json.dumps({"spec": copied_spec}) + "\n",
                },
            },
            "spec": copied_spec,
        },
    )
    status = await k8s.wait_for_phase("copy", "Succeeded", "Failed")

    assert status["phase"] == "Succeeded", status
    assert status["operationId"] != original["operationId"]
    assert len(speechkit.submissions) == 2
    txt, _ = read(s3, status["outputs"]["txt"])
    assert txt.strip() == reference_text("librivox-0930.wav")["1"]


async def test_an_intent_left_by_a_crash_is_uncertain_and_resubmitted_once(
    k8s: Cluster, s3: S3Client, bucket: str, speechkit: SpeechKitEmulator, start_operator: Starter
) -> None:
    """The previous operator wrote the intent, then died before the answer was recorded."""
    key = upload(s3, bucket, "librivox-0930.wav")
    await k8s.create(
        f"/apis/{GROUP}/{VERSION}/namespaces/{NAMESPACE}/{JOB_PLURAL}",
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "TranscriptionJob",
            "metadata": {"name": "interrupted", "namespace": NAMESPACE},
            "spec": spec(bucket, key),
            "status": {
                "phase": "Pending",
                "reason": "Submitting",
                "submission": {
                    "nonce": "0123456789abcdef",
                    "holder": "gone-1",
                    "startedAt": "2026-11-30T10:00:00Z",
                },
            },
        },
    )
    await start_operator()
    status = await k8s.wait_for_phase("interrupted", "Succeeded", "Failed")

    assert status["phase"] == "Succeeded", status
    assert status["uncertainSubmissions"] == 1
    uncertain = next(c for c in status["conditions"] if c["type"] == "SubmissionUncertain")
    assert uncertain["status"] == "True"
    assert "0123456789abcdef" in uncertain["message"]
    assert len(speechkit.submissions) == 1
    assert (await k8s.wait_for_event("SubmissionUncertain"))["type"] == "Warning"


async def test_an_uncertain_submission_fails_the_job_when_the_policy_says_so(
    k8s: Cluster, s3: S3Client, bucket: str, speechkit: SpeechKitEmulator, start_operator: Starter
) -> None:
    key = upload(s3, bucket, "librivox-0930.wav")
    speechkit.inject("submit", 502)
    await start_operator(uncertain_submission_policy="fail")
    await k8s.create_job("careful", spec(bucket, key))

    status = await k8s.wait_for_phase("careful", "Failed", "Succeeded")

    assert status["reason"] == "SubmissionUncertain"
    assert "502" in status["message"]
    assert speechkit.counts["submit"] == 1


async def test_a_timed_out_submission_is_resubmitted_once_and_says_so(
    k8s: Cluster, s3: S3Client, bucket: str, speechkit: SpeechKitEmulator, start_operator: Starter
) -> None:
    """The submission's answer never came (SpeechKit created the operation after the client gave up)."""
    key = upload(s3, bucket, "librivox-0930.wav")
    speechkit.inject("submit", None, delay=2.0)
    await start_operator(http_timeout=1.0)
    await k8s.create_job("slow", spec(bucket, key))

    status = await k8s.wait_for_phase("slow", "Succeeded", "Failed", timeout=30)

    assert status["phase"] == "Succeeded", status
    assert status["uncertainSubmissions"] == 1
    assert speechkit.counts["submit"] == 2  # never more: the timed-out one is not repeated in the call


async def test_deleting_a_running_job_cancels_its_operation(
    k8s: Cluster, s3: S3Client, bucket: str, speechkit: SpeechKitEmulator, start_operator: Starter
) -> None:
    speechkit.completion_delay = 60
    key = upload(s3, bucket, "librivox-0880.wav")
    await start_operator()
    await k8s.create_job("abandoned", spec(bucket, key))
    running = await k8s.wait_for_phase("abandoned", "Running")

    await k8s.delete_job("abandoned")

    cancelled = await k8s.wait_for_event("Cancelled")
    assert running["operationId"] in cancelled["message"]
    assert speechkit.cancelled == [running["operationId"]]


async def test_a_job_past_its_deadline_fails_and_its_operation_is_cancelled(
    k8s: Cluster, s3: S3Client, bucket: str, speechkit: SpeechKitEmulator, start_operator: Starter
) -> None:
    speechkit.completion_delay = 60
    key = upload(s3, bucket, "librivox-0880.wav")
    await start_operator()
    await k8s.create_job("late", spec(bucket, key, activeDeadlineSeconds=2))

    status = await k8s.wait_for_phase("late", "Failed", "Succeeded", timeout=15)

    assert status["reason"] == "DeadlineExceeded"
    assert speechkit.cancelled == [status["operationId"]]
    assert "cancelled" in status["message"]


async def test_a_finished_job_is_deleted_after_its_time_to_live(
    k8s: Cluster, s3: S3Client, bucket: str, speechkit: SpeechKitEmulator, start_operator: Starter
) -> None:
    key = upload(s3, bucket, "librivox-0880.wav")
    await start_operator()
    await k8s.create_job("ephemeral", spec(bucket, key, ttlSecondsAfterFinished=1))
    status = await k8s.wait_for_phase("ephemeral", "Succeeded", "Failed")
    assert status["phase"] == "Succeeded"

    for _ in range(100):
        if k8s.job("ephemeral") is None:
            break
        await asyncio.sleep(0.05)
    assert k8s.job("ephemeral") is None
    # The transcripts stay.
    assert read(s3, status["outputs"]["txt"])[0].strip()


async def test_a_job_that_can_never_be_submitted_ends_after_the_attempt_cap(
    k8s: Cluster, s3: S3Client, bucket: str, speechkit: SpeechKitEmulator, start_operator: Starter
) -> None:
    key = upload(s3, bucket, "librivox-0880.wav")
    speechkit.inject("submit", 503, count=1000)
    await start_operator(max_submit_attempts=3, submit_retry_base_seconds=0.05, retry_attempts=1)
    await k8s.create_job("hopeless", spec(bucket, key))

    status = await k8s.wait_for_phase("hopeless", "Failed", "Succeeded")

    assert status["reason"] == "Unavailable"
    assert "gave up after 3 attempts" in status["message"]
    assert speechkit.counts["submit"] == 3
