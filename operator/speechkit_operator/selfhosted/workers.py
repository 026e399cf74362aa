"""Recognition in worker processes, and admission to them.

Decoding and recognition are CPU-bound, so they run in a :class:`~concurrent.futures.ProcessPoolExecutor`,
never on the event loop. Each worker process builds its engine once, in the pool's initializer, from a
picklable ``engine_factory`` (by default :func:`load_engine` with the configured engine name). A job is a
call of the module-level :func:`recognize` with picklable arguments (the audio bytes and a small
:class:`RecognitionJob`); it returns a picklable :class:`JobOutcome`, also for failures:

* audio that cannot be decoded, an unsupported language, audio that is too long -> INVALID_ARGUMENT with a
  message for the client;
* anything else -> INTERNAL with a generic message (the traceback goes to the service's log only).

:class:`RecognitionPool` owns the executor. It admits at most ``workers + queue_size`` jobs at once and
refuses more with 429 RESOURCE_EXHAUSTED and a ``Retry-After`` estimated from the queue; it replaces the
executor when a worker process dies (``BrokenProcessPool``) and runs the jobs that were in it once more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import multiprocessing
import os
import signal
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from typing import Any, Final, Literal, Protocol

from speechkit_operator.models.audio import AudioEncoding
from speechkit_operator.models.recognition import Chunk, Word
from speechkit_operator.selfhosted.protocol import MAX_CHANNELS, ApiError, GrpcCode, format_seconds

logger = logging.getLogger(__name__)

INTERNAL_MESSAGE: Final = "Internal error: the audio could not be recognized"
WORKER_LOST_MESSAGE: Final = "Internal error: the recognition worker stopped unexpectedly"
#: Longest audio a job takes unless told otherwise (SpeechKit's limit for async recognition).
DEFAULT_MAX_SECONDS: Final = 4 * 3600.0
#: First guess of a job's processing time, before any job finished.
INITIAL_JOB_SECONDS: Final = 10.0
MAX_RETRY_AFTER: Final = 3600


# --- What the worker side needs from the engine and the decoder (structural types) -----------------


class UtteranceLike(Protocol):
    @property
    def text(self) -> str: ...

    @property
    def words(self) -> Sequence[Word]: ...


class EngineLike(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def languages(self) -> frozenset[str]: ...

    def recognize(self, pcm: Any, language_code: str) -> Sequence[UtteranceLike]: ...


class DecodedLike(Protocol):
    @property
    def channels(self) -> Sequence[Any]: ...

    @property
    def duration_seconds(self) -> float: ...


class Decoder(Protocol):
    def __call__(
        self,
        data: bytes,
        *,
        encoding: AudioEncoding | None,
        sample_rate_hertz: int | None,
        channel_count: int | None,
        max_seconds: float,
    ) -> DecodedLike: ...


EngineFactory = Callable[[], EngineLike]


def load_engine(name: str) -> EngineLike:
    """The default engine factory (use it as ``functools.partial(load_engine, name)``)."""
    from speechkit_operator.selfhosted.engines.base import get_engine  # noqa: PLC0415 - worker side only

    engine: EngineLike = get_engine(name)
    return engine


def _default_decoder() -> Decoder:
    from speechkit_operator.selfhosted.decoding import decode_audio  # noqa: PLC0415 - worker side only

    decoder: Decoder = decode_audio
    return decoder


def _client_error_types() -> tuple[type[Exception], ...]:
    """Exceptions whose message is meant for the client (INVALID_ARGUMENT)."""
    from speechkit_operator.selfhosted.decoding import AudioDecodeError  # noqa: PLC0415
    from speechkit_operator.selfhosted.engines.base import UnsupportedLanguageError  # noqa: PLC0415

    return (AudioDecodeError, UnsupportedLanguageError)


# --- Jobs and their outcomes (all picklable) --------------------------------------------------------


@dataclass(frozen=True)
class WorkerSetup:
    """What every worker process starts from; pickled into each new process."""

    engine_factory: EngineFactory
    #: None: :func:`speechkit_operator.selfhosted.decoding.decode_audio`.
    decoder: Decoder | None = None
    #: Exceptions whose message is for the client (INVALID_ARGUMENT). None: the decoder's
    #: ``AudioDecodeError`` and the engines' ``UnsupportedLanguageError``.
    client_errors: tuple[type[Exception], ...] | None = None


@dataclass(frozen=True)
class RecognitionJob:
    language_code: str
    encoding: AudioEncoding | None
    sample_rate_hertz: int | None = None
    channel_count: int | None = None
    #: Longer audio is refused with INVALID_ARGUMENT (the decoder stops reading there).
    max_seconds: float = DEFAULT_MAX_SECONDS
    #: More channels are refused with INVALID_ARGUMENT (the synchronous API takes mono only).
    max_channels: int = MAX_CHANNELS


@dataclass(frozen=True)
class JobFailure:
    code: GrpcCode
    message: str


@dataclass(frozen=True)
class JobOutcome:
    #: One chunk per utterance, ``channel`` "1".."N".
    chunks: tuple[Chunk, ...] = ()
    channels: int = 0
    duration_seconds: float = 0.0
    #: Wall time the worker spent on the job.
    processing_seconds: float = 0.0
    failure: JobFailure | None = None
    #: A traceback for the service's log when the job failed unexpectedly; never shown to clients.
    log_detail: str | None = None


@dataclass(frozen=True)
class EngineInfo:
    name: str
    languages: frozenset[str]


class _WorkerState:
    def __init__(
        self, engine: EngineLike, decoder: Decoder, client_errors: tuple[type[Exception], ...]
    ) -> None:
        self.engine = engine
        self.decoder = decoder
        self.client_errors = client_errors


_worker: _WorkerState | None = None


def initialize_worker(setup: WorkerSetup) -> None:
    """The pool's initializer: build the engine once per process."""
    global _worker  # noqa: PLW0603 - one engine per worker process
    # Ctrl-C reaches the whole process group; the service, not its workers, decides when to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Parallelism comes from the worker processes: keep numeric libraries to one thread each.
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, "1")
    decoder = setup.decoder if setup.decoder is not None else _default_decoder()
    client_errors = setup.client_errors if setup.client_errors is not None else _client_error_types()
    engine = setup.engine_factory()
    # Load the model now, so that a ready service answers its first request at full speed.
    warm_up = getattr(engine, "warm_up", None)
    if callable(warm_up):
        warm_up()
    _worker = _WorkerState(engine, decoder, client_errors)


