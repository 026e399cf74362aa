"""The results of a streaming recognition session (``StreamingRecognize``), as the client hands them on.

Pure values, free of protobuf: the client (:mod:`speechkit_operator.clients.speech.streaming`) builds
them from the wire messages, and the rendering logic (:mod:`speechkit_operator.logic.stream_rendering`)
turns them into lines.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StreamWord:
    word: str
    start: float | None  # seconds from the start of the session's audio; None when not sent
    end: float | None
    confidence: float


@dataclass(frozen=True)
class StreamAlternative:
    text: str
    confidence: float
    words: tuple[StreamWord, ...] = ()


@dataclass(frozen=True)
class StreamChunk:
    """One ``SpeechRecognitionChunk``: a hypothesis of the current utterance (``final`` false), or its
    final text (``final``; ``end_of_utterance`` when the utterance has ended)."""

    alternatives: tuple[StreamAlternative, ...]
    final: bool
    end_of_utterance: bool

    @property
    def text(self) -> str:
        """The text of the best alternative ("" when there is none)."""
        return self.alternatives[0].text if self.alternatives else ""


@dataclass(frozen=True)
class StreamResponse:
    """One ``StreamingRecognitionResponse``."""

    chunks: tuple[StreamChunk, ...]
