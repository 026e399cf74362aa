# ruff: noqa: RUF001 - Russian speech is written in Cyrillic
"""The service with the Whisper engine, end to end: real worker processes load the bundled ``base`` model
and recognise real speech through the v2 async API and the v1 sync API."""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from speechkit_operator.clients.speech.v2_parsing import parse_v2_response
from speechkit_operator.contracts.stt_v3 import StreamingResponse, decode_results
from speechkit_operator.selfhosted.app import create_app
from speechkit_operator.selfhosted.config import ServiceSettings, default_engine
from tests.support.audio import audio_dir
from tests.unit.test_selfhosted_app import AUTH, Service, settings, start_service

module_loop = pytest.mark.asyncio(loop_scope="module")
MIB = 1024 * 1024
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "audio"
WAV = {"audioEncoding": "LINEAR16_PCM", "sampleRateHertz": 16000}


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def service() -> AsyncIterator[Service]:
    """The production wiring with the default engine (Whisper, as it is installed) and model (base)."""
    app = create_app(
        settings(max_audio_bytes=4 * MIB, max_inline_bytes=4 * MIB, sync_max_bytes=MIB, sync_max_seconds=30)
    )
    client = await start_service(app)
    running = Service(client)
    try:
        await running.wait_ready(timeout=120)
        yield running
    finally:
        await client.close()


def inline(name: str, directory: Path | None = None) -> dict[str, str]:
    return {"content": base64.b64encode(((directory or audio_dir()) / name).read_bytes()).decode()}


async def recognise(service: Service, audio: dict[str, str], **spec: Any) -> dict[str, Any]:
    accepted = await service.submit_ok(audio, {**WAV, **spec})
    done = await service.wait_done(accepted["id"], timeout=120)
    assert "error" not in done, done
    response: dict[str, Any] = done["response"]
    return response


def texts_by_channel(response: dict[str, Any]) -> dict[str, str]:
    found: dict[str, list[str]] = {}
    for chunk in response.get("chunks", []):
        found.setdefault(chunk["channelTag"], []).append(chunk["alternatives"][0]["text"])
    return {tag: " ".join(parts) for tag, parts in found.items()}


def test_whisper_is_the_default_engine_when_installed() -> None:
    assert default_engine() == "whisper"
    assert ServiceSettings().engine == "whisper"
    assert (ServiceSettings().whisper_model, ServiceSettings().whisper_threads) == ("base", 1)


@module_loop
async def test_the_service_lists_what_the_loaded_model_recognises(service: Service) -> None:
    ready = await (await service.client.get("/readyz")).json()
    # No streaming model: this service has no gRPC port (tests/unit/test_streaming_whisper.py has one).
    assert (ready["engine"], ready["model"], ready["streamingModel"]) == ("whisper", "base", None)

    refused = await service.client.get("/v1/languages")
    assert refused.status == 401
    response = await service.client.get("/v1/languages", headers=AUTH)
    body = await response.json()
    assert response.status == 200
    assert (body["engine"], body["model"], body["detectsLanguage"]) == ("whisper", "base", True)
    assert {"auto", "ru-RU", "en-US", "kk-KZ", "uz-UZ", "de-DE", "pt-BR"} <= set(body["languages"])
    assert body["languages"] == ready["languages"] == sorted(body["languages"])


@module_loop
async def test_a_language_the_model_lacks_is_invalid_argument(service: Service) -> None:
    response = await service.submit(inline("librivox-0880.wav"), {**WAV, "languageCode": "yue-HK"})
    body = await response.json()
    assert response.status == 400
    assert body["code"] == 3
    assert body["message"].startswith(
        'config.specification.languageCode: language "yue-HK" is not supported by this service; '
        "supported: af-ZA, am-ET, ar-SA,"
    )
    assert "ru-RU" in body["message"] and "auto" in body["message"]


@module_loop
async def test_each_stereo_channel_gets_its_own_words(service: Service) -> None:
    response = await recognise(
        service, inline("librivox-stereo-0880L-0930R.wav"), languageCode="en-US", audioChannelCount=2
    )

    transcript = parse_v2_response(response)
    assert transcript.channels == ("1", "2")
    by_channel = {
        tag: {word.text for chunk in transcript.chunks if chunk.channel == tag for word in chunk.words}
        for tag in transcript.channels
    }
    assert {"young", "man"} <= by_channel["1"]
    assert {"amiable", "himself", "even"} <= by_channel["2"]
    assert not {"amiable", "himself"} & by_channel["1"]
    assert not {"young", "man"} & by_channel["2"]
    for chunk in transcript.chunks:
        assert all(0 <= word.start < word.end <= 3.3 for word in chunk.words)
    # The normalised text, as SpeechKit v2 answers by default.
    texts = texts_by_channel(response)
    assert texts["1"] == texts["1"].lower() and not re.search(r"[.,!?]", texts["1"])
    assert "languages" not in response["chunks"][0]["alternatives"][0]


@module_loop
async def test_literature_text_keeps_punctuation_and_casing(service: Service) -> None:
    plain = await recognise(service, inline("librivox-0880.wav"), languageCode="en-US")
    literary = await recognise(
        service, inline("librivox-0880.wav"), languageCode="en-US", literature_text=True
    )

    (plain_text,) = texts_by_channel(plain).values()
    (literary_text,) = texts_by_channel(literary).values()
    assert plain_text == "he was not an ill-disposed young man"
    assert literary_text == "He was not an ill-disposed young man."
    # The words stay normalised either way.
    words = [w["word"] for w in literary["chunks"][0]["alternatives"][0]["words"]]
    assert words == plain_text.split()


