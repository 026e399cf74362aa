"""TranscriptionJobs with ``recognition.api: v3``, with the real operator against KMock, moto S3 and the
SpeechKit emulator's v3 endpoints (written from the docs, independently of the operator)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

from tests.emulator import SpeechKitEmulator, words_for_text
from tests.integration.conftest import Cluster, Starter, upload
from tests.support.audio import reference_text

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

pytestmark = pytest.mark.integration


def read(s3: S3Client, uri: str) -> str:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    body: bytes = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    return body.decode()


def v3_spec(bucket: str, key: str, **recognition: Any) -> dict[str, Any]:
    return {"source": {"bucket": bucket, "key": key}, "recognition": {"api": "v3", **recognition}}


async def test_a_v3_job_is_submitted_to_v3_and_its_results_become_every_output(
    k8s: Cluster, s3: S3Client, bucket: str, speechkit: SpeechKitEmulator, start_operator: Starter
) -> None:
    speechkit.v3_check_quota_per_second = 10_000
    key = upload(s3, bucket, "librivox-0870.wav")
    await start_operator()
    await k8s.create_job("v3-meeting", v3_spec(bucket, key, languageCode="en-US", textNormalization=True))

    status = await k8s.wait_for_phase("v3-meeting", "Succeeded", "Failed")

    assert status["phase"] == "Succeeded", status
    assert speechkit.submissions == []  # nothing went to v2
    (request,) = speechkit.v3_submissions
    model = request["recognitionModel"]
    assert model["audioFormat"] == {
        "containerAudio": {"containerAudioType": "WAV"}
    }  # SpeechKit reads the header
    assert model["textNormalization"]["textNormalization"] == "TEXT_NORMALIZATION_ENABLED"
    assert model["languageRestriction"] == {"restrictionType": "WHITELIST", "languageCode": ["en-US"]}
    expected = reference_text("librivox-0870.wav")["1"]
    assert read(s3, status["outputs"]["txt"]).split() == expected.split()
    results = json.loads(read(s3, status["outputs"]["json"]))["results"]
    assert any("final" in item["result"] for item in results)
    assert all(item["result"]["channelTag"] == "0" for item in results)
    assert status["detectedLanguage"] == "en-US"


async def test_speakers_split_the_subtitles_of_a_v3_job(
    k8s: Cluster, s3: S3Client, bucket: str, speechkit: SpeechKitEmulator, start_operator: Starter
) -> None:
    speechkit.v3_check_quota_per_second = 10_000
    key = upload(s3, bucket, "librivox-0870.wav")
    speechkit.transcripts["librivox-0870.wav"] = {
        "1": words_for_text("good morning") + words_for_text("hello to you", start=3.0)
    }
    await start_operator()
    await k8s.create_job("talk", v3_spec(bucket, key, languageCode="auto", speakerLabeling=True))

    status = await k8s.wait_for_phase("talk", "Succeeded", "Failed")

    assert status["phase"] == "Succeeded", status
    assert set(status["outputs"]) >= {"srt:speaker-1", "srt:speaker-2", "vtt:speaker-1", "txt"}
    assert read(s3, status["outputs"]["txt"]) == "[speaker 1] good morning\n[speaker 2] hello to you\n"
    assert "hello" in read(s3, status["outputs"]["srt:speaker-2"])
    assert "languageRestriction" not in speechkit.v3_submissions[0]["recognitionModel"]


async def test_speaker_labeling_of_a_stereo_file_fails_before_anything_is_paid_for(
    k8s: Cluster, s3: S3Client, bucket: str, speechkit: SpeechKitEmulator, start_operator: Starter
) -> None:
    key = upload(s3, bucket, "librivox-stereo-0880L-0930R.wav")
    await start_operator()
    await k8s.create_job("stereo", v3_spec(bucket, key, languageCode="auto", speakerLabeling=True))

    status = await k8s.wait_for_phase("stereo", "Succeeded", "Failed")

    assert status["phase"] == "Failed" and status["reason"] == "InvalidSpec"
    assert "speakerLabeling works on mono audio only" in status["message"]
    assert "2 channels" in status["message"]
    assert speechkit.v3_submissions == [] and speechkit.submissions == []


async def test_v2_and_v3_jobs_in_one_namespace_each_go_to_their_api(
    k8s: Cluster, s3: S3Client, bucket: str, speechkit: SpeechKitEmulator, start_operator: Starter
) -> None:
    speechkit.v3_check_quota_per_second = 10_000
    keys = [
        upload(s3, bucket, name) for name in ("librivox-0870.wav", "librivox-0880.wav", "librivox-0930.wav")
    ]
    await start_operator()
    names = {"old-1": "v2", "new-1": "v3", "old-2": "v2", "new-2": "v3"}
    for (name, api), key in zip(names.items(), [*keys, keys[0]], strict=True):
        spec = {
            "source": {"bucket": bucket, "key": key},
            "recognition": {"api": api, "languageCode": "en-US"},
        }
        spec["output"] = {"prefix": f"{name}/"}
        await k8s.create_job(name, spec)

    statuses = {name: await k8s.wait_for_phase(name, "Succeeded", "Failed") for name in names}

    assert {name: status["phase"] for name, status in statuses.items()} == dict.fromkeys(names, "Succeeded")
    assert len(speechkit.submissions) == 2 and len(speechkit.v3_submissions) == 2
    for name, api in names.items():
        document = json.loads(read(s3, statuses[name]["outputs"]["json"]))
        assert ("results" in document) == (api == "v3"), name
        assert ("chunks" in document) == (api == "v2"), name
        assert read(s3, statuses[name]["outputs"]["txt"]).strip(), name
