"""The SpeechKit emulator's API v3 async recognition behaves like the documented service."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from tests.emulator import (
    OPERATION_DESCRIPTION_V3,
    SpeechKitEmulator,
    StreamOptions,
    V3InvalidRequestError,
    build_stream,
    normalize_text,
    parse_recognize_file_request,
    utterances_for,
    v3_channel_tag,
    words_for_text,
)

WAV_BYTES = b"RIFF" + bytes(40) + b"\x01\x02" * 500
API_KEY = "test-api-key"
AUTH = {"Authorization": f"Api-Key {API_KEY}"}
RECOGNIZE = "/stt/v3/recognizeFileAsync"
GET = "/stt/v3/getRecognition"
DELETE = "/stt/v3/deleteRecognition"
PRESIGN_QUERY = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=deadbeefsecret"

OPERATION_ID = re.compile(r"^e03[0-9a-v]{17}$")
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")
INT64 = re.compile(r"^-?\d+$")
SESSION_UUID = re.compile(r"^[0-9a-f]{8}(-[0-9a-f]{8}){3}$")
EVENTS = {"partial", "final", "eouUpdate", "finalRefinement", "statusCode", "classifierUpdate"}

EmulatorFactory = Callable[..., Awaitable[SpeechKitEmulator]]


@dataclass
class AudioServer:
    url: str
    objects: dict[str, bytes]
    requests: list[str] = field(default_factory=list)

    def uri(self, key: str, *, query: str = PRESIGN_QUERY) -> str:
        return f"{self.url}/bucket/{key}?{query}"


@pytest.fixture
async def audio_server() -> AsyncIterator[AudioServer]:
    server = AudioServer(url="", objects={"audio/talk.wav": WAV_BYTES, "audio/empty.wav": b""})

    async def get_object(request: web.Request) -> web.Response:
        server.requests.append(str(request.rel_url))
        key = request.match_info["key"]
        if key not in server.objects:
            return web.Response(status=404, text="<Error><Code>NoSuchKey</Code></Error>")
        return web.Response(body=server.objects[key], content_type="audio/wav")

    app = web.Application()
    app.router.add_get("/bucket/{key:.+}", get_object)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    server.url = f"http://{host}:{port}"
    yield server
    await runner.cleanup()


@pytest.fixture
async def make_emulator() -> AsyncIterator[EmulatorFactory]:
    started: list[SpeechKitEmulator] = []

    async def make(**kwargs: Any) -> SpeechKitEmulator:
        kwargs.setdefault("completion_delay", 0.05)
        # wait_done polls far faster than the documented 5 v3 checks per second.
        kwargs.setdefault("v3_check_quota_per_second", 10_000)
        emulator = SpeechKitEmulator(**kwargs)
        await emulator.start()
        started.append(emulator)
        return emulator

    yield make
    for emulator in started:
        await emulator.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def v3_body(
    uri: str | None = None,
    *,
    container: str | None = "WAV",
    raw: dict[str, Any] | None = None,
    normalization: dict[str, Any] | None = None,
    restriction: dict[str, Any] | None = None,
    speaker_labeling: str | None = None,
    model: str = "general",
) -> dict[str, Any]:
    audio_format: dict[str, Any] = {}
    if raw is not None:
        audio_format["rawAudio"] = raw
    elif container is not None:
        audio_format["containerAudio"] = {"containerAudioType": container}
    options: dict[str, Any] = {"model": model, "audioFormat": audio_format}
    if normalization is not None:
        options["textNormalization"] = normalization
    if restriction is not None:
        options["languageRestriction"] = restriction
    body: dict[str, Any] = {"recognitionModel": options}
    if uri is not None:
        body["uri"] = uri
    if speaker_labeling is not None:
        body["speakerLabeling"] = {"speakerLabeling": speaker_labeling}
    return body


async def call(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any], CIMultiDict[str]]:
    async with session.request(method, url, json=body, headers=headers) as response:
        assert response.content_type == "application/json"
        payload = await response.json()
        assert isinstance(payload, dict)
        return response.status, payload, response.headers.copy()


async def recognize(
    session: aiohttp.ClientSession, emulator: SpeechKitEmulator, body: dict[str, Any]
) -> dict[str, Any]:
    status, payload, _ = await call(session, "POST", emulator.url + RECOGNIZE, body=body, headers=AUTH)
    assert status == 200, payload
    return payload


async def get_operation(
    session: aiohttp.ClientSession, emulator: SpeechKitEmulator, operation_id: str
) -> tuple[int, dict[str, Any]]:
    status, payload, _ = await call(session, "GET", f"{emulator.url}/operations/{operation_id}", headers=AUTH)
    return status, payload


async def wait_done(
    session: aiohttp.ClientSession, emulator: SpeechKitEmulator, operation_id: str, limit: float = 5.0
) -> dict[str, Any]:
    deadline = time.monotonic() + limit
    while True:
        status, payload = await get_operation(session, emulator, operation_id)
        assert status == 200, payload
        if payload["done"]:
            return payload
        assert time.monotonic() < deadline, f"operation {operation_id} did not finish"
        await asyncio.sleep(0.02)


async def get_recognition(
    session: aiohttp.ClientSession,
    emulator: SpeechKitEmulator,
    operation_id: str,
    *,
    headers: dict[str, str] | None = None,
    param: str = "operation_id",
) -> tuple[int, bytes, CIMultiDict[str]]:
    url = f"{emulator.url}{GET}"
    async with session.get(url, params={param: operation_id}, headers=headers or AUTH) as response:
        return response.status, await response.read(), response.headers.copy()


def parse_stream(raw: bytes) -> list[dict[str, Any]]:
    """Newline-delimited ``{"result": ...}`` objects -> the messages."""
    assert raw == b"" or raw.endswith(b"\n")
    messages = []
    for line in raw.decode().splitlines():
        element = json.loads(line)
        assert set(element) == {"result"}, element
        messages.append(element["result"])
    return messages


async def results(
    session: aiohttp.ClientSession, emulator: SpeechKitEmulator, operation_id: str
) -> list[dict[str, Any]]:
    status, raw, headers = await get_recognition(session, emulator, operation_id)
    assert status == 200, raw
    assert headers["Content-Type"].startswith("application/json")
    return parse_stream(raw)


def assert_error_body(payload: dict[str, Any], code: int) -> str:
    assert set(payload) == {"code", "message", "details"}
    assert payload["code"] == code
    assert payload["details"] == []
    message = payload["message"]
    assert isinstance(message, str)
    assert message
    return message


def event_of(message: dict[str, Any]) -> str:
    [event] = EVENTS & set(message)
    return event


def texts(messages: list[dict[str, Any]], event: str = "final") -> list[tuple[str, str]]:
    """(channelTag, text) of each message of ``event``."""
    found = []
    for message in messages:
        if event == "final" and "final" in message:
            found.append((message["channelTag"], message["final"]["alternatives"][0]["text"]))
        if event == "finalRefinement" and "finalRefinement" in message:
            alternative = message["finalRefinement"]["normalizedText"]["alternatives"][0]
            found.append((message["channelTag"], alternative["text"]))
    return found


async def finished(
    session: aiohttp.ClientSession,
    emulator: SpeechKitEmulator,
    body: dict[str, Any],
) -> tuple[str, list[dict[str, Any]]]:
    created = await recognize(session, emulator, body)
    await wait_done(session, emulator, created["id"])
    return created["id"], await results(session, emulator, created["id"])


# ------------------------------------------------------------------ pure helpers


def test_channel_tags_are_rebased_to_zero() -> None:
    assert [v3_channel_tag(tag) for tag in ("1", "2", "8")] == ["0", "1", "7"]
    assert v3_channel_tag("0") == "0"
    assert v3_channel_tag("left") == "left"


def test_normalize_text_turns_number_words_into_digits() -> None:
    assert normalize_text("I have twelve Cats and One dog", literature=False) == "I have 12 Cats and 1 dog"
    assert normalize_text("what time is it?", literature=True) == "What time is it?"
    assert normalize_text("three", literature=True) == "3."
    assert normalize_text("", literature=True) == ""


def test_speaker_labeling_alternates_utterances_of_a_mono_transcript() -> None:
    words = words_for_text("hello there") + words_for_text("general kenobi", start=3.0)
    words += words_for_text("you are a bold one", start=6.0)
    found = utterances_for({"1": words}, speaker_labeling=True)
    assert [(u.channel_tag, " ".join(w for w, _, _ in u.words)) for u in found] == [
        ("0", "hello there"),
        ("1", "general kenobi"),
        ("0", "you are a bold one"),
    ]
    assert {u.session for u in found} == {"mono"}


def test_speaker_labeling_maps_two_scripted_channels_to_two_speakers() -> None:
    found = utterances_for(
        {"2": words_for_text("second voice", start=2.0), "1": words_for_text("first voice")},
        speaker_labeling=True,
    )
    assert [(u.channel_tag, u.words[0][0]) for u in found] == [("0", "first"), ("1", "second")]
    with pytest.raises(ValueError, match="at most 2 speakers"):
        utterances_for({"1": [("a", 0, 1)], "2": [("b", 1, 2)], "3": [("c", 2, 3)]}, speaker_labeling=True)


def test_build_stream_emits_final_refinement_and_eou_per_utterance() -> None:
    utterances = utterances_for(
        {"1": [("one", 0.5, 0.9), ("two", 1.0, 1.4), ("three", 3.0, 3.5)]}, speaker_labeling=False
    )
    messages = build_stream(utterances, StreamOptions(text_normalization=True, user_request_id="r"))
    assert [event_of(m) for m in messages] == ["final", "finalRefinement", "eouUpdate"] * 2
    first_final, first_refinement, first_eou, second_final = messages[:4]
    assert first_final["audioCursors"] == {
        "receivedDataMs": "3500",
        "resetTimeMs": "0",
        "partialTimeMs": "1400",
        "finalTimeMs": "1400",
        "finalIndex": "0",
        "eouTimeMs": "0",
    }
    alternative = first_final["final"]["alternatives"][0]
    assert alternative["startTimeMs"] == "0"
    assert alternative["endTimeMs"] == "1400"
    assert alternative["text"] == "one two"
    assert first_refinement["finalRefinement"]["normalizedText"]["alternatives"][0]["text"] == "1 2"
    assert first_refinement["finalRefinement"]["finalIndex"] == "0"
    assert first_eou["eouUpdate"] == {"timeMs": "1400"}
    assert first_eou["audioCursors"]["eouTimeMs"] == "1400"
    # The next segment starts where the previous final ended.
    assert second_final["final"]["alternatives"][0]["startTimeMs"] == "1400"
    assert second_final["audioCursors"]["finalIndex"] == "1"
    assert build_stream([], StreamOptions()) == []


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"uri": "http://h/b/k", "content": "AAAA", **v3_body()}, "only one"),
        (v3_body(), "uri or content"),
        ({"uri": "http://h/b/k"}, "recognitionModel"),
        ({"uri": "ftp://h/b/k", **v3_body()}, "uri"),
        ({"uri": 5, **v3_body()}, "uri"),
        ({"content": "***", **v3_body()}, "content"),
        ({"content": "", **v3_body()}, "content"),
        (v3_body("http://h/b/k", model="general:v9"), "recognitionModel.model"),
        (v3_body("http://h/b/k", container=None), "recognitionModel.audioFormat"),
        (v3_body("http://h/b/k", container="FLAC"), "containerAudioType"),
        (v3_body("http://h/b/k", container="CONTAINER_AUDIO_TYPE_UNSPECIFIED"), "containerAudioType"),
        (v3_body("http://h/b/k", raw={"sampleRateHertz": "16000"}), "audioEncoding"),
        (v3_body("http://h/b/k", raw={"audioEncoding": "LINEAR16_PCM"}), "sampleRateHertz"),
        (
            v3_body("http://h/b/k", raw={"audioEncoding": "LINEAR16_PCM", "sampleRateHertz": 44100}),
            "sampleRate",
        ),
        (
            v3_body("http://h/b/k", raw={"audioEncoding": "LINEAR16_PCM", "sampleRateHertz": "16k"}),
            "sampleRateHertz",
        ),
        (
            v3_body(
                "http://h/b/k",
                raw={"audioEncoding": "LINEAR16_PCM", "sampleRateHertz": "8000", "audioChannelCount": "9"},
            ),
            "audioChannelCount",
        ),
        (v3_body("http://h/b/k", normalization={"textNormalization": "ON"}), "textNormalization"),
        (v3_body("http://h/b/k", normalization={"profanityFilter": "yes"}), "profanityFilter"),
        (v3_body("http://h/b/k", normalization={"literatureText": 1}), "literatureText"),
        (v3_body("http://h/b/k", restriction={"restrictionType": "GREYLIST"}), "restrictionType"),
        (v3_body("http://h/b/k", restriction={"languageCode": "ru-RU"}), "languageCode"),
        (v3_body("http://h/b/k", speaker_labeling="SOMETIMES"), "speakerLabeling"),
        (
            {"uri": "http://h/b/k", "recognitionModel": {"audioFormat": {"containerAudio": {}}, "model": 7}},
            "recognitionModel.model",
        ),
        (
            {
                "uri": "http://h/b/k",
                "recognitionModel": {
                    "audioFormat": {
                        "containerAudio": {"containerAudioType": "WAV"},
                        "rawAudio": {"audioEncoding": "LINEAR16_PCM", "sampleRateHertz": 8000},
                    }
                },
            },
            "only one of rawAudio, containerAudio",
        ),
        (
            {
                "uri": "http://h/b/k",
                "recognitionModel": {"audioFormat": {"containerAudio": {"containerAudioType": "WAV"}}},
                "recognition_model": {"audioFormat": {"containerAudio": {"containerAudioType": "WAV"}}},
            },
            "twice",
        ),
    ],
)
def test_parse_rejects_invalid_requests_naming_the_field(body: dict[str, Any], fragment: str) -> None:
    with pytest.raises(V3InvalidRequestError, match=re.escape(fragment)):
        parse_recognize_file_request(body)


def test_parse_accepts_the_proto_json_variants() -> None:
    snake = {
        "uri": "https://storage.yandexcloud.net/b/k.wav",
        "recognition_model": {
            "model": "deferred-general",
            "audio_format": {
                "raw_audio": {"audio_encoding": 1, "sample_rate_hertz": "48000", "audio_channel_count": "2"}
            },
            "text_normalization": {
                "text_normalization": "TEXT_NORMALIZATION_ENABLED",
                "literature_text": True,
            },
            "language_restriction": {"restriction_type": "WHITELIST", "language_code": ["ru-RU", "en-US"]},
            "audio_processing_type": "FULL_DATA",
        },
        "unknownField": {"ignored": True},
    }
    parsed = parse_recognize_file_request(snake)
    assert parsed.uri == "https://storage.yandexcloud.net/b/k.wav"
    assert parsed.model == "deferred-general"
    assert parsed.audio_encoding == "LINEAR16_PCM"
    assert parsed.sample_rate_hertz == 48000
    assert parsed.audio_channel_count == 2
    assert parsed.container_audio_type is None
    assert parsed.normalization_enabled
    assert parsed.literature_text
    assert parsed.language_codes == ("ru-RU", "en-US")
    assert parsed.speaker_labeling == "SPEAKER_LABELING_UNSPECIFIED"

    content = parse_recognize_file_request(
        {"content": base64.urlsafe_b64encode(b"\xfb\xff audio").decode().rstrip("="), **v3_body()}
    )
    assert content.content == b"\xfb\xff audio"
    assert content.uri is None
    assert content.container_audio_type == "WAV"
    assert content.audio_channel_count is None
    defaults = parse_recognize_file_request({"uri": "http://h/k", **v3_body(model="")})
    assert defaults.model == "general"
    assert not defaults.normalization_enabled
    assert defaults.speaker_labeling_enabled is False


def test_parse_limits_inline_content() -> None:
    body = {"content": base64.b64encode(b"x" * 11).decode(), **v3_body()}
    assert parse_recognize_file_request(body, max_content_bytes=11).content == b"x" * 11
    with pytest.raises(V3InvalidRequestError, match="exceed the limit of 10 bytes"):
        parse_recognize_file_request(body, max_content_bytes=10)


# ------------------------------------------------------------------ the happy path


async def test_recognize_poll_and_get_results_with_documented_shapes(
    make_emulator: EmulatorFactory, audio_server: AudioServer, session: aiohttp.ClientSession
) -> None:
    emulator = await make_emulator(completion_delay=0.2)
    emulator.transcripts["talk.wav"] = {
        "1": words_for_text("hello there") + words_for_text("general kenobi", start=2.0)
    }
    body = v3_body(audio_server.uri("audio/talk.wav"))

    created = await recognize(session, emulator, body)
    assert set(created) == {"id", "description", "createdAt", "createdBy", "modifiedAt", "done", "metadata"}
    assert OPERATION_ID.match(created["id"])
    assert created["description"] == OPERATION_DESCRIPTION_V3 == "STT v3 async recognition"
    assert created["done"] is False
    assert created["metadata"] is None
    assert TIMESTAMP.match(created["createdAt"])
    assert created["createdBy"] == "ajeemulatorserviceac"
    assert emulator.v3_submissions == [body]
    assert emulator.submissions == []

    status, running = await get_operation(session, emulator, created["id"])
    assert status == 200
    assert running["done"] is False
    assert "response" not in running
    assert "error" not in running

    done = await wait_done(session, emulator, created["id"])
    assert set(done) == {"id", "description", "createdAt", "createdBy", "modifiedAt", "done"}
    assert done["description"] == "STT v3 async recognition"

    messages = await results(session, emulator, created["id"])
    assert [event_of(m) for m in messages] == ["final", "eouUpdate", "final", "eouUpdate"]
    assert texts(messages) == [("0", "hello there"), ("0", "general kenobi")]
    for message in messages:
        assert set(message) == {
            "sessionUuid",
            "audioCursors",
            "responseWallTimeMs",
            "channelTag",
            event_of(message),
        }
        assert message["channelTag"] == "0"
        assert SESSION_UUID.match(message["sessionUuid"]["uuid"])
        assert message["sessionUuid"]["userRequestId"]
        assert INT64.match(message["responseWallTimeMs"])
        assert all(INT64.match(value) for value in message["audioCursors"].values())
        assert message["audioCursors"]["receivedDataMs"] == "2650"
    final = messages[0]["final"]
    assert final["channelTag"] == "0"
    [alternative] = final["alternatives"]
    assert alternative == {
        "words": [
            {"text": "hello", "startTimeMs": "300", "endTimeMs": "600"},
            {"text": "there", "startTimeMs": "650", "endTimeMs": "950"},
        ],
        "text": "hello there",
        "startTimeMs": "0",
        "endTimeMs": "950",
        "confidence": 0,
        "languages": [],
    }
    assert messages[1]["eouUpdate"] == {"timeMs": "950"}
    assert messages[2]["audioCursors"]["finalIndex"] == "1"
    assert messages[2]["final"]["alternatives"][0]["startTimeMs"] == "950"
    # The audio was downloaded from the presigned URL as given.
    assert audio_server.requests == [f"/bucket/audio/talk.wav?{PRESIGN_QUERY}"]
    record = emulator.operations[created["id"]]
    assert record.api == "v3"
    assert record.downloaded_bytes == len(WAV_BYTES)
    assert record.recognition_fetches == 1

    # Results can be read again, with the camelCase query parameter too.
    status, raw, _ = await get_recognition(session, emulator, created["id"], param="operationId")
    assert status == 200
    assert parse_stream(raw) == messages


async def test_no_transcript_gives_an_empty_stream(
    make_emulator: EmulatorFactory, audio_server: AudioServer, session: aiohttp.ClientSession
) -> None:
    emulator = await make_emulator()
    emulator.transcripts["other.wav"] = {"1": words_for_text("not this one")}
    _, messages = await finished(session, emulator, v3_body(audio_server.uri("audio/talk.wav")))
    assert messages == []


async def test_text_normalization_adds_final_refinements(
    make_emulator: EmulatorFactory, audio_server: AudioServer, session: aiohttp.ClientSession
) -> None:
    emulator = await make_emulator()
    emulator.transcripts["talk.wav"] = {"1": words_for_text("i counted two birds")}
    uri = audio_server.uri("audio/talk.wav")

    _, enabled = await finished(
        session, emulator, v3_body(uri, normalization={"textNormalization": "TEXT_NORMALIZATION_ENABLED"})
    )
    assert [event_of(m) for m in enabled] == ["final", "finalRefinement", "eouUpdate"]
    assert texts(enabled) == [("0", "i counted two birds")]
    assert texts(enabled, "finalRefinement") == [("0", "i counted 2 birds")]
    refinement = enabled[1]["finalRefinement"]
    assert refinement["finalIndex"] == enabled[0]["audioCursors"]["finalIndex"] == "0"
    assert refinement["normalizedText"]["channelTag"] == "0"
    assert [w["text"] for w in refinement["normalizedText"]["alternatives"][0]["words"]] == [
        "i",
        "counted",
        "2",
        "birds",
    ]

    _, literature = await finished(
        session,
        emulator,
        v3_body(
            uri, normalization={"textNormalization": "TEXT_NORMALIZATION_ENABLED", "literatureText": True}
        ),
    )
    assert texts(literature, "finalRefinement") == [("0", "I counted 2 birds.")]

    for normalization in ({"textNormalization": "TEXT_NORMALIZATION_DISABLED"}, None):
        _, plain = await finished(session, emulator, v3_body(uri, normalization=normalization))
        assert [event_of(m) for m in plain] == ["final", "eouUpdate"]


async def test_multichannel_raw_audio_tags_channels_from_zero(
    make_emulator: EmulatorFactory, audio_server: AudioServer, session: aiohttp.ClientSession
) -> None:
    emulator = await make_emulator()
    emulator.transcripts["talk.wav"] = {
        "1": words_for_text("left first") + words_for_text("left again", start=5.0),
        "2": words_for_text("right side", start=1.0),
    }
    raw = {"audioEncoding": "LINEAR16_PCM", "sampleRateHertz": "16000", "audioChannelCount": "2"}
    _, messages = await finished(session, emulator, v3_body(audio_server.uri("audio/talk.wav"), raw=raw))
    assert texts(messages) == [("0", "left first"), ("1", "right side"), ("0", "left again")]
    finals = [m for m in messages if "final" in m]
    # Each channel counts its own finals and segments.
    assert [m["audioCursors"]["finalIndex"] for m in finals] == ["0", "0", "1"]
    assert finals[1]["final"]["alternatives"][0]["startTimeMs"] == "0"
    assert finals[2]["final"]["alternatives"][0]["startTimeMs"] == "950"
    assert all(m["final"]["channelTag"] == m["channelTag"] for m in finals)


async def test_speaker_labeling_on_mono_audio_gives_two_speakers(
    make_emulator: EmulatorFactory, audio_server: AudioServer, session: aiohttp.ClientSession
) -> None:
    emulator = await make_emulator()
    emulator.transcripts["talk.wav"] = {
        "1": words_for_text("how are you")
        + words_for_text("fine thanks", start=3.0)
        + words_for_text("good to hear", start=6.0)
    }
    uri = audio_server.uri("audio/talk.wav")
    _, labeled = await finished(session, emulator, v3_body(uri, speaker_labeling="SPEAKER_LABELING_ENABLED"))
    assert texts(labeled) == [("0", "how are you"), ("1", "fine thanks"), ("0", "good to hear")]
    # One mono session: finals are counted across speakers.
    assert [m["audioCursors"]["finalIndex"] for m in labeled if "final" in m] == ["0", "1", "2"]

    _, unlabeled = await finished(
        session, emulator, v3_body(uri, speaker_labeling="SPEAKER_LABELING_DISABLED")
    )
    assert [tag for tag, _ in texts(unlabeled)] == ["0", "0", "0"]

    emulator.transcripts["talk.wav"] = {
        "1": words_for_text("a b c d"),
        "2": words_for_text("e f g", start=4.0),
    }
    emulator.transcripts["talk.wav"]["3"] = words_for_text("h", start=9.0)
    operation_id = (
        await recognize(session, emulator, v3_body(uri, speaker_labeling="SPEAKER_LABELING_ENABLED"))
    )["id"]
    done = await wait_done(session, emulator, operation_id)
    assert done["error"]["code"] == 13  # a scripting error: more than two speakers


async def test_speaker_labeling_on_multichannel_raw_audio_is_rejected(
    make_emulator: EmulatorFactory, audio_server: AudioServer, session: aiohttp.ClientSession
) -> None:
    emulator = await make_emulator()
    body = v3_body(
        audio_server.uri("audio/talk.wav"),
        raw={"audioEncoding": "LINEAR16_PCM", "sampleRateHertz": 8000, "audioChannelCount": 2},
        speaker_labeling="SPEAKER_LABELING_ENABLED",
    )
    status, payload, _ = await call(session, "POST", emulator.url + RECOGNIZE, body=body, headers=AUTH)
    assert status == 400
    assert "speakerLabeling" in assert_error_body(payload, 3)
    assert emulator.operations == {}
    assert emulator.v3_submissions == []
    body["recognitionModel"]["audioFormat"]["rawAudio"]["audioChannelCount"] = 1
    await recognize(session, emulator, body)


async def test_whitelisted_language_is_reported(
    make_emulator: EmulatorFactory, audio_server: AudioServer, session: aiohttp.ClientSession
) -> None:
    emulator = await make_emulator()
    emulator.transcripts["talk.wav"] = {"1": words_for_text("privet")}
    restriction = {"restrictionType": "WHITELIST", "languageCode": ["ru-RU", "kk-KK"]}
    _, messages = await finished(
        session, emulator, v3_body(audio_server.uri("audio/talk.wav"), restriction=restriction)
    )
    assert messages[0]["final"]["alternatives"][0]["languages"] == [
        {"languageCode": "ru-RU", "probability": 1.0}
    ]


async def test_inline_content_is_not_downloaded_and_is_scripted_by_its_hash(
    make_emulator: EmulatorFactory, session: aiohttp.ClientSession
) -> None:
    emulator = await make_emulator()
    audio = b"OggS fake opus audio"
    emulator.transcripts[hashlib.sha256(audio).hexdigest()] = {"1": words_for_text("inline words")}
    body = {"content": base64.b64encode(audio).decode(), **v3_body(container="OGG_OPUS")}
    operation_id, messages = await finished(session, emulator, body)
    assert texts(messages) == [("0", "inline words")]
    record = emulator.operations[operation_id]
    assert record.audio_path == f"content:{hashlib.sha256(audio).hexdigest()}"
    assert record.downloaded_bytes == len(audio)
    assert record.download_status is None

    emulator.v3_max_content_bytes = 4
    status, payload, _ = await call(session, "POST", emulator.url + RECOGNIZE, body=body, headers=AUTH)
    assert status == 400
    assert "content" in assert_error_body(payload, 3)


async def test_failed_download_fails_the_operation_and_its_results(
    make_emulator: EmulatorFactory, audio_server: AudioServer, session: aiohttp.ClientSession
) -> None:
    emulator = await make_emulator()
    created = await recognize(session, emulator, v3_body(audio_server.uri("audio/empty.wav")))
    done = await wait_done(session, emulator, created["id"])
    assert "could not be downloaded" in assert_error_body(done["error"], 3)
    assert "deadbeef" not in done["error"]["message"]
    assert "response" not in done
    status, raw, _ = await get_recognition(session, emulator, created["id"])
    assert status == 400
    assert "could not be downloaded" in assert_error_body(json.loads(raw), 3)


async def test_raw_results_and_operation_response_are_scriptable(
    make_emulator: EmulatorFactory, audio_server: AudioServer, session: aiohttp.ClientSession
) -> None:
    emulator = await make_emulator()
    odd = [{"statusCode": {"codeType": "WARNING", "message": "fallback"}, "channelTag": "0"}]
    emulator.v3_raw_results["talk.wav"] = odd
    emulator.v3_operation_response = {"@type": "type.googleapis.com/google.protobuf.Empty"}
    created = await recognize(session, emulator, v3_body(audio_server.uri("audio/talk.wav")))
    done = await wait_done(session, emulator, created["id"])
    assert done["response"] == {"@type": "type.googleapis.com/google.protobuf.Empty"}
    assert await results(session, emulator, created["id"]) == odd


# ------------------------------------------------------------------ getRecognition errors


async def test_results_before_the_operation_is_done_answer_an_error(
    make_emulator: EmulatorFactory, audio_server: AudioServer, session: aiohttp.ClientSession
) -> None:
    emulator = await make_emulator(completion_delay=5)
    created = await recognize(session, emulator, v3_body(audio_server.uri("audio/talk.wav")))
    status, raw, _ = await get_recognition(session, emulator, created["id"])
    assert status == 400
    assert "not done" in assert_error_body(json.loads(raw), 9)  # FAILED_PRECONDITION

    emulator.v3_not_ready_code = 5
    status, raw, _ = await get_recognition(session, emulator, created["id"])
    assert status == 404
    assert_error_body(json.loads(raw), 5)

    # deleteRecognition of a running operation answers the same.
    async with session.delete(
        f"{emulator.url}{DELETE}", params={"operation_id": created["id"]}, headers=AUTH
    ) as response:
        assert response.status == 404
        assert_error_body(await response.json(), 5)
    assert emulator.deleted_recognitions == []


async def test_unknown_v2_and_missing_ids_on_get_recognition(
    make_emulator: EmulatorFactory, audio_server: AudioServer, session: aiohttp.ClientSession
) -> None:
    emulator = await make_emulator()
    status, raw, _ = await get_recognition(session, emulator, "e03doesnotexist00000")
    assert status == 404
    assert "not found" in assert_error_body(json.loads(raw), 5)

    v2_body = {"config": {"specification": {}}, "audio": {"uri": audio_server.uri("audio/talk.wav")}}
    status, created, _ = await call(
        session, "POST", emulator.url + "/speech/stt/v2/longRunningRecognize", body=v2_body, headers=AUTH
    )
    assert status == 200
    await wait_done(session, emulator, created["id"])
    status, raw, _ = await get_recognition(session, emulator, created["id"])
    assert status == 404

    async with session.get(f"{emulator.url}{GET}", headers=AUTH) as response:
        assert response.status == 400
        assert "operation_id" in assert_error_body(await response.json(), 3)
    status, raw, _ = await get_recognition(session, emulator, "e03" + "x" * 60)
    assert status == 400


async def test_wrapped_stream_errors(make_emulator: EmulatorFactory, session: aiohttp.ClientSession) -> None:
    emulator = await make_emulator()
    emulator.v3_wrap_stream_errors = True
    status, raw, _ = await get_recognition(session, emulator, "e03doesnotexist00000")
    assert status == 404
    element = json.loads(raw)
    assert set(element) == {"error"}
    assert_error_body(element["error"], 5)


async def test_cancelled_v3_operation_answers_cancelled(
    make_emulator: EmulatorFactory, audio_server: AudioServer, session: aiohttp.ClientSession
) -> None:
    emulator = await make_emulator(completion_delay=5)
    created = await recognize(session, emulator, v3_body(audio_server.uri("audio/talk.wav")))
    status, cancelled = await get_operation(session, emulator, f"{created['id']}:cancel")
    assert status == 200
    assert cancelled["done"] is True
    assert cancelled["error"]["code"] == 1
    status, raw, _ = await get_recognition(session, emulator, created["id"])
    assert status == 499
    assert_error_body(json.loads(raw), 1)


async def test_fail_operations_applies_to_v3(
    make_emulator: EmulatorFactory, audio_server: AudioServer, session: aiohttp.ClientSession
) -> None:
    emulator = await make_emulator()
    emulator.transcripts["talk.wav"] = {"1": words_for_text("would be recognised")}
    emulator.fail_operations("talk.wav", code=13, message="recognition failed")
    created = await recognize(session, emulator, v3_body(audio_server.uri("audio/talk.wav")))
    done = await wait_done(session, emulator, created["id"])
    assert done["error"] == {"code": 13, "message": "recognition failed", "details": []}
    status, raw, _ = await get_recognition(session, emulator, created["id"])
    assert status == 500
    assert assert_error_body(json.loads(raw), 13) == "recognition failed"


async def test_expired_results_answer_not_found(
    make_emulator: EmulatorFactory, audio_server: AudioServer, session: aiohttp.ClientSession
) -> None:
    emulator = await make_emulator(retention_seconds=0.4)
    emulator.transcripts["talk.wav"] = {"1": words_for_text("short lived")}
    first = await recognize(session, emulator, v3_body(audio_server.uri("audio/talk.wav")))
    second = await recognize(session, emulator, v3_body(audio_server.uri("audio/talk.wav")))
    await wait_done(session, emulator, first["id"])
    await wait_done(session, emulator, second["id"])
    assert len(await results(session, emulator, first["id"])) == 2

    emulator.expire(first["id"])
    status, raw, _ = await get_recognition(session, emulator, first["id"])
    assert status == 404
    assert first["id"] in assert_error_body(json.loads(raw), 5)
    assert (await get_operation(session, emulator, first["id"]))[0] == 404

    await asyncio.sleep(0.45)
    status, raw, _ = await get_recognition(session, emulator, second["id"])
    assert status == 404
    assert_error_body(json.loads(raw), 5)


async def test_delete_recognition_removes_the_results_only(
    make_emulator: EmulatorFactory, audio_server: AudioServer, session: aiohttp.ClientSession
) -> None:
    emulator = await make_emulator()
    emulator.transcripts["talk.wav"] = {"1": words_for_text("delete me")}
    operation_id, messages = await finished(session, emulator, v3_body(audio_server.uri("audio/talk.wav")))
    assert messages

    status, payload, _ = await call(
        session, "DELETE", f"{emulator.url}{DELETE}?operation_id={operation_id}", headers=AUTH
    )
    assert status == 200
    assert payload == {}
    assert emulator.deleted_recognitions == [operation_id]
    status, raw, _ = await get_recognition(session, emulator, operation_id)
    assert status == 404
    assert_error_body(json.loads(raw), 5)
    # The operation itself is still there.
    status, operation = await get_operation(session, emulator, operation_id)
    assert status == 200
    assert operation["done"] is True
    status, payload, _ = await call(
        session, "DELETE", f"{emulator.url}{DELETE}?operation_id={operation_id}", headers=AUTH
    )
    assert status == 404
    assert_error_body(payload, 5)
    assert emulator.counts["v3_delete"] == 2


# ------------------------------------------------------------------ auth


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Api-Key wrong"}, {"Authorization": "Bearer t1.unknown"}]
)
async def test_bad_credentials_answer_401_on_every_v3_endpoint(
    make_emulator: EmulatorFactory,
    audio_server: AudioServer,
    session: aiohttp.ClientSession,
    headers: dict[str, str],
) -> None:
    emulator = await make_emulator()
    body = v3_body(audio_server.uri("audio/talk.wav"))
    for method, url, payload_body in (
        ("POST", emulator.url + RECOGNIZE, body),
        ("GET", f"{emulator.url}{GET}?operation_id=e03aaaaaaaaaaaaaaaaa", None),
        ("DELETE", f"{emulator.url}{DELETE}?operation_id=e03aaaaaaaaaaaaaaaaa", None),
    ):
        status, payload, _ = await call(session, method, url, body=payload_body, headers=headers)
        assert status == 401
        assert_error_body(payload, 16)
    assert emulator.operations == {}


async def test_iam_tokens_need_the_folder_header(
    make_emulator: EmulatorFactory, audio_server: AudioServer, session: aiohttp.ClientSession
) -> None:
    emulator = await make_emulator(iam_tokens={"t1.static"})
    emulator.transcripts["talk.wav"] = {"1": words_for_text("with folder")}
    body = v3_body(audio_server.uri("audio/talk.wav"))
    bearer = {"Authorization": "Bearer t1.static"}
    status, payload, _ = await call(session, "POST", emulator.url + RECOGNIZE, body=body, headers=bearer)
    assert status == 403
    assert "x-folder-id" in assert_error_body(payload, 7)
    assert emulator.operations == {}

    with_folder = {**bearer, "x-folder-id": "b1gfolder"}
    status, created, _ = await call(session, "POST", emulator.url + RECOGNIZE, body=body, headers=with_folder)
    assert status == 200
    assert emulator.operations[created["id"]].folder_id == "b1gfolder"
    # The Operation API does not need it.
    status, _, _ = await call(session, "GET", f"{emulator.url}/operations/{created['id']}", headers=bearer)
    assert status == 200
    await wait_done(session, emulator, created["id"])
    status, raw, _ = await get_recognition(session, emulator, created["id"], headers=bearer)
    assert status == 403
    status, raw, _ = await get_recognition(session, emulator, created["id"], headers=with_folder)
    assert status == 200
    assert texts(parse_stream(raw)) == [("0", "with folder")]

    emulator.v3_require_folder_id = False
    status, _, _ = await call(session, "POST", emulator.url + RECOGNIZE, body=body, headers=bearer)
    assert status == 200


# ------------------------------------------------------------------ quotas


async def test_get_recognition_quota_is_per_second(
    make_emulator: EmulatorFactory, audio_server: AudioServer, session: aiohttp.ClientSession
) -> None:
    emulator = await make_emulator(v3_check_quota_per_second=3)
    created = await recognize(session, emulator, v3_body(audio_server.uri("audio/talk.wav")))
    await asyncio.sleep(0.2)
    assert emulator.operations[created["id"]].done
    for _ in range(3):
        status, _, _ = await get_recognition(session, emulator, created["id"])
        assert status == 200
    status, raw, headers = await get_recognition(session, emulator, created["id"])
    assert status == 429
    assert "per second" in assert_error_body(json.loads(raw), 8)
    assert headers["Retry-After"] == "1"
    assert emulator.quota_refusals["v3_check"] == 1

    emulator.quota_retry_after = False
    status, _, headers = await get_recognition(session, emulator, created["id"])
    assert status == 429
    assert "Retry-After" not in headers

    await asyncio.sleep(1.05)
    status, _, _ = await get_recognition(session, emulator, created["id"])
    assert status == 200
    assert len(emulator.quota_charges["v3_check"]) == 4


async def test_operation_checks_of_v3_operations_use_the_v3_quota(
    make_emulator: EmulatorFactory, audio_server: AudioServer, session: aiohttp.ClientSession
) -> None:
    emulator = await make_emulator(v3_check_quota_per_second=2, check_quota_per_hour=100)
    created = await recognize(session, emulator, v3_body(audio_server.uri("audio/talk.wav")))
    for _ in range(2):
        status, _ = await get_operation(session, emulator, created["id"])
        assert status == 200
    status, payload = await get_operation(session, emulator, created["id"])
    assert status == 429
    assert_error_body(payload, 8)
    assert emulator.quota_charges["operation"] == []
    assert len(emulator.quota_charges["v3_check"]) == 2
    # Unknown ids (and v2 operations) still count against the v2 hourly quota.
    status, _ = await get_operation(session, emulator, "e03doesnotexist00000")
    assert status == 404
    assert len(emulator.quota_charges["operation"]) == 1


async def test_v3_submissions_share_the_submit_quota_by_default(
    make_emulator: EmulatorFactory, audio_server: AudioServer, session: aiohttp.ClientSession
) -> None:
    emulator = await make_emulator(submit_quota_per_hour=2)
    body = v3_body(audio_server.uri("audio/talk.wav"))
    v2_body = {"config": {"specification": {}}, "audio": {"uri": audio_server.uri("audio/talk.wav")}}
    status, _, _ = await call(
        session, "POST", emulator.url + "/speech/stt/v2/longRunningRecognize", body=v2_body, headers=AUTH
    )
    assert status == 200
    await recognize(session, emulator, body)
    status, payload, headers = await call(session, "POST", emulator.url + RECOGNIZE, body=body, headers=AUTH)
    assert status == 429
    assert "per hour" in assert_error_body(payload, 8)
    assert 3590 <= int(headers["Retry-After"]) <= 3600
    assert emulator.quota_refusals["submit"] == 1
    assert len(emulator.v3_submissions) == 1


async def test_v3_submissions_can_have_their_own_quota(
    make_emulator: EmulatorFactory, audio_server: AudioServer, session: aiohttp.ClientSession
) -> None:
    emulator = await make_emulator(submit_quota_per_hour=1, v3_submit_quota_per_hour=2)
    body = v3_body(audio_server.uri("audio/talk.wav"))
    await recognize(session, emulator, body)
    await recognize(session, emulator, body)
    status, payload, _ = await call(session, "POST", emulator.url + RECOGNIZE, body=body, headers=AUTH)
    assert status == 429
    assert_error_body(payload, 8)
    assert emulator.quota_refusals == {"v3_submit": 1}
    assert emulator.quota_charges["submit"] == []
    v2_body = {"config": {"specification": {}}, "audio": {"uri": audio_server.uri("audio/talk.wav")}}
    status, _, _ = await call(
        session, "POST", emulator.url + "/speech/stt/v2/longRunningRecognize", body=v2_body, headers=AUTH
    )
    assert status == 200


# ------------------------------------------------------------------ faults


@pytest.mark.parametrize(("status", "code"), [(429, 8), (500, 13), (503, 14), (504, 4)])
async def test_faults_can_be_injected_on_v3_endpoints(
    make_emulator: EmulatorFactory,
    audio_server: AudioServer,
    session: aiohttp.ClientSession,
    status: int,
    code: int,
) -> None:
    emulator = await make_emulator()
    emulator.inject("v3_submit", status, retry_after=2)
    emulator.inject("v3_recognition", status)
    emulator.inject("v3_delete", status)
    assert emulator.pending_faults() == 3
    body = v3_body(audio_server.uri("audio/talk.wav"))
    answer, payload, headers = await call(session, "POST", emulator.url + RECOGNIZE, body=body, headers=AUTH)
    assert answer == status
    assert_error_body(payload, code)
    assert headers["Retry-After"] == "2"
    assert emulator.operations == {}
    created = await recognize(session, emulator, body)
    await wait_done(session, emulator, created["id"])
    answer, raw, _ = await get_recognition(session, emulator, created["id"])
    assert answer == status
    assert_error_body(json.loads(raw), code)
    answer, payload, _ = await call(
        session, "DELETE", f"{emulator.url}{DELETE}?operation_id={created['id']}", headers=AUTH
    )
    assert answer == status
    assert emulator.faults_served[("v3_recognition", status)] == 1
    assert (await get_recognition(session, emulator, created["id"]))[0] == 200
    assert emulator.counts["v3_submit"] == 2
    assert emulator.counts["v3_recognition"] == 2
    assert emulator.counts["v3_delete"] == 1


def test_inject_knows_the_v3_endpoints() -> None:
    emulator = SpeechKitEmulator()
    emulator.inject("v3_recognition", None, delay=0.1)
    assert emulator.pending_faults("v3_recognition") == 1
    with pytest.raises(ValueError, match="unknown endpoint"):
        emulator.inject("v4_submit", 500)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="after"):
        emulator.inject_v3_stream_break(-1)
    emulator.inject_v3_stream_break(1, count=2)
    assert emulator.clear_faults() == 3


async def test_stream_break_with_an_error_element(
    make_emulator: EmulatorFactory, audio_server: AudioServer, session: aiohttp.ClientSession
) -> None:
    emulator = await make_emulator()
    emulator.transcripts["talk.wav"] = {"1": words_for_text("one") + words_for_text("two", start=3.0)}
    operation_id, complete = await finished(session, emulator, v3_body(audio_server.uri("audio/talk.wav")))
    assert len(complete) == 4
    error = {"code": 14, "message": "backend went away", "details": []}
    emulator.inject_v3_stream_break(1, error=error)
    status, raw, _ = await get_recognition(session, emulator, operation_id)
    assert status == 200
    lines = [json.loads(line) for line in raw.decode().splitlines()]
    assert lines == [{"result": complete[0]}, {"error": error}]
    assert await results(session, emulator, operation_id) == complete  # used up


async def test_stream_break_drops_the_connection(
    make_emulator: EmulatorFactory, audio_server: AudioServer, session: aiohttp.ClientSession
) -> None:
    emulator = await make_emulator()
    emulator.transcripts["talk.wav"] = {"1": words_for_text("one") + words_for_text("two", start=3.0)}
    operation_id, complete = await finished(session, emulator, v3_body(audio_server.uri("audio/talk.wav")))
    emulator.inject_v3_stream_break(2)
    with pytest.raises(aiohttp.ClientPayloadError):
        await get_recognition(session, emulator, operation_id)
    assert await results(session, emulator, operation_id) == complete
