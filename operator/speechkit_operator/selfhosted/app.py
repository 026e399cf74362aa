"""``speechkit-operator serve``: a self-hosted recognition service that speaks SpeechKit's REST APIs.

Routes (every error answer has SpeechKit's shape ``{"code", "message", "details": []}``):

* ``POST /speech/stt/v2/longRunningRecognize``: the v2 async API. The body is checked like SpeechKit checks
  it; the answer is an Operation with ``done: false``. The audio (``audio.uri``: http, https or
  ``s3://bucket/key``; or base64 ``audio.content``) is read and recognised in the background. Downloads
  are denied unless ``allowed_hosts`` (http, https) or ``allowed_buckets`` (s3) names the host or bucket.
* ``POST /stt/v3/recognizeFileAsync``: the v3 async API (checks in :mod:`.protocol_v3`), from the same
  audio sources, engine and admission as v2; the answer is an Operation (``STT v3 async recognition``)
  that ends with neither ``response`` nor ``error`` when it succeeds (v3's response is Empty).
* ``GET /stt/v3/getRecognition?operation_id=…`` (or ``operationId``): a finished v3 operation's results,
  streamed as one ``{"result": <StreamingResponse>}`` per line; 400 FAILED_PRECONDITION while it runs,
  the operation's own error when it failed, 404 NOT_FOUND for unknown, expired, v2 or deleted results.
* ``DELETE /stt/v3/deleteRecognition?operation_id=…``: forget those results (``{}``); the operation
  stays readable.
* ``GET /operations/{id}``: the Operation (v2 or v3), while it runs and for ``retention_seconds`` after
  it finished (across restarts with ``state_dir``); 404 NOT_FOUND for unknown and expired ids.
* ``POST /speech/v1/stt:recognize?lang=..&format=lpcm|oggopus|mp3&sampleRateHertz=..``: the v1 synchronous
  API. The body is the audio (at most ``sync_max_bytes``, ``sync_max_seconds``, mono); the answer is
  ``{"result": "<text>"}``.
* ``GET /v1/languages``: the engine, its model and the language codes it recognises (``auto`` among them
  when it can detect the language); 503 while the workers start.
* ``GET /healthz`` (the process answers) and ``GET /readyz`` (the workers have loaded their engine).

Beside these, on its own port (``grpc_port``, 8089; 0 turns it off), a gRPC server answers SpeechKit's
streaming recognition, ``yandex.cloud.ai.stt.v2.SttService/StreamingRecognize``, and the standard health
service, from the same workers and API keys (:mod:`.streaming`). It starts and stops with the application.

The engine is ``settings.engine`` (Whisper when installed, else PocketSphinx). A Whisper model is resolved
and verified against its pinned digests by :func:`default_engine_factory` before any worker starts, so a
damaged or missing model stops ``serve`` at once with a message saying what to do.

With ``api_keys`` set, the recognition, operation and language routes want
``Authorization: Api-Key <key>``, as SpeechKit does for service accounts; IAM tokens (``Bearer``) are not
accepted, and v3's ``x-folder-id`` header is accepted and ignored. Any accepted key may read any
operation, so rotating keys does not lose operations in flight.

At most ``workers + queue_size`` recognitions are in flight; more are refused with 429 RESOURCE_EXHAUSTED
and a ``Retry-After``. Before the workers are up, recognition routes answer 503 UNAVAILABLE. A request body
is read, within ``body_timeout`` seconds, before a place is taken, so slow clients hold none; the bodies
being read share a budget of ``workers + queue_size`` full bodies.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, ParamSpec, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

import aiohttp
from aiohttp import web

from speechkit_operator.contracts.grpc import GrpcCode, code_for_http_status, error_body
from speechkit_operator.contracts.operation import OPERATION_ID_PATTERN, OPERATIONS_PATH
from speechkit_operator.contracts.stt_v2 import OPERATION_DESCRIPTION as V2_DESCRIPTION
from speechkit_operator.contracts.stt_v2 import SUBMIT_PATH, SYNC_PATH, AudioEncoding
from speechkit_operator.contracts.stt_v3 import (
    DELETE_RECOGNITION_PATH,
    GET_RECOGNITION_PATH,
    OPERATION_ID_PARAMETER,
    RECOGNIZE_FILE_PATH,
    encode_result,
)
from speechkit_operator.contracts.stt_v3 import OPERATION_DESCRIPTION as V3_DESCRIPTION
from speechkit_operator.logic.redaction import redact
from speechkit_operator.models.recognition import Chunk
from speechkit_operator.selfhosted.auth import Authenticator
from speechkit_operator.selfhosted.config import STREAMING_MODEL_BYTES, ServiceSettings
from speechkit_operator.selfhosted.engines import UnknownEngineError, available_engines
from speechkit_operator.selfhosted.engines.whisper_models import (
    WhisperModelError,
    model_weights_bytes,
    resolve_model,
)
from speechkit_operator.selfhosted.operations import (
    API_V2,
    API_V3,
    Clock,
    Operation,
    OperationStore,
    StoreError,
    utc_now,
)
from speechkit_operator.selfhosted.protocol import (
    AUTO_LANGUAGE,
    ApiError,
    LongRunningRequest,
    RecognizedChunk,
    check_language,
    format_seconds,
    invalid_argument,
    parse_json_object,
    parse_long_running_request,
    parse_sync_request,
    render_recognition_response,
    render_sync_result,
)
from speechkit_operator.selfhosted.protocol_v3 import (
    V3Submission,
    parse_recognize_file_request,
    render_results,
    resolve_language,
)
from speechkit_operator.selfhosted.streaming.server import StreamingServer, StreamingStartError
from speechkit_operator.selfhosted.workers import (
    Admission,
    Decoder,
    EngineFactory,
    EngineInfo,
    JobOutcome,
    PoolClosedError,
    RecognitionJob,
    RecognitionPool,
    Refinement,
    WorkerSetup,
    load_engine,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

logger = logging.getLogger(__name__)

OPERATION_PATH: Final = OPERATIONS_PATH + "{operation_id}"
LANGUAGES_PATH: Final = "/v1/languages"
#: Seconds a client should wait while the workers are starting.
STARTING_RETRY_AFTER: Final = 5
#: Seconds a client should wait when too many request bodies are being received at once.
BODIES_RETRY_AFTER: Final = 2
_READ_BLOCK: Final = 256 * 1024
#: Seconds the background tasks get, once the workers stopped, to record their outcome.
_TASK_GRACE: Final = 1.0
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_OPERATION_ID = re.compile(OPERATION_ID_PATTERN)
#: getRecognition's ``operation_id`` is at most this long (the proto's validation).
MAX_OPERATION_ID_LENGTH: Final = 50
#: Result lines read from the store at a time while getRecognition streams them.
RESULT_PAGE: Final = 256

#: HTTP status of a synchronous answer whose job failed with this code.
_STATUS_BY_CODE: Final[dict[GrpcCode, int]] = {
    GrpcCode.INVALID_ARGUMENT: 400,
    GrpcCode.NOT_FOUND: 404,
    GrpcCode.PERMISSION_DENIED: 403,
    GrpcCode.RESOURCE_EXHAUSTED: 429,
    GrpcCode.UNAVAILABLE: 503,
    GrpcCode.DEADLINE_EXCEEDED: 504,
}

S3ClientFactory = Callable[[], "S3Client"]
_P = ParamSpec("_P")
_T = TypeVar("_T")


# --- Reading audio from audio.uri ---------------------------------------------------------------------


class FetchError(Exception):
    """The audio could not be read; ``message`` never holds a query string or credentials."""

    def __init__(self, code: GrpcCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def safe_uri(uri: str) -> str:
    """``uri`` as it may be shown: no user info, query string or fragment."""
    try:
        parts = urlsplit(uri)
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
    except ValueError:
        return "the audio URI"
    return redact(urlunsplit((parts.scheme, host, parts.path, "", "")), limit=300)


def check_uri_allowed(uri: str, settings: ServiceSettings, *, field: str = "audio.uri") -> None:
    """400 INVALID_ARGUMENT unless ``allowed_hosts`` (http, https) or ``allowed_buckets`` (s3) lets the
    service read ``uri`` (the request's ``field``). The message names the host or bucket, never the path
    or query."""
    try:
        parts = urlsplit(uri)
        scheme = parts.scheme.lower()
        if scheme == "s3":
            bucket = parts.netloc
            if not settings.bucket_allowed(bucket):
                shown = redact(bucket, limit=100)
                raise invalid_argument(
                    f"{field}: reading bucket {shown} is not allowed by this service "
                    "(its administrator can add the bucket to SPEECHKIT_SERVE_ALLOWED_BUCKETS)"
                )
            return
        host = (parts.hostname or "").rstrip(".")
        port = parts.port or _DEFAULT_PORTS[scheme]
    except (ValueError, KeyError):
        raise invalid_argument(f"{field}: not a valid URI") from None
    if not settings.host_allowed(host, port):
        shown = redact(f"{host}:{port}", limit=300)
        raise invalid_argument(
            f"{field}: downloads from {shown} are not allowed by this service "
            "(its administrator can add the host to SPEECHKIT_SERVE_ALLOWED_HOSTS)"
        )


def _code_for_http_status(status: int) -> GrpcCode:
    if status in {401, 403}:
        return GrpcCode.PERMISSION_DENIED
    if status in {404, 410}:
        return GrpcCode.NOT_FOUND
    if status in {408, 429} or status >= 500:
        return GrpcCode.UNAVAILABLE
    return GrpcCode.INVALID_ARGUMENT


class AudioFetcher:
    """Reads ``http(s)://`` audio with aiohttp and ``s3://bucket/key`` audio with boto3 (in a thread)."""

    def __init__(
        self,
        settings: ServiceSettings,
        session: aiohttp.ClientSession,
        s3_client_factory: S3ClientFactory | None = None,
    ) -> None:
        self._settings = settings
        self._session = session
        self._s3_client_factory = s3_client_factory or functools.partial(make_s3_client, settings)
        self._s3_client: S3Client | None = None

    async def fetch(self, uri: str) -> bytes:
        scheme = urlsplit(uri).scheme.lower()
        data = await (self._fetch_s3(uri) if scheme == "s3" else self._fetch_http(uri))
        if not data:
            raise FetchError(GrpcCode.INVALID_ARGUMENT, f"The audio at {safe_uri(uri)} is empty")
        return data

    @staticmethod
    def _unreachable(uri: str) -> FetchError:
        """The one answer for every failure below HTTP (refused, reset, timed out, TLS, DNS), so that
        the answers do not tell an open port from a closed one."""
        return FetchError(
            GrpcCode.UNAVAILABLE,
            f"The audio could not be downloaded from {safe_uri(uri)}: the connection failed or timed out",
        )

    def _too_large(self, uri: str) -> FetchError:
        limit = self._settings.max_audio_bytes
        return FetchError(
            GrpcCode.INVALID_ARGUMENT, f"The audio at {safe_uri(uri)} is larger than {limit} bytes"
        )

    async def _fetch_http(self, uri: str) -> bytes:
        limit = self._settings.max_audio_bytes
        timeout = aiohttp.ClientTimeout(total=self._settings.fetch_timeout)
        try:
            async with self._session.get(uri, timeout=timeout, allow_redirects=False) as response:
                if 300 <= response.status < 400:
                    raise FetchError(
                        GrpcCode.INVALID_ARGUMENT,
                        f"The audio could not be downloaded from {safe_uri(uri)}: HTTP {response.status} "
                        "(redirects are not followed; give the final URI)",
                    )
                if response.status != 200:
                    raise FetchError(
                        _code_for_http_status(response.status),
                        f"The audio could not be downloaded from {safe_uri(uri)}: HTTP {response.status}",
                    )
                if response.content_length is not None and response.content_length > limit:
                    raise self._too_large(uri)
                data = bytearray()
                async for block in response.content.iter_chunked(_READ_BLOCK):
                    data += block
                    if len(data) > limit:
                        raise self._too_large(uri)
                return bytes(data)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            # aiohttp's messages may quote the whole URL: the log gets the kind of failure only.
            logger.info("Downloading %s failed: %s", safe_uri(uri), type(exc).__name__)
            raise self._unreachable(uri) from None
        except ValueError:  # a URL aiohttp or yarl cannot use
            raise FetchError(GrpcCode.INVALID_ARGUMENT, "audio.uri: not a valid URI") from None

    async def _fetch_s3(self, uri: str) -> bytes:
        parts = urlsplit(uri)
        bucket, key = parts.netloc, unquote(parts.path.lstrip("/"))
        return await asyncio.to_thread(self._read_s3_object, uri, bucket, key)

    def _read_s3_object(self, uri: str, bucket: str, key: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415 - only with s3:// URIs

        limit = self._settings.max_audio_bytes
        try:
            if self._s3_client is None:
                self._s3_client = self._s3_client_factory()
            response = self._s3_client.get_object(Bucket=bucket, Key=key)
            body = response["Body"]
            try:
                if response.get("ContentLength", 0) > limit:
                    raise self._too_large(uri)
                data = body.read(limit + 1)
            finally:
                body.close()
        except ClientError as exc:
            error_code = str(exc.response.get("Error", {}).get("Code", "Unknown"))
            code = GrpcCode.UNAVAILABLE
            if error_code in {"NoSuchKey", "NoSuchBucket", "404", "NotFound"}:
                code = GrpcCode.NOT_FOUND
            elif error_code in {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"}:
                code = GrpcCode.PERMISSION_DENIED
            raise FetchError(
                code, f"The audio could not be read from {safe_uri(uri)}: {redact(error_code, limit=64)}"
            ) from None
        except BotoCoreError as exc:
            logger.info("Reading %s failed: %s", safe_uri(uri), type(exc).__name__)
            raise FetchError(
                GrpcCode.UNAVAILABLE,
                f"The audio could not be read from {safe_uri(uri)}: the storage could not be reached",
            ) from None
        if len(data) > limit:
            raise self._too_large(uri)
        return data


def make_s3_client(settings: ServiceSettings) -> S3Client:
    import boto3  # noqa: PLC0415 - boto3 is slow to import and only needed for s3:// URIs
    from botocore.config import Config  # noqa: PLC0415

    config = Config(
        connect_timeout=min(settings.fetch_timeout, 30.0),
        read_timeout=settings.fetch_timeout,
        retries={"max_attempts": 3, "mode": "standard"},
        s3={"addressing_style": "path" if settings.storage_endpoint else "auto"},
    )
    access_key = settings.storage_access_key_id
    secret_key = settings.storage_secret_access_key
    return boto3.session.Session().client(
        "s3",
        endpoint_url=settings.storage_endpoint,
        region_name=settings.storage_region,
        aws_access_key_id=access_key.get_secret_value() if access_key else None,
        aws_secret_access_key=secret_key.get_secret_value() if secret_key else None,
        config=config,
    )


# --- The application ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Work:
    """An accepted async recognition: which API's results to store, the job, and exactly one source."""

    api: str
    job: RecognitionJob
    uri: str | None = None
    content: bytes | None = None


class Service:
    """Everything the handlers share; one per application."""

    def __init__(
        self,
        settings: ServiceSettings,
        pool: RecognitionPool,
        store: OperationStore,
        *,
        s3_client_factory: S3ClientFactory | None,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.store = store
        self.auth = Authenticator(settings.api_key_values)
        self.s3_client_factory = s3_client_factory
        self.fetcher: AudioFetcher | None = None
        #: The gRPC server of streaming recognition, once started (None when it is off).
        self.streaming: StreamingServer | None = None
        # A JSON body holds base64 content, 4 characters for every 3 bytes, plus the config.
        self.max_body = settings.inline_limit * 4 // 3 + 64 * 1024
        #: Bytes of request bodies being received at once, at most as many as ``capacity`` full bodies.
        self.body_budget = settings.capacity * self.max_body
        self.body_bytes = 0
        # SQLite is used from this one thread, never from the event loop.
        self._database = ThreadPoolExecutor(max_workers=1, thread_name_prefix="operations")
        self._tasks: set[asyncio.Task[Any]] = set()

    async def db(self, function: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """Run a store method (or anything else touching the database) in the database thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._database, functools.partial(function, *args, **kwargs))

    async def close_store(self) -> None:
        await self.db(self.store.close)
        self._database.shutdown(wait=True)

    def spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def cancel_tasks(self, grace: float = 0.0) -> None:
        """Cancel the background tasks still running after ``grace`` seconds; wait for them to end."""
        tasks = list(self._tasks)
        if tasks and grace > 0:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            tasks = list(pending)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def require_engine(self) -> EngineInfo:
        """The engine's languages; 503 UNAVAILABLE while the workers start."""
        info = self.pool.info
        if info is None or not self.pool.ready:
            raise ApiError(
                503,
                GrpcCode.UNAVAILABLE,
                "The recognition workers are starting; try again shortly",
                retry_after=STARTING_RETRY_AFTER,
            )
        return info

    # --- request bodies ---

    async def read_body(self, request: web.Request, limit: int, too_large: ApiError) -> bytes:
        """The request body, at most ``limit`` bytes, read within ``body_timeout`` seconds (else 408)
        and within the budget shared by all bodies being read (else 429)."""
        if request.content_length is not None and request.content_length > limit:
            raise too_large
        data = bytearray()
        timeout = self.settings.body_timeout
        try:
            async with asyncio.timeout(timeout):
                async for block in request.content.iter_chunked(_READ_BLOCK):
                    if self.body_bytes + len(block) > self.body_budget:
                        raise ApiError(
                            429,
                            GrpcCode.RESOURCE_EXHAUSTED,
                            "Too many requests are being received at once; try again later",
                            retry_after=BODIES_RETRY_AFTER,
                        )
                    self.body_bytes += len(block)
                    data += block
                    if len(data) > limit:
                        raise too_large
        except TimeoutError:
            raise ApiError(
                408,
                GrpcCode.DEADLINE_EXCEEDED,
                f"The request body did not arrive within {format_seconds(timeout)} s",
            ) from None
        finally:
            self.body_bytes -= len(data)
        return bytes(data)

    # --- the background part of an async recognition ---

    def v2_work(self, request: LongRunningRequest) -> Work:
        spec = request.spec
        job = RecognitionJob(
            language_code=spec.language_code,
            encoding=spec.audio_encoding,
            sample_rate_hertz=spec.decoder_sample_rate,
            channel_count=spec.decoder_channel_count,
            max_seconds=self.settings.max_audio_seconds,
            literature_text=spec.literature_text,
            profanity_filter=spec.profanity_filter,
            raw_results=spec.raw_results,
        )
        return Work(api=API_V2, job=job, uri=request.uri, content=request.content)

    def v3_work(self, request: V3Submission, language_code: str) -> Work:
        """v3's final text is the plain words with numbers in words (``raw_results``); with text
        normalization each utterance also gets its refinement: the engine's text, numbers in digits, or
        with ``literatureText`` its punctuated text. Profanity is masked in both."""
        refinement: Refinement | None = None
        if request.normalization_enabled:
            refinement = Refinement.LITERATURE if request.literature_text else Refinement.NORMALIZED
        job = RecognitionJob(
            language_code=language_code,
            encoding=request.decoder_encoding,
            sample_rate_hertz=request.decoder_sample_rate,
            channel_count=request.decoder_channel_count,
            max_seconds=self.settings.max_audio_seconds,
            profanity_filter=request.profanity_filter,
            raw_results=True,
            refinement=refinement,
        )
        return Work(api=API_V3, job=job, uri=request.uri, content=request.content)

    async def process(self, operation_id: str, work: Work, admission: Admission) -> None:
        with admission:
            await self.db(self.store.mark_running, operation_id)
            started = time.monotonic()
            try:
                audio = await self._audio(work)
                outcome = await self.pool.run(audio, work.job)
                del audio
            except FetchError as exc:
                logger.info("Operation %s failed: %s", operation_id, exc.message)
                await self.db(self.store.fail, operation_id, exc.code, exc.message)
                return
            except PoolClosedError:
                message = "The service is shutting down"
                await self.db(self.store.fail, operation_id, GrpcCode.UNAVAILABLE, message)
                return
            except Exception:
                logger.exception("Operation %s failed", operation_id)
                await self.db(self.store.fail, operation_id, GrpcCode.INTERNAL, "Internal error")
                return
            if outcome.failure is not None:
                logger.info("Operation %s failed: %s", operation_id, outcome.failure.message)
                await self.db(self.store.fail, operation_id, outcome.failure.code, outcome.failure.message)
            else:
                logger.info(
                    "Operation %s done: %.1f s of audio, %d channel(s), %d utterance(s) in %.1f s%s",
                    operation_id,
                    outcome.duration_seconds,
                    outcome.channels,
                    len(outcome.chunks),
                    outcome.processing_seconds,
                    _detected_languages(outcome.chunks),
                )
                wall_ms = round((time.monotonic() - started) * 1000)
                await self.db(self._complete, operation_id, work.api, outcome, wall_ms)

    def _complete(self, operation_id: str, api: str, outcome: JobOutcome, wall_ms: int) -> None:
        """Store the results, rendered once for the API that asked. In the database thread: the results
        of hours of audio take a while to build."""
        if api == API_V3:
            messages = render_results(
                outcome.chunks, duration_seconds=outcome.duration_seconds, wall_time_ms=wall_ms
            )
            self.store.complete_results(operation_id, (encode_result(message) for message in messages))
        else:
            self.store.complete(operation_id, render_recognition_response(outcome.chunks))

    async def _audio(self, work: Work) -> bytes:
        if work.content is not None:
            return work.content
        if work.uri is None or self.fetcher is None:
            raise RuntimeError("no audio source, or the service is not started")
        return await self.fetcher.fetch(work.uri)

    async def purge_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.purge_interval_seconds)
            try:
                dropped = await self.db(self.store.purge)
            except Exception:
                logger.exception("Expired operations could not be dropped")
                continue
            if dropped:
                logger.info("Dropped %d expired operation(s)", dropped)


def _detected_languages(chunks: tuple[Chunk, ...]) -> str:
    """``, detected language en-US`` for the log of an ``auto`` recognition (per channel when they differ)."""
    found: dict[str, set[str]] = {}
    for chunk in chunks:
        if isinstance(chunk, RecognizedChunk) and chunk.language_code:
            found.setdefault(chunk.channel, set()).add(chunk.language_code)
    if not found:
        return ""
    languages = {language for codes in found.values() for language in codes}
    if len(languages) == 1:
        return f", detected language {languages.pop()}"
    by_channel = "; ".join(
        f"channel {tag}: {', '.join(sorted(codes))}" for tag, codes in sorted(found.items())
    )
    return f", detected languages {by_channel}"


SERVICE: Final = web.AppKey("speechkit_service", Service)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error_response(error: ApiError) -> web.Response:
    headers = {"Retry-After": str(error.retry_after)} if error.retry_after is not None else None
    return web.json_response(error.body(), status=error.http_status, headers=headers)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return _error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = code_for_http_status(exc.status) or (
            GrpcCode.UNKNOWN if exc.status < 500 else GrpcCode.INTERNAL
        )
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        message = exc.reason
        if exc.status == 413:
            message = f"The request body is larger than {request.app[SERVICE].max_body} bytes"
        return web.json_response(error_body(code, message), status=exc.status, headers=headers)
    except asyncio.CancelledError:
        raise
    except Exception:
        logger.exception("Unexpected error in %s %s", request.method, request.path)
        return web.json_response(error_body(GrpcCode.INTERNAL, "Internal error"), status=500)


async def _submit(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    created_by = service.auth.authenticate(request.headers.get("Authorization"))
    engine = service.require_engine()
    # A full service refuses before reading the body. Otherwise the body is read first, under a
    # deadline, and a place is taken only once it is in: a slow client holds no place.
    service.pool.check_capacity()
    too_large = ApiError(
        413, GrpcCode.INVALID_ARGUMENT, f"The request body is larger than {service.max_body} bytes"
    )
    raw = await service.read_body(request, service.max_body, too_large)
    # A body may carry tens of megabytes of base64: parse and decode it off the event loop.
    parsed = await asyncio.to_thread(_parse_submission, raw, service.settings.inline_limit)
    del raw
    check_language(parsed.spec.language_code, engine.languages, field="config.specification.languageCode")
    if parsed.uri is not None:
        check_uri_allowed(parsed.uri, service.settings)
    operation = await _accept(service, created_by, service.v2_work(parsed), V2_DESCRIPTION)
    logger.info(
        "Operation %s accepted: %s, %s, %s",
        operation.id,
        parsed.spec.language_code,
        parsed.spec.audio_encoding.value,
        safe_uri(parsed.uri) if parsed.uri else f"{len(parsed.content or b'')} bytes inline",
    )
    return web.json_response(operation.to_json())


def _parse_submission(raw: bytes, max_content_bytes: int) -> LongRunningRequest:
    return parse_long_running_request(parse_json_object(raw), max_content_bytes=max_content_bytes)


async def _accept(service: Service, created_by: str, work: Work, description: str) -> Operation:
    """Take a place (or 429), create the operation and start its recognition in the background."""
    admission = service.pool.admit()
    try:
        operation = await service.db(service.store.create, created_by, description=description, api=work.api)
        service.spawn(service.process(operation.id, work, admission), name=f"recognize-{operation.id}")
    except BaseException:
        admission.release()
        raise
    return operation


async def _submit_v3(request: web.Request) -> web.Response:
    """``recognizeFileAsync``: like v2's submission (auth, readiness, admission before and after the body,
    allowed sources), with v3's request; ``x-folder-id`` is ignored."""
    service = request.app[SERVICE]
    created_by = service.auth.authenticate(request.headers.get("Authorization"))
    engine = service.require_engine()
    service.pool.check_capacity()
    too_large = ApiError(
        413, GrpcCode.INVALID_ARGUMENT, f"The request body is larger than {service.max_body} bytes"
    )
    raw = await service.read_body(request, service.max_body, too_large)
    parsed = await asyncio.to_thread(_parse_v3_submission, raw, service.settings.inline_limit)
    del raw
    options = parsed.options
    language = resolve_language(options.language_restriction, engine.languages)
    if parsed.uri is not None:
        check_uri_allowed(parsed.uri, service.settings, field="uri")
    operation = await _accept(service, created_by, service.v3_work(parsed, language), V3_DESCRIPTION)
    logger.info(
        "Operation %s accepted (v3): %s, %s, %s",
        operation.id,
        language,
        parsed.describe_audio(),
        safe_uri(parsed.uri) if parsed.uri else f"{len(parsed.content or b'')} bytes inline",
    )
    return web.json_response(operation.to_json())


def _parse_v3_submission(raw: bytes, max_content_bytes: int) -> V3Submission:
    return parse_recognize_file_request(parse_json_object(raw), max_content_bytes=max_content_bytes)


async def _v3_results_of(request: web.Request, *, failed_ok: bool = False) -> Operation:
    """The finished v3 operation whose results ``operation_id`` (or ``operationId``) names; else the
    error: 400 without an id, 404 NOT_FOUND for unknown, expired or v2 operations and deleted results,
    400 FAILED_PRECONDITION while it runs, the operation's own error when it failed (unless
    ``failed_ok``)."""
    service = request.app[SERVICE]
    service.auth.authenticate(request.headers.get("Authorization"))
    operation_id = (
        request.query.get(OPERATION_ID_PARAMETER) or request.query.get("operationId") or ""
    ).strip()
    if not operation_id:
        raise invalid_argument(f"{OPERATION_ID_PARAMETER}: required field is missing")
    if len(operation_id) > MAX_OPERATION_ID_LENGTH:
        raise invalid_argument(
            f"{OPERATION_ID_PARAMETER}: must be at most {MAX_OPERATION_ID_LENGTH} characters long"
        )
    operation: Operation | None = None
    if _OPERATION_ID.match(operation_id):
        operation = await service.db(service.store.get, operation_id)
    shown = operation_id if _OPERATION_ID.match(operation_id) else "with this id"
    if operation is None or operation.api != API_V3:
        raise ApiError(404, GrpcCode.NOT_FOUND, f"Operation {shown} not found")
    if operation.results_deleted:
        raise ApiError(
            404, GrpcCode.NOT_FOUND, f"The results of operation {shown} were deleted (deleteRecognition)"
        )
    if not operation.done:
        raise ApiError(
            400,
            GrpcCode.FAILED_PRECONDITION,
            f"Operation {shown} is not done yet: poll GET /operations/{shown} until it is done",
        )
    if operation.error is not None and not failed_ok:
        code = GrpcCode.from_wire(operation.error.get("code")) or GrpcCode.UNKNOWN
        message = operation.error.get("message")
        raise ApiError(code.http_status, code, message if isinstance(message, str) else "Recognition failed")
    return operation


async def _get_recognition(request: web.Request) -> web.StreamResponse:
    """The stored result lines, streamed a page at a time (an empty body when nothing was recognised)."""
    service = request.app[SERVICE]
    operation = await _v3_results_of(request)
    response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    after = -1
    try:
        while True:
            page = await service.db(service.store.result_lines, operation.id, after=after, limit=RESULT_PAGE)
            for after, line in page:  # noqa: B007 - the last number is the next page's start
                await response.write(line)
            if len(page) < RESULT_PAGE:
                break
        await response.write_eof()
    except ConnectionResetError:
        # The client went away mid-stream: nothing to answer, nothing to log as an error.
        logger.info("getRecognition of operation %s: the client disconnected", operation.id)
    return response


async def _delete_recognition(request: web.Request) -> web.Response:
    """Forget a finished v3 operation's results: ``{}``, for a failed operation too (it has none; later
    reads are 404 like those of deleted results). Otherwise the errors of getRecognition."""
    service = request.app[SERVICE]
    operation = await _v3_results_of(request, failed_ok=True)
    await service.db(service.store.delete_results, operation.id)
    logger.info("Results of operation %s deleted", operation.id)
    return web.json_response({})


async def _get_operation(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    service.auth.authenticate(request.headers.get("Authorization"))
    operation_id = request.match_info["operation_id"]
    operation: Operation | None = None
    if _OPERATION_ID.match(operation_id):
        operation = await service.db(service.store.get, operation_id)
    if operation is None:
        shown = operation_id if _OPERATION_ID.match(operation_id) else "with this id"
        raise ApiError(404, GrpcCode.NOT_FOUND, f"Operation {shown} not found")
    return web.json_response(operation.to_json())


async def _recognize_sync(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    settings = service.settings
    service.auth.authenticate(request.headers.get("Authorization"))
    engine = service.require_engine()
    spec = parse_sync_request(request.query)
    check_language(spec.language_code, engine.languages, field="lang")
    service.pool.check_capacity()
    limit = settings.sync_max_bytes
    too_large = invalid_argument(f"The audio is larger than {limit} bytes; this API takes at most {limit}")
    audio = await service.read_body(request, limit, too_large)
    if not audio:
        raise invalid_argument("The request body (the audio) is empty")
    if spec.audio_encoding is AudioEncoding.LINEAR16_PCM:
        seconds = len(audio) / (2 * spec.sample_rate_hertz)
        if seconds > settings.sync_max_seconds:
            raise invalid_argument(
                f"The audio is {format_seconds(seconds)} s long; "
                f"this API takes at most {format_seconds(settings.sync_max_seconds)} s"
            )
    job = RecognitionJob(
        language_code=spec.language_code,
        encoding=spec.audio_encoding,
        sample_rate_hertz=spec.decoder_sample_rate,
        channel_count=1 if spec.audio_encoding is AudioEncoding.LINEAR16_PCM else None,
        max_seconds=settings.sync_max_seconds,
        max_channels=1,
        profanity_filter=spec.profanity_filter,
        raw_results=spec.raw_results,
    )
    with service.pool.admit():
        try:
            outcome = await service.pool.run(audio, job)
        except PoolClosedError:
            raise ApiError(503, GrpcCode.UNAVAILABLE, "The service is shutting down") from None
    if outcome.failure is not None:
        status = _STATUS_BY_CODE.get(outcome.failure.code, 500)
        raise ApiError(status, outcome.failure.code, outcome.failure.message)
    return web.json_response(render_sync_result(outcome.chunks))


async def _languages(request: web.Request) -> web.Response:
    """What the loaded engine recognises: ``{"engine", "model", "languages", "detectsLanguage"}``."""
    service = request.app[SERVICE]
    service.auth.authenticate(request.headers.get("Authorization"))
    info = service.require_engine()
    return web.json_response(
        {
            "engine": info.name,
            "model": info.model,
            "streamingModel": service.settings.streaming_model_in_use,
            "languages": sorted(info.languages),
            "detectsLanguage": AUTO_LANGUAGE in info.languages,
        }
    )


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    info = service.pool.info
    if info is None or not service.pool.ready:
        body = error_body(GrpcCode.UNAVAILABLE, "The recognition workers are starting")
        return web.json_response(body, status=503)
    return web.json_response(
        {
            "status": "ready",
            "engine": info.name,
            "model": info.model,
            "streamingModel": service.settings.streaming_model_in_use,
            "languages": sorted(info.languages),
            "workers": service.pool.workers,
            "liveWorkers": service.pool.live_workers,
            "inFlight": service.pool.in_flight,
            "capacity": service.pool.capacity,
        }
    )


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    service = app[SERVICE]
    # The operations first: those a restart interrupted end with ABORTED before anyone can ask.
    recovered = await service.db(service.store.recover)
    if recovered:
        logger.warning(
            "%d operation(s) were in progress when the service stopped; they end with ABORTED", recovered
        )
    if service.store.path is not None:
        logger.info("Operations are kept in %s", service.store.path)
    session = aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=service.settings.fetch_timeout),
        headers={"User-Agent": "speechkit-operator-serve"},
    )
    service.fetcher = AudioFetcher(service.settings, session, service.s3_client_factory)
    streaming: StreamingServer | None = None
    tasks: list[asyncio.Task[Any]] = []
    try:
        # The gRPC port first: a port that cannot be bound stops the service before any worker starts.
        streaming = await _start_streaming(service)
        loop = asyncio.get_running_loop()
        tasks.append(loop.create_task(service.pool.start_until_ready(), name="start-workers"))
        tasks.append(loop.create_task(service.purge_forever(), name="purge-operations"))
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if streaming is not None:
            # Sessions in progress get their last final result while the workers still run.
            await streaming.stop(grace=service.settings.shutdown_timeout)
        # Running recognitions get up to shutdown_timeout to finish (and their operations to complete);
        # then the workers are stopped, and what is left (downloads, say) is cancelled.
        await service.pool.close()
        await service.cancel_tasks(grace=_TASK_GRACE)
        await session.close()
        await service.close_store()


async def _start_streaming(service: Service) -> StreamingServer | None:
    """The gRPC server of streaming recognition, unless ``grpc_port`` is 0."""
    settings = service.settings
    if not settings.grpc_port:
        logger.info("Streaming recognition (gRPC) is off: SPEECHKIT_SERVE_GRPC_PORT is 0")
        return None
    streaming = StreamingServer(
        service.pool,
        service.auth,
        host=settings.host,
        port=settings.grpc_port,
        max_sessions=settings.streaming_max_sessions,
    )
    await streaming.start()
    service.streaming = streaming
    return streaming


def create_app(
    settings: ServiceSettings,
    *,
    engine_factory: EngineFactory | None = None,
    decoder: Decoder | None = None,
    client_errors: tuple[type[Exception], ...] | None = None,
    clock: Clock = utc_now,
    s3_client_factory: S3ClientFactory | None = None,
) -> web.Application:
    """The service as an aiohttp application; the worker processes start with it.

    ``engine_factory`` builds the engine in each worker process, so it must be picklable (a module-level
    function or a ``functools.partial`` of one); the default is :func:`default_engine_factory`, which
    checks a Whisper model here and raises :class:`WhisperModelError` when it cannot be used.
    ``decoder`` replaces the audio decoder in the workers (also picklable), and ``client_errors`` the
    exceptions of the decoder and engine that mean bad input (INVALID_ARGUMENT, their message shown to the
    client); ``clock`` gives the operations' times; ``s3_client_factory`` builds the boto3 client for
    ``s3://`` URIs.
    """
    factory = engine_factory or default_engine_factory(settings)
    pool = RecognitionPool(
        WorkerSetup(
            engine_factory=factory,
            decoder=decoder,
            client_errors=client_errors,
            memory_limit_bytes=settings.worker_memory_bytes,
        ),
        workers=settings.workers,
        queue_size=settings.queue_size,
        start_method=settings.start_method,
        stop_timeout=settings.shutdown_timeout,
        timeout_seconds=settings.recognition_timeout_seconds,
        timeout_factor=settings.recognition_timeout_factor,
    )
    store = OperationStore(
        retention_seconds=settings.retention_seconds, clock=clock, path=settings.database_path
    )
    service = Service(settings, pool, store, s3_client_factory=s3_client_factory)
    # Bodies are read by the handlers themselves (Service.read_body), within their own limits.
    app = web.Application(middlewares=[_errors], client_max_size=service.max_body)
    app[SERVICE] = service
    app.router.add_post(SUBMIT_PATH, _submit)
    app.router.add_get(OPERATION_PATH, _get_operation)
    app.router.add_post(RECOGNIZE_FILE_PATH, _submit_v3)
    app.router.add_get(GET_RECOGNITION_PATH, _get_recognition)
    app.router.add_delete(DELETE_RECOGNITION_PATH, _delete_recognition)
    app.router.add_post(SYNC_PATH, _recognize_sync)
    app.router.add_get(LANGUAGES_PATH, _languages)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.cleanup_ctx.append(_lifecycle)
    return app


def run(settings: ServiceSettings) -> None:
    """Serve until SIGINT or SIGTERM; the caller configures logging."""
    if not settings.auth_enabled:
        logger.warning("No API keys configured (SPEECHKIT_SERVE_API_KEYS): every request is accepted")
    if not settings.allowed_hosts and not settings.allowed_buckets:
        logger.info(
            "No SPEECHKIT_SERVE_ALLOWED_HOSTS or SPEECHKIT_SERVE_ALLOWED_BUCKETS: audio.uri is refused, "
            "only inline audio.content is recognised"
        )
    if settings.state_dir is None:
        logger.warning("No SPEECHKIT_SERVE_STATE_DIR: operations live in memory and a restart forgets them")
    try:
        # A Whisper model is checked here, before any worker starts: a bad one ends serve at once.
        app = create_app(settings)
        _run_app(app, settings)
    except (StoreError, WhisperModelError, UnknownEngineError, StreamingStartError) as exc:
        # An unusable SPEECHKIT_SERVE_STATE_DIR, model or engine: one clear line rather than a traceback.
        logger.error("Cannot start: %s", exc)  # noqa: TRY400 - the message says it all
        raise SystemExit(1) from None


def default_engine_factory(settings: ServiceSettings) -> EngineFactory:
    """The picklable factory the workers build ``settings.engine`` with. For Whisper the model is resolved
    and verified here, in the calling process (raises :class:`WhisperModelError`), and the workers get
    its directory."""
    if "engine" in settings.model_fields_set:
        logger.info("Recognition engine: %s (SPEECHKIT_SERVE_ENGINE)", settings.engine)
    else:
        logger.info(
            "Recognition engine: %s (the default: whisper when speechkit-operator[whisper] is installed, "
            "else pocketsphinx; SPEECHKIT_SERVE_ENGINE chooses)",
            settings.engine,
        )
    known = available_engines()
    if settings.engine not in known:
        # Workers would fail to build it and be restarted for ever: refuse it before any starts.
        raise UnknownEngineError(settings.engine, known)
    if settings.engine != "whisper":
        return functools.partial(load_engine, settings.engine)
    from speechkit_operator.selfhosted.engines.whisper_engine import (  # noqa: PLC0415 - Whisper only
        load_whisper_engine,
        options_from_settings,
    )

    # A worker holds the streaming model beside the main one: each trial load (of a mounted or downloaded
    # model) counts the other, the streaming model at its nominal share before it is known.
    streaming = settings.streaming_model_in_use
    resolved = resolve_model(
        settings.whisper_model,
        settings.whisper_cache_dir,
        memory_budget=settings.worker_memory_bytes,
        beside_bytes=STREAMING_MODEL_BYTES if streaming is not None else 0,
    )
    logger.info("Whisper model %s verified in %.2f s", resolved.describe(), resolved.seconds)
    streaming_dir: Path | None = None
    if streaming is not None:
        try:
            fast = resolve_model(
                streaming,
                settings.whisper_cache_dir,
                memory_budget=settings.worker_memory_bytes,
                beside_bytes=model_weights_bytes(resolved.path),
            )
        except WhisperModelError as exc:
            raise WhisperModelError(
                f"SPEECHKIT_SERVE_STREAMING_WHISPER_MODEL={streaming}: {exc} (or set "
                "SPEECHKIT_SERVE_STREAMING_WHISPER_MODEL=main for the main model in streaming too)"
            ) from exc
        logger.info(
            "Whisper model %s for streaming verified in %.2f s (SPEECHKIT_SERVE_STREAMING_WHISPER_MODEL)",
            fast.describe(),
            fast.seconds,
        )
        streaming_dir = fast.path
    options = options_from_settings(settings, model_dir=resolved.path, streaming_model_dir=streaming_dir)
    factory: EngineFactory = functools.partial(load_whisper_engine, options)
    return factory


def _run_app(app: web.Application, settings: ServiceSettings) -> None:
    with contextlib.suppress(KeyboardInterrupt):
        web.run_app(
            app,
            host=settings.host,
            port=settings.port,
            access_log=None,
            shutdown_timeout=settings.shutdown_timeout,
            handler_cancellation=True,
            print=lambda *args: logger.info(
                "Serving SpeechKit-compatible recognition on %s:%d", settings.host, settings.port
            ),
        )