def _state() -> _WorkerState:
    if _worker is None:
        raise RuntimeError("the worker process was not initialised")
    return _worker


def describe_engine() -> EngineInfo:
    """Run in the pool: the engine's name and languages (and proof that the worker is up)."""
    engine = _state().engine
    return EngineInfo(name=str(engine.name), languages=frozenset(engine.languages))


def recognize(audio: bytes, job: RecognitionJob) -> JobOutcome:
    """Run in the pool: decode ``audio`` and recognise every channel. Never raises for bad input."""
    started = time.monotonic()
    state = _state()
    try:
        decoded = state.decoder(
            audio,
            encoding=job.encoding,
            sample_rate_hertz=job.sample_rate_hertz,
            channel_count=job.channel_count,
            max_seconds=job.max_seconds,
        )
        duration = float(decoded.duration_seconds)
        channels = list(decoded.channels)
        if duration > job.max_seconds:
            return _failed(
                started,
                GrpcCode.INVALID_ARGUMENT,
                f"The audio is {format_seconds(duration)} s long; "
                f"this API takes at most {format_seconds(job.max_seconds)} s",
            )
        if len(channels) > job.max_channels:
            return _failed(
                started,
                GrpcCode.INVALID_ARGUMENT,
                f"The audio has {len(channels)} channels; this API takes at most {job.max_channels}",
            )
        chunks: list[Chunk] = []
        for index, pcm in enumerate(channels, start=1):
            for utterance in state.engine.recognize(pcm, job.language_code):
                chunks.append(_chunk(str(index), utterance))
    except state.client_errors as exc:
        return _failed(started, GrpcCode.INVALID_ARGUMENT, _client_message(exc))
    except Exception:
        return _failed(started, GrpcCode.INTERNAL, INTERNAL_MESSAGE, log_detail=traceback.format_exc())
    return JobOutcome(
        chunks=tuple(chunks),
        channels=len(channels),
        duration_seconds=duration,
        processing_seconds=time.monotonic() - started,
    )


