"""ObjectStorage's listing and small reads against a real MinIO: 2,500 objects, past the 1,000-key page.

MinIO is the e2e tier's binary (built by `.ci/build-components`, found as devstack/components.py
says). Without it these tests are skipped with the reason -- or fail when `CI` is set, as the e2e tier
does, so that CI never passes by skipping them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import boto3
import pytest
from botocore.config import Config as BotoConfig

from devstack.components import BUILD_SCRIPT, ComponentError, MinioServer, locate_binaries, running_minio
from speechkit_operator.clients.storage import ListPage, ObjectStorage, StorageError
from speechkit_operator.models.storage import StorageConfig

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

pytestmark = pytest.mark.integration

PREFIX = "batch/in/"
COUNT = 2500
UPLOAD_THREADS = 32


def _key(i: int) -> str:
    # Mostly plain names; every 97th with spaces and Cyrillic, every 89th a level deeper.
    if i % 97 == 0:
        return f"{PREFIX}звонок {i:05d}.wav"
    if i % 89 == 0:
        return f"{PREFIX}sub dir/{i:05d}.wav"
    return f"{PREFIX}{i:05d}.wav"


KEYS = sorted(_key(i) for i in range(COUNT))
# Around the prefix but not under it.
OUTSIDE = ["batch/in.wav", "batch/inbox/00001.wav", "batch/i", "a/00001.wav", "batch/out/00001.wav", "z.wav"]


@pytest.fixture(scope="module")
def minio() -> Iterator[MinioServer]:
    lookup = locate_binaries()
    binary = lookup.found.get("minio")
    if binary is None:
        message = f"MinIO not built -- run `{BUILD_SCRIPT}`. {lookup.explain()}"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set, so a missing MinIO is an error: {message}", pytrace=False)
        pytest.skip(message)
    try:
        with running_minio(binary) as server:
            yield server
    except ComponentError as exc:
        pytest.fail(f"MinIO failed: {exc}", pytrace=False)


@pytest.fixture(scope="module")
def config(minio: MinioServer) -> StorageConfig:
    return StorageConfig(
        endpoint=minio.endpoint,
        region=minio.region,
        access_key_id=minio.access_key,
        secret_access_key=minio.secret_key,
    )


@pytest.fixture(scope="module")
def storage(config: StorageConfig) -> Iterator[ObjectStorage]:
    storage = ObjectStorage(config, timeout=10.0)
    yield storage
    storage.close()


@pytest.fixture(scope="module")
def s3(minio: MinioServer) -> S3Client:
    client: S3Client = boto3.client(
        "s3",
        endpoint_url=minio.endpoint,
        region_name=minio.region,
        aws_access_key_id=minio.access_key,
        aws_secret_access_key=minio.secret_key,
        config=BotoConfig(max_pool_connections=UPLOAD_THREADS),
    )
    return client


@pytest.fixture(scope="module")
def listed_bucket(s3: S3Client) -> str:
    """A bucket with the 2,500 objects under PREFIX and a few outside it (uploaded once, in threads)."""
    name = f"calls-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=name)

    def put(key: str) -> None:
        s3.put_object(Bucket=name, Key=key, Body=key.encode())

    with ThreadPoolExecutor(max_workers=UPLOAD_THREADS) as pool:
        list(pool.map(put, [*KEYS, *OUTSIDE]))
    return name


@pytest.fixture
def bucket(s3: S3Client) -> str:
    name = f"small-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=name)
    return name


# --- listing -------------------------------------------------------------------------------------


async def test_iter_objects_gives_every_object_under_the_prefix_in_key_order(
    storage: ObjectStorage, listed_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[tuple[str | None, int]] = []
    sizes: list[int] = []
    list_page = storage.list_page

    async def spy(
        bucket: str, prefix: str, *, start_after: str | None = None, max_keys: int = 1000
    ) -> ListPage:
        asked.append((start_after, max_keys))
        page = await list_page(bucket, prefix, start_after=start_after, max_keys=max_keys)
        sizes.append(len(page.objects))
        return page

    monkeypatch.setattr(storage, "list_page", spy)

    items = [item async for item in storage.iter_objects(listed_bucket, PREFIX)]

    assert [item.key for item in items] == KEYS
    assert all(item.size == len(item.key.encode()) for item in items)
    assert all(item.etag and '"' not in item.etag for item in items)
    # Three ListObjectsV2 calls of 1,000 keys at most, each after the last key of the one before.
    assert sizes == [1000, 1000, 500]
    assert asked == [(None, 1000), (KEYS[999], 1000), (KEYS[1999], 1000)]


async def test_first_page_is_truncated_at_1000(storage: ObjectStorage, listed_bucket: str) -> None:
    page = await storage.list_page(listed_bucket, PREFIX)

    assert page.truncated is True
    assert [item.key for item in page.objects] == KEYS[:1000]


async def test_resuming_from_the_middle_gives_the_rest(storage: ObjectStorage, listed_bucket: str) -> None:
    cursor = KEYS[1234]

    rest = [item.key async for item in storage.iter_objects(listed_bucket, PREFIX, start_after=cursor)]

    assert rest == KEYS[1235:]


async def test_small_pages_give_the_same_objects(storage: ObjectStorage, listed_bucket: str) -> None:
    keys = [item.key async for item in storage.iter_objects(listed_bucket, PREFIX, page_size=333)]

    assert keys == KEYS


async def test_empty_prefix_gives_the_whole_bucket(storage: ObjectStorage, listed_bucket: str) -> None:
    keys = [item.key async for item in storage.iter_objects(listed_bucket, "")]

    assert keys == sorted([*KEYS, *OUTSIDE])


async def test_nothing_under_the_prefix(storage: ObjectStorage, listed_bucket: str) -> None:
    assert await storage.list_page(listed_bucket, "batch/none/") == ListPage((), truncated=False)


# --- head_or_none and read_small -----------------------------------------------------------------


async def test_head_or_none(storage: ObjectStorage, s3: S3Client, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="out/a b.json", Body=b"{}", ContentType="application/json")

    head = await storage.head_or_none(bucket, "out/a b.json")
    assert head is not None and (head.size, head.content_type) == (2, "application/json")
    assert head.last_modified is not None
    assert await storage.head_or_none(bucket, "out/nope.json") is None


async def test_read_small(storage: ObjectStorage, s3: S3Client, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="config.json", Body=b'{"a": 1}')
    s3.put_object(Bucket=bucket, Key="done.marker", Body=b"")
    s3.put_object(Bucket=bucket, Key="huge.json", Body=b"x" * 200_000)

    assert await storage.read_small(bucket, "config.json", limit=8) == b'{"a": 1}'
    assert await storage.read_small(bucket, "done.marker", limit=8) == b""
    assert await storage.read_small(bucket, "absent.json", limit=8) is None
    with pytest.raises(StorageError) as caught:
        await storage.read_small(bucket, "huge.json", limit=65536)
    assert caught.value.kind == "too_large"
    assert caught.value.transient is False
    assert f"s3://{bucket}/huge.json: the object (200000 bytes)" in caught.value.message
    assert "limit of 65536 bytes" in caught.value.message


async def test_wrong_keys_are_denied_not_absent(config: StorageConfig, s3: S3Client, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="config.json", Body=b"{}")
    wrong = StorageConfig(config.endpoint, config.region, config.access_key_id, "not-the-secret-key")
    storage = ObjectStorage(wrong, timeout=10.0)
    try:
        for key in ("config.json", "absent.json"):
            with pytest.raises(StorageError) as caught:
                await storage.head_or_none(bucket, key)
            assert caught.value.kind == "denied"
            with pytest.raises(StorageError) as caught:
                await storage.read_small(bucket, key, limit=100)
            assert caught.value.kind == "denied"
            assert "SignatureDoesNotMatch" in caught.value.message
        with pytest.raises(StorageError) as caught:
            await storage.list_page(bucket, "")
        assert caught.value.kind == "denied"
        assert "not-the-secret-key" not in caught.value.message
    finally:
        storage.close()
