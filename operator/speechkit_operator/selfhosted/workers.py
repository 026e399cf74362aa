"""Recognition in worker processes, and admission to them.

Decoding and recognition are CPU-bound, so they run in worker processes, never on the event loop. Each
worker process builds its engine once, when it starts, from a picklable ``engine_factory`` (by default
:func:`load_engine` with the configured engine name), and then takes one job at a time over its own pipe:
a small :class:`RecognitionJob`, then the audio bytes. It answers with a picklable :class:`JobOutcome`,
also for failures:

* audio that cannot be decoded, an unsupported language, audio that is too long -> INVALID_ARGUMENT with a
  message for the client;
* a worker whose memory grew past its budget -> RESOURCE_EXHAUSTED;
* anything else -> INTERNAL with a generic message (the traceback goes to the service's log only).

The audio is decoded in windows (:meth:`~speechkit_operator.selfhosted.decoding.AudioStream.segments`) and
each piece is recognised before the next is decoded, so a worker's memory does not grow with the duration
or the channel count. Between pieces the worker reports how much audio it has decoded.

:class:`RecognitionPool` owns the processes. It admits at most ``workers + queue_size`` jobs at once and
refuses more with 429 RESOURCE_EXHAUSTED and a ``Retry-After`` estimated from the queue. Because every
worker has its own pipe, the pool knows which job each one runs:

* a worker that dies (the kernel's OOM killer sends SIGKILL) fails its own job only, and a new worker
  takes its place; the other jobs, running or waiting, carry on;
* a job that runs longer than ``max(timeout_seconds, timeout_factor * decoded audio seconds)`` ends with
  DEADLINE_EXCEEDED: its worker is killed and replaced, which frees its place.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import logging
import math
import multiprocessing
import os
import signal
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.context import ForkServerContext, SpawnContext
from multiprocessing.process import BaseProcess
from typing import Any, Final, Literal, Protocol

from speechkit_operator.contracts.grpc import GrpcCode
from speechkit_operator.contracts.stt_v2 import MAX_CHANNELS, AudioEncoding
from speechkit_operator.models.recognition import Chunk, Word
from speechkit_operator.selfhosted.numbers import has_speller, spell_numbers
from speechkit_operator.selfhosted.profanity import mask_text, mask_word
from speechkit_operator.selfhosted.protocol import AUTO_LANGUAGE, ApiError, RecognizedChunk, format_seconds

logger = logging.getLogger(__name__)

INTERNAL_MESSAGE: Final = "Internal error: the audio could not be recognized"
WORKER_LOST_MESSAGE: Final = "Internal error: the recognition worker stopped unexpectedly"
#: Longest audio a job takes unless told otherwise (SpeechKit's limit for async recognition).
DEFAULT_MAX_SECONDS: Final = 4 * 3600.0
#: First guess of a job's processing time, before any job finished.
INITIAL_JOB_SECONDS: Final = 10.0
MAX_RETRY_AFTER: Final = 3600
#: Pause before starting a replacement for a worker that could not start, doubling up to the maximum.
_RESTART_DELAY: Final = 1.0
_MAX_RESTART_DELAY: Final = 30.0
#: Seconds a stopped or killed worker process gets to be reaped.
_REAP_SECONDS: Final = 5.0


# --- What the worker side needs from the engine and the decoder (structural types) -----------------


class UtteranceLike(Protocol):
    """An engine's utterance (see :class:`~.engines.base.Utterance`); ``display_text``,
    ``language_code`` and ``language_probability`` are read when an engine's utterances have them."""

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


class SegmentLike(Protocol):
    """A piece of one channel (see :class:`speechkit_operator.selfhosted.decoding.PcmSegment`)."""

    @property
    def channel(self) -> int: ...

    @property
    def start_seconds(self) -> float: ...

    @property
    def end_seconds(self) -> float: ...

    @property
    def pcm(self) -> Any: ...


