"""Turn a v2 ``LongRunningRecognitionResponse`` (:mod:`speechkit_operator.contracts.stt_v2`) into a
:class:`Transcript`. Pure functions, no I/O."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from speechkit_operator.contracts.stt_v2 import LongRunningRecognitionResponse, SpeechRecognitionChunk
from speechkit_operator.models.recognition import Chunk, Transcript, Word


def channel_sort_key(tag: str) -> tuple[int, float, str]:
    """Order channel tags numerically ("2" before "10"); tags that are not numbers go last, by name."""
    try:
        return (0, float(tag), tag)
    except ValueError:
        return (1, 0.0, tag)


def most_probable_language(estimates: Iterable[tuple[Mapping[str, float], int]]) -> str | None:
    """The language with the largest total probability over utterances, each weighted by its words:
    ``estimates`` holds each utterance's ``{language: probability}`` and its word count."""
    totals: dict[str, float] = {}
    for languages, words in estimates:
        for code, probability in languages.items():
            if code:
                totals[code] = totals.get(code, 0.0) + max(words, 1) * max(probability or 0.0, 0.0)
    return max(sorted(totals), key=lambda code: totals[code]) if totals else None


def parse_v2_response(response: Mapping[str, Any]) -> Transcript:
    """The best alternative of every chunk, ordered by (start, channel).

    Raises :class:`TypeError` or :class:`ValueError` (a pydantic ValidationError) when the response does
    not have the documented shape.
    """
    parsed = LongRunningRecognitionResponse.model_validate(response)
    chunks = [chunk for raw in parsed.chunks if (chunk := _chunk(raw)) is not None]
    chunks.sort(key=lambda c: (c.start, channel_sort_key(c.channel)))
    channels = tuple(sorted({c.channel for c in chunks}, key=channel_sort_key))
    # v2 has no detected language; this project's service adds v3's ``languages`` for ``auto``.
    estimates = [
        (
            {language.language_code: language.probability or 0.0 for language in best.languages},
            len(best.words),
        )
        for raw in parsed.chunks
        if raw.alternatives and (best := raw.alternatives[0]).languages
    ]
    return Transcript(
        chunks=tuple(chunks), channels=channels, language_code=most_probable_language(estimates)
    )


def _chunk(raw: SpeechRecognitionChunk) -> Chunk | None:
    if not raw.alternatives:
        return None
    best = raw.alternatives[0]
    words = tuple(
        Word(text=w.word, start=w.start_time, end=w.start_time if w.end_time is None else w.end_time)
        for w in best.words
    )
    text = best.text or " ".join(w.text for w in words if w.text)
    return Chunk(channel=raw.channel_tag, text=text, words=words)
