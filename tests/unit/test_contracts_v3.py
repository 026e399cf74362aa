"""The v3 wire contract (speechkit_operator.contracts.stt_v3): requests as SpeechKit documents them, and
getRecognition's streamed answer read incrementally, whatever its chunking."""

from __future__ import annotations

import json

import pytest

from speechkit_operator.contracts.grpc import GrpcCode
from speechkit_operator.contracts.stt_v3 import (
    AudioFormatOptions,
    ContainerAudio,
    ContainerAudioType,
    LanguageRestrictionOptions,
    LanguageRestrictionType,
    RawAudio,
    RecognitionModelOptions,
    RecognizeFileRequest,
    ResultStreamDecoder,
    ResultStreamError,
    SpeakerLabeling,
    SpeakerLabelingOptions,
    TextNormalization,
    TextNormalizationOptions,
    decode_results,
    encode_result,
    parse_result,
)

# The shape of the example answer in SpeechKit's v3 walkthrough (pretty-printed, one object after another).
EXAMPLE = """{
 "result": {
  "sessionUuid": {"uuid": "24935f24-2c1f62dc", "userRequestId": "f8d2h7m07t4i"},
  "audioCursors": {"receivedDataMs": "7400", "resetTimeMs": "0", "partialTimeMs": "7400",
                   "finalTimeMs": "7400", "finalIndex": "0", "eouTimeMs": "0"},
  "responseWallTimeMs": "189",
  "final": {"alternatives": [{"words": [{"text": "Привет", "startTimeMs": "459", "endTimeMs": "1120"}],
                              "text": "Привет мир", "startTimeMs": "0", "endTimeMs": "7400",
                              "confidence": 0, "languages": []}],
            "channelTag": "0"},
  "channelTag": "0"
 }
}
{
 "result": {
  "audioCursors": {"finalIndex": "0"},
  "finalRefinement": {"finalIndex": "0", "normalizedText": {"alternatives": [{"text": "Привет, мир!",
      "confidence": "0.9", "languages": [{"languageCode": "ru-RU", "probability": "0.98"}]}]}},
  "channelTag": "0"
 }
}
{"result": {"eouUpdate": {"timeMs": "7400"}, "channelTag": "0", "statusCode": null, "somethingNew": {}}}
"""


def test_a_request_is_written_as_the_docs_show_it_and_read_back_in_either_spelling() -> None:
    request = RecognizeFileRequest(
        uri="https://storage.yandexcloud.net/bucket/a.wav",
        recognition_model=RecognitionModelOptions(
            model="general:rc",
            audio_format=AudioFormatOptions(
                raw_audio=RawAudio(sample_rate_hertz=8000, audio_channel_count=2)
            ),
            text_normalization=TextNormalizationOptions(
                text_normalization=TextNormalization.ENABLED, literature_text=True
            ),
            language_restriction=LanguageRestrictionOptions(
                restriction_type=LanguageRestrictionType.BLACKLIST, language_code=["kk-KZ"]
            ),
        ),
    )
    wire = request.to_wire()
    assert wire["recognitionModel"]["audioFormat"] == {
        "rawAudio": {"audioEncoding": "LINEAR16_PCM", "sampleRateHertz": "8000", "audioChannelCount": "2"}
    }
    assert wire["recognitionModel"]["textNormalization"]["literatureText"] is True
    assert "speakerLabeling" not in wire and "content" not in wire
    assert RecognizeFileRequest.model_validate(wire) == request
    snake = json.loads(json.dumps(wire).replace("recognitionModel", "recognition_model"))
    assert RecognizeFileRequest.model_validate(snake) == request
    labeled = RecognizeFileRequest(
        content="AAAA",
        recognition_model=RecognitionModelOptions(
            audio_format=AudioFormatOptions(
                container_audio=ContainerAudio(container_audio_type=ContainerAudioType.WAV)
            )
        ),
        speaker_labeling=SpeakerLabelingOptions(speaker_labeling=SpeakerLabeling.ENABLED),
    ).to_wire()
    assert labeled["speakerLabeling"] == {"speakerLabeling": "SPEAKER_LABELING_ENABLED"}


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 100_000])
def test_the_result_stream_reads_the_same_whatever_the_chunking(size: int) -> None:
    """Chunks may split a result, a line, or a UTF-8 character (Cyrillic is two bytes)."""
    body = EXAMPLE.encode()
    decoder = ResultStreamDecoder()
    raw = []
    for start in range(0, len(body), size):
        raw += decoder.feed(body[start : start + size])
    decoder.close()
    assert raw[2]["result"]["somethingNew"] == {}  # kept as it came, for the json output
    results = [parse_result(item) for item in raw]

    final, refinement, eou = results
    assert final.final is not None and final.final.alternatives[0].words[0].start_time_ms == 459
    assert final.final.alternatives[0].text == "Привет мир"
    assert refinement.final_refinement is not None and refinement.final_refinement.normalized_text is not None
    (normalized,) = refinement.final_refinement.normalized_text.alternatives
    assert (normalized.text, normalized.confidence, normalized.languages[0].probability) == (
        "Привет, мир!",
        0.9,
        0.98,
    )
    assert eou.eou_update is not None and eou.eou_update.time_ms == 7400


def test_results_are_written_as_they_are_read() -> None:
    results = list(decode_results(EXAMPLE.encode()))
    line = encode_result(results[0])
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert b'"startTimeMs":"459"' in line  # int64 as a string
    assert list(decode_results(line)) == results[:1]


@pytest.mark.parametrize(
    ("body", "message", "code"),
    [
        (
            b'{"result": {}}\n{"error": {"code": 5, "message": "results expired"}}\n',
            "results expired",
            GrpcCode.NOT_FOUND,
        ),
        (b'{"result": {}}\n{"result": {"final": ', "ended in the middle", None),
        (b"[1, 2]", "other than a JSON object", None),
        (b'{"other": 1}', "neither a result nor an error", None),
        (b"\xff\xfe{}", "not UTF-8", None),
    ],
)
def test_a_broken_stream_is_a_clear_error(body: bytes, message: str, code: GrpcCode | None) -> None:
    with pytest.raises(ResultStreamError, match=message) as caught:
        list(decode_results(body))
    assert caught.value.code == code


def test_an_endless_object_is_refused_without_holding_it() -> None:
    decoder = ResultStreamDecoder(max_object_bytes=1024)
    decoder.feed(b'{"result": {"final": {"alternatives": [{"text": "')
    with pytest.raises(ResultStreamError, match="larger than 1024 bytes"):
        for _ in range(100):
            decoder.feed(b"a" * 64)
