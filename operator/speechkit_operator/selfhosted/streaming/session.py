"""One ``StreamingRecognize`` session: the config, the audio, the limits, end-pointing and the results.

The first message must carry the config (:func:`parse_config`: SpeechKit's defaults, INVALID_ARGUMENT
naming the field for anything this service cannot do); every later one carries audio. The audio is
decoded as it arrives (:mod:`.decoding`, off the event loop), cut into utterances (:mod:`.endpointing`),
and each utterance is recognised in the worker pool (:mod:`.recognition`):

* a **final** result (``final`` and ``end_of_utterance``) for each utterance once it has ended, in order;
  the last one when the client ends its stream;
* with ``partialResults``, **partial** results (``final=false``) of the utterance so far while it goes on,
  each after at least ``partial_interval_seconds`` (0.6 s) of new audio.

Finals and partial results are recognised side by side, each kind one at a time: a final starts as soon
as its utterance has ended (on another worker than a partial result in progress, with priority over the
partial results of every session) and is sent after that partial result, never before, when a worker
recognises it; a partial result still waiting for a worker (low priority: behind every other job of the
pool, the async APIs' too) is dropped when the final is ready, so a final never waits for one. A partial
result due while the previous one runs waits, replaced by newer ones; it is dropped once its utterance
has ended, or when no worker is free (the service is behind). A partial result is never sent before the
final results of the utterances before it. Every utterance of at least twice the interval gets one
partial result of its first half (3 s at most) beside its final when a worker is free then, even when the
audio comes much faster than real time.

The session ends with an error (:class:`SessionError`) when the client breaks a limit
(:class:`SessionLimits`: 5 s between messages, empty ones not counted; 5 minutes of audio; 10 MB; and
ours, 6 minutes from the start; all INVALID_ARGUMENT with a message naming the limit, the code SpeechKit
documents for a client's mistakes), sends a second config, or sends audio that is not what it declared
(INVALID_ARGUMENT): then it takes no more audio, ends the utterance in progress and sends the finals of
the audio within the limits (for at most ``drain_seconds``) before the error. It also ends when a final
recognition fails (its code: INTERNAL only for the service's own failures), or when the service stops
(UNAVAILABLE, after the final of the utterance in progress). With ``single_utterance`` it ends (OK) after
the first utterance's final.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
from google.protobuf.duration_pb2 import Duration
from numpy.typing import NDArray

from speechkit_operator.contracts.grpc import GrpcCode
from speechkit_operator.contracts.stt_streaming import (
    DEFAULT_LANGUAGE,
    DEFAULT_MODEL,
    DEFAULT_SAMPLE_RATE,
    MAX_MESSAGE_INTERVAL_SECONDS,
    MAX_SESSION_AUDIO_SECONDS,
    MAX_SESSION_BYTES,
    SUPPORTED_PCM_RATES,
)
from speechkit_operator.contracts.stt_streaming import stt_service_pb2 as pb
from speechkit_operator.models.recognition import Word
from speechkit_operator.selfhosted.protocol import ApiError, check_language, format_seconds
from speechkit_operator.selfhosted.streaming.decoding import (
    TARGET_RATE,
    AudioLimitError,
    LpcmDecoder,
    OggOpusDecoder,
    StreamDecodeError,
    StreamDecoder,
)
from speechkit_operator.selfhosted.streaming.endpointing import (
    Endpointer,
    EndpointerSettings,
    EndReason,
    Event,
    UtteranceEnded,
    UtterancePaused,
    UtteranceResumed,
    UtteranceStarted,
)
from speechkit_operator.selfhosted.streaming.recognition import (
    Recognition,
    RecognitionFailedError,
    Recognizer,
    TextOptions,
)

__all__ = [
    "SessionError",
    "SessionLimits",
    "SessionSummary",
    "StreamingSession",
    "StreamingSpec",
    "parse_config",
]

logger = logging.getLogger(__name__)

_SPEC: Final = "config.specification"
_ENCODING = pb.RecognitionSpec.AudioEncoding
#: Audio messages read ahead of the decoder (the client is held back beyond that).
_READ_AHEAD: Final = 16
#: Messages waiting are decoded together up to this size (about 2 s of LPCM at 16 kHz).
_COALESCE_BYTES: Final = 64 * 1024

ReadRequest = Callable[[], Awaitable["pb.StreamingRecognitionRequest | None"]]
"""The next message of the client, or None once it has ended its stream."""
WriteResponse = Callable[["pb.StreamingRecognitionResponse"], Awaitable[None]]


class SessionError(Exception):
    """The session ends with this status; ``message`` is for the client."""

    def __init__(self, code: GrpcCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _invalid(message: str) -> SessionError:
    return SessionError(GrpcCode.INVALID_ARGUMENT, message)


@dataclass(frozen=True)
class SessionLimits:
    """SpeechKit's documented limits of one session (smaller ones in tests)."""

    message_interval_seconds: float = MAX_MESSAGE_INTERVAL_SECONDS
    audio_seconds: float = MAX_SESSION_AUDIO_SECONDS
    audio_bytes: int = MAX_SESSION_BYTES
    #: The longest a session may last, from its start to the end of its audio (ours, not SpeechKit's: a
    #: client that sends a byte every few seconds would hold a session for ever): its audio at real time
    #: and a minute more.
    session_seconds: float = MAX_SESSION_AUDIO_SECONDS + 60.0
    #: After a client breaks a limit, how long the finals of the audio within the limits may take before
    #: the session ends with the limit's error all the same.
    drain_seconds: float = 60.0

    @property
    def audio_samples(self) -> int:
        """The 5 minutes, in samples at 16 kHz."""
        return int(self.audio_seconds * TARGET_RATE)

    def interval_error(self) -> SessionError:
        limit = format_seconds(self.message_interval_seconds)
        return _invalid(
            f"No message arrived for {limit} s: a streaming session allows at most {limit} s between "
            "messages (send the audio at about real time, e.g. 400 ms of it every 400 ms)"
        )

    def duration_error(self) -> SessionError:
        return _invalid(
            f"The session's audio is longer than the limit of {_span(self.audio_seconds)} per session: "
            "start a new session for the rest"
        )

    def session_time_error(self) -> SessionError:
        return _invalid(
            f"The session lasted longer than {_span(self.session_seconds)}: a session carries at most "
            f"{_span(self.audio_seconds)} of audio, sent at about real time; start a new session for the rest"
        )

    def size_error(self) -> SessionError:
        return _invalid(
            f"The session's audio is larger than the limit of {_size(self.audio_bytes)} "
            f"({self.audio_bytes} bytes) per session: start a new session for the rest"
        )


