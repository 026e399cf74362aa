"""ObjectStorage and StorageFactory against a real moto S3 server on loopback."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import aiohttp
import boto3
import pytest
from yarl import URL

from speechkit_operator.clients import storage as storage_module
from speechkit_operator.clients.storage import ObjectStorage, StorageError, StorageFactory
from speechkit_operator.models.storage import StorageConfig
from tests.support.free_port import free_port
from tests.support.moto_server import moto_s3_server

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

REGION = "us-east-1"
ACCESS_KEY_ID = "testing-access"
SECRET_ACCESS_KEY = "testing-secret-do-not-print"
PAYLOAD = b"0123456789abcdefghijklmnopqrstuvwxyz"


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with moto_s3_server() as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def config(endpoint: str) -> StorageConfig:
    return StorageConfig(
        endpoint=endpoint, region=REGION, access_key_id=ACCESS_KEY_ID, secret_access_key=SECRET_ACCESS_KEY
    )


@pytest.fixture(scope="module")
def storage(config: StorageConfig) -> ObjectStorage:
    return ObjectStorage(config, timeout=5.0)


@pytest.fixture(scope="module")
def s3(endpoint: str) -> S3Client:
    client: S3Client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
    )
    return client


@pytest.fixture
def bucket(s3: S3Client) -> str:
    name = f"calls-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def audio_key(s3: S3Client, bucket: str) -> str:
    key = "incoming/2026 calls/звонок #1.wav"
    s3.put_object(Bucket=bucket, Key=key, Body=PAYLOAD, ContentType="audio/wav")
    return key


# --- head / read_range / put ---------------------------------------------------------------------


async def test_head_gives_size_type_and_time(storage: ObjectStorage, bucket: str, audio_key: str) -> None:
    head = await storage.head(bucket, audio_key)
    assert (head.size, head.content_type) == (len(PAYLOAD), "audio/wav")
    assert head.last_modified is not None and head.last_modified.tzinfo is not None
    assert abs((datetime.now(UTC) - head.last_modified).total_seconds()) < 120


async def test_read_range_first_bytes(storage: ObjectStorage, bucket: str, audio_key: str) -> None:
    assert await storage.read_range(bucket, audio_key, "bytes=0-9") == b"0123456789"


async def test_read_range_middle_bytes(storage: ObjectStorage, bucket: str, audio_key: str) -> None:
    assert await storage.read_range(bucket, audio_key, "bytes=10-12") == b"abc"


async def test_read_range_last_bytes(storage: ObjectStorage, bucket: str, audio_key: str) -> None:
    assert await storage.read_range(bucket, audio_key, "bytes=-5") == b"vwxyz"


async def test_read_range_beyond_the_end_is_clipped(
    storage: ObjectStorage, bucket: str, audio_key: str
) -> None:
    assert await storage.read_range(bucket, audio_key, "bytes=30-65535") == PAYLOAD[30:]


async def test_put_then_read_back(storage: ObjectStorage, s3: S3Client, bucket: str) -> None:
    body = "Привет, мир\n".encode()

    await storage.put(bucket, "out/a.txt", body, "text/plain; charset=utf-8")

    stored = s3.get_object(Bucket=bucket, Key="out/a.txt")
    assert stored["Body"].read() == body
    assert stored["ContentType"] == "text/plain; charset=utf-8"
    head = await storage.head(bucket, "out/a.txt")
    assert (head.size, head.content_type) == (len(body), "text/plain; charset=utf-8")


async def test_put_overwrites(storage: ObjectStorage, bucket: str) -> None:
    await storage.put(bucket, "out/a.json", b"{}", "application/json")
    await storage.put(bucket, "out/a.json", b'{"a": 1}', "application/json")

    assert await storage.read_range(bucket, "out/a.json", "bytes=0-99") == b'{"a": 1}'


# --- errors --------------------------------------------------------------------------------------


async def test_head_of_a_missing_object(storage: ObjectStorage, bucket: str) -> None:
    with pytest.raises(StorageError) as caught:
        await storage.head(bucket, "nope.wav")

    assert caught.value.kind == "not_found"
    assert caught.value.transient is False
    assert f"s3://{bucket}/nope.wav" in caught.value.message


async def test_read_of_a_missing_object(storage: ObjectStorage, bucket: str) -> None:
    with pytest.raises(StorageError) as caught:
        await storage.read_range(bucket, "nope.wav", "bytes=0-9")

    assert caught.value.kind == "not_found"
    assert caught.value.transient is False
    assert "NoSuchKey" in caught.value.message


@pytest.mark.parametrize("operation", ["head", "read", "put"])
async def test_missing_bucket(storage: ObjectStorage, operation: str) -> None:
    bucket = f"missing-{uuid.uuid4().hex[:10]}"

    with pytest.raises(StorageError) as caught:
        if operation == "head":
            await storage.head(bucket, "a.wav")
        elif operation == "read":
            await storage.read_range(bucket, "a.wav", "bytes=0-9")
        else:
            await storage.put(bucket, "a.txt", b"x", "text/plain")

    assert caught.value.kind == "not_found"
    assert caught.value.transient is False
    assert bucket in caught.value.message


async def test_range_past_the_end_is_invalid(storage: ObjectStorage, bucket: str, audio_key: str) -> None:
    with pytest.raises(StorageError) as caught:
        await storage.read_range(bucket, audio_key, "bytes=1000-2000")

    assert caught.value.kind == "invalid"
    assert caught.value.transient is False
    assert "InvalidRange" in caught.value.message


async def test_unreachable_endpoint_is_unavailable_and_transient() -> None:
    closed_port = free_port()  # bound and released at once: nothing listens there
    storage = ObjectStorage(
        StorageConfig(
            endpoint=f"http://127.0.0.1:{closed_port}",
            region=REGION,
            access_key_id=ACCESS_KEY_ID,
            secret_access_key=SECRET_ACCESS_KEY,
        ),
        timeout=0.2,
    )

    with pytest.raises(StorageError) as caught:
        await storage.head("calls", "a.wav")

    assert caught.value.kind == "unavailable"
    assert caught.value.transient is True
    assert "unreachable" in caught.value.message
    assert SECRET_ACCESS_KEY not in caught.value.message


def test_storage_error_transient_only_for_unavailable() -> None:
    assert [
        StorageError(kind, "m").transient for kind in ("not_found", "denied", "invalid", "unavailable")
    ] == [
        False,
        False,
        False,
        True,
    ]


# --- object_url ----------------------------------------------------------------------------------


async def test_presigned_url_is_signed_and_fetchable(
    storage: ObjectStorage, bucket: str, audio_key: str
) -> None:
    url = storage.object_url(bucket, audio_key, presign=True, expires_in=600)

    assert "X-Amz-Signature=" in url
    assert "X-Amz-Expires=600" in url
    assert url.startswith(f"{storage.config.endpoint}/{bucket}/")
    assert SECRET_ACCESS_KEY not in url
    async with aiohttp.ClientSession() as session, session.get(URL(url, encoded=True)) as response:
        assert response.status == 200
        assert await response.read() == PAYLOAD


def test_unsigned_url_is_endpoint_bucket_and_quoted_key(
    storage: ObjectStorage, config: StorageConfig
) -> None:
    url = storage.object_url("calls", "incoming/2026 calls/a#1?.wav", presign=False, expires_in=600)

    assert url == f"{config.endpoint}/calls/incoming/2026%20calls/a%231%3F.wav"


def test_unsigned_url_of_a_non_ascii_key(storage: ObjectStorage, config: StorageConfig) -> None:
    url = storage.object_url("calls", "звонок.wav", presign=False, expires_in=600)

    assert url == f"{config.endpoint}/calls/%D0%B7%D0%B2%D0%BE%D0%BD%D0%BE%D0%BA.wav"


async def test_unsigned_url_of_a_public_object_is_fetchable(
    storage: ObjectStorage, s3: S3Client, bucket: str, audio_key: str
) -> None:
    # The plain URL is for buckets SpeechKit may read without a signature: make the object public.
    s3.put_object_acl(Bucket=bucket, Key=audio_key, ACL="public-read")
    url = storage.object_url(bucket, audio_key, presign=False, expires_in=600)

    async with aiohttp.ClientSession() as session, session.get(URL(url, encoded=True)) as response:
        assert response.status == 200
        assert await response.read() == PAYLOAD


# --- factory and config --------------------------------------------------------------------------


def test_factory_shares_one_storage_per_config(config: StorageConfig) -> None:
    factory = StorageFactory(timeout=1.0)
    equal = StorageConfig(
        endpoint=config.endpoint,
        region=config.region,
        access_key_id=config.access_key_id,
        secret_access_key=config.secret_access_key,
    )

    first = factory.get(config)

    assert isinstance(first, ObjectStorage)
    assert first.config == config
    assert factory.get(equal) is first


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> list[tuple[StorageConfig, float]]:
    """Replace ObjectStorage (a boto3 client costs a few hundred ms) and record each construction."""
    made: list[tuple[StorageConfig, float]] = []

    class CountingStorage:
        def __init__(self, config: StorageConfig, *, timeout: float) -> None:
            self.config = config
            made.append((config, timeout))

    monkeypatch.setattr(storage_module, "ObjectStorage", CountingStorage)
    return made


@pytest.mark.parametrize(
    "change",
    [
        {"endpoint": "http://127.0.0.1:1"},
        {"region": "ru-central1"},
        {"access_key_id": "other"},
        {"secret_access_key": "other-secret"},  # a rotated key must not reuse the old client
    ],
)
def test_factory_gives_another_storage_for_another_config(
    config: StorageConfig, change: dict[str, str], counting: list[tuple[StorageConfig, float]]
) -> None:
    factory = StorageFactory(timeout=2.5)
    other_config = dataclasses.replace(config, **change)

    original = factory.get(config)
    other = factory.get(other_config)

    assert other is not original
    assert other.config == other_config
    assert factory.get(other_config) is other
    assert factory.get(config) is original
    assert counting == [(config, 2.5), (other_config, 2.5)]


def test_config_repr_hides_the_secret_access_key(config: StorageConfig) -> None:
    text = repr(config)

    assert SECRET_ACCESS_KEY not in text
    assert "secret_access_key" not in text
    assert ACCESS_KEY_ID in text
    assert config.endpoint in text


def test_storage_config_is_hashable_and_compares_by_value(config: StorageConfig) -> None:
    assert {config: 1}[StorageConfig(config.endpoint, REGION, ACCESS_KEY_ID, SECRET_ACCESS_KEY)] == 1
