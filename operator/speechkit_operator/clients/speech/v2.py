"""The SpeechKit asynchronous recognition API v2 over REST, with aiohttp.

- Submit: ``POST {stt_url}/speech/stt/v2/longRunningRecognize``.
- Look: ``GET {operation_url}/operations/{id}``.

Transient failures (connection errors, timeouts, 429, 5xx) are retried with a :class:`RetryPolicy`
and then raised as transient :class:`SpeechApiError` s (``retry_after`` set when the server named
one). Other HTTP errors are permanent. A 404 on an operation is :class:`OperationNotFoundError`.
A TLS failure (:class:`TlsError`, e.g. a certificate of a private CA) is transient for the job but not
repeated within a call, and its message says what to set.

Requests go through the proxy that HTTPS_PROXY/HTTP_PROXY/NO_PROXY name, and verify TLS with the CA
bundle given (``ca_bundle``, ``SPEECHKIT_OPERATOR_CA_BUNDLE``) or the system's trust: both for
SpeechKit and for the IAM token exchange.

Messages never hold the Authorization header, keys, tokens, JWTs or the audio URI, which may be a
presigned URL. Request bodies are never logged.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any
from urllib.parse import quote

import aiohttp

from speechkit_operator.clients.retry import RetryPolicy, with_retries
from speechkit_operator.clients.speech.auth import (
    RawResponse,
    SpeechAuthenticator,
    json_object,
    load_ca_bundle,
    send_request,
)
from speechkit_operator.clients.speech.base import (
    Credentials,
    OperationError,
    OperationState,
    RecognitionRequest,
    ServiceAccountKeyCredentials,
)
from speechkit_operator.clients.speech.errors import (
    MalformedResponseError,
    OperationNotFoundError,
    SpeechApiError,
    TlsError,
    api_error_from_body,
    scrub,
)
from speechkit_operator.clients.speech.v2_parsing import parse_v2_response
from speechkit_operator.config import Settings
from speechkit_operator.contracts.operation import CANCEL_SUFFIX, OPERATIONS_PATH, Operation
from speechkit_operator.contracts.stt_v2 import (
    SUBMIT_PATH,
    AudioEncoding,
    RecognitionSpec,
    long_running_request,
)

logger = logging.getLogger(__name__)


def _is_retried(exc: Exception) -> bool:
    # Malformed answers are not repeated inside one call: a submit could then be made twice.
    # TLS failures are configuration: repeating the handshake at once cannot help.
    return (
        isinstance(exc, SpeechApiError)
        and exc.transient
        and not isinstance(exc, MalformedResponseError | TlsError)
    )


def _is_retried_submit(exc: Exception) -> bool:
    # A submission is repeated within the call only when the server surely did not act on it.
    return _is_retried(exc) and isinstance(exc, SpeechApiError) and exc.certainly_unprocessed


def _retry_after_of(exc: Exception) -> float | None:
    return exc.retry_after if isinstance(exc, SpeechApiError) else None


def _never(exc: Exception) -> bool:
    del exc
    return False


def credential_secrets(credentials: Credentials) -> tuple[str, ...]:
    """The secret values in ``credentials``, to be scrubbed from anything the API says."""
    values = (
        getattr(credentials, "api_key", None),
        getattr(credentials, "iam_token", None),
        getattr(credentials, "private_key", None),
    )
    return tuple(value for value in values if isinstance(value, str) and value)


def _uri_secrets(uri: str) -> tuple[str, ...]:
    base = uri.split("?", 1)[0]
    return (uri, base) if base != uri else (uri,)


def build_submit_body(request: RecognitionRequest, folder_id: str | None) -> dict[str, Any]:
    """The JSON body of ``longRunningRecognize`` for ``request``."""
    pcm = request.audio_encoding == AudioEncoding.LINEAR16_PCM
    spec = RecognitionSpec(
        language_code=request.language_code,
        model=request.model,
        profanity_filter=request.profanity_filter,
        literature_text=request.literature_text,
        raw_results=request.raw_results,
        audio_encoding=AudioEncoding(request.audio_encoding),
    )
    if pcm and request.sample_rate_hertz is not None:
        spec = spec.model_copy(update={"sample_rate_hertz": request.sample_rate_hertz})
    if pcm and request.audio_channel_count is not None:
        spec = spec.model_copy(update={"audio_channel_count": request.audio_channel_count})
    body = long_running_request(spec, uri=request.audio_uri, folder_id=folder_id)
    specification = body["config"]["specification"]
    # Fields the request leaves to the API's defaults are not sent.
    if pcm and request.sample_rate_hertz is None:
        del specification["sampleRateHertz"]
    if pcm and request.audio_channel_count is None:
        del specification["audioChannelCount"]
    return body


def parse_operation(body: dict[str, Any], *, secrets: Iterable[str] = ()) -> OperationState:
    """An :class:`OperationState` from an Operation object; the transcript is parsed once done."""
    secrets = tuple(secrets)
    op_id = body.get("id")
    if not isinstance(op_id, str) or not op_id:
        raise MalformedResponseError("the operation has no id")
    for name in ("error", "response"):
        if body.get(name) is not None and not isinstance(body[name], dict):
            raise MalformedResponseError(f"operation {op_id}: {name} is not an object")
    try:
        operation = Operation.model_validate(body)
    except ValueError:
        raise MalformedResponseError(f"operation {op_id}: not an Operation") from None
    error = None
    if operation.error is not None:
        error = OperationError(code=operation.error.code, message=scrub(operation.error.message, secrets))
    transcript = None
    if operation.done and operation.response is not None:
        try:
            transcript = parse_v2_response(operation.response)
        except (ValueError, TypeError, OverflowError, RecursionError):
            raise MalformedResponseError(
                f"operation {op_id}: the recognition result has an unknown shape", body=body
            ) from None
    return OperationState(
        id=op_id,
        done=operation.done,
        error=error,
        response=operation.response,
        transcript=transcript,
        modified_at=operation.modified_at,
    )


class SpeechKitV2Client:
    """:class:`~speechkit_operator.clients.speech.base.SpeechClient` for the v2 async REST API.

    ``session`` is used as given and never closed here; without one, a session is created on first
    use and closed by :meth:`close`. ``ca_bundle`` is a PEM file of the CAs trusted for SpeechKit and
    IAM instead of the system's (loaded here: a bad file raises ValueError at once). Proxies come
    from the environment at each request. ``sleep`` and ``clock`` are injectable for tests.
    """

    def __init__(
        self,
        stt_url: str,
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
        self._submit_url = str(stt_url).rstrip("/") + SUBMIT_PATH
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

    @classmethod
    def from_settings(
        cls, settings: Settings, *, session: aiohttp.ClientSession | None = None
    ) -> SpeechKitV2Client:
        """The client for the configured backend, CA bundle, timeout and retries."""
        return cls(
            settings.submit_base_url,
            settings.operations_base_url,
            str(settings.iam_token_url),
            timeout=settings.http_timeout,
            retry_policy=RetryPolicy.from_settings(settings),
            session=session,
            ca_bundle=settings.ca_bundle,
            retry_throttled=False,
        )

    # --- SpeechClient ---------------------------------------------------------------------------

    async def submit(self, request: RecognitionRequest, credentials: Credentials) -> OperationState:
        body = build_submit_body(request, credentials.folder_id)
        uri_secrets = _uri_secrets(request.audio_uri) + credential_secrets(credentials)
        raw = await self._call(
            "SpeechKit submit",
            "POST",
            self._submit_url,
            credentials,
            json_body=body,
            secrets=uri_secrets,
            retried=self._unless_throttled(_is_retried_submit),
        )
        return parse_operation(json_object(raw, "SpeechKit submit"), secrets=uri_secrets)

    async def get_operation(self, operation_id: str, credentials: Credentials) -> OperationState:
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
            retried=self._unless_throttled(_is_retried),
        )
        # An error message may echo what the API was given: never let a credential through.
        return parse_operation(json_object(raw, what), secrets=credential_secrets(credentials))

    async def cancel(self, operation_id: str, credentials: Credentials) -> None:
        """Ask for the operation to be cancelled (``GET /operations/{id}:cancel``), once, no retries."""
        if not operation_id:
            raise ValueError("operation_id must not be empty")
        what = f"cancelling SpeechKit operation {scrub(operation_id)}"
        url = self._operations_url + quote(operation_id, safe="") + CANCEL_SUFFIX
        await self._call(what, "GET", url, credentials, not_found=OperationNotFoundError, retried=_never)

    async def close(self) -> None:
        self._closed = True
        if self._owns_session and self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def __aenter__(self) -> SpeechKitV2Client:
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
        retried: Callable[[Exception], bool] = _is_retried,
    ) -> RawResponse:
        """One API call with retries; returns a 2xx answer or raises :class:`SpeechApiError`."""
        extra_secrets = tuple(secrets)
        reauthenticated = False

        async def once(authorization: str | None) -> RawResponse:
            raw = await send_request(
                self._get_session(),
                method,
                url,
                what=what,
                time_limit=self._timeout,
                json_body=json_body,
                headers={"Authorization": authorization} if authorization else {},
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