class DecodedLike(Protocol):
    """Audio ready to be decoded piece by piece (see :class:`~.decoding.AudioStream`)."""

    @property
    def channel_count(self) -> int: ...

    @property
    def duration_seconds(self) -> float | None:
        """Known once :meth:`segments` has been read to the end (a decoder may know it earlier)."""

    def segments(self) -> Iterator[SegmentLike]: ...


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
    from speechkit_operator.selfhosted.decoding import open_audio  # noqa: PLC0415 - worker side only

    decoder: Decoder = open_audio
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
    #: None: :func:`speechkit_operator.selfhosted.decoding.open_audio`.
    decoder: Decoder | None = None
    #: Exceptions whose message is for the client (INVALID_ARGUMENT). None: the decoder's
    #: ``AudioDecodeError`` and the engines' ``UnsupportedLanguageError``.
    client_errors: tuple[type[Exception], ...] | None = None
    #: A job whose worker grows beyond this resident memory ends with RESOURCE_EXHAUSTED (checked
    #: between pieces of audio); None: no check.
    memory_limit_bytes: int | None = None


class Refinement(enum.StrEnum):
    """What v3's text normalization adds to each utterance (:attr:`RecognitionJob.refinement`)."""

    #: The engine's normalised words and text, numbers in digits.
    NORMALIZED = "normalized"
    #: The same words; the engine's punctuated, cased text when it has one (``literatureText``).
    LITERATURE = "literature"


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
    #: Answer the engine's punctuated, cased text (when it has one) instead of the normalised words.
    literature_text: bool = False
    #: Mask profanity in the words and the text (see :mod:`.profanity`).
    profanity_filter: bool = False
    #: Write numbers in words (``rawResults``; see :mod:`.numbers`).
    raw_results: bool = False
    #: Also give each chunk a :attr:`~.protocol.RecognizedChunk.refinement` (v3's normalized text):
    #: the engine's words as it wrote them, masked with ``profanity_filter``.
    refinement: Refinement | None = None
    #: A streaming utterance: the engine's fast path for short audio (``recognize_short``) when it has
    #: one (Whisper: no padding to 30 s, greedy decoding), else ``recognize``.
    streaming: bool = False


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
    #: The engine's model, when it names one (Whisper: ``base``, a directory, ...).
    model: str | None = None
    #: Seconds the worker took to build the engine and load its model.
    load_seconds: float | None = None

    def describe(self) -> str:
        """``whisper (model base), 100 languages``, or the languages themselves when they are few."""
        model = f" (model {self.model})" if self.model else ""
        languages = sorted(self.languages)
        shown = f"languages {', '.join(languages)}" if len(languages) <= 8 else f"{len(languages)} languages"
        return f"{self.name}{model}, {shown}"


# Messages from a worker process to the pool, besides a JobOutcome.


@dataclass(frozen=True)
class _Ready:
    info: EngineInfo


@dataclass(frozen=True)
class _StartFailed:
    detail: str


@dataclass(frozen=True)
class _Progress:
    #: Seconds of audio decoded so far.
    seconds: float


class _WorkerState:
    def __init__(
        self,
        engine: EngineLike,
        decoder: Decoder,
        client_errors: tuple[type[Exception], ...],
        memory_limit_bytes: int | None,
    ) -> None:
        self.engine = engine
        self.decoder = decoder
        self.client_errors = client_errors
        self.memory_limit_bytes = memory_limit_bytes
        self.load_seconds: float | None = None


_worker: _WorkerState | None = None


def initialize_worker(setup: WorkerSetup) -> None:
    """Build the engine once per process."""
    global _worker  # noqa: PLW0603 - one engine per worker process
    # Ctrl-C reaches the whole process group; the service, not its workers, decides when to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Parallelism comes from the worker processes: keep numeric libraries to one thread each.
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, "1")
    decoder = setup.decoder if setup.decoder is not None else _default_decoder()
    client_errors = setup.client_errors if setup.client_errors is not None else _client_error_types()
    started = time.monotonic()
    engine = setup.engine_factory()
    # Load the model now, so that a ready service answers its first request at full speed.
    warm_up = getattr(engine, "warm_up", None)
    if callable(warm_up):
        warm_up()
    _worker = _WorkerState(engine, decoder, client_errors, setup.memory_limit_bytes)
    _worker.load_seconds = time.monotonic() - started


def _state() -> _WorkerState:
    if _worker is None:
        raise RuntimeError("the worker process was not initialised")
    return _worker


