"""The self-hosted SpeechKit-compatible service over HTTP, with real worker processes running a fake engine.

The fake decoder reads the audio bytes as a script: channels separated by ``|``, each channel's words
recognised as one utterance. An ``@N`` word sets the audio's duration to N seconds, and the engine obeys
``!fail`` (raise), ``!crash-once:PATH`` / ``!crash`` (the worker process dies), ``!pid:PATH`` (write the
worker's pid) and ``!block`` (wait for the test). Real decoding and recognition are tested with the engines.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import re
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from botocore.exceptions import ClientError
from pydantic import SecretStr

from speechkit_operator.clients.speech.errors import OperationNotFoundError
from speechkit_operator.clients.speech.v2 import SpeechKitV2Client
from speechkit_operator.clients.speech.v2_parsing import parse_v2_response
from speechkit_operator.clients.speech.v3 import SpeechKitV3Client
from speechkit_operator.contracts.stt_v2 import AudioEncoding
from speechkit_operator.models.credentials import ApiKeyCredentials
from speechkit_operator.models.operation import RecognitionRequest
from speechkit_operator.models.recognition import Word
from speechkit_operator.selfhosted import app as app_module
from speechkit_operator.selfhosted.app import SERVICE, create_app
from speechkit_operator.selfhosted.config import ServiceSettings, default_engine, whisper_installed
from tests.support.audio import audio_dir

module_loop = pytest.mark.asyncio(loop_scope="module")

SUBMIT = "/speech/stt/v2/longRunningRecognize"
SYNC = "/speech/v1/stt:recognize"
KEY = "key-1"
OTHER_KEY = "key-2"
AUTH = {"Authorization": f"Api-Key {KEY}"}
RESPONSE_TYPE = "type.googleapis.com/yandex.cloud.ai.stt.v2.LongRunningRecognitionResponse"
OPERATION_ID = re.compile(r"^e03[0-9a-v]{17}$")
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
PRESIGNED = "X-Amz-Credential=AKIDSECRET&X-Amz-Signature=deadbeefsignature"


# --- The fake decoder and engine (module level: the worker processes import them) --------------------


class FakeDecodeError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class FakeSegment:
    channel: int
    start_seconds: float
    end_seconds: float
    pcm: str


@dataclass(frozen=True)
class FakeDecoded:
    """Each channel is one segment; the duration is known before the segments are read."""

    channels: list[str]
    duration_seconds: float

    @property
    def channel_count(self) -> int:
        return len(self.channels)

    def segments(self) -> Iterator[FakeSegment]:
        for index, text in enumerate(self.channels, start=1):
            yield FakeSegment(index, 0.0, self.duration_seconds, text)


def fake_decode(
    data: bytes,
    *,
    encoding: AudioEncoding | None,
    sample_rate_hertz: int | None,
    channel_count: int | None,
    max_seconds: float,
) -> FakeDecoded:
    if data.startswith(b"\x00"):
        raise FakeDecodeError("The audio is not a valid Ogg Opus stream")
    channels = data.decode().split("|")
    if channel_count is not None and len(channels) != channel_count:
        raise FakeDecodeError(f"expected {channel_count} channels, got {len(channels)}")
    duration = 0.5 * max(len(channel.split()) for channel in channels)
    for word in data.decode().split():
        if word.startswith("@"):
            duration = float(word[1:])
    if "!params" in channels[0]:
        channels = [f"{encoding} {sample_rate_hertz} {channel_count} {max_seconds:g}"]
    return FakeDecoded(channels, duration)


@dataclass(frozen=True)
class FakeUtterance:
    text: str
    words: tuple[Word, ...]


class FakeEngine:
    name = "fake"

    def __init__(self, languages: frozenset[str], gate: str | None) -> None:
        self.languages = languages
        self._gate = gate

    def recognize(self, pcm: str, language_code: str) -> list[FakeUtterance]:
        words = [word for word in pcm.split() if not word.startswith("@")]
        for word in words:
            if word == "!fail":
                raise RuntimeError("secret internal detail /srv/models/x")
            if word == "!crash" or (word.startswith("!crash-once:") and not _mark(word.split(":", 1)[1])):
                os._exit(7)
            if word.startswith("!pid:"):
                Path(word.split(":", 1)[1]).write_text(str(os.getpid()))
            if word == "!block":
                wait_for_file(self._gate)
        words = [word for word in words if not word.startswith("!") or word == "!params"]
        if not words:
            return []
        offset = 0.25 if pcm.startswith(" ") else 0.0
        timed = tuple(
            Word(word, offset + 0.5 * index, offset + 0.5 * index + 0.4) for index, word in enumerate(words)
        )
        return [FakeUtterance(" ".join(words), timed)]


def wait_for_file(path: str | None, timeout: float = 30.0) -> None:
    """A gate that outlives killed processes (a multiprocessing.Event does not): open once the file exists."""
    deadline = time.monotonic() + timeout
    while path is not None and not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.02)


def _mark(path: str) -> bool:
    """True when the marker existed; creates it."""
    marker = Path(path)
    existed = marker.exists()
    marker.touch()
    return existed


@dataclass(frozen=True)
class FakeEngineFactory:
    languages: tuple[str, ...] = ("en-US", "ru-RU")
    #: ``!block`` waits until this file exists.
    gate: str | None = None
    #: When set, building the engine waits until this file exists (the workers stay "starting").
    startup_gate: str | None = None

    def __call__(self) -> FakeEngine:
        wait_for_file(self.startup_gate)
        return FakeEngine(frozenset(self.languages), self.gate)


# --- A fake S3 client for s3:// URIs -----------------------------------------------------------------


@dataclass
class FakeS3:
    objects: dict[tuple[str, str], bytes] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)

    def get_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:
        self.calls.append((Bucket, Key))
        if Bucket == "locked":
            raise ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "GetObject")
        if (Bucket, Key) not in self.objects:
            raise ClientError({"Error": {"Code": "NoSuchKey", "Message": "no"}}, "GetObject")
        data = self.objects[(Bucket, Key)]
        return {"Body": io.BytesIO(data), "ContentLength": len(data)}


# --- Servers -------------------------------------------------------------------------------------------


@dataclass
class AudioServer:
    url: str
    objects: dict[str, bytes]
    requests: list[str] = field(default_factory=list)

    def uri(self, name: str) -> str:
        return f"{self.url}/bucket/{name}?{PRESIGNED}"


class Service:
    """A running service and a client for it."""

    def __init__(self, client: TestClient[web.Request, web.Application]) -> None:
        self.client = client

    async def submit(
        self,
        audio: dict[str, Any],
        spec: dict[str, Any] | None = None,
        headers: dict[str, str] | None = AUTH,
    ) -> aiohttp.ClientResponse:
        body = {"config": {"specification": {"languageCode": "en-US", **(spec or {})}}, "audio": audio}
        return await self.client.post(SUBMIT, json=body, headers=headers)

    async def submit_ok(self, audio: dict[str, Any], spec: dict[str, Any] | None = None) -> dict[str, Any]:
        response = await self.submit(audio, spec)
        payload: dict[str, Any] = await response.json()
        assert response.status == 200, payload
        return payload

    async def operation(
        self, operation_id: str, headers: dict[str, str] | None = AUTH
    ) -> aiohttp.ClientResponse:
        return await self.client.get(f"/operations/{operation_id}", headers=headers)

    async def wait_done(self, operation_id: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            response = await self.operation(operation_id)
            body: dict[str, Any] = await response.json()
            assert response.status == 200, body
            if body["done"]:
                return body
            assert time.monotonic() < deadline, f"operation {operation_id} is not done after {timeout} s"
            await asyncio.sleep(0.05)

    async def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while (await self.client.get("/readyz")).status != 200:
            assert time.monotonic() < deadline, "the workers did not start"
            await asyncio.sleep(0.05)

    async def sync(self, audio: bytes, query: str = "lang=en-US&format=oggopus") -> aiohttp.ClientResponse:
        return await self.client.post(f"{SYNC}?{query}", data=audio, headers=AUTH)


def settings(**overrides: Any) -> ServiceSettings:
    values: dict[str, Any] = {
        "api_keys": (SecretStr(KEY), SecretStr(OTHER_KEY)),
        "workers": 1,
        "queue_size": 4,
        "fetch_timeout": 0.5,
        "max_audio_bytes": 4096,
        "max_inline_bytes": 2048,
        "sync_max_bytes": 1024,
        "sync_max_seconds": 10,
        "shutdown_timeout": 1.0,
        # No gRPC streaming server unless a test asks for one (on a free port): 8089 may be taken.
        "grpc_port": 0,
    }
    values.update(overrides)
    return ServiceSettings(**values)


async def start_service(app: web.Application) -> TestClient[web.Request, web.Application]:
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return client


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def fake_s3() -> FakeS3:
    return FakeS3({("bucket", "calls/a b.wav"): b"from the bucket"})


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def service(fake_s3: FakeS3) -> AsyncIterator[Service]:
    """One service for the tests that leave it as they found it; it may read audio from loopback (any port)
    and from the buckets of the fake S3."""
    app = create_app(
        settings(allowed_hosts="127.0.0.1", allowed_buckets="bucket,locked"),
        engine_factory=FakeEngineFactory(),
        decoder=fake_decode,
        client_errors=(FakeDecodeError,),
        s3_client_factory=lambda: cast(Any, fake_s3),
    )
    client = await start_service(app)
    running = Service(client)
    try:
        await running.wait_ready()
        yield running
    finally:
        await client.close()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def audio_server() -> AsyncIterator[AudioServer]:
    server = AudioServer(url="", objects={"hello.ogg": b"hello from a url", "big.ogg": b"x " * 4000})

    async def get_object(request: web.Request) -> web.StreamResponse:
        server.requests.append(str(request.rel_url))
        name = request.match_info["name"]
        if name == "slow.ogg":
            await asyncio.sleep(5)
        if name == "moved.ogg":
            raise web.HTTPFound("/bucket/hello.ogg")
        if name not in server.objects:
            return web.Response(status=404, text="<Error><Code>NoSuchKey</Code></Error>")
        return web.Response(body=server.objects[name], content_type="audio/ogg")

    app = web.Application()
    app.router.add_get("/bucket/{name}", get_object)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    server.url = f"http://{host}:{port}"
    try:
        yield server
    finally:
        await runner.cleanup()


def read_pid(path: Path) -> int | None:
    text = path.read_text() if path.exists() else ""
    return int(text) if text else None


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def content(text: str) -> dict[str, str]:
    return {"content": base64.b64encode(text.encode()).decode()}


def words_of(response: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    return [
        (chunk["channelTag"], word["word"], word["startTime"], word["endTime"])
        for chunk in response.get("chunks", [])
        for word in chunk["alternatives"][0]["words"]
    ]


# --- The async API ------------------------------------------------------------------------------------


@module_loop
async def test_inline_content_is_recognised_with_the_documented_shapes(service: Service) -> None:
    accepted = await service.submit_ok(
        content("when writing| the hobbit"),
        {"audioEncoding": "LINEAR16_PCM", "sampleRateHertz": 16000, "audioChannelCount": 2},
    )
    assert OPERATION_ID.match(accepted["id"])
    assert set(accepted) == {"id", "description", "createdAt", "createdBy", "modifiedAt", "done"}
    assert accepted["done"] is False
    assert TIMESTAMP.match(accepted["createdAt"]) and TIMESTAMP.match(accepted["modifiedAt"])
    assert re.fullmatch(r"aje[0-9a-v]{17}", accepted["createdBy"])

    done = await service.wait_done(accepted["id"])
    assert set(done) == {"id", "description", "createdAt", "createdBy", "modifiedAt", "done", "response"}
    assert (done["id"], done["createdBy"], done["createdAt"]) == (
        accepted["id"],
        accepted["createdBy"],
        accepted["createdAt"],
    )
    assert done["response"] == {
        "@type": RESPONSE_TYPE,
        "chunks": [
            {
                "alternatives": [
                    {
                        "words": [
                            {"startTime": "0s", "endTime": "0.400s", "word": "when", "confidence": 1},
                            {"startTime": "0.500s", "endTime": "0.900s", "word": "writing", "confidence": 1},
                        ],
                        "text": "when writing",
                        "confidence": 1,
                    }
                ],
                "channelTag": "1",
            },
            {
                "alternatives": [
                    {
                        "words": [
                            {"startTime": "0.250s", "endTime": "0.650s", "word": "the", "confidence": 1},
                            {"startTime": "0.750s", "endTime": "1.150s", "word": "hobbit", "confidence": 1},
                        ],
                        "text": "the hobbit",
                        "confidence": 1,
                    }
                ],
                "channelTag": "2",
            },
        ],
    }
    assert parse_v2_response(done["response"]).channels == ("1", "2")


@module_loop
async def test_the_decoder_gets_the_requested_format(service: Service) -> None:
    lpcm = await service.submit_ok(
        content("!params"), {"audioEncoding": "LINEAR16_PCM", "sampleRateHertz": 8000}
    )
    mp3 = await service.submit_ok(content("!params"), {"audioEncoding": "MP3"})
    default = await service.submit_ok(content("!params"))
    texts = [
        (await service.wait_done(accepted["id"]))["response"]["chunks"][0]["alternatives"][0]["text"]
        for accepted in (lpcm, mp3, default)
    ]
    assert texts == ["LINEAR16_PCM 8000 1 14400", "MP3 None None 14400", "OGG_OPUS None None 14400"]


@module_loop
async def test_silence_gives_a_response_without_chunks(service: Service) -> None:
    accepted = await service.submit_ok(content("@3"))
    done = await service.wait_done(accepted["id"])
    assert done["response"] == {"@type": RESPONSE_TYPE}


@module_loop
async def test_audio_is_downloaded_from_an_http_uri(service: Service, audio_server: AudioServer) -> None:
    accepted = await service.submit_ok({"uri": audio_server.uri("hello.ogg")})
    done = await service.wait_done(accepted["id"])
    assert [word for _, word, _, _ in words_of(done["response"])] == ["hello", "from", "a", "url"]
    # The presigned query reaches the storage: it is what grants access.
    assert f"/bucket/hello.ogg?{PRESIGNED}" in audio_server.requests


@module_loop
async def test_the_operators_own_client_works_against_the_service(
    service: Service, audio_server: AudioServer
) -> None:
    base = str(service.client.make_url("")).rstrip("/")
    credentials = ApiKeyCredentials(api_key=KEY, folder_id="b1gfolder")
    request = RecognitionRequest(
        audio_uri=audio_server.uri("hello.ogg"),
        language_code="en-US",
        model="general",
        audio_encoding=AudioEncoding.OGG_OPUS,
    )
    async with SpeechKitV2Client(base, base, f"{base}/iam/v1/tokens", timeout=10) as speechkit:
        state = await speechkit.submit(request, credentials)
        deadline = time.monotonic() + 30
        while not state.done:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
            state = await speechkit.get_operation(state.id, credentials)
        assert state.error is None
        assert state.transcript is not None
        assert [chunk.text for chunk in state.transcript.chunks] == ["hello from a url"]
        with pytest.raises(OperationNotFoundError):
            await speechkit.get_operation("e03unknownunknown000", credentials)


@module_loop
async def test_the_operators_own_v3_client_works_against_the_service(
    service: Service, audio_server: AudioServer
) -> None:
    """The operator's v3 client and the service's v3 endpoints speak the same contract: the request, the
    Operation, the streamed results, and NOT_FOUND for an unknown id."""
    base = str(service.client.make_url("")).rstrip("/")
    credentials = ApiKeyCredentials(api_key=KEY, folder_id="b1gfolder")
    request = RecognitionRequest(
        audio_uri=audio_server.uri("hello.ogg"),
        language_code="en-US",
        model="general",
        audio_encoding=AudioEncoding.OGG_OPUS,
        text_normalization=True,
    )
    async with SpeechKitV3Client(base, base, f"{base}/iam/v1/tokens", timeout=10) as speechkit:
        state = await speechkit.submit(request, credentials)
        deadline = time.monotonic() + 30
        while not state.done:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
            state = await speechkit.get_operation(state.id, credentials)
        assert state.error is None and state.transcript is not None
        assert [chunk.text for chunk in state.transcript.chunks] == ["hello from a url"]
        assert [chunk.channel for chunk in state.transcript.chunks] == ["1"]
        assert state.response is not None and any(
            "final" in item["result"] for item in state.response["results"]
        )
        with pytest.raises(OperationNotFoundError):
            await speechkit.get_operation("e03unknownunknown000", credentials)


@module_loop
async def test_audio_is_read_from_an_s3_uri(service: Service, fake_s3: FakeS3) -> None:
    accepted = await service.submit_ok({"uri": "s3://bucket/calls/a%20b.wav"})
    done = await service.wait_done(accepted["id"])
    assert [word for _, word, _, _ in words_of(done["response"])] == ["from", "the", "bucket"]
    assert ("bucket", "calls/a b.wav") in fake_s3.calls

    missing = await service.wait_done((await service.submit_ok({"uri": "s3://bucket/nope.wav"}))["id"])
    assert missing["error"] == {
        "code": 5,
        "message": "The audio could not be read from s3://bucket/nope.wav: NoSuchKey",
        "details": [],
    }
    denied = await service.wait_done((await service.submit_ok({"uri": "s3://locked/a.wav"}))["id"])
    assert denied["error"]["code"] == 7


@pytest.mark.parametrize(
    ("name", "code", "message"),
    [
        ("missing.ogg", 5, "The audio could not be downloaded from {url}/bucket/missing.ogg: HTTP 404"),
        ("big.ogg", 3, "The audio at {url}/bucket/big.ogg is larger than 4096 bytes"),
        # A timeout is a connection-level failure like any other (see test_open_and_closed_ports_fail_alike).
        (
            "slow.ogg",
            14,
            "The audio could not be downloaded from {url}/bucket/slow.ogg: "
            "the connection failed or timed out",
        ),
        (
            "moved.ogg",
            3,
            "The audio could not be downloaded from {url}/bucket/moved.ogg: HTTP 302 "
            "(redirects are not followed; give the final URI)",
        ),
    ],
)
@module_loop
async def test_a_failed_download_finishes_the_operation_without_the_query_string(
    service: Service, audio_server: AudioServer, name: str, code: int, message: str
) -> None:
    accepted = await service.submit_ok({"uri": audio_server.uri(name)})
    done = await service.wait_done(accepted["id"])
    assert "response" not in done
    assert done["error"] == {"code": code, "message": message.format(url=audio_server.url), "details": []}


@module_loop
async def test_an_unreachable_host_is_unavailable_and_credentials_stay_hidden(service: Service) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    accepted = await service.submit_ok({"uri": f"http://user:pw@127.0.0.1:{port}/b/a.ogg?{PRESIGNED}"})
    done = await service.wait_done(accepted["id"])
    assert done["error"]["code"] == 14
    assert done["error"]["message"].startswith(
        f"The audio could not be downloaded from http://127.0.0.1:{port}/b/a.ogg:"
    )
    assert "pw" not in done["error"]["message"]
    assert "Signature" not in done["error"]["message"]


@module_loop
async def test_undecodable_audio_is_an_invalid_argument_operation(service: Service) -> None:
    accepted = await service.submit_ok({"content": base64.b64encode(b"\x00\x01").decode()})
    done = await service.wait_done(accepted["id"])
    assert done["error"] == {"code": 3, "message": "The audio is not a valid Ogg Opus stream", "details": []}


@module_loop
async def test_a_worker_exception_is_internal_and_the_service_keeps_serving(service: Service) -> None:
    failed = await service.wait_done((await service.submit_ok(content("hello !fail")))["id"])
    assert failed["error"] == {
        "code": 13,
        "message": "Internal error: the audio could not be recognized",
        "details": [],
    }
    after = await service.wait_done((await service.submit_ok(content("still here")))["id"])
    assert [word for _, word, _, _ in words_of(after["response"])] == ["still", "here"]


@module_loop
async def test_a_dead_worker_fails_its_own_job_and_is_replaced(service: Service) -> None:
    # A job whose worker dies is not run again: what killed the worker (the audio, say) would again.
    crashed = await service.wait_done((await service.submit_ok(content("!crash")))["id"])
    assert crashed["error"] == {
        "code": 13,
        "message": "Internal error: the recognition worker stopped unexpectedly (exit code 7)",
        "details": [],
    }
    after = await service.wait_done((await service.submit_ok(content("next one")))["id"])
    assert [word for _, word, _, _ in words_of(after["response"])] == ["next", "one"]
    ready = await service.client.get("/readyz")
    assert (ready.status, (await ready.json())["liveWorkers"]) == (200, 1)


def read_corpus_file(name: str) -> bytes:
    return (audio_dir() / name).read_bytes()


@module_loop
async def test_the_default_engine_and_decoder_recognise_real_speech() -> None:
    """The production wiring: PocketSphinx loaded by name in the worker, PyAV decoding, their errors.
    (Whisper's, the default when it is installed: test_whisper_service.py.)"""
    wav = read_corpus_file("librivox-0880.wav")  # 3 s: "he was not an ill disposed young man"
    mib = 1024 * 1024
    app = create_app(
        settings(
            engine="pocketsphinx",
            max_audio_bytes=mib,
            max_inline_bytes=mib,
            sync_max_bytes=mib,
            sync_max_seconds=30,
        )
    )
    client = await start_service(app)
    try:
        service = Service(client)
        await service.wait_ready()
        ready = await (await client.get("/readyz")).json()
        assert (ready["engine"], ready["languages"]) == ("pocketsphinx", ["en-US"])

        accepted = await service.submit_ok(
            {"content": base64.b64encode(wav).decode()},
            {"audioEncoding": "LINEAR16_PCM", "sampleRateHertz": 16000},
        )
        done = await service.wait_done(accepted["id"], timeout=60)
        transcript = parse_v2_response(done["response"])
        assert transcript.channels == ("1",)
        words = [word for chunk in transcript.chunks for word in chunk.words]
        assert {"young", "man"} <= {word.text for word in words}
        assert all(0 <= word.start <= word.end <= 3.1 for word in words)

        sync = await service.sync(wav, "lang=en-US&format=lpcm&sampleRateHertz=16000")
        assert sync.status == 200
        assert "young man" in (await sync.json())["result"]

        # The decoder's and the engine's own checks come back as INVALID_ARGUMENT with their messages.
        garbage = await service.wait_done((await service.submit_ok(content("not audio at all")))["id"])
        assert garbage["error"]["code"] == 3
        assert garbage["error"]["message"].startswith("config.specification.audioEncoding is OGG_OPUS")
        lowercase = await service.submit_ok(
            {"content": base64.b64encode(wav).decode()},
            {"languageCode": "en-us", "audioEncoding": "LINEAR16_PCM", "sampleRateHertz": 16000},
        )
        assert "error" not in await service.wait_done(lowercase["id"], timeout=60)
        refused = await service.submit(content("x"), {"languageCode": "ru-RU"})
        assert refused.status == 400
        assert (await refused.json())["message"].endswith("supported: en-US")
    finally:
        await client.close()


@module_loop
async def test_bad_audio_ends_in_a_clear_error_and_the_service_keeps_serving() -> None:
    """Corrupt audio, a declared encoding the bytes contradict, an empty file: real decoder, real engine."""
    ogg = read_corpus_file("librivox-0870.ogg")
    wav = read_corpus_file("librivox-0880.wav")
    corrupt = ogg[:200] + bytes(byte ^ 0x5A for byte in ogg[200:4000])
    mib = 1024 * 1024
    app = create_app(settings(engine="pocketsphinx", max_audio_bytes=mib, max_inline_bytes=mib))
    client = await start_service(app)
    try:
        service = Service(client)
        await service.wait_ready()
        cases = {
            "corrupt": ({"content": base64.b64encode(corrupt).decode()}, {"audioEncoding": "OGG_OPUS"}),
            "mismatch": ({"content": base64.b64encode(ogg).decode()}, {"audioEncoding": "MP3"}),
            "empty": ({"content": ""}, {"audioEncoding": "OGG_OPUS"}),
        }
        messages: dict[str, str] = {}
        for case, (audio, spec) in cases.items():
            response = await service.submit(audio, {"languageCode": "en-US", **spec})
            if response.status == 400:  # refused up front: equally clear, nothing to poll
                body = await response.json()
            else:
                assert response.status == 200, await response.text()
                body = (await service.wait_done((await response.json())["id"], timeout=60))["error"]
            assert body["code"] == 3, (case, body)
            messages[case] = body["message"]
        assert "MP3" in messages["mismatch"] and "Ogg" in messages["mismatch"]
        assert "empty" in messages["empty"].lower()
        assert messages["corrupt"]

        # ... and a good request right after is served as usual.
        good = await service.submit_ok(
            {"content": base64.b64encode(wav).decode()},
            {"languageCode": "en-US", "audioEncoding": "LINEAR16_PCM", "sampleRateHertz": 16000},
        )
        done = await service.wait_done(good["id"], timeout=60)
        assert "young man" in done["response"]["chunks"][0]["alternatives"][0]["text"]
    finally:
        await client.close()


# --- Requests the service refuses -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "audio", "field"),
    [
        ({"sampleRateHertz": 44100}, content("x"), "config.specification.sampleRateHertz"),
        ({"audioEncoding": "FLAC"}, content("x"), "config.specification.audioEncoding"),
        ({"audioChannelCount": 2}, content("x"), "config.specification.audioChannelCount"),
        ({}, {"uri": "ftp://host/a.ogg"}, "audio.uri"),
        ({}, {"content": "%%%"}, "audio.content"),
        ({}, {}, "audio"),
    ],
)
@module_loop
async def test_invalid_requests_get_400_naming_the_field(
    service: Service, spec: dict[str, Any], audio: dict[str, Any], field: str
) -> None:
    response = await service.submit(audio, spec)
    body = await response.json()
    assert response.status == 400
    assert body["code"] == 3
    assert body["details"] == []
    assert body["message"].startswith(f"{field}:")


