"""What the operator logs while a job runs: JSON lines about the job, INFO for phase changes only."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from speechkit_operator.logs import configure_logging
from tests.integration.conftest import NAMESPACE, Cluster, Starter, upload
from tests.support.logging_state import logging_restored

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

pytestmark = pytest.mark.integration


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """The operator's log as ``run --log-format json`` writes it; pytest's handlers restored after."""
    with logging_restored():
        out = io.StringIO()
        configure_logging(log_format="json", stream=out)
        yield out


async def test_info_is_for_phase_changes_and_names_the_job(
    k8s: Cluster, s3: S3Client, bucket: str, start_operator: Starter, json_log: io.StringIO
) -> None:
    key = upload(s3, bucket, "librivox-0870.wav")
    # A check every tick for a while: the operation needs several checks before it is done.
    await start_operator(poll_initial_interval_seconds=0.05)
    await k8s.create_job("quiet", {"source": {"bucket": bucket, "key": key}})
    status = await k8s.wait_for_phase("quiet", "Succeeded", "Failed")
    assert status["phase"] == "Succeeded", status

    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    about_job = [line for line in lines if line.get("name") == "quiet"]
    info = [line for line in about_job if line["level"] == "INFO"]
    assert [line["message"].split(" ", 2)[2].split(" ")[0] for line in info] == ["submitted", "succeeded:"]
    assert all(line["namespace"] == NAMESPACE for line in about_job)
    # kopf ran the poll timer many times; none of it is INFO.
    assert not [line for line in lines if line["logger"] == "kopf.objects" and line["level"] == "INFO"]
    assert not any("Timer" in line["message"] for line in lines)
