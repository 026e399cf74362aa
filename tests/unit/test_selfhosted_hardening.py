"""The self-hosted service under hostile or unlucky conditions: one regression test per defect found.

Downloads denied by default (and connection failures that all look alike), slow request bodies, JSON that
made the service answer 500, memory on long multichannel audio, workers killed by the kernel, operations
across a restart, and recognitions that never end. The fake engine and decoder are those of
``test_selfhosted_app`` (their module is importable by the worker processes).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from numpy.typing import NDArray

from devstack.components import free_port
from speechkit_operator.contracts.grpc import GrpcCode
from speechkit_operator.selfhosted.app import SERVICE, create_app
from speechkit_operator.selfhosted.config import ServiceSettings
from speechkit_operator.selfhosted.workers import RecognitionJob, RecognitionPool, WorkerSetup
from tests.unit.test_selfhosted_app import (
    AUTH,
    KEY,
    PRESIGNED,
    SUBMIT,
    SYNC,
    FakeDecodeError,
    FakeEngineFactory,
    FakeS3,
    Service,
    SteppingClock,
    content,
    fake_decode,
    read_answer,
    read_pid,
    send_partially,
    settings,
    start_service,
    wait_in_flight,
    words_of,
)

REPO = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024

AppFactory = Callable[..., Awaitable[tuple[web.Application, Service]]]


@pytest.fixture
async def running() -> AsyncIterator[AppFactory]:
    """Start services with the fake engine (``settings`` overrides as keywords); all stop at the end."""
    clients: list[TestClient[web.Request, web.Application]] = []

    async def start(
        *,
        engine: FakeEngineFactory | None = None,
        s3: FakeS3 | None = None,
        clock: Any = None,
        **overrides: Any,
    ) -> tuple[web.Application, Service]:
        extra: dict[str, Any] = {} if clock is None else {"clock": clock}
        app = create_app(
            settings(**overrides),
            engine_factory=engine or FakeEngineFactory(),
            decoder=fake_decode,
            client_errors=(FakeDecodeError,),
            s3_client_factory=None if s3 is None else (lambda: cast(Any, s3)),
            **extra,
        )
        client = await start_service(app)
        clients.append(client)
        service = Service(client)
        await service.wait_ready()
        return app, service

    try:
        yield start
    finally:
        for client in clients:
            await client.close()


async def error_of(service: Service, response: Any) -> dict[str, Any]:
    """The error an accepted operation ended with."""
    body = await response.json()
    assert response.status == 200, body
    done = await service.wait_done(body["id"])
    assert "response" not in done, done
    error: dict[str, Any] = done["error"]
    return error


# --- 1. Downloads are denied by default ---------------------------------------------------------------


@pytest.fixture
async def audio_host() -> AsyncIterator[tuple[str, list[str]]]:
    """An HTTP server with one audio object at /a.ogg, and the paths it was asked for."""
    asked: list[str] = []

    async def serve(request: web.Request) -> web.Response:
        asked.append(str(request.rel_url))
        return web.Response(body=b"downloaded words")

    app = web.Application()
    app.router.add_get("/a.ogg", serve)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}", asked
    finally:
        await runner.cleanup()


async def test_downloads_are_denied_by_default(
    running: AppFactory, audio_host: tuple[str, list[str]]
) -> None:
    url, asked = audio_host
    s3 = FakeS3({("bucket", "a.ogg"): b"from the bucket"})
    app, service = await running(s3=s3)
    port = int(url.rsplit(":", 1)[1])

    http = await service.submit({"uri": f"{url}/a.ogg?{PRESIGNED}"})
    assert http.status == 400
    assert await http.json() == {
        "code": 3,
        "message": f"audio.uri: downloads from 127.0.0.1:{port} are not allowed by this service "
        "(its administrator can add the host to SPEECHKIT_SERVE_ALLOWED_HOSTS)",
        "details": [],
    }
    from_s3 = await service.submit({"uri": f"s3://bucket/a.ogg?{PRESIGNED}"})
    assert from_s3.status == 400
    assert await from_s3.json() == {
        "code": 3,
        "message": "audio.uri: reading bucket bucket is not allowed by this service "
        "(its administrator can add the bucket to SPEECHKIT_SERVE_ALLOWED_BUCKETS)",
        "details": [],
    }
    assert asked == [] and s3.calls == [], "nothing was contacted"
    assert app[SERVICE].pool.in_flight == 0

    # Inline audio needs no allowlist.
    done = await service.wait_done((await service.submit_ok(content("inline words")))["id"])
    assert [word for _, word, _, _ in words_of(done["response"])] == ["inline", "words"]


async def test_s3_bucket_must_be_allowed(running: AppFactory) -> None:
    s3 = FakeS3({("calls-2024", "a.ogg"): b"allowed bucket", ("private", "a.ogg"): b"never read"})
    _, service = await running(s3=s3, allowed_buckets="calls-*", allowed_hosts="*")

    done = await service.wait_done((await service.submit_ok({"uri": "s3://calls-2024/a.ogg"}))["id"])
    assert [word for _, word, _, _ in words_of(done["response"])] == ["allowed", "bucket"]
    # Allowing every host (`*`) allows no bucket: s3:// has its own list.
    refused = await service.submit({"uri": "s3://private/a.ogg"})
    assert refused.status == 400
    assert (await refused.json())["message"].startswith(
        "audio.uri: reading bucket private is not allowed by this service"
    )
    malformed = await service.submit({"uri": "s3://user:secret@calls-2024/a.ogg"})
    assert malformed.status == 400
    assert "secret" not in (await malformed.json())["message"]
    assert s3.calls == [("calls-2024", "a.ogg")]


@contextlib.asynccontextmanager
async def tcp_server(
    handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[int]:
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 1)


async def test_open_and_closed_ports_fail_alike(running: AppFactory) -> None:
    """Refused, reset, silent and non-HTTP ports all end with the same error: the service cannot be used
    to map which ports of an allowed host are open."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    hold: list[asyncio.StreamWriter] = []

    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        writer.transport.abort()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hold.append(writer)  # accepts, reads, never answers

    async def not_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n")
        await writer.drain()
        writer.close()

    _, service = await running(allowed_hosts="127.0.0.1", fetch_timeout=0.5)
    async with (
        tcp_server(reset) as reset_port,
        tcp_server(silent) as silent_port,
        tcp_server(not_http) as ssh,
    ):
        ports = {"closed": closed_port, "reset": reset_port, "silent": silent_port, "not-http": ssh}
        errors = {}
        for name, port in ports.items():
            uri = f"http://127.0.0.1:{port}/a.ogg?{PRESIGNED}"
            error = await error_of(service, await service.submit({"uri": uri}))
            errors[name] = {**error, "message": error["message"].replace(str(port), "PORT")}
    for writer in hold:
        writer.close()
    expected = {
        "code": 14,
        "message": "The audio could not be downloaded from http://127.0.0.1:PORT/a.ogg: "
        "the connection failed or timed out",
        "details": [],
    }
    assert errors == dict.fromkeys(ports, expected)