def describe_engine() -> EngineInfo:
    """The engine's name, model and languages (and proof that the worker is up)."""
    state = _state()
    engine = state.engine
    model = getattr(engine, "model_name", None)
    return EngineInfo(
        name=str(engine.name),
        languages=frozenset(engine.languages),
        model=str(model) if model else None,
        load_seconds=state.load_seconds,
    )


def worker_main(connection: Connection, setup: WorkerSetup) -> None:
    """A worker process: build the engine, say so, then recognise one job after another until the pool
    closes its end of the pipe."""
    try:
        initialize_worker(setup)
        info = describe_engine()
    except BaseException:
        with contextlib.suppress(OSError):
            connection.send(_StartFailed(traceback.format_exc()))
        return
    connection.send(_Ready(info))
    while True:
        try:
            job = connection.recv()
            if not isinstance(job, RecognitionJob):
                return
            # The audio comes as raw bytes, not pickled, so it is held once, not twice.
            audio = connection.recv_bytes()
        except (EOFError, OSError):
            return
        outcome = recognize(audio, job, progress=lambda seconds: connection.send(_Progress(seconds)))
        del audio
        try:
            connection.send(outcome)
        except OSError:
            return


class MemoryBudgetExceededError(Exception):
    """The worker grew past its memory budget."""


