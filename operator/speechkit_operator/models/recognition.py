"""Recognition results, independent of the API version that produced them."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Word:
    text: str
    start: float  # seconds from the start of the audio
    end: float


@dataclass(frozen=True)
class Chunk:
    """One recognised utterance on one channel (the best alternative only)."""

    channel: str
    text: str
    words: tuple[Word, ...] = ()

    @property
    def start(self) -> float:
        return self.words[0].start if self.words else 0.0

    @property
    def end(self) -> float:
        return self.words[-1].end if self.words else 0.0


@dataclass(frozen=True)
class Transcript:
    chunks: tuple[Chunk, ...] = ()
    channels: tuple[str, ...] = field(default=())
    #: The chunks' tags name speakers (v3 speaker labeling on mono audio), not audio channels.
    speakers: bool = False
    #: The language the API detected (v3, or ``auto``), when it reported one.
    language_code: str | None = None

    @property
    def is_multichannel(self) -> bool:
        return len(self.channels) > 1

    @property
    def tag_kind(self) -> str:
        """What a chunk's tag names: ``channel`` or ``speaker``."""
        return "speaker" if self.speakers else "channel"
