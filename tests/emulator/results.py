"""Building v2 ``LongRunningRecognitionResponse`` bodies from word timings."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

#: The ``@type`` of a v2 async recognition result.
RESPONSE_TYPE: Final = "type.googleapis.com/yandex.cloud.ai.stt.v2.LongRunningRecognitionResponse"

#: A pause longer than this (seconds) between two words of one channel starts a new chunk.
CHUNK_PAUSE_SECONDS: Final = 0.5

#: ``(word, start seconds, end seconds)``.
Word = tuple[str, float, float]


def words_for_text(text: str, start: float = 0.3, word_seconds: float = 0.3, gap: float = 0.05) -> list[Word]:
    """Lay out the words of ``text`` one after another: each lasts ``word_seconds``, ``gap`` apart.

    >>> words_for_text("he was", start=1.0, word_seconds=0.5, gap=0.25)
    [('he', 1.0, 1.5), ('was', 1.75, 2.25)]
    """
    if word_seconds <= 0:
        raise ValueError("word_seconds must be positive")
    if gap < 0 or start < 0:
        raise ValueError("start and gap must not be negative")
    words: list[Word] = []
    for index, word in enumerate(text.split()):
        begin = start + index * (word_seconds + gap)
        words.append((word, round(begin, 6), round(begin + word_seconds, 6)))
    return words


def duration_string(seconds: float) -> str:
    """A protobuf ``Duration`` in its JSON form with nine fractional digits: ``0.879999999s``."""
    if seconds < 0:
        raise ValueError("word times must not be negative")
    nanos_total = round(seconds * 1_000_000_000)
    whole, nanos = divmod(nanos_total, 1_000_000_000)
    return f"{whole}.{nanos:09d}s"


def split_into_chunks(words: Sequence[Word], pause: float = CHUNK_PAUSE_SECONDS) -> list[list[Word]]:
    """Group time-ordered words into utterances, breaking where the silence exceeds ``pause``."""
    chunks: list[list[Word]] = []
    for word in sorted(words, key=lambda w: (w[1], w[2])):
        if chunks and word[1] - chunks[-1][-1][2] <= pause:
            chunks[-1].append(word)
        else:
            chunks.append([word])
    return chunks


def _chunk_json(words: Sequence[Word], channel_tag: str) -> dict[str, Any]:
    return {
        "alternatives": [
            {
                "words": [
                    {
                        "startTime": duration_string(start),
                        "endTime": duration_string(end),
                        "word": word,
                        "confidence": 1,
                    }
                    for word, start, end in words
                ],
                "text": " ".join(word for word, _, _ in words),
                "confidence": 1,
            }
        ],
        "channelTag": channel_tag,
    }


def build_response(channels: Mapping[str, Sequence[Word]] | None) -> dict[str, Any]:
    """The ``response`` of a finished operation; without ``chunks`` when nothing was recognised."""
    response: dict[str, Any] = {"@type": RESPONSE_TYPE}
    ordered: list[tuple[float, str, list[Word]]] = []
    for channel_tag, words in (channels or {}).items():
        for chunk in split_into_chunks(words):
            ordered.append((chunk[0][1], str(channel_tag), chunk))
    if ordered:
        ordered.sort(key=lambda item: (item[0], item[1]))
        response["chunks"] = [_chunk_json(chunk, tag) for _, tag, chunk in ordered]
    return response