def resident_bytes() -> int | None:
    """This process's resident memory (Linux), or None when it cannot be read."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


def _check_memory(limit: int | None) -> None:
    if limit is None:
        return
    used = resident_bytes()
    if used is not None and used > limit:
        raise MemoryBudgetExceededError(used)


def recognize(
    audio: bytes, job: RecognitionJob, progress: Callable[[float], None] | None = None
) -> JobOutcome:
    """Decode ``audio`` piece by piece and recognise each piece. Never raises for bad input.

    ``progress`` is called with the seconds of audio decoded so far, before each piece is recognised.
    """
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
        too_long = _too_long(decoded.duration_seconds, job.max_seconds)
        if too_long is not None:
            return _failed(started, GrpcCode.INVALID_ARGUMENT, too_long)
        if decoded.channel_count > job.max_channels:
            return _too_many_channels(started, decoded.channel_count, job.max_channels)
        _check_memory(state.memory_limit_bytes)
        chunks: list[Chunk] = []
        channels = 0
        auto = job.language_code.strip().lower() == AUTO_LANGUAGE
        # With ``auto``, the language detected in a channel's first window with speech holds for the
        # channel's later windows: one recording is not switched to another language half-way.
        detected: dict[int, Detection] = {}
        engine_recognize = state.engine.recognize
        if job.streaming:
            engine_recognize = getattr(state.engine, "recognize_short", engine_recognize)
        for segment in decoded.segments():
            if segment.channel > job.max_channels:
                return _too_many_channels(started, segment.channel, job.max_channels)
            channels = max(channels, segment.channel)
            if progress is not None:
                progress(float(segment.end_seconds))
            known = detected.get(segment.channel)
            language = known.language_code if known is not None else job.language_code
            for utterance in engine_recognize(segment.pcm, language):
                found = getattr(utterance, "language_code", None)
                if auto and known is None and found:
                    probability = getattr(utterance, "language_probability", None)
                    known = Detection(str(found), None if probability is None else float(probability))
                    detected[segment.channel] = known
                offset = float(segment.start_seconds)
                chunks.append(_chunk(str(segment.channel), utterance, offset, job, known if auto else None))
            del segment
            _check_memory(state.memory_limit_bytes)
        duration = float(decoded.duration_seconds or 0.0)
        too_long = _too_long(duration, job.max_seconds)
        if too_long is not None:
            return _failed(started, GrpcCode.INVALID_ARGUMENT, too_long)
    except state.client_errors as exc:
        return _failed(started, GrpcCode.INVALID_ARGUMENT, _client_message(exc))
    except (MemoryBudgetExceededError, MemoryError):
        return _failed(started, GrpcCode.RESOURCE_EXHAUSTED, _memory_message(state.memory_limit_bytes))
    except Exception:
        return _failed(started, GrpcCode.INTERNAL, INTERNAL_MESSAGE, log_detail=traceback.format_exc())
    return JobOutcome(
        chunks=tuple(chunks),
        channels=max(channels, decoded.channel_count),
        duration_seconds=duration,
        processing_seconds=time.monotonic() - started,
    )


def _too_long(duration: float | None, max_seconds: float) -> str | None:
    if duration is None or duration <= max_seconds:
        return None
    return (
        f"The audio is {format_seconds(duration)} s long; "
        f"this API takes at most {format_seconds(max_seconds)} s"
    )


def _too_many_channels(started: float, channels: int, max_channels: int) -> JobOutcome:
    return _failed(
        started,
        GrpcCode.INVALID_ARGUMENT,
        f"The audio has {channels} channels; this API takes at most {max_channels}",
    )


def _memory_message(limit: int | None) -> str:
    budget = f" of {limit // (1024 * 1024)} MiB" if limit else ""
    return (
        f"Recognizing this audio needs more memory than the recognition worker's budget{budget} "
        "(SPEECHKIT_SERVE_WORKER_MEMORY_BYTES): split the audio into shorter files"
    )


@dataclass(frozen=True)
class Detection:
    """The language an engine detected in a channel (``auto``), and how sure it was."""

    language_code: str
    probability: float | None = None


def _chunk(
    channel: str,
    utterance: UtteranceLike,
    offset: float,
    job: RecognitionJob,
    detection: Detection | None = None,
) -> Chunk:
    """One utterance as a result chunk, its times from the start of the audio. The text is the
    normalised words, or with ``literature_text`` the engine's display text (when it has one); with
    ``raw_results`` numbers are written in words (see :mod:`.numbers`) and with ``profanity_filter``
    profane words are masked, in both; with the ``auto`` language the chunk carries the language
    detected in its channel (``detection``)."""
    language = detection.language_code if detection is not None else job.language_code
    flat = tuple(
        word
        for w in utterance.words
        for word in _result_words(
            str(w.text), round(offset + float(w.start), 3), round(offset + float(w.end), 3), job, language
        )
    )
    display = getattr(utterance, "display_text", None)
    if job.literature_text and display:
        text = spell_numbers(str(display), language) if job.raw_results else str(display)
        text = mask_text(text) if job.profanity_filter else text
    elif job.profanity_filter or (job.raw_results and has_speller(language)):
        text = " ".join(word.text for word in flat)
    else:
        text = str(utterance.text)
    refinement = _refinement(channel, utterance, offset, job) if job.refinement is not None else None
    if detection is not None or refinement is not None:
        return RecognizedChunk(
            channel=channel,
            text=text,
            words=flat,
            language_code=detection.language_code if detection is not None else None,
            language_probability=detection.probability if detection is not None else None,
            refinement=refinement,
        )
    return Chunk(channel=channel, text=text, words=flat)


def _refinement(channel: str, utterance: UtteranceLike, offset: float, job: RecognitionJob) -> Chunk:
    """v3's normalized text of an utterance: the engine's words (numbers as it wrote them, in digits for
    Whisper) and its text, or with :attr:`Refinement.LITERATURE` its punctuated, cased text when it has
    one; masked with ``profanity_filter``."""
    mask = mask_word if job.profanity_filter else str
    words = tuple(
        Word(mask(str(w.text)), start=round(offset + float(w.start), 3), end=round(offset + float(w.end), 3))
        for w in utterance.words
    )
    display = getattr(utterance, "display_text", None)
    text = str(display) if job.refinement is Refinement.LITERATURE and display else str(utterance.text)
    return Chunk(channel=channel, text=mask_text(text) if job.profanity_filter else text, words=words)


def _result_words(text: str, start: float, end: float, job: RecognitionJob, language: str) -> list[Word]:
    """One engine word as result words: a number spelled out with ``raw_results`` becomes several, which
    share its time evenly; each masked with ``profanity_filter``."""
    spelled = spell_numbers(text, language).split() if job.raw_results else [text]
    spelled = spelled or [text]
    mask = mask_word if job.profanity_filter else str
    if len(spelled) == 1:
        return [Word(mask(spelled[0]), start=start, end=end)]
    share = (end - start) / len(spelled)
    return [
        Word(mask(word), start=round(start + i * share, 3), end=round(start + (i + 1) * share, 3))
        for i, word in enumerate(spelled)
    ]


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


class WorkerStartError(Exception):
    """A worker process could not build its engine."""


class Admission:
    """A place among the jobs in flight; give it back with :meth:`release` (or use ``with``)."""

    def __init__(self, pool: RecognitionPool) -> None:
        self._pool: RecognitionPool | None = pool

    def release(self) -> None:
        if self._pool is not None:
            self._pool._release_place()
            self._pool = None

    def __enter__(self) -> Admission:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class _Worker:
    """One worker process and the pool's end of its pipe."""

    def __init__(self, process: BaseProcess, connection: Connection, number: int) -> None:
        self.process = process
        self.connection = connection
        self.number = number
        #: Running a job (its pipe and process are then the job thread's alone).
        self.busy = False
        self.retired = False

    def alive(self) -> bool:
        return not self.retired and self.process.exitcode is None