# --- 2. A slow body holds no recognition place ---------------------------------------------------------


async def test_slow_body_does_not_hold_a_recognition_slot(running: AppFactory) -> None:
    """Two clients dribbling their bodies while the only place is free: another client's request is
    accepted at once, and the slow ones get 408 once body_timeout has passed."""
    app, service = await running(workers=1, queue_size=0, api_keys=(), body_timeout=1.0)
    audio = base64.b64encode(b"slow words" + b" " * 1000).decode()
    body = json.dumps({"config": {"specification": {"languageCode": "en-US"}}, "audio": {"content": audio}})
    raw = body.encode()
    started = time.monotonic()
    slow = [await send_partially(service.client, SUBMIT, raw, 100) for _ in range(2)]
    sync_slow = await send_partially(service.client, f"{SYNC}?lang=en-US", b"sync words", 3)

    async def dribble(writer: asyncio.StreamWriter, rest: bytes) -> None:
        for byte in rest:
            writer.write(bytes([byte]))
            await asyncio.sleep(0.2)

    dribbling = [asyncio.ensure_future(dribble(writer, raw[100:])) for _, writer in slow]
    try:
        await asyncio.sleep(0.2)
        assert app[SERVICE].pool.in_flight == 0
        sent = time.monotonic()
        fast = await service.submit(content("fast words"), headers=None)
        accepted_after = time.monotonic() - sent
        assert fast.status == 200, await fast.text()
        answers = await asyncio.gather(*(read_answer(reader) for reader, _ in [*slow, sync_slow]))
        refused_after = time.monotonic() - started
        for status, payload in answers:
            assert (status, payload) == (
                408,
                {"code": 4, "message": "The request body did not arrive within 1 s", "details": []},
            )
        done = await service.wait_done((await fast.json())["id"])
        assert [word for _, word, _, _ in words_of(done["response"])] == ["fast", "words"]
    finally:
        for task in dribbling:
            task.cancel()
        for _, writer in [*slow, sync_slow]:
            writer.close()
    assert accepted_after < 0.5, accepted_after
    assert 1.0 <= refused_after < 3.0, refused_after
    await wait_in_flight(app, 0)
    assert app[SERVICE].body_bytes == 0
    print(
        f"\nslow bodies: another request accepted in {accepted_after:.3f} s; 408 after {refused_after:.2f} s"
    )


