"""ObjectStorage's listing and small reads against a real moto S3 server on loopback; the failures moto
cannot make (a 403, a storage that ignores Range or StartAfter) with botocore's Stubber."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from botocore.response import StreamingBody
from botocore.stub import Stubber

from speechkit_operator.clients.storage import ListedObject, ListPage, ObjectStorage, StorageError
from speechkit_operator.models.storage import StorageConfig
from tests.support.moto_server import moto_s3_server

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

REGION = "us-east-1"
ACCESS_KEY_ID = "testing-access"
SECRET_ACCESS_KEY = "testing-secret-do-not-print"


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


def put_all(s3: S3Client, bucket: str, keys: list[str]) -> dict[str, str]:
    """Put one small object per key (its body names it); returns each key's ETag without quotes."""
    etags = {}
    for key in keys:
        answer = s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
        etags[key] = answer["ETag"].strip('"')
    return etags


async def collect(storage: ObjectStorage, bucket: str, prefix: str, **kwargs: Any) -> list[str]:
    return [item.key async for item in storage.iter_objects(bucket, prefix, **kwargs)]


# S3 orders keys by their UTF-8 bytes, which is the order of Python's str comparison.
UNUSUAL_KEYS = [
    "in/2026 calls/звонок #1.wav",
    "in/a b/c d.wav",
    "in/a+b.wav",
    "in/a%2Fb.wav",
    "in/日本語/音声.wav",
    "in/emoji 🎧.wav",
    "in/tab\there.wav",
]


# --- list_page -----------------------------------------------------------------------------------


async def test_list_page_gives_key_size_etag_and_time(
    storage: ObjectStorage, s3: S3Client, bucket: str
) -> None:
    etags = put_all(s3, bucket, ["in/a.wav"])

    page = await storage.list_page(bucket, "in/")

    assert isinstance(page, ListPage)
    assert page.truncated is False
    [item] = page.objects
    assert isinstance(item, ListedObject)
    assert (item.key, item.size, item.etag) == ("in/a.wav", len(b"in/a.wav"), etags["in/a.wav"])
    assert item.last_modified.tzinfo is not None
    assert abs((datetime.now(UTC) - item.last_modified).total_seconds()) < 300


async def test_pages_by_start_after_cover_every_key_once_in_order(
    storage: ObjectStorage, s3: S3Client, bucket: str
) -> None:
    keys = [f"in/{i:03d}.wav" for i in range(7)]
    put_all(s3, bucket, keys)

    pages: list[ListPage] = []
    cursor: str | None = None
    while True:
        page = await storage.list_page(bucket, "in/", start_after=cursor, max_keys=3)
        pages.append(page)
        if not page.truncated:
            break
        cursor = page.objects[-1].key

    assert [[item.key for item in page.objects] for page in pages] == [keys[0:3], keys[3:6], keys[6:]]
    assert [page.truncated for page in pages] == [True, True, False]


async def test_start_after_resumes_exactly_after_the_key(
    storage: ObjectStorage, s3: S3Client, bucket: str
) -> None:
    keys = [f"in/{i:03d}.wav" for i in range(6)]
    put_all(s3, bucket, keys)

    page = await storage.list_page(bucket, "in/", start_after="in/002.wav")

    assert [item.key for item in page.objects] == keys[3:]


async def test_start_after_need_not_be_an_existing_key(
    storage: ObjectStorage, s3: S3Client, bucket: str
) -> None:
    put_all(s3, bucket, ["in/a.wav", "in/b.wav", "in/c.wav"])

    page = await storage.list_page(bucket, "in/", start_after="in/a.wav~")

    assert [item.key for item in page.objects] == ["in/b.wav", "in/c.wav"]


async def test_start_after_the_last_key_gives_an_empty_final_page(
    storage: ObjectStorage, s3: S3Client, bucket: str
) -> None:
    put_all(s3, bucket, ["in/a.wav", "in/b.wav"])

    assert await storage.list_page(bucket, "in/", start_after="in/b.wav") == ListPage((), truncated=False)


