"""S3-compatible object storage with boto3, kept off the event loop.

Every call runs in a worker thread. boto3 clients are created once per distinct configuration and
shared: they are thread-safe, creating them is not cheap. All of them come from one boto3 Session, so
that botocore's service models and endpoint data are loaded once (a Session of its own costs each
client about 12 MiB), and :class:`StorageFactory` keeps the :data:`MAX_CLIENTS` most recently used,
closing the others: memory stays bounded however many storage Secrets the jobs name.

A failure to connect (refused, timed out, a name that does not resolve, a connection closed) gives one
and the same message whatever its cause, so that the answers do not tell open ports from closed ones.
TLS problems keep their own messages, which say what to configure.

Listing pages with ``StartAfter`` (:meth:`ObjectStorage.list_page`): the last key seen is a cursor that
survives a restart, which a ContinuationToken does not. :meth:`ObjectStorage.read_small` reads files that
must be small (a batch's ``config.json``, marker files) without ever loading a big one whole.

TLS is verified against ``ca_bundle`` (``SPEECHKIT_OPERATOR_CA_BUNDLE``) when one is given, else the
system's trust. Proxies come from HTTPS_PROXY/HTTP_PROXY, and NO_PROXY is honoured: botocore decides
per endpoint (``host`` or ``host:port``) when a client is created.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import boto3
import urllib3.exceptions
from boto3.exceptions import S3UploadFailedError
from botocore.config import Config as BotoConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    ProxyConnectionError,
    SSLError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from speechkit_operator.clients.speech.errors import find_ssl_error, origin_of, tls_problem
from speechkit_operator.models.storage import StorageConfig

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

#: The storage clients a :class:`StorageFactory` keeps; the least recently used beyond are closed.
MAX_CLIENTS = 32

#: The most keys one ``ListObjectsV2`` call returns (S3 caps MaxKeys there).
MAX_LIST_KEYS = 1000

_NOT_FOUND_CODES = {"404", "NoSuchKey", "NoSuchBucket", "NotFound"}
_DENIED_CODES = {"403", "AccessDenied", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch"}
#: Answers that say "try again", not "this request is wrong". 408 and S3's ``RequestTimeout`` (a 400)
#: are a connection too slow for the server; 499 is MinIO's ``ClientDisconnected``, which it answers
#: while it shuts down with requests in flight. AWS's own SDKs retry all of these.
_TRANSIENT_STATUSES = {408, 429, 499}
_TRANSIENT_CODES = {
    "SlowDown",
    "SlowDownRead",
    "SlowDownWrite",
    "ServiceUnavailable",
    "InternalError",
    "RequestTimeout",
    "ClientDisconnected",
    "XMinioServerNotInitialized",
}


@dataclass(frozen=True)
class ObjectHead:
    size: int
    content_type: str | None
    #: When the object was written (timezone-aware), when the storage says.
    last_modified: datetime | None = None


@dataclass(frozen=True)
class ListedObject:
    """One object of a listing. ``etag`` is without the quotes S3 puts around it."""

    key: str
    size: int
    etag: str
    last_modified: datetime


@dataclass(frozen=True)
class ListPage:
    """One ``ListObjectsV2`` answer: objects in key order; ``truncated`` when more follow the last."""

    objects: tuple[ListedObject, ...]
    truncated: bool


class StorageError(Exception):
    """A storage call failed. ``kind`` is ``not_found``, ``denied``, ``invalid``, ``unavailable`` or
    ``too_large`` (:meth:`ObjectStorage.read_small`); only ``unavailable`` is transient."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message

    @property
    def transient(self) -> bool:
        return self.kind == "unavailable"


