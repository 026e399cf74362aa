"""Transcript rendering: subtitles parsed back and checked, plain text, previews, json and output keys."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from speechkit_operator.logic.output_keys import output_base_key, s3_uri
from speechkit_operator.logic.rendering import (
    Cue,
    RenderedOutput,
    build_cues,
    preview,
    render_json,
    render_outputs,
    render_srt,
    render_txt,
    render_vtt,
)
from speechkit_operator.models.job import OutputFormat
from speechkit_operator.models.recognition import Chunk, Transcript, Word

# --------------------------------------------------------------------------------------------------------
# A small SRT / WebVTT parser, independent of the renderer
# --------------------------------------------------------------------------------------------------------

SRT_TIME = r"(\d{2,}):([0-5]\d):([0-5]\d),(\d{3})"
VTT_TIME = r"(\d{2,}):([0-5]\d):([0-5]\d)\.(\d{3})"
SRT_BLOCK = re.compile(rf"(\d+)\n{SRT_TIME} --> {SRT_TIME}\n((?:[^\n]+\n?)+)")
VTT_BLOCK = re.compile(rf"{VTT_TIME} --> {VTT_TIME}\n((?:[^\n]+\n?)+)")


@dataclass(frozen=True)
class Parsed:
    number: int | None
    start_ms: int
    end_ms: int
    lines: tuple[str, ...]


def _ms(hours: str, minutes: str, seconds: str, millis: str) -> int:
    return ((int(hours) * 60 + int(minutes)) * 60 + int(seconds)) * 1000 + int(millis)


def parse_srt(text: str) -> list[Parsed]:
    if not text:
        return []
    assert text.endswith("\n") and not text.endswith("\n\n"), repr(text[-10:])
    cues = []
    for block in text.split("\n\n"):
        match = SRT_BLOCK.fullmatch(block)
        assert match, f"not an SRT cue: {block!r}"
        groups = match.groups()
        cues.append(
            Parsed(
                number=int(groups[0]),
                start_ms=_ms(*groups[1:5]),
                end_ms=_ms(*groups[5:9]),
                lines=tuple(groups[9].rstrip("\n").split("\n")),
            )
        )
    return cues


def parse_vtt(text: str) -> list[Parsed]:
    header, _, body = text.partition("\n\n")
    assert header == "WEBVTT"
    if not body:
        assert text == "WEBVTT\n"
        return []
    assert body.endswith("\n") and not body.endswith("\n\n")
    cues = []
    for block in body.split("\n\n"):
        match = VTT_BLOCK.fullmatch(block)
        assert match, f"not a WebVTT cue: {block!r}"
        groups = match.groups()
        cues.append(
            Parsed(
                number=None,
                start_ms=_ms(*groups[0:4]),
                end_ms=_ms(*groups[4:8]),
                lines=tuple(groups[8].rstrip("\n").split("\n")),
            )
        )
    return cues


def assert_well_formed(parsed: Sequence[Parsed], cues: Sequence[Cue] | None = None) -> None:
    """Numbered from 1, ordered, start <= end, no overlap, and (given cues) exact millisecond times."""
    for index, cue in enumerate(parsed):
        if cue.number is not None:
            assert cue.number == index + 1
        assert cue.start_ms <= cue.end_ms
        if index:
            assert parsed[index - 1].end_ms <= cue.start_ms
        assert 1 <= len(cue.lines) <= 2
        assert all(line and line == line.strip() for line in cue.lines)
    if cues is not None:
        assert len(parsed) == len(cues)
        for got, want in zip(parsed, cues, strict=True):
            assert got.start_ms == round(want.start * 1000)
            assert got.end_ms == round(want.end * 1000)
            assert got.lines == tuple(want.text.split("\n"))


# --------------------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------------------

SENTENCES = [
    "and mister john dashwood had then leisure to consider how much there might be prudently in his power "
    "to do for them",
    "he was not an ill disposed young man",
    "unless to be rather cold hearted and rather selfish is to be ill disposed",
]


def timed_words(text: str, start: float, word_seconds: float = 0.3, gap: float = 0.05) -> list[Word]:
    words = []
    at = start
    for token in text.split():
        words.append(Word(token, round(at, 3), round(at + word_seconds, 3)))
        at += word_seconds + gap
    return words


def sentence_chunks(channel: str = "1", start: float = 0.0, pause: float = 1.0) -> list[Chunk]:
    chunks = []
    at = start
    for sentence in SENTENCES:
        words = timed_words(sentence, at)
        chunks.append(Chunk(channel=channel, text=sentence, words=tuple(words)))
        at = words[-1].end + pause
    return chunks


def joined(cues: Sequence[Cue]) -> str:
    return " ".join(cue.text.replace("\n", " ") for cue in cues)


# --------------------------------------------------------------------------------------------------------
# build_cues
# --------------------------------------------------------------------------------------------------------


def test_cues_keep_every_word_in_order_within_all_limits() -> None:
    words = [word for chunk in sentence_chunks() for word in chunk.words]
    cues = build_cues(words)
    assert joined(cues) == " ".join(SENTENCES)
    for cue in cues:
        lines = cue.text.split("\n")
        assert 1 <= len(lines) <= 2
        assert all(len(line) <= 42 for line in lines)
        assert len(cue.text.replace("\n", " ")) <= 84
        assert cue.end - cue.start <= 7.0
    assert_well_formed(parse_srt(render_srt(cues)), cues)


def test_cues_split_at_pauses() -> None:
    first = timed_words("he was not an ill disposed young man", 0.0)
    second = timed_words("he might even", first[-1].end + 0.8)
    cues = build_cues(first + second)
    assert [cue.text for cue in cues] == ["he was not an ill disposed young man", "he might even"]
    assert cues[0].start == 0.0
    assert cues[0].end == first[-1].end
    assert cues[1].start == second[0].start


def test_a_pause_just_below_the_threshold_does_not_split() -> None:
    first = timed_words("he was not", 0.0)
    second = timed_words("an ill man", first[-1].end + 0.79)
    assert [cue.text for cue in build_cues(first + second)] == ["he was not an ill man"]


def test_custom_pause_threshold() -> None:
    words = timed_words("one two three four", 0.0, gap=0.3)
    assert len(build_cues(words)) == 1
    assert len(build_cues(words, pause_seconds=0.25)) == 4


def test_cues_split_before_max_chars() -> None:
    words = timed_words(" ".join(["abcdefghi"] * 30), 0.0, word_seconds=0.05, gap=0.0)
    cues = build_cues(words, max_chars=30)
    assert all(len(cue.text.replace("\n", " ")) <= 30 for cue in cues)
    # 9-letter words: three per cue ("abcdefghi abcdefghi abcdefghi" is 29 characters)
    assert len(cues) == 10
    assert joined(cues) == " ".join(["abcdefghi"] * 30)


def test_cues_split_before_max_seconds() -> None:
    words = timed_words(" ".join(["go"] * 40), 0.0, word_seconds=0.5, gap=0.0)
    cues = build_cues(words)
    assert all(cue.end - cue.start <= 7.0 for cue in cues)
    assert [round(cue.end - cue.start, 3) for cue in cues] == [7.0, 7.0, 6.0]
    short = build_cues(words, max_seconds=2.0)
    assert all(cue.end - cue.start <= 2.0 for cue in short)
    assert len(short) == 10


def test_cue_text_wraps_to_two_balanced_lines() -> None:
    text = "unless to be rather cold hearted and rather selfish is to be ill"
    cues = build_cues(timed_words(text, 0.0, word_seconds=0.1, gap=0.0))
    assert len(cues) == 1
    lines = cues[0].text.split("\n")
    assert len(lines) == 2
    assert " ".join(lines) == text
    assert all(len(line) <= 42 for line in lines)
    assert abs(len(lines[0]) - len(lines[1])) <= 10


def test_short_cue_text_is_one_line() -> None:
    cues = build_cues(timed_words("he was not an ill disposed young man", 0.0))
    assert cues[0].text == "he was not an ill disposed young man"


def test_words_that_cannot_wrap_into_two_lines_start_a_new_cue() -> None:
    # 84 characters in total, but no split gives two lines of at most 42 characters
    text = f"{'a' * 30} {'b' * 30} {'c' * 22}"
    assert len(text) == 84
    cues = build_cues(timed_words(text, 0.0, word_seconds=0.1, gap=0.0))
    assert [cue.text for cue in cues] == [f"{'a' * 30}\n{'b' * 30}", "c" * 22]


def test_an_overlong_word_gets_a_cue_of_its_own() -> None:
    words = timed_words(f"short {'x' * 50} tail", 0.0)
    assert [cue.text for cue in build_cues(words)] == ["short", "x" * 50, "tail"]


def test_cues_are_built_in_time_order_from_unordered_words() -> None:
    words = timed_words("one two three", 0.0)
    assert build_cues(list(reversed(words))) == build_cues(words)


def test_overlapping_words_give_cues_that_do_not_overlap() -> None:
    words = [Word("one", 0.0, 2.0), Word("two", 1.0, 10.0), Word("three", 12.0, 13.0)]
    cues = build_cues(words, max_seconds=5.0)
    assert [cue.text for cue in cues] == ["one", "two", "three"]
    assert all(earlier.end <= later.start for earlier, later in itertools.pairwise(cues))
    assert_well_formed(parse_srt(render_srt(cues)), cues)


def test_empty_words_are_ignored() -> None:
    assert build_cues([]) == []
    assert build_cues([Word("  ", 0.0, 1.0)]) == []


# --------------------------------------------------------------------------------------------------------
# SRT and VTT
# --------------------------------------------------------------------------------------------------------


def test_srt_and_vtt_of_the_same_cues_agree() -> None:
    words = [word for chunk in sentence_chunks(start=3598.5) for word in chunk.words]
    cues = build_cues(words)
    srt = parse_srt(render_srt(cues))
    vtt = parse_vtt(render_vtt(cues))
    assert_well_formed(srt, cues)
    assert_well_formed(vtt, cues)
    assert [(c.start_ms, c.end_ms, c.lines) for c in srt] == [(c.start_ms, c.end_ms, c.lines) for c in vtt]
    assert srt[-1].start_ms > 3_600_000  # the run crosses the first hour


def test_timestamps_exact_text() -> None:
    cues = [Cue(0.0, 1.5, "a"), Cue(3723.4567, 3723.5, "b"), Cue(59.9996, 3599.9999, "c")]
    assert render_srt(cues) == (
        "1\n00:00:00,000 --> 00:00:01,500\na\n\n"
        "2\n01:02:03,457 --> 01:02:03,500\nb\n\n"
        "3\n00:01:00,000 --> 01:00:00,000\nc\n"
    )
    assert render_vtt(cues) == (
        "WEBVTT\n\n"
        "00:00:00.000 --> 00:00:01.500\na\n\n"
        "01:02:03.457 --> 01:02:03.500\nb\n\n"
        "00:01:00.000 --> 01:00:00.000\nc\n"
    )


@pytest.mark.parametrize("seconds", [0.0005, 0.9995, 1.9999, 59.99951, 3599.9996, 35999.9999, 0.1 + 0.2])
def test_rounding_never_produces_a_thousand_milliseconds(seconds: float) -> None:
    srt = render_srt([Cue(seconds, seconds, "x")])
    assert ",1000" not in srt
    (parsed,) = parse_srt(srt)
    assert parsed.start_ms == round(seconds * 1000)


def test_long_audio_keeps_counting_hours() -> None:
    (parsed,) = parse_srt(render_srt([Cue(100 * 3600 + 1.25, 100 * 3600 + 2.0, "x")]))
    assert parsed.start_ms == 360_001_250
    assert render_srt([Cue(100 * 3600 + 1.25, 100 * 3600 + 2.0, "x")]).startswith("1\n100:00:01,250")


def test_vtt_escapes_markup_characters() -> None:
    vtt = render_vtt([Cue(0.0, 1.0, "a <b> & c --> d")])
    assert vtt.endswith("\na &lt;b&gt; &amp; c --&gt; d\n")


def test_empty_cues_render_as_empty_files() -> None:
    assert render_srt([]) == ""
    assert render_vtt([]) == "WEBVTT\n"
    assert parse_srt(render_srt([Cue(0.0, 1.0, ""), Cue(1.0, 2.0, "x")]))[0].number == 1


# --------------------------------------------------------------------------------------------------------
# Plain text and preview
# --------------------------------------------------------------------------------------------------------


def test_txt_is_chunks_in_time_order_one_per_line() -> None:
    chunks = sentence_chunks()
    transcript = Transcript(chunks=(chunks[2], chunks[0], chunks[1]), channels=("1",))
    assert render_txt(transcript) == "".join(f"{sentence}\n" for sentence in SENTENCES)


def test_chunks_without_words_give_text_but_no_cues() -> None:
    chunks = sentence_chunks()
    bare = Chunk(channel="1", text="words unknown here")
    transcript = Transcript(chunks=(chunks[0], bare, chunks[1]), channels=("1",))
    assert render_txt(transcript).splitlines() == [SENTENCES[0], "words unknown here", SENTENCES[1]]
    outputs = {o.name: o for o in render_outputs({}, transcript, [OutputFormat.SRT], "k")}
    srt = outputs["srt"].body.decode()
    assert "unknown" not in srt
    assert " ".join(line for cue in parse_srt(srt) for line in cue.lines) == f"{SENTENCES[0]} {SENTENCES[1]}"


def test_empty_transcript() -> None:
    transcript = Transcript()
    assert render_txt(transcript) == ""
    assert preview(transcript) == ""
    names = [o.name for o in render_outputs({}, transcript, list(OutputFormat), "k")]
    assert names == ["json", "txt", "srt", "vtt"]


def two_channel_transcript() -> Transcript:
    left = sentence_chunks(channel="1", start=0.0)
    right = sentence_chunks(channel="2", start=0.5)
    return Transcript(chunks=(*left, *right), channels=("1", "2"))


def test_multichannel_txt_labels_every_line_in_time_order() -> None:
    lines = render_txt(two_channel_transcript()).splitlines()
    assert len(lines) == 6
    assert lines[0] == f"[channel 1] {SENTENCES[0]}"
    assert lines[1] == f"[channel 2] {SENTENCES[0]}"
    assert [line.split("] ", 1)[0] for line in lines] == ["[channel 1", "[channel 2"] * 3


def test_preview_of_short_text_is_the_text() -> None:
    transcript = Transcript(chunks=(Chunk("1", "he was not"), Chunk("1", "an ill man")), channels=("1",))
    assert preview(transcript) == "he was not an ill man"


@pytest.mark.parametrize("limit", [20, 50, 51, 200])
def test_long_preview_is_cut_at_a_word_boundary(limit: int) -> None:
    text = " ".join(SENTENCES * 5)
    # chunks without words keep their order
    transcript = Transcript(chunks=tuple(Chunk("1", sentence) for sentence in SENTENCES * 5), channels=("1",))
    result = preview(transcript, limit)
    assert result.endswith("\u2026")
    assert len(result) <= limit
    head = result[:-1]
    assert text.startswith(head)
    assert text[len(head)] == " "
    assert len(head) >= limit - 15


def test_preview_keeps_a_word_that_ends_exactly_at_the_limit() -> None:
    transcript = Transcript(chunks=(Chunk("1", "aaa bbb ccc"),), channels=("1",))
    assert preview(transcript, 8) == "aaa bbb\u2026"
    assert preview(transcript, 7) == "aaa\u2026"
    assert preview(transcript, 11) == "aaa bbb ccc"


def test_preview_has_no_channel_labels() -> None:
    result = preview(two_channel_transcript(), 60)
    assert "channel" not in result
    assert result.startswith("and mister john dashwood")


def test_preview_of_one_huge_word_is_cut_hard() -> None:
    transcript = Transcript(chunks=(Chunk("1", "x" * 500),), channels=("1",))
    assert preview(transcript, 10) == "x" * 9 + "\u2026"


# --------------------------------------------------------------------------------------------------------
# JSON and render_outputs
# --------------------------------------------------------------------------------------------------------

RESPONSE: dict[str, Any] = {
    "@type": "type.googleapis.com/yandex.cloud.ai.stt.v2.LongRunningRecognitionResponse",
    "chunks": [
        {
            "alternatives": [
                {
                    "words": [
                        {
                            "startTime": "0.879999999s",
                            "endTime": "1.159999992s",
                            "word": "привет",
                            "confidence": 1,
                        }
                    ],
                    "text": "привет «мир»",
                    "confidence": 1,
                }
            ],
            "channelTag": "1",
        }
    ],
    "zeta": None,
    "alpha": [1.5, True, "\u2026"],
}


def test_json_round_trips_byte_exact() -> None:
    body = render_json(RESPONSE)
    assert json.loads(body) == RESPONSE
    assert list(json.loads(body)) == list(RESPONSE)  # key order kept, not sorted
    assert "привет «мир»".encode() in body  # UTF-8, not \u escapes
    assert b"\\u" not in body
    assert b'\n  "chunks"' in body  # indented
    assert render_json(json.loads(body)) == body


def by_name(outputs: Sequence[RenderedOutput]) -> dict[str, RenderedOutput]:
    named = {output.name: output for output in outputs}
    assert len(named) == len(outputs)
    return named


def test_single_channel_outputs() -> None:
    transcript = Transcript(chunks=tuple(sentence_chunks()), channels=("1",))
    base = output_base_key("talks/monday.wav", "out/")
    outputs = by_name(render_outputs(RESPONSE, transcript, list(OutputFormat), base))
    assert {name: (o.key, o.content_type, o.format, o.channel) for name, o in outputs.items()} == {
        "json": ("out/talks/monday.wav.json", "application/json; charset=utf-8", OutputFormat.JSON, None),
        "txt": ("out/talks/monday.wav.txt", "text/plain; charset=utf-8", OutputFormat.TXT, None),
        "srt": ("out/talks/monday.wav.srt", "application/x-subrip; charset=utf-8", OutputFormat.SRT, None),
        "vtt": ("out/talks/monday.wav.vtt", "text/vtt; charset=utf-8", OutputFormat.VTT, None),
    }
    assert outputs["json"].body == render_json(RESPONSE)
    assert outputs["txt"].body == render_txt(transcript).encode()
    srt = parse_srt(outputs["srt"].body.decode())
    vtt = parse_vtt(outputs["vtt"].body.decode())
    assert_well_formed(srt)
    assert_well_formed(vtt)
    assert " ".join(line for cue in srt for line in cue.lines) == " ".join(SENTENCES)
    assert len(srt) == len(vtt) >= 3


def test_multichannel_outputs_split_subtitles_per_channel() -> None:
    transcript = two_channel_transcript()
    outputs = render_outputs(RESPONSE, transcript, list(OutputFormat), "out/call.wav")
    assert [(o.name, o.key, o.channel) for o in outputs] == [
        ("json", "out/call.wav.json", None),
        ("txt", "out/call.wav.txt", None),
        ("srt:1", "out/call.wav.channel-1.srt", "1"),
        ("srt:2", "out/call.wav.channel-2.srt", "2"),
        ("vtt:1", "out/call.wav.channel-1.vtt", "1"),
        ("vtt:2", "out/call.wav.channel-2.vtt", "2"),
    ]
    named = by_name(outputs)
    assert named["txt"].body.decode().startswith("[channel 1] ")
    for channel, offset in (("1", 0), ("2", 500)):
        srt = parse_srt(named[f"srt:{channel}"].body.decode())
        assert_well_formed(srt)
        assert srt[0].start_ms == offset
        assert " ".join(line for cue in srt for line in cue.lines) == " ".join(SENTENCES)
        vtt = parse_vtt(named[f"vtt:{channel}"].body.decode())
        assert [(c.start_ms, c.end_ms, c.lines) for c in vtt] == [
            (c.start_ms, c.end_ms, c.lines) for c in srt
        ]


def test_multichannel_channel_without_speech_still_gets_its_files() -> None:
    transcript = Transcript(chunks=tuple(sentence_chunks(channel="1")), channels=("1", "2"))
    named = by_name(render_outputs({}, transcript, [OutputFormat.VTT], "k"))
    assert set(named) == {"vtt:1", "vtt:2"}
    assert named["vtt:2"].body == b"WEBVTT\n"
    assert parse_vtt(named["vtt:1"].body.decode())


def test_outputs_follow_the_requested_formats_once_each() -> None:
    transcript = Transcript(chunks=tuple(sentence_chunks()), channels=("1",))
    formats = [OutputFormat.SRT, OutputFormat.JSON, OutputFormat.SRT]
    assert [o.name for o in render_outputs({}, transcript, formats, "k")] == ["srt", "json"]


# --------------------------------------------------------------------------------------------------------
# Output keys
# --------------------------------------------------------------------------------------------------------


def test_output_base_key_keeps_the_full_source_key() -> None:
    assert output_base_key("a.wav", "out/") == "out/a.wav"
    assert output_base_key("a.wav", "out/") != output_base_key("a.mp3", "out/")
    assert output_base_key("calls/2024/a.wav", "transcripts/") == "transcripts/calls/2024/a.wav"


def test_output_prefix_is_used_as_is() -> None:
    assert output_base_key("a.wav", "") == "a.wav"
    assert output_base_key("a.wav", "out") == "outa.wav"
    assert output_base_key("a.wav", "out-") == "out-a.wav"


def test_s3_uri() -> None:
    assert s3_uri("bucket", "out/a.wav.json") == "s3://bucket/out/a.wav.json"