@dataclass(frozen=True)
class _Lost:
    """The worker process ended while running the job."""

    exitcode: int | None


@dataclass(frozen=True)
class _TimedOut:
    limit_seconds: float


class RecognitionPool:
    """The worker processes, bounded admission, deadlines and recovery from dead workers. Use from one
    event loop."""

    def __init__(
        self,
        setup: WorkerSetup,
        *,
        workers: int,
        queue_size: int,
        start_method: Literal["forkserver", "spawn"] = "forkserver",
        stop_timeout: float = 2.0,
        timeout_seconds: float = 120.0,
        timeout_factor: float = 2.0,
    ) -> None:
        if workers < 1 or queue_size < 0:
            raise ValueError("workers must be positive and queue_size not negative")
        if timeout_seconds <= 0 or timeout_factor < 0:
            raise ValueError("timeout_seconds must be positive and timeout_factor not negative")
        self.workers = workers
        self.capacity = workers + queue_size
        self._setup = setup
        self._context: ForkServerContext | SpawnContext = (
            multiprocessing.get_context("forkserver")
            if start_method == "forkserver"
            else multiprocessing.get_context("spawn")
        )
        if start_method == "forkserver":
            # The fork server imports this module once; its children start from that state.
            self._context.set_forkserver_preload([__name__])
        self._stop_timeout = stop_timeout
        self._timeout_seconds = timeout_seconds
        self._timeout_factor = timeout_factor
        # Blocking pipe work (sending audio, waiting for a result or a start) runs in these threads:
        # at most one per worker process, starting or busy, plus replacements.
        self._threads = ThreadPoolExecutor(max_workers=2 * workers + 2, thread_name_prefix="recognition")
        self._live: set[_Worker] = set()  # started and ready
        self._processes: set[BaseProcess] = set()  # every process not yet reaped, starting ones too
        self._idle: collections.deque[_Worker] = collections.deque()
        self._waiters: collections.deque[asyncio.Future[_Worker]] = collections.deque()
        # Jobs that may wait (streaming's partial results): a free worker goes to them only when no other
        # job waits, so a final result never queues behind a stale partial one.
        self._low_waiters: collections.deque[asyncio.Future[_Worker]] = collections.deque()
        self._jobs: set[asyncio.Task[JobOutcome]] = set()
        self._replacements: set[asyncio.Task[None]] = set()
        self._numbers = 0
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
    def live_workers(self) -> int:
        return len(self._live)

    @property
    def idle_workers(self) -> int:
        """Workers free right now (a job given to :meth:`run` now starts without waiting)."""
        return sum(1 for worker in self._idle if worker.alive())

    @property
    def waiting_jobs(self) -> int:
        """Jobs waiting for a worker, the low-priority ones left out."""
        return sum(1 for waiter in self._waiters if not waiter.done())

    @property
    def stop_timeout(self) -> float:
        """Seconds running jobs get to finish when the pool closes."""
        return self._stop_timeout

    def deadline_for(self, audio_seconds: float) -> float:
        """Seconds a job may run once ``audio_seconds`` of its audio have been decoded."""
        return max(self._timeout_seconds, self._timeout_factor * audio_seconds)

    # --- starting and replacing workers ---

    async def start(self) -> EngineInfo:
        """Start the missing worker processes and wait until each one has built its engine."""
        if self._closed:
            raise PoolClosedError("the recognition pool is closed")
        missing = self.workers - len(self._live)
        starts = [self._start_worker() for _ in range(missing)]
        results = await asyncio.gather(*starts, return_exceptions=True)
        errors = [result for result in results if isinstance(result, BaseException)]
        for result in results:
            if isinstance(result, tuple):
                worker, info = result
                self._info = self._info or info
                self._hand_over(worker)
        if errors:
            raise errors[0]
        if self._info is None:  # pragma: no cover - at least one worker runs when none failed
            raise WorkerStartError("no recognition worker is running")
        return self._info

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
                loaded = f", loaded in {info.load_seconds:.1f} s" if info.load_seconds is not None else ""
                logger.info(
                    "%d recognition worker(s) ready: engine %s%s", self.workers, info.describe(), loaded
                )
                return info

    async def _start_worker(self) -> tuple[_Worker, EngineInfo]:
        if self._closed:
            raise PoolClosedError("the recognition pool is closed")
        self._numbers += 1
        ours, theirs = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=worker_main,
            args=(theirs, self._setup),
            name=f"recognition-worker-{self._numbers}",
            daemon=True,
        )
        self._processes.add(process)
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._threads, process.start)
        finally:
            theirs.close()
        worker = _Worker(process, ours, self._numbers)
        message = await loop.run_in_executor(self._threads, _wait_for_start, worker)
        if isinstance(message, _Ready) and not self._closed:
            self._live.add(worker)
            with contextlib.suppress(NotImplementedError, ValueError, OSError):
                loop.add_reader(process.sentinel, self._exited, worker)
            return worker, message.info
        self._processes.discard(process)
        ours.close()
        await loop.run_in_executor(self._threads, _reap, [process], 0.0)
        if self._closed:
            raise PoolClosedError("the recognition pool is closed")
        detail = message.detail if isinstance(message, _StartFailed) else "the process ended"
        raise WorkerStartError(f"a recognition worker could not start:\n{detail}")

    def _exited(self, worker: _Worker) -> None:
        """The process of ``worker`` ended; a busy worker's job thread notices by itself."""
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(worker.process.sentinel)
        if not worker.busy and not worker.retired:
            with contextlib.suppress(ValueError):
                self._idle.remove(worker)
            logger.error(
                "Recognition worker %d stopped while idle (exit code %s); starting another",
                worker.number,
                worker.process.exitcode,
            )
            self._retire(worker)

    def _retire(self, worker: _Worker) -> None:
        """Forget ``worker`` (its process has ended or is to end) and start another unless closing."""
        if worker.retired:
            return
        worker.retired = True
        self._live.discard(worker)
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(worker.process.sentinel)
        # Closing our end ends an idle worker: its recv() sees the end of the pipe.
        worker.connection.close()
        loop = asyncio.get_running_loop()
        reaping = loop.run_in_executor(self._threads, _reap, [worker.process], _REAP_SECONDS)
        reaping.add_done_callback(lambda _: self._processes.discard(worker.process))
        if not self._closed:
            task = loop.create_task(self._replace(), name="replace-recognition-worker")
            self._replacements.add(task)
            task.add_done_callback(self._replacements.discard)

    async def _replace(self) -> None:
        delay = _RESTART_DELAY
        while not self._closed:
            try:
                worker, _ = await self._start_worker()
            except PoolClosedError:
                return
            except Exception:
                logger.exception("A new recognition worker could not start; trying again in %.0f s", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_RESTART_DELAY)
            else:
                logger.info("Recognition worker %d started in place of one that stopped", worker.number)
                self._hand_over(worker)
                return

    # --- idle workers ---

    def _hand_over(self, worker: _Worker) -> None:
        """``worker`` is free: give it to the first job waiting for one, or keep it idle."""
        worker.busy = False
        if self._closed or not worker.alive():
            self._retire(worker)
            return
        for waiters in (self._waiters, self._low_waiters):
            if waiters is self._low_waiters and self.idle_workers < self.reserved_workers:
                break  # the last idle worker is kept for a job that may not wait
            while waiters:
                waiter = waiters.popleft()
                if not waiter.done():
                    worker.busy = True
                    waiter.set_result(worker)
                    return
        self._idle.append(worker)

    @property
    def reserved_workers(self) -> int:
        """Idle workers a low-priority job leaves alone: with two or more workers one stays free for a
        job that may not wait (a streaming final), so partial results never hold every worker."""
        return 1 if self.workers >= 2 else 0

    async def _acquire(self, *, low_priority: bool = False) -> _Worker:
        waiters = self._low_waiters if low_priority else self._waiters
        while True:
            if self._closed:
                raise PoolClosedError("the recognition pool is closed")
            while self._idle and not (low_priority and self.idle_workers <= self.reserved_workers):
                worker = self._idle.popleft()
                if worker.alive():
                    worker.busy = True
                    return worker
                self._retire(worker)
            waiter: asyncio.Future[_Worker] = asyncio.get_running_loop().create_future()
            waiters.append(waiter)
            try:
                worker = await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    self._hand_over(waiter.result())
                raise
            finally:
                with contextlib.suppress(ValueError):
                    waiters.remove(waiter)
            return worker

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

    def _release_place(self) -> None:
        self._in_flight = max(0, self._in_flight - 1)

    def retry_after(self) -> int:
        """Seconds until a place is likely to be free: the jobs ahead, shared among the workers."""
        ahead = max(1, self._in_flight - self.workers + 1)
        estimate = self._job_seconds * ahead / self.workers
        return max(1, min(MAX_RETRY_AFTER, math.ceil(estimate)))

    # --- jobs ---

    async def run(
        self,
        audio: bytes,
        job: RecognitionJob,
        *,
        low_priority: bool = False,
        on_start: Callable[[], None] | None = None,
    ) -> JobOutcome:
        """Recognise ``audio`` in a worker, when one is free. A worker that dies fails this job only
        (INTERNAL, or RESOURCE_EXHAUSTED when it was killed) and is replaced; a job past its deadline ends
        with DEADLINE_EXCEEDED. Raises :class:`PoolClosedError` when the pool is closing.

        A ``low_priority`` job gets a worker only when no other job waits for one, and never the last
        idle one of two or more (streaming's partial results, which a final result must not queue
        behind).

        Cancelling the caller does not stop the job: it finishes (or meets its deadline) in the background
        and its worker is then free again; a job still waiting for a worker is dropped. ``on_start`` is
        called when the job has its worker."""
        worker = await self._acquire(low_priority=low_priority)
        if on_start is not None:
            on_start()
        task = asyncio.get_running_loop().create_task(self._dispatch(worker, audio, job))
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)
        return await asyncio.shield(task)

    async def _dispatch(self, worker: _Worker, audio: bytes, job: RecognitionJob) -> JobOutcome:
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(self._threads, self._exchange, worker, audio, job)
        except BaseException:
            self._retire(worker)
            raise
        if isinstance(result, JobOutcome):
            self._hand_over(worker)
            if result.log_detail:
                logger.error("Recognition failed in a worker:\n%s", result.log_detail)
            self._job_seconds = 0.8 * self._job_seconds + 0.2 * max(result.processing_seconds, 0.1)
            return result
        self._retire(worker)
        if self._closed:
            raise PoolClosedError("the recognition pool is closed")
        if isinstance(result, _TimedOut):
            logger.error(
                "Recognition worker %d was stopped: its job ran past its deadline of %s s",
                worker.number,
                format_seconds(result.limit_seconds),
            )
            return JobOutcome(
                failure=JobFailure(
                    GrpcCode.DEADLINE_EXCEEDED,
                    f"The recognition took longer than its limit of {format_seconds(result.limit_seconds)} s "
                    "(SPEECHKIT_SERVE_RECOGNITION_TIMEOUT_SECONDS, or RECOGNITION_TIMEOUT_FACTOR times the "
                    "audio's duration) and was stopped",
                )
            )
        logger.error(
            "Recognition worker %d died while recognising (exit code %s); starting another",
            worker.number,
            result.exitcode,
        )
        return JobOutcome(failure=_lost_failure(result.exitcode))

    def _exchange(self, worker: _Worker, audio: bytes, job: RecognitionJob) -> JobOutcome | _Lost | _TimedOut:
        """In a thread: send the job, wait for its outcome (taking progress reports), or for the worker's
        end, or for the deadline (then kill the worker)."""
        connection, process = worker.connection, worker.process
        try:
            connection.send(job)
            connection.send_bytes(audio)
        except (OSError, ValueError):
            return _Lost(_exitcode(process))
        started = time.monotonic()
        limit = self.deadline_for(0.0)
        while True:
            remaining = started + limit - time.monotonic()
            if remaining <= 0:
                process.kill()
                process.join(_REAP_SECONDS)
                return _TimedOut(limit)
            ready = wait([connection, process.sentinel], timeout=remaining)
            if not ready:
                continue
            # Data first: an outcome sent just before the process ended still counts.
            if connection in ready:
                try:
                    message = connection.recv()
                except (EOFError, OSError):
                    return _Lost(_exitcode(process))
                except Exception:  # an outcome that cannot be unpickled
                    logger.exception("A recognition worker sent an unreadable answer")
                    process.kill()
                    return _Lost(_exitcode(process))
                if isinstance(message, _Progress):
                    limit = max(limit, self.deadline_for(message.seconds))
                    continue
                if isinstance(message, JobOutcome):
                    return message
                process.kill()  # pragma: no cover - a worker only sends the messages above
                return _Lost(_exitcode(process))  # pragma: no cover
            if not connection.poll():
                return _Lost(_exitcode(process))

    # --- shutdown ---

    async def close(self) -> None:
        """Stop the workers: jobs waiting for one fail with :class:`PoolClosedError`, running ones get
        ``stop_timeout`` seconds to finish, then every worker process is stopped."""
        if self._closed:
            return
        self._closed = True
        for waiter in [*self._waiters, *self._low_waiters]:
            if not waiter.done():
                waiter.set_exception(PoolClosedError("the recognition pool is closed"))
        self._waiters.clear()
        self._low_waiters.clear()
        for task in list(self._replacements):
            task.cancel()
        idle, self._idle = list(self._idle), collections.deque()
        for worker in idle:
            self._retire(worker)
        jobs = list(self._jobs)
        if jobs:
            await asyncio.wait(jobs, timeout=self._stop_timeout)
        processes = list(self._processes)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._threads, _reap, processes, 0.0)
        if jobs:
            await asyncio.gather(*jobs, return_exceptions=True)
        await asyncio.gather(*self._replacements, return_exceptions=True)
        for worker in list(self._live):
            self._retire(worker)
        # Every process has ended by now: the threads left only reap them.
        await asyncio.to_thread(self._threads.shutdown, wait=True)