@module_loop
async def test_a_body_that_is_not_json_or_too_large_is_refused(service: Service) -> None:
    response = await service.client.post(SUBMIT, data=b"{not json", headers=AUTH)
    assert response.status == 400
    assert await response.json() == {
        "code": 3,
        "message": "The request body is not valid JSON",
        "details": [],
    }

    inline = await service.submit(content("x" * 2049))
    assert inline.status == 400
    assert (await inline.json())["message"].startswith("audio.content: larger than 2048 bytes")

    huge = await service.client.post(SUBMIT, data=b" " * 200_000, headers=AUTH)
    assert huge.status == 413
    assert await huge.json() == {
        "code": 3,
        "message": f"The request body is larger than {2048 * 4 // 3 + 65536} bytes",
        "details": [],
    }


@module_loop
async def test_an_unsupported_language_is_refused_up_front(service: Service) -> None:
    response = await service.submit(content("hello"), {"languageCode": "de-DE"})
    assert response.status == 400
    assert await response.json() == {
        "code": 3,
        "message": 'config.specification.languageCode: language "de-DE" is not supported by this service; '
        "supported: en-US, ru-RU",
        "details": [],
    }


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        (None, "Authentication required: send the header Authorization: Api-Key <key>"),
        (
            {"Authorization": "Bearer t1.sometoken"},
            "Unsupported authorization scheme: this service accepts Api-Key only",
        ),
        ({"Authorization": "Api-Key wrong"}, "The API key is not valid"),
        ({"Authorization": "Api-Key"}, "The API key is not valid"),
    ],
)
@module_loop
async def test_requests_without_a_valid_api_key_get_401(
    service: Service, headers: dict[str, str] | None, message: str
) -> None:
    for response in (
        await service.submit(content("hello"), headers=headers),
        await service.operation("e03aaaaaaaaaaaaaaaaa", headers=headers),
        await service.client.post(f"{SYNC}?lang=en-US", data=b"hello", headers=headers),
    ):
        assert response.status == 401
        assert await response.json() == {"code": 16, "message": message, "details": []}


