"""The submission quota on the fast tier: never exceeded, the promised order, Queued said once."""

from __future__ import annotations

import asyncio
import base64
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

import pytest

from speechkit_operator.constants import API_VERSION, GROUP, JOB_KIND, JOB_PLURAL, VERSION
from tests.emulator import SpeechKitEmulator
from tests.integration.conftest import API_KEY, JOBS, NAMESPACE, Cluster, Starter, upload

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

pytestmark = pytest.mark.integration

OTHER = "support"


async def create_job(k8s: Cluster, namespace: str, name: str, spec: dict[str, Any]) -> None:
    await k8s.create(
        f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{JOB_PLURAL}",
        {
            "apiVersion": API_VERSION,
            "kind": JOB_KIND,
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        },
    )


async def copy_secrets(k8s: Cluster, namespace: str, s3_endpoint: str) -> None:
    for name, data in (
        ("speechkit-credentials", {"api-key": API_KEY}),
        (
            "speechkit-storage",
            {
                "access-key-id": "testing",
                "secret-access-key": "testing",
                "endpoint": s3_endpoint,
                "region": "us-east-1",
            },
        ),
    ):
        encoded = {key: base64.b64encode(value.encode()).decode() for key, value in data.items()}
        await k8s.create(
            f"/api/v1/namespaces/{namespace}/secrets",
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": name, "namespace": namespace},
                "data": encoded,
            },
        )


def status_of(k8s: Cluster, namespace: str, name: str) -> dict[str, Any]:
    try:
        obj = k8s.emulator.objects[JOBS, namespace, name]
    except KeyError:
        return {}
    return dict(obj.raw.get("status") or {})


@pytest.mark.parametrize("retry_after", [True, False], ids=["with-retry-after", "without-retry-after"])
async def test_a_burst_within_a_tiny_quota_gets_no_429_and_the_promised_order(
    k8s: Cluster,
    s3: S3Client,
    bucket: str,
    s3_endpoint: str,
    speechkit: SpeechKitEmulator,
    start_operator: Starter,
    retry_after: bool,
) -> None:
    speechkit.submit_quota_per_hour = 6
    speechkit.quota_window_seconds = 3.0
    speechkit.quota_retry_after = retry_after
    speechkit.completion_delay = 0.1
    await copy_secrets(k8s, OTHER, s3_endpoint)
    jobs: list[tuple[str, str, int]] = []  # namespace, name, priority
    jobs += [(NAMESPACE, f"bulk-{index:02}", 0) for index in range(10)]
    jobs += [(OTHER, f"support-{index}", 0) for index in range(2)]
    jobs += [(NAMESPACE, f"vip-{index}", 5) for index in range(2)]
    for namespace, name, _ in jobs:
        upload(s3, bucket, "librivox-0880.wav", key=f"{namespace}/{name}.wav")
    await start_operator(quota_window_seconds=3.0, submit_quota=6, poll_initial_interval_seconds=0.2)
    started = time.monotonic()
    for namespace, name, priority in jobs:
        spec = {"source": {"bucket": bucket, "key": f"{namespace}/{name}.wav"}, "priority": priority}
        await create_job(k8s, namespace, name, spec)

    deadline = time.monotonic() + 60
    queued: dict[str, str] = {}
    while not all(status_of(k8s, ns, name).get("phase") == "Succeeded" for ns, name, _ in jobs):
        assert time.monotonic() < deadline, {
            name: status_of(k8s, ns, name).get("phase") for ns, name, _ in jobs
        }
        for namespace, name, _ in jobs:
            status = status_of(k8s, namespace, name)
            if status.get("phase") == "Queued":
                queued[name] = status["message"]
        await asyncio.sleep(0.05)
    elapsed = time.monotonic() - started

    assert speechkit.quota_refusals["submit"] == 0, "the budget kept within the quota"
    order = [
        submission["audio"]["uri"].split("?")[0].rsplit("/", 1)[-1].removesuffix(".wav")
        for submission in speechkit.submissions
    ]
    assert len(order) == len(jobs)
    # The quota binds: 14 submissions at 6 per 3 s take several windows.
    assert elapsed >= 2 * 3.0 * 0.9
    # Higher priority first (once created: the first jobs may be submitted before they exist).
    assert max(order.index("vip-0"), order.index("vip-1")) < order.index("bulk-09")
    # Namespaces take turns: the small namespace does not wait behind the big one.
    assert max(order.index("support-0"), order.index("support-1")) < order.index("bulk-06")
    # Jobs that waited for the quota said so, with their place in line and when.
    assert len(queued) >= 4, queued
    assert all("in line; expected at " in message for message in queued.values())


async def test_the_first_check_comes_at_the_pace_learned_for_the_model(
    k8s: Cluster, s3: S3Client, bucket: str, speechkit: SpeechKitEmulator, start_operator: Starter
) -> None:
    """SpeechKit takes ~2 s for 7.1 s of audio here: after one job, the next waits about that long
    before its first check instead of the configured guess (0 s per minute in this tier)."""
    speechkit.completion_delay = 2.0
    first_key = upload(s3, bucket, "librivox-0870.wav", key="pace/first.wav")
    second_key = upload(s3, bucket, "librivox-0870.wav", key="pace/second.wav")
    handle = await start_operator(first_check_min_seconds=0.1)
    await create_job(k8s, NAMESPACE, "first", {"source": {"bucket": bucket, "key": first_key}})
    deadline = time.monotonic() + 30
    while status_of(k8s, NAMESPACE, "first").get("phase") != "Succeeded":
        assert time.monotonic() < deadline, status_of(k8s, NAMESPACE, "first")
        await asyncio.sleep(0.05)
    learned = handle.context.workflow.rates.rate("general")
    # modifiedAt comes in whole seconds: the sample is within a second of the truth.
    assert 0.9 / 7.1 < learned < 3.1 / 7.1

    await create_job(k8s, NAMESPACE, "second", {"source": {"bucket": bucket, "key": second_key}})
    deadline = time.monotonic() + 30
    while not status_of(k8s, NAMESPACE, "second").get("nextCheckAt"):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    status = status_of(k8s, NAMESPACE, "second")
    submitted = datetime.fromisoformat(status["submittedAt"].replace("Z", "+00:00"))
    first_check = datetime.fromisoformat(status["nextCheckAt"].replace("Z", "+00:00"))
    assert (first_check - submitted).total_seconds() == pytest.approx(learned * 7.1, abs=0.2)
