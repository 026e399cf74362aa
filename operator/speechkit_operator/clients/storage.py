"""S3-compatible object storage with boto3, kept off the event loop.

Every call runs in a worker thread. boto3 clients are created once per distinct configuration and
shared: they are thread-safe, creating them is not cheap. All of them come from one boto3 Session, so
that botocore's service models and endpoint data are loaded once (a Session of its own costs each
client about 12 MiB), and :class:`StorageFactory` keeps the :data:`MAX_CLIENTS` most recently used,
closing the others: memory stays bounded however many storage Secrets the jobs name.

A failure to connect (refused, timed out, a name that does not resolve, a connection closed) gives one
and the same message whatever its cause, so that the answers do not tell open ports from closed ones.
TLS problems keep their own messages, which say what to configure.

TLS is verified against ``ca_bundle`` (``SPEECHKIT_OPERATOR_CA_BUNDLE``) when one is given, else the
system's trust. Proxies come from HTTPS_PROXY/HTTP_PROXY, and NO_PROXY is honoured: botocore decides
per endpoint (``host`` or ``host:port``) when a client is created.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import boto3
import urllib3.exceptions
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

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

#: The storage clients a :class:`StorageFactory` keeps; the least recently used beyond are closed.
MAX_CLIENTS = 32

_NOT_FOUND_CODES = {"404", "NoSuchKey", "NoSuchBucket", "NotFound"}
_DENIED_CODES = {"403", "AccessDenied", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch"}


@dataclass(frozen=True)
class StorageConfig:
    endpoint: str
    region: str
    access_key_id: str
    secret_access_key: str = field(repr=False)


@dataclass(frozen=True)
class ObjectHead:
    size: int
    content_type: str | None


class StorageError(Exception):
    """A storage call failed. ``kind`` is ``not_found``, ``denied``, ``invalid`` or ``unavailable``."""

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
        if status >= 500 or status == 429 or code in {"SlowDown", "ServiceUnavailable", "InternalError"}:
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
        return ObjectHead(size=int(answer.get("ContentLength", 0)), content_type=answer.get("ContentType"))

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
