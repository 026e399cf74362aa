"""Streaming recognition through the service's gRPC server: real worker processes (with a fake engine that
answers how much speech it heard), a gRPC client on this project's stubs, the API keys, the session
limits with their documented answers, the cap on sessions and the health service."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestServer
from grpc_health.v1 import health_pb2, health_pb2_grpc
from numpy.typing import NDArray

from speechkit_operator.contracts.stt_streaming import SERVICE_NAME
from speechkit_operator.contracts.stt_streaming import stt_service_pb2 as pb
from speechkit_operator.contracts.stt_streaming import stt_service_pb2_grpc as pb_grpc
from speechkit_operator.envconfig import ConfigurationError, load_settings
from speechkit_operator.models.recognition import Word
from speechkit_operator.selfhosted.app import SERVICE, Service, create_app
from speechkit_operator.selfhosted.config import ServiceSettings
from speechkit_operator.selfhosted.engines.base import Utterance
from speechkit_operator.selfhosted.streaming.recognition import PoolRecognizer, TextOptions
from speechkit_operator.selfhosted.streaming.server import StreamingServer, StreamingStartError, grpc_address
from speechkit_operator.selfhosted.streaming.session import SessionLimits
from speechkit_operator.selfhosted.workers import RecognitionPool, WorkerSetup
from tests.support.free_port import free_port
from tests.unit.test_selfhosted_app import KEY, settings, start_service
from tests.unit.test_streaming_endpointing import noise, speech

module_loop = pytest.mark.asyncio(loop_scope="module")
Encoding = pb.RecognitionSpec.AudioEncoding


# --- The fake engine (module level: the worker processes import it) -----------------------------------------


@dataclass(frozen=True)
class HeardEngine:
    """Answers ``heard <seconds>`` for each piece of audio."""

    name: str = "heard"

    @property
    def languages(self) -> frozenset[str]:
        return frozenset({"en-US", "ru-RU"})

    def recognize(self, pcm: NDArray[np.int16], language_code: str) -> Sequence[Utterance]:
        seconds = len(pcm) / 16000
        return [Utterance(f"heard {seconds:.1f}", (Word("heard", 0.0, seconds),))]


def heard_engine() -> HeardEngine:
    return HeardEngine()


# --- The service --------------------------------------------------------------------------------------------


@dataclass
class Streaming:
    address: str
    server: StreamingServer
    service: Service


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def streaming() -> AsyncIterator[Streaming]:
    port = free_port()
    app = create_app(
        settings(grpc_port=port, streaming_max_sessions=2, workers=2, max_audio_bytes=1 << 20),
        engine_factory=heard_engine,
    )
    client = await start_service(app)
    service = app[SERVICE]
    try:
        deadline = time.monotonic() + 60
        while not service.pool.ready:
            assert time.monotonic() < deadline, "the workers did not start"
            await asyncio.sleep(0.05)
        assert service.streaming is not None
        yield Streaming(f"127.0.0.1:{port}", service.streaming, service)
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def channel(streaming: Streaming) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(streaming.address) as opened:
        yield opened


def lpcm_config(rate: int = 16000, **spec: object) -> pb.StreamingRecognitionRequest:
    values: dict[str, object] = {
        "language_code": "en-US",
        "audio_encoding": Encoding.LINEAR16_PCM,
        "sample_rate_hertz": rate,
        **spec,
    }
    specification = pb.RecognitionSpec(**values)  # type: ignore[arg-type]
    return pb.StreamingRecognitionRequest(config=pb.RecognitionConfig(specification=specification))


def pieces(data: bytes, size: int) -> list[pb.StreamingRecognitionRequest]:
    return [
        pb.StreamingRecognitionRequest(audio_content=data[i : i + size]) for i in range(0, len(data), size)
    ]


@dataclass
class Outcome:
    responses: list[pb.StreamingRecognitionResponse]
    code: grpc.StatusCode
    details: str

    def kinds(self) -> list[str]:
        return ["final" if r.chunks[0].final else "partial" for r in self.responses]


async def call(
    streaming: Streaming,
    messages: Sequence[pb.StreamingRecognitionRequest],
    *,
    key: str | None = KEY,
    scheme: str = "Api-Key",
    pause: float = 0.0,
) -> Outcome:
    """One session with grpc's blocking client (in a thread, as SpeechKit's examples use it: grpc.aio's
    client may report INTERNAL "Internal error from Core" instead of the server's status when the server
    ends a call while a write is still in flight)."""
    metadata = (("authorization", f"{scheme} {key}"),) if key is not None else ()

    def requests() -> Iterator[pb.StreamingRecognitionRequest]:
        for message in messages:
            yield message
            if pause:
                time.sleep(pause)

    def run() -> Outcome:
        responses: list[pb.StreamingRecognitionResponse] = []
        with grpc.insecure_channel(streaming.address) as opened:
            stub = pb_grpc.SttServiceStub(opened)
            try:
                for response in stub.StreamingRecognize(requests(), metadata=metadata, timeout=60):
                    responses.append(response)
            except grpc.RpcError as exc:
                assert isinstance(exc, grpc.Call)
                return Outcome(responses, exc.code(), exc.details() or "")
        return Outcome(responses, grpc.StatusCode.OK, "")

    return await asyncio.to_thread(run)


def utterances() -> bytes:
    return np.concatenate([noise(0.3), speech(2.0), noise(0.9), speech(1.5), noise(0.8)]).tobytes()


# --- Recognition --------------------------------------------------------------------------------------------


@module_loop
async def test_partial_and_final_results_from_the_worker_pool(streaming: Streaming) -> None:
    outcome = await call(streaming, [lpcm_config(partial_results=True), *pieces(utterances(), 12800)])

    assert outcome.code is grpc.StatusCode.OK, outcome.details
    kinds = outcome.kinds()
    assert kinds.count("final") == 2 and kinds[-1] == "final"
    assert kinds[0] == "partial" and "partial" in kinds[kinds.index("final") :]
    finals = [r.chunks[0] for r in outcome.responses if r.chunks[0].final]
    assert [chunk.alternatives[0].text for chunk in finals] == ["heard 2.5", "heard 2.0"]
    assert all(chunk.end_of_utterance for chunk in finals)
    second = finals[1].alternatives[0].words[0]
    assert second.start_time.ToMilliseconds() == pytest.approx(3200 - 300, abs=20)


@module_loop
async def test_lpcm_at_8_and_48_khz(streaming: Streaming) -> None:
    pcm = np.concatenate([noise(0.3), speech(1.0), noise(0.8)])
    for rate in (8000, 48000):
        import av

        resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 16000
        data = b"".join(
            out.to_ndarray().tobytes() for out in [*resampler.resample(frame), *resampler.resample(None)]
        )
        outcome = await call(streaming, [lpcm_config(rate), *pieces(data, rate // 5 * 2)])
        assert outcome.code is grpc.StatusCode.OK, outcome.details
        # 1 s of speech, 300 ms before and 200 ms after (give or take a frame of the resampler's delay).
        assert [r.chunks[0].alternatives[0].text for r in outcome.responses] in (["heard 1.5"], ["heard 1.4"])


# --- Keys ---------------------------------------------------------------------------------------------------


@module_loop
async def test_a_missing_or_wrong_key_is_unauthenticated(streaming: Streaming) -> None:
    messages = [lpcm_config(), *pieces(utterances(), 12800)]
    missing = await call(streaming, messages, key=None)
    assert (missing.code, missing.details) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "Authentication required: send the metadata authorization: Api-Key <key>",
    )
    wrong = await call(streaming, messages, key="not-the-key")
    assert (wrong.code, wrong.details) == (grpc.StatusCode.UNAUTHENTICATED, "The API key is not valid")
    bearer = await call(streaming, messages, key=KEY, scheme="Bearer")
    assert bearer.code is grpc.StatusCode.UNAUTHENTICATED
    assert "accepts Api-Key only" in bearer.details
    assert missing.responses == wrong.responses == bearer.responses == []


# --- Bad input ----------------------------------------------------------------------------------------------


@module_loop
async def test_bad_configs_and_bad_audio_are_invalid_argument(streaming: Streaming) -> None:
    audio = pieces(utterances(), 12800)
    cases = [
        ([lpcm_config(rate=22050), *audio], "sampleRateHertz: unsupported value 22050"),
        ([lpcm_config(language_code="xx-XX"), *audio], 'language "xx-XX" is not supported'),
        ([lpcm_config(audio_encoding=Encoding.MP3), *audio], "MP3 is not supported for streaming"),
        (audio[:2], "The first message of a session must carry the config"),
        ([lpcm_config(), *audio[:2], lpcm_config()], "a second one came"),
        (
            [pb.StreamingRecognitionRequest(config=pb.RecognitionConfig()), *audio],  # OGG_OPUS by default
            "not a valid Ogg Opus stream",
        ),
    ]
    for messages, message in cases:
        outcome = await call(streaming, messages)
        assert outcome.code is grpc.StatusCode.INVALID_ARGUMENT, (message, outcome.details)
        assert message in outcome.details


# --- Limits -------------------------------------------------------------------------------------------------


@module_loop
async def test_the_server_keeps_speechkits_limits(streaming: Streaming) -> None:
    assert streaming.server.limits == SessionLimits(
        message_interval_seconds=5.0, audio_seconds=300.0, audio_bytes=10 * 1024 * 1024
    )


@module_loop
async def test_more_than_10_mb_ends_the_session_naming_the_limit(streaming: Streaming) -> None:
    silence = bytes(1024 * 1024)  # 48 kHz: 10 MB is 109 s, less than 5 minutes
    outcome = await call(
        streaming, [lpcm_config(48000), *[pb.StreamingRecognitionRequest(audio_content=silence)] * 11]
    )
    assert outcome.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "larger than the limit of 10 MB (10485760 bytes) per session" in outcome.details


@module_loop
async def test_one_message_over_10_mb_is_the_sessions_limit_not_grpcs(streaming: Streaming) -> None:
    """gRPC's own limit would answer RESOURCE_EXHAUSTED "Received message larger than max", the code of
    "too many sessions"; a message up to 16 MiB gets the session's limit, which names it."""
    silence = bytes(10 * 1024 * 1024 + 512 * 1024)  # 48 kHz: 114 s
    outcome = await call(
        streaming, [lpcm_config(48000), pb.StreamingRecognitionRequest(audio_content=silence)]
    )
    assert outcome.code is grpc.StatusCode.INVALID_ARGUMENT, outcome.details
    assert "larger than the limit of 10 MB (10485760 bytes) per session" in outcome.details


