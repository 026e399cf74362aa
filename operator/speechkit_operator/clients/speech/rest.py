"""What the speech API clients share: a session, authorization, retries, and the Operation API.

:class:`SpeechKitRestClient` makes one API call with retries (:meth:`SpeechKitRestClient._call`):
transient failures (connection errors, timeouts, 429, 5xx) are retried with a :class:`RetryPolicy` and
then raised as transient :class:`SpeechApiError` s (``retry_after`` set when the server named one);
other HTTP errors are permanent, a 404 can be a given error class. A TLS failure (:class:`TlsError`) is
transient for the job but not repeated within a call. Requests go through the proxy that
HTTPS_PROXY/HTTP_PROXY/NO_PROXY name and verify TLS with the CA bundle given or the system's trust,
both for SpeechKit and for the IAM token exchange.

The Operation API (``GET /operations/{id}``, ``…:cancel``) is the same for v2 and v3 and lives here too.

Messages never hold the Authorization header, keys, tokens, JWTs or audio URIs, which may be presigned.
Request bodies are never logged.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import aiohttp

from speechkit_operator.clients.retry import RetryPolicy, with_retries
from speechkit_operator.clients.speech.auth import (
    MAX_BODY_BYTES,
    RawResponse,
    SpeechAuthenticator,
    json_object,
    load_ca_bundle,
    send_request,
)
from speechkit_operator.clients.speech.errors import (
    MalformedResponseError,
    OperationNotFoundError,
    SpeechApiError,
    TlsError,
    api_error_from_body,
    scrub,
)
from speechkit_operator.config import Settings
from speechkit_operator.contracts.operation import CANCEL_SUFFIX, OPERATIONS_PATH
from speechkit_operator.models.credentials import Credentials, ServiceAccountKeyCredentials

logger = logging.getLogger(__name__)


def is_retried(exc: Exception) -> bool:
    """Whether a call that failed with ``exc`` is repeated within the call."""
    # Malformed answers are not repeated inside one call: a submit could then be made twice.
    # TLS failures are configuration: repeating the handshake at once cannot help.
    return (
        isinstance(exc, SpeechApiError)
        and exc.transient
        and not isinstance(exc, MalformedResponseError | TlsError)
    )


def is_retried_submit(exc: Exception) -> bool:
    """A submission is repeated within the call only when the server surely did not act on it."""
    return is_retried(exc) and isinstance(exc, SpeechApiError) and exc.certainly_unprocessed


def never(exc: Exception) -> bool:
    del exc
    return False


def _retry_after_of(exc: Exception) -> float | None:
    return exc.retry_after if isinstance(exc, SpeechApiError) else None


def settings_options(settings: Settings) -> dict[str, Any]:
    """What every speech client takes from the settings besides its URLs: the timeout, retries and CA
    bundle; 429s are not repeated inside a call (the operator's quota budgets pace the calls)."""
    return {
        "timeout": settings.http_timeout,
        "retry_policy": RetryPolicy.from_settings(settings),
        "ca_bundle": settings.ca_bundle,
        "retry_throttled": False,
    }


def credential_secrets(credentials: Credentials) -> tuple[str, ...]:
    """The secret values in ``credentials``, to be scrubbed from anything the API says."""
    values = (
        getattr(credentials, "api_key", None),
        getattr(credentials, "iam_token", None),
        getattr(credentials, "private_key", None),
    )
    return tuple(value for value in values if isinstance(value, str) and value)


def uri_secrets(uri: str) -> tuple[str, ...]:
    """An audio URI and its part before the query: neither may appear in a message."""
    base = uri.split("?", 1)[0]
    return (uri, base) if base != uri else (uri,)


class SpeechKitRestClient:
    """The plumbing of a SpeechKit REST client and the Operation API at ``operation_url``.

    ``session`` is used as given and never closed here; without one, a session is created on first
    use and closed by :meth:`close`. ``ca_bundle`` is a PEM file of the CAs trusted for SpeechKit and
    IAM instead of the system's (loaded here: a bad file raises ValueError at once). Proxies come
    from the environment at each request. ``sleep`` and ``clock`` are injectable for tests.
    """

    def __init__(
        self,
        operation_url: str,
        iam_token_url: str,
        *,
        timeout: float = 30.0,
        retry_policy: RetryPolicy | None = None,
        session: aiohttp.ClientSession | None = None,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        clock: Callable[[], float] = time.time,
        ca_bundle: str | os.PathLike[str] | None = None,
        retry_throttled: bool = True,
    ) -> None:
        self._ssl_context = load_ca_bundle(ca_bundle)
        #: Repeat a call answered 429 within the call. Off when the operator's quota budgets pace
        #: the calls: a 429 then goes back to the budget, which slows down, instead of being hammered.
        self._retry_throttled = retry_throttled
        self._operations_url = str(operation_url).rstrip("/") + OPERATIONS_PATH
        self._timeout = timeout
        self._policy = retry_policy if retry_policy is not None else RetryPolicy()
        self._session = session
        self._owns_session = session is None
        self._closed = False
        self._sleep = sleep
        self._clock = clock
        self.auth = SpeechAuthenticator(
            str(iam_token_url),
            self._get_session,
            timeout=timeout,
            clock=clock,
            ssl_context=self._ssl_context,
        )

    # --- The Operation API ----------------------------------------------------------------------

    async def operation_body(self, operation_id: str, credentials: Credentials) -> dict[str, Any]:
        """The Operation ``GET /operations/{id}`` answers; :class:`OperationNotFoundError` for a 404."""
        if not operation_id:
            raise ValueError("operation_id must not be empty")
        what = f"SpeechKit operation {scrub(operation_id)}"
        url = self._operations_url + quote(operation_id, safe="")
        raw = await self._call(
            what,
            "GET",
            url,
            credentials,
            not_found=OperationNotFoundError,
            retried=self._unless_throttled(is_retried),
        )
        return json_object(raw, what)

    async def cancel(self, operation_id: str, credentials: Credentials) -> None:
        """Ask for the operation to be cancelled (``GET /operations/{id}:cancel``), once, no retries."""
        if not operation_id:
            raise ValueError("operation_id must not be empty")
        what = f"cancelling SpeechKit operation {scrub(operation_id)}"
        url = self._operations_url + quote(operation_id, safe="") + CANCEL_SUFFIX
        await self._call(what, "GET", url, credentials, not_found=OperationNotFoundError, retried=never)

    # --- Lifecycle ------------------------------------------------------------------------------

    async def close(self) -> None:
        self._closed = True
        if self._owns_session and self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- Plumbing -------------------------------------------------------------------------------

    def _unless_throttled(self, retried: Callable[[Exception], bool]) -> Callable[[Exception], bool]:
        if self._retry_throttled:
            return retried

        def retried_unless_throttled(exc: Exception) -> bool:
            return retried(exc) and not (isinstance(exc, SpeechApiError) and exc.http_status == 429)

        return retried_unless_throttled

    def _get_session(self) -> aiohttp.ClientSession:
        if self._closed:
            # A call that outlives close() (a handler still running at shutdown) must not open a
            # session that nobody would close.
            raise SpeechApiError("the SpeechKit client is closed: the operator is shutting down", unsent=True)
        if self._session is None or (self._owns_session and self._session.closed):
            # No trust_env: send_request picks the environment's proxy itself, without ~/.netrc.
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._timeout))
            self._owns_session = True
        return self._session

    async def _call(
        self,
        what: str,
        method: str,
        url: str,
        credentials: Credentials,
        *,
        json_body: dict[str, Any] | None = None,
        secrets: Iterable[str] = (),
        not_found: type[SpeechApiError] | None = None,
        retried: Callable[[Exception], bool] = is_retried,
        headers: Mapping[str, str] | None = None,
        on_chunk: Callable[[bytes], None] | None = None,
        start_body: Callable[[], None] | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> RawResponse:
        """One API call with retries; returns a 2xx answer or raises :class:`SpeechApiError`.

        ``headers`` are sent besides Authorization. With ``on_chunk`` a 2xx body is handed over as it
        arrives (see :func:`send_request`); ``start_body`` is called before each attempt, so that a
        consumer can start over when an attempt broke off in the middle of the body."""
        extra_secrets = tuple(secrets)
        reauthenticated = False

        async def once(authorization: str | None) -> RawResponse:
            if start_body is not None:
                start_body()
            raw = await send_request(
                self._get_session(),
                method,
                url,
                what=what,
                time_limit=self._timeout,
                json_body=json_body,
                headers={**(headers or {}), **({"Authorization": authorization} if authorization else {})},
                on_chunk=on_chunk,
                max_body_bytes=max_body_bytes,
                clock=self._clock,
                ssl_context=self._ssl_context,
            )
            if 200 <= raw.status < 300:
                return raw
            error_class = not_found if (not_found is not None and raw.status == 404) else SpeechApiError
            raise api_error_from_body(
                what,
                raw.status,
                raw.body,
                retry_after=raw.retry_after,
                secrets=(
                    *((authorization, authorization.partition(" ")[2]) if authorization else ()),
                    *self.auth.secrets_of(credentials),
                    *extra_secrets,
                ),
                error_class=error_class,
            )

        async def attempt() -> RawResponse:
            nonlocal reauthenticated
            authorization = await self.auth.authorization(credentials)
            try:
                return await once(authorization)
            except SpeechApiError as exc:
                if (
                    exc.http_status != 401
                    or reauthenticated
                    or not isinstance(credentials, ServiceAccountKeyCredentials)
                ):
                    raise
            # A cached IAM token can be revoked before it expires: get a fresh one, once per call.
            reauthenticated = True
            logger.info("%s: the IAM token was refused; exchanging the service account key again", what)
            self.auth.invalidate(credentials, authorization)
            return await once(await self.auth.authorization(credentials))

        def notice(failed_attempt: int, exc: Exception, delay: float) -> None:
            logger.warning(
                "%s: attempt %d of %d failed (%s); retrying in %.2fs",
                what,
                failed_attempt,
                self._policy.attempts,
                exc,
                delay,
            )

        return await with_retries(
            attempt,
            self._policy,
            is_transient=retried,
            retry_after_of=_retry_after_of,
            on_retry=notice,
            sleep=self._sleep,
        )
