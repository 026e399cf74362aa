"""parse_v3_results: getRecognition's results into a Transcript, and how the outputs label speakers."""

from __future__ import annotations

from typing import Any

from speechkit_operator.clients.speech.v3_parsing import parse_v3_results, transcript_tag
from speechkit_operator.contracts.stt_v3 import StreamingResponse
from speechkit_operator.logic.rendering import render_outputs, render_txt
from speechkit_operator.models.job import OutputFormat
from speechkit_operator.models.recognition import Word


def final(
    tag: str, index: int, text: str, *words: tuple[str, int, int], languages: Any = ()
) -> StreamingResponse:
    return StreamingResponse.model_validate(
        {
            "channelTag": tag,
            "audioCursors": {"finalIndex": str(index)},
            "final": {
                "alternatives": [
                    {
                        "text": text,
                        "words": [
                            {"text": w, "startTimeMs": str(s), "endTimeMs": str(e)} for w, s, e in words
                        ],
                        "languages": list(languages),
                    }
                ]
            },
        }
    )


def refinement(tag: str, index: int, text: str) -> StreamingResponse:
    return StreamingResponse.model_validate(
        {
            "channelTag": tag,
            "audioCursors": {"finalIndex": str(index)},
            "finalRefinement": {
                "finalIndex": str(index),
                "normalizedText": {"alternatives": [{"text": text}]},
            },
        }
    )


def eou(tag: str) -> StreamingResponse:
    return StreamingResponse.model_validate({"channelTag": tag, "eouUpdate": {"timeMs": "900"}})


def test_finals_make_the_words_and_refinements_the_text() -> None:
    results = [
        final("0", 0, "twenty two birds", ("twenty", 100, 300), ("two", 300, 450), ("birds", 500, 900)),
        refinement("0", 0, "22 birds."),
        eou("0"),
        final("0", 1, "again", ("again", 1500, 1900)),
        eou("0"),
    ]
    transcript = parse_v3_results(results)
    assert [(c.channel, c.text) for c in transcript.chunks] == [("1", "22 birds."), ("1", "again")]
    # Subtitles say what the text says: the refined words share the final's time, by their length.
    refined = transcript.chunks[0].words
    assert [w.text for w in refined] == ["22", "birds."]
    assert (refined[0].start, refined[-1].end) == (0.1, 0.9)
    assert transcript.chunks[1].words == (Word("again", 1.5, 1.9),)
    assert transcript.channels == ("1",) and not transcript.speakers and transcript.language_code is None


def test_channels_count_from_one_and_interleave_by_time() -> None:
    results = [
        final("1", 0, "right late", ("right", 2000, 2500)),
        final("0", 0, "left early", ("left", 100, 400)),
        final("0", 1, "left late", ("left", 3000, 3300)),
    ]
    transcript = parse_v3_results(results)
    assert [(c.channel, c.text) for c in transcript.chunks] == [
        ("1", "left early"),
        ("2", "right late"),
        ("1", "left late"),
    ]
    assert transcript.channels == ("1", "2")
    assert [transcript_tag(tag) for tag in ("0", "9", "x")] == ["1", "10", "x"]


def test_speakers_label_the_text_and_split_the_subtitles() -> None:
    results = [
        final("0", 0, "hello", ("hello", 0, 500)),
        final("1", 0, "hi there", ("hi", 700, 900), ("there", 900, 1200)),
    ]
    transcript = parse_v3_results(results, speakers=True)
    assert render_txt(transcript) == "[speaker 1] hello\n[speaker 2] hi there\n"
    outputs = render_outputs([], transcript, [OutputFormat.SRT, OutputFormat.TXT], "out/a.wav")
    assert [(o.name, o.key) for o in outputs] == [
        ("srt:speaker-1", "out/a.wav.speaker-1.srt"),
        ("srt:speaker-2", "out/a.wav.speaker-2.srt"),
        ("txt", "out/a.wav.txt"),
    ]


def test_the_detected_language_is_the_most_probable_over_the_words() -> None:
    ru = [{"languageCode": "ru-RU", "probability": 0.9}]
    en = [{"languageCode": "en-US", "probability": 0.8}]
    results = [
        final("0", 0, "да", ("да", 0, 200), languages=en),
        final("0", 1, "один два три", ("один", 300, 500), ("два", 500, 700), ("три", 700, 900), languages=ru),
        eou("0"),
    ]
    assert parse_v3_results(results).language_code == "ru-RU"


def test_empty_finals_and_other_events_leave_nothing() -> None:
    empty = StreamingResponse.model_validate({"channelTag": "0", "final": {"alternatives": []}})
    partial = StreamingResponse.model_validate({"partial": {"alternatives": [{"text": "hel"}]}})
    assert parse_v3_results([empty, partial, eou("0")]).chunks == ()


def test_finals_without_cursors_are_all_kept_and_a_refinement_goes_to_the_latest() -> None:
    """An answer without audioCursors (SpeechKit documents them, a proxy or another service may drop
    them): no final is lost, and a refinement belongs to the channel's latest final."""

    def bare(text: str, start: int) -> StreamingResponse:
        words = [
            {"text": w, "startTimeMs": str(start + 300 * i), "endTimeMs": str(start + 300 * i + 250)}
            for i, w in enumerate(text.split())
        ]
        return StreamingResponse.model_validate(
            {"channelTag": "0", "final": {"alternatives": [{"text": text, "words": words}]}}
        )

    refinement_without_cursors = StreamingResponse.model_validate(
        {
            "channelTag": "0",
            "finalRefinement": {
                "finalIndex": "7",
                "normalizedText": {"alternatives": [{"text": "General Kenobi!"}]},
            },
        }
    )
    transcript = parse_v3_results(
        [bare("hello there", 0), bare("general kenobi", 2000), refinement_without_cursors]
    )
    assert [c.text for c in transcript.chunks] == ["hello there", "General Kenobi!"]
