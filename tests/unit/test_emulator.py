"""The SpeechKit v2 async emulator behaves like the documented service."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from multidict import CIMultiDict

from tests.emulator import IAM_AUDIENCE, RESPONSE_TYPE, SpeechKitEmulator, duration_string, words_for_text

AUDIO_DIR = Path("/work/shared/audio")
WAV_BYTES = (AUDIO_DIR / "librivox-0880.wav").read_bytes()
MANIFEST = json.loads((AUDIO_DIR / "manifest.json").read_text())
TEXT_0880: str = MANIFEST["files"]["librivox-0880.wav"]["text"]
STEREO_TEXTS: dict[str, str] = MANIFEST["files"]["librivox-stereo-0880L-0930R.wav"]["channel_text"]

API_KEY = "test-api-key"
AUTH = {"Authorization": f"Api-Key {API_KEY}"}
SUBMIT = "/speech/stt/v2/longRunningRecognize"
PRESIGN_QUERY = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=deadbeefsecret"

OPERATION_ID = re.compile(r"^e03[0-9a-v]{17}$")
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")
DURATION = re.compile(r"^\d+\.\d{9}s$")

EmulatorFactory = Callable[..., Awaitable[SpeechKitEmulator]]


@dataclass
class AudioServer:
    """A stand-in for the S3 server that presigned URLs point at."""

    url: str
    objects: dict[str, bytes]
    requests: list[str] = field(default_factory=list)

    def uri(self, key: str, *, query: str = PRESIGN_QUERY) -> str:
        return f"{self.url}/bucket/{key}?{query}"


@pytest.fixture
async def audio_server() -> AsyncIterator[AudioServer]:
    objects = {
        "audio/librivox-0880.wav": WAV_BYTES,
        "audio/stereo file.wav": WAV_BYTES,
        "audio/failing.wav": WAV_BYTES,
        "audio/empty.wav": b"",
    }
    server = AudioServer(url="", objects=objects)

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


def request_body(uri: str, **spec: Any) -> dict[str, Any]:
    specification: dict[str, Any] = {"languageCode": "en-US", "model": "general"}
    specification.update(spec)
    return {"config": {"specification": specification}, "audio": {"uri": uri}}


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


async def submit(
    session: aiohttp.ClientSession, emulator: SpeechKitEmulator, body: dict[str, Any]
) -> dict[str, Any]:
    status, payload, _ = await call(session, "POST", emulator.url + SUBMIT, body=body, headers=AUTH)
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


def assert_error_body(payload: dict[str, Any], code: int) -> str:
    assert set(payload) == {"code", "message", "details"}
    assert payload["code"] == code
    assert payload["details"] == []
    message = payload["message"]
    assert isinstance(message, str)
    assert message
    return message


# ------------------------------------------------------------------ helpers


def test_words_for_text_lays_out_words_back_to_back() -> None:
    words = words_for_text("he was not", start=1.0, word_seconds=0.5, gap=0.25)
    assert words == [("he", 1.0, 1.5), ("was", 1.75, 2.25), ("not", 2.5, 3.0)]
    default = words_for_text(TEXT_0880)
    assert [w for w, _, _ in default] == TEXT_0880.split()
    assert default[0] == ("he", 0.3, 0.6)
    assert default[1] == ("was", 0.65, 0.95)


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [(0.0, "0.000000000s"), (0.879999999, "0.879999999s"), (1.5, "1.500000000s"), (61.25, "61.250000000s")],
)
def test_duration_strings_have_nine_fractional_digits(seconds: float, expected: str) -> None:
    assert duration_string(seconds) == expected


# ------------------------------------------------------------------ the happy path


async def test_submit_poll_done_with_documented_shapes(
    make_emulator: EmulatorFactory, audio_server: AudioServer, session: aiohttp.ClientSession
) -> None:
    emulator = await make_emulator(completion_delay=0.2)
    emulator.transcripts["librivox-0880.wav"] = {"1": words_for_text(TEXT_0880)}
    uri = audio_server.uri("audio/librivox-0880.wav")
    body = request_body(uri, audioEncoding="LINEAR16_PCM", sampleRateHertz=16000)

    created = await submit(session, emulator, body)
    assert set(created) == {"id", "description", "createdAt", "createdBy", "modifiedAt", "done"}
    assert OPERATION_ID.match(created["id"])
    assert created["done"] is False
    assert created["description"] == "STT async recognition"
    assert TIMESTAMP.match(created["createdAt"])
    assert TIMESTAMP.match(created["modifiedAt"])
    assert emulator.submissions == [body]

    status, running = await get_operation(session, emulator, created["id"])
    assert status == 200
    assert running["done"] is False
    assert "response" not in running
    assert "error" not in running

    done = await wait_done(session, emulator, created["id"])
    assert done["id"] == created["id"]
    assert done["createdAt"] == created["createdAt"]
    assert "error" not in done
    response = done["response"]
    assert response["@type"] == RESPONSE_TYPE
    [chunk] = response["chunks"]
    assert chunk["channelTag"] == "1"
    [alternative] = chunk["alternatives"]
    assert alternative["text"] == TEXT_0880
    assert alternative["confidence"] == 1
    words = alternative["words"]
    assert [w["word"] for w in words] == TEXT_0880.split()
    for word in words:
        assert set(word) == {"startTime", "endTime", "word", "confidence"}
        assert DURATION.match(word["startTime"])
        assert DURATION.match(word["endTime"])
        assert word["confidence"] == 1
    assert words[0]["startTime"] == "0.300000000s"
    assert words[0]["endTime"] == "0.600000000s"
    assert words[1]["startTime"] == "0.650000000s"

    record = emulator.operations[created["id"]]
    assert record.downloaded_bytes == len(WAV_BYTES)
    assert record.done
    # The download used the presigned URL as given, query string included.
    assert audio_server.requests == [f"/bucket/audio/librivox-0880.wav?{PRESIGN_QUERY}"]


async def test_chunks_split_at_pauses_longer_than_half_a_second(
    make_emulator: EmulatorFactory, audio_server: AudioServer, session: aiohttp.ClientSession
) -> None:
    emulator = await make_emulator()
    emulator.transcripts["librivox-0880.wav"] = {
        "1": [
            ("he", 0.3, 0.5),
            ("was", 1.0, 1.2),  # a pause of exactly 0.5 s does not split
            ("not", 1.8, 2.0),  # 0.6 s splits
            ("an", 2.1, 2.3),
        ]
    }
    created = await submit(session, emulator, request_body(audio_server.uri("audio/librivox-0880.wav")))
    done = await wait_done(session, emulator, created["id"])
    texts = [chunk["alternatives"][0]["text"] for chunk in done["response"]["chunks"]]
    assert texts == ["he was", "not an"]


async def test_multichannel_transcripts_give_chunks_per_channel_in_time_order(
    make_emulator: EmulatorFactory, audio_server: AudioServer, session: aiohttp.ClientSession
) -> None:
    emulator = await make_emulator()
    right = words_for_text(STEREO_TEXTS["2"], start=1.0)
    left_first, left_second = words_for_text("he was not"), words_for_text("an ill disposed", start=5.0)
    emulator.transcripts["stereo file.wav"] = {"1": left_first + left_second, "2": right}
    # The key has a space: the path is unquoted before matching.
    uri = audio_server.uri("audio/stereo%20file.wav")
    body = request_body(uri, audioEncoding="LINEAR16_PCM", sampleRateHertz=16000, audioChannelCount=2)
    created = await submit(session, emulator, body)
    done = await wait_done(session, emulator, created["id"])
    chunks = done["response"]["chunks"]
    assert [c["channelTag"] for c in chunks] == ["1", "2", "1"]
    assert [c["alternatives"][0]["text"] for c in chunks] == [
        "he was not",
        STEREO_TEXTS["2"],
        "an ill disposed",
    ]
    assert chunks[1]["alternatives"][0]["words"][0]["startTime"] == "1.000000000s"


async def test_no_matching_transcript_gives_a_response_without_chunks(
    make_emulator: EmulatorFactory, audio_server: AudioServer, session: aiohttp.ClientSession
) -> None:
    emulator = await make_emulator()
    emulator.transcripts["other.wav"] = {"1": words_for_text("nothing here")}
    created = await submit(session, emulator, request_body(audio_server.uri("audio/librivox-0880.wav")))
    done = await wait_done(session, emulator, created["id"])
    assert done["response"] == {"@type": RESPONSE_TYPE}
    assert "error" not in done


@pytest.mark.parametrize("key", ["audio/missing.wav", "audio/empty.wav"])
async def test_failed_or_empty_download_fails_the_operation_without_leaking_the_query(
    make_emulator: EmulatorFactory, audio_server: AudioServer, session: aiohttp.ClientSession, key: str
) -> None:
    emulator = await make_emulator()
    emulator.transcripts[key] = {"1": words_for_text("should not appear")}
    created = await submit(session, emulator, request_body(audio_server.uri(key)))
    done = await wait_done(session, emulator, created["id"])
    assert "response" not in done
    message = assert_error_body(done["error"], 3)
    assert "could not be downloaded" in message
    assert "X-Amz" not in message
    assert "deadbeef" not in message
    assert emulator.operations[created["id"]].downloaded_bytes is None


async def test_unreachable_audio_host_fails_the_operation(
    make_emulator: EmulatorFactory, session: aiohttp.ClientSession
) -> None:
    emulator = await make_emulator()
    # Port 9 (discard) on loopback refuses connections.
    created = await submit(
        session, emulator, request_body(f"http://127.0.0.1:9/bucket/a.wav?{PRESIGN_QUERY}")
    )
    done = await wait_done(session, emulator, created["id"])
    message = assert_error_body(done["error"], 3)
    assert "could not be downloaded" in message
    assert "deadbeef" not in message


# ------------------------------------------------------------------ auth and validation


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Api-Key wrong-key"},
        {"Authorization": "Bearer t1.unknown"},
        {"Authorization": "Basic dGVzdDp0ZXN0"},
        {"Authorization": "Api-Key"},
    ],
)
async def test_bad_credentials_answer_401(
    make_emulator: EmulatorFactory,
    audio_server: AudioServer,
    session: aiohttp.ClientSession,
    headers: dict[str, str],
) -> None:
    emulator = await make_emulator()
    body = request_body(audio_server.uri("audio/librivox-0880.wav"))
    status, payload, _ = await call(session, "POST", emulator.url + SUBMIT, body=body, headers=headers)
    assert status == 401
    assert_error_body(payload, 16)
    assert emulator.submissions == []
    assert emulator.operations == {}

    status, payload, _ = await call(
        session, "GET", f"{emulator.url}/operations/e03aaaaaaaaaaaaaaaaa", headers=headers
    )
    assert status == 401
    assert_error_body(payload, 16)


async def test_static_iam_token_is_accepted(
    make_emulator: EmulatorFactory, audio_server: AudioServer, session: aiohttp.ClientSession
) -> None:
    emulator = await make_emulator(api_keys=set(), iam_tokens={"t1.static"})
    body = request_body(audio_server.uri("audio/librivox-0880.wav"))
    status, _, _ = await call(session, "POST", emulator.url + SUBMIT, body=body, headers=AUTH)
    assert status == 401
    status, payload, _ = await call(
        session, "POST", emulator.url + SUBMIT, body=body, headers={"Authorization": "Bearer t1.static"}
    )
    assert status == 200
    assert OPERATION_ID.match(payload["id"])


@pytest.mark.parametrize(
    ("spec", "field_name"),
    [
        ({"audioEncoding": "LINEAR16_PCM", "sampleRateHertz": 44100}, "sampleRateHertz"),
        ({"audioEncoding": "LINEAR16_PCM", "sampleRateHertz": "fast"}, "sampleRateHertz"),
        ({"audioEncoding": "MP3", "audioChannelCount": 2}, "audioChannelCount"),
        ({"audioChannelCount": 1}, "audioChannelCount"),  # the default encoding is OGG_OPUS
        (
            {"audioEncoding": "LINEAR16_PCM", "sampleRateHertz": 16000, "audioChannelCount": 9},
            "audioChannelCount",
        ),
        (
            {"audioEncoding": "LINEAR16_PCM", "sampleRateHertz": 16000, "audioChannelCount": 0},
            "audioChannelCount",
        ),
        ({"audioEncoding": "FLAC"}, "audioEncoding"),
        ({"profanityFilter": "yes"}, "profanityFilter"),
    ],
)
async def test_invalid_specification_answers_400_naming_the_field(
    make_emulator: EmulatorFactory,
    audio_server: AudioServer,
    session: aiohttp.ClientSession,
    spec: dict[str, Any],
    field_name: str,
) -> None:
    emulator = await make_emulator()
    body = request_body(audio_server.uri("audio/librivox-0880.wav"), **spec)
    status, payload, _ = await call(session, "POST", emulator.url + SUBMIT, body=body, headers=AUTH)
    assert status == 400
    assert field_name in assert_error_body(payload, 3)
    assert emulator.submissions == []
    assert emulator.operations == {}
    assert emulator.counts["submit"] == 1


@pytest.mark.parametrize(
    ("body", "field_name"),
    [
        ({"audio": {"uri": "http://127.0.0.1/b/k"}}, "config"),
        ({"config": {}, "audio": {"uri": "http://127.0.0.1/b/k"}}, "config.specification"),
        ({"config": {"specification": {}}}, "audio"),
        ({"config": {"specification": {}}, "audio": {}}, "audio.uri"),
        ({"config": {"specification": {}}, "audio": {"uri": "ftp://127.0.0.1/b/k"}}, "audio.uri"),
        ({"config": {"specification": {}}, "audio": {"uri": "/b/k"}}, "audio.uri"),
        (["not", "an", "object"], "object"),
    ],
)
async def test_invalid_request_structure_answers_400(
    make_emulator: EmulatorFactory, session: aiohttp.ClientSession, body: Any, field_name: str
) -> None:
    emulator = await make_emulator()
    status, payload, _ = await call(session, "POST", emulator.url + SUBMIT, body=body, headers=AUTH)
    assert status == 400
    assert field_name in assert_error_body(payload, 3)
    assert emulator.submissions == []


async def test_non_json_body_answers_400(
    make_emulator: EmulatorFactory, session: aiohttp.ClientSession
) -> None:
    emulator = await make_emulator()
    async with session.post(emulator.url + SUBMIT, data=b"{not json", headers=AUTH) as response:
        assert response.status == 400
        assert response.content_type == "application/json"
        assert_error_body(await response.json(), 3)


async def test_valid_variants_are_accepted(
    make_emulator: EmulatorFactory, audio_server: AudioServer, session: aiohttp.ClientSession
) -> None:
    emulator = await make_emulator()
    uri = audio_server.uri("audio/librivox-0880.wav")
    bodies = [
        request_body(uri),  # OGG_OPUS at 48000 by default
        request_body(uri, audioEncoding="MP3"),
        request_body(uri, audioEncoding="LINEAR16_PCM", sampleRateHertz=8000, audioChannelCount=8),
        {**request_body(uri), "config": {"specification": {}, "folderId": "b1gfolder"}},
    ]
    for body in bodies:
        await submit(session, emulator, body)
    assert emulator.submissions == bodies
    assert len(emulator.operations) == len(bodies)


# ------------------------------------------------------------------ injected faults


@pytest.mark.parametrize(
    ("status", "code"), [(400, 3), (401, 16), (403, 7), (404, 5), (429, 8), (500, 13), (503, 14), (504, 4)]
)
async def test_injected_status_uses_the_grpc_code_of_the_gateway(
    make_emulator: EmulatorFactory,
    audio_server: AudioServer,
    session: aiohttp.ClientSession,
    status: int,
    code: int,
) -> None:
    emulator = await make_emulator()
    emulator.inject("submit", status, message="injected for the test")
    body = request_body(audio_server.uri("audio/librivox-0880.wav"))
    answer, payload, _ = await call(session, "POST", emulator.url + SUBMIT, body=body, headers=AUTH)
    assert answer == status
    assert assert_error_body(payload, code) == "injected for the test"
    assert emulator.submissions == []
    await submit(session, emulator, body)  # used up: the next one is served
    assert len(emulator.submissions) == 1


async def test_injected_429_carries_retry_after(
    make_emulator: EmulatorFactory, audio_server: AudioServer, session: aiohttp.ClientSession
) -> None:
    emulator = await make_emulator()
    emulator.inject("submit", 429, retry_after=7)
    emulator.inject("operation", 429, retry_after=0.25)
    body = request_body(audio_server.uri("audio/librivox-0880.wav"))
    status, payload, headers = await call(session, "POST", emulator.url + SUBMIT, body=body, headers=AUTH)
    assert status == 429
    assert_error_body(payload, 8)
    assert headers["Retry-After"] == "7"

    created = await submit(session, emulator, body)
    status, payload, headers = await call(
        session, "GET", f"{emulator.url}/operations/{created['id']}", headers=AUTH
    )
    assert status == 429
    assert float(headers["Retry-After"]) == 0.25
    await wait_done(session, emulator, created["id"])


async def test_injected_503_applies_to_count_requests_then_stops(
    make_emulator: EmulatorFactory, audio_server: AudioServer, session: aiohttp.ClientSession
) -> None:
    emulator = await make_emulator()
    created = await submit(session, emulator, request_body(audio_server.uri("audio/librivox-0880.wav")))
    emulator.inject("operation", 503, count=2)
    for _ in range(2):
        status, payload = await get_operation(session, emulator, created["id"])
        assert status == 503
        assert_error_body(payload, 14)
    status, payload = await get_operation(session, emulator, created["id"])
    assert status == 200
    assert payload["id"] == created["id"]
    assert emulator.counts["operation"] == 3


async def test_injected_delay_without_status_serves_normally_after_sleeping(
    make_emulator: EmulatorFactory, audio_server: AudioServer, session: aiohttp.ClientSession
) -> None:
    emulator = await make_emulator()
    emulator.inject("submit", None, delay=0.3)
    body = request_body(audio_server.uri("audio/librivox-0880.wav"))
    started = time.monotonic()
    await submit(session, emulator, body)
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    await submit(session, emulator, body)
    assert time.monotonic() - started < 0.3


async def test_injected_delay_with_status_sleeps_then_fails(
    make_emulator: EmulatorFactory, session: aiohttp.ClientSession
) -> None:
    emulator = await make_emulator()
    emulator.inject("operation", 504, delay=0.2)
    started = time.monotonic()
    status, payload = await get_operation(session, emulator, "e03aaaaaaaaaaaaaaaaa")
    assert time.monotonic() - started >= 0.2
    assert status == 504
    assert_error_body(payload, 4)


async def test_client_timeout_during_injected_delay_does_not_block_stop(
    make_emulator: EmulatorFactory, session: aiohttp.ClientSession
) -> None:
    emulator = await make_emulator()
    emulator.inject("operation", None, delay=30)
    with pytest.raises(TimeoutError):
        async with session.get(
            f"{emulator.url}/operations/e03aaaaaaaaaaaaaaaaa",
            headers=AUTH,
            timeout=aiohttp.ClientTimeout(total=0.1),
        ):
            pass
    started = time.monotonic()
    await emulator.stop()
    assert time.monotonic() - started < 2


def test_inject_rejects_nonsense() -> None:
    emulator = SpeechKitEmulator()
    with pytest.raises(ValueError, match="count"):
        emulator.inject("submit", 503, count=0)
    with pytest.raises(ValueError, match="400"):
        emulator.inject("submit", 200)


# ------------------------------------------------------------------ quotas


async def test_submit_quota_answers_429_with_retry_after(
    make_emulator: EmulatorFactory, audio_server: AudioServer, session: aiohttp.ClientSession
) -> None:
    emulator = await make_emulator(submit_quota_per_hour=2)
    body = request_body(audio_server.uri("audio/librivox-0880.wav"))
    await submit(session, emulator, body)
    await submit(session, emulator, body)
    status, payload, headers = await call(session, "POST", emulator.url + SUBMIT, body=body, headers=AUTH)
    assert status == 429
    assert_error_body(payload, 8)
    retry_after = headers["Retry-After"]
    assert retry_after.isdigit()
    assert 3590 <= int(retry_after) <= 3600
    assert len(emulator.submissions) == 2
    assert emulator.counts["submit"] == 3


async def test_check_quota_answers_429_with_retry_after(
    make_emulator: EmulatorFactory, audio_server: AudioServer, session: aiohttp.ClientSession
) -> None:
    emulator = await make_emulator(check_quota_per_hour=3)
    created = await submit(session, emulator, request_body(audio_server.uri("audio/librivox-0880.wav")))
    for _ in range(3):
        status, _ = await get_operation(session, emulator, created["id"])
        assert status == 200
    status, payload, headers = await call(
        session, "GET", f"{emulator.url}/operations/{created['id']}", headers=AUTH
    )
    assert status == 429
    assert_error_body(payload, 8)
    assert int(headers["Retry-After"]) >= 1
    # Submissions have their own quota.
    await submit(session, emulator, request_body(audio_server.uri("audio/librivox-0880.wav")))


# ------------------------------------------------------------------ failing and expiring operations


async def test_fail_operations_finishes_with_error_only(
    make_emulator: EmulatorFactory, audio_server: AudioServer, session: aiohttp.ClientSession
) -> None:
    emulator = await make_emulator(completion_delay=0.3)
    emulator.transcripts["failing.wav"] = {"1": words_for_text("would be recognised")}
    emulator.fail_operations("failing.wav", code=13, message="recognition failed")
    created = await submit(session, emulator, request_body(audio_server.uri("audio/failing.wav")))
    status, running = await get_operation(session, emulator, created["id"])
    assert status == 200
    assert running["done"] is False
    assert "error" not in running
    done = await wait_done(session, emulator, created["id"])
    assert "response" not in done
    assert done["error"] == {"code": 13, "message": "recognition failed", "details": []}
    assert emulator.operations[created["id"]].downloaded_bytes == len(WAV_BYTES)

    # Other keys are unaffected.
    other = await submit(session, emulator, request_body(audio_server.uri("audio/librivox-0880.wav")))
    assert "response" in await wait_done(session, emulator, other["id"])


async def test_fail_operations_visible_while_running(
    make_emulator: EmulatorFactory, audio_server: AudioServer, session: aiohttp.ClientSession
) -> None:
    emulator = await make_emulator(completion_delay=0.3)
    emulator.fail_operations("failing.wav", code=3, message="bad audio", visible_while_running=True)
    created = await submit(session, emulator, request_body(audio_server.uri("audio/failing.wav")))
    status, running = await get_operation(session, emulator, created["id"])
    assert status == 200
    assert running["done"] is False
    assert running["error"] == {"code": 3, "message": "bad audio", "details": []}
    assert "response" not in running
    done = await wait_done(session, emulator, created["id"])
    assert done["error"] == {"code": 3, "message": "bad audio", "details": []}
    assert "response" not in done


async def test_fail_operations_applies_to_already_submitted_operations(
    make_emulator: EmulatorFactory, audio_server: AudioServer, session: aiohttp.ClientSession
) -> None:
    emulator = await make_emulator(completion_delay=0.3)
    created = await submit(session, emulator, request_body(audio_server.uri("audio/failing.wav")))
    emulator.fail_operations("failing.wav", code=9, message="late failure")
    done = await wait_done(session, emulator, created["id"])
    assert done["error"]["code"] == 9


async def test_running_operation_refreshes_modified_at(
    make_emulator: EmulatorFactory, audio_server: AudioServer, session: aiohttp.ClientSession
) -> None:
    emulator = await make_emulator(completion_delay=5)
    created = await submit(session, emulator, request_body(audio_server.uri("audio/librivox-0880.wav")))
    # Timestamps have whole seconds: wait until the next second starts.
    await asyncio.sleep(1.02 - time.time() % 1)
    status, running = await get_operation(session, emulator, created["id"])
    assert status == 200
    assert running["done"] is False
    assert running["createdAt"] == created["createdAt"]
    created_at = datetime.fromisoformat(running["createdAt"])
    modified_at = datetime.fromisoformat(running["modifiedAt"])
    assert modified_at > created_at
    assert modified_at.tzinfo == UTC


async def test_expire_and_unknown_ids_answer_404(
    make_emulator: EmulatorFactory, audio_server: AudioServer, session: aiohttp.ClientSession
) -> None:
    emulator = await make_emulator()
    created = await submit(session, emulator, request_body(audio_server.uri("audio/librivox-0880.wav")))
    await wait_done(session, emulator, created["id"])
    emulator.expire(created["id"])
    status, payload = await get_operation(session, emulator, created["id"])
    assert status == 404
    assert created["id"] in assert_error_body(payload, 5)

    status, payload = await get_operation(session, emulator, "e03doesnotexist00000")
    assert status == 404
    assert "not found" in assert_error_body(payload, 5)


async def test_results_disappear_after_retention(
    make_emulator: EmulatorFactory, audio_server: AudioServer, session: aiohttp.ClientSession
) -> None:
    emulator = await make_emulator(retention_seconds=0.3)
    created = await submit(session, emulator, request_body(audio_server.uri("audio/librivox-0880.wav")))
    await wait_done(session, emulator, created["id"])
    await asyncio.sleep(0.35)
    status, payload = await get_operation(session, emulator, created["id"])
    assert status == 404
    assert_error_body(payload, 5)


async def test_unknown_route_answers_json_error(
    make_emulator: EmulatorFactory, session: aiohttp.ClientSession
) -> None:
    emulator = await make_emulator()
    status, payload, _ = await call(session, "GET", f"{emulator.url}/nowhere", headers=AUTH)
    assert status == 404
    assert_error_body(payload, 5)
    assert sum(emulator.counts.values()) == 0


# ------------------------------------------------------------------ IAM token exchange


def new_rsa_key() -> tuple[rsa.RSAPrivateKey, str]:
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_key, public_pem.decode()


@pytest.fixture(scope="module")
def service_account_key() -> tuple[rsa.RSAPrivateKey, str]:
    return new_rsa_key()


def make_jwt(
    private_key: rsa.RSAPrivateKey,
    *,
    kid: str = "ajekeyid",
    iss: str = "ajeserviceaccount",
    aud: str = IAM_AUDIENCE,
    lifetime: int = 3600,
    iat_offset: int = 0,
    algorithm: str = "PS256",
) -> str:
    now = int(time.time()) + iat_offset
    claims = {"iss": iss, "aud": aud, "iat": now, "exp": now + lifetime}
    return jwt.encode(claims, private_key, algorithm=algorithm, headers={"kid": kid})


async def test_iam_exchange_issues_a_token_that_authenticates(
    make_emulator: EmulatorFactory,
    audio_server: AudioServer,
    session: aiohttp.ClientSession,
    service_account_key: tuple[rsa.RSAPrivateKey, str],
) -> None:
    private_key, public_pem = service_account_key
    emulator = await make_emulator(api_keys=set())
    emulator.add_service_account_key("ajekeyid", "ajeserviceaccount", public_pem)
    status, payload, _ = await call(
        session, "POST", f"{emulator.url}/iam/v1/tokens", body={"jwt": make_jwt(private_key)}
    )
    assert status == 200
    assert set(payload) == {"iamToken", "expiresAt"}
    assert payload["iamToken"].startswith("t1.")
    assert TIMESTAMP.match(payload["expiresAt"])
    expires_at = datetime.fromisoformat(payload["expiresAt"])
    assert abs((expires_at - datetime.now(UTC)).total_seconds() - 12 * 3600) < 60

    bearer = {"Authorization": f"Bearer {payload['iamToken']}"}
    body = request_body(audio_server.uri("audio/librivox-0880.wav"))
    status, created, _ = await call(session, "POST", emulator.url + SUBMIT, body=body, headers=bearer)
    assert status == 200
    assert created["createdBy"] == "ajeserviceaccount"
    status, _, _ = await call(session, "GET", f"{emulator.url}/operations/{created['id']}", headers=bearer)
    assert status == 200
    assert emulator.counts["token"] == 1


async def test_iam_tokens_expire(
    make_emulator: EmulatorFactory,
    audio_server: AudioServer,
    session: aiohttp.ClientSession,
    service_account_key: tuple[rsa.RSAPrivateKey, str],
) -> None:
    private_key, public_pem = service_account_key
    emulator = await make_emulator(token_lifetime_seconds=0.2)
    emulator.add_service_account_key("ajekeyid", "ajeserviceaccount", public_pem)
    _, payload, _ = await call(
        session, "POST", f"{emulator.url}/iam/v1/tokens", body={"jwt": make_jwt(private_key)}
    )
    bearer = {"Authorization": f"Bearer {payload['iamToken']}"}
    body = request_body(audio_server.uri("audio/librivox-0880.wav"))
    status, _, _ = await call(session, "POST", emulator.url + SUBMIT, body=body, headers=bearer)
    assert status == 200
    await asyncio.sleep(0.25)
    status, payload, _ = await call(session, "POST", emulator.url + SUBMIT, body=body, headers=bearer)
    assert status == 401
    assert_error_body(payload, 16)


@pytest.mark.parametrize(
    "variant",
    [
        "bad-signature",
        "unknown-kid",
        "wrong-issuer",
        "wrong-audience",
        "too-long-lifetime",
        "expired",
        "rs256",
        "garbage",
    ],
)
async def test_iam_exchange_rejects_bad_jwts(
    make_emulator: EmulatorFactory,
    session: aiohttp.ClientSession,
    service_account_key: tuple[rsa.RSAPrivateKey, str],
    variant: str,
) -> None:
    private_key, public_pem = service_account_key
    emulator = await make_emulator()
    emulator.add_service_account_key("ajekeyid", "ajeserviceaccount", public_pem)
    match variant:
        case "bad-signature":
            token = make_jwt(new_rsa_key()[0])
        case "unknown-kid":
            token = make_jwt(private_key, kid="other")
        case "wrong-issuer":
            token = make_jwt(private_key, iss="ajesomeoneelse")
        case "wrong-audience":
            token = make_jwt(private_key, aud="https://example.invalid/")
        case "too-long-lifetime":
            token = make_jwt(private_key, lifetime=3601)
        case "expired":
            token = make_jwt(private_key, lifetime=600, iat_offset=-1200)
        case "rs256":
            token = make_jwt(private_key, algorithm="RS256")
        case _:
            token = "not.a.jwt"
    status, payload, _ = await call(session, "POST", f"{emulator.url}/iam/v1/tokens", body={"jwt": token})
    assert status == 401
    assert_error_body(payload, 16)
    assert emulator.issued_tokens == {}


@pytest.mark.parametrize("body", [{}, {"jwt": 5}, {"token": "x"}, ["jwt"]])
async def test_iam_exchange_malformed_body_answers_400(
    make_emulator: EmulatorFactory, session: aiohttp.ClientSession, body: Any
) -> None:
    emulator = await make_emulator()
    status, payload, _ = await call(session, "POST", f"{emulator.url}/iam/v1/tokens", body=body)
    assert status == 400
    assert_error_body(payload, 3)


# ------------------------------------------------------------------ counts and shutdown


async def test_counts_every_request_per_endpoint(
    make_emulator: EmulatorFactory, audio_server: AudioServer, session: aiohttp.ClientSession
) -> None:
    emulator = await make_emulator()
    body = request_body(audio_server.uri("audio/librivox-0880.wav"))
    emulator.inject("submit", 500)
    emulator.inject("token", 503)
    await call(session, "POST", emulator.url + SUBMIT, body=body, headers=AUTH)  # injected 500
    await call(session, "POST", emulator.url + SUBMIT, body=body)  # 401
    created = await submit(session, emulator, body)
    await wait_done(session, emulator, created["id"])
    polls = emulator.counts["operation"]
    await call(session, "GET", f"{emulator.url}/operations/{created['id']}")  # 401
    await call(session, "POST", f"{emulator.url}/iam/v1/tokens", body={"jwt": "x"})  # injected 503
    await call(session, "POST", f"{emulator.url}/iam/v1/tokens", body={"jwt": "x"})  # 401
    assert polls >= 1
    assert emulator.counts == {"submit": 3, "operation": polls + 1, "token": 2}


async def test_stop_cancels_running_operations(
    audio_server: AudioServer, session: aiohttp.ClientSession
) -> None:
    emulator = SpeechKitEmulator(completion_delay=60)
    await emulator.start()
    try:
        created = await submit(session, emulator, request_body(audio_server.uri("audio/librivox-0880.wav")))
        task = emulator.operations[created["id"]].task
        assert task is not None
        assert not task.done()
    finally:
        started = time.monotonic()
        await emulator.stop()
    assert time.monotonic() - started < 2
    assert task.cancelled()
    assert not emulator.operations[created["id"]].done
    with pytest.raises(RuntimeError):
        _ = emulator.url
    await emulator.stop()  # idempotent