@module_loop
async def test_any_configured_key_may_read_any_operation(service: Service) -> None:
    accepted = await service.submit_ok(content("hello"))
    other = {"Authorization": f"Api-Key {OTHER_KEY}"}
    response = await service.operation(accepted["id"], headers=other)
    assert response.status == 200
    assert (await response.json())["id"] == accepted["id"]
    await service.wait_done(accepted["id"])


@module_loop
async def test_unknown_operations_routes_and_methods_get_the_error_shape(service: Service) -> None:
    unknown = await service.operation("e03unknownunknown000")
    assert unknown.status == 404
    assert await unknown.json() == {
        "code": 5,
        "message": "Operation e03unknownunknown000 not found",
        "details": [],
    }
    route = await service.client.get("/nothing/here", headers=AUTH)
    assert route.status == 404
    assert (await route.json())["code"] == 5
    method = await service.client.delete(SUBMIT, headers=AUTH)
    assert method.status == 405
    assert (await method.json())["code"] == 12


@module_loop
async def test_health_and_readiness_need_no_key(service: Service) -> None:
    health = await service.client.get("/healthz")
    assert (health.status, await health.json()) == (200, {"status": "ok"})
    ready = await service.client.get("/readyz")
    body = await ready.json()
    assert ready.status == 200
    assert (body["engine"], body["languages"], body["workers"], body["capacity"]) == (
        "fake",
        ["en-US", "ru-RU"],
        1,
        5,
    )