def _span(seconds: float) -> str:
    return f"{format_seconds(seconds / 60)} minutes" if seconds >= 60 else f"{format_seconds(seconds)} s"


def _size(count: int) -> str:
    mib = count / (1024 * 1024)
    return f"{format_seconds(mib)} MB" if mib >= 1 else f"{count} bytes"


# --- The config ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamingSpec:
    """``config.specification`` with SpeechKit's defaults filled in."""

    language_code: str = DEFAULT_LANGUAGE
    model: str = DEFAULT_MODEL
    profanity_filter: bool = False
    partial_results: bool = False
    encoding: str = "OGG_OPUS"
    sample_rate_hertz: int = DEFAULT_SAMPLE_RATE
    raw_results: bool = False
    literature_text: bool = False
    single_utterance: bool = False

    def text_options(self) -> TextOptions:
        return TextOptions(
            language_code=self.language_code,
            profanity_filter=self.profanity_filter,
            raw_results=self.raw_results,
            literature_text=self.literature_text,
        )

    def decoder(self, max_samples: int | None = None) -> StreamDecoder:
        if self.encoding == "LINEAR16_PCM":
            return LpcmDecoder(self.sample_rate_hertz, max_samples)
        return OggOpusDecoder(max_samples)

    def describe(self) -> str:
        audio = (
            f"LINEAR16_PCM {self.sample_rate_hertz} Hz" if self.encoding == "LINEAR16_PCM" else self.encoding
        )
        partial = ", partial results" if self.partial_results else ""
        single = ", single utterance" if self.single_utterance else ""
        return f"{self.language_code}, {audio}{partial}{single}"