async def test_prefix_filters_the_keys(storage: ObjectStorage, s3: S3Client, bucket: str) -> None:
    put_all(s3, bucket, ["in/a.wav", "in/sub/b.wav", "inbox/c.wav", "in.wav", "out/in/d.wav", "zz"])

    assert [item.key for item in (await storage.list_page(bucket, "in/")).objects] == [
        "in/a.wav",
        "in/sub/b.wav",
    ]
    assert [item.key for item in (await storage.list_page(bucket, "in")).objects] == [
        "in.wav",
        "in/a.wav",
        "in/sub/b.wav",
        "inbox/c.wav",
    ]


async def test_empty_prefix_lists_the_whole_bucket(storage: ObjectStorage, s3: S3Client, bucket: str) -> None:
    keys = ["a.wav", "in/b.wav", "z/c.wav"]
    put_all(s3, bucket, keys)

    assert [item.key for item in (await storage.list_page(bucket, "")).objects] == keys
    assert await collect(storage, bucket, "", page_size=1) == keys


async def test_nothing_under_the_prefix(storage: ObjectStorage, s3: S3Client, bucket: str) -> None:
    put_all(s3, bucket, ["in/a.wav"])

    assert await storage.list_page(bucket, "none/") == ListPage((), truncated=False)
    assert await collect(storage, bucket, "none/") == []


async def test_unicode_and_spaces_in_keys_round_trip(
    storage: ObjectStorage, s3: S3Client, bucket: str
) -> None:
    put_all(s3, bucket, UNUSUAL_KEYS)

    listed = await collect(storage, bucket, "in/", page_size=2)

    assert listed == sorted(UNUSUAL_KEYS)
    # The listed keys are the real ones: reading each back gives the body that names it.
    for key in listed:
        assert await storage.read_small(bucket, key, limit=100) == key.encode()


async def test_start_after_a_unicode_key(storage: ObjectStorage, s3: S3Client, bucket: str) -> None:
    put_all(s3, bucket, UNUSUAL_KEYS)
    ordered = sorted(UNUSUAL_KEYS)

    assert await collect(storage, bucket, "in/", start_after=ordered[2]) == ordered[3:]


@pytest.mark.parametrize("max_keys", [0, -1, 1001])
async def test_max_keys_out_of_range(storage: ObjectStorage, bucket: str, max_keys: int) -> None:
    with pytest.raises(ValueError, match="max_keys"):
        await storage.list_page(bucket, "", max_keys=max_keys)
    with pytest.raises(ValueError, match="page_size"):
        await collect(storage, bucket, "", page_size=max_keys)


async def test_listing_a_missing_bucket(storage: ObjectStorage) -> None:
    bucket = f"missing-{uuid.uuid4().hex[:10]}"

    with pytest.raises(StorageError) as caught:
        await storage.list_page(bucket, "in/")

    assert caught.value.kind == "not_found"
    assert f"s3://{bucket}/in/" in caught.value.message
    assert "NoSuchBucket" in caught.value.message


# --- iter_objects --------------------------------------------------------------------------------


