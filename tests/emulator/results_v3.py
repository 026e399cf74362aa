"""Building the v3 ``getRecognition`` stream (``StreamingResponse`` messages) from word timings.

The emulator scripts recognitions with the same ``{channelTag: [(word, start s, end s), ...]}`` mapping as
v2 (``SpeechKitEmulator.transcripts``). For v3 the channel tags change base: v2 numbers channels from
``"1"``, v3 from ``"0"`` (the documented v3 examples answer ``"channelTag": "0"`` for mono audio), so the
v2 tag ``"1"`` becomes ``"0"``, ``"2"`` becomes ``"1"`` and so on.

Each utterance (words of one channel separated by pauses of at most :data:`CHUNK_PAUSE_SECONDS`) gives,
in this order, like the documented example of ``GET /stt/v3/getRecognition``:

1. a ``final`` message;
2. a ``finalRefinement`` message with the normalized text, when text normalization is enabled;
3. an ``eouUpdate`` message.

Messages are ordered by the start of their utterance, then by channel tag. All fields are emitted, also
those at their default values (``"resetTimeMs": "0"``, ``"confidence": 0``, ``"languages": []``), and int64
values are JSON strings, as in the documented REST answers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from tests.emulator.results import Word, split_into_chunks

#: Speaker labeling gives at most two speakers (docs: "Recognition results may not feature more than
#: two speakers"); they are tagged ``"0"`` and ``"1"``.
MAX_SPEAKERS: Final = 2

#: What the emulator's text normalization turns into digits (the documented normalization converts
#: numbers, dates and times from words into numeric form).
NUMBER_WORDS: Final[dict[str, str]] = {
    word: str(number)
    for number, word in enumerate(
        [
            "zero",
            "one",
            "two",
            "three",
            "four",
            "five",
            "six",
            "seven",
            "eight",
            "nine",
            "ten",
            "eleven",
            "twelve",
            "thirteen",
            "fourteen",
            "fifteen",
            "sixteen",
            "seventeen",
            "eighteen",
            "nineteen",
            "twenty",
        ]
    )
}


@dataclass(frozen=True)
class Utterance:
    """The words of one ``final`` (one channel or one speaker), in time order."""

    channel_tag: str
    words: tuple[Word, ...]
    #: Which recognition session the utterance belongs to: ``finalIndex`` counts and the alternative's
    #: ``startTimeMs`` continues per session. One per audio channel; with speaker labeling (mono audio)
    #: both speakers share one.
    session: str

    @property
    def start(self) -> float:
        return self.words[0][1]

    @property
    def end(self) -> float:
        return self.words[-1][2]


def v3_channel_tag(v2_tag: str) -> str:
    """The v3 ``channelTag`` of a channel the transcripts (v2-style) tag ``v2_tag``.

    >>> v3_channel_tag("1"), v3_channel_tag("2"), v3_channel_tag("left")
    ('0', '1', 'left')
    """
    if v2_tag.isdigit() and int(v2_tag) >= 1:
        return str(int(v2_tag) - 1)
    return v2_tag


def milliseconds(seconds: float) -> int:
    if seconds < 0:
        raise ValueError("word times must not be negative")
    return round(seconds * 1000)


def utterances_for(
    channels: Mapping[str, Sequence[Word]] | None, *, speaker_labeling: bool
) -> list[Utterance]:
    """Split a transcript into utterances, ordered by start time, then channel tag.

    Without speaker labeling each scripted channel is an audio channel (tag rebased with
    :func:`v3_channel_tag`). With speaker labeling (mono audio only):

    * a transcript with two channels scripts the two speakers: the first channel (in tag order) is
      speaker ``"0"``, the second speaker ``"1"``;
    * a transcript with one channel is split into utterances at pauses, and the utterances alternate
      between the speakers: the first is speaker ``"0"``, the second ``"1"``, the third ``"0"``...

    More than two scripted channels with speaker labeling is a scripting error (ValueError).
    """
    found: list[Utterance] = []
    scripted = {str(tag): list(words) for tag, words in (channels or {}).items() if words}
    if speaker_labeling:
        if len(scripted) > MAX_SPEAKERS:
            raise ValueError(f"speaker labeling gives at most {MAX_SPEAKERS} speakers")
        if len(scripted) == 1:
            [words] = scripted.values()
            for index, chunk in enumerate(split_into_chunks(words)):
                found.append(Utterance(str(index % MAX_SPEAKERS), tuple(chunk), "mono"))
        else:
            for speaker, tag in enumerate(sorted(scripted, key=_tag_order)):
                for chunk in split_into_chunks(scripted[tag]):
                    found.append(Utterance(str(speaker), tuple(chunk), "mono"))
    else:
        for tag, words in scripted.items():
            channel = v3_channel_tag(tag)
            for chunk in split_into_chunks(words):
                found.append(Utterance(channel, tuple(chunk), channel))
    found.sort(key=lambda u: (u.start, _tag_order(u.channel_tag)))
    return found


def _tag_order(tag: str) -> tuple[int, str]:
    return (int(tag), "") if tag.isdigit() else (1 << 30, tag)


def normalize_text(text: str, *, literature: bool) -> str:
    """The emulator's text normalization: number words zero..twenty become digits; with
    ``literature`` the utterance also starts with a capital letter and ends with a period.

    >>> normalize_text("he has two cats", literature=False)
    'he has 2 cats'
    >>> normalize_text("he has two cats", literature=True)
    'He has 2 cats.'
    """
    normalized = " ".join(NUMBER_WORDS.get(word.lower(), word) for word in text.split())
    if literature and normalized:
        normalized = normalized[0].upper() + normalized[1:]
        if normalized[-1] not in ".!?":
            normalized += "."
    return normalized


def _alternative(
    words: Sequence[tuple[str, int, int]],
    text: str,
    start_ms: int,
    end_ms: int,
    languages: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "words": [
            {"text": word, "startTimeMs": str(start), "endTimeMs": str(end)} for word, start, end in words
        ],
        "text": text,
        "startTimeMs": str(start_ms),
        "endTimeMs": str(end_ms),
        "confidence": 0,
        "languages": languages,
    }


@dataclass(frozen=True)
class StreamOptions:
    """What of the request shapes the stream."""

    text_normalization: bool = False
    literature_text: bool = False
    #: ``(languageCode, probability)`` pairs for each alternative's ``languages``.
    languages: tuple[tuple[str, float], ...] = ()
    session_uuid: str = "00000000-00000000-00000000-00000000"
    user_request_id: str = ""
    #: ``responseWallTimeMs`` of every message (server wall clock since the session started).
    response_wall_time_ms: int = 0


def build_stream(utterances: Sequence[Utterance], options: StreamOptions) -> list[dict[str, Any]]:
    """The ``StreamingResponse`` messages (without the REST ``{"result": ...}`` wrapper), in order."""
    received_ms = max((milliseconds(u.end) for u in utterances), default=0)
    languages = [
        {"languageCode": code, "probability": probability} for code, probability in options.languages
    ]
    session_uuid = {"uuid": options.session_uuid, "userRequestId": options.user_request_id}
    final_index: dict[str, int] = {}
    segment_start: dict[str, int] = {}
    messages: list[dict[str, Any]] = []

    def message(cursors: dict[str, str], tag: str, event: str, payload: dict[str, Any]) -> dict[str, Any]:
        return {
            "sessionUuid": dict(session_uuid),
            "audioCursors": cursors,
            "responseWallTimeMs": str(options.response_wall_time_ms),
            event: payload,
            "channelTag": tag,
        }

    for utterance in utterances:
        index = final_index.get(utterance.session, -1) + 1
        final_index[utterance.session] = index
        start_ms = segment_start.get(utterance.session, 0)
        end_ms = milliseconds(utterance.end)
        segment_start[utterance.session] = end_ms
        tag = utterance.channel_tag
        timed = [(word, milliseconds(start), milliseconds(end)) for word, start, end in utterance.words]

        def cursors(eou_ms: int, *, end_ms: int = end_ms, index: int = index) -> dict[str, str]:
            return {
                "receivedDataMs": str(received_ms),
                "resetTimeMs": "0",
                "partialTimeMs": str(end_ms),
                "finalTimeMs": str(end_ms),
                "finalIndex": str(index),
                "eouTimeMs": str(eou_ms),
            }

        raw_text = " ".join(word for word, _, _ in timed)
        final = {
            "alternatives": [_alternative(timed, raw_text, start_ms, end_ms, languages)],
            "channelTag": tag,
        }
        messages.append(message(cursors(0), tag, "final", final))
        if options.text_normalization:
            normalized_words = [
                (NUMBER_WORDS.get(word.lower(), word), start, end) for word, start, end in timed
            ]
            text = normalize_text(raw_text, literature=options.literature_text)
            refinement = {
                "finalIndex": str(index),
                "normalizedText": {
                    "alternatives": [_alternative(normalized_words, text, start_ms, end_ms, languages)],
                    "channelTag": tag,
                },
            }
            messages.append(message(cursors(0), tag, "finalRefinement", refinement))
        messages.append(message(cursors(end_ms), tag, "eouUpdate", {"timeMs": str(end_ms)}))
    return messages
