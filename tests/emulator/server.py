"""An in-process emulator of Yandex SpeechKit's async APIs v2 and v3, the Operation API and IAM tokens.

One aiohttp server answers all of them:

* ``POST /speech/stt/v2/longRunningRecognize`` (transcribe.api.cloud.yandex.net),
* ``POST /stt/v3/recognizeFileAsync``, ``GET /stt/v3/getRecognition``, ``DELETE /stt/v3/deleteRecognition``
  (stt.api.cloud.yandex.net; request checks and result framing in :mod:`tests.emulator.v3`, results in
  :mod:`tests.emulator.results_v3`),
* ``GET /operations/{id}`` (operation.api.cloud.yandex.net), for v2 and v3 operations,
* ``POST /iam/v1/tokens`` (iam.api.cloud.yandex.net).

Accepted submissions download their audio in the background, like the real service reads the object from
Object Storage, then finish after ``completion_delay`` with a result built from :attr:`transcripts`
(or, with a :class:`ProcessingModel` in :attr:`SpeechKitEmulator.processing_model`, after a time that
grows with the audio's duration, with jitter and a share of slow operations: benchmarks use it).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import math
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal
from urllib.parse import unquote, urlsplit

import aiohttp
import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from tests.emulator.results import Word, build_response
from tests.emulator.results_v3 import StreamOptions, build_stream, utterances_for
from tests.emulator.v3 import (
    DELETE_RECOGNITION_PATH,
    FAILED_PRECONDITION,
    FOLDER_HEADER,
    GET_RECOGNITION_PATH,
    MAX_CONTENT_BYTES,
    OPERATION_DESCRIPTION_V3,
    RECOGNIZE_PATH,
    V3InvalidRequestError,
    V3Request,
    http_status_for,
    parse_recognize_file_request,
    stream_error_line,
    stream_line,
)

Endpoint = Literal["submit", "operation", "token", "v3_submit", "v3_recognition", "v3_delete"]
#: The quota windows: v2 submissions (and v3 ones, unless v3 has its own quota), v2 operation checks,
#: v3 submissions with their own quota, and v3 checks (``getRecognition`` and operation checks of v3
#: operations; per second).
QuotaName = Literal["submit", "operation", "v3_submit", "v3_check"]
ENDPOINTS: Final[tuple[Endpoint, ...]] = (
    "submit",
    "operation",
    "token",
    "v3_submit",
    "v3_recognition",
    "v3_delete",
)

#: The gRPC code the REST gateways put into error bodies for each HTTP status.
GRPC_CODE_BY_HTTP_STATUS: Final[dict[int, int]] = {
    400: 3,  # INVALID_ARGUMENT
    401: 16,  # UNAUTHENTICATED
    403: 7,  # PERMISSION_DENIED
    404: 5,  # NOT_FOUND
    405: 12,  # UNIMPLEMENTED
    409: 6,  # ALREADY_EXISTS
    413: 3,  # INVALID_ARGUMENT
    429: 8,  # RESOURCE_EXHAUSTED
    499: 1,  # CANCELLED
    500: 13,  # INTERNAL
    501: 12,  # UNIMPLEMENTED
    503: 14,  # UNAVAILABLE
    504: 4,  # DEADLINE_EXCEEDED
}
UNKNOWN_GRPC_CODE: Final = 2

IAM_AUDIENCE: Final = "https://iam.api.cloud.yandex.net/iam/v1/tokens"
MAX_JWT_LIFETIME_SECONDS: Final = 3600
QUOTA_WINDOW_SECONDS: Final = 3600.0
V3_CHECK_WINDOW_SECONDS: Final = 1.0
#: Request bodies up to this size are read (inline v3 content may take 60 MB, 80 MB in base64).
MAX_REQUEST_BYTES: Final = 96 * 1024 * 1024
MAX_OPERATION_ID_LENGTH: Final = 50
OPERATION_DESCRIPTION: Final = "STT async recognition"
#: ``createdBy`` of operations submitted with an API key or a static IAM token.
DEFAULT_CREATOR: Final = "ajeemulatorserviceac"
SUPPORTED_ENCODINGS: Final = frozenset({"LINEAR16_PCM", "OGG_OPUS", "MP3"})
SUPPORTED_SAMPLE_RATES: Final = frozenset({8000, 16000, 48000})
DEFAULT_ENCODING: Final = "OGG_OPUS"
DEFAULT_SAMPLE_RATE: Final = 48000
MAX_CHANNELS: Final = 8
DOWNLOAD_TIMEOUT_SECONDS: Final = 30.0

_ID_ALPHABET: Final = "0123456789abcdefghijklmnopqrstuv"
_DEFAULT_MESSAGES: Final[dict[int, str]] = {
    400: "Invalid argument",
    401: "The request is missing valid authentication credentials",
    403: "Permission denied",
    404: "Not found",
    429: "Quota exceeded",
    500: "Internal error",
    503: "Service is temporarily unavailable",
    504: "Deadline exceeded",
}


def grpc_code_for(status: int) -> int:
    return GRPC_CODE_BY_HTTP_STATUS.get(status, UNKNOWN_GRPC_CODE)


def rfc3339(moment: datetime, *, fraction: bool = False) -> str:
    """``2019-04-21T22:49:29Z`` (or with microseconds when ``fraction``)."""
    moment = moment.astimezone(UTC)
    if fraction:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _random_id(prefix: str, length: int = 20) -> str:
    return prefix + "".join(secrets.choice(_ID_ALPHABET) for _ in range(length - len(prefix)))


def _format_retry_after(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else repr(float(seconds))


def error_response(
    status: int, message: str, *, code: int | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    """The documented REST error: ``{"code": <gRPC code>, "message": ..., "details": []}``."""
    body = {"code": grpc_code_for(status) if code is None else code, "message": message, "details": []}
    return web.json_response(body, status=status, headers=headers)


class InvalidRequestError(Exception):
    """A submission that the real service would refuse with INVALID_ARGUMENT."""


class _DownloadError(Exception):
    def __init__(self, message: str, status: int | None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass
class _Fault:
    status: int | None
    remaining: int
    retry_after: float | None
    delay: float
    message: str | None


@dataclass(frozen=True)
class _FailureRule:
    code: int
    message: str
    visible_while_running: bool


@dataclass
class _StreamFault:
    after: int
    error: dict[str, Any] | None
    remaining: int


@dataclass(frozen=True)
class _IssuedToken:
    expires_at: float  # time.time()
    service_account_id: str


@dataclass(frozen=True)
class _ServiceAccountKey:
    service_account_id: str
    public_key: RSAPublicKey


@dataclass
class EmulatedOperation:
    """The emulator's record of one recognition operation."""

    id: str
    request: dict[str, Any]
    audio_uri: str
    #: The unquoted path of ``audio_uri``, without the query string.
    audio_path: str
    created_by: str
    created_at: datetime
    modified_at: datetime
    done: bool = False
    error: dict[str, Any] | None = None
    response: dict[str, Any] | None = None
    #: Bytes read from ``audio_uri``; None until a download succeeded.
    downloaded_bytes: int | None = None
    #: HTTP status the audio download got; None before it or when the connection failed.
    download_status: int | None = None
    #: ``time.monotonic()`` when the operation finished.
    completed_at: float | None = None
    expired: bool = False
    task: asyncio.Task[None] | None = field(default=None, repr=False, compare=False)
    #: Checks (``GET /operations/{id}``) answered for this operation, its cancellation included.
    checks: int = 0
    #: ``time.time()`` when the operation finished (``completed_at`` is on the monotonic clock).
    completed_wall: float | None = None
    #: With a processing model: the processing time drawn for it, and whether it is a slow one.
    processing_seconds: float | None = None
    slow: bool = False
    #: Which API created it: "v2" (longRunningRecognize) or "v3" (recognizeFileAsync).
    api: Literal["v2", "v3"] = "v2"
    description: str = OPERATION_DESCRIPTION
    #: v3: the parsed request, the ``x-folder-id`` it came with, the ``getRecognition`` messages once it
    #: finished without error, whether ``deleteRecognition`` removed them, and how often they were asked.
    v3_request: V3Request | None = None
    folder_id: str | None = None
    v3_results: list[dict[str, Any]] | None = None
    results_deleted: bool = False
    recognition_fetches: int = 0

    def to_json(
        self, visible_error: dict[str, Any] | None = None, *, with_metadata: bool = False
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "description": self.description,
            "createdAt": rfc3339(self.created_at),
            "createdBy": self.created_by,
            "modifiedAt": rfc3339(self.modified_at),
            "done": self.done,
        }
        if with_metadata:
            # The stt gateway writes unset message fields as null (documented recognizeFileAsync answer).
            body["metadata"] = None
        if self.done:
            if self.error is not None:
                body["error"] = self.error
            elif self.response is not None:
                # v3 operations finish without one unless ``v3_operation_response`` says otherwise.
                body["response"] = self.response
        elif visible_error is not None:
            body["error"] = visible_error
        return body


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class ProcessingModel:
    """How long an accepted operation takes once its audio is downloaded.

    ``seconds_per_audio_second`` times the audio's duration (``audio_seconds`` of the operation, or
    ``default_audio_seconds`` when it gives None), times a jitter factor uniform in
    ``[1 - jitter, 1 + jitter]``; a ``slow_share`` of the operations (like ``deferred-general``) take
    ``slow_factor`` times longer. The draws are a deterministic hash of the audio's path and ``seed``,
    so that the same objects take the same time in every run.
    """

    #: The documented pace is about 10 s per minute of audio (per channel).
    seconds_per_audio_second: float = 10.0 / 60.0
    jitter: float = 0.2
    slow_share: float = 0.05
    slow_factor: float = 10.0
    default_audio_seconds: float = 60.0
    audio_seconds: Callable[[EmulatedOperation], float | None] | None = None
    seed: str = ""

    def _uniforms(self, operation: EmulatedOperation) -> tuple[float, float]:
        digest = hashlib.sha256(f"{self.seed}:{operation.audio_path}".encode()).digest()
        scale = float(1 << 64)
        return int.from_bytes(digest[:8], "big") / scale, int.from_bytes(digest[8:16], "big") / scale

    def is_slow(self, operation: EmulatedOperation) -> bool:
        return self._uniforms(operation)[0] < self.slow_share

    def seconds(self, operation: EmulatedOperation) -> float:
        """The processing time of ``operation`` (after its download), in seconds."""
        slow_draw, jitter_draw = self._uniforms(operation)
        duration = self.audio_seconds(operation) if self.audio_seconds is not None else None
        if duration is None:
            duration = self.default_audio_seconds
        seconds = self.seconds_per_audio_second * duration * (1 + self.jitter * (2 * jitter_draw - 1))
        if slow_draw < self.slow_share:
            seconds *= self.slow_factor
        return max(0.0, seconds)