@module_loop
async def test_auto_reports_the_detected_language(service: Service) -> None:
    response = await recognise(service, inline("librivox-0930.wav"), languageCode="auto")

    (chunk,) = response["chunks"]
    (language,) = chunk["alternatives"][0]["languages"]
    assert language["languageCode"] == "en-US"
    assert 0.5 < language["probability"] <= 1
    assert "amiable himself" in chunk["alternatives"][0]["text"]


@module_loop
async def test_english_through_the_sync_api(service: Service) -> None:
    wav = (audio_dir() / "librivox-0930.wav").read_bytes()
    response = await service.sync(wav, "lang=en-US&format=lpcm&sampleRateHertz=16000")
    assert response.status == 200
    assert await response.json() == {"result": "he might even have been made amiable himself"}


def russian_sample() -> Path:
    samples = sorted(EXAMPLES.glob("ru-*.wav"))
    if not samples:
        pytest.skip("NO RUSSIAN SPEECH: examples/audio/ru-*.wav is missing; ../shared/audio has no Russian")
    return samples[0]


@module_loop
async def test_russian_through_the_async_and_the_sync_api(service: Service) -> None:
    sample = russian_sample()
    response = await recognise(service, inline(sample.name, EXAMPLES), languageCode="ru-RU")
    (text,) = texts_by_channel(response).values()
    assert re.fullmatch(r"[а-яё0-9' -]+", text), text
    assert {"день", "компанию"} <= set(text.split()) or {"курьер", "посылку"} <= set(text.split()), text

    sync = await service.sync(sample.read_bytes(), "lang=ru-RU&format=lpcm&sampleRateHertz=16000")
    assert sync.status == 200
    assert (await sync.json())["result"] == text

    detected = await recognise(service, inline(sample.name, EXAMPLES), languageCode="auto")
    assert detected["chunks"][0]["alternatives"][0]["languages"][0]["languageCode"] == "ru-RU"


async def recognise_v3(service: Service, audio: dict[str, str], **model: Any) -> list[StreamingResponse]:
    """Through the v3 API: submit, poll the operation, read getRecognition's stream."""
    body = {
        **audio,
        "recognitionModel": {"audioFormat": {"containerAudio": {"containerAudioType": "WAV"}}, **model},
    }
    response = await service.client.post("/stt/v3/recognizeFileAsync", json=body, headers=AUTH)
    accepted = await response.json()
    assert response.status == 200, accepted
    assert accepted["description"] == "STT v3 async recognition"
    done = await service.wait_done(accepted["id"], timeout=120)
    assert done["done"] and "error" not in done and "response" not in done, done
    answer = await service.client.get(
        "/stt/v3/getRecognition", params={"operation_id": accepted["id"]}, headers=AUTH
    )
    assert answer.status == 200
    return list(decode_results(await answer.read()))


@module_loop
async def test_v3_recognises_a_librivox_file_with_word_times_and_refinements(service: Service) -> None:
    results = await recognise_v3(
        service,
        inline("librivox-0880.wav"),
        textNormalization={"textNormalization": "TEXT_NORMALIZATION_ENABLED", "literatureText": True},
        languageRestriction={"restrictionType": "WHITELIST", "languageCode": ["en-US"]},
    )

    finals = [r.final.alternatives[0] for r in results if r.final is not None]
    refined = [
        r.final_refinement.normalized_text.alternatives[0]
        for r in results
        if r.final_refinement is not None and r.final_refinement.normalized_text is not None
    ]
    assert {r.channel_tag for r in results} == {"0"}
    assert " ".join(final.text for final in finals) == "he was not an ill-disposed young man"
    assert " ".join(text.text for text in refined) == "He was not an ill-disposed young man."
    assert all(final.languages == [] for final in finals), "a named language is not a detected one"
    words = [word for final in finals for word in final.words]
    assert [word.text for word in words] == ["he", "was", "not", "an", "ill-disposed", "young", "man"]
    # Word times in milliseconds: increasing, inside the 3.3 s clip, "young man" in its second half.
    starts = [word.start_time_ms for word in words]
    assert starts == sorted(starts)
    assert all(0 <= word.start_time_ms < word.end_time_ms <= 3300 for word in words)
    young = next(word for word in words if word.text == "young")
    assert 1500 <= young.start_time_ms <= 3000, young
    # Each final has its refinement (same finalIndex) and then its end of utterance.
    kinds = ["final" if r.final else "refinement" if r.final_refinement else "eou" for r in results]
    assert kinds == ["final", "refinement", "eou"] * len(finals)


@module_loop
async def test_v3_detects_the_language_without_a_restriction(service: Service) -> None:
    results = await recognise_v3(service, inline("librivox-0930.wav"))
    finals = [r.final.alternatives[0] for r in results if r.final is not None]
    assert "amiable himself" in " ".join(final.text for final in finals)
    (language,) = finals[0].languages
    assert language.language_code == "en-US"
    assert 0.5 < language.probability <= 1