# --- 4. Bad JSON is a 400, never a 500 -------------------------------------------------------------------


async def submit_raw(service: Service, raw: bytes, path: str = SUBMIT) -> tuple[int, dict[str, Any]]:
    response = await service.client.post(path, data=io.BytesIO(raw), headers=AUTH)
    return response.status, await response.json()


@pytest.fixture
async def roomy(running: AppFactory) -> Service:
    """A service whose bodies may be a few megabytes."""
    _, service = await running(max_audio_bytes=4 * MIB, max_inline_bytes=4 * MIB)
    return service


async def test_deeply_nested_json_is_a_400(roomy: Service) -> None:
    for raw in (b"[" * 100_000, b'{"config": ' * 100_000, b'{"audio": {"content": ' + b"[" * 100_000):
        assert await submit_raw(roomy, raw) == (
            400,
            {
                "code": 3,
                "message": "The request body is not valid JSON: it is nested too deeply",
                "details": [],
            },
        )
    # Nested within Python's limits, where a string is expected: named, and shown briefly.
    deep = b'{"config": {"specification": {"languageCode": ' + b"[" * 500 + b"]" * 500 + b"}}}"
    status, body = await submit_raw(roomy, deep)
    assert (status, body["message"]) == (
        400,
        "config.specification.languageCode: expected a string, got an array",
    )


async def test_huge_sample_rate_is_a_400(roomy: Service) -> None:
    digits = "9" * 5000
    for value, shown in ((digits, "a number of 5000 digits"), (f'"{digits}"', f'"{"9" * 62}…')):
        raw = (
            '{"config": {"specification": {"languageCode": "en-US", "audioEncoding": "LINEAR16_PCM", '
            f'"sampleRateHertz": {value}}}}}, "audio": {{"content": "aGk="}}}}'
        ).encode()
        assert await submit_raw(roomy, raw) == (
            400,
            {
                "code": 3,
                "message": f"config.specification.sampleRateHertz: {shown} is out of range",
                "details": [],
            },
        )
    response = await roomy.client.post(
        f"{SYNC}?lang=en-US&format=lpcm&sampleRateHertz={digits}", data=b"x", headers=AUTH
    )
    assert response.status == 400
    assert (await response.json())["message"].startswith("sampleRateHertz: ")