def _classify(exc: Exception, what: str) -> StorageError:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in _NOT_FOUND_CODES or status == 404:
            return StorageError("not_found", f"{what}: not found ({code or status})")
        if code in _DENIED_CODES or status == 403:
            return StorageError("denied", f"{what}: access denied ({code or status})")
        if status >= 500 or status in _TRANSIENT_STATUSES or code in _TRANSIENT_CODES:
            return StorageError("unavailable", f"{what}: storage unavailable ({code or status})")
        return StorageError("invalid", f"{what}: storage refused the request ({code or status})")
    if isinstance(exc, SSLError):
        # A configuration problem, but one the user fixes without re-creating the job: transient.
        origin = origin_of(str(exc.kwargs.get("endpoint_url", "")))
        return StorageError("unavailable", f"{what}: {tls_problem(origin, find_ssl_error(exc))}")
    if isinstance(exc, ProxyConnectionError):
        # botocore masks the proxy's credentials in proxy_url.
        proxy = origin_of(str(exc.kwargs.get("proxy_url", "")))
        return StorageError(
            "unavailable",
            f"{what}: the proxy {proxy} could not be reached or refused the connection: "
            "check HTTPS_PROXY, HTTP_PROXY and NO_PROXY",
        )
    if isinstance(exc, BotoConnectionError | HTTPClientError | urllib3.exceptions.HTTPError | OSError):
        # One text for every way a connection fails: refused, timed out, not resolved, closed.
        return StorageError("unavailable", f"{what}: {_UNREACHABLE}")
    return StorageError("unavailable", f"{what}: storage call failed ({type(exc).__name__})")


def _is_absent_key(exc: ClientError) -> bool:
    """Whether a GET failed because the key does not exist (a missing bucket is not that)."""
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code in {"NoSuchKey", "404", "NotFound"} or (status == 404 and code != "NoSuchBucket")


def _is_invalid_range(exc: ClientError) -> bool:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code == "InvalidRange" or status == 416


def _check_list_size(name: str, value: int) -> None:
    if not 1 <= value <= MAX_LIST_KEYS:
        raise ValueError(f"{name} must be between 1 and {MAX_LIST_KEYS}, got {value}")


_UNREACHABLE = (
    "storage unreachable: the connection to the endpoint failed (refused, timed out, not resolved or "
    "closed); check the storage Secret's endpoint and the network"
)

_session: boto3.session.Session | None = None
_session_lock = threading.Lock()


def _client(**kwargs: Any) -> S3Client:
    """An S3 client from the one Session of the process (creating clients from a Session is not
    thread-safe, hence the lock)."""
    global _session  # noqa: PLW0603 - one Session per process is the point
    with _session_lock:
        if _session is None:
            _session = boto3.session.Session()
        client: S3Client = _session.client("s3", **kwargs)
        return client


