"""A streaming session's recognitions, run in the service's :class:`RecognitionPool` like any async job.

An utterance (or, for a partial result, the utterance so far) goes to a worker process as 16 kHz mono
``LINEAR16_PCM`` in a WAV container, with the session's language, profanity filter and text options. Partial
results ask for a worker with low priority, so finals never queue behind them.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

import numpy as np
from numpy.typing import NDArray

from speechkit_operator.contracts.grpc import GrpcCode
from speechkit_operator.contracts.stt_v2 import AudioEncoding
from speechkit_operator.models.recognition import Word
from speechkit_operator.selfhosted.workers import PoolClosedError, RecognitionJob, RecognitionPool

__all__ = [
    "PoolRecognizer",
    "Recognition",
    "RecognitionFailedError",
    "Recognizer",
    "TextOptions",
]

SAMPLE_RATE: Final = 16000
#: The longest piece a worker is given (an utterance is at most 20 s; a session at most 5 minutes).
MAX_PIECE_SECONDS: Final = 5 * 60.0 + 1.0


@dataclass(frozen=True)
class TextOptions:
    """What the session's config asks of the text."""

    language_code: str
    profanity_filter: bool = False
    raw_results: bool = False
    literature_text: bool = False


@dataclass(frozen=True)
class Recognition:
    text: str
    #: Times from the start of the recognised piece.
    words: tuple[Word, ...] = ()


class RecognitionFailedError(Exception):
    """A recognition failed; ``code`` and ``message`` are for the client."""

    def __init__(self, code: GrpcCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Recognizer(Protocol):
    @property
    def has_idle_worker(self) -> bool:
        """Whether a recognition started now would start at once."""

    @property
    def waiting_jobs(self) -> int:
        """Jobs (of every session and API) waiting for a worker with a final's priority."""

    async def recognize(
        self,
        pcm: NDArray[np.int16],
        options: TextOptions,
        *,
        partial: bool,
        on_start: Callable[[], None] | None = None,
    ) -> Recognition:
        """Recognise ``pcm``; ``on_start`` is called when a worker takes it (until then, cancelling
        the call drops it from the queue)."""


def wav_bytes(pcm: NDArray[np.int16]) -> bytes:
    """``pcm`` (16 kHz mono) behind a WAV header. Headerless PCM would go through the worker's format
    sniffing, which can take a piece of speech for an MPEG frame; a RIFF header says what it is."""
    data = np.ascontiguousarray(pcm, dtype="<i2").tobytes()
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        36 + len(data),
        b"WAVE",
        b"fmt ",
        16,
        1,  # PCM
        1,  # mono
        SAMPLE_RATE,
        SAMPLE_RATE * 2,
        2,
        16,
        b"data",
        len(data),
    )
    return header + data


class PoolRecognizer:
    """:class:`Recognizer` on the service's worker pool."""

    def __init__(self, pool: RecognitionPool) -> None:
        self._pool = pool

    @property
    def has_idle_worker(self) -> bool:
        return self._pool.idle_workers > 0

    @property
    def waiting_jobs(self) -> int:
        return self._pool.waiting_jobs

    async def recognize(
        self,
        pcm: NDArray[np.int16],
        options: TextOptions,
        *,
        partial: bool,
        on_start: Callable[[], None] | None = None,
    ) -> Recognition:
        job = RecognitionJob(
            language_code=options.language_code,
            encoding=AudioEncoding.LINEAR16_PCM,
            sample_rate_hertz=SAMPLE_RATE,
            channel_count=1,
            max_seconds=MAX_PIECE_SECONDS,
            max_channels=1,
            literature_text=options.literature_text,
            profanity_filter=options.profanity_filter,
            raw_results=options.raw_results,
            streaming=True,
        )
        audio = wav_bytes(pcm)
        try:
            outcome = await self._pool.run(audio, job, low_priority=partial, on_start=on_start)
        except PoolClosedError:
            raise RecognitionFailedError(GrpcCode.UNAVAILABLE, "The service is shutting down") from None
        if outcome.failure is not None:
            raise RecognitionFailedError(outcome.failure.code, outcome.failure.message)
        text = " ".join(chunk.text for chunk in outcome.chunks if chunk.text)
        words = tuple(word for chunk in outcome.chunks for word in chunk.words)
        return Recognition(text=text, words=words)