@module_loop
async def test_more_than_5_minutes_ends_the_session_naming_the_limit(streaming: Streaming) -> None:
    silence = bytes(8000 * 2 * 20)  # 20 s at 8 kHz: 5 minutes are 4.8 MB
    outcome = await call(
        streaming, [lpcm_config(8000), *[pb.StreamingRecognitionRequest(audio_content=silence)] * 16]
    )
    assert outcome.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "longer than the limit of 5 minutes per session" in outcome.details


@module_loop
async def test_a_pause_between_messages_ends_the_session_naming_the_limit(streaming: Streaming) -> None:
    streaming.server.limits = SessionLimits(message_interval_seconds=0.3)
    try:
        outcome = await call(streaming, [lpcm_config(), *pieces(utterances(), 12800)], pause=0.6)
    finally:
        streaming.server.limits = SessionLimits()
    assert outcome.code is grpc.StatusCode.INVALID_ARGUMENT
    assert outcome.details.startswith(
        "No message arrived for 0.3 s: a streaming session allows at most 0.3 s"
    )


@module_loop
async def test_sessions_past_the_maximum_are_resource_exhausted(streaming: Streaming) -> None:
    held = [call(streaming, [lpcm_config(), *pieces(bytes(6400), 3200)], pause=0.4) for _ in range(2)]
    holding = [asyncio.create_task(coroutine) for coroutine in held]
    deadline = time.monotonic() + 10
    while streaming.server.sessions < 2:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)

    refused = await call(streaming, [lpcm_config(), *pieces(utterances(), 12800)])

    assert refused.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (
        "Too many streaming sessions at once (at most 2, SPEECHKIT_SERVE_STREAMING_MAX_SESSIONS)"
        in refused.details
    )
    assert all(outcome.code is grpc.StatusCode.OK for outcome in await asyncio.gather(*holding))
    assert streaming.server.sessions == 0