class SpeechKitEmulator:
    """A faithful-enough SpeechKit v2 and v3 async service for tests; see the module docstring."""

    def __init__(
        self,
        *,
        api_keys: set[str] | frozenset[str] = frozenset({"test-api-key"}),
        iam_tokens: set[str] | frozenset[str] = frozenset(),
        completion_delay: float = 0.3,
        retention_seconds: float = 3 * 24 * 3600,
        submit_quota_per_hour: int = 500,
        check_quota_per_hour: int = 2500,
        token_lifetime_seconds: float = 12 * 3600,
        v3_submit_quota_per_hour: int | None = None,
        v3_check_quota_per_second: int = 5,
    ) -> None:
        self.api_keys: set[str] = set(api_keys)
        self.iam_tokens: set[str] = set(iam_tokens)
        self.completion_delay = completion_delay
        self.retention_seconds = retention_seconds
        self.submit_quota_per_hour = submit_quota_per_hour
        self.check_quota_per_hour = check_quota_per_hour
        #: The quotas page lists one "recognition requests per hour" quota: by default (None) v3
        #: submissions use the v2 submission window and ``submit_quota_per_hour``; a number gives v3
        #: submissions their own window ("v3_submit") with that limit.
        self.v3_submit_quota_per_hour = v3_submit_quota_per_hour
        #: "Operation status check requests via API v3 per second": charged by ``getRecognition`` and
        #: by ``GET /operations/{id}`` of v3 operations, in a window of ``v3_check_window_seconds``.
        self.v3_check_quota_per_second = v3_check_quota_per_second
        self.v3_check_window_seconds = V3_CHECK_WINDOW_SECONDS
        #: The quotas' window ("per hour"): tests and benchmarks compress it.
        self.quota_window_seconds = QUOTA_WINDOW_SECONDS
        #: Whether a 429 for an exhausted quota carries Retry-After (a gateway may send none).
        self.quota_retry_after = True
        self.token_lifetime_seconds = token_lifetime_seconds
        #: How long an accepted operation keeps trying to download its audio while the storage is
        #: unreachable or answers 5xx (0: one try, and the operation fails at once).
        self.download_retry_seconds = 0.0
        #: Called with each accepted submission's operation before the answer is sent (a test can
        #: stop the client right there: the operation exists, the client never learns its id).
        self.on_submission: Callable[[EmulatedOperation], None] | None = None
        #: When set, how long operations take (instead of ``completion_delay``); read at each submission.
        self.processing_model: ProcessingModel | None = None

        #: key suffix -> channelTag -> words; the first suffix the audio path ends with is recognised.
        self.transcripts: dict[str, dict[str, list[tuple[str, float, float]]]] = {}
        #: Operations on audio whose path ends with a key here finish with that ``response``
        #: object verbatim (a result of a shape the operator does not know, for instance).
        self.raw_responses: dict[str, dict[str, Any]] = {}

        # ---- API v3
        #: v3 operations on audio whose path ends with a key here answer ``getRecognition`` with these
        #: ``StreamingResponse`` messages verbatim (instead of ones built from :attr:`transcripts`).
        #: Inline ``content`` has the audio path ``content:<sha256 hex of the audio>``.
        self.v3_raw_results: dict[str, list[dict[str, Any]]] = {}
        #: The ``response`` of finished v3 operations. The documented example of a finished v3
        #: operation has none (the method's response type is google.protobuf.Empty): None omits it;
        #: ``{"@type": "type.googleapis.com/google.protobuf.Empty"}`` is the other plausible answer.
        self.v3_operation_response: dict[str, Any] | None = None
        #: Whether v3 calls authenticated with an IAM token must name the folder in ``x-folder-id``
        #: (403 PERMISSION_DENIED without it). API keys carry their folder.
        self.v3_require_folder_id = True
        #: The inline ``content`` limit of ``recognizeFileAsync`` (decoded bytes).
        self.v3_max_content_bytes = MAX_CONTENT_BYTES
        #: The gRPC code ``getRecognition`` and ``deleteRecognition`` answer while the operation runs
        #: (undocumented; the HTTP status follows the code). FAILED_PRECONDITION by default.
        self.v3_not_ready_code = FAILED_PRECONDITION
        #: Whether ``getRecognition`` errors have the grpc-gateway stream form ``{"error": {...}}``
        #: instead of the usual ``{"code", "message", "details"}``.
        self.v3_wrap_stream_errors = False
        #: JSON bodies of accepted v3 submissions, in order.
        self.v3_submissions: list[dict[str, Any]] = []
        #: Operation ids whose results ``deleteRecognition`` removed, in order.
        self.deleted_recognitions: list[str] = []

        #: Requests received per endpoint ("submit", "operation", "token", "v3_submit",
        #: "v3_recognition", "v3_delete"), whatever was answered.
        self.counts: collections.Counter[str] = collections.Counter()
        #: JSON bodies of accepted submissions, in order.
        self.submissions: list[dict[str, Any]] = []
        #: Injected faults answered so far, by endpoint and status (None: only delayed).
        self.faults_served: collections.Counter[tuple[Endpoint, int | None]] = collections.Counter()
        #: 429s answered because a quota was exhausted, by quota window (see :data:`QuotaName`;
        #: "submit" and "operation" are the v2 endpoints'), injected faults not counted.
        self.quota_refusals: collections.Counter[str] = collections.Counter()
        #: ``time.monotonic()`` of every call charged to a quota (accepted), by quota window, in order.
        self.quota_charges: dict[QuotaName, list[float]] = {
            "submit": [],
            "operation": [],
            "v3_submit": [],
            "v3_check": [],
        }
        #: Operation ids asked to be cancelled, in order.
        self.cancelled: list[str] = []
        self.operations: dict[str, EmulatedOperation] = {}
        #: IAM tokens issued by ``POST /iam/v1/tokens``.
        self.issued_tokens: dict[str, _IssuedToken] = {}

        self._keys: dict[str, _ServiceAccountKey] = {}
        self._faults: dict[Endpoint, collections.deque[_Fault]] = {
            endpoint: collections.deque() for endpoint in ENDPOINTS
        }
        self._stream_faults: collections.deque[_StreamFault] = collections.deque()
        self._failures: dict[str, _FailureRule] = {}
        self._quota_windows: dict[QuotaName, collections.deque[float]] = {
            "submit": collections.deque(),
            "operation": collections.deque(),
            "v3_submit": collections.deque(),
            "v3_check": collections.deque(),
        }
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._stopping: asyncio.Event | None = None
        self._url: str | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        """The base URL of the running server, without a trailing slash."""
        if self._url is None:
            raise RuntimeError("the emulator is not started")
        return self._url

    async def start(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        ssl_context: ssl.SSLContext | None = None,
        download_ssl: ssl.SSLContext | None = None,
    ) -> None:
        """Serve on ``host:port`` (0: a free port), over HTTPS with ``ssl_context`` (a server context).

        ``download_ssl`` is the client context of audio downloads (to trust a private CA); without it,
        the system's trust.
        """
        if self._runner is not None:
            raise RuntimeError("the emulator is already started")
        self._stopping = asyncio.Event()
        app = web.Application(middlewares=[self._error_middleware], client_max_size=MAX_REQUEST_BYTES)
        app.router.add_post("/speech/stt/v2/longRunningRecognize", self._handle_submit)
        app.router.add_get("/operations/{operation_id}", self._handle_operation)
        app.router.add_post("/iam/v1/tokens", self._handle_token)
        app.router.add_post(RECOGNIZE_PATH, self._handle_v3_recognize)
        app.router.add_get(GET_RECOGNITION_PATH, self._handle_v3_get_recognition)
        app.router.add_delete(DELETE_RECOGNITION_PATH, self._handle_v3_delete_recognition)
        runner = web.AppRunner(app, shutdown_timeout=1.0, handler_cancellation=True, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=DOWNLOAD_TIMEOUT_SECONDS),
            connector=aiohttp.TCPConnector(ssl=download_ssl if download_ssl is not None else True),
        )
        bound_host, bound_port = runner.addresses[0][:2]
        shown_host = f"[{bound_host}]" if ":" in bound_host else bound_host
        scheme = "https" if ssl_context is not None else "http"
        self._url = f"{scheme}://{shown_host}:{bound_port}"

    async def stop(self) -> None:
        """Stop serving and cancel the background work; safe to call twice."""
        if self._stopping is not None:
            self._stopping.set()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._url = None

    async def __aenter__(self) -> SpeechKitEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ test controls

    def add_service_account_key(self, key_id: str, service_account_id: str, public_key_pem: str) -> None:
        """Accept JWTs with header ``kid=key_id`` signed by this RSA key, issued by ``service_account_id``."""
        public_key = load_pem_public_key(public_key_pem.encode())
        if not isinstance(public_key, RSAPublicKey):
            raise TypeError("service account keys are RSA keys")
        self._keys[key_id] = _ServiceAccountKey(service_account_id, public_key)

    def inject(
        self,
        endpoint: Endpoint,
        status: int | None,
        *,
        count: int = 1,
        retry_after: float | None = None,
        delay: float = 0.0,
        message: str | None = None,
    ) -> None:
        """Make the next ``count`` requests to ``endpoint`` sleep ``delay`` s, then answer ``status``.

        With ``status=None`` the requests are only delayed and then served normally. Injections queue up:
        a second call takes effect after the first one is used up.
        """
        if endpoint not in self._faults:
            raise ValueError(f"unknown endpoint {endpoint!r}")
        if status is not None and not 400 <= status <= 599:
            raise ValueError("injected statuses are HTTP errors (400..599)")
        if count < 1:
            raise ValueError("count must be at least 1")
        if delay < 0:
            raise ValueError("delay must not be negative")
        self._faults[endpoint].append(_Fault(status, count, retry_after, delay, message))

    def pending_faults(self, endpoint: Endpoint | None = None) -> int:
        """Requests that injected faults will still hit (on ``endpoint``, or on any)."""
        queues = [self._faults[endpoint]] if endpoint is not None else list(self._faults.values())
        return sum(fault.remaining for queue in queues for fault in queue)

    def clear_faults(self) -> int:
        """Drop every injected fault not used yet; how many requests they would still have hit."""
        pending = self.pending_faults() + sum(fault.remaining for fault in self._stream_faults)
        for queue in self._faults.values():
            queue.clear()
        self._stream_faults.clear()
        return pending

    def inject_v3_stream_break(
        self, after: int = 0, *, error: dict[str, Any] | None = None, count: int = 1
    ) -> None:
        """Make the next ``count`` ``getRecognition`` streams (200 answers) break after ``after`` messages.

        With ``error`` (a ``google.rpc.Status`` object) the stream ends with a grpc-gateway error element
        ``{"error": error}``; without, the connection drops in the middle of the next message (the
        chunked body never ends properly).
        """
        if after < 0 or count < 1:
            raise ValueError("after must not be negative and count must be at least 1")
        self._stream_faults.append(_StreamFault(after, error, count))

    def fail_operations(
        self,
        key_suffix: str,
        code: int = 3,
        message: str = "audio could not be recognized",
        *,
        visible_while_running: bool = False,
    ) -> None:
        """Operations whose audio path ends with ``key_suffix`` finish with this error instead of a result.

        Applies to operations that have not finished yet, including those already submitted.
        """
        self._failures[key_suffix] = _FailureRule(code, message, visible_while_running)

    def reset_quota_windows(self) -> None:
        """Forget the calls the quota windows hold (a new window starts now); ``quota_charges`` stays."""
        for window in self._quota_windows.values():
            window.clear()

    def expire(self, operation_id: str) -> None:
        """From now on ``GET /operations/{operation_id}`` (and, for v3, ``getRecognition`` and
        ``deleteRecognition``) answer 404, as after the retention period."""
        operation = self.operations[operation_id]
        operation.expired = True
        if operation.task is not None:
            operation.task.cancel()

    # ------------------------------------------------------------------ plumbing

    @web.middleware
    async def _error_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            allow = exc.headers.get("Allow")
            return error_response(exc.status, exc.reason, headers={"Allow": allow} if allow else None)

    async def _sleep(self, seconds: float) -> None:
        if seconds <= 0:
            return
        assert self._stopping is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    async def _apply_fault(self, endpoint: Endpoint) -> web.Response | None:
        queue = self._faults[endpoint]
        if not queue:
            return None
        fault = queue[0]
        fault.remaining -= 1
        if fault.remaining <= 0:
            queue.popleft()
        self.faults_served[endpoint, fault.status] += 1
        await self._sleep(fault.delay)
        if fault.status is None:
            return None
        headers: dict[str, str] = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = _format_retry_after(fault.retry_after)
        message = fault.message or _DEFAULT_MESSAGES.get(fault.status, "Injected failure")
        return error_response(fault.status, message, headers=headers)

    def _authenticate(self, request: web.Request) -> str | None:
        """The caller's service account id, or None when the credentials are not valid."""
        scheme, _, credentials = request.headers.get("Authorization", "").strip().partition(" ")
        credentials = credentials.strip()
        if not credentials:
            return None
        if scheme.lower() == "api-key":
            return DEFAULT_CREATOR if credentials in self.api_keys else None
        if scheme.lower() == "bearer":
            if credentials in self.iam_tokens:
                return DEFAULT_CREATOR
            issued = self.issued_tokens.get(credentials)
            if issued is not None and issued.expires_at > time.time():
                return issued.service_account_id
        return None

    def _quota_limits(self, name: QuotaName) -> tuple[int, float, str]:
        """(limit, window seconds, unit of the message) of a quota window."""
        if name == "submit":
            return self.submit_quota_per_hour, self.quota_window_seconds, "hour"
        if name == "operation":
            return self.check_quota_per_hour, self.quota_window_seconds, "hour"
        if name == "v3_submit":
            limit = self.v3_submit_quota_per_hour
            return (self.submit_quota_per_hour if limit is None else limit), self.quota_window_seconds, "hour"
        return self.v3_check_quota_per_second, self.v3_check_window_seconds, "second"

    def _take_quota(self, name: QuotaName) -> web.Response | None:
        """Use one slot of the sliding window ``name``, or answer 429 when none is free."""
        limit, length, unit = self._quota_limits(name)
        window = self._quota_windows[name]
        now = time.monotonic()
        while window and window[0] <= now - length:
            window.popleft()
        if len(window) >= limit:
            wait = window[0] + length - now if window else length
            retry_after = max(1, math.ceil(wait))
            self.quota_refusals[name] += 1
            return error_response(
                429,
                f"Quota limit exceeded: at most {limit} requests per {unit}",
                headers={"Retry-After": str(retry_after)} if self.quota_retry_after else None,
            )
        window.append(now)
        self.quota_charges[name].append(now)
        return None

    async def _guard(
        self, request: web.Request, endpoint: Endpoint, quota: QuotaName | None, *, v3: bool = False
    ) -> str | web.Response:
        """Count, inject faults, authenticate and charge the quota; the caller's account id when all pass.

        For v3 calls (``v3``) an IAM token must come with ``x-folder-id`` (see ``v3_require_folder_id``).
        """
        self.counts[endpoint] += 1
        fault = await self._apply_fault(endpoint)
        if fault is not None:
            return fault
        creator = self._authenticate(request)
        if creator is None:
            return error_response(401, "The request is unauthenticated: the API key or IAM token is invalid")
        if v3 and self.v3_require_folder_id and not request.headers.get(FOLDER_HEADER, "").strip():
            scheme = request.headers.get("Authorization", "").strip().partition(" ")[0]
            if scheme.lower() == "bearer":
                return error_response(
                    403, f"Permission denied: calls with an IAM token must name the folder in {FOLDER_HEADER}"
                )
        if quota is not None:
            refused = self._take_quota(quota)
            if refused is not None:
                return refused
        return creator

    def _failure_for(self, operation: EmulatedOperation) -> _FailureRule | None:
        for suffix, rule in self._failures.items():
            if operation.audio_path.endswith(suffix):
                return rule
        return None

    def _transcript_for(self, operation: EmulatedOperation) -> dict[str, list[Word]] | None:
        for suffix, channels in self.transcripts.items():
            if operation.audio_path.endswith(suffix):
                return channels
        return None

    # ------------------------------------------------------------------ submit

    async def _handle_submit(self, request: web.Request) -> web.Response:
        guarded = await self._guard(request, "submit", "submit")
        if isinstance(guarded, web.Response):
            return guarded
        try:
            body = _parse_json_object(await request.read())
            uri = validate_submission(body)
        except InvalidRequestError as exc:
            return error_response(400, str(exc))
        now = datetime.now(UTC)
        operation = EmulatedOperation(
            id=self._new_operation_id(),
            request=body,
            audio_uri=uri,
            audio_path=unquote(urlsplit(uri).path),
            created_by=guarded,
            created_at=now,
            modified_at=now,
        )
        if self.processing_model is not None:
            operation.processing_seconds = self.processing_model.seconds(operation)
            operation.slow = self.processing_model.is_slow(operation)
        self.operations[operation.id] = operation
        self.submissions.append(body)
        task = asyncio.get_running_loop().create_task(
            self._recognize(operation), name=f"recognize-{operation.id}"
        )
        operation.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if self.on_submission is not None:
            self.on_submission(operation)
        return web.json_response(operation.to_json())

    def _new_operation_id(self) -> str:
        while True:
            operation_id = _random_id("e03")
            if operation_id not in self.operations:
                return operation_id

    async def _download(self, uri: str) -> tuple[int, int]:
        """Read the audio like the service reads the object; (HTTP status, bytes)."""
        assert self._session is not None
        try:
            async with self._session.get(uri) as response:
                if response.status != 200:
                    message = f"audio could not be downloaded: HTTP {response.status}"
                    raise _DownloadError(message, response.status)
                size = 0
                async for block in response.content.iter_chunked(64 * 1024):
                    size += len(block)
                return response.status, size
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise _DownloadError(f"audio could not be downloaded: {type(exc).__name__}", None) from None

    async def _download_retrying(self, uri: str) -> tuple[int, int]:
        """:meth:`_download`, tried again for ``download_retry_seconds`` while the storage is
        unreachable or answers 5xx."""
        deadline = time.monotonic() + self.download_retry_seconds
        while True:
            try:
                return await self._download(uri)
            except _DownloadError as exc:
                transient = exc.status is None or exc.status >= 500
                stopping = self._stopping is not None and self._stopping.is_set()
                if not transient or stopping or time.monotonic() >= deadline:
                    raise
            await self._sleep(min(1.0, max(0.0, deadline - time.monotonic())))

    async def _recognize(self, operation: EmulatedOperation) -> None:
        download_error: str | None = None
        inline = operation.v3_request.content if operation.v3_request is not None else None
        if inline is not None:
            operation.downloaded_bytes = len(inline)
        else:
            try:
                operation.download_status, size = await self._download_retrying(operation.audio_uri)
                if size == 0:
                    download_error = "audio could not be downloaded: the object is empty"
                else:
                    operation.downloaded_bytes = size
            except _DownloadError as exc:
                download_error, operation.download_status = exc.message, exc.status
        if download_error is not None and self._failure_for(operation) is None:
            self._finish(operation, error={"code": 3, "message": download_error, "details": []})
            return
        delay = operation.processing_seconds
        await asyncio.sleep(self.completion_delay if delay is None else delay)
        rule = self._failure_for(operation)
        if rule is not None:
            self._finish(operation, error={"code": rule.code, "message": rule.message, "details": []})
        elif download_error is not None:
            self._finish(operation, error={"code": 3, "message": download_error, "details": []})
        elif operation.api == "v3":
            self._finish_v3(operation)
        elif (raw := self._raw_response_for(operation)) is not None:
            self._finish(operation, response=raw)
        else:
            self._finish(operation, response=build_response(self._transcript_for(operation)))

    def _raw_response_for(self, operation: EmulatedOperation) -> dict[str, Any] | None:
        for suffix, response in self.raw_responses.items():
            if operation.audio_path.endswith(suffix):
                return response
        return None

    @staticmethod
    def _finish(
        operation: EmulatedOperation,
        *,
        error: dict[str, Any] | None = None,
        response: dict[str, Any] | None = None,
    ) -> None:
        operation.error = error
        operation.response = response
        operation.done = True
        operation.modified_at = datetime.now(UTC)
        operation.completed_at = time.monotonic()
        operation.completed_wall = time.time()

    # ------------------------------------------------------------------ operations

    async def _handle_operation(self, request: web.Request) -> web.Response:
        guarded = await self._guard(request, "operation", None)
        if isinstance(guarded, web.Response):
            return guarded
        operation_id = request.match_info["operation_id"]
        cancel = operation_id.endswith(":cancel")
        operation_id = operation_id.removesuffix(":cancel")
        operation = self.operations.get(operation_id)
        # Checks of v3 operations count against the v3 per-second quota, all others the v2 hourly one.
        refused = self._take_quota(
            "v3_check" if operation is not None and operation.api == "v3" else "operation"
        )
        if refused is not None:
            return refused
        if operation is None or operation.expired or self._past_retention(operation):
            return error_response(404, f"Operation {operation_id} not found")
        operation.checks += 1
        if cancel:
            # GET /operations/{id}:cancel: a running operation ends with CANCELLED.
            self.cancelled.append(operation_id)
            if not operation.done:
                if operation.task is not None:
                    operation.task.cancel()
                self._finish(operation, error={"code": 1, "message": "Operation cancelled", "details": []})
            return web.json_response(operation.to_json())
        visible_error: dict[str, Any] | None = None
        if not operation.done:
            operation.modified_at = datetime.now(UTC)
            rule = self._failure_for(operation)
            if rule is not None and rule.visible_while_running:
                visible_error = {"code": rule.code, "message": rule.message, "details": []}
        return web.json_response(operation.to_json(visible_error))

    def _past_retention(self, operation: EmulatedOperation) -> bool:
        return (
            operation.completed_at is not None
            and time.monotonic() - operation.completed_at >= self.retention_seconds
        )

    # ------------------------------------------------------------------ API v3

    def _v3_error(self, code: int, message: str) -> web.Response:
        """A ``getRecognition``/``deleteRecognition`` error answer for gRPC ``code``."""
        status = http_status_for(code)
        body = {"code": code, "message": message, "details": []}
        if self.v3_wrap_stream_errors:
            return web.json_response({"error": body}, status=status)
        return web.json_response(body, status=status)

    async def _handle_v3_recognize(self, request: web.Request) -> web.Response:
        quota: QuotaName = "submit" if self.v3_submit_quota_per_hour is None else "v3_submit"
        guarded = await self._guard(request, "v3_submit", quota, v3=True)
        if isinstance(guarded, web.Response):
            return guarded
        try:
            body = _parse_json_object(await request.read())
            parsed = parse_recognize_file_request(body, max_content_bytes=self.v3_max_content_bytes)
        except (InvalidRequestError, V3InvalidRequestError) as exc:
            return error_response(400, str(exc))
        if parsed.content is not None:
            audio_uri, audio_path = "", f"content:{hashlib.sha256(parsed.content).hexdigest()}"
        else:
            assert parsed.uri is not None
            audio_uri, audio_path = parsed.uri, unquote(urlsplit(parsed.uri).path)
        now = datetime.now(UTC)
        operation = EmulatedOperation(
            id=self._new_operation_id(),
            request=body,
            audio_uri=audio_uri,
            audio_path=audio_path,
            created_by=guarded,
            created_at=now,
            modified_at=now,
            api="v3",
            description=OPERATION_DESCRIPTION_V3,
            v3_request=parsed,
            folder_id=request.headers.get(FOLDER_HEADER),
        )
        if self.processing_model is not None:
            operation.processing_seconds = self.processing_model.seconds(operation)
            operation.slow = self.processing_model.is_slow(operation)
        self.operations[operation.id] = operation
        self.v3_submissions.append(body)
        task = asyncio.get_running_loop().create_task(
            self._recognize(operation), name=f"recognize-{operation.id}"
        )
        operation.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if self.on_submission is not None:
            self.on_submission(operation)
        return web.json_response(operation.to_json(with_metadata=True))

    def _finish_v3(self, operation: EmulatedOperation) -> None:
        """Finish a v3 operation: keep its ``getRecognition`` messages, answer ``v3_operation_response``."""
        parsed = operation.v3_request
        assert parsed is not None
        raw = next(
            (
                results
                for suffix, results in self.v3_raw_results.items()
                if operation.audio_path.endswith(suffix)
            ),
            None,
        )
        if raw is not None:
            messages = [dict(message) for message in raw]
        else:
            try:
                utterances = utterances_for(
                    self._transcript_for(operation), speaker_labeling=parsed.speaker_labeling_enabled
                )
            except ValueError as exc:
                self._finish(operation, error={"code": 13, "message": str(exc), "details": []})
                return
            languages: tuple[tuple[str, float], ...] = ()
            if parsed.restriction_type == "WHITELIST" and parsed.language_codes:
                languages = ((parsed.language_codes[0], 1.0),)
            elapsed = datetime.now(UTC) - operation.created_at
            options = StreamOptions(
                text_normalization=parsed.normalization_enabled,
                literature_text=parsed.literature_text,
                languages=languages,
                session_uuid="-".join(secrets.token_hex(4) for _ in range(4)),
                user_request_id=_random_id("e03"),
                response_wall_time_ms=max(0, round(elapsed.total_seconds() * 1000)),
            )
            messages = build_stream(utterances, options)
        operation.v3_results = messages
        response = self.v3_operation_response
        self._finish(operation, response=dict(response) if response is not None else None)

    def _v3_operation(self, request: web.Request) -> EmulatedOperation | web.Response:
        """The v3 operation ``operation_id`` (or ``operationId``) names, or the error to answer."""
        operation_id = request.query.get("operation_id", request.query.get("operationId", ""))
        if not operation_id:
            return error_response(400, "operation_id: required field is missing")
        if len(operation_id) > MAX_OPERATION_ID_LENGTH:
            return error_response(
                400, f"operation_id: must be at most {MAX_OPERATION_ID_LENGTH} characters long"
            )
        operation = self.operations.get(operation_id)
        if (
            operation is None
            or operation.api != "v3"
            or operation.expired
            or operation.results_deleted
            or self._past_retention(operation)
        ):
            return self._v3_error(5, f"Operation {operation_id} not found")
        return operation

    def _v3_unfinished(self, operation: EmulatedOperation) -> web.Response | None:
        """The error for results of an operation that is running or failed; None when they exist."""
        if not operation.done:
            return self._v3_error(self.v3_not_ready_code, f"Operation {operation.id} is not done yet")
        if operation.error is not None:
            code = operation.error.get("code")
            message = operation.error.get("message")
            return self._v3_error(
                code if isinstance(code, int) else 13,
                message if isinstance(message, str) else "recognition failed",
            )
        return None

    async def _handle_v3_get_recognition(self, request: web.Request) -> web.StreamResponse:
        guarded = await self._guard(request, "v3_recognition", "v3_check", v3=True)
        if isinstance(guarded, web.Response):
            return guarded
        operation = self._v3_operation(request)
        if isinstance(operation, web.Response):
            return operation
        operation.recognition_fetches += 1
        unfinished = self._v3_unfinished(operation)
        if unfinished is not None:
            return unfinished
        messages = list(operation.v3_results or [])
        fault: _StreamFault | None = None
        if self._stream_faults:
            fault = self._stream_faults[0]
            fault.remaining -= 1
            if fault.remaining <= 0:
                self._stream_faults.popleft()
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for index, message in enumerate(messages):
            line = stream_line(message)
            if fault is not None and index >= fault.after:
                if fault.error is None:
                    await response.write(line[: len(line) // 2])
                    break
                await response.write(stream_error_line(fault.error))
                await response.write_eof()
                return response
            await response.write(line)
        else:
            if fault is not None and fault.error is not None:
                await response.write(stream_error_line(fault.error))
            await response.write_eof()
            return response
        # A dropped connection: the chunked body never ends.
        transport = request.transport
        if transport is not None:
            transport.abort()
        return response

    async def _handle_v3_delete_recognition(self, request: web.Request) -> web.Response:
        guarded = await self._guard(request, "v3_delete", None, v3=True)
        if isinstance(guarded, web.Response):
            return guarded
        operation = self._v3_operation(request)
        if isinstance(operation, web.Response):
            return operation
        if not operation.done:
            return self._v3_error(self.v3_not_ready_code, f"Operation {operation.id} is not done yet")
        operation.results_deleted = True
        operation.v3_results = None
        self.deleted_recognitions.append(operation.id)
        return web.json_response({})

    # ------------------------------------------------------------------ IAM

    async def _handle_token(self, request: web.Request) -> web.Response:
        self.counts["token"] += 1
        fault = await self._apply_fault("token")
        if fault is not None:
            return fault
        try:
            body = _parse_json_object(await request.read())
        except InvalidRequestError as exc:
            return error_response(400, str(exc))
        token = body.get("jwt")
        if not isinstance(token, str) or not token:
            return error_response(400, "jwt: a signed JWT is required")
        try:
            service_account_id = self._verify_jwt(token)
        except jwt.PyJWTError as exc:
            return error_response(401, f"Invalid JWT: {exc}")
        now = time.time()
        iam_token = "t1." + secrets.token_urlsafe(48)
        self.issued_tokens[iam_token] = _IssuedToken(now + self.token_lifetime_seconds, service_account_id)
        expires_at = datetime.fromtimestamp(now + self.token_lifetime_seconds, UTC)
        return web.json_response({"iamToken": iam_token, "expiresAt": rfc3339(expires_at, fraction=True)})

    def _verify_jwt(self, token: str) -> str:
        header = jwt.get_unverified_header(token)
        if header.get("typ") != "JWT":
            raise jwt.InvalidTokenError("the header must have typ JWT")
        if header.get("alg") != "PS256":
            raise jwt.InvalidAlgorithmError("the header must have alg PS256")
        kid = header.get("kid")
        key = self._keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise jwt.InvalidKeyError("unknown key id")
        claims = jwt.decode(
            token,
            key.public_key,
            algorithms=["PS256"],
            audience=IAM_AUDIENCE,
            issuer=key.service_account_id,
            options={"require": ["iss", "aud", "iat", "exp"], "verify_iat": False},
        )
        issued_at, expires = claims["iat"], claims["exp"]
        if not isinstance(issued_at, int | float) or not isinstance(expires, int | float):
            raise jwt.InvalidTokenError("iat and exp must be numbers")
        if expires - issued_at > MAX_JWT_LIFETIME_SECONDS:
            raise jwt.InvalidTokenError("exp - iat must not exceed 3600 seconds")
        return key.service_account_id


def _parse_json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidRequestError("The request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("The request body must be a JSON object")
    return body


def _int_field(value: object, name: str) -> int:
    """An int64 protobuf field: a JSON integer, or a decimal string."""
    if isinstance(value, bool):
        raise InvalidRequestError(f"{name}: expected an integer, got {json.dumps(value)}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise InvalidRequestError(f"{name}: expected an integer, got {json.dumps(value)}")


def _optional_type(spec: dict[str, Any], name: str, kind: type) -> None:
    if name in spec and not isinstance(spec[name], kind):
        raise InvalidRequestError(f"config.specification.{name}: expected a {kind.__name__}")


def validate_submission(body: dict[str, Any]) -> str:
    """Check a ``longRunningRecognize`` body like the service does; the audio URI when it is valid."""
    config = body.get("config")
    if not isinstance(config, dict):
        raise InvalidRequestError("config: required field is missing")
    spec = config.get("specification")
    if not isinstance(spec, dict):
        raise InvalidRequestError("config.specification: required field is missing")
    if "folderId" in config and not isinstance(config["folderId"], str):
        raise InvalidRequestError("config.folderId: expected a string")
    for name in ("languageCode", "model"):
        _optional_type(spec, name, str)
    for name in ("profanityFilter", "literature_text", "rawResults"):
        _optional_type(spec, name, bool)

    encoding = spec.get("audioEncoding", DEFAULT_ENCODING)
    if encoding not in SUPPORTED_ENCODINGS:
        raise InvalidRequestError(
            f"config.specification.audioEncoding: unsupported value {json.dumps(encoding)}; "
            f"expected one of {', '.join(sorted(SUPPORTED_ENCODINGS))}"
        )
    if "sampleRateHertz" in spec:
        rate = _int_field(spec["sampleRateHertz"], "config.specification.sampleRateHertz")
        if rate not in SUPPORTED_SAMPLE_RATES:
            raise InvalidRequestError(
                f"config.specification.sampleRateHertz: unsupported value {rate}; "
                "expected 8000, 16000 or 48000"
            )
    if "audioChannelCount" in spec:
        channels = _int_field(spec["audioChannelCount"], "config.specification.audioChannelCount")
        if encoding != "LINEAR16_PCM":
            raise InvalidRequestError(
                "config.specification.audioChannelCount: only allowed with LINEAR16_PCM; "
                f"{encoding} carries its own channel count"
            )
        if not 1 <= channels <= MAX_CHANNELS:
            raise InvalidRequestError(
                f"config.specification.audioChannelCount: must be between 1 and {MAX_CHANNELS}, "
                f"got {channels}"
            )

    audio = body.get("audio")
    if not isinstance(audio, dict):
        raise InvalidRequestError("audio: required field is missing")
    uri = audio.get("uri")
    if not isinstance(uri, str) or not uri:
        raise InvalidRequestError("audio.uri: required field is missing")
    parts = urlsplit(uri)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise InvalidRequestError("audio.uri: must be an http(s) link to an Object Storage object")
    return uri
