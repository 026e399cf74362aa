"""Regression tests of the hardening review's defects, each named after it, on the fast tier."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import TYPE_CHECKING, Any

import pytest

from tests.emulator import SpeechKitEmulator
from tests.integration.conftest import API_KEY, NAMESPACE, Cluster, Starter, upload

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

pytestmark = pytest.mark.integration

BROKEN_KEY = json.dumps(
    {
        "id": "ajekeyid",
        "service_account_id": "ajesaid",
        "private_key": "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
    }
)


def spec(bucket: str, key: str, **extra: Any) -> dict[str, Any]:
    return {"source": {"bucket": bucket, "key": key}, "recognition": {"languageCode": "en-US"}, **extra}


async def patch_secret(k8s: Cluster, name: str, data: dict[str, str | None]) -> None:
    encoded = {
        key: base64.b64encode(value.encode()).decode() if value else None for key, value in data.items()
    }
    async with k8s.session.patch(
        f"/api/v1/namespaces/{NAMESPACE}/secrets/{name}",
        json={"data": encoded},
        headers={"Content-Type": "application/merge-patch+json"},
    ) as response:
        assert response.status < 300, await response.text()


def events_with(k8s: Cluster, reason: str) -> list[dict[str, Any]]:
    return [event for event in k8s.events() if event.get("reason") == reason]


async def test_a_broken_authorized_key_while_running_keeps_the_job_and_its_result(
    k8s: Cluster, s3: S3Client, bucket: str, speechkit: SpeechKitEmulator, start_operator: Starter
) -> None:
    speechkit.completion_delay = 1.0
    key = upload(s3, bucket, "librivox-0880.wav")
    await start_operator()
    await k8s.create_job("rekeyed", spec(bucket, key))
    await k8s.wait_for_phase("rekeyed", "Running")

    # Someone puts a broken authorized key into the Secret (it wins over api-key).
    await patch_secret(k8s, "speechkit-credentials", {"authorized-key.json": BROKEN_KEY})
    broken = await k8s.wait_for("rekeyed", lambda status: status.get("reason") not in ("Submitted", None))
    assert broken["phase"] == "Running", broken
    assert "credentials" in broken["message"].lower()
    await asyncio.sleep(0.5)
    assert k8s.status("rekeyed")["phase"] == "Running"

    await patch_secret(k8s, "speechkit-credentials", {"authorized-key.json": None})
    status = await k8s.wait_for_phase("rekeyed", "Succeeded", "Failed", timeout=30)
    assert status["phase"] == "Succeeded", status
    assert len(speechkit.submissions) == 1


async def test_an_output_write_that_can_never_succeed_fails_with_the_storages_reason(
    k8s: Cluster, s3: S3Client, bucket: str, speechkit: SpeechKitEmulator, start_operator: Starter
) -> None:
    key = upload(s3, bucket, "librivox-0880.wav")
    await start_operator()
    await k8s.create_job("nowhere", spec(bucket, key, output={"bucket": f"{bucket}-missing"}))

    status = await k8s.wait_for_phase("nowhere", "Failed", "Succeeded")

    assert status["reason"] == "OutputWriteFailed"
    assert "cannot succeed" in status["message"] and "not found" in status["message"]
    looked = speechkit.counts["operation"]
    await asyncio.sleep(0.5)
    assert speechkit.counts["operation"] == looked, "ended at the first write, not retried for 3 days"


async def test_output_keys_longer_than_s3_allows_in_bytes_are_refused_before_submitting(
    k8s: Cluster, s3: S3Client, bucket: str, speechkit: SpeechKitEmulator, start_operator: Starter
) -> None:
    # Within the CRD's character limits (512 and 1024), over S3's 1024 bytes of UTF-8.
    prefix = "расшифровки/" * 30  # 360 characters, 690 bytes
    key = upload(s3, bucket, "librivox-0880.wav", key="звонки/" + "з" * 200 + ".wav")
    await start_operator()
    await k8s.create_job("too-long", spec(bucket, key, output={"prefix": prefix}))

    status = await k8s.wait_for_phase("too-long", "Failed", "Succeeded")

    assert status["reason"] == "InvalidSpec"
    assert "bytes" in status["message"] and "1024" in status["message"]
    assert speechkit.counts["submit"] == 0


async def test_a_malformed_result_is_kept_raw_and_fails_the_job_at_once(
    k8s: Cluster, s3: S3Client, bucket: str, speechkit: SpeechKitEmulator, start_operator: Starter
) -> None:
    key = upload(s3, bucket, "librivox-0880.wav", key="incoming/odd.wav")
    raw = {
        "@type": "type.googleapis.com/yandex.cloud.ai.stt.v2.LongRunningRecognitionResponse",
        "chunks": "?",
    }
    speechkit.raw_responses["odd.wav"] = raw
    await start_operator()
    await k8s.create_job("odd", spec(bucket, key))

    status = await k8s.wait_for_phase("odd", "Failed", "Succeeded")

    assert status["reason"] == "MalformedResponse"
    kept = f"s3://{bucket}/out/{key}.json"
    assert kept in status["message"]
    answer = s3.get_object(Bucket=bucket, Key=f"out/{key}.json")
    assert json.loads(answer["Body"].read())["response"] == raw
    looked = speechkit.counts["operation"]
    await asyncio.sleep(0.5)
    assert speechkit.counts["operation"] == looked, "ended, not retried until the result expires"


async def test_a_check_that_fails_before_reaching_speechkit_backs_off_with_one_event(
    k8s: Cluster, s3: S3Client, bucket: str, speechkit: SpeechKitEmulator, start_operator: Starter
) -> None:
    speechkit.completion_delay = 0.5
    key = upload(s3, bucket, "librivox-0880.wav")
    await k8s.create_secret("own-key", {"api-key": API_KEY})
    await start_operator(
        poll_initial_interval_seconds=0.05, poll_max_interval_seconds=5.0, poll_backoff_factor=2.0
    )
    await k8s.create_job("orphaned", spec(bucket, key, credentialsSecret="own-key"))
    await k8s.wait_for_phase("orphaned", "Running")

    async with k8s.session.delete(f"/api/v1/namespaces/{NAMESPACE}/secrets/own-key") as response:
        assert response.status < 300
    missing = await k8s.wait_for(
        "orphaned", lambda status: status.get("reason") == "CredentialsSecretNotFound"
    )
    assert missing["phase"] == "Running"
    checks_before = speechkit.counts["operation"]
    await asyncio.sleep(2.0)
    # Backed off (0.05 s doubling): a handful of looks in 2 s, not one every 50 ms, and one Event.
    assert len(events_with(k8s, "RetryScheduled")) == 1
    assert speechkit.counts["operation"] == checks_before, "SpeechKit was not asked without credentials"

    await k8s.create_secret("own-key", {"api-key": API_KEY})
    status = await k8s.wait_for_phase("orphaned", "Succeeded", "Failed", timeout=30)
    assert status["phase"] == "Succeeded", status


async def test_a_credential_echoed_in_an_operation_error_is_redacted(
    k8s: Cluster, s3: S3Client, bucket: str, speechkit: SpeechKitEmulator, start_operator: Starter
) -> None:
    key = upload(s3, bucket, "librivox-0880.wav")
    speechkit.fail_operations(
        "librivox-0880.wav", code=16, message=f"API key {API_KEY} is not valid for folder x"
    )
    await start_operator()
    await k8s.create_job("echo", spec(bucket, key))

    status = await k8s.wait_for_phase("echo", "Failed", "Succeeded")
    await k8s.wait_for_event("Failed")

    assert status["reason"] == "Unauthenticated"
    assert "is not valid for folder" in status["message"]
    written = json.dumps(status) + json.dumps(k8s.events())
    assert API_KEY not in written


@pytest.mark.parametrize("own_key", [API_KEY, None], ids=["operators-own-key", "no-key"])
async def test_the_operator_authenticates_to_its_recognizer_with_its_own_key(
    k8s: Cluster,
    s3: S3Client,
    bucket: str,
    speechkit: SpeechKitEmulator,
    start_operator: Starter,
    own_key: str | None,
) -> None:
    """backend self-hosted: a job that names no credentials Secret uses the key the chart gave the
    operator; without one it goes anonymous (and a service that checks keys refuses it)."""
    key = upload(s3, bucket, "librivox-0880.wav")
    await start_operator(
        backend="self-hosted",
        self_hosted_url=speechkit.url,
        self_hosted_api_key=own_key,
        default_credentials_secret="not-in-this-namespace",
    )
    await k8s.create_job("own-key", spec(bucket, key))

    status = await k8s.wait_for_phase("own-key", "Succeeded", "Failed")

    if own_key is None:
        assert status["reason"] == "Unauthenticated"
    else:
        assert status["phase"] == "Succeeded", status
        assert API_KEY not in json.dumps(status)