# --- Health -------------------------------------------------------------------------------------------------


@module_loop
async def test_the_health_service_answers_for_the_server_and_for_streaming(streaming: Streaming) -> None:
    async with channel(streaming) as opened:
        health: Any = health_pb2_grpc.HealthStub(opened)  # the stubs' HealthStub has no methods
        deadline = time.monotonic() + 5
        while True:
            answer = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5)
            if answer.status == health_pb2.HealthCheckResponse.SERVING or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        server = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert server.status == health_pb2.HealthCheckResponse.SERVING


# --- Settings -----------------------------------------------------------------------------------------------


def test_the_streaming_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("SPEECHKIT_SERVE_"):
            monkeypatch.delenv(name)
    defaults = load_settings(ServiceSettings, engine="pocketsphinx")
    assert (defaults.grpc_port, defaults.streaming_max_sessions) == (8089, 8)
    monkeypatch.setenv("SPEECHKIT_SERVE_GRPC_PORT", "0")
    monkeypatch.setenv("SPEECHKIT_SERVE_STREAMING_MAX_SESSIONS", "3")
    loaded = load_settings(ServiceSettings, engine="pocketsphinx")
    assert (loaded.grpc_port, loaded.streaming_max_sessions) == (0, 3)
    monkeypatch.setenv("SPEECHKIT_SERVE_GRPC_PORT", "8088")
    with pytest.raises(ConfigurationError) as raised:
        load_settings(ServiceSettings, engine="pocketsphinx")
    assert "SPEECHKIT_SERVE_GRPC_PORT and SPEECHKIT_SERVE_PORT are both 8088" in str(raised.value)
    monkeypatch.setenv("SPEECHKIT_SERVE_GRPC_PORT", "0")
    monkeypatch.setenv("SPEECHKIT_SERVE_STREAMING_SESSIONS", "3")
    with pytest.raises(ConfigurationError, match="did you mean SPEECHKIT_SERVE_STREAMING_MAX_SESSIONS"):
        load_settings(ServiceSettings, engine="pocketsphinx")