def _chunk(channel: str, utterance: UtteranceLike) -> Chunk:
    words = tuple(Word(text=str(w.text), start=float(w.start), end=float(w.end)) for w in utterance.words)
    return Chunk(channel=channel, text=str(utterance.text), words=words)


def _client_message(exc: BaseException) -> str:
    message = getattr(exc, "message", None)
    text = message if isinstance(message, str) and message else str(exc)
    return text or type(exc).__name__


def _failed(started: float, code: GrpcCode, message: str, *, log_detail: str | None = None) -> JobOutcome:
    return JobOutcome(
        failure=JobFailure(code, message),
        processing_seconds=time.monotonic() - started,
        log_detail=log_detail,
    )


# --- The event-loop side ------------------------------------------------------------------------------


class PoolClosedError(Exception):
    """The pool is shutting down."""


class Admission:
    """A place among the jobs in flight; give it back with :meth:`release` (or use ``with``)."""

    def __init__(self, pool: RecognitionPool) -> None:
        self._pool: RecognitionPool | None = pool

    def release(self) -> None:
        if self._pool is not None:
            self._pool._release()
            self._pool = None

    def __enter__(self) -> Admission:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class RecognitionPool:
    """The worker processes, bounded admission and recovery from dead workers. Use from one event loop."""

    def __init__(
        self,
        setup: WorkerSetup,
        *,
        workers: int,
        queue_size: int,
        start_method: Literal["forkserver", "spawn"] = "forkserver",
        stop_timeout: float = 2.0,
    ) -> None:
        if workers < 1 or queue_size < 0:
            raise ValueError("workers must be positive and queue_size not negative")
        self.workers = workers
        self.capacity = workers + queue_size
        self._setup = setup
        self._context = multiprocessing.get_context(start_method)
        if start_method == "forkserver":
            # The fork server imports this module once; its children start from that state.
            self._context.set_forkserver_preload([__name__])
        self._stop_timeout = stop_timeout
        self._executor: ProcessPoolExecutor | None = None
        self._generation = 0
        self._in_flight = 0
        self._info: EngineInfo | None = None
        self._closed = False
        self._job_seconds = INITIAL_JOB_SECONDS

    # --- state ---

    @property
    def info(self) -> EngineInfo | None:
        """The engine's name and languages once the workers are up; None before."""
        return self._info

    @property
    def ready(self) -> bool:
        return self._info is not None and not self._closed

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def stop_timeout(self) -> float:
        """Seconds running jobs get to finish when the pool closes."""
        return self._stop_timeout

    # --- startup ---

    async def start(self) -> EngineInfo:
        """Start the worker processes and wait until each one has built its engine."""
        if self._closed:
            raise PoolClosedError("the recognition pool is closed")
        executor, generation = self._current()
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.gather(
                *(loop.run_in_executor(executor, describe_engine) for _ in range(self.workers))
            )
        except BrokenProcessPool:
            await self._replace(generation)
            raise
        self._info = infos[0]
        return infos[0]

    async def start_until_ready(self, *, first_delay: float = 1.0, max_delay: float = 30.0) -> EngineInfo:
        """:meth:`start`, again and again with a growing pause, until the workers are up."""
        delay = first_delay
        while True:
            try:
                info = await self.start()
            except PoolClosedError:
                raise
            except Exception:
                logger.exception("The recognition workers could not start; trying again in %.0f s", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, max_delay)
            else:
                logger.info(
                    "%d recognition worker(s) ready: engine %s, languages %s",
                    self.workers,
                    info.name,
                    ", ".join(sorted(info.languages)),
                )
                return info

    def _current(self) -> tuple[ProcessPoolExecutor, int]:
        if self._closed:
            raise PoolClosedError("the recognition pool is closed")
        if self._executor is None:
            self._executor = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=self._context,
                initializer=initialize_worker,
                initargs=(self._setup,),
            )
        return self._executor, self._generation

    async def _replace(self, generation: int) -> None:
        """Drop the executor of ``generation`` when it is still the current one (it broke)."""
        if generation != self._generation or self._executor is None:
            return
        broken, self._executor = self._executor, None
        self._generation += 1
        logger.error("A recognition worker process died; starting new workers")
        await asyncio.to_thread(broken.shutdown, wait=False, cancel_futures=True)

    # --- admission ---

    def check_capacity(self) -> None:
        """:class:`ApiError` 429 RESOURCE_EXHAUSTED with ``Retry-After`` when no place is free (so a
        request body need not be read only to be refused)."""
        if self._in_flight >= self.capacity:
            raise ApiError(
                429,
                GrpcCode.RESOURCE_EXHAUSTED,
                f"Too many recognitions in progress ({self._in_flight}); try again later",
                retry_after=self.retry_after(),
            )

    def admit(self) -> Admission:
        """A place for one job, or :class:`ApiError` 429 (see :meth:`check_capacity`)."""
        self.check_capacity()
        self._in_flight += 1
        return Admission(self)

    def _release(self) -> None:
        self._in_flight = max(0, self._in_flight - 1)

    def retry_after(self) -> int:
        """Seconds until a place is likely to be free: the jobs ahead, shared among the workers."""
        ahead = max(1, self._in_flight - self.workers + 1)
        estimate = self._job_seconds * ahead / self.workers
        return max(1, min(MAX_RETRY_AFTER, math.ceil(estimate)))

    # --- jobs ---

    async def run(self, audio: bytes, job: RecognitionJob) -> JobOutcome:
        """Recognise ``audio`` in a worker. A job whose worker died is run once more in new workers; if it
        dies again it fails with INTERNAL. Raises :class:`PoolClosedError` when the pool is closing."""
        loop = asyncio.get_running_loop()
        outcome: JobOutcome | None = None
        for attempt in (1, 2):
            executor, generation = self._current()
            try:
                outcome = await loop.run_in_executor(executor, recognize, audio, job)
                break
            except BrokenProcessPool:
                if self._closed:
                    raise PoolClosedError("the recognition pool is closed") from None
                await self._replace(generation)
                if attempt == 2:
                    return JobOutcome(failure=JobFailure(GrpcCode.INTERNAL, WORKER_LOST_MESSAGE))
            except RuntimeError:
                if self._closed:  # "cannot schedule new futures after shutdown"
                    raise PoolClosedError("the recognition pool is closed") from None
                raise
            except asyncio.CancelledError:
                # A queued job cancelled by close(), not by cancelling the task awaiting it.
                task = asyncio.current_task()
                if self._closed and task is not None and not task.cancelling():
                    raise PoolClosedError("the recognition pool is closed") from None
                raise
        assert outcome is not None
        if outcome.log_detail:
            logger.error("Recognition failed in a worker:\n%s", outcome.log_detail)
        self._job_seconds = 0.8 * self._job_seconds + 0.2 * max(outcome.processing_seconds, 0.1)
        return outcome

    # --- shutdown ---

    async def close(self) -> None:
        """Stop the workers: queued jobs are cancelled, running ones get ``stop_timeout`` seconds."""
        self._closed = True
        executor, self._executor = self._executor, None
        if executor is None:
            return
        processes = list(executor._processes.values()) if executor._processes else []
        executor.shutdown(wait=False, cancel_futures=True)
        await asyncio.to_thread(_reap, processes, self._stop_timeout)


def _reap(processes: Sequence[BaseProcess], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.is_alive():
            process.terminate()
            process.join(1.0)
        if process.is_alive():  # pragma: no cover - SIGTERM is not ignored by workers
            process.kill()
            with contextlib.suppress(Exception):
                process.join(1.0)