class ObjectStorage:
    """One S3 endpoint with one set of keys; TLS verified with ``ca_bundle`` (a PEM file) if given."""

    def __init__(
        self,
        config: StorageConfig,
        *,
        timeout: float = 30.0,
        ca_bundle: str | os.PathLike[str] | None = None,
    ) -> None:
        self.config = config
        self._client: S3Client = _client(
            endpoint_url=config.endpoint,
            region_name=config.region,
            aws_access_key_id=config.access_key_id,
            aws_secret_access_key=config.secret_access_key,
            # None keeps botocore's default: the system's trust (or AWS_CA_BUNDLE).
            verify=os.fspath(ca_bundle) if ca_bundle is not None else None,
            config=BotoConfig(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                connect_timeout=timeout,
                read_timeout=timeout,
                retries={"max_attempts": 3, "mode": "standard"},
            ),
        )

    def close(self) -> None:
        """Close the client's pooled connections."""
        self._client.close()

    async def _run(self, what: str, fn: Any, /, **kwargs: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, **kwargs)
        except (ClientError, BotoCoreError, urllib3.exceptions.HTTPError, OSError) as exc:
            raise _classify(exc, what) from None

    async def head(self, bucket: str, key: str) -> ObjectHead:
        answer = await self._run(f"s3://{bucket}/{key}", self._client.head_object, Bucket=bucket, Key=key)
        modified = answer.get("LastModified")
        return ObjectHead(
            size=int(answer.get("ContentLength", 0)),
            content_type=answer.get("ContentType"),
            last_modified=modified if isinstance(modified, datetime) else None,
        )

    async def read_range(self, bucket: str, key: str, byte_range: str) -> bytes:
        """``byte_range`` as in HTTP: ``bytes=0-65535`` or ``bytes=-65536`` (the last bytes)."""

        def read() -> bytes:
            body = self._client.get_object(Bucket=bucket, Key=key, Range=byte_range)["Body"]
            try:
                data: bytes = body.read()
            finally:
                body.close()
            return data

        # Reading the body is part of the call: a connection that breaks then is classified too.
        data: bytes = await self._run(f"s3://{bucket}/{key}", read)
        return data

    async def put(self, bucket: str, key: str, body: bytes, content_type: str) -> None:
        await self._run(
            f"s3://{bucket}/{key}",
            self._client.put_object,
            Bucket=bucket,
            Key=key,
            Body=body,
            ContentType=content_type,
        )

    async def upload_file(
        self, bucket: str, key: str, path: str | os.PathLike[str], content_type: str
    ) -> None:
        """Upload a local file, in parts when it is large (never read into memory whole)."""
        what = f"s3://{bucket}/{key}"
        try:
            await self._run(
                what,
                self._client.upload_file,
                Filename=os.fspath(path),
                Bucket=bucket,
                Key=key,
                ExtraArgs={"ContentType": content_type},
            )
        except S3UploadFailedError as exc:
            # boto3's transfer manager wraps the ClientError in its message only.
            kind = "not_found" if "NoSuchBucket" in str(exc) else "unavailable"
            raise StorageError(kind, f"{what}: upload failed ({type(exc).__name__})") from None

    async def delete(self, bucket: str, key: str) -> None:
        """Delete the object; one that does not exist is fine (S3 answers 204 either way)."""
        await self._run(f"s3://{bucket}/{key}", self._client.delete_object, Bucket=bucket, Key=key)

    async def head_or_none(self, bucket: str, key: str) -> ObjectHead | None:
        """The object's head, or None when it does not exist.

        Only a 404 means absent; every other failure raises :class:`StorageError`: a 403 above all,
        so that keys without the right to read never pass for a missing object. A HEAD answer has no
        body, so a missing bucket is a 404 too and gives None as well. On AWS, keys that may not list
        the bucket get a 403 for a missing object: that raises (``denied``).
        """
        try:
            return await self.head(bucket, key)
        except StorageError as exc:
            if exc.kind == "not_found":
                return None
            raise

    async def read_small(self, bucket: str, key: str, *, limit: int) -> bytes | None:
        """The whole object when it has at most ``limit`` bytes; None when it does not exist.

        Asks for the first ``limit + 1`` bytes only (and reads no more even from a server that
        ignores the Range), so a huge object is never loaded: one above ``limit`` raises a
        :class:`StorageError` of kind ``too_large``. A missing bucket raises (``not_found``).
        """
        if limit < 0:
            raise ValueError(f"limit must not be negative, got {limit}")
        what = f"s3://{bucket}/{key}"

        def read() -> tuple[bytes | None, str]:
            try:
                answer = self._client.get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{limit}")
            except ClientError as exc:
                if _is_invalid_range(exc):
                    # ``bytes=0-N`` is unsatisfiable only for an empty object.
                    return b"", ""
                if _is_absent_key(exc):
                    return None, ""
                raise
            body = answer["Body"]
            try:
                data: bytes = body.read(limit + 1)
            finally:
                body.close()
            return data, str(answer.get("ContentRange") or "")

        # Reading the body is part of the call: a connection that breaks then is classified too.
        data, content_range = await self._run(what, read)
        if data is not None and len(data) > limit:
            # ``bytes 0-{limit}/{size}``: the size, when the storage says it.
            size = content_range.rpartition("/")[2]
            has = f" ({size} bytes)" if size.isdigit() else ""
            raise StorageError(
                "too_large", f"{what}: the object{has} is larger than the limit of {limit} bytes"
            )
        result: bytes | None = data
        return result

    async def list_page(
        self, bucket: str, prefix: str, *, start_after: str | None = None, max_keys: int = MAX_LIST_KEYS
    ) -> ListPage:
        """One ``ListObjectsV2`` call: at most ``max_keys`` (1 to 1000) objects under ``prefix``, in key
        order, those after ``start_after`` when given.

        Page on by passing the last key of a page as ``start_after``: unlike a ContinuationToken, that
        cursor can be stored and still works after a restart.
        """
        _check_list_size("max_keys", max_keys)
        params: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": max_keys}
        if start_after is not None:
            params["StartAfter"] = start_after
        # boto3 asks for URL-encoded keys and decodes them: any key survives the XML answer.
        answer = await self._run(f"s3://{bucket}/{prefix}", self._client.list_objects_v2, **params)
        objects = tuple(
            ListedObject(
                key=item["Key"],
                size=int(item.get("Size", 0)),
                etag=str(item.get("ETag", "")).strip('"'),
                last_modified=item["LastModified"],
            )
            for item in answer.get("Contents", [])
        )
        return ListPage(objects=objects, truncated=bool(answer.get("IsTruncated", False)))

    async def iter_objects(
        self,
        bucket: str,
        prefix: str,
        *,
        start_after: str | None = None,
        page_size: int = MAX_LIST_KEYS,
    ) -> AsyncIterator[ListedObject]:
        """Every object under ``prefix`` (after ``start_after`` when given), in key order, one page of
        at most ``page_size`` objects in memory at a time.

        A storage whose pages do not move past the cursor (one that ignores ``StartAfter``, or says
        more follow an empty page) raises a :class:`StorageError` (``invalid``) rather than giving the
        same objects again or listing for ever.
        """
        _check_list_size("page_size", page_size)
        cursor = start_after
        while True:
            page = await self.list_page(bucket, prefix, start_after=cursor, max_keys=page_size)
            stuck = page.truncated and not page.objects
            if stuck or (cursor is not None and page.objects and page.objects[0].key <= cursor):
                raise StorageError(
                    "invalid",
                    f"s3://{bucket}/{prefix}: the storage's listing does not move past "
                    f"{'the start' if cursor is None else repr(cursor)} (StartAfter unsupported?)",
                )
            for item in page.objects:
                yield item
            if not page.truncated:
                return
            cursor = page.objects[-1].key

    def object_url(self, bucket: str, key: str, *, presign: bool, expires_in: int) -> str:
        """The HTTPS URL that SpeechKit fetches. A presigned URL is a credential: never log it."""
        if presign:
            url: str = self._client.generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires_in
            )
            return url
        return f"{self.config.endpoint}/{bucket}/{quote(key)}"


