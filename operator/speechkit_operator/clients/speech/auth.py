"""Authorization header values for SpeechKit, from any of the three kinds of credentials.

- :class:`ApiKeyCredentials` give ``Api-Key <key>``.
- :class:`IamTokenCredentials` give ``Bearer <token>``.
- :class:`ServiceAccountKeyCredentials` (an authorized key) are exchanged for an IAM token: a PS256 JWT
  signed with the key is POSTed to the IAM token URL. Tokens are cached per key until shortly before
  they expire, and callers that need the same token at the same time share one exchange.

``folder_id`` is not part of authorization for v2: the client puts it into ``config.folderId``.

:func:`send_request` (one HTTP exchange, shared with the v2 client) uses the proxy that
HTTPS_PROXY/HTTP_PROXY/NO_PROXY name and an optional CA bundle (:func:`load_ca_bundle`).

Nothing here logs or puts into an exception message a key, a JWT or a token.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import os
import ssl
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from yarl import URL

from speechkit_operator.clients.speech.errors import (
    CA_BUNDLE_SETTING,
    CredentialsError,
    MalformedResponseError,
    SpeechApiError,
    TlsError,
    api_error_from_body,
    find_ssl_error,
    is_certificate_error,
    origin_of,
    parse_retry_after,
    tls_problem,
)
from speechkit_operator.models.credentials import (
    AnonymousCredentials,
    ApiKeyCredentials,
    Credentials,
    IamTokenCredentials,
    ServiceAccountKeyCredentials,
)

logger = logging.getLogger(__name__)

#: The ``aud`` claim IAM expects, whatever URL the exchange is actually sent to.
IAM_JWT_AUDIENCE = "https://iam.api.cloud.yandex.net/iam/v1/tokens"
#: IAM refuses JWTs whose ``exp - iat`` exceeds an hour.
MAX_JWT_LIFETIME = 3600

_PEM_BEGIN = "-----BEGIN"


# --- JWT ----------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def load_private_key(pem: str) -> RSAPrivateKey:
    """The RSA key of an authorized key's ``private_key``.

    Yandex puts a line ``PLEASE DO NOT REMOVE THIS LINE! ...`` before the PEM block; anything before
    ``-----BEGIN`` is ignored. Raises :class:`CredentialsError` (with no key material in its message).
    Loaded keys are cached: loading validates the RSA key, which takes tens of milliseconds.
    """
    start = pem.find(_PEM_BEGIN)
    if start < 0:
        raise CredentialsError("the service account key holds no PEM private key")
    try:
        key = serialization.load_pem_private_key(pem[start:].encode("utf-8"), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise CredentialsError("the service account private key could not be loaded") from None
    if not isinstance(key, RSAPrivateKey):
        raise CredentialsError("the service account private key is not an RSA key")
    return key


def build_jwt(
    credentials: ServiceAccountKeyCredentials,
    now: float | None = None,
    *,
    lifetime: int = MAX_JWT_LIFETIME,
) -> str:
    """A PS256 JWT that IAM exchanges for a token of ``credentials``' service account.

    Header ``{"typ": "JWT", "alg": "PS256", "kid": key_id}``; claims ``iss`` (the service account),
    ``aud`` (:data:`IAM_JWT_AUDIENCE`), ``iat`` (``now``, default the current time) and
    ``exp = iat + lifetime`` with the lifetime capped at :data:`MAX_JWT_LIFETIME`.
    """
    if not credentials.key_id or not credentials.service_account_id:
        raise CredentialsError("the service account key lacks its key id or service account id")
    issued_at = int(time.time() if now is None else now)
    lifetime = max(1, min(lifetime, MAX_JWT_LIFETIME))
    claims = {
        "iss": credentials.service_account_id,
        "aud": IAM_JWT_AUDIENCE,
        "iat": issued_at,
        "exp": issued_at + lifetime,
    }
    key = load_private_key(credentials.private_key)
    return jwt.encode(
        claims,
        key,
        algorithm="PS256",
        headers={"typ": "JWT", "alg": "PS256", "kid": credentials.key_id},
    )


# --- One HTTP exchange (shared with the v2 client) -------------------------------------------------


#: The largest answer read: a finished operation of 4 hours of speech is a few MiB.
MAX_BODY_BYTES = 256 * 1024 * 1024
_READ_CHUNK = 64 * 1024


@dataclass(frozen=True)
class RawResponse:
    status: int
    body: bytes
    retry_after: float | None


def load_ca_bundle(path: str | os.PathLike[str] | None) -> ssl.SSLContext | None:
    """A client SSL context that trusts exactly the CA certificates of the PEM file ``path``
    (None: None, and aiohttp uses the system's trust). Raises ValueError saying what is wrong."""
    if path is None:
        return None
    try:
        return ssl.create_default_context(cafile=os.fspath(path))
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        detail = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or type(exc).__name__
        raise ValueError(
            f"{CA_BUNDLE_SETTING}={os.fspath(path)} is not a readable PEM file of CA certificates ({detail})"
        ) from None


def proxy_for(url: str) -> URL | None:
    """The proxy for ``url`` from the environment (with its credentials, if it has any), or None.

    ``HTTPS_PROXY`` / ``HTTP_PROXY`` (or their lowercase forms) by the URL's scheme, unless
    ``NO_PROXY`` names the host (or ``host:port``), read at each call with urllib's rules: the choice
    aiohttp's ``trust_env=True`` makes (https URLs are then tunnelled with CONNECT, and credentials
    in the proxy's URL become its Proxy-Authorization). It is made here because ``trust_env`` would
    also send ``~/.netrc`` credentials to SpeechKit and IAM, and refuse our own Authorization header
    for a host that ``~/.netrc`` names.
    """
    parts = urlsplit(url)
    if not parts.hostname:
        return None
    proxy = urllib.request.getproxies().get(parts.scheme)
    if not proxy:
        return None
    netloc = parts.netloc.rpartition("@")[2]
    if urllib.request.proxy_bypass(netloc) or urllib.request.proxy_bypass(parts.hostname):
        return None
    return URL(proxy if "://" in proxy else f"http://{proxy}")


async def send_request(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    what: str,
    time_limit: float,
    json_body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    clock: Callable[[], float] = time.time,
    ssl_context: ssl.SSLContext | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    on_chunk: Callable[[bytes], None] | None = None,
) -> RawResponse:
    """One request, no retries. Transport failures become transient :class:`SpeechApiError` s.

    Goes through the environment's proxy (:func:`proxy_for`) and verifies TLS with ``ssl_context``
    (None: the system's trust). A TLS failure is a :class:`TlsError` whose message says what to fix.
    Redirects are not followed (they would carry the Authorization header elsewhere). Exceptions
    from aiohttp are not chained: some of them carry the request headers.

    An answer larger than ``max_body_bytes`` is a :class:`MalformedResponseError` (a proxy's endless
    page must not exhaust memory). With ``on_chunk``, the body of a 2xx answer is handed over chunk by
    chunk as it arrives instead of being kept (the returned body is then empty); the limit still holds.
    """
    try:
        async with session.request(
            method,
            url,
            json=json_body,
            headers={"Accept": "application/json", **(headers or {})},
            timeout=aiohttp.ClientTimeout(total=time_limit),
            allow_redirects=False,
            ssl=ssl_context if ssl_context is not None else True,
            proxy=proxy_for(url),
        ) as response:
            stream = on_chunk if on_chunk is not None and 200 <= response.status < 300 else None
            body = await _read_body(response, what, max_body_bytes, stream)
            retry_after = parse_retry_after(response.headers.get("Retry-After"), clock())
            return RawResponse(status=response.status, body=body, retry_after=retry_after)
    except TimeoutError:
        raise SpeechApiError(f"{what}: no answer within {time_limit:g}s") from None
    except aiohttp.ClientConnectorCertificateError as exc:
        problem = tls_problem(origin_of(url), exc.certificate_error)
        raise TlsError(f"{what}: {problem}", certificate=True) from None
    except (aiohttp.ClientSSLError, ssl.SSLError) as exc:
        error = find_ssl_error(exc)
        problem = tls_problem(origin_of(url), error)
        raise TlsError(f"{what}: {problem}", certificate=is_certificate_error(error)) from None
    except aiohttp.ClientProxyConnectionError as exc:
        raise SpeechApiError(
            f"{what}: the proxy {exc.host}:{exc.port} could not be reached ({type(exc).__name__}): "
            "check HTTPS_PROXY, HTTP_PROXY and NO_PROXY",
            unsent=True,
        ) from None
    except aiohttp.ClientHttpProxyError as exc:
        raise SpeechApiError(
            f"{what}: the proxy refused to connect to {origin_of(url)} (HTTP {exc.status}): "
            "check the proxy's rules, or NO_PROXY",
            unsent=True,
        ) from None
    except aiohttp.ClientConnectorError as exc:  # no connection: the request was never sent
        raise SpeechApiError(f"{what}: connection failed ({type(exc).__name__})", unsent=True) from None
    except aiohttp.ClientError as exc:
        raise SpeechApiError(f"{what}: connection failed ({type(exc).__name__})") from None


async def _read_body(
    response: aiohttp.ClientResponse, what: str, limit: int, on_chunk: Callable[[bytes], None] | None
) -> bytes:
    kept: list[bytes] = []
    total = 0
    async for chunk in response.content.iter_chunked(_READ_CHUNK):
        total += len(chunk)
        if total > limit:
            raise MalformedResponseError(
                f"{what}: the answer is larger than {limit // (1024 * 1024)} MiB", http_status=response.status
            )
        if on_chunk is not None:
            on_chunk(chunk)
        else:
            kept.append(chunk)
    return b"".join(kept)


def json_object(raw: RawResponse, what: str) -> dict[str, Any]:
    """The JSON object of a 2xx answer, or :class:`MalformedResponseError`."""
    try:
        parsed: object = json.loads(raw.body.decode("utf-8", errors="replace"))
    except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser goes
        parsed = None
    if not isinstance(parsed, dict):
        raise MalformedResponseError(f"{what}: the answer is not a JSON object", http_status=raw.status)
    return parsed


# --- Tokens -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IamToken:
    value: str
    expires_at: float  # epoch seconds
    refresh_at: float  # epoch seconds; after this a new token is fetched


_CacheKey = tuple[str, str, str]

SessionSource = aiohttp.ClientSession | Callable[[], aiohttp.ClientSession]


def _cache_key(credentials: ServiceAccountKeyCredentials) -> _CacheKey:
    digest = hashlib.sha256(credentials.private_key.encode("utf-8")).hexdigest()
    return (credentials.key_id, credentials.service_account_id, digest)


def _parse_timestamp(value: object) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    if when.tzinfo is None:
        return None
    return when.timestamp()


def _static_secret(value: str, kind: str) -> str:
    value = value.strip()
    if not value:
        raise CredentialsError(f"the {kind} is empty")
    if any(ch in value for ch in "\r\n\0"):
        raise CredentialsError(f"the {kind} contains line breaks")
    return value


class SpeechAuthenticator:
    """Authorization header values for credentials, with a cache of service-account IAM tokens.

    ``session`` is an :class:`aiohttp.ClientSession` or a callable returning one (called only when a
    token is exchanged); ``ssl_context`` verifies the IAM endpoint (None: the system's trust). A token
    is refreshed ``min(refresh_margin, 10% of its lifetime)`` before it expires, and at the latest
    ``max_token_age`` seconds after it was obtained (IAM advises hourly). If a refresh fails
    transiently while the old token is still valid, the old token is used.
    """

    def __init__(
        self,
        iam_token_url: str,
        session: SessionSource,
        *,
        timeout: float = 30.0,
        clock: Callable[[], float] = time.time,
        refresh_margin: float = 300.0,
        max_token_age: float | None = 3600.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._url = iam_token_url
        self._ssl_context = ssl_context
        self._session = session
        self._timeout = timeout
        self._clock = clock
        self._refresh_margin = refresh_margin
        self._max_token_age = max_token_age
        self._cache: dict[_CacheKey, IamToken] = {}
        self._inflight: dict[_CacheKey, asyncio.Task[IamToken]] = {}

    async def authorization(self, credentials: Credentials) -> str | None:
        """The value of the ``Authorization`` header for ``credentials`` (None: send none)."""
        if isinstance(credentials, AnonymousCredentials):
            return None
        if isinstance(credentials, ApiKeyCredentials):
            return f"Api-Key {_static_secret(credentials.api_key, 'API key')}"
        if isinstance(credentials, IamTokenCredentials):
            return f"Bearer {_static_secret(credentials.iam_token, 'IAM token')}"
        return f"Bearer {await self.iam_token(credentials)}"

    def secrets_of(self, credentials: Credentials) -> Iterable[str]:
        """Strings that must never appear in a message about calls made with ``credentials``."""
        if isinstance(credentials, ApiKeyCredentials):
            return (credentials.api_key,)
        if isinstance(credentials, IamTokenCredentials):
            return (credentials.iam_token,)
        if isinstance(credentials, AnonymousCredentials):
            return ()
        cached = self._cache.get(_cache_key(credentials))
        return (credentials.private_key,) + ((cached.value,) if cached else ())

    def invalidate(self, credentials: Credentials, authorization: str | None = None) -> bool:
        """Forget the cached token of service-account ``credentials``; True if one was dropped.

        With ``authorization`` (the header value that was refused), the cache is dropped only if it
        still holds that token, so that many callers refused at once cause one new exchange, not many.
        """
        if not isinstance(credentials, ServiceAccountKeyCredentials):
            return False
        key = _cache_key(credentials)
        cached = self._cache.get(key)
        if cached is None:
            return False
        if authorization is not None and authorization != f"Bearer {cached.value}":
            return False
        del self._cache[key]
        return True

    async def iam_token(self, credentials: ServiceAccountKeyCredentials) -> str:
        """An IAM token for the service account, from the cache or from one shared exchange."""
        key = _cache_key(credentials)
        cached = self._cache.get(key)
        if cached is not None and self._clock() < cached.refresh_at:
            return cached.value
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.create_task(self._refresh(credentials, key))
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._forget_inflight(key, done))
        # Shielded: a cancelled caller must not cancel the exchange the others are waiting for.
        token = await asyncio.shield(task)
        return token.value

    def _forget_inflight(self, key: _CacheKey, task: asyncio.Task[IamToken]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved here so that no waiter-less failure is reported as lost

    async def _refresh(self, credentials: ServiceAccountKeyCredentials, key: _CacheKey) -> IamToken:
        try:
            token = await self._exchange(credentials)
        except SpeechApiError as exc:
            stale = self._cache.get(key)
            if exc.transient and stale is not None and self._clock() < stale.expires_at - 30.0:
                logger.warning("IAM token refresh failed (%s); using the current token until it expires", exc)
                return stale
            raise
        self._cache[key] = token
        return token

    async def _exchange(self, credentials: ServiceAccountKeyCredentials) -> IamToken:
        what = "IAM token exchange"
        now = self._clock()
        signed = build_jwt(credentials, now)
        session = self._session if isinstance(self._session, aiohttp.ClientSession) else self._session()
        raw = await send_request(
            session,
            "POST",
            self._url,
            what=what,
            time_limit=self._timeout,
            json_body={"jwt": signed},
            clock=self._clock,
            ssl_context=self._ssl_context,
        )
        if not 200 <= raw.status < 300:
            raise api_error_from_body(
                what,
                raw.status,
                raw.body,
                retry_after=raw.retry_after,
                secrets=(signed, credentials.private_key),
            )
        data = json_object(raw, what)
        value = data.get("iamToken")
        if not isinstance(value, str) or not value.strip():
            raise MalformedResponseError(f"{what}: the answer holds no iamToken", http_status=raw.status)
        obtained = self._clock()
        expires_at = _parse_timestamp(data.get("expiresAt"))
        if expires_at is None or expires_at <= obtained:
            # Unknown, or already past by our clock (skew): assume the shortest sensible life.
            logger.warning("IAM token exchange: expiresAt missing or in the past; assuming one hour")
            expires_at = obtained + 3600.0
        lifetime = expires_at - obtained
        refresh_at = expires_at - min(self._refresh_margin, 0.1 * lifetime)
        if self._max_token_age is not None:
            refresh_at = min(refresh_at, obtained + self._max_token_age)
        return IamToken(value=value.strip(), expires_at=expires_at, refresh_at=refresh_at)
