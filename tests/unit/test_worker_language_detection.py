"""``auto`` over long audio: the language detected in a channel's first window with speech holds for
the channel's later windows (the worker decodes long audio window by window), and each channel detects
its own."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from speechkit_operator.contracts.stt_v2 import AudioEncoding
from speechkit_operator.models.recognition import Word
from speechkit_operator.selfhosted import workers
from speechkit_operator.selfhosted.protocol import RecognizedChunk
from speechkit_operator.selfhosted.workers import RecognitionJob, WorkerSetup, initialize_worker, recognize


@dataclass(frozen=True)
class Segment:
    channel: int
    start_seconds: float
    end_seconds: float
    pcm: str  # what the fake engine "hears"


@dataclass
class Decoded:
    windows: list[Segment]

    @property
    def channel_count(self) -> int:
        return max(segment.channel for segment in self.windows)

    @property
    def duration_seconds(self) -> float:
        return max(segment.end_seconds for segment in self.windows)

    def segments(self) -> Iterator[Segment]:
        yield from self.windows


@dataclass(frozen=True)
class Utterance:
    text: str
    words: tuple[Word, ...]
    language_code: str | None = None
    language_probability: float | None = None


@dataclass
class DetectingEngine:
    """Detects a window's language from its text ("да" Russian, else English) when asked for ``auto``;
    records the language each window was recognised in."""

    name: str = "detecting"
    languages: frozenset[str] = frozenset({"ru-RU", "en-US", "auto"})
    calls: list[tuple[str, str]] = field(default_factory=list)

    def recognize(self, pcm: str, language_code: str) -> list[Utterance]:
        self.calls.append((pcm, language_code))
        if not pcm:
            return []
        detected = ("ru-RU" if "да" in pcm else "en-US") if language_code == "auto" else language_code
        probability = 0.9 if language_code == "auto" else None
        words = tuple(Word(text, index * 0.5, index * 0.5 + 0.4) for index, text in enumerate(pcm.split()))
        return [Utterance(pcm, words, detected, probability)]


def test_auto_keeps_each_channels_first_detection_across_its_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = DetectingEngine()
    windows = [
        Segment(1, 0.0, 300.0, ""),  # silence first: nothing detected yet
        Segment(1, 300.0, 600.0, "да конечно"),
        Segment(2, 0.0, 300.0, "yes of course"),
        Segment(1, 600.0, 900.0, "okay then"),  # English words later in the Russian channel
        Segment(2, 300.0, 600.0, "да"),
    ]

    def decode(data: bytes, **_: Any) -> Decoded:
        del data
        return Decoded(windows)

    monkeypatch.setattr(workers, "_worker", None)
    initialize_worker(WorkerSetup(engine_factory=lambda: engine, decoder=decode, client_errors=(ValueError,)))
    outcome = recognize(b"audio", RecognitionJob(language_code="auto", encoding=AudioEncoding.LINEAR16_PCM))

    assert outcome.failure is None
    assert engine.calls == [
        ("", "auto"),
        ("да конечно", "auto"),
        ("yes of course", "auto"),
        ("okay then", "ru-RU"),  # channel 1 stays Russian
        ("да", "en-US"),  # channel 2 stays English
    ]
    detected = [chunk for chunk in outcome.chunks if isinstance(chunk, RecognizedChunk)]
    assert len(detected) == len(outcome.chunks) == 4
    languages = {(chunk.channel, chunk.text): chunk.language_code for chunk in detected}
    assert languages == {
        ("1", "да конечно"): "ru-RU",
        ("2", "yes of course"): "en-US",
        ("1", "okay then"): "ru-RU",
        ("2", "да"): "en-US",
    }
    # The probability of the detection itself, not of a forced language.
    assert {chunk.language_probability for chunk in outcome.chunks if isinstance(chunk, RecognizedChunk)} == {
        0.9
    }