def _lost_failure(exitcode: int | None) -> JobFailure:
    if exitcode == -signal.SIGKILL:
        return JobFailure(
            GrpcCode.RESOURCE_EXHAUSTED,
            "The recognition worker was killed (SIGKILL), which is how the kernel stops a process that "
            "runs out of memory: split the audio into shorter files, or give the service more memory",
        )
    shown = "unknown" if exitcode is None else str(exitcode)
    return JobFailure(GrpcCode.INTERNAL, f"{WORKER_LOST_MESSAGE} (exit code {shown})")


def _exitcode(process: BaseProcess) -> int | None:
    process.join(_REAP_SECONDS)
    return process.exitcode


def _wait_for_start(worker: _Worker) -> _Ready | _StartFailed | None:
    """In a thread: the worker's first message, or None when its process ends first."""
    connection, process = worker.connection, worker.process
    while True:
        ready = wait([connection, process.sentinel])
        if connection in ready:
            try:
                message = connection.recv()
            except (EOFError, OSError):
                return None
            if isinstance(message, _Ready | _StartFailed):
                return message
            return None  # pragma: no cover - a worker starts with one of the two
        if ready and not connection.poll():
            return None


def _reap(processes: Sequence[BaseProcess], timeout: float) -> None:
    """Wait up to ``timeout`` for ``processes`` to end, then terminate (and at last kill) the rest."""
    deadline = time.monotonic() + timeout
    for process in processes:
        with contextlib.suppress(ValueError, AssertionError):
            process.join(max(0.0, deadline - time.monotonic()))
    for process in processes:
        with contextlib.suppress(ValueError, AssertionError):
            if process.is_alive():
                process.terminate()
                process.join(1.0)
            if process.is_alive():  # pragma: no cover - SIGTERM is not ignored by workers
                process.kill()
                process.join(1.0)