def test_the_streaming_whisper_model_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """tiny.en beside the main model by default; none when streaming is off, the engine is not Whisper,
    or the setting is empty or names the main model."""
    for name in list(os.environ):
        if name.startswith("SPEECHKIT_SERVE_"):
            monkeypatch.delenv(name)
    whisper = load_settings(ServiceSettings, engine="whisper")
    assert (whisper.streaming_whisper_model, whisper.streaming_model_in_use) == ("tiny.en", "tiny.en")
    assert load_settings(ServiceSettings, engine="pocketsphinx").streaming_model_in_use is None
    assert load_settings(ServiceSettings, engine="whisper", grpc_port=0).streaming_model_in_use is None
    for main in (" ", "main", "Main", "none"):  # a Helm value cannot be empty: the chart drops it
        monkeypatch.setenv("SPEECHKIT_SERVE_STREAMING_WHISPER_MODEL", main)
        assert load_settings(ServiceSettings, engine="whisper").streaming_model_in_use is None
    monkeypatch.setenv("SPEECHKIT_SERVE_STREAMING_WHISPER_MODEL", "tiny.en")
    monkeypatch.setenv("SPEECHKIT_SERVE_WHISPER_MODEL", "tiny.en")
    assert load_settings(ServiceSettings, engine="whisper").streaming_model_in_use is None
    monkeypatch.setenv("SPEECHKIT_SERVE_STREAMING_WHISPER_MODEL", "/models/small.en")
    monkeypatch.setenv("SPEECHKIT_SERVE_WHISPER_MODEL", "base")
    assert load_settings(ServiceSettings, engine="whisper").streaming_model_in_use == "/models/small.en"