# --- The synchronous API ------------------------------------------------------------------------------


@module_loop
async def test_sync_recognition_answers_the_text(service: Service) -> None:
    response = await service.sync(b"hello sync world")
    assert (response.status, await response.json()) == (200, {"result": "hello sync world"})
    lpcm = await service.sync(b"pcm words", "lang=ru-RU&format=lpcm&sampleRateHertz=8000")
    assert (lpcm.status, await lpcm.json()) == (200, {"result": "pcm words"})


@module_loop
async def test_profanity_is_masked_on_request(service: Service) -> None:
    """profanityFilter masks the words and the text (the first letter and asterisks); the sync API too."""
    spoken = content("what the fuck is this shit said the bitch")
    plain = await service.wait_done((await service.submit_ok(spoken))["id"])
    masked = await service.wait_done((await service.submit_ok(spoken, {"profanityFilter": True}))["id"])

    assert plain["response"]["chunks"][0]["alternatives"][0]["text"] == (
        "what the fuck is this shit said the bitch"
    )
    alternative = masked["response"]["chunks"][0]["alternatives"][0]
    assert alternative["text"] == "what the f*** is this s*** said the b****"
    assert [word["word"] for word in alternative["words"]] == alternative["text"].split()
    sync = await service.sync(b"oh fuck", "lang=en-US&profanityFilter=true")
    assert await sync.json() == {"result": "oh f***"}


