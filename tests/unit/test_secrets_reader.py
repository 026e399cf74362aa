"""SecretReader against KMock: decoding, not-found, the short cache, and an unreachable API server."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aiohttp
import kmock
import kubernetes
import pytest

from speechkit_operator.clients.secrets import SecretNotFoundError, SecretReader, SecretUnreadableError
from tests.support.free_port import free_port

NAMESPACE = "default"


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Cluster:
    emulator: kmock.KubernetesEmulator
    url: str

    def api_client_factory(self) -> Callable[[], kubernetes.client.ApiClient]:
        configuration = kubernetes.client.Configuration()
        configuration.host = self.url
        return lambda: kubernetes.client.ApiClient(configuration)

    def reader(
        self, *, cache_seconds: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> SecretReader:
        return SecretReader(
            cache_seconds=cache_seconds, api_client_factory=self.api_client_factory(), clock=clock
        )

    async def create_secret(self, name: str, data: dict[str, bytes], namespace: str = NAMESPACE) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "resourceVersion": "1",
                "uid": str(uuid.uuid4()),
            },
            "type": "Opaque",
            "data": {key: base64.b64encode(value).decode() for key, value in data.items()},
        }
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{self.url}/api/v1/namespaces/{namespace}/secrets", json=body) as response,
        ):
            assert response.status < 300, await response.text()

    async def replace_secret(self, name: str, data: dict[str, bytes], namespace: str = NAMESPACE) -> None:
        body = {"data": {key: base64.b64encode(value).decode() for key, value in data.items()}}
        async with (
            aiohttp.ClientSession() as session,
            session.patch(
                f"{self.url}/api/v1/namespaces/{namespace}/secrets/{name}",
                json=body,
                headers={"Content-Type": "application/merge-patch+json"},
            ) as response,
        ):
            assert response.status < 300, await response.text()

    def gets(self, name: str, namespace: str = NAMESPACE) -> int:
        """How many GETs of one Secret the emulator has served."""
        path = f"/api/v1/namespaces/{namespace}/secrets/{name}"
        return sum(
            1 for request in self.emulator if request.method == kmock.method.GET and request.url.path == path
        )


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator) as server:
        emulator.resources.load_bundled()
        yield Cluster(emulator=emulator, url=str(server.url).rstrip("/"))


CREDENTIALS = {
    "api-key": b"AQVN-secret-api-key",
    "folder-id": b"b1gfolder",
    "binary": bytes(range(256)),
}


async def test_reads_and_decodes_data(cluster: Cluster) -> None:
    await cluster.create_secret("speech", CREDENTIALS)

    data = await cluster.reader().read(NAMESPACE, "speech")

    assert dict(data) == CREDENTIALS


async def test_reads_the_secret_of_the_right_namespace(cluster: Cluster) -> None:
    await cluster.create_secret("speech", {"api-key": b"default-key"})
    await cluster.create_secret("speech", {"api-key": b"team-key"}, namespace="team")
    reader = cluster.reader()

    assert await reader.read("team", "speech") == {"api-key": b"team-key"}
    assert await reader.read(NAMESPACE, "speech") == {"api-key": b"default-key"}


async def test_secret_without_data_is_empty(cluster: Cluster) -> None:
    await cluster.create_secret("empty", {})

    assert await cluster.reader().read(NAMESPACE, "empty") == {}


async def test_missing_secret(cluster: Cluster) -> None:
    reader = cluster.reader()

    with pytest.raises(SecretNotFoundError, match=r"default/absent"):
        await reader.read(NAMESPACE, "absent")


async def test_missing_secret_is_not_cached(cluster: Cluster) -> None:
    reader = cluster.reader()
    with pytest.raises(SecretNotFoundError):
        await reader.read(NAMESPACE, "late")

    await cluster.create_secret("late", {"api-key": b"now-here"})

    assert await reader.read(NAMESPACE, "late") == {"api-key": b"now-here"}


async def test_cache_hit_does_not_get_again(cluster: Cluster) -> None:
    await cluster.create_secret("speech", CREDENTIALS)
    clock = FakeClock()
    reader = cluster.reader(cache_seconds=30.0, clock=clock)

    first = await reader.read(NAMESPACE, "speech")
    clock.now += 29.9
    second = await reader.read(NAMESPACE, "speech")

    assert second == first == CREDENTIALS
    assert cluster.gets("speech") == 1


async def test_cache_hit_ignores_a_change_on_the_server(cluster: Cluster) -> None:
    await cluster.create_secret("speech", {"api-key": b"old"})
    clock = FakeClock()
    reader = cluster.reader(cache_seconds=30.0, clock=clock)
    await reader.read(NAMESPACE, "speech")

    await cluster.replace_secret("speech", {"api-key": b"new"})
    clock.now += 10

    assert await reader.read(NAMESPACE, "speech") == {"api-key": b"old"}


async def test_expiry_reads_again(cluster: Cluster) -> None:
    await cluster.create_secret("speech", {"api-key": b"old"})
    clock = FakeClock()
    reader = cluster.reader(cache_seconds=30.0, clock=clock)
    await reader.read(NAMESPACE, "speech")
    await cluster.replace_secret("speech", {"api-key": b"new"})

    clock.now += 30.0

    assert await reader.read(NAMESPACE, "speech") == {"api-key": b"new"}
    assert cluster.gets("speech") == 2


async def test_expiry_restarts_the_cache_window(cluster: Cluster) -> None:
    await cluster.create_secret("speech", CREDENTIALS)
    clock = FakeClock()
    reader = cluster.reader(cache_seconds=30.0, clock=clock)

    await reader.read(NAMESPACE, "speech")  # t=0: GET
    clock.now += 31
    await reader.read(NAMESPACE, "speech")  # t=31: GET
    clock.now += 20
    await reader.read(NAMESPACE, "speech")  # t=51: cached since t=31

    assert cluster.gets("speech") == 2


async def test_cache_is_per_secret(cluster: Cluster) -> None:
    await cluster.create_secret("one", {"k": b"1"})
    await cluster.create_secret("two", {"k": b"2"})
    reader = cluster.reader(clock=FakeClock())

    assert await reader.read(NAMESPACE, "one") == {"k": b"1"}
    assert await reader.read(NAMESPACE, "two") == {"k": b"2"}
    assert await reader.read(NAMESPACE, "one") == {"k": b"1"}

    assert (cluster.gets("one"), cluster.gets("two")) == (1, 1)


async def test_zero_cache_seconds_always_reads(cluster: Cluster) -> None:
    await cluster.create_secret("speech", CREDENTIALS)
    reader = cluster.reader(cache_seconds=0.0, clock=FakeClock())

    for _ in range(3):
        await reader.read(NAMESPACE, "speech")

    assert cluster.gets("speech") == 3


async def test_forget_drops_the_cache(cluster: Cluster) -> None:
    await cluster.create_secret("speech", {"api-key": b"old"})
    clock = FakeClock()
    reader = cluster.reader(cache_seconds=30.0, clock=clock)
    await reader.read(NAMESPACE, "speech")
    await cluster.replace_secret("speech", {"api-key": b"new"})

    reader.forget(NAMESPACE, "speech")

    assert await reader.read(NAMESPACE, "speech") == {"api-key": b"new"}
    assert cluster.gets("speech") == 2


async def test_forget_of_an_unknown_secret_is_harmless(cluster: Cluster) -> None:
    await cluster.create_secret("speech", CREDENTIALS)
    reader = cluster.reader(clock=FakeClock())
    await reader.read(NAMESPACE, "speech")

    reader.forget(NAMESPACE, "other")
    reader.forget("elsewhere", "speech")
    await reader.read(NAMESPACE, "speech")

    assert cluster.gets("speech") == 1


async def test_unreachable_server() -> None:
    configuration = kubernetes.client.Configuration()
    configuration.host = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    configuration.retries = 0
    reader = SecretReader(api_client_factory=lambda: kubernetes.client.ApiClient(configuration))

    with pytest.raises(SecretUnreadableError, match=r"default/speech could not be read") as caught:
        await reader.read(NAMESPACE, "speech")

    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__ is True


async def test_forbidden_is_unreadable_not_missing(cluster: Cluster) -> None:
    await cluster.create_secret("forbidden", CREDENTIALS)
    (
        cluster.emulator[f"get /api/v1/namespaces/{NAMESPACE}/secrets/forbidden"]
        << 403
        << {
            "kind": "Status",
            "code": 403,
            "reason": "Forbidden",
            "message": 'secrets "forbidden" is forbidden',
        }
    )

    with pytest.raises(
        SecretUnreadableError, match=r"default/forbidden could not be read \(HTTP 403 Forbidden\)"
    ):
        await cluster.reader().read(NAMESPACE, "forbidden")