class StorageFactory:
    """Shares one :class:`ObjectStorage` per configuration; all of them trust ``ca_bundle`` if given.

    At most ``max_clients`` are kept: asking for another closes the least recently used one (a step
    still using it reconnects; asking for its configuration again makes a new one).
    """

    def __init__(
        self,
        *,
        timeout: float = 30.0,
        ca_bundle: str | os.PathLike[str] | None = None,
        max_clients: int = MAX_CLIENTS,
    ) -> None:
        if max_clients < 1:
            raise ValueError("max_clients must be at least 1")
        self._timeout = timeout
        self._ca_bundle = ca_bundle
        self._max_clients = max_clients
        self._lock = threading.Lock()
        self._cache: OrderedDict[StorageConfig, ObjectStorage] = OrderedDict()

    def __len__(self) -> int:
        """How many storages are kept now."""
        return len(self._cache)

    def close(self) -> None:
        """Close every storage made so far (they are made again when asked for)."""
        with self._lock:
            made, self._cache = list(self._cache.values()), OrderedDict()
        for storage in made:
            storage.close()

    def get(self, config: StorageConfig) -> ObjectStorage:
        evicted: list[ObjectStorage] = []
        with self._lock:
            storage = self._cache.get(config)
            if storage is not None:
                self._cache.move_to_end(config)
                return storage
            if self._ca_bundle is None:
                storage = ObjectStorage(config, timeout=self._timeout)
            else:
                storage = ObjectStorage(config, timeout=self._timeout, ca_bundle=self._ca_bundle)
            self._cache[config] = storage
            while len(self._cache) > self._max_clients:
                evicted.append(self._cache.popitem(last=False)[1])
        for old in evicted:
            old.close()
        return storage
