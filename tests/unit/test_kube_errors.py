"""What a KubeError says: the API server's own message, and whether a write met another object."""

from __future__ import annotations

import json
from typing import Any, cast

import pytest
from kubernetes.client import ApiClient

from speechkit_operator.clients.kube import MAX_DETAIL, JobStore, KubeError
from speechkit_operator.models.job import JobRef


class Answer:
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.data = json.dumps(body).encode()

    def read(self) -> None:
        pass


class Api:
    """The two calls of the generated client that raw_request makes, answering ``answer``."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer

    def param_serialize(self, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        return ()

    def call_api(self, *args: Any, **kwargs: Any) -> Answer:
        return self.answer


def status(code: int, message: str) -> dict[str, Any]:
    return {"kind": "Status", "status": "Failure", "code": code, "message": message}


UID_REFUSED = (
    'TranscriptionJob.speechkit.dev "a" is invalid: metadata.uid: Invalid value: "x": field is immutable'
)
SCHEMA_REFUSED = 'TranscriptionJob.speechkit.dev "a" is invalid: status.phase: Unsupported value: "Sleeping"'


def store(answer: Answer) -> JobStore:
    return JobStore(api_client_factory=lambda: cast(ApiClient, Api(answer)))


async def test_a_write_that_met_another_uid_is_gone_one_the_schema_refused_is_not() -> None:
    job = JobRef("calls", "a", uid="u1")
    with pytest.raises(KubeError) as replaced:
        await store(Answer(422, status(422, UID_REFUSED))).patch_status(job, {"phase": "Running"})
    assert replaced.value.gone
    with pytest.raises(KubeError) as refused:
        await store(Answer(422, status(422, SCHEMA_REFUSED))).patch_status(job, {"phase": "Sleeping"})
    assert not refused.value.gone
    assert refused.value.status == 422
    assert "status.phase: Unsupported value" in str(refused.value)


async def test_the_api_servers_message_is_kept_short() -> None:
    with pytest.raises(KubeError) as error:
        await store(Answer(500, status(500, "x" * 5000))).get(JobRef("calls", "a"))
    assert len(str(error.value)) < MAX_DETAIL + 200
    assert error.value.detail == "x" * 5000
