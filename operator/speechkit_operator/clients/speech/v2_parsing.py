"""Turn a v2 ``LongRunningRecognitionResponse`` into a :class:`Transcript`. Pure functions, no I/O.

The response looks like::

    {"@type": "...LongRunningRecognitionResponse",
     "chunks": [{"alternatives": [{"words": [{"startTime": "0.879999999s", "endTime": "1.159999992s",
                                              "word": "when", "confidence": 1}, ...],
                                   "text": "when writing ...", "confidence": 1}],
                 "channelTag": "1"}, ...]}

``chunks`` is missing when nothing was recognised. Times are protobuf Durations in their JSON form
(a decimal number of seconds followed by ``s``); ``channelTag`` is a string.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from speechkit_operator.models.recognition import Chunk, Transcript, Word

#: The channel of chunks that carry no ``channelTag`` (mono audio).
DEFAULT_CHANNEL = "1"


def parse_duration(value: str | int | float | Mapping[str, Any]) -> float:
    """Seconds in a protobuf Duration.

    Accepts the JSON form (``"0.879999999s"``, ``"1s"``, ``"-1.5s"``; the ``s`` may be missing),
    a plain number of seconds, or the object form ``{"seconds": ..., "nanos": ...}`` where
    ``seconds`` may be an int64 written as a string. Raises :class:`TypeError` for values of another
    type and :class:`ValueError` for text that is not a number.
    """
    if isinstance(value, bool):
        raise TypeError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        seconds = _number(value)
    elif isinstance(value, str):
        text = value.strip()
        if text.endswith("s"):
            text = text[:-1]
        if not text:
            raise ValueError(f"not a duration: {value!r}")
        seconds = float(text)
    elif isinstance(value, Mapping):
        seconds = _number(value.get("seconds", 0)) + _number(value.get("nanos", 0)) / 1e9
    else:
        raise TypeError(f"not a duration: {value!r}")
    if math.isnan(seconds) or math.isinf(seconds):
        raise ValueError(f"not a finite duration: {value!r}")
    return seconds


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError(f"not a number: {value!r}")
    try:
        return float(value)
    except OverflowError:  # an integer beyond a float (JSON allows it)
        raise ValueError("a number out of range") from None


def channel_sort_key(tag: str) -> tuple[int, float, str]:
    """Order channel tags numerically ("2" before "10"); tags that are not numbers go last, by name."""
    try:
        return (0, float(tag), tag)
    except ValueError:
        return (1, 0.0, tag)


def parse_v2_response(response: Mapping[str, Any]) -> Transcript:
    """The best alternative of every chunk, ordered by (start, channel).

    Raises :class:`TypeError` or :class:`ValueError` when the response does not have the documented shape.
    """
    raw_chunks = response.get("chunks")
    if raw_chunks is None:
        return Transcript()
    if not isinstance(raw_chunks, Sequence) or isinstance(raw_chunks, str):
        raise TypeError("response.chunks is not a list")
    chunks = [chunk for raw in raw_chunks if (chunk := _parse_chunk(raw)) is not None]
    chunks.sort(key=lambda c: (c.start, channel_sort_key(c.channel)))
    channels = tuple(sorted({c.channel for c in chunks}, key=channel_sort_key))
    return Transcript(chunks=tuple(chunks), channels=channels)


def _parse_chunk(raw: object) -> Chunk | None:
    if not isinstance(raw, Mapping):
        raise TypeError("a chunk is not an object")
    tag = raw.get("channelTag")
    channel = DEFAULT_CHANNEL if tag is None or tag == "" else str(tag)
    alternatives = raw.get("alternatives") or []
    if not isinstance(alternatives, Sequence) or isinstance(alternatives, str):
        raise TypeError("chunk.alternatives is not a list")
    if not alternatives:
        return None
    best = alternatives[0]
    if not isinstance(best, Mapping):
        raise TypeError("an alternative is not an object")
    raw_words = best.get("words") or []
    if not isinstance(raw_words, Sequence) or isinstance(raw_words, str):
        raise TypeError("alternative.words is not a list")
    words = tuple(_parse_word(w) for w in raw_words)
    text = best.get("text")
    if not isinstance(text, str) or not text:
        text = " ".join(w.text for w in words if w.text)
    return Chunk(channel=channel, text=text, words=words)


def _parse_word(raw: object) -> Word:
    if not isinstance(raw, Mapping):
        raise TypeError("a word is not an object")
    text = raw.get("word", "")
    start = parse_duration(raw.get("startTime", 0))
    end = parse_duration(raw.get("endTime", start))
    return Word(text=str(text), start=start, end=end)