@module_loop
async def test_raw_results_write_numbers_in_words(service: Service) -> None:
    """rawResults: each number becomes its words, which share the number's time; without it digits stay;
    the sync API too; combined with profanityFilter both apply."""
    spoken = content("call 112 or 8 916 fuck")
    digits = await service.wait_done((await service.submit_ok(spoken, {"languageCode": "ru-RU"}))["id"])
    words = await service.wait_done(
        (await service.submit_ok(spoken, {"languageCode": "ru-RU", "rawResults": True}))["id"]
    )
    assert digits["response"]["chunks"][0]["alternatives"][0]["text"] == "call 112 or 8 916 fuck"
    alternative = words["response"]["chunks"][0]["alternatives"][0]
    assert alternative["text"] == "call сто двенадцать or восемь девятьсот шестнадцать fuck"
    spelled = alternative["words"][1:3]
    assert [w["word"] for w in spelled] == ["сто", "двенадцать"]
    # 112 was the second word, 0.5-0.9 s: its two words split that span
    assert [(w["startTime"], w["endTime"]) for w in spelled] == [("0.500s", "0.700s"), ("0.700s", "0.900s")]
    english = await service.wait_done(
        (
            await service.submit_ok(
                content("21st of 1,250 damn fuck"), {"rawResults": True, "profanityFilter": True}
            )
        )["id"]
    )
    assert english["response"]["chunks"][0]["alternatives"][0]["text"] == (
        "twenty first of one thousand two hundred fifty damn f***"
    )
    sync = await service.sync(b"room 42", "lang=en-US&rawResults=true")
    assert await sync.json() == {"result": "room forty two"}


@module_loop
async def test_literature_text_falls_back_to_the_words_of_an_engine_without_display_text(
    service: Service,
) -> None:
    done = await service.wait_done(
        (await service.submit_ok(content("plain words only"), {"literature_text": True}))["id"]
    )
    assert done["response"]["chunks"][0]["alternatives"][0]["text"] == "plain words only"
    auto = await service.submit(content("x"), {"languageCode": "auto"})
    assert auto.status == 400  # the fake engine cannot detect a language


