"""The operator's own writes to the Kubernetes API: job status, Events, deletion, a fresh read.

kopf delivers the jobs (its watch stream feeds the scheduler); everything the operator changes goes
through here, so each write is awaited and counted, and a submission's intent is on the API server
before the submission is sent. It uses the ``kubernetes`` client (configured by kopf's login, or
explicitly in tests) in a small pool of worker threads, with raw JSON in and out.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets as random
import urllib.parse
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, Literal

import kubernetes
from kubernetes.client.exceptions import ApiException

from speechkit_operator.constants import API_VERSION, BATCH_PLURAL, GROUP, JOB_KIND, JOB_PLURAL, VERSION
from speechkit_operator.models.job import JobRef

logger = logging.getLogger(__name__)

#: Seconds one Kubernetes API request may take.
DEFAULT_TIMEOUT = 30.0
#: The most characters of the API server's own error message kept in a KubeError's text.
MAX_DETAIL = 300
MERGE_PATCH = "application/merge-patch+json"
EVENT_COMPONENT = "speechkit-operator"


class KubeError(Exception):
    """A Kubernetes API call failed; ``status`` is the HTTP status (0 when none came back)."""

    def __init__(self, message: str, status: int = 0, detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        #: The API server's own message (its Status object's ``message``), when it sent one.
        self.detail = detail

    @property
    def conflict(self) -> bool:
        """The object changed since it was read (a resourceVersion precondition failed)."""
        return self.status == 409

    @property
    def gone(self) -> bool:
        return self.status == 404

    @property
    def replaced(self) -> bool:
        """A write carrying the object's uid met another object of that name (the API server
        refuses the change of ``metadata.uid``); not a write the schema refused."""
        return self.status == 422 and "metadata.uid" in self.detail


class WriteCounter:
    """How many writes the operator made, by kind (status patches, Events, deletions)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def add(self, kind: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class JobStore:
    def __init__(
        self,
        *,
        api_client_factory: Callable[[], kubernetes.client.ApiClient] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        threads: int = 4,
    ) -> None:
        self._factory = api_client_factory or kubernetes.client.ApiClient
        self._api: kubernetes.client.ApiClient | None = None
        self._timeout = timeout
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="kube")
        self.writes = WriteCounter()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- jobs ----------------------------------------------------------------------------------

    async def patch_status(
        self, job: JobRef, status: Mapping[str, Any], *, resource_version: str | None = None
    ) -> dict[str, Any]:
        """Merge ``status`` into the job's status; with ``resource_version``, only if the job is
        still at that version (else :class:`KubeError` with ``conflict``). The job as it is now."""
        body: dict[str, Any] = {"status": dict(status)}
        metadata: dict[str, str] = {}
        if resource_version is not None:
            metadata["resourceVersion"] = resource_version
        if job.uid:
            # The status subresource does not hold a write to this uid (it keeps the stored
            # object's metadata): the answer's uid is checked below instead.
            metadata["uid"] = job.uid
        if metadata:
            body["metadata"] = metadata
        try:
            answer = await self._request("PATCH", _job_path(job) + "/status", body, content_type=MERGE_PATCH)
        except KubeError as exc:
            if exc.replaced and job.uid:
                logger.warning(
                    "job %s: not written, the job was replaced or refused it: %s", job, exc, extra=job.log
                )
                raise KubeError(f"{exc} (the job was replaced)", 404) from None
            raise
        if job.uid and (answer.get("metadata") or {}).get("uid") not in (None, job.uid):
            raise KubeError(f"PATCH {_job_path(job)}/status: another job of that name", 404)
        self.writes.add("status")
        return answer

    async def get(self, job: JobRef) -> dict[str, Any] | None:
        """The job as the API server has it now, or None when it is gone."""
        try:
            return await self._request("GET", _job_path(job))
        except KubeError as exc:
            if exc.gone:
                return None
            raise

    async def delete(self, job: JobRef) -> None:
        """Delete the job, only if it is still the same object (its uid); gone already is fine."""
        body: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions"}
        if job.uid:
            body["preconditions"] = {"uid": job.uid}
        try:
            await self._request("DELETE", _job_path(job), body)
        except KubeError as exc:
            if not exc.gone and not exc.conflict:
                raise
        self.writes.add("delete")

    async def create_job(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """Create a job; None when one of that name exists already (409: its deterministic name
        makes a second creation of the same job a no-op)."""
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{JOB_PLURAL}"
        try:
            created = await self._request("POST", path, dict(body))
        except KubeError as exc:
            if exc.conflict:
                return None
            raise
        self.writes.add("create")
        return created

    async def list_jobs(
        self, namespace: str, *, label_selector: str, limit: int = 500
    ) -> AsyncIterator[dict[str, Any]]:
        """The jobs of ``namespace`` that match ``label_selector``, a page of ``limit`` at a time."""
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{JOB_PLURAL}"
        token: str | None = None
        while True:
            query = {"labelSelector": label_selector, "limit": str(limit)}
            if token:
                query["continue"] = token
            page = await self._request("GET", f"{path}?{urllib.parse.urlencode(query)}")
            for item in page.get("items") or []:
                if isinstance(item, dict):
                    yield item
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return

    # -- batches -------------------------------------------------------------------------------

    async def get_batch(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The TranscriptionBatch as the API server has it now, or None when there is none."""
        try:
            return await self._request(
                "GET", f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{BATCH_PLURAL}/{name}"
            )
        except KubeError as exc:
            if exc.gone:
                return None
            raise

    async def patch_batch_status(self, batch: JobRef, status: Mapping[str, Any]) -> dict[str, Any]:
        """Merge ``status`` into a TranscriptionBatch's status (only the batch of ``batch.uid``)."""
        body: dict[str, Any] = {"status": dict(status)}
        if batch.uid:
            body["metadata"] = {"uid": batch.uid}
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{batch.namespace}/{BATCH_PLURAL}/{batch.name}/status"
        try:
            answer = await self._request("PATCH", path, body, content_type=MERGE_PATCH)
        except KubeError as exc:
            if exc.replaced and batch.uid:
                raise KubeError(f"{exc} (the batch was replaced)", 404) from None
            raise
        self.writes.add("batch-status")
        if batch.uid and (answer.get("metadata") or {}).get("uid") not in (None, batch.uid):
            raise KubeError(f"PATCH {path}: another batch of that name", 404)
        return answer

    async def post_event(
        self,
        job: JobRef,
        type_: Literal["Normal", "Warning"],
        reason: str,
        message: str,
        *,
        kind: str = JOB_KIND,
    ) -> None:
        """An Event on the job (or another object of ours, by ``kind``), as ``kubectl describe``
        shows it. Best effort: a failure is logged."""
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{job.name}.{random.token_hex(8)}", "namespace": job.namespace},
            "involvedObject": {
                "apiVersion": API_VERSION,
                "kind": kind,
                "namespace": job.namespace,
                "name": job.name,
                **({"uid": job.uid} if job.uid else {}),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": EVENT_COMPONENT},
            "reportingComponent": EVENT_COMPONENT,
            "reportingInstance": EVENT_COMPONENT,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "eventTime": None,
            "count": 1,
        }
        try:
            await self._request("POST", f"/api/v1/namespaces/{job.namespace}/events", event)
        except KubeError as exc:
            logger.warning("could not post the %s event on %s: %s", reason, job, exc, extra=job.log)
            return
        self.writes.add("event")

    # -- the operator's own state ---------------------------------------------------------------

    async def read_config(self, namespace: str, name: str) -> dict[str, str] | None:
        """The data of a ConfigMap, or None when there is none."""
        try:
            body = await self._request("GET", f"/api/v1/namespaces/{namespace}/configmaps/{name}")
        except KubeError as exc:
            if exc.gone:
                return None
            raise
        data = body.get("data") or {}
        return {str(key): str(value) for key, value in data.items()} if isinstance(data, dict) else {}

    async def write_config(self, namespace: str, name: str, data: Mapping[str, str]) -> None:
        """Create or replace the data of a ConfigMap the operator owns."""
        path = f"/api/v1/namespaces/{namespace}/configmaps/{name}"
        try:
            await self._request("PATCH", path, {"data": dict(data)}, content_type=MERGE_PATCH)
        except KubeError as exc:
            if not exc.gone:
                raise
            body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": dict(data)}
            await self._request("POST", f"/api/v1/namespaces/{namespace}/configmaps", body)
        self.writes.add("configmap")

    # -- transport -----------------------------------------------------------------------------

    async def _request(
        self, method: str, path: str, body: Any = None, *, content_type: str = "application/json"
    ) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, self._request_blocking, method, path, body, content_type
        )

    def _client(self) -> kubernetes.client.ApiClient:
        if self._api is None:
            self._api = self._factory()
        return self._api

    def _request_blocking(self, method: str, path: str, body: Any, content_type: str) -> dict[str, Any]:
        status, data = raw_request(
            self._client(), method, path, body, content_type=content_type, timeout=self._timeout
        )
        if status >= 400:
            detail = str(data.get("message") or "")
            said = f": {detail[:MAX_DETAIL]}" if detail else ""
            raise KubeError(f"{method} {path}: HTTP {status}{said}", status, detail)
        return data


def raw_request(
    api: kubernetes.client.ApiClient,
    method: str,
    path: str,
    body: Any = None,
    *,
    content_type: str = "application/json",
    timeout: float = DEFAULT_TIMEOUT,
) -> tuple[int, dict[str, Any]]:
    """One request with the client's credentials, JSON in and out, no models: the HTTP status and
    the JSON object of the answer ({} when it is not one). Raises :class:`KubeError` when no
    answer came."""
    headers = {"Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = content_type
    try:
        serialized = api.param_serialize(
            method, path, header_params=headers, body=body, auth_settings=["BearerToken"]
        )
        response = api.call_api(*serialized, _request_timeout=timeout)
        response.read()  # type: ignore[no-untyped-call]
    except ApiException as exc:
        try:
            answer = json.loads(exc.body or b"{}")
        except (TypeError, ValueError):
            answer = {}
        return int(exc.status or 0), answer if isinstance(answer, dict) else {}
    except Exception as exc:  # connection errors of urllib3 and the like
        raise KubeError(f"{method} {path}: {type(exc).__name__}") from None
    try:
        data = json.loads(response.data or b"{}")
    except ValueError:
        data = {}
    return int(response.status), data if isinstance(data, dict) else {}


def _job_path(job: JobRef) -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{job.namespace}/{JOB_PLURAL}/{job.name}"
