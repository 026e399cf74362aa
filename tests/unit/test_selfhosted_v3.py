# ruff: noqa: RUF001 - Russian words are written in Cyrillic
"""The self-hosted service's SpeechKit v3 async API: recognizeFileAsync, getRecognition, deleteRecognition
and v3 operations, over HTTP with real worker processes running the fake engines of
``test_selfhosted_app`` (and one that detects languages and punctuates, defined here)."""

from __future__ import annotations

import base64
import json
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
import pytest_asyncio

from speechkit_operator.contracts.stt_v3 import StreamingResponse, decode_results, encode_result
from speechkit_operator.models.recognition import Word
from speechkit_operator.selfhosted import app as app_module
from speechkit_operator.selfhosted.app import create_app
from speechkit_operator.selfhosted.operations import OperationStore
from tests.unit.test_selfhosted_app import (
    AUTH,
    OPERATION_ID,
    TIMESTAMP,
    FakeDecodeError,
    FakeEngineFactory,
    FakeS3,
    Service,
    SteppingClock,
    content,
    fake_decode,
    settings,
    start_service,
)

module_loop = pytest.mark.asyncio(loop_scope="module")

RECOGNIZE = "/stt/v3/recognizeFileAsync"
GET = "/stt/v3/getRecognition"
DELETE = "/stt/v3/deleteRecognition"
OGG = {"containerAudio": {"containerAudioType": "OGG_OPUS"}}
ENGLISH = {"restrictionType": "WHITELIST", "languageCode": ["en-US"]}
ENABLED = {"textNormalization": "TEXT_NORMALIZATION_ENABLED"}


# --- An engine that detects the language and punctuates (module level: the workers import it) --------


@dataclass(frozen=True)
class DetectingUtterance:
    text: str
    words: tuple[Word, ...]
    display_text: str | None
    language_code: str | None
    language_probability: float | None


class DetectingEngine:
    """Like the fake engine (one utterance per channel, words 0.5 s apart); ``?lang`` is replaced by the
    language it was asked for; ``auto`` detects Russian from Cyrillic letters, else English (0.9); the
    display text is capitalised with a final period."""

    name = "detecting"
    languages = frozenset({"en-US", "ru-RU", "auto"})

    def recognize(self, pcm: str, language_code: str) -> list[DetectingUtterance]:
        words = [language_code if w == "?lang" else w for w in pcm.split() if not w.startswith("@")]
        if not words:
            return []
        timed = tuple(Word(word, 0.5 * i, 0.5 * i + 0.4) for i, word in enumerate(words))
        text = " ".join(words)
        detected, probability = language_code, None
        if language_code == "auto":
            cyrillic = any("а" <= char.lower() <= "я" for char in text)
            detected, probability = ("ru-RU" if cyrillic else "en-US"), 0.9
        return [DetectingUtterance(text, timed, text[:1].upper() + text[1:] + ".", detected, probability)]


@dataclass(frozen=True)
class DetectingEngineFactory:
    def __call__(self) -> DetectingEngine:
        return DetectingEngine()


# --- Helpers ----------------------------------------------------------------------------------------------