@pytest.mark.parametrize(
    ("audio", "query", "message"),
    [
        (b"x" * 1025, "lang=en-US", "The audio is larger than 1024 bytes; this API takes at most 1024"),
        (b"@10.5 long", "lang=en-US", "The audio is 10.5 s long; this API takes at most 10 s"),
        (b"left|right", "lang=en-US", "The audio has 2 channels; this API takes at most 1"),
        (b"", "lang=en-US", "The request body (the audio) is empty"),
        (
            b"x",
            "lang=de-DE",
            'lang: language "de-DE" is not supported by this service; supported: en-US, ru-RU',
        ),
        (
            b"x",
            "lang=en-US&format=flac",
            'format: unsupported value "flac"; expected one of lpcm, oggopus, mp3',
        ),
        (b"\x00bad", "lang=en-US", "The audio is not a valid Ogg Opus stream"),
    ],
)
@module_loop
async def test_sync_refusals(service: Service, audio: bytes, query: str, message: str) -> None:
    response = await service.sync(audio, query)
    assert response.status == 400
    assert await response.json() == {"code": 3, "message": message, "details": []}


@module_loop
async def test_audio_longer_than_the_limits_is_refused() -> None:
    app = create_app(
        settings(max_audio_seconds=60, sync_max_seconds=0.02),
        engine_factory=FakeEngineFactory(),
        decoder=fake_decode,
        client_errors=(FakeDecodeError,),
    )
    client = await start_service(app)
    try:
        service = Service(client)
        await service.wait_ready()
        accepted = await service.submit_ok(content("@61 hello"))
        done = await service.wait_done(accepted["id"])
        assert done["error"] == {
            "code": 3,
            "message": "The audio is 61 s long; this API takes at most 60 s",
            "details": [],
        }
        # 400 bytes of 16-bit PCM at 8 kHz last 0.025 s: refused from the size, before any decoding.
        response = await service.sync(b"\x00" * 400, "lang=en-US&format=lpcm&sampleRateHertz=8000")
        assert response.status == 400
        assert await response.json() == {
            "code": 3,
            "message": "The audio is 0.025 s long; this API takes at most 0.02 s",
            "details": [],
        }
    finally:
        await client.close()


# --- Admission, readiness, retention, authentication off ----------------------------------------------