_SPEC = '{"config": {"specification": {"languageCode": "en-US"%s}}, "audio": %s}'
_INLINE = '{"content": "aGk="}'


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "The request body is not valid JSON"),
        (b"\xff\xfe{", "The request body is not valid JSON"),
        (b"[]", "The request body must be a JSON object"),
        (b"null", "The request body must be a JSON object"),
        (b'"text"', "The request body must be a JSON object"),
        (b"1" * 5000, "The request body must be a JSON object"),
        (b'{"config": 1e999}', "config: not an object"),
        (b'{"config": {"specification": []}}', "config.specification: not an object"),
        (b'{"config": {"folderId": {"a": 1}, "specification": {}}}', "config.folderId: expected a string"),
        ((_SPEC % (', "audioChannelCount": 1e308, "audioEncoding": "LINEAR16_PCM"', _INLINE)).encode(),
         "config.specification.audioChannelCount: 1e+308 is out of range"),
        ((_SPEC % (', "audioChannelCount": NaN, "audioEncoding": "LINEAR16_PCM"', _INLINE)).encode(),
         "config.specification.audioChannelCount: expected an integer, got NaN"),
        ((_SPEC % (', "sampleRateHertz": -1e19', '{"content": "aGk="}')).encode(),
         "config.specification.sampleRateHertz: -1e+19 is out of range"),
        ((_SPEC % (', "sampleRateHertz": true', '{"content": "aGk="}')).encode(),
         "config.specification.sampleRateHertz: expected an integer, got true"),
        ((_SPEC % (', "audioEncoding": ["MP3"]', '{"content": "aGk="}')).encode(),
         "config.specification.audioEncoding: unsupported value an array"),
        ((_SPEC % (', "profanityFilter": "yes"', '{"content": "aGk="}')).encode(),
         'config.specification.profanityFilter: expected true or false, got "yes"'),
        ((_SPEC % ("", '"aGk="')).encode(), "audio: not an object"),
        ((_SPEC % ("", '{"content": ["aGk="]}')).encode(), "audio.content: expected a base64 string"),
        ((_SPEC % ("", '{"content": "\\u00e9t\\u00e9"}')).encode(), "audio.content: not valid base64"),
        ((_SPEC % ("", '{"content": "\\ud800aGk="}')).encode(), "audio.content: not valid base64"),
        ((_SPEC % ("", '{"uri": 17}')).encode(), "audio.uri: expected a non-empty string"),
        ((_SPEC % ("", '{"uri": "http://[::1/a.ogg"}')).encode(), "audio.uri: not a valid URI"),
        ((_SPEC % ("", '{"uri": "http://host:99999/a.ogg"}')).encode(), "audio.uri: not a valid URI"),
        ((_SPEC % ("", '{"uri": "http://host/\\ud800"}')).encode(), "audio.uri: not a valid URI"),
        ((_SPEC % ("", '{"uri": "http://:80/a.ogg"}')).encode(), "audio.uri: expected a host"),
        ((_SPEC % ("", '{"uri": "s3://b/../k"}')).encode(), "audio.uri: the bucket of an s3:// URI"),
    ],
)  # fmt: skip
async def test_malformed_bodies_are_400s_naming_the_problem(roomy: Service, raw: bytes, message: str) -> None:
    status, body = await submit_raw(roomy, raw)
    assert (status, body["code"]) == (400, 3), body
    assert body["message"].startswith(message), body


# --- 3. Memory: long multichannel audio is decoded and recognised in windows ----------------------------


def _status_kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, flags=re.MULTILINE).group(1))  # type: ignore[union-attr]


@dataclass(frozen=True)
class MeasuredUtterance:
    text: str
    words: tuple[Any, ...] = ()


class MeasuringEngine:
    """Recognises nothing; answers each piece with its length and this process's memory so far."""

    name = "measuring"
    languages = frozenset({"en-US"})

    def __init__(self) -> None:
        self.base_kib = _status_kib("VmRSS")

    def recognize(self, pcm: NDArray[np.int16], language_code: str) -> list[MeasuredUtterance]:
        assert pcm.dtype == np.int16 and pcm.ndim == 1
        return [MeasuredUtterance(f"{len(pcm)} {_status_kib('VmHWM')} {self.base_kib}")]


def measuring_engine() -> MeasuringEngine:
    return MeasuringEngine()


