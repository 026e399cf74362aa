"""SpeechKitV3Client against the SpeechKit emulator's v3 endpoints (written from the docs, independently):
the request each option makes, the results read as a stream, errors, quotas and the folder header."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from speechkit_operator.clients.retry import RetryPolicy
from speechkit_operator.clients.speech.errors import (
    MalformedResponseError,
    OperationNotFoundError,
    SpeechApiError,
)
from speechkit_operator.clients.speech.v2 import SpeechKitV2Client
from speechkit_operator.clients.speech.v3 import SpeechKitV3Client, build_recognize_file_body
from speechkit_operator.contracts.stt_v2 import AudioEncoding
from speechkit_operator.models.credentials import ApiKeyCredentials, IamTokenCredentials
from speechkit_operator.models.operation import OperationState, RecognitionRequest
from tests.emulator import SpeechKitEmulator, words_for_text
from tests.unit.test_emulator_v3 import WAV_BYTES, AudioServer, audio_server

__all__ = ["audio_server"]

KEY = ApiKeyCredentials(api_key="test-api-key")


def wav_request(uri: str, **options: Any) -> RecognitionRequest:
    return RecognitionRequest(
        audio_uri=uri,
        language_code=options.pop("language_code", "ru-RU"),
        model="general",
        audio_encoding=AudioEncoding.LINEAR16_PCM,
        sample_rate_hertz=16000,
        audio_channel_count=options.pop("audio_channel_count", 1),
        **options,
    )


@pytest.fixture
async def emulator() -> AsyncIterator[SpeechKitEmulator]:
    emulator = SpeechKitEmulator(completion_delay=0.05, v3_check_quota_per_second=10_000)
    await emulator.start()
    yield emulator
    await emulator.stop()


@pytest.fixture
async def client(emulator: SpeechKitEmulator) -> AsyncIterator[SpeechKitV3Client]:
    async with SpeechKitV3Client(
        emulator.url,
        emulator.url,
        emulator.url + "/iam/v1/tokens",
        retry_policy=RetryPolicy(attempts=2, base_delay=0.01, max_delay=0.01),
    ) as client:
        yield client


async def finished(client: SpeechKitV3Client, operation_id: str, credentials: Any = KEY) -> OperationState:
    for _ in range(400):
        state = await client.get_operation(operation_id, credentials)
        if state.done:
            return state
        await asyncio.sleep(0.02)
    raise AssertionError("the operation did not finish")


async def test_a_wav_object_is_recognised_and_its_results_make_the_transcript(
    client: SpeechKitV3Client, emulator: SpeechKitEmulator, audio_server: AudioServer
) -> None:
    emulator.transcripts["talk.wav"] = {"1": words_for_text("hello there general kenobi")}
    submitted = await client.submit(wav_request(audio_server.uri("audio/talk.wav")), KEY)
    assert not submitted.done and submitted.transcript is None

    state = await finished(client, submitted.id)

    assert state.error is None and state.transcript is not None
    assert " ".join(chunk.text for chunk in state.transcript.chunks) == "hello there general kenobi"
    assert state.transcript.channels == ("1",)
    assert state.response is not None and all("result" in item for item in state.response["results"])
    assert any("final" in item["result"] for item in state.response["results"])


def test_each_option_becomes_the_documented_request() -> None:
    plain = build_recognize_file_body(wav_request("https://s/b/k.wav"))
    assert plain["recognitionModel"]["audioFormat"] == {
        "rawAudio": {"audioEncoding": "LINEAR16_PCM", "sampleRateHertz": "16000", "audioChannelCount": "1"}
    }
    assert plain["recognitionModel"]["languageRestriction"] == {
        "restrictionType": "WHITELIST",
        "languageCode": ["ru-RU"],
    }
    assert (
        plain["recognitionModel"]["textNormalization"]["textNormalization"] == "TEXT_NORMALIZATION_DISABLED"
    )
    assert (
        "speakerLabeling" not in plain
        and "phoneFormattingMode" not in plain["recognitionModel"]["textNormalization"]
    )

    full = build_recognize_file_body(
        RecognitionRequest(
            audio_uri="https://s/b/k.ogg",
            language_code="auto",
            model="deferred-general",
            audio_encoding=AudioEncoding.OGG_OPUS,
            profanity_filter=True,
            literature_text=True,
            text_normalization=True,
            phone_formatting=False,
            language_restriction=("blacklist", ("kk-KZ", "uz-UZ")),
            speaker_labeling=True,
        )
    )
    model = full["recognitionModel"]
    assert model["model"] == "deferred-general"
    assert model["audioFormat"] == {"containerAudio": {"containerAudioType": "OGG_OPUS"}}
    assert model["textNormalization"] == {
        "textNormalization": "TEXT_NORMALIZATION_ENABLED",
        "profanityFilter": True,
        "literatureText": True,
        "phoneFormattingMode": "PHONE_FORMATTING_MODE_DISABLED",
    }
    assert model["languageRestriction"] == {
        "restrictionType": "BLACKLIST",
        "languageCode": ["kk-KZ", "uz-UZ"],
    }
    assert full["speakerLabeling"] == {"speakerLabeling": "SPEAKER_LABELING_ENABLED"}
    auto = build_recognize_file_body(wav_request("https://s/b/k.wav", language_code="auto"))
    assert "languageRestriction" not in auto["recognitionModel"]


async def test_normalization_refines_the_text_and_speakers_label_the_chunks(
    client: SpeechKitV3Client, emulator: SpeechKitEmulator, audio_server: AudioServer
) -> None:
    emulator.transcripts["talk.wav"] = {"1": words_for_text("i counted two birds")}
    normalized = await client.submit(
        wav_request(audio_server.uri("audio/talk.wav"), text_normalization=True), KEY
    )
    state = await finished(client, normalized.id)
    assert state.transcript is not None
    assert [chunk.text for chunk in state.transcript.chunks] == ["i counted 2 birds"]
    assert [word.text for word in state.transcript.chunks[0].words] == ["i", "counted", "2", "birds"]
    raw_words = (
        [
            w["text"]
            for item in state.response["results"]
            if "final" in item["result"]
            for w in item["result"]["final"]["alternatives"][0]["words"]
        ]
        if state.response
        else []
    )
    assert raw_words == ["i", "counted", "two", "birds"]  # the json keeps the final's own words

    emulator.transcripts["talk.wav"] = {
        "1": words_for_text("hello")
        + words_for_text("hi there", start=3.0)
        + words_for_text("bye", start=6.0)
    }
    labeled = await client.submit(wav_request(audio_server.uri("audio/talk.wav"), speaker_labeling=True), KEY)
    state = await finished(client, labeled.id)
    assert state.transcript is not None
    assert [(chunk.channel, chunk.text) for chunk in state.transcript.chunks] == [
        ("1", "hello"),
        ("2", "hi there"),
        ("1", "bye"),
    ]


async def test_speaker_labeling_of_stereo_audio_is_refused_as_the_api_refuses_it(
    client: SpeechKitV3Client, audio_server: AudioServer
) -> None:
    with pytest.raises(SpeechApiError) as caught:
        await client.submit(
            wav_request(audio_server.uri("audio/talk.wav"), audio_channel_count=2, speaker_labeling=True), KEY
        )
    assert caught.value.http_status == 400 and not caught.value.transient
    assert audio_server.uri("audio/talk.wav") not in str(caught.value)  # a presigned URL never shows


async def test_an_iam_token_sends_the_folder_header(
    emulator: SpeechKitEmulator, audio_server: AudioServer
) -> None:
    emulator.iam_tokens.add("t1.secret-token-value")
    async with SpeechKitV3Client(emulator.url, emulator.url, emulator.url + "/iam/v1/tokens") as client:
        with_folder = IamTokenCredentials(iam_token="t1.secret-token-value", folder_id="b1gfolder")
        submitted = await client.submit(wav_request(audio_server.uri("audio/talk.wav")), with_folder)
        await finished(client, submitted.id, with_folder)
        without = IamTokenCredentials(iam_token="t1.secret-token-value")
        with pytest.raises(SpeechApiError) as caught:
            await client.submit(wav_request(audio_server.uri("audio/talk.wav")), without)
    assert caught.value.http_status == 403
    assert "secret-token-value" not in str(caught.value)


async def test_expired_results_are_not_found(
    client: SpeechKitV3Client, emulator: SpeechKitEmulator, audio_server: AudioServer
) -> None:
    submitted = await client.submit(wav_request(audio_server.uri("audio/talk.wav")), KEY)
    await finished(client, submitted.id)
    emulator.expire(submitted.id)
    with pytest.raises(OperationNotFoundError):
        await client.get_operation(submitted.id, KEY)


async def test_a_stream_that_breaks_off_is_read_again_and_one_that_ends_in_an_error_is_reported(
    client: SpeechKitV3Client, emulator: SpeechKitEmulator, audio_server: AudioServer
) -> None:
    emulator.transcripts["talk.wav"] = {"1": words_for_text("one") + words_for_text("two", start=3.0)}
    submitted = await client.submit(wav_request(audio_server.uri("audio/talk.wav")), KEY)
    await asyncio.sleep(0.3)
    emulator.inject_v3_stream_break(after=1)
    state = await finished(client, submitted.id)
    assert state.transcript is not None and [c.text for c in state.transcript.chunks] == ["one", "two"]

    emulator.inject_v3_stream_break(after=1, error={"code": 13, "message": "internal"})
    with pytest.raises(SpeechApiError, match="getRecognition failed: internal") as caught:
        await client.get_operation(submitted.id, KEY)
    assert (caught.value.grpc_code, caught.value.http_status, caught.value.transient) == (13, 500, True)
    emulator.inject_v3_stream_break(after=1, error={"code": 5, "message": "gone"})
    with pytest.raises(OperationNotFoundError):
        await client.get_operation(submitted.id, KEY)


async def test_an_endless_answer_is_cut_off(emulator: SpeechKitEmulator, audio_server: AudioServer) -> None:
    emulator.transcripts["talk.wav"] = {"1": words_for_text(" ".join(["word"] * 2000))}
    async with SpeechKitV3Client(emulator.url, emulator.url, emulator.url, max_results_bytes=4096) as client:
        submitted = await client.submit(wav_request(audio_server.uri("audio/talk.wav")), KEY)
        with pytest.raises(MalformedResponseError, match="larger than"):
            await finished(client, submitted.id)
    assert WAV_BYTES  # the object the emulator downloaded


async def test_the_v3_client_reads_a_v2_operation_and_the_v2_client_refuses_a_v3_one(
    client: SpeechKitV3Client, emulator: SpeechKitEmulator, audio_server: AudioServer
) -> None:
    """An adopted operation (the cron script's, v2) is read whichever API the job names; a v3 operation
    read as v2 is an error, never an empty success."""
    emulator.transcripts["talk.wav"] = {"1": words_for_text("from the old script")}
    async with SpeechKitV2Client(emulator.url, emulator.url, emulator.url) as v2:
        old = await v2.submit(wav_request(audio_server.uri("audio/talk.wav")), KEY)
        state = await finished(client, old.id)
        assert state.transcript is not None
        assert [chunk.text for chunk in state.transcript.chunks] == ["from the old script"]
        assert state.response is not None and "chunks" in state.response

        new = await client.submit(wav_request(audio_server.uri("audio/talk.wav")), KEY)
        await finished(client, new.id)
        with pytest.raises(MalformedResponseError, match="it is an API v3 operation"):
            await v2.get_operation(new.id, KEY)


async def test_an_iam_token_without_a_folder_is_told_to_add_one(
    emulator: SpeechKitEmulator, audio_server: AudioServer
) -> None:
    emulator.iam_tokens.add("t1.secret-token-value")
    async with SpeechKitV3Client(emulator.url, emulator.url, emulator.url + "/iam/v1/tokens") as client:
        with pytest.raises(SpeechApiError, match="add folder-id to the credentials Secret") as caught:
            await client.submit(
                wav_request(audio_server.uri("audio/talk.wav")), IamTokenCredentials("t1.secret-token-value")
            )
    assert caught.value.http_status == 403 and not caught.value.transient