@module_loop
async def test_starting_then_full_then_free_then_stopped(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    startup = tmp_path / "startup"
    app = create_app(
        settings(queue_size=1, api_keys=(), shutdown_timeout=0.5),
        engine_factory=FakeEngineFactory(languages=("en-US",), gate=str(gate), startup_gate=str(startup)),
        decoder=fake_decode,
        client_errors=(FakeDecodeError,),
    )
    client = await start_service(app)
    service = Service(client)
    try:
        # While the engine loads: not ready, and recognition is unavailable (a transient error).
        assert (await client.get("/healthz")).status == 200
        assert (await client.get("/readyz")).status == 503
        starting = await service.submit(content("hello"), headers=None)
        assert starting.status == 503
        assert starting.headers["Retry-After"] == "5"
        assert (await starting.json())["code"] == 14
        startup.touch()
        await service.wait_ready()

        # Without api_keys no key is needed; the default language (ru-RU) is not this engine's.
        default_language = await client.post(
            SUBMIT, json={"config": {"specification": {}}, "audio": content("x")}
        )
        assert default_language.status == 400
        assert "supported: en-US" in (await default_language.json())["message"]

        # One worker and a queue of one: two operations are admitted, the rest refused with 429.
        responses = await asyncio.gather(
            *(service.submit(content("!block blocked"), headers=None) for _ in range(6))
        )
        statuses = sorted(response.status for response in responses)
        assert statuses == [200, 200, 429, 429, 429, 429]
        refused = next(response for response in responses if response.status == 429)
        assert await refused.json() == {
            "code": 8,
            "message": "Too many recognitions in progress (2); try again later",
            "details": [],
        }
        # No job finished yet: 10 s each is the guess; two jobs ahead of the next one, on one worker.
        assert refused.headers["Retry-After"] == "20"
        sync = await client.post(f"{SYNC}?lang=en-US", data=b"hello")
        assert sync.status == 429
        assert sync.headers["Retry-After"] == "20"
        # A full service refuses before reading (and checking) the body.
        unread = await client.post(SUBMIT, data=b"{not json")
        assert unread.status == 429

        # Reading operations and probes still work under load.
        accepted = [await response.json() for response in responses if response.status == 200]
        assert all(anonymous["createdBy"] == "anonymous" for anonymous in accepted)
        for operation in accepted:
            response = await service.operation(operation["id"], headers=None)
            assert (response.status, (await response.json())["done"]) == (200, False)
        assert (await client.get("/readyz")).status == 200

        gate.touch()
        for operation in accepted:
            done = await service.wait_done(operation["id"])
            assert [word for _, word, _, _ in words_of(done["response"])] == ["blocked"]
        assert (await service.submit(content("free again"), headers=None)).status == 200

        # Stopping waits shutdown_timeout for a stuck recognition, then its worker process is stopped too.
        gate.unlink()
        pid_file = tmp_path / "pid"
        assert (await service.submit(content(f"!pid:{pid_file} !block"), headers=None)).status == 200
        deadline = time.monotonic() + 30
        while (worker := read_pid(pid_file)) is None:
            assert time.monotonic() < deadline, "the blocking job never started"
            await asyncio.sleep(0.05)
        assert process_exists(worker)
        started = time.monotonic()
        await client.close()
        assert time.monotonic() - started < 10
        assert not process_exists(worker)
    finally:
        gate.touch()
        startup.touch()
        await client.close()


class SteppingClock:
    def __init__(self) -> None:
        self.now = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@module_loop
async def test_operations_expire_after_the_retention_period() -> None:
    clock = SteppingClock()
    app = create_app(
        settings(retention_seconds=3600),
        engine_factory=FakeEngineFactory(),
        decoder=fake_decode,
        client_errors=(FakeDecodeError,),
        clock=clock,
    )
    client = await start_service(app)
    try:
        service = Service(client)
        await service.wait_ready()
        accepted = await service.submit_ok(content("kept for an hour"))
        assert accepted["createdAt"] == "2024-05-01T12:00:00Z"
        done = await service.wait_done(accepted["id"])
        assert done["modifiedAt"] == "2024-05-01T12:00:00Z"

        clock.now += timedelta(seconds=3599)
        assert (await service.operation(accepted["id"])).status == 200
        clock.now += timedelta(seconds=1)
        expired = await service.operation(accepted["id"])
        assert expired.status == 404
        assert (await expired.json())["code"] == 5
    finally:
        await client.close()


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPEECHKIT_SERVE_API_KEYS", " alpha, beta ,,")
    monkeypatch.setenv("SPEECHKIT_SERVE_WORKERS", "3")
    monkeypatch.setenv("SPEECHKIT_SERVE_QUEUE_SIZE", "5")
    monkeypatch.setenv("SPEECHKIT_SERVE_STORAGE_ENDPOINT", "")
    loaded = ServiceSettings()
    assert loaded.api_key_values == ("alpha", "beta")
    assert "alpha" not in repr(loaded)
    assert (loaded.capacity, loaded.storage_endpoint, loaded.auth_enabled) == (8, None, True)
    assert (loaded.host, loaded.port) == ("127.0.0.1", 8088)
    # Whisper when the whisper extra is installed, else PocketSphinx; an explicit choice wins.
    assert loaded.engine == ("whisper" if whisper_installed() else "pocketsphinx") == default_engine()
    monkeypatch.setenv("SPEECHKIT_SERVE_ENGINE", " pocketsphinx ")
    monkeypatch.setenv("SPEECHKIT_SERVE_WHISPER_CACHE_DIR", "")
    assert (ServiceSettings().engine, ServiceSettings().whisper_cache_dir) == ("pocketsphinx", None)


def test_settings_defaults_and_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("SPEECHKIT_SERVE_"):
            monkeypatch.delenv(name)
    defaults = ServiceSettings()
    assert defaults.auth_enabled is False
    assert defaults.retention_seconds == 3 * 24 * 3600
    assert defaults.inline_limit == 60 * 1024 * 1024
    assert ServiceSettings(max_audio_bytes=1000).inline_limit == 1000
    with pytest.raises(ValueError, match="storage_access_key_id"):
        ServiceSettings(storage_access_key_id=SecretStr("AKID"))
    with pytest.raises(ValueError):
        ServiceSettings(workers=0)


# --- Bounded memory: a place is taken before a body is read --------------------------------------------


async def send_partially(
    client: TestClient[web.Request, web.Application], path: str, body: bytes, sent: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A request whose first ``sent`` bytes of body are sent; the rest is the caller's to send."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    writer.write(head.encode() + body[:sent])
    await writer.drain()
    return reader, writer


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, Any]]:
    """The status and JSON body of the answer; the connection may stay open after it (aiohttp reads and
    drops the rest of an unread body for a while before closing)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=30)
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
    payload = await asyncio.wait_for(reader.readexactly(length), timeout=30)
    return int(head.split()[1]), json.loads(payload)


async def wait_in_flight(app: web.Application, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while app[SERVICE].pool.in_flight != count:
        assert time.monotonic() < deadline, f"in flight: {app[SERVICE].pool.in_flight}, expected {count}"
        await asyncio.sleep(0.02)


@module_loop
async def test_bodies_are_read_before_a_place_is_taken_within_a_shared_budget(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    mib = 1024 * 1024
    app = create_app(
        settings(queue_size=0, api_keys=(), max_audio_bytes=mib, max_inline_bytes=mib),
        engine_factory=FakeEngineFactory(gate=str(gate)),
        decoder=fake_decode,
        client_errors=(FakeDecodeError,),
    )
    client = await start_service(app)
    service = Service(client)
    writers: list[asyncio.StreamWriter] = []
    try:
        await service.wait_ready()
        max_body = app[SERVICE].max_body
        assert app[SERVICE].body_budget == max_body  # one place: one full body at a time

        def submission(text: bytes, size: int) -> bytes:
            audio = base64.b64encode(text + b" " * size).decode()
            body = {"config": {"specification": {"languageCode": "en-US"}}, "audio": {"content": audio}}
            return json.dumps(body).encode()

        # A body being received holds no place: another request takes it meanwhile.
        large = submission(b"large", 600_000)
        reader, writer = await send_partially(client, SUBMIT, large, len(large) // 2)
        writers.append(writer)
        await asyncio.sleep(0.2)
        assert app[SERVICE].pool.in_flight == 0
        blocked = await service.submit(content("!block blocked"), headers=None)
        assert blocked.status == 200
        await wait_in_flight(app, 1)

        # The body comes in full, but the only place is taken now: 429, and nothing was admitted.
        writer.write(large[len(large) // 2 :])
        status, refused = await read_answer(reader)
        assert (status, refused["code"]) == (429, 8)

        # A full service refuses before reading a body: five large ones, each sending 1 KB and then
        # waiting, are all answered at once.
        connections = await asyncio.gather(*(send_partially(client, SUBMIT, large, 1024) for _ in range(5)))
        writers += [writer for _, writer in connections]
        answers = await asyncio.wait_for(
            asyncio.gather(*(read_answer(reader) for reader, _ in connections)), timeout=10
        )
        assert [status for status, _ in answers] == [429] * 5
        assert app[SERVICE].body_bytes == 0

        gate.touch()
        done = await service.wait_done((await blocked.json())["id"])
        assert [word for _, word, _, _ in words_of(done["response"])] == ["blocked"]
        await wait_in_flight(app, 0)

        # Bodies being received share a budget of `capacity` full bodies: a second large body that would
        # exceed it is refused (429) while the first one is still coming; the first one then gets in.
        first = submission(b"first", 600_000)
        second = submission(b"second", 600_000)
        assert len(first) + len(second) > max_body > len(first)
        first_reader, first_writer = await send_partially(client, SUBMIT, first, len(first) - 10)
        writers.append(first_writer)
        deadline = time.monotonic() + 10
        while app[SERVICE].body_bytes < len(first) - 10:
            assert time.monotonic() < deadline, app[SERVICE].body_bytes
            await asyncio.sleep(0.02)
        second_reader, second_writer = await send_partially(client, SUBMIT, second, len(second))
        writers.append(second_writer)
        status, payload = await read_answer(second_reader)
        assert status == 429
        assert payload["message"] == "Too many requests are being received at once; try again later"
        first_writer.write(first[-10:])
        status, operation = await read_answer(first_reader)
        assert status == 200, operation
        await service.wait_done(operation["id"])
        await wait_in_flight(app, 0)
        assert app[SERVICE].body_bytes == 0

        # A synchronous request's body, too, comes before its place.
        sync_reader, sync_writer = await send_partially(client, f"{SYNC}?lang=en-US", b"sync words", 4)
        writers.append(sync_writer)
        await asyncio.sleep(0.2)
        assert app[SERVICE].pool.in_flight == 0
        sync_writer.write(b" words")
        assert await read_answer(sync_reader) == (200, {"result": "sync words"})
        await wait_in_flight(app, 0)

        # Refused bodies hold no place.
        assert (await client.post(SUBMIT, data=b"{not json")).status == 400
        assert (await service.submit({"content": "!!not base64"}, headers=None)).status == 400
        assert (await service.submit(content("x"), {"languageCode": "xx-XX"}, headers=None)).status == 400
        empty = await client.post(f"{SYNC}?lang=en-US", data=b"")
        assert empty.status == 400
        assert app[SERVICE].pool.in_flight == 0
        assert (await service.submit(content("free"), headers=None)).status == 200
    finally:
        gate.touch()
        for writer in writers:
            writer.close()
        await client.close()


# --- Shutdown -------------------------------------------------------------------------------------------


def test_the_shutdown_timeout_reaches_the_pool_and_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    assert create_app(settings(shutdown_timeout=3.5))[SERVICE].pool.stop_timeout == 3.5
    calls: list[dict[str, Any]] = []

    def fake_run_app(app: web.Application, **kwargs: Any) -> None:
        assert app[SERVICE].pool.stop_timeout == 7.0
        calls.append(kwargs)

    monkeypatch.setattr(web, "run_app", fake_run_app)
    app_module.run(settings(shutdown_timeout=7.0))
    assert [call["shutdown_timeout"] for call in calls] == [7.0]


@module_loop
async def test_a_running_recognition_may_finish_during_shutdown(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    pid_file = tmp_path / "pid"
    app = create_app(
        settings(queue_size=2, shutdown_timeout=20),
        engine_factory=FakeEngineFactory(gate=str(gate)),
        decoder=fake_decode,
        client_errors=(FakeDecodeError,),
    )
    client = await start_service(app)
    service = Service(client)
    try:
        await service.wait_ready()
        running = await service.submit_ok(content(f"!pid:{pid_file} !block finished"))
        waiting = [await service.submit_ok(content(f"waiting {index}")) for index in (1, 2)]
        deadline = time.monotonic() + 30
        while read_pid(pid_file) is None:
            assert time.monotonic() < deadline, "the blocking job never started"
            await asyncio.sleep(0.05)
        started = time.monotonic()
        closing = asyncio.ensure_future(client.close())
        await asyncio.sleep(0.5)
        assert not closing.done()
        gate.touch()
        await closing
        assert time.monotonic() - started < 15
        store = app[SERVICE].store
        finished = store.get(running["id"])
        assert finished is not None
        assert [word for _, word, _, _ in words_of(finished.to_json()["response"])] == ["finished"]
        # Every waiting operation ends too: the process pool may have handed it to the workers ahead of
        # time (then it ran), or it was still waiting (then it failed).
        shutting_down = {"code": 14, "message": "The service is shutting down", "details": []}
        for index, operation in enumerate(waiting, 1):
            ended = store.get(operation["id"])
            assert ended is not None
            body = ended.to_json()
            assert body["done"] is True
            if "error" in body:
                assert body["error"] == shutting_down
            else:
                assert [word for _, word, _, _ in words_of(body["response"])] == ["waiting", str(index)]
    finally:
        gate.touch()
        await client.close()


# --- Allowed download hosts -------------------------------------------------------------------------------


@module_loop
async def test_downloads_only_from_allowed_hosts(audio_server: AudioServer, fake_s3: FakeS3) -> None:
    port = int(audio_server.url.rsplit(":", 1)[1])
    app = create_app(
        settings(allowed_hosts=f"audio.example.com, 127.0.0.1:{port}"),
        engine_factory=FakeEngineFactory(),
        decoder=fake_decode,
        client_errors=(FakeDecodeError,),
        s3_client_factory=lambda: cast(Any, fake_s3),
    )
    client = await start_service(app)
    service = Service(client)
    try:
        await service.wait_ready()
        allowed = await service.submit_ok({"uri": audio_server.uri("hello.ogg")})
        done = await service.wait_done(allowed["id"])
        assert [word for _, word, _, _ in words_of(done["response"])] == ["hello", "from", "a", "url"]
        # Allowing hosts allows no bucket.
        from_s3 = await service.submit({"uri": "s3://bucket/calls/a%20b.wav"})
        assert from_s3.status == 400
        assert "SPEECHKIT_SERVE_ALLOWED_BUCKETS" in (await from_s3.json())["message"]

        requests_before = len(audio_server.requests)
        for uri, shown in [
            (f"https://evil.example.net/a.ogg?{PRESIGNED}", "evil.example.net:443"),
            (f"http://user:pw@127.0.0.1:{port + 1}/bucket/hello.ogg?{PRESIGNED}", f"127.0.0.1:{port + 1}"),
            (f"http://AUDIO.example.com.evil.net/a.ogg?{PRESIGNED}", "audio.example.com.evil.net:80"),
        ]:
            response = await service.submit({"uri": uri})
            assert response.status == 400
            assert await response.json() == {
                "code": 3,
                "message": f"audio.uri: downloads from {shown} are not allowed by this service "
                "(its administrator can add the host to SPEECHKIT_SERVE_ALLOWED_HOSTS)",
                "details": [],
            }
        assert len(audio_server.requests) == requests_before
        assert app[SERVICE].pool.in_flight == 0
    finally:
        await client.close()


def test_allowed_hosts_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPEECHKIT_SERVE_ALLOWED_HOSTS", " Audio.example.com, *.cdn.net:8443 ,,[::1]")
    loaded = ServiceSettings()
    assert loaded.allowed_hosts == ("audio.example.com", "*.cdn.net:8443", "[::1]")
    assert loaded.host_allowed("audio.example.com", 443)
    assert loaded.host_allowed("a.cdn.net", 8443)
    assert not loaded.host_allowed("a.cdn.net", 443)
    assert not loaded.host_allowed("cdn.net", 8443)
    assert loaded.host_allowed("::1", 80)
    assert not loaded.host_allowed("example.com", 443)
    # Empty: no host at all; `*`: any host, on any port.
    assert not ServiceSettings(allowed_hosts=()).host_allowed("anything.example", 1)
    assert ServiceSettings(allowed_hosts="*").host_allowed("anything.example", 1)
    for invalid in ["a.com:x", "user@a.com", "a.com/path", "a.com:99999"]:
        with pytest.raises(ValueError, match="allowed_hosts"):
            ServiceSettings(allowed_hosts=invalid)


def test_allowed_buckets_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPEECHKIT_SERVE_ALLOWED_BUCKETS", " calls-*, Legacy_Bucket ,,")
    loaded = ServiceSettings()
    assert loaded.allowed_buckets == ("calls-*", "Legacy_Bucket")
    assert loaded.bucket_allowed("calls-2024")
    assert loaded.bucket_allowed("Legacy_Bucket")
    assert not loaded.bucket_allowed("legacy_bucket")
    assert not loaded.bucket_allowed("other")
    assert not ServiceSettings(allowed_buckets=()).bucket_allowed("calls-2024")
    assert ServiceSettings(allowed_buckets="*").bucket_allowed("anything")
    for invalid in ["a/b", "a b", "s3://a"]:
        with pytest.raises(ValueError, match="allowed_buckets"):
            ServiceSettings(allowed_buckets=invalid)