def test_the_grpc_address_of_a_host() -> None:
    assert grpc_address("0.0.0.0", 8089) == "0.0.0.0:8089"
    assert grpc_address("::", 8089) == "[::]:8089"
    assert grpc_address("[::1]", 1) == "[::1]:1"


@module_loop
async def test_port_0_turns_streaming_off() -> None:
    app = create_app(settings(grpc_port=0), engine_factory=heard_engine)
    client = await start_service(app)
    try:
        assert app[SERVICE].streaming is None
        deadline = time.monotonic() + 60
        while not app[SERVICE].pool.ready:  # (closing while workers start makes them complain)
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    finally:
        await client.close()


@module_loop
async def test_a_taken_grpc_port_stops_the_service_at_startup() -> None:
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        app = create_app(settings(grpc_port=port), engine_factory=heard_engine)
        server = TestServer(app, host="127.0.0.1")
        try:
            with pytest.raises(StreamingStartError, match=f"the gRPC port 127.0.0.1:{port} cannot be bound"):
                await server.start_server()
        finally:
            await server.close()


# --- The pool's priorities ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SlowEngine(HeardEngine):
    """Takes 0.3 s for each piece."""

    def recognize(self, pcm: NDArray[np.int16], language_code: str) -> Sequence[Utterance]:
        time.sleep(0.3)
        return super().recognize(pcm, language_code)


def slow_engine() -> SlowEngine:
    return SlowEngine()


@module_loop
async def test_partial_results_leave_the_last_idle_worker_to_a_final() -> None:
    """With two workers, one busy: a partial result waits although a worker is idle, so a final that
    asks later starts at once; the partial runs when a worker is free and another stays idle."""
    pool = RecognitionPool(WorkerSetup(engine_factory=slow_engine), workers=2, queue_size=4, stop_timeout=5)
    recognizer = PoolRecognizer(pool)
    options = TextOptions("en-US")
    started: list[str] = []
    try:
        async with asyncio.timeout(60):
            await pool.start()

            async def recognize(name: str, seconds: float, *, partial: bool) -> None:
                await recognizer.recognize(
                    np.zeros(round(seconds * 16000), np.int16),
                    options,
                    partial=partial,
                    on_start=lambda: started.append(name),
                )

            running = asyncio.create_task(recognize("first", 1.0, partial=False))
            await asyncio.sleep(0.05)
            partial = asyncio.create_task(recognize("partial", 2.0, partial=True))
            await asyncio.sleep(0.1)
            assert started == ["first"] and pool.idle_workers == 1  # the idle one is kept
            final = asyncio.create_task(recognize("final", 3.0, partial=False))
            await asyncio.sleep(0.05)
            assert started == ["first", "final"]
            await asyncio.gather(running, partial, final)
    finally:
        await pool.close()
    assert started == ["first", "final", "partial"]


@module_loop
async def test_a_final_never_queues_behind_partial_results() -> None:
    """With one worker busy, a partial result (low priority) that asked first gets the worker after a final
    that asked later."""
    pool = RecognitionPool(WorkerSetup(engine_factory=slow_engine), workers=1, queue_size=4, stop_timeout=5)
    recognizer = PoolRecognizer(pool)
    options = TextOptions("en-US")
    try:
        async with asyncio.timeout(60):
            await pool.start()
            assert recognizer.has_idle_worker and pool.idle_workers == 1
            finished: list[str] = []

            async def recognize(name: str, seconds: float, *, partial: bool) -> None:
                result = await recognizer.recognize(
                    np.zeros(round(seconds * 16000), np.int16), options, partial=partial
                )
                finished.append(f"{name}: {result.text}")

            running = asyncio.create_task(recognize("first", 1.0, partial=False))
            await asyncio.sleep(0.05)
            assert not recognizer.has_idle_worker
            partial = asyncio.create_task(recognize("partial", 2.0, partial=True))
            await asyncio.sleep(0.05)
            final = asyncio.create_task(recognize("final", 3.0, partial=False))
            await asyncio.gather(running, partial, final)
    finally:
        await pool.close()
    assert finished == ["first: heard 1.0", "final: heard 3.0", "partial: heard 2.0"]