def parse_config(request: pb.StreamingRecognitionRequest, languages: Collection[str]) -> StreamingSpec:
    """The session's config from its first message; INVALID_ARGUMENT (naming the field) for audio before
    the config and for anything this service does not do: MP3 or an unknown encoding, a sample rate other
    than 8000, 16000 or 48000 Hz for LINEAR16_PCM, more than one channel, a language the engine lacks."""
    kind = request.WhichOneof("streaming_request")
    if kind != "config":
        came = "audio_content came first" if kind else "the first message was empty"
        raise _invalid(f"The first message of a session must carry the config (config.specification); {came}")
    spec = request.config.specification
    language = spec.language_code.strip() or DEFAULT_LANGUAGE
    try:
        check_language(language, languages, field=f"{_SPEC}.languageCode")
    except ApiError as exc:
        raise _invalid(exc.message) from None
    if spec.audio_encoding in (_ENCODING.AUDIO_ENCODING_UNSPECIFIED, _ENCODING.OGG_OPUS):
        encoding = "OGG_OPUS"
    elif spec.audio_encoding == _ENCODING.LINEAR16_PCM:
        encoding = "LINEAR16_PCM"
    else:
        name = _ENCODING.Name(spec.audio_encoding) if spec.audio_encoding in _ENCODING.values() else None
        given = name or f"the unknown value {spec.audio_encoding}"
        raise _invalid(
            f"{_SPEC}.audioEncoding: {given} is not supported for streaming recognition; "
            "use LINEAR16_PCM or OGG_OPUS"
        )
    rate = spec.sample_rate_hertz or DEFAULT_SAMPLE_RATE
    if encoding == "LINEAR16_PCM" and rate not in SUPPORTED_PCM_RATES:
        raise _invalid(
            f"{_SPEC}.sampleRateHertz: unsupported value {spec.sample_rate_hertz} for LINEAR16_PCM; "
            "expected 8000, 16000 or 48000"
        )
    if spec.audio_channel_count not in (0, 1):
        raise _invalid(
            f"{_SPEC}.audioChannelCount: streaming recognition takes one channel, "
            f"got {spec.audio_channel_count}"
        )
    return StreamingSpec(
        language_code=language,
        model=spec.model.strip() or DEFAULT_MODEL,
        profanity_filter=spec.profanity_filter,
        partial_results=spec.partial_results,
        encoding=encoding,
        # Ogg Opus carries its own rate (the declared one is ignored, as the async API ignores it).
        sample_rate_hertz=rate if encoding == "LINEAR16_PCM" else DEFAULT_SAMPLE_RATE,
        raw_results=spec.raw_results,
        literature_text=spec.literature_text,
        single_utterance=spec.single_utterance,
    )


# --- The session -----------------------------------------------------------------------------------------


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


_NO_AUDIO: Final = np.zeros(0, dtype=np.int16)
_END: Final = _Marker("end of stream")
_TOO_LARGE: Final = _Marker("too many bytes")
_Incoming = pb.StreamingRecognitionRequest | _Marker


@dataclass
class _Utterance:
    number: int
    #: Samples (16 kHz) from the start of the session.
    start: int
    end: int | None = None
    partial_sent: bool = False
    #: Its partial result in progress (the newest): waiting for a worker, or (``partial_started``) on one.
    partial_task: asyncio.Task[None] | None = None
    partial_started: bool = False
    #: That partial result is the guaranteed one (a final's priority: its final waits for it).
    partial_guaranteed: bool = False
    final_sent: bool = False
    #: The recognition started when the utterance paused (see :class:`_Speculation`).
    speculation: _Speculation | None = None

    @property
    def partial_running(self) -> bool:
        return self.partial_task is not None and not self.partial_task.done()


@dataclass
class _Speculation:
    """The utterance so far, recognised as soon as it paused (:class:`UtterancePaused`, 150 ms of
    silence) with a final's priority: when the end-pointer then ends it (250 ms later), the result is
    its final at once, instead of a recognition that only starts then. When speech resumes first, the
    result is sent as a partial result (it is one: the utterance so far), so no work is lost."""

    pcm: NDArray[np.int16]
    done: asyncio.Event = field(default_factory=asyncio.Event)
    recognition: Recognition | None = None
    #: Speech came back (or the utterance was cut for length): not the final.
    resumed: bool = False


@dataclass
class _Final:
    utterance: _Utterance
    pcm: NDArray[np.int16]
    #: Where its guaranteed partial result ends (samples from the utterance's start), when it is long
    #: enough for one.
    partial_end: int | None
    #: The loop's time when the end of the utterance was decided.
    decided_at: float
    #: Its recognition, started when it paused, if speech did not resume since.
    speculation: _Speculation | None = None


@dataclass
class SessionSummary:
    """What a session did, for the log (and the tests)."""

    spec: StreamingSpec | None = None
    audio_bytes: int = 0
    audio_seconds: float = 0.0
    utterances: int = 0
    finals: int = 0
    partials: int = 0
    partials_dropped: int = 0
    #: Seconds from the end of each utterance being decided to its final result being sent.
    final_latencies: list[float] = field(default_factory=list)

    def describe(self) -> str:
        latency = ""
        if self.final_latencies:
            ordered = sorted(self.final_latencies)
            latency = (
                f", final results {ordered[len(ordered) // 2] * 1000:.0f} ms (median) and "
                f"{ordered[-1] * 1000:.0f} ms (max) after the end of an utterance"
            )
        return (
            f"{self.audio_seconds:.1f} s of audio ({self.audio_bytes} bytes), "
            f"{self.utterances} utterance(s), "
            f"{self.finals} final and {self.partials} partial result(s) sent, "
            f"{self.partials_dropped} partial(s) dropped{latency}"
        )


