"""parse_duration and parse_v2_response: the v2 LongRunningRecognitionResponse into a Transcript."""

from __future__ import annotations

from typing import Any

import pytest

from speechkit_operator.clients.speech.v2_parsing import (
    channel_sort_key,
    parse_v2_response,
)
from speechkit_operator.contracts.duration import parse_duration
from speechkit_operator.models.recognition import Chunk, Transcript, Word

RESPONSE_TYPE = "type.googleapis.com/yandex.cloud.ai.stt.v2.LongRunningRecognitionResponse"


def word(text: str, start: str, end: str) -> dict[str, Any]:
    return {"startTime": start, "endTime": end, "word": text, "confidence": 1}


def chunk(channel: str | None, text: str | None, *words: dict[str, Any]) -> dict[str, Any]:
    alternative: dict[str, Any] = {"words": list(words), "confidence": 1}
    if text is not None:
        alternative["text"] = text
    result: dict[str, Any] = {"alternatives": [alternative]}
    if channel is not None:
        result["channelTag"] = channel
    return result


# --- Durations ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0.879999999s", 0.879999999),
        ("1s", 1.0),
        ("12.5s", 12.5),
        ("0s", 0.0),
        ("-1.5s", -1.5),
        ("3.25", 3.25),
        (" 2s ", 2.0),
        (7, 7.0),
        (0.5, 0.5),
        ({"seconds": "12", "nanos": 500_000_000}, 12.5),
        ({"seconds": 1}, 1.0),
        ({"nanos": 879_999_999}, 0.879999999),
        ({}, 0.0),
    ],
)
def test_parse_duration(value: Any, expected: float) -> None:
    assert parse_duration(value) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("value", ["", "s", "abc", "1.2.3s", "nans", "infs", {"seconds": "x"}])
def test_parse_duration_rejects_text_that_is_not_a_number(value: Any) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


@pytest.mark.parametrize("value", [True, None, [1], {"seconds": [1]}, {"nanos": None}])
def test_parse_duration_rejects_other_types(value: Any) -> None:
    with pytest.raises(TypeError):
        parse_duration(value)


# --- Responses ----------------------------------------------------------------------------------


def test_seed_example_single_channel() -> None:
    response = {
        "@type": RESPONSE_TYPE,
        "chunks": [
            chunk(
                "1",
                "when writing The Hobbit",
                word("when", "0.879999999s", "1.159999992s"),
                word("writing", "1.219999995s", "1.539999988s"),
            )
        ],
    }
    transcript = parse_v2_response(response)
    assert transcript == Transcript(
        chunks=(
            Chunk(
                channel="1",
                text="when writing The Hobbit",
                words=(
                    Word("when", 0.879999999, 1.159999992),
                    Word("writing", 1.219999995, 1.539999988),
                ),
            ),
        ),
        channels=("1",),
    )
    assert not transcript.is_multichannel
    assert transcript.chunks[0].start == pytest.approx(0.879999999)
    assert transcript.chunks[0].end == pytest.approx(1.539999988)


def test_missing_chunks_give_an_empty_transcript() -> None:
    transcript = parse_v2_response({"@type": RESPONSE_TYPE})
    assert transcript == Transcript(chunks=(), channels=())
    assert parse_v2_response({"chunks": []}) == Transcript()


def test_multichannel_ordering_by_start_then_channel_numerically() -> None:
    response = {
        "chunks": [
            chunk("10", "ten late", word("ten", "5s", "5.5s")),
            chunk("2", "two late", word("two", "5s", "6s")),
            chunk("1", "one early", word("one", "1s", "2s")),
            chunk("2", "two early", word("two", "0.5s", "0.9s")),
            chunk("1", "one late", word("one", "5s", "5.2s")),
        ]
    }
    transcript = parse_v2_response(response)
    assert [(c.channel, c.text) for c in transcript.chunks] == [
        ("2", "two early"),
        ("1", "one early"),
        ("1", "one late"),
        ("2", "two late"),
        ("10", "ten late"),
    ]
    # Numeric order: "10" after "2", which a string sort would get wrong.
    assert transcript.channels == ("1", "2", "10")
    assert transcript.is_multichannel


def test_channel_tag_defaults_to_1_and_numbers_become_strings() -> None:
    transcript = parse_v2_response(
        {
            "chunks": [
                chunk(None, "mono", word("mono", "0s", "1s")),
                chunk("", "also", word("also", "2s", "3s")),
            ]
        }
    )
    assert [c.channel for c in transcript.chunks] == ["1", "1"]
    assert transcript.channels == ("1",)
    numeric = parse_v2_response({"chunks": [{"alternatives": [{"text": "x"}], "channelTag": 2}]})
    assert numeric.chunks[0].channel == "2"
    assert numeric.channels == ("2",)


def test_first_alternative_wins() -> None:
    response = {
        "chunks": [
            {
                "alternatives": [
                    {"text": "best", "words": [word("best", "1s", "2s")]},
                    {"text": "second", "words": [word("second", "1s", "2s")]},
                ],
                "channelTag": "1",
            }
        ]
    }
    (only,) = parse_v2_response(response).chunks
    assert only.text == "best"
    assert [w.text for w in only.words] == ["best"]


def test_text_falls_back_to_the_words() -> None:
    response = {
        "chunks": [
            chunk("1", None, word("hello", "0s", "0.5s"), word("there", "0.6s", "1s")),
            chunk("1", "", word("again", "2s", "3s")),
        ]
    }
    assert [c.text for c in parse_v2_response(response).chunks] == ["hello there", "again"]


def test_chunk_without_alternatives_is_skipped_and_words_may_be_missing() -> None:
    response = {
        "chunks": [
            {"alternatives": [], "channelTag": "3"},
            {"channelTag": "4"},
            {"alternatives": [{"text": "no words"}], "channelTag": "1"},
        ]
    }
    transcript = parse_v2_response(response)
    assert transcript.chunks == (Chunk(channel="1", text="no words", words=()),)
    assert transcript.channels == ("1",)


def test_word_times_in_object_form() -> None:
    response = {
        "chunks": [
            {
                "alternatives": [
                    {
                        "text": "x",
                        "words": [
                            {
                                "word": "x",
                                "startTime": {"seconds": "3", "nanos": 250_000_000},
                                "endTime": {"seconds": 4},
                            }
                        ],
                    }
                ]
            }
        ]
    }
    (only,) = parse_v2_response(response).chunks
    assert only.words == (Word("x", 3.25, 4.0),)


@pytest.mark.parametrize(
    "response",
    [
        {"chunks": "nope"},
        {"chunks": ["nope"]},
        {"chunks": [{"alternatives": "nope"}]},
        {"chunks": [{"alternatives": ["nope"]}]},
        {"chunks": [{"alternatives": [{"words": "nope"}]}]},
        {"chunks": [{"alternatives": [{"words": [{"word": "x", "startTime": "soon"}]}]}]},
    ],
)
def test_malformed_responses_raise(response: dict[str, Any]) -> None:
    with pytest.raises((TypeError, ValueError)):
        parse_v2_response(response)


def test_channel_sort_key_puts_names_after_numbers() -> None:
    assert sorted(["b", "10", "a", "2", "1"], key=channel_sort_key) == ["1", "2", "10", "a", "b"]
