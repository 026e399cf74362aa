"""The fast end-to-end tier: the real operator (kopf) against KMock, a moto S3 server and the
SpeechKit emulator, all on loopback in the test's own event loop."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import aiohttp
import boto3
import kmock
import kopf
import kubernetes
import pytest

from speechkit_operator.clients.secrets import SecretReader
from speechkit_operator.config import Settings
from speechkit_operator.constants import API_VERSION, GROUP, JOB_KIND, JOB_PLURAL, VERSION
from speechkit_operator.context import OperatorContext, build_context
from speechkit_operator.handlers import register
from tests.emulator import SpeechKitEmulator
from tests.support.audio import audio_dir
from tests.support.moto_server import moto_s3_server
from tests.support.speechkit import corpus_emulator

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

NAMESPACE = "default"
JOBS = f"{GROUP}/{VERSION}/{JOB_PLURAL}"
API_KEY = "test-api-key"


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    with moto_s3_server() as endpoint:
        yield endpoint


@pytest.fixture
def s3(s3_endpoint: str) -> S3Client:
    client: S3Client = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    return client


@pytest.fixture
def bucket(s3: S3Client) -> str:
    name = f"calls-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=name)
    return name


def upload(s3: S3Client, bucket: str, name: str, key: str | None = None) -> str:
    """Upload one file of the shared corpus; returns its key."""
    key = key or f"incoming/{name}"
    s3.put_object(Bucket=bucket, Key=key, Body=(audio_dir() / name).read_bytes())
    return key


@pytest.fixture
async def speechkit() -> AsyncIterator[SpeechKitEmulator]:
    async with corpus_emulator(API_KEY) as emulator:
        yield emulator


@pytest.fixture
async def k8s() -> AsyncIterator[Cluster]:
    async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator) as server:
        emulator.resources.load_bundled()
        emulator.resources[JOBS] = kmock.ResourceInfo(
            kind=JOB_KIND,
            singular="transcriptionjob",
            namespaced=True,
            verbs={"get", "list", "watch", "create", "patch", "delete"},
            shortnames={"tj"},
            categories={"speechkit"},
            subresources={"status"},
        )
        async with aiohttp.ClientSession(base_url=str(server.url)) as session:
            yield Cluster(emulator=emulator, url=str(server.url).rstrip("/"), session=session)


@dataclass
class Cluster:
    """KMock, driven over HTTP as a user's kubectl would."""

    emulator: kmock.KubernetesEmulator
    url: str
    session: aiohttp.ClientSession

    async def create(self, path: str, body: dict[str, Any]) -> None:
        body.setdefault("metadata", {}).update(
            resourceVersion="1",
            uid=str(uuid.uuid4()),
            creationTimestamp=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        async with self.session.post(path, json=body) as response:
            assert response.status < 300, await response.text()

    async def create_secret(self, name: str, data: dict[str, str]) -> None:
        encoded = {key: base64.b64encode(value.encode()).decode() for key, value in data.items()}
        await self.create(
            f"/api/v1/namespaces/{NAMESPACE}/secrets",
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": name, "namespace": NAMESPACE},
                "data": encoded,
            },
        )

    async def create_job(self, name: str, spec: dict[str, Any]) -> None:
        await self.create(
            f"/apis/{GROUP}/{VERSION}/namespaces/{NAMESPACE}/{JOB_PLURAL}",
            {
                "apiVersion": API_VERSION,
                "kind": JOB_KIND,
                "metadata": {"name": name, "namespace": NAMESPACE},
                "spec": spec,
            },
        )

    async def delete_job(self, name: str) -> None:
        async with self.session.delete(
            f"/apis/{GROUP}/{VERSION}/namespaces/{NAMESPACE}/{JOB_PLURAL}/{name}"
        ) as response:
            assert response.status < 300, await response.text()

    def job(self, name: str) -> dict[str, Any] | None:
        try:
            obj = self.emulator.objects[JOBS, NAMESPACE, name]
        except KeyError:
            return None
        if obj.deleted:
            return None
        return dict(obj.raw)

    def status(self, name: str) -> dict[str, Any]:
        body = self.job(name) or {}
        return dict(body.get("status") or {})

    async def wait_for(
        self, name: str, predicate: Callable[[dict[str, Any]], bool], timeout: float = 20.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            status = self.status(name)
            if predicate(status):
                return status
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {name}; status is {status}")
            await asyncio.sleep(0.05)

    async def wait_for_phase(self, name: str, *phases: str, timeout: float = 20.0) -> dict[str, Any]:
        return await self.wait_for(name, lambda status: status.get("phase") in phases, timeout)

    async def wait_for_event(self, reason: str, timeout: float = 10.0) -> dict[str, Any]:
        """kopf posts events in the background, after the status patch: wait for one to arrive."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events():
                if event.get("reason") == reason:
                    return event
            if time.monotonic() > deadline:
                raise AssertionError(f"no {reason} event; got {[e.get('reason') for e in self.events()]}")
            await asyncio.sleep(0.05)

    def events(self) -> list[dict[str, Any]]:
        """Events the operator posted (read from the request log: KMock keeps only one per namespace)."""
        return [
            request.data
            for request in self.emulator
            if request.method == kmock.method.POST and request.url.path.endswith("/events")
        ]


def make_settings(speechkit: SpeechKitEmulator, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "stt_url": speechkit.url,
        "stt_v3_url": speechkit.url,
        "operation_url": speechkit.url,
        "iam_token_url": f"{speechkit.url}/iam/v1/tokens",
        "first_check_min_seconds": 0.1,
        "seconds_per_audio_minute": 0.0,
        "poll_initial_interval_seconds": 0.1,
        "poll_backoff_factor": 1.0,
        "poll_max_interval_seconds": 0.5,
        "retry_attempts": 3,
        "retry_base_delay": 0.01,
        "retry_max_delay": 0.2,
        "secret_cache_seconds": 0,
        "submit_retry_base_seconds": 0.2,
        "http_timeout": 5.0,
        "metrics_port": 0,
        # Budgets that never bind here; tests of the quota set their own.
        "quota_window_seconds": 1.0,
        "submit_quota": 10_000,
        "check_quota": 100_000,
        # The storage Secret names the moto server, on loopback at a port of its own.
        "storage_endpoints": ("http://127.0.0.1:*",),
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class OperatorHandle:
    stop_flag: asyncio.Event
    task: asyncio.Task[None]
    context: OperatorContext

    async def stop(self) -> None:
        self.stop_flag.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self.task, timeout=15)
        # kopf's cleanup closes it too; closing again is harmless and covers a cut-short stop.
        await self.context.close()


@dataclass
class OperatorFactory:
    cluster: Cluster
    running: list[OperatorHandle] = field(default_factory=list)

    async def start(self, settings: Settings) -> OperatorHandle:
        server = self.cluster.url
        registry = register(kopf.OperatorRegistry(), settings)

        @kopf.on.login(registry=registry)
        def login(**_: Any) -> kopf.ConnectionInfo:
            return kopf.ConnectionInfo(server=server)

        api_config = kubernetes.client.Configuration()
        api_config.host = server

        def api_client() -> kubernetes.client.ApiClient:
            return kubernetes.client.ApiClient(api_config)

        secrets = SecretReader(cache_seconds=0, api_client_factory=api_client)
        context = build_context(settings, secrets=secrets, api_client_factory=api_client, sole_actor=True)
        stop_flag = asyncio.Event()
        ready_flag = asyncio.Event()
        task = asyncio.create_task(
            kopf.operator(
                registry=registry,
                memo=kopf.Memo(context=context),
                stop_flag=stop_flag,
                ready_flag=ready_flag,
                standalone=True,
                # KMock cannot parse the namespace listing kopf makes for namespaced operators.
                clusterwide=True,
            )
        )
        handle = OperatorHandle(stop_flag=stop_flag, task=task, context=context)
        self.running.append(handle)
        await asyncio.wait_for(ready_flag.wait(), timeout=10)
        # Let the watch streams start, so that objects created next are not also listed.
        await asyncio.sleep(0.5)
        return handle


@pytest.fixture
async def operators(k8s: Cluster) -> AsyncIterator[OperatorFactory]:
    factory = OperatorFactory(cluster=k8s)
    try:
        yield factory
    finally:
        for handle in factory.running:
            await handle.stop()


@pytest.fixture
async def secrets(k8s: Cluster, s3_endpoint: str) -> None:
    await k8s.create_secret("speechkit-credentials", {"api-key": API_KEY, "folder-id": "b1gfolder"})
    await k8s.create_secret(
        "speechkit-storage",
        {
            "access-key-id": "testing",
            "secret-access-key": "testing",
            "endpoint": s3_endpoint,
            "region": "us-east-1",
        },
    )


Starter = Callable[..., Awaitable[OperatorHandle]]


@pytest.fixture
def start_operator(operators: OperatorFactory, speechkit: SpeechKitEmulator, secrets: None) -> Starter:
    async def start(**overrides: Any) -> OperatorHandle:
        return await operators.start(make_settings(speechkit, **overrides))

    return start