class StreamingSession:
    """Runs one session (see the module); :meth:`run` once, :meth:`stop` to end it early."""

    def __init__(
        self,
        recognizer: Recognizer,
        languages: Collection[str],
        *,
        limits: SessionLimits | None = None,
        endpointer: EndpointerSettings | None = None,
        partial_interval_seconds: float = 0.6,
        executor: Executor | None = None,
    ) -> None:
        self._recognizer = recognizer
        self._languages = languages
        self.limits = limits or SessionLimits()
        self._endpointer_settings = endpointer or EndpointerSettings(sample_rate=TARGET_RATE)
        self._partial_interval = max(1, round(partial_interval_seconds * TARGET_RATE))
        self._executor = executor
        self.summary = SessionSummary()
        self._queue: asyncio.Queue[_Incoming] = asyncio.Queue(maxsize=_READ_AHEAD)
        self._stopping = asyncio.Event()
        self._final_ready = asyncio.Event()
        #: Utterances whose final result has been dealt with (sent, or nothing to send): a partial result
        #: of a later one waits for them.
        self._finals_done = 0
        self._order = asyncio.Condition()
        self._partial_ready = asyncio.Event()
        self._last_arrival = 0.0
        self._spec = StreamingSpec()
        self._endpointer = Endpointer(self._endpointer_settings)
        # The audio of the open utterance (and the pre-roll before the next): samples from _buffer_start.
        self._buffer = np.zeros(0, dtype=np.int16)
        self._buffer_start = 0
        self._total = 0
        self._utterance: _Utterance | None = None
        self._utterances = 0
        self._partial_due = 0
        self._pending_partial: _Utterance | None = None
        self._finals: collections.deque[_Final] = collections.deque()
        self._input_done = False
        self._speculations: set[asyncio.Task[None]] = set()
        self._partial_tasks: set[asyncio.Task[None]] = set()
        self._write: WriteResponse = _no_write
        self._started_at = 0.0
        #: A message taken from the queue while audio was put together, for the next round.
        self._held: _Incoming | None = None
        #: With ``single_utterance``: the first utterance has ended (no more audio is taken).
        self._single_done = False
        #: This session's recognitions with a final's priority that wait for a worker.
        self._own_waiting = 0

    @property
    def spec(self) -> StreamingSpec:
        return self._spec

    def stop(self) -> None:
        """The service is stopping: take no more audio, send the final of the utterance in progress, then
        end with UNAVAILABLE."""
        self._stopping.set()

    async def run(self, read: ReadRequest, write: WriteResponse) -> SessionSummary:
        """Read the client's messages and write the results until the client ends its stream (answers the
        summary) or the session fails (:class:`SessionError`)."""
        loop = asyncio.get_running_loop()
        self._last_arrival = self._started_at = loop.time()
        reader = loop.create_task(self._read_all(read), name="streaming-read")
        recognizing: asyncio.Task[None] | None = None
        try:
            first = await self._next(None)
            if first is _END:
                raise _invalid("The stream ended before its first message, the config")
            if isinstance(first, _Marker):
                raise self._marker_error(first)
            self._spec = parse_config(first, self._languages)
            self.summary.spec = self._spec
            logger.info("Streaming session started: %s", self._spec.describe())
            decoder = self._spec.decoder(self.limits.audio_samples)
            recognizing = loop.create_task(self._recognize_all(write), name="streaming-recognize")
            error = await self._take_audio(decoder, recognizing)
            stopped = self._stopping.is_set()
            self._input_done = True
            self._final_ready.set()
            if error is not None:
                reader.cancel()
                await self._drain(recognizing)
                raise error
            await recognizing
            if stopped:
                raise SessionError(
                    GrpcCode.UNAVAILABLE, "The service is shutting down: start a new session to go on"
                )
            return self.summary
        finally:
            for task in (reader, recognizing):
                if task is not None and not task.done():
                    task.cancel()
            await asyncio.gather(
                *(task for task in (reader, recognizing) if task is not None), return_exceptions=True
            )

    async def _drain(self, recognizing: asyncio.Task[None]) -> None:
        """After a client's error: the finals of the audio within the limits, for at most
        ``drain_seconds`` (a recognition's failure then is only logged: the client's error is the one
        it gets)."""
        done, _ = await asyncio.wait({recognizing}, timeout=self.limits.drain_seconds)
        if not done:
            logger.info(
                "The finals of a session that broke a limit took longer than %s s: not all were sent",
                format_seconds(self.limits.drain_seconds),
            )
        elif not recognizing.cancelled() and (failure := recognizing.exception()) is not None:
            logger.info("A session that broke a limit also failed to recognise its audio: %s", failure)

    # --- input ---

    async def _read_all(self, read: ReadRequest) -> None:
        loop = asyncio.get_running_loop()
        received = 0
        while True:
            request = await read()
            if request is None:
                self._last_arrival = loop.time()
                await self._queue.put(_END)
                return
            kind = request.WhichOneof("streaming_request")
            if kind == "config" or request.audio_content:
                # An empty message is not an arrival: it must not keep a session open for ever.
                self._last_arrival = loop.time()
            if kind == "audio_content":
                size = len(request.audio_content)
                self.summary.audio_bytes = received + size
                if received + size > self.limits.audio_bytes:
                    # The audio up to the limit is taken (its finals are sent), then the limit's error.
                    allowed = self.limits.audio_bytes - received
                    if allowed > 0:
                        await self._queue.put(
                            pb.StreamingRecognitionRequest(audio_content=request.audio_content[:allowed])
                        )
                    await self._queue.put(_TOO_LARGE)
                    return
                received += size
            await self._queue.put(request)

    async def _next(self, recognizing: asyncio.Task[None] | None) -> _Incoming:
        """The next message; the limit's error when none arrives in time; the recognitions' error when
        they failed; :data:`_END` also when the service is stopping."""
        loop = asyncio.get_running_loop()
        while True:
            if recognizing is not None and recognizing.done():
                recognizing.result()  # raises its SessionError
            if self._stopping.is_set():
                return _END
            now = loop.time()
            session_left = self._started_at + self.limits.session_seconds - now
            if session_left <= 0:
                raise self.limits.session_time_error()
            if self._held is not None:
                held, self._held = self._held, None
                return held
            if not self._queue.empty():
                return self._queue.get_nowait()
            interval_left = self._last_arrival + self.limits.message_interval_seconds - now
            if interval_left <= 0:
                raise self.limits.interval_error()
            remaining = min(interval_left, session_left)
            getting = loop.create_task(self._queue.get())
            stopping = loop.create_task(self._stopping.wait())
            waiting: set[asyncio.Future[Any]] = {getting, stopping}
            if recognizing is not None:
                waiting.add(recognizing)
            try:
                await asyncio.wait(waiting, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopping.cancel()
                if not getting.done():
                    getting.cancel()
            if getting.done() and not getting.cancelled():
                return getting.result()

    def _marker_error(self, marker: _Marker) -> SessionError:
        if marker is _TOO_LARGE:
            return self.limits.size_error()
        return _invalid(f"Unexpected {marker}")  # pragma: no cover - every marker is handled

    async def _take_audio(
        self, decoder: StreamDecoder, recognizing: asyncio.Task[None]
    ) -> SessionError | None:
        """Decode and end-point the audio until the client's stream ends (None), the service stops it
        (None), or the client breaks a rule: then its error, once the audio within the limits has been
        taken and the utterance in progress ended (its final is sent before the error). Raises the
        recognitions' failure."""
        loop = asyncio.get_running_loop()
        error: SessionError | None = None
        while error is None:
            try:
                message = await self._next(recognizing)
            except SessionError as exc:
                if recognizing.done():
                    raise
                error = exc
                break
            if message is _END:
                break
            if isinstance(message, _Marker):
                error = self._marker_error(message)
                break
            if message.WhichOneof("streaming_request") == "config":
                error = _invalid("A session takes one config, in its first message; a second one came")
                break
            data = self._coalesce(message.audio_content)
            if not data:
                continue
            pcm, events, error = await loop.run_in_executor(self._executor, self._decode, decoder, data)
            self._take(pcm, events)
            if self._single_done:
                return None
        if error is not None:
            self._take(_NO_AUDIO, self._endpointer.finish())
            return error
        pcm, events, error = await loop.run_in_executor(self._executor, self._finish, decoder)
        self._take(pcm, events)
        return error

    def _coalesce(self, data: bytes) -> bytes:
        """``data`` and the audio of the messages already waiting behind it, as one piece: a client that
        sends many small messages quickly costs one decoding (and one trip to a thread) for them all."""
        pieces = [data]
        size = len(data)
        while self._held is None and not self._queue.empty() and size < _COALESCE_BYTES:
            item = self._queue.get_nowait()
            if isinstance(item, _Marker) or item.WhichOneof("streaming_request") != "audio_content":
                self._held = item
                break
            pieces.append(item.audio_content)
            size += len(item.audio_content)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _decode(
        self, decoder: StreamDecoder, data: bytes
    ) -> tuple[NDArray[np.int16], list[Event], SessionError | None]:
        """In a thread: the samples of ``data`` within the limits, the end-pointer's decisions on them,
        and the error when ``data`` breaks a rule (the audio before it is taken all the same)."""
        error: SessionError | None = None
        try:
            pcm = decoder.feed(data)
        except AudioLimitError as exc:
            pcm, error = exc.pcm, self.limits.duration_error()
        except StreamDecodeError as exc:
            pcm, error = exc.pcm, _invalid(exc.message)
        allowed = max(0, self.limits.audio_samples - self._total)
        if len(pcm) > allowed:
            pcm, error = pcm[:allowed], error or self.limits.duration_error()
        return pcm, self._endpointer.feed(pcm) if len(pcm) else [], error

    def _finish(self, decoder: StreamDecoder) -> tuple[NDArray[np.int16], list[Event], SessionError | None]:
        error: SessionError | None = None
        try:
            pcm = decoder.finish()
        except StreamDecodeError as exc:
            pcm, error = exc.pcm, _invalid(exc.message)
        pcm = pcm[: max(0, self.limits.audio_samples - self._total)]
        events = self._endpointer.feed(pcm) if len(pcm) else []
        return pcm, [*events, *self._endpointer.finish()], error

    def _take(self, pcm: NDArray[np.int16], events: list[Event]) -> None:
        """On the event loop: keep the new samples, act on the end-pointer's events, ask for a partial
        result when one is due."""
        if len(pcm):
            self._buffer = np.concatenate([self._buffer, pcm])
            self._total += len(pcm)
            self.summary.audio_seconds = self._total / TARGET_RATE
        now = asyncio.get_running_loop().time()
        for event in events:
            if isinstance(event, UtteranceStarted):
                self._utterances += 1
                self.summary.utterances = self._utterances
                self._utterance = _Utterance(self._utterances, event.start)
                self._partial_due = event.start + self._partial_interval
            elif isinstance(event, UtterancePaused) and self._utterance is not None:
                self._speculate(self._utterance, self._slice(event.start, event.end).copy())
            elif isinstance(event, UtteranceResumed) and self._utterance is not None:
                self._drop_speculation(self._utterance)
            elif isinstance(event, UtteranceEnded) and self._utterance is not None:
                if event.reason is EndReason.LENGTH:
                    self._drop_speculation(self._utterance)
                self._end_utterance(self._utterance, event, now)
                if self._spec.single_utterance:
                    self._single_done = True  # its final ends the session; the rest is not recognised
                    break
        utterance = self._utterance
        if self._spec.partial_results and utterance is not None and self._total >= self._partial_due:
            self._pending_partial = utterance
            self._partial_due = self._total + self._partial_interval
        if utterance is None:
            # Between utterances only the pre-roll of the next one is needed.
            keep = self._endpointer_settings.samples(self._endpointer_settings.preroll_seconds)
            self._trim(self._total - keep - self._endpointer_settings.frame_samples)
        self._final_ready.set()
        self._partial_ready.set()

    def _speculate(self, utterance: _Utterance, pcm: NDArray[np.int16]) -> None:
        self._drop_speculation(utterance)
        speculation = _Speculation(pcm)
        utterance.speculation = speculation
        task = asyncio.get_running_loop().create_task(
            self._run_speculation(utterance, speculation), name="streaming-speculation"
        )
        self._speculations.add(task)
        task.add_done_callback(self._speculations.discard)

    def _drop_speculation(self, utterance: _Utterance) -> None:
        if utterance.speculation is not None:
            utterance.speculation.resumed = True
            utterance.speculation = None

    async def _run_speculation(self, utterance: _Utterance, speculation: _Speculation) -> None:
        started = time.monotonic()
        try:
            speculation.recognition = await self._recognize(speculation.pcm, self._spec.text_options())
        except RecognitionFailedError as exc:
            # The final recognises the utterance itself (and reports a failure that persists).
            logger.info("A speculative final failed (%s): %s", exc.code.name, exc.message)
        finally:
            speculation.done.set()
        recognition = speculation.recognition
        if recognition is None:
            return
        _log_recognition("speculative final", utterance, speculation.pcm, started, recognition)
        if not speculation.resumed or not self._spec.partial_results or not recognition.text:
            return
        # Speech resumed: the utterance so far, as a partial result.
        async with self._order:
            await self._order.wait_for(lambda: self._finals_done >= utterance.number - 1)
        if utterance.final_sent or utterance.end is not None:
            return
        await self._write(_response(recognition, utterance.start, final=False))
        utterance.partial_sent = True
        self.summary.partials += 1

    def _end_utterance(self, utterance: _Utterance, event: UtteranceEnded, now: float) -> None:
        utterance.end = event.end
        pcm = self._slice(utterance.start, event.end).copy()
        # The guaranteed partial result covers the first half of the utterance (at most 3 s of it): a
        # beginning long enough to hold words.
        half = min((event.end - utterance.start) // 2, 3 * TARGET_RATE)
        partial_end = half if half >= self._partial_interval else None
        self._finals.append(_Final(utterance, pcm, partial_end, now, utterance.speculation))
        if self._pending_partial is utterance:
            self._pending_partial = None
        self._utterance = None
        self._trim(event.end)

    def _slice(self, start: int, end: int) -> NDArray[np.int16]:
        return self._buffer[max(0, start - self._buffer_start) : max(0, end - self._buffer_start)]

    def _trim(self, before: int) -> None:
        """Forget the samples before ``before``."""
        drop = min(len(self._buffer), before - self._buffer_start)
        if drop > 0:
            self._buffer = self._buffer[drop:].copy()
            self._buffer_start += drop

    # --- recognition ---

    async def _recognize_all(self, write: WriteResponse) -> None:
        """Finals, in order, and partial results, side by side (each one at a time): a final does not
        wait for a partial result that is being recognised, on another worker, before it starts; it is
        only sent after it, so a client sees an utterance's partial results before its final one."""
        options = self._spec.text_options()
        self._write = write
        loop = asyncio.get_running_loop()
        finals = loop.create_task(self._finals_in_order(options, write), name="finals")
        partials = loop.create_task(self._partials(options, write), name="partials")
        try:
            await asyncio.wait({finals, partials}, return_when=asyncio.FIRST_COMPLETED)
            if partials.done():
                partials.result()  # it only ends by failing: raises its error
            finals.result()
        finally:
            others = [*self._speculations, *self._partial_tasks]
            for task in (finals, partials, *others):
                task.cancel()
            await asyncio.gather(finals, partials, *others, return_exceptions=True)

    async def _finals_in_order(self, options: TextOptions, write: WriteResponse) -> None:
        while True:
            if self._finals:
                final = self._finals.popleft()
                utterance = final.utterance
                # A partial result still waiting for a worker would be dropped before the final: the
                # guaranteed one takes its place (audio sent faster than real time ends utterances
                # before their partial results get a worker).
                waiting = utterance.partial_running and not utterance.partial_started
                wanted = (
                    self._spec.partial_results
                    and not utterance.partial_sent
                    and (waiting or not utterance.partial_running)
                )
                # The guaranteed partial result, beside the final, with a final's priority (the final waits
                # for it): only when a worker is free or no other session's job waits for one.
                if wanted and final.partial_end is not None and self._may_guarantee_partial():
                    self._drop_waiting_partial(utterance)
                    self._start_partial(
                        utterance, final.pcm[: final.partial_end], options, write, guaranteed=True
                    )
                    await asyncio.sleep(0)  # it asks for its worker
                await self._final(final, options, write)
                continue
            if self._input_done:
                return
            self._final_ready.clear()
            await self._final_ready.wait()

    async def _partials(self, options: TextOptions, write: WriteResponse) -> None:
        """The newest partial result due, one at a time; dropped when its utterance has ended, or when no
        worker is free once the utterance has had one."""
        while True:
            utterance = self._pending_partial
            if utterance is None:
                self._partial_ready.clear()
                await self._partial_ready.wait()
                continue
            self._pending_partial = None
            speculating = utterance.speculation is not None and not utterance.speculation.done.is_set()
            if (
                utterance.end is not None
                or speculating  # the utterance so far is being recognised already
                or (utterance.partial_sent and not self._recognizer.has_idle_worker)
            ):
                self.summary.partials_dropped += 1
                continue
            pcm = self._slice(utterance.start, self._total).copy()
            task = self._start_partial(utterance, pcm, options, write)
            await asyncio.wait({task})
            if not task.cancelled():
                task.result()  # raises its SessionError

    def _may_guarantee_partial(self) -> bool:
        """Whether a partial result asked for now with a final's priority would wait only for this
        session's own recognitions (never behind other sessions' or the async APIs' jobs)."""
        return self._recognizer.has_idle_worker or self._recognizer.waiting_jobs <= self._own_waiting

    async def _recognize(
        self,
        pcm: NDArray[np.int16],
        options: TextOptions,
        *,
        partial: bool = False,
        on_start: Callable[[], None] | None = None,
    ) -> Recognition:
        """A recognition of this session; counts those with a final's priority still waiting for a
        worker (as the pool's ``waiting_jobs`` does: low-priority partial results are not counted)."""
        waiting = not partial
        if waiting:
            self._own_waiting += 1

        def started() -> None:
            nonlocal waiting
            if waiting:
                waiting = False
                self._own_waiting -= 1
            if on_start is not None:
                on_start()

        try:
            return await self._recognizer.recognize(pcm, options, partial=partial, on_start=started)
        finally:
            if waiting:
                self._own_waiting -= 1

    def _start_partial(
        self,
        utterance: _Utterance,
        pcm: NDArray[np.int16],
        options: TextOptions,
        write: WriteResponse,
        *,
        guaranteed: bool = False,
    ) -> asyncio.Task[None]:
        utterance.partial_started = False
        utterance.partial_guaranteed = guaranteed
        task = asyncio.get_running_loop().create_task(
            self._partial(utterance, pcm, options, write, urgent=guaranteed), name="streaming-partial"
        )
        utterance.partial_task = task
        self._partial_tasks.add(task)
        task.add_done_callback(self._partial_tasks.discard)
        return task

    async def _partial(
        self,
        utterance: _Utterance,
        pcm: NDArray[np.int16],
        options: TextOptions,
        write: WriteResponse,
        *,
        urgent: bool = False,
    ) -> None:
        """A partial result; ``urgent``: with a final's priority (the guaranteed one), else low."""
        started = time.monotonic()

        def on_start() -> None:
            utterance.partial_started = True

        try:
            recognition = await self._recognize(pcm, options, partial=not urgent, on_start=on_start)
        except RecognitionFailedError as exc:
            if exc.code is GrpcCode.UNAVAILABLE:
                raise SessionError(exc.code, exc.message) from None
            logger.info("A partial result failed (%s): %s", exc.code.name, exc.message)
            return
        _log_recognition("partial", utterance, pcm, started, recognition)
        if not recognition.text:
            return
        # After the final results of the utterances before it, never among them.
        async with self._order:
            await self._order.wait_for(lambda: self._finals_done >= utterance.number - 1)
        if utterance.final_sent:
            return
        await write(_response(recognition, utterance.start, final=False))
        utterance.partial_sent = True
        self.summary.partials += 1

    async def _final(self, final: _Final, options: TextOptions, write: WriteResponse) -> None:
        utterance = final.utterance
        started = time.monotonic()
        recognition: Recognition | None = None
        if final.speculation is not None:
            await final.speculation.done.wait()
            recognition = final.speculation.recognition
        if recognition is None:
            try:
                recognition = await self._recognize(final.pcm, options)
            except RecognitionFailedError as exc:
                raise SessionError(exc.code, exc.message) from None
            _log_recognition("final", utterance, final.pcm, started, recognition)
        await self._settle_partial(utterance)
        utterance.final_sent = True
        # Noise that held no words gets no final, unless there is a partial result to take back.
        if recognition.text or utterance.partial_sent:
            await write(_response(recognition, utterance.start, final=True))
            self.summary.finals += 1
            self.summary.final_latencies.append(asyncio.get_running_loop().time() - final.decided_at)
        async with self._order:
            self._finals_done = utterance.number
            self._order.notify_all()

    async def _settle_partial(self, utterance: _Utterance) -> None:
        """Before the final: a partial result of the utterance that a worker recognises is sent first; one
        still waiting for a worker is dropped (a final never waits for a worker on a partial's behalf)."""
        task = utterance.partial_task
        if task is None or task.done():
            return
        self._drop_waiting_partial(utterance)
        await asyncio.wait({task})

    def _drop_waiting_partial(self, utterance: _Utterance) -> None:
        """Cancel the utterance's partial result while it still waits for a worker (the guaranteed one,
        which its final waits for, is kept)."""
        task = utterance.partial_task
        if task is None or task.done() or utterance.partial_started or utterance.partial_guaranteed:
            return
        task.cancel()
        self.summary.partials_dropped += 1


async def _no_write(response: pb.StreamingRecognitionResponse) -> None:  # pragma: no cover - replaced
    raise RuntimeError("no results before the recognition starts")


def _log_recognition(
    kind: str, utterance: _Utterance, pcm: NDArray[np.int16], started: float, recognition: Recognition
) -> None:
    logger.debug(
        "%s of utterance %d (%.2f s of audio from %.2f s): %d word(s) in %.0f ms",
        kind.capitalize(),
        utterance.number,
        len(pcm) / TARGET_RATE,
        utterance.start / TARGET_RATE,
        len(recognition.words),
        (time.monotonic() - started) * 1000,
    )


def _response(recognition: Recognition, offset: int, *, final: bool) -> pb.StreamingRecognitionResponse:
    """One chunk with one alternative; word times from the start of the session."""
    seconds = offset / TARGET_RATE
    words = [_word(word, seconds) for word in recognition.words]
    alternative = pb.SpeechRecognitionAlternative(text=recognition.text, confidence=1.0, words=words)
    chunk = pb.SpeechRecognitionChunk(alternatives=[alternative], final=final, end_of_utterance=final)
    return pb.StreamingRecognitionResponse(chunks=[chunk])


def _word(word: Word, offset: float) -> pb.WordInfo:
    return pb.WordInfo(
        start_time=_duration(offset + word.start),
        end_time=_duration(offset + word.end),
        word=word.text,
        confidence=1.0,
    )


def _duration(seconds: float) -> Duration:
    duration = Duration()
    duration.FromNanoseconds(round(max(0.0, seconds) * 1e9))
    return duration