async def test_iter_objects_pages_one_page_at_a_time(
    storage: ObjectStorage, s3: S3Client, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = [f"in/{i:02d}.wav" for i in range(10)]
    put_all(s3, bucket, [*keys, "out/x.wav"])
    calls: list[tuple[str | None, int]] = []
    list_page = storage.list_page

    async def spy(
        bucket: str, prefix: str, *, start_after: str | None = None, max_keys: int = 1000
    ) -> ListPage:
        calls.append((start_after, max_keys))
        return await list_page(bucket, prefix, start_after=start_after, max_keys=max_keys)

    monkeypatch.setattr(storage, "list_page", spy)

    items = [item async for item in storage.iter_objects(bucket, "in/", page_size=4)]

    assert [item.key for item in items] == keys
    assert all(item.size == len(item.key) for item in items)
    assert calls == [(None, 4), ("in/03.wav", 4), ("in/07.wav", 4)]


async def test_iter_objects_pages_lazily(
    storage: ObjectStorage, s3: S3Client, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    put_all(s3, bucket, [f"in/{i:02d}.wav" for i in range(10)])
    calls: list[str | None] = []
    list_page = storage.list_page

    async def spy(
        bucket: str, prefix: str, *, start_after: str | None = None, max_keys: int = 1000
    ) -> ListPage:
        calls.append(start_after)
        return await list_page(bucket, prefix, start_after=start_after, max_keys=max_keys)

    monkeypatch.setattr(storage, "list_page", spy)

    iterator = aiter(storage.iter_objects(bucket, "in/", page_size=3))
    assert (await anext(iterator)).key == "in/00.wav"
    assert calls == [None]


async def test_iter_objects_resumes_after_start_after(
    storage: ObjectStorage, s3: S3Client, bucket: str
) -> None:
    keys = [f"in/{i:02d}.wav" for i in range(10)]
    put_all(s3, bucket, keys)

    assert await collect(storage, bucket, "in/", start_after="in/04.wav", page_size=2) == keys[5:]


async def test_iter_objects_page_size_equal_to_the_count(
    storage: ObjectStorage, s3: S3Client, bucket: str
) -> None:
    keys = [f"in/{i}.wav" for i in range(4)]
    put_all(s3, bucket, keys)

    assert await collect(storage, bucket, "in/", page_size=4) == keys


# --- head_or_none --------------------------------------------------------------------------------


async def test_head_or_none_of_a_present_object(storage: ObjectStorage, s3: S3Client, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="in/a b.wav", Body=b"12345", ContentType="audio/wav")

    head = await storage.head_or_none(bucket, "in/a b.wav")
    assert head is not None and (head.size, head.content_type) == (5, "audio/wav")
    assert head.last_modified is not None


async def test_head_or_none_of_an_absent_object(storage: ObjectStorage, bucket: str) -> None:
    assert await storage.head_or_none(bucket, "in/nope.wav") is None


# --- read_small ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "limit"), [(5, 10), (10, 10), (1, 1)])
async def test_read_small_at_or_under_the_limit(
    storage: ObjectStorage, s3: S3Client, bucket: str, size: int, limit: int
) -> None:
    body = bytes(range(size))
    s3.put_object(Bucket=bucket, Key="config.json", Body=body)

    assert await storage.read_small(bucket, "config.json", limit=limit) == body


@pytest.mark.parametrize(("size", "limit"), [(11, 10), (1_000_000, 10), (1, 0)])
async def test_read_small_over_the_limit(
    storage: ObjectStorage, s3: S3Client, bucket: str, size: int, limit: int
) -> None:
    s3.put_object(Bucket=bucket, Key="batch/config.json", Body=b"x" * size)

    with pytest.raises(StorageError) as caught:
        await storage.read_small(bucket, "batch/config.json", limit=limit)

    assert caught.value.kind == "too_large"
    assert caught.value.transient is False
    assert f"s3://{bucket}/batch/config.json" in caught.value.message
    assert f"limit of {limit} bytes" in caught.value.message
    assert f"({size} bytes)" in caught.value.message


@pytest.mark.parametrize("limit", [0, 10])
async def test_read_small_of_an_empty_object(
    storage: ObjectStorage, s3: S3Client, bucket: str, limit: int
) -> None:
    # S3 answers a Range on an empty object with 416 InvalidRange.
    s3.put_object(Bucket=bucket, Key="done.marker", Body=b"")

    assert await storage.read_small(bucket, "done.marker", limit=limit) == b""


async def test_read_small_of_an_absent_object(storage: ObjectStorage, bucket: str) -> None:
    assert await storage.read_small(bucket, "config.json", limit=10) is None


async def test_read_small_in_a_missing_bucket_raises(storage: ObjectStorage) -> None:
    bucket = f"missing-{uuid.uuid4().hex[:10]}"

    with pytest.raises(StorageError) as caught:
        await storage.read_small(bucket, "config.json", limit=10)

    assert caught.value.kind == "not_found"
    assert "NoSuchBucket" in caught.value.message


async def test_read_small_negative_limit(storage: ObjectStorage, bucket: str) -> None:
    with pytest.raises(ValueError, match="limit"):
        await storage.read_small(bucket, "config.json", limit=-1)


# --- what moto cannot do: stubbed answers --------------------------------------------------------


@pytest.fixture
def stubbed(config: StorageConfig) -> Iterator[tuple[ObjectStorage, Stubber]]:
    """A storage of its own (the shared one keeps talking to moto) whose answers a Stubber gives."""
    storage = ObjectStorage(config, timeout=1.0)
    stubber = Stubber(storage._client)
    with stubber:
        yield storage, stubber
    stubber.assert_no_pending_responses()
    storage.close()


@pytest.mark.parametrize(("code", "status"), [("403", 403), ("AccessDenied", 403)])
async def test_head_or_none_denied_raises(
    stubbed: tuple[ObjectStorage, Stubber], code: str, status: int
) -> None:
    storage, stubber = stubbed
    stubber.add_client_error("head_object", service_error_code=code, http_status_code=status)

    with pytest.raises(StorageError) as caught:
        await storage.head_or_none("calls", "in/a.wav")

    assert caught.value.kind == "denied"
    assert caught.value.transient is False
    assert "s3://calls/in/a.wav" in caught.value.message
    assert SECRET_ACCESS_KEY not in caught.value.message


async def test_head_or_none_unavailable_raises(stubbed: tuple[ObjectStorage, Stubber]) -> None:
    storage, stubber = stubbed
    # A stubbed answer skips botocore's retries: one is enough.
    stubber.add_client_error("head_object", service_error_code="503", http_status_code=503)

    with pytest.raises(StorageError) as caught:
        await storage.head_or_none("calls", "in/a.wav")

    assert caught.value.kind == "unavailable"
    assert caught.value.transient is True


async def test_read_small_denied_raises(stubbed: tuple[ObjectStorage, Stubber]) -> None:
    storage, stubber = stubbed
    stubber.add_client_error("get_object", service_error_code="AccessDenied", http_status_code=403)

    with pytest.raises(StorageError) as caught:
        await storage.read_small("calls", "config.json", limit=10)

    assert caught.value.kind == "denied"
    assert "AccessDenied" in caught.value.message


async def test_list_page_denied_raises(stubbed: tuple[ObjectStorage, Stubber]) -> None:
    storage, stubber = stubbed
    stubber.add_client_error("list_objects_v2", service_error_code="AccessDenied", http_status_code=403)

    with pytest.raises(StorageError) as caught:
        await storage.list_page("calls", "in/")

    assert caught.value.kind == "denied"
    assert "s3://calls/in/" in caught.value.message


class CountingReader(io.BytesIO):
    """A body that records how many bytes were taken from it."""

    taken = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.taken += len(data)
        return data


async def test_read_small_asks_for_limit_plus_one_bytes_and_reads_no_more(
    stubbed: tuple[ObjectStorage, Stubber],
) -> None:
    # A storage that ignores the Range and sends the whole (huge) object: only limit + 1 bytes are read.
    storage, stubber = stubbed
    huge = CountingReader(b"x" * 1_000_000)
    stubber.add_response(
        "get_object",
        {"Body": StreamingBody(huge, 1_000_000), "ContentLength": 1_000_000},
        {"Bucket": "calls", "Key": "config.json", "Range": "bytes=0-9"},
    )

    with pytest.raises(StorageError) as caught:
        await storage.read_small("calls", "config.json", limit=9)

    assert caught.value.kind == "too_large"
    assert huge.taken == 10


async def test_iter_objects_stops_when_the_storage_ignores_start_after(
    stubbed: tuple[ObjectStorage, Stubber],
) -> None:
    storage, stubber = stubbed
    now = datetime.now(UTC)
    page = {
        "Contents": [{"Key": "in/a.wav", "Size": 1, "ETag": '"e"', "LastModified": now}],
        "IsTruncated": True,
    }
    stubber.add_response("list_objects_v2", page, {"Bucket": "calls", "Prefix": "in/", "MaxKeys": 1})
    stubber.add_response(
        "list_objects_v2", page, {"Bucket": "calls", "Prefix": "in/", "MaxKeys": 1, "StartAfter": "in/a.wav"}
    )

    seen: list[str] = []
    with pytest.raises(StorageError) as caught:
        async for item in storage.iter_objects("calls", "in/", page_size=1):
            seen.append(item.key)

    assert seen == ["in/a.wav"]  # not given twice
    assert caught.value.kind == "invalid"
    assert "'in/a.wav'" in caught.value.message
    assert caught.value.transient is False


async def test_iter_objects_stops_on_a_truncated_empty_page(stubbed: tuple[ObjectStorage, Stubber]) -> None:
    storage, stubber = stubbed
    stubber.add_response("list_objects_v2", {"IsTruncated": True}, None)

    with pytest.raises(StorageError) as caught:
        await collect(storage, "calls", "in/")

    assert caught.value.kind == "invalid"