def v3_body(
    audio: dict[str, Any],
    *,
    audio_format: dict[str, Any] | None = None,
    restriction: dict[str, Any] | None = ENGLISH,
    normalization: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    model: dict[str, Any] = {"model": "general", "audioFormat": audio_format or OGG}
    if restriction is not None:
        model["languageRestriction"] = restriction
    if normalization is not None:
        model["textNormalization"] = normalization
    return {**audio, "recognitionModel": model, **extra}


class V3:
    """The v3 calls of a running service."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.client = service.client

    async def submit(
        self, body: dict[str, Any], headers: dict[str, str] | None = AUTH
    ) -> aiohttp.ClientResponse:
        return await self.client.post(RECOGNIZE, json=body, headers=headers)

    async def submit_ok(self, body: dict[str, Any]) -> dict[str, Any]:
        response = await self.submit(body)
        payload: dict[str, Any] = await response.json()
        assert response.status == 200, payload
        return payload

    async def get(self, operation_id: str, headers: dict[str, str] | None = AUTH) -> aiohttp.ClientResponse:
        return await self.client.get(GET, params={"operation_id": operation_id}, headers=headers)

    async def delete(
        self, operation_id: str, headers: dict[str, str] | None = AUTH
    ) -> aiohttp.ClientResponse:
        return await self.client.delete(DELETE, params={"operation_id": operation_id}, headers=headers)

    async def lines(self, operation_id: str) -> list[dict[str, Any]]:
        """getRecognition's answer as its JSON lines (each checked against the contract too)."""
        response = await self.get(operation_id)
        raw = await response.read()
        assert response.status == 200, raw
        assert response.headers["Content-Type"].startswith("application/json")
        lines = [json.loads(line) for line in raw.splitlines()]
        assert raw == b"".join(encode_result(result) for result in decode_results(raw))
        assert all(set(line) == {"result"} for line in lines)
        return [line["result"] for line in lines]

    async def recognise(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        accepted = await self.submit_ok(body)
        done = await self.service.wait_done(accepted["id"])
        assert done["done"] and "error" not in done and "response" not in done, done
        return await self.lines(accepted["id"])


def events(results: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(channelTag, event) of each message."""
    kinds = ("final", "finalRefinement", "eouUpdate")
    return [(r["channelTag"], next(kind for kind in kinds if kind in r)) for r in results]


def finals(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r["final"]["alternatives"][0] for r in results if "final" in r]


def refinements(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        r["finalRefinement"]["normalizedText"]["alternatives"][0] for r in results if "finalRefinement" in r
    ]


def word_times(alternative: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(w["text"], w["startTimeMs"], w["endTimeMs"]) for w in alternative["words"]]


async def error_of(response: aiohttp.ClientResponse) -> tuple[int, int, str]:
    body = await response.json()
    assert body["details"] == []
    return response.status, body["code"], body["message"]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def fake_s3() -> FakeS3:
    return FakeS3({("bucket", "calls/a b.wav"): b"from the bucket"})


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def v3(fake_s3: FakeS3) -> AsyncIterator[V3]:
    """The fake engine (en-US and ru-RU, no language detection, no display text)."""
    app = create_app(
        settings(allowed_hosts="127.0.0.1", allowed_buckets="bucket"),
        engine_factory=FakeEngineFactory(),
        decoder=fake_decode,
        client_errors=(FakeDecodeError,),
        s3_client_factory=lambda: cast(Any, fake_s3),
    )
    client = await start_service(app)
    service = Service(client)
    try:
        await service.wait_ready()
        yield V3(service)
    finally:
        await client.close()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def detecting() -> AsyncIterator[V3]:
    """The engine that detects languages and has display text."""
    app = create_app(
        settings(),
        engine_factory=DetectingEngineFactory(),
        decoder=fake_decode,
        client_errors=(FakeDecodeError,),
    )
    client = await start_service(app)
    service = Service(client)
    try:
        await service.wait_ready()
        yield V3(service)
    finally:
        await client.close()


# --- recognizeFileAsync, the operation and getRecognition -------------------------------------------------


@module_loop
async def test_multichannel_raw_audio_is_recognised_with_v3_shapes(
    v3: V3, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pages of one line: the stream is read from the store page by page.
    monkeypatch.setattr(app_module, "RESULT_PAGE", 1)
    raw = {"rawAudio": {"audioEncoding": "LINEAR16_PCM", "sampleRateHertz": "16000", "audioChannelCount": 2}}
    accepted = await v3.submit_ok(v3_body(content("when writing| the hobbit"), audio_format=raw))
    assert set(accepted) == {"id", "description", "createdAt", "createdBy", "modifiedAt", "done"}
    assert accepted["description"] == "STT v3 async recognition"
    assert OPERATION_ID.match(accepted["id"]) and TIMESTAMP.match(accepted["createdAt"])
    assert accepted["done"] is False
    done = await v3.service.wait_done(accepted["id"])
    assert set(done) == {"id", "description", "createdAt", "createdBy", "modifiedAt", "done"}, done
    assert done["done"] is True and done["description"] == "STT v3 async recognition"

    results = await v3.lines(accepted["id"])
    # Ordered by start: channel "0" at 0 s, channel "1" at 0.25 s; each a final, then its end of utterance.
    assert events(results) == [("0", "final"), ("0", "eouUpdate"), ("1", "final"), ("1", "eouUpdate")]
    first, second = finals(results)
    assert word_times(first) == [("when", "0", "400"), ("writing", "500", "900")]
    assert word_times(second) == [("the", "250", "650"), ("hobbit", "750", "1150")]
    assert (first["text"], second["text"]) == ("when writing", "the hobbit")
    assert (first["startTimeMs"], first["endTimeMs"], first["languages"]) == ("0", "900", [])
    assert results[0]["final"]["channelTag"] == "0"
    assert results[0]["audioCursors"] == {
        "receivedDataMs": "1150",
        "resetTimeMs": "0",
        "partialTimeMs": "900",
        "finalTimeMs": "900",
        "finalIndex": "0",
        "eouTimeMs": "0",
    }
    assert results[1]["eouUpdate"] == {"timeMs": "900"}
    assert results[1]["audioCursors"]["eouTimeMs"] == "900"
    assert results[3]["audioCursors"]["finalIndex"] == "0", "finalIndex counts per channel"
    # Read twice: the results stay until deleted or expired.
    assert await v3.lines(accepted["id"]) == results


@module_loop
async def test_final_index_and_segments_run_per_channel(v3: V3) -> None:
    # Three channels, one utterance each, and a second request on mono: finalIndex starts at 0 per channel.
    raw = {"rawAudio": {"audioEncoding": "LINEAR16_PCM", "sampleRateHertz": 8000, "audioChannelCount": "3"}}
    results = await v3.recognise(v3_body(content("a|b|c"), audio_format=raw))
    assert sorted(tag for tag, kind in events(results) if kind == "final") == ["0", "1", "2"]
    assert {r["audioCursors"]["finalIndex"] for r in results} == {"0"}


@module_loop
async def test_the_decoder_gets_the_declared_format(v3: V3) -> None:
    wav = {"containerAudio": {"containerAudioType": "WAV"}}
    results = await v3.recognise(v3_body(content("!params"), audio_format=wav, normalization=ENABLED))
    assert refinements(results)[0]["text"] == "LINEAR16_PCM None None 14400"
    mp3 = {"container_audio": {"container_audio_type": 3}}  # proto names, enum by number
    results = await v3.recognise(v3_body(content("!params"), audio_format=mp3, normalization=ENABLED))
    assert refinements(results)[0]["text"] == "MP3 None None 14400"
    raw = {"rawAudio": {"audioEncoding": 1, "sampleRateHertz": 48000}}
    results = await v3.recognise(v3_body(content("!params"), audio_format=raw, normalization=ENABLED))
    assert refinements(results)[0]["text"] == "LINEAR16_PCM 48000 1 14400"


@module_loop
async def test_text_normalization_off_and_on(v3: V3) -> None:
    spoken = content("call 112 now")
    off = await v3.recognise(v3_body(spoken))
    assert events(off) == [("0", "final"), ("0", "eouUpdate")], "no refinement without normalization"
    # The final: plain words, numbers in words (112 was 0.5-0.9 s: its words share that span).
    (final,) = finals(off)
    assert final["text"] == "call one hundred twelve now"
    assert word_times(final) == [
        ("call", "0", "400"),
        ("one", "500", "633"),
        ("hundred", "633", "767"),
        ("twelve", "767", "900"),
        ("now", "1000", "1400"),
    ]

    on = await v3.recognise(v3_body(spoken, normalization=ENABLED))
    assert events(on) == [("0", "final"), ("0", "finalRefinement"), ("0", "eouUpdate")]
    assert finals(on) == finals(off)
    (refined,) = refinements(on)
    assert refined["text"] == "call 112 now"
    assert word_times(refined) == [("call", "0", "400"), ("112", "500", "900"), ("now", "1000", "1400")]
    assert on[1]["finalRefinement"]["finalIndex"] == "0"
    assert on[1]["finalRefinement"]["normalizedText"]["channelTag"] == "0"

    # Unspecified (by name or as 0) is the default: disabled.
    for unspecified in ("TEXT_NORMALIZATION_UNSPECIFIED", 0):
        plain = await v3.recognise(v3_body(spoken, normalization={"textNormalization": unspecified}))
        assert not refinements(plain)

    # Russian numbers are spelled in Russian.
    russian = {"restrictionType": "WHITELIST", "languageCode": ["ru-RU"]}
    results = await v3.recognise(v3_body(content("вызов 112"), restriction=russian, normalization=ENABLED))
    assert finals(results)[0]["text"] == "вызов сто двенадцать"
    assert refinements(results)[0]["text"] == "вызов 112"


@module_loop
async def test_profanity_is_masked_in_the_final_and_the_refinement(v3: V3) -> None:
    normalization = {**ENABLED, "profanityFilter": True}
    results = await v3.recognise(v3_body(content("what the fuck 5 shit"), normalization=normalization))
    (final,) = finals(results)
    (refined,) = refinements(results)
    assert final["text"] == "what the f*** five s***"
    assert [w["text"] for w in final["words"]] == final["text"].split()
    assert refined["text"] == "what the f*** 5 s***"
    assert [w["text"] for w in refined["words"]] == refined["text"].split()
    unfiltered = await v3.recognise(v3_body(content("what the fuck")))
    assert finals(unfiltered)[0]["text"] == "what the fuck"


@module_loop
async def test_literature_text_refines_with_the_display_text(detecting: V3) -> None:
    normalization = {**ENABLED, "literatureText": True}
    results = await detecting.recognise(v3_body(content("he has 2 cats"), normalization=normalization))
    assert finals(results)[0]["text"] == "he has two cats"
    assert refinements(results)[0]["text"] == "He has 2 cats."
    assert [w["text"] for w in refinements(results)[0]["words"]] == ["he", "has", "2", "cats"]
    plain = await detecting.recognise(v3_body(content("he has 2 cats"), normalization=ENABLED))
    assert refinements(plain)[0]["text"] == "he has 2 cats"


@module_loop
async def test_an_engine_without_display_text_refines_with_its_words(v3: V3) -> None:
    normalization = {**ENABLED, "literatureText": True}
    results = await v3.recognise(v3_body(content("plain words"), normalization=normalization))
    assert refinements(results)[0]["text"] == "plain words"


@module_loop
async def test_languages_are_detected_and_reported(detecting: V3) -> None:
    # No restriction: detection; the alternatives (final and refinement) carry the language.
    results = await detecting.recognise(
        v3_body(content("привет мир"), restriction=None, normalization=ENABLED)
    )
    expected = [{"languageCode": "ru-RU", "probability": 0.9}]
    assert finals(results)[0]["languages"] == expected
    assert refinements(results)[0]["languages"] == expected
    # An empty WHITELIST and one of several languages detect too.
    for restriction in (
        {"restrictionType": "WHITELIST", "languageCode": []},
        {"restrictionType": "WHITELIST", "languageCode": ["ru-RU", "en-US"]},
    ):
        results = await detecting.recognise(v3_body(content("hello ?lang"), restriction=restriction))
        assert finals(results)[0]["text"] == "hello auto"
        assert finals(results)[0]["languages"] == [{"languageCode": "en-US", "probability": 0.9}]
    # One language: that one, not detected, so not reported.
    results = await detecting.recognise(v3_body(content("hello ?lang")))
    assert finals(results)[0]["text"] == "hello en-US"
    assert finals(results)[0]["languages"] == []
    # Listed languages the engine lacks are skipped; a BLACKLIST leaving one language uses it.
    restrictions: list[dict[str, Any]] = [
        {"restrictionType": "WHITELIST", "languageCode": ["de-DE", "ru-ru"]},
        {"restrictionType": "BLACKLIST", "languageCode": ["en-US"]},
        {"restrictionType": 2, "languageCode": ["en-US"]},
    ]
    for restriction in restrictions:
        results = await detecting.recognise(v3_body(content("?lang"), restriction=restriction))
        assert finals(results)[0]["text"] == "ru-RU", restriction
        assert finals(results)[0]["languages"] == []
    # A BLACKLIST leaving several: detection.
    blacklist = {"restrictionType": "BLACKLIST", "languageCode": ["de-DE"]}
    results = await detecting.recognise(v3_body(content("?lang"), restriction=blacklist))
    assert finals(results)[0]["text"] == "auto"


@module_loop
async def test_languages_of_an_engine_that_cannot_detect(v3: V3) -> None:
    # Several listed: the first the engine has (shown by the language numbers are spelled in).
    several = {"restrictionType": "WHITELIST", "languageCode": ["de-DE", "ru-RU", "en-US"]}
    results = await v3.recognise(v3_body(content("5"), restriction=several))
    assert finals(results)[0]["text"] == "пять"
    refused = [
        (None, "recognitionModel.languageRestriction: no language is named, and this service's engine"),
        (
            {"restrictionType": "BLACKLIST", "languageCode": ["de-DE"]},
            "recognitionModel.languageRestriction: a BLACKLIST leaves several languages to choose from",
        ),
        (
            {"restrictionType": "BLACKLIST", "languageCode": ["en-US", "ru-RU"]},
            "recognitionModel.languageRestriction.languageCode: the BLACKLIST excludes every language",
        ),
        (
            {"restrictionType": "WHITELIST", "languageCode": ["de-DE"]},
            'recognitionModel.languageRestriction.languageCode: language "de-DE" is not supported by this '
            "service; supported: en-US, ru-RU",
        ),
        (
            {"restrictionType": "WHITELIST", "languageCode": ["de-DE", "fr-FR"]},
            'recognitionModel.languageRestriction.languageCode: none of the languages "de-DE", "fr-FR" is',
        ),
    ]
    for restriction, message in refused:
        status, code, text = await error_of(await v3.submit(v3_body(content("x"), restriction=restriction)))
        assert (status, code) == (400, 3)
        assert text.startswith(message), text
    status, code, text = await error_of(await v3.submit(v3_body(content("x"), restriction=None)))
    assert 'name it with {"restrictionType": "WHITELIST", "languageCode": ["<code>"]}' in text
    assert text.endswith("(supported: en-US, ru-RU)")


@module_loop
async def test_nothing_recognised_is_an_empty_stream(v3: V3) -> None:
    assert await v3.recognise(v3_body(content("@3"))) == []


@module_loop
async def test_audio_from_s3_and_http_uris(v3: V3, fake_s3: FakeS3) -> None:
    results = await v3.recognise(v3_body({"uri": "s3://bucket/calls/a%20b.wav"}))
    assert finals(results)[0]["text"] == "from the bucket"
    assert ("bucket", "calls/a b.wav") in fake_s3.calls
    status, code, text = await error_of(await v3.submit(v3_body({"uri": "s3://other/x.wav"})))
    assert (status, code) == (400, 3)
    assert text.startswith("uri: reading bucket other is not allowed by this service")
    status, code, text = await error_of(
        await v3.submit(v3_body({"uri": "https://example.com/a.ogg?X-Sig=1"}))
    )
    assert text.startswith("uri: downloads from example.com:443 are not allowed by this service")
    assert "X-Sig" not in text
    # An allowed host that does not answer: the operation fails with UNAVAILABLE, and so does getRecognition.
    accepted = await v3.submit_ok(v3_body({"uri": "http://127.0.0.1:9/missing.ogg"}))
    done = await v3.service.wait_done(accepted["id"])
    assert done["error"]["code"] == 14
    status, code, text = await error_of(await v3.get(accepted["id"]))
    assert (status, code) == (503, 14)
    assert text == done["error"]["message"]


# --- Validation ----------------------------------------------------------------------------------------


def _model(**fields: Any) -> dict[str, Any]:
    return {"content": base64.b64encode(b"x").decode(), "recognitionModel": fields}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"recognitionModel": {"audioFormat": OGG}},
            "uri, content: one of uri and content (the audio) is required",
        ),
        (
            {"uri": "http://127.0.0.1/a", "content": "eA==", "recognitionModel": {"audioFormat": OGG}},
            "uri, content: set either uri or content, not both",
        ),
        ({"content": "!!!", "recognitionModel": {"audioFormat": OGG}}, "content: not valid base64"),
        ({"content": "", "recognitionModel": {"audioFormat": OGG}}, "content: must not be empty"),
        (
            {"content": base64.b64encode(b"x" * 3000).decode(), "recognitionModel": {"audioFormat": OGG}},
            "content: larger than 2048 bytes; use uri",
        ),
        ({"content": 5, "recognitionModel": {"audioFormat": OGG}}, "content: expected a base64 string"),
        (
            {"uri": "ftp://host/a.ogg", "recognitionModel": {"audioFormat": OGG}},
            "uri: expected an http://, https:// or s3://bucket/key URI",
        ),
        ({"content": "eA=="}, "recognitionModel: required field is missing"),
        (
            {"content": "eA==", "recognitionModel": "general"},
            'recognitionModel: expected an object, got "general"',
        ),
        (
            {
                "content": "eA==",
                "recognitionModel": {"audioFormat": OGG},
                "recognition_model": {"audioFormat": OGG},
            },
            "recognitionModel: given twice (as recognitionModel and recognition_model)",
        ),
        (_model(model="general"), "recognitionModel.audioFormat: required field is missing"),
        (
            _model(audioFormat={}),
            "recognitionModel.audioFormat: one of rawAudio and containerAudio is required",
        ),
        (
            _model(audioFormat={**OGG, "rawAudio": {"sampleRateHertz": 16000}}),
            "recognitionModel.audioFormat: set either rawAudio or containerAudio, not both",
        ),
        (
            _model(audioFormat={"containerAudio": {"containerAudioType": "FLAC"}}),
            'recognitionModel.audioFormat.containerAudio.containerAudioType: unsupported value "FLAC"; '
            "expected one of WAV, OGG_OPUS, MP3",
        ),
        (
            _model(
                audioFormat={"containerAudio": {"containerAudioType": "CONTAINER_AUDIO_TYPE_UNSPECIFIED"}}
            ),
            "recognitionModel.audioFormat.containerAudio.containerAudioType: required; "
            "expected one of WAV, OGG_OPUS, MP3",
        ),
        (
            _model(audioFormat={"rawAudio": {"sampleRateHertz": 16000}}),
            "recognitionModel.audioFormat.rawAudio.audioEncoding: required; expected LINEAR16_PCM",
        ),
        (
            _model(audioFormat={"rawAudio": {"audioEncoding": "LINEAR16_PCM"}}),
            "recognitionModel.audioFormat.rawAudio.sampleRateHertz: required for raw audio; "
            "expected 8000, 16000 or 48000",
        ),
        (
            _model(audioFormat={"rawAudio": {"audioEncoding": "LINEAR16_PCM", "sampleRateHertz": "44100"}}),
            "recognitionModel.audioFormat.rawAudio.sampleRateHertz: unsupported value 44100; "
            "expected 8000, 16000 or 48000",
        ),
        (
            _model(audioFormat={"rawAudio": {"audioEncoding": "LINEAR16_PCM", "sampleRateHertz": "16k"}}),
            'recognitionModel.audioFormat.rawAudio.sampleRateHertz: expected an integer, got "16k"',
        ),
        (
            _model(
                audioFormat={
                    "rawAudio": {
                        "audioEncoding": "LINEAR16_PCM",
                        "sampleRateHertz": 16000,
                        "audioChannelCount": 9,
                    }
                }
            ),
            "recognitionModel.audioFormat.rawAudio.audioChannelCount: must be between 1 and 8, got 9",
        ),
        (
            _model(audioFormat=OGG, model="general:xl"),
            'recognitionModel.model: unsupported model "general:xl"; expected one of general, general:rc, '
            "general:deprecated, deferred-general, deferred-general:rc, deferred-general:deprecated",
        ),
        (
            _model(audioFormat=OGG, textNormalization={"textNormalization": "ON"}),
            'recognitionModel.textNormalization.textNormalization: unsupported value "ON"; expected one of '
            "TEXT_NORMALIZATION_ENABLED, TEXT_NORMALIZATION_DISABLED",
        ),
        (
            _model(audioFormat=OGG, textNormalization={"profanityFilter": "yes"}),
            'recognitionModel.textNormalization.profanityFilter: expected true or false, got "yes"',
        ),
        (
            _model(audioFormat=OGG, languageRestriction={"languageCode": "en-US"}),
            "recognitionModel.languageRestriction.languageCode: expected a list of strings",
        ),
        (
            _model(audioFormat=OGG, languageRestriction={"restrictionType": "GREYLIST"}),
            'recognitionModel.languageRestriction.restrictionType: unsupported value "GREYLIST"; '
            "expected one of WHITELIST, BLACKLIST",
        ),
        (
            {
                **_model(audioFormat=OGG, languageRestriction=ENGLISH),
                "speakerLabeling": {"speakerLabeling": 1},
            },
            "speakerLabeling.speakerLabeling: SPEAKER_LABELING_ENABLED is not supported by this service: its "
            "recognition engines cannot tell speakers apart",
        ),
        (
            {
                **_model(
                    audioFormat={
                        "rawAudio": {
                            "audioEncoding": "LINEAR16_PCM",
                            "sampleRateHertz": 16000,
                            "audioChannelCount": 2,
                        }
                    },
                    languageRestriction=ENGLISH,
                ),
                "speakerLabeling": {"speakerLabeling": "SPEAKER_LABELING_ENABLED"},
            },
            "speakerLabeling.speakerLabeling: speaker labeling works on mono audio only, but "
            "recognitionModel.audioFormat.rawAudio.audioChannelCount is 2",
        ),
    ],
)
@module_loop
async def test_invalid_requests_get_400_naming_the_field(v3: V3, body: dict[str, Any], message: str) -> None:
    status, code, text = await error_of(await v3.submit(body))
    assert (status, code) == (400, 3)
    assert text.startswith(message), text


@module_loop
async def test_bodies_that_are_not_json_objects_are_refused(v3: V3) -> None:
    for data in (b"{not json", b"[1, 2]"):
        response = await v3.client.post(RECOGNIZE, data=data, headers=AUTH)
        status, code, text = await error_of(response)
        assert (status, code) == (400, 3)
        assert text.startswith("The request body")


@module_loop
async def test_what_is_accepted(v3: V3) -> None:
    """proto3 JSON spellings, every documented model, unspecified enums and the ignored extras."""
    body: dict[str, Any] = {
        "content": base64.urlsafe_b64encode(b"ok").decode().rstrip("="),
        "recognition_model": {
            "model": "deferred-general:rc",
            "audio_format": {"raw_audio": {"audio_encoding": "LINEAR16_PCM", "sample_rate_hertz": 8000.0}},
            "text_normalization": {
                "text_normalization": 1,
                "phone_formatting_mode": "PHONE_FORMATTING_MODE_DISABLED",
            },
            "language_restriction": {
                "restriction_type": "LANGUAGE_RESTRICTION_TYPE_UNSPECIFIED",
                "language_code": ["en-US"],
            },
            "audioProcessingType": "FULL_DATA",
        },
        "speakerLabeling": {"speakerLabeling": "SPEAKER_LABELING_DISABLED"},
        "summarization": {"models": []},
        "unknownField": None,
    }
    response = await v3.submit(body, headers={**AUTH, "x-folder-id": "b1gfolder"})
    accepted = await response.json()
    assert response.status == 200, accepted
    await v3.service.wait_done(accepted["id"])
    results = await v3.lines(accepted["id"])
    assert refinements(results)[0]["text"] == "ok"
    for model in ("general", "general:rc", "general:deprecated", "deferred-general", ""):
        named = v3_body(content("x"))
        named["recognitionModel"]["model"] = model
        assert (await v3.submit(named)).status == 200, model


# --- Errors of getRecognition and deleteRecognition ---------------------------------------------------


@module_loop
async def test_results_of_failed_operations_are_their_errors(v3: V3) -> None:
    undecodable = await v3.submit_ok(v3_body({"content": base64.b64encode(b"\x00bad").decode()}))
    done = await v3.service.wait_done(undecodable["id"])
    assert done["error"] == {"code": 3, "message": "The audio is not a valid Ogg Opus stream", "details": []}
    assert "response" not in done
    assert await error_of(await v3.get(undecodable["id"])) == (
        400,
        3,
        "The audio is not a valid Ogg Opus stream",
    )

    crashed = await v3.submit_ok(v3_body(content("!fail")))
    done = await v3.service.wait_done(crashed["id"])
    assert done["error"]["code"] == 13
    status, code, text = await error_of(await v3.get(crashed["id"]))
    assert (status, code) == (500, 13)
    assert "secret" not in text
    # Deleting a failed operation's (absent) results succeeds; then reads are 404 like deleted results.
    deleted = await v3.delete(crashed["id"])
    assert (deleted.status, await deleted.json()) == (200, {})
    assert (await error_of(await v3.get(crashed["id"])))[:2] == (404, 5)


@module_loop
async def test_unknown_expired_and_v2_ids_are_not_found(v3: V3) -> None:
    v2 = await v3.service.submit_ok(content("a v2 operation"))
    await v3.service.wait_done(v2["id"])
    for operation_id in ("e03aaaaaaaaaaaaaaaaa", v2["id"], "NOT-AN-ID"):
        for response in (await v3.get(operation_id), await v3.delete(operation_id)):
            status, code, text = await error_of(response)
            assert (status, code) == (404, 5)
            assert "not found" in text
    missing = await v3.client.get(GET, headers=AUTH)
    assert await error_of(missing) == (400, 3, "operation_id: required field is missing")
    too_long = await v3.get("a" * 51)
    assert await error_of(too_long) == (400, 3, "operation_id: must be at most 50 characters long")


@module_loop
async def test_operation_id_may_be_spelled_operationId(v3: V3) -> None:
    accepted = await v3.submit_ok(v3_body(content("camel case")))
    await v3.service.wait_done(accepted["id"])
    response = await v3.client.get(GET, params={"operationId": accepted["id"]}, headers=AUTH)
    assert response.status == 200
    assert b'"text":"camel case"' in await response.read()


@module_loop
async def test_delete_forgets_the_results_and_keeps_the_operation(v3: V3) -> None:
    accepted = await v3.submit_ok(v3_body(content("to be deleted")))
    done = await v3.service.wait_done(accepted["id"])
    assert len(await v3.lines(accepted["id"])) == 2

    response = await v3.delete(accepted["id"])
    assert (response.status, await response.json()) == (200, {})
    status, code, text = await error_of(await v3.get(accepted["id"]))
    assert (status, code) == (404, 5)
    assert text == f"The results of operation {accepted['id']} were deleted (deleteRecognition)"
    assert (await error_of(await v3.delete(accepted["id"])))[:2] == (404, 5)
    # The operation itself is unchanged.
    kept = await v3.service.operation(accepted["id"])
    assert (kept.status, await kept.json()) == (200, done)


@module_loop
async def test_the_v3_routes_need_an_api_key(v3: V3) -> None:
    accepted = await v3.submit_ok(v3_body(content("keyed")))
    await v3.service.wait_done(accepted["id"])
    for headers in (
        None,
        {"Authorization": "Bearer t1.iam-token", "x-folder-id": "b1g"},
        {"Authorization": "Api-Key wrong"},
    ):
        for response in (
            await v3.submit(v3_body(content("x")), headers=headers),
            await v3.get(accepted["id"], headers=headers),
            await v3.delete(accepted["id"], headers=headers),
        ):
            status, code, _ = await error_of(response)
            assert (status, code) == (401, 16)
    # The other configured key reads it too.
    other = {"Authorization": "Api-Key key-2"}
    assert (await v3.get(accepted["id"], headers=other)).status == 200


# --- Admission, readiness of results, retention ---------------------------------------------------------


@module_loop
async def test_v3_shares_the_admission_and_results_wait_for_the_end(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    app = create_app(
        settings(queue_size=1),
        engine_factory=FakeEngineFactory(gate=str(gate)),
        decoder=fake_decode,
        client_errors=(FakeDecodeError,),
    )
    client = await start_service(app)
    service = Service(client)
    v3 = V3(service)
    try:
        await service.wait_ready()
        # One worker and a queue of one: a v2 and a v3 operation fill the service.
        v2 = await service.submit_ok(content("!block v2"))
        blocked = await v3.submit_ok(v3_body(content("!block waited")))
        refused = await v3.submit(v3_body(content("one too many")))
        assert await error_of(refused) == (429, 8, "Too many recognitions in progress (2); try again later")
        assert int(refused.headers["Retry-After"]) >= 1
        assert (await service.submit(content("v2 too"))).status == 429
        # A full service refuses before reading the body.
        assert (await client.post(RECOGNIZE, data=b"{not json", headers=AUTH)).status == 429

        # Before the operation is done: FAILED_PRECONDITION for reading and for deleting its results.
        for response in (await v3.get(blocked["id"]), await v3.delete(blocked["id"])):
            status, code, text = await error_of(response)
            assert (status, code) == (400, 9)
            shown = blocked["id"]
            assert text == f"Operation {shown} is not done yet: poll GET /operations/{shown} until it is done"
        running = await service.operation(blocked["id"])
        assert (await running.json())["done"] is False

        gate.touch()
        await service.wait_done(v2["id"])
        await service.wait_done(blocked["id"])
        assert finals(await v3.lines(blocked["id"]))[0]["text"] == "waited"
        assert (await v3.submit(v3_body(content("free again")))).status == 200
    finally:
        gate.touch()
        await client.close()


@module_loop
async def test_results_expire_with_their_operation() -> None:
    clock = SteppingClock()
    app = create_app(
        settings(retention_seconds=3600),
        engine_factory=FakeEngineFactory(),
        decoder=fake_decode,
        client_errors=(FakeDecodeError,),
        clock=clock,
    )
    client = await start_service(app)
    service = Service(client)
    v3 = V3(service)
    try:
        await service.wait_ready()
        accepted = await v3.submit_ok(v3_body(content("kept for an hour")))
        await service.wait_done(accepted["id"])
        clock.now += timedelta(seconds=3599)
        assert len(await v3.lines(accepted["id"])) == 2
        clock.now += timedelta(seconds=1)
        status, code, _ = await error_of(await v3.get(accepted["id"]))
        assert (status, code) == (404, 5)
        assert (await service.operation(accepted["id"])).status == 404
        assert (await error_of(await v3.delete(accepted["id"])))[:2] == (404, 5)
    finally:
        await client.close()


# --- The store ---------------------------------------------------------------------------------------------


def test_the_store_keeps_v3_results_across_restarts_and_pages_them(tmp_path: Path) -> None:
    clock = SteppingClock()
    path = tmp_path / "operations.sqlite3"
    store = OperationStore(retention_seconds=60, clock=clock, path=path)
    operation = store.create("aje", description="STT v3 async recognition", api="v3")
    lines = [encode_result(StreamingResponse(channel_tag=str(i))) for i in range(5)]
    assert store.complete_results(operation.id, iter(lines))
    assert not store.complete_results(operation.id, iter(lines)), "a finished operation stays finished"
    store.close()

    reopened = OperationStore(retention_seconds=60, clock=clock, path=path)
    kept = reopened.get(operation.id)
    assert kept is not None and kept.api == "v3" and not kept.results_deleted
    assert "response" not in kept.to_json() and "error" not in kept.to_json() and kept.to_json()["done"]
    first = reopened.result_lines(operation.id, limit=2)
    assert [line for _, line in first] == lines[:2]
    rest = reopened.result_lines(operation.id, after=first[-1][0], limit=10)
    assert [line for _, line in rest] == lines[2:]
    # Purging drops the results with their operation.
    clock.now += timedelta(seconds=60)
    assert reopened.purge() == 1
    assert reopened.result_lines(operation.id) == []
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 0


def test_a_schema_1_store_is_upgraded_and_keeps_its_v2_operations(tmp_path: Path) -> None:
    path = tmp_path / "operations.sqlite3"
    with sqlite3.connect(path) as connection:
        connection.executescript(
            """
            CREATE TABLE operations (
                id TEXT PRIMARY KEY, created_by TEXT NOT NULL, created_at REAL NOT NULL,
                modified_at REAL NOT NULL, description TEXT NOT NULL, running INTEGER NOT NULL DEFAULT 0,
                done INTEGER NOT NULL DEFAULT 0, error TEXT, response TEXT, completed_at REAL);
            INSERT INTO operations VALUES
                ('e03old', 'aje', 1714564800, 1714564800, 'STT async recognition', 0, 1, NULL,
                 '{"@type":"t"}', 1714564800);
            PRAGMA user_version = 1;
            """
        )
    clock = SteppingClock()
    store = OperationStore(retention_seconds=3600, clock=clock, path=path)
    old = store.get("e03old")
    assert old is not None and old.api == "v2"
    assert old.to_json()["response"] == {"@type": "t"}
    new = store.create("aje", api="v3")
    assert store.complete_results(new.id, [b"{}\n"])
    assert store.delete_results(new.id)
    deleted = store.get(new.id)
    assert deleted is not None and deleted.results_deleted
    assert store.result_lines(new.id) == []
    store.close()
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == 2


def test_deleting_results_needs_a_finished_operation() -> None:
    store = OperationStore(retention_seconds=60)
    running = store.create("aje", api="v3")
    assert not store.delete_results(running.id)
    assert not store.delete_results("e03unknown")
    with pytest.raises(ValueError, match="unknown API"):
        store.create("aje", api="v4")


@module_loop
async def test_results_are_streamed_without_waiting_for_all_pages(
    v3: V3, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight channels and pages of three lines: every line arrives, in order, across the pages."""
    monkeypatch.setattr(app_module, "RESULT_PAGE", 3)
    raw = {"rawAudio": {"audioEncoding": "LINEAR16_PCM", "sampleRateHertz": 16000, "audioChannelCount": 8}}
    results = await v3.recognise(v3_body(content("|".join("abcdefgh")), audio_format=raw))
    assert [tag for tag, kind in events(results) if kind == "final"] == [str(i) for i in range(8)]
    assert [finals(results)[i]["text"] for i in range(8)] == list("abcdefgh")
    assert len(results) == 16