def write_multichannel_opus(path: Path, *, seconds: int, channels: int = 8) -> None:
    """Ogg Opus (mapping family 1) with a different tone in each channel, quickly encoded."""
    import av

    layout = {8: "7.1", 2: "stereo", 1: "mono"}[channels]
    rate = 16000
    with av.open(str(path), "w", format="ogg") as container:
        stream = container.add_stream("libopus", rate=rate, layout=layout)
        stream.bit_rate = 8000
        stream.codec_context.options = {"mapping_family": "1", "compression_level": "0"}
        t = np.arange(rate * 10) / rate
        block = np.stack([(np.sin(2 * np.pi * (200 + 50 * c) * t) * 3000) for c in range(channels)], axis=1)
        samples = np.ascontiguousarray(block.astype(np.int16)).reshape(1, -1)
        for index in range(seconds // 10):
            frame = av.AudioFrame.from_ndarray(samples, format="s16", layout=layout)
            frame.sample_rate = rate
            frame.pts = index * rate * 10
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


async def test_eight_channel_ten_minute_opus_stays_within_the_memory_budget(tmp_path: Path) -> None:
    """Through the real pool and decoder: 10 minutes of 8-channel Opus reach the engine in pieces of at
    most 60 s, and the worker's peak resident memory stays well inside its budget (before: the decoder
    alone held 460 MiB of samples for this file)."""
    path = tmp_path / "eight-channels.ogg"
    write_multichannel_opus(path, seconds=600)
    data = path.read_bytes()
    budget = ServiceSettings(engine="pocketsphinx").worker_memory_bytes  # the smaller default
    app = create_app(
        settings(max_audio_bytes=4 * MIB, max_inline_bytes=4 * MIB),
        engine_factory=measuring_engine,
    )
    client = await start_service(app)
    try:
        service = Service(client)
        await service.wait_ready()
        audio = {"content": base64.b64encode(data).decode()}
        body = {"config": {"specification": {"languageCode": "en-US"}}, "audio": audio}
        response = await client.post(SUBMIT, data=io.BytesIO(json.dumps(body).encode()), headers=AUTH)
        assert response.status == 200, await response.text()
        done = await service.wait_done((await response.json())["id"], timeout=120)
    finally:
        await client.close()
    assert "response" in done, done
    pieces: dict[str, list[int]] = {}
    peak_kib = base_kib = 0
    for chunk in done["response"]["chunks"]:
        samples, peak, base = (int(part) for part in chunk["alternatives"][0]["text"].split())
        pieces.setdefault(chunk["channelTag"], []).append(samples)
        peak_kib, base_kib = max(peak_kib, peak), base
    assert sorted(pieces) == [str(channel) for channel in range(1, 9)]
    for channel, lengths in pieces.items():
        assert sum(lengths) == pytest.approx(600 * 16000, abs=16000), channel
        assert max(lengths) <= 60 * 16000, channel
    growth_mib = (peak_kib - base_kib) / 1024
    print(
        f"\n8 channels x 600 s of Opus ({len(data) / MIB:.2f} MiB): worker resident "
        f"{base_kib / 1024:.0f} MiB before, peak {peak_kib / 1024:.0f} MiB (+{growth_mib:.0f} MiB); "
        f"budget {budget // MIB} MiB"
    )
    assert peak_kib * 1024 < budget
    assert growth_mib < 100


class AllocatingEngine:
    """Holds on to 64 MiB per piece of audio it is given (a leak, or an engine that needs too much)."""

    name = "allocating"
    languages = frozenset({"en-US"})

    def __init__(self) -> None:
        self.kept: list[NDArray[np.uint8]] = []

    def recognize(self, pcm: Any, language_code: str) -> list[MeasuredUtterance]:
        self.kept.append(np.ones(64 * MIB, dtype=np.uint8))
        return [MeasuredUtterance("kept")]


def allocating_engine() -> AllocatingEngine:
    return AllocatingEngine()


@dataclass(frozen=True)
class ManyPieces:
    channel_count: int = 1
    duration_seconds: float | None = 600.0

    def segments(self) -> Iterator[Any]:
        for index in range(10):
            yield _Piece(1, 60.0 * index, 60.0 * (index + 1), "x")


@dataclass(frozen=True)
class _Piece:
    channel: int
    start_seconds: float
    end_seconds: float
    pcm: str


def many_pieces(data: bytes, **declared: Any) -> ManyPieces:
    return ManyPieces()


async def test_a_worker_past_its_memory_budget_ends_the_job_with_resource_exhausted() -> None:
    pool = RecognitionPool(
        WorkerSetup(engine_factory=allocating_engine, decoder=many_pieces, memory_limit_bytes=256 * MIB),
        workers=1,
        queue_size=0,
    )
    try:
        await pool.start()
        outcome = await pool.run(b"audio", RecognitionJob(language_code="en-US", encoding=None))
        assert outcome.failure is not None
        assert outcome.failure.code is GrpcCode.RESOURCE_EXHAUSTED
        assert "budget of 256 MiB" in outcome.failure.message
    finally:
        await pool.close()


# --- 3. A worker killed by the kernel fails its own operation only --------------------------------------


async def wait_for_pid(path: Path, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while (pid := read_pid(path)) is None:
        assert time.monotonic() < deadline, f"{path} was never written"
        await asyncio.sleep(0.02)
    return pid


async def test_killed_worker_fails_only_its_own_operation(running: AppFactory, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    app, service = await running(workers=2, queue_size=2, engine=FakeEngineFactory(gate=str(gate)))
    first = await service.submit_ok(content(f"!pid:{tmp_path / 'first'} !block first"))
    second = await service.submit_ok(content(f"!pid:{tmp_path / 'second'} !block second"))
    victim = await wait_for_pid(tmp_path / "first")
    await wait_for_pid(tmp_path / "second")
    queued = await service.submit_ok(content("queued"))

    os.kill(victim, signal.SIGKILL)  # what the kernel's OOM killer does

    killed = await service.wait_done(first["id"])
    assert killed["error"]["code"] == 8
    assert killed["error"]["message"].startswith("The recognition worker was killed (SIGKILL)")
    # The queued operation runs on the worker that replaced the dead one; the running one is untouched.
    done = await service.wait_done(queued["id"])
    assert [word for _, word, _, _ in words_of(done["response"])] == ["queued"]
    still = await service.operation(second["id"])
    assert (await still.json())["done"] is False
    gate.touch()
    done = await service.wait_done(second["id"])
    assert [word for _, word, _, _ in words_of(done["response"])] == ["second"]

    after = await service.wait_done((await service.submit_ok(content("after")))["id"])
    assert "response" in after
    ready = await (await service.client.get("/readyz")).json()
    assert (ready["workers"], ready["liveWorkers"]) == (2, 2)
    await wait_in_flight(app, 0)


# --- 6. A recognition that takes too long ends, and its place is freed -------------------------------------


async def test_recognition_deadline_ends_the_operation(running: AppFactory, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    app, service = await running(
        workers=1,
        queue_size=1,
        recognition_timeout_seconds=0.5,
        recognition_timeout_factor=0.2,
        engine=FakeEngineFactory(gate=str(gate)),
    )
    stuck = await service.submit_ok(content(f"!pid:{tmp_path / 'stuck'} !block stuck"))
    waiting = await service.submit_ok(content("waiting"))
    worker = await wait_for_pid(tmp_path / "stuck")

    ended = await service.wait_done(stuck["id"], timeout=10)
    assert ended["error"] == {
        "code": 4,
        "message": "The recognition took longer than its limit of 0.5 s (SPEECHKIT_SERVE_RECOGNITION_TIMEOUT_"
        "SECONDS, or RECOGNITION_TIMEOUT_FACTOR times the audio's duration) and was stopped",
        "details": [],
    }
    done = await service.wait_done(waiting["id"])
    assert [word for _, word, _, _ in words_of(done["response"])] == ["waiting"]
    with pytest.raises(ProcessLookupError):
        os.kill(worker, 0)
    await wait_in_flight(app, 0)

    # The limit grows with the audio: 0.2 x 10 s = 2 s here, so a job that takes a second is not stopped.
    patient = await service.submit_ok(content("@10 !block patient"))
    await asyncio.sleep(1.0)
    gate.touch()
    done = await service.wait_done(patient["id"])
    assert [word for _, word, _, _ in words_of(done["response"])] == ["patient"]


# --- 5. Operations survive a restart -----------------------------------------------------------------------


def serve_main(argv: list[str]) -> None:
    """Run a service with the fake engine (in a subprocess): ``state_dir port gate``."""
    state_dir, port, gate = argv
    app = create_app(
        settings(state_dir=state_dir, api_keys=(), workers=2, queue_size=2),
        engine_factory=FakeEngineFactory(gate=gate),
        decoder=fake_decode,
        client_errors=(FakeDecodeError,),
    )
    web.run_app(app, host="127.0.0.1", port=int(port), access_log=None, print=None)


async def test_operations_survive_a_restart(running: AppFactory, tmp_path: Path) -> None:
    state = tmp_path / "state"
    port = free_port()
    process = subprocess.Popen(  # noqa: ASYNC220 - starting it takes milliseconds
        [
            sys.executable,
            "-c",
            "import sys; from tests.unit.test_selfhosted_hardening import serve_main; "
            "serve_main(sys.argv[1:])",
            str(state),
            str(port),
            str(tmp_path / "gate"),
        ],
        cwd=REPO,
        start_new_session=True,  # its fork server and workers share its process group
        stderr=subprocess.DEVNULL,
    )
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as session:
            deadline = time.monotonic() + 60
            while True:
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get("/readyz") as ready:
                        if ready.status == 200:
                            break
                assert process.poll() is None, "the service stopped"
                assert time.monotonic() < deadline, "the service did not start"
                await asyncio.sleep(0.1)

            async def submit(audio: dict[str, str]) -> str:
                body = {"config": {"specification": {"languageCode": "en-US"}}, "audio": audio}
                async with session.post(SUBMIT, json=body) as response:
                    assert response.status == 200
                    return str((await response.json())["id"])

            async def operation(operation_id: str) -> dict[str, Any]:
                async with session.get(f"/operations/{operation_id}") as response:
                    result: dict[str, Any] = await response.json()
                    return result

            finished = await submit(content("kept words"))
            failed = await submit({"content": base64.b64encode(b"\x00bad").decode()})
            running_id = await submit(content(f"!pid:{tmp_path / 'running'} !block interrupted"))
            queued_id = await submit(content("!block queued"))
            await wait_for_pid(tmp_path / "running")
            before: dict[str, dict[str, Any]] = {}
            for operation_id in (finished, failed):
                deadline = time.monotonic() + 30
                while not (body := await operation(operation_id))["done"]:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.05)
                before[operation_id] = body
    finally:
        # The service dies as in a crash or an OOM kill: no shutdown, no last writes.
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)

    clock = SteppingClock()
    clock.now = datetime.now(UTC)
    app, service = await running(state_dir=state, api_keys=(), clock=clock, retention_seconds=3600)
    for operation_id in (finished, failed):
        response = await service.operation(operation_id, headers=None)
        assert (response.status, await response.json()) == (200, before[operation_id])
    assert [word for _, word, _, _ in words_of(before[finished]["response"])] == ["kept", "words"]
    assert before[failed]["error"]["code"] == 3
    for operation_id in (running_id, queued_id):
        response = await service.operation(operation_id, headers=None)
        body = await response.json()
        assert (response.status, body["done"]) == (200, True), body
        assert body["error"] == {
            "code": 10,
            "message": "The service restarted during recognition, so this operation cannot finish; "
            "submit the audio again",
            "details": [],
        }
    # Retention counts from when each operation finished, across the restart.
    clock.now += timedelta(seconds=3600)
    for operation_id in (finished, failed, running_id, queued_id):
        assert (await service.operation(operation_id, headers=None)).status == 404
    assert len(app[SERVICE].store) == 0
    unknown = await service.operation("e03unknownunknown000", headers=None)
    assert unknown.status == 404


async def test_settings_of_the_hardening(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("SPEECHKIT_SERVE_"):
            monkeypatch.delenv(name)
    defaults = ServiceSettings(engine="pocketsphinx")
    assert (defaults.allowed_hosts, defaults.allowed_buckets) == ((), ())
    assert defaults.body_timeout == 30
    assert defaults.worker_memory_bytes == 512 * MIB
    # Whisper needs more: a larger default, and a larger minimum.
    assert ServiceSettings(engine="whisper").worker_memory_bytes == 1024 * MIB
    with pytest.raises(
        ValueError,
        match=r"MAX_AUDIO_BYTES \+ 512 MiB \(641728512\) with the whisper engine: a worker holds",
    ):
        ServiceSettings(engine="whisper", worker_memory_bytes=512 * MIB, grpc_port=0)
    # The streaming model (tiny.en beside base by default) needs its room too.
    with pytest.raises(
        ValueError, match=r"\+ 576 MiB \(708837376\) with the whisper engine and the streaming model tiny.en"
    ):
        ServiceSettings(engine="whisper", worker_memory_bytes=640 * MIB)
    assert ServiceSettings(engine="whisper", worker_memory_bytes=640 * MIB, streaming_whisper_model="main")
    assert (defaults.recognition_timeout_seconds, defaults.recognition_timeout_factor) == (120, 2)
    assert defaults.state_dir is None and defaults.database_path is None
    monkeypatch.setenv("SPEECHKIT_SERVE_STATE_DIR", str(tmp_path))
    assert ServiceSettings().database_path == tmp_path / "operations.sqlite3"
    with pytest.raises(ValueError, match="WORKER_MEMORY_BYTES must be at least"):
        ServiceSettings(engine="pocketsphinx", max_audio_bytes=400 * MIB)
    assert (
        ServiceSettings(
            engine="pocketsphinx", max_audio_bytes=400 * MIB, worker_memory_bytes=700 * MIB
        ).max_audio_bytes
        == 400 * MIB
    )
    assert KEY  # the shared settings() helper authenticates with it
