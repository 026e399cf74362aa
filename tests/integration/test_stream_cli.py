"""``speechkit-operator stream`` against a fake ``SttService`` (grpc.aio, on loopback, in the test's loop)
built on the generated stubs: what goes over the wire (the config first, 400 ms chunks, the
authorization metadata), what is printed (partial results in place on a terminal, plain lines
otherwise), errors, limits, and Ctrl-C in a real process."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import io
import itertools
import json
import logging
import os
import signal
import socket
import struct
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import grpc
import pytest
from grpc import aio

from speechkit_operator import stream_cli
from speechkit_operator.contracts.stt_streaming import stt_service_pb2 as pb
from speechkit_operator.contracts.stt_streaming import stt_service_pb2_grpc as pb_grpc
from speechkit_operator.logic.stream_audio import SessionLimits
from speechkit_operator.logic.stream_rendering import CLEAR_LINE
from speechkit_operator.stream_cli import EXIT_FAILED, StreamOptions, stream
from tests.support.audio import audio_dir

pytestmark = pytest.mark.integration

API_KEY = "stream-test-key-5f2c"
RUN_TIMEOUT = 60.0
REPO = Path(__file__).resolve().parents[2]


def wav_file(path: Path, seconds: float, *, rate: int = 16000, channels: int = 1) -> bytes:
    """A WAV of a quiet ramp; returns its samples."""
    frames = round(seconds * rate)
    samples = struct.pack(f"<{frames * channels}h", *((n % 200) - 100 for n in range(frames * channels)))
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * 2 * channels, 2 * channels, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(samples))
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body) + len(samples)) + body + samples)
    return samples


def chunk(text: str, *, final: bool) -> pb.SpeechRecognitionChunk:
    return pb.SpeechRecognitionChunk(
        alternatives=[pb.SpeechRecognitionAlternative(text=text, confidence=1.0)],
        final=final,
        end_of_utterance=final,
    )


@dataclass
class FakeStt(pb_grpc.SttServiceServicer):
    """Answers a partial result every 2nd audio message, a final one every 5th and one at the end of the
    stream; or aborts with ``error`` after ``error_after`` audio messages."""

    error: tuple[grpc.StatusCode, str] | None = None
    error_after: int = 0
    requests: list[pb.StreamingRecognitionRequest] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    half_closed: bool = False
    audio_messages: asyncio.Event = field(default_factory=asyncio.Event)

    async def StreamingRecognize(  # an async generator, as grpc.aio takes it
        self,
        request_iterator: AsyncIterator[pb.StreamingRecognitionRequest],
        context: aio.ServicerContext[pb.StreamingRecognitionRequest, pb.StreamingRecognitionResponse],
    ) -> AsyncIterator[pb.StreamingRecognitionResponse]:
        self.metadata = {key: str(value) for key, value in context.invocation_metadata() or ()}
        if self.error is not None and self.error_after < 0:  # as a refused key is: before reading
            await context.abort(*self.error)
        audio = 0
        async for request in request_iterator:
            self.requests.append(request)
            self.arrivals.append(time.monotonic())
            if request.WhichOneof("streaming_request") != "audio_content":
                continue
            audio += 1
            if audio >= 3:
                self.audio_messages.set()
            if self.error is not None and audio > self.error_after:
                await context.abort(*self.error)
            if audio % 2 == 0:
                yield pb.StreamingRecognitionResponse(chunks=[chunk(f"partial {audio}", final=False)])
            if audio % 5 == 0:
                yield pb.StreamingRecognitionResponse(chunks=[chunk(f"final {audio}", final=True)])
        self.half_closed = True
        yield pb.StreamingRecognitionResponse(chunks=[chunk("the end", final=True)])

    @property
    def config(self) -> pb.RecognitionConfig:
        first = self.requests[0]
        assert first.WhichOneof("streaming_request") == "config"
        return first.config

    @property
    def audio(self) -> list[bytes]:
        return [request.audio_content for request in self.requests[1:]]


@dataclass
class Server:
    servicer: FakeStt
    port: int

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "grpc_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def fake() -> AsyncIterator[Server]:
    servicer = FakeStt()
    server = aio.server()
    pb_grpc.add_SttServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield Server(servicer, port)
    finally:
        await server.stop(None)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


async def run(
    options: StreamOptions,
    *,
    environ: dict[str, str] | None = None,
    stdin: BinaryIO | None = None,
    stdout: io.StringIO | None = None,
) -> tuple[int, str, str]:
    """The command in a thread of its own (it runs its own event loop), as main() would run it."""
    out, err = stdout or io.StringIO(), io.StringIO()
    env = {"SPEECHKIT_API_KEY": API_KEY, "SPEECHKIT_FOLDER_ID": "b1gfolder"} if environ is None else environ
    call = functools.partial(
        stream, options, stdin=stdin or io.BytesIO(), stdout=out, stderr=err, environ=env
    )
    status = await asyncio.wait_for(asyncio.to_thread(call), RUN_TIMEOUT)
    return status, out.getvalue(), err.getvalue()


async def test_a_wav_goes_as_the_config_then_400_ms_chunks_with_the_api_key(
    fake: Server, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    samples = wav_file(tmp_path / "a.wav", 2.3)
    options = StreamOptions(
        str(tmp_path / "a.wav"), endpoint=fake.endpoint, fast=True, language="en-US", profanity_filter=True
    )
    status, out, err = await run(options)
    assert (status, err) == (0, "")
    spec = fake.servicer.config.specification
    assert spec.audio_encoding == pb.RecognitionSpec.LINEAR16_PCM
    assert (spec.sample_rate_hertz, spec.language_code, spec.model) == (16000, "en-US", "general")
    assert (spec.profanity_filter, spec.partial_results) == (True, True)
    assert fake.servicer.config.folder_id == "b1gfolder"
    assert [len(piece) for piece in fake.servicer.audio] == [12800] * 5 + [len(samples) - 5 * 12800]
    assert b"".join(fake.servicer.audio) == samples
    assert fake.servicer.metadata["authorization"] == f"Api-Key {API_KEY}"
    assert fake.servicer.half_closed
    # Not a terminal: the finals only, one a line.
    assert out == "final 5\nthe end\n"
    # The debug log says what was sent, and never the key.
    assert "session config: LINEAR16_PCM 16000 Hz, en-US" in caplog.text
    assert "audio ended: 6 chunks" in caplog.text
    assert API_KEY not in caplog.text


async def test_partials_as_plain_lines_and_json_lines(fake: Server, tmp_path: Path) -> None:
    wav_file(tmp_path / "a.wav", 2.0)
    base = StreamOptions(str(tmp_path / "a.wav"), endpoint=fake.endpoint, fast=True)
    status, out, _ = await run(dataclasses.replace(base, partials=True))
    assert status == 0
    assert out == "partial: partial 2\npartial: partial 4\nfinal 5\nthe end\n"
    status, out, _ = await run(dataclasses.replace(base, json=True))
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["chunks"][0]["alternatives"][0]["text"] for line in lines] == [
        "partial 2",
        "partial 4",
        "final 5",
        "the end",
    ]
    assert [line["chunks"][0]["final"] for line in lines] == [False, False, True, True]


async def test_on_a_terminal_partials_rewrite_the_line_and_finals_end_it(
    fake: Server, tmp_path: Path
) -> None:
    wav_file(tmp_path / "a.wav", 2.0)
    options = StreamOptions(str(tmp_path / "a.wav"), endpoint=fake.endpoint, fast=True)
    status, out, _ = await run(options, stdout=Terminal())
    assert status == 0
    assert out == (f"{CLEAR_LINE}partial 2{CLEAR_LINE}partial 4{CLEAR_LINE}final 5\n{CLEAR_LINE}the end\n")


async def test_no_partial_asks_for_finals_only_without_credentials(fake: Server, tmp_path: Path) -> None:
    wav_file(tmp_path / "a.wav", 0.5)
    options = StreamOptions(str(tmp_path / "a.wav"), endpoint=fake.endpoint, fast=True, partial_results=False)
    status, _, _ = await run(options, environ={})
    assert status == 0
    assert fake.servicer.config.specification.partial_results is False
    assert fake.servicer.config.folder_id == ""
    assert "authorization" not in fake.servicer.metadata


async def test_stereo_44_khz_wav_goes_as_mono_16_khz(fake: Server, tmp_path: Path) -> None:
    wav_file(tmp_path / "a.wav", 1.0, rate=44100, channels=2)
    status, _, _ = await run(StreamOptions(str(tmp_path / "a.wav"), endpoint=fake.endpoint, fast=True))
    assert status == 0
    assert fake.servicer.config.specification.sample_rate_hertz == 16000
    assert [len(piece) for piece in fake.servicer.audio] == [12800, 12800, 6400]


async def test_ogg_opus_goes_as_is(fake: Server) -> None:
    path = audio_dir() / "librivox-0870.ogg"
    status, _, _ = await run(StreamOptions(str(path), endpoint=fake.endpoint, fast=True))
    assert status == 0
    spec = fake.servicer.config.specification
    assert spec.audio_encoding == pb.RecognitionSpec.OGG_OPUS
    assert spec.sample_rate_hertz == 0
    assert b"".join(fake.servicer.audio) == path.read_bytes()
    assert len(fake.servicer.audio) == 18  # 7.1 s


async def test_headerless_pcm_from_stdin(fake: Server) -> None:
    data = bytes(range(256)) * 60  # 15360 bytes: 0.96 s at 8 kHz
    options = StreamOptions("-", endpoint=fake.endpoint, fast=True, encoding="lpcm", sample_rate=8000)
    status, _, _ = await run(options, stdin=io.BytesIO(data))
    assert status == 0
    assert fake.servicer.config.specification.sample_rate_hertz == 8000
    assert [len(piece) for piece in fake.servicer.audio] == [6400, 6400, 2560]
    assert b"".join(fake.servicer.audio) == data


async def test_wav_and_ogg_from_stdin_are_read_by_their_headers(fake: Server, tmp_path: Path) -> None:
    samples = wav_file(tmp_path / "a.wav", 1.0)
    piped = bytearray((tmp_path / "a.wav").read_bytes())
    piped[40:44] = b"\xff\xff\xff\xff"  # a WAV written to a pipe: no size
    options = StreamOptions("-", endpoint=fake.endpoint, fast=True)
    status, _, _ = await run(options, stdin=io.BytesIO(bytes(piped)))
    assert status == 0
    assert fake.servicer.config.specification.sample_rate_hertz == 16000
    assert b"".join(fake.servicer.audio) == samples
    fake.servicer.requests.clear()
    ogg = (audio_dir() / "librivox-0870.ogg").read_bytes()
    status, _, _ = await run(options, stdin=io.BytesIO(ogg))
    assert status == 0
    assert fake.servicer.config.specification.audio_encoding == pb.RecognitionSpec.OGG_OPUS
    assert b"".join(fake.servicer.audio) == ogg


async def test_a_wav_piped_without_samples_fails_saying_so(fake: Server, tmp_path: Path) -> None:
    """A WAV cut after its header, from a pipe (its size unknown up front): nothing to recognise, and an
    exit status 0 would tell a cron job that it was recognised."""
    wav_file(tmp_path / "a.wav", 1.0)
    header = (tmp_path / "a.wav").read_bytes()[:44]
    options = StreamOptions("-", endpoint=fake.endpoint, fast=True)
    status, _, err = await run(options, stdin=io.BytesIO(header))
    assert status == EXIT_FAILED
    assert "stdin holds no audio samples: nothing was recognised" in err
    assert fake.servicer.audio == []  # the config went, no audio


async def test_grpc_errors_print_the_code_and_message_but_never_the_key(fake: Server, tmp_path: Path) -> None:
    wav_file(tmp_path / "a.wav", 3.0)
    fake.servicer.error = (
        grpc.StatusCode.UNAUTHENTICATED,
        f"API key {API_KEY} is not valid (Api-Key {API_KEY})",
    )
    fake.servicer.error_after = 2
    status, out, err = await run(StreamOptions(str(tmp_path / "a.wav"), endpoint=fake.endpoint, fast=True))
    assert status == 1
    assert err.startswith("speechkit-operator stream: UNAUTHENTICATED: API key *** is not valid")
    assert API_KEY not in out + err
    assert out == ""


async def test_a_call_ended_at_once_while_audio_is_written_reports_the_services_status(
    fake: Server, tmp_path: Path
) -> None:
    """grpc.aio can report INTERNAL "Internal error from Core" here (grpc/grpc#36066); the client's
    synchronous call reports the service's status, every time."""
    wav_file(tmp_path / "a.wav", 3.0)
    fake.servicer.error = (grpc.StatusCode.RESOURCE_EXHAUSTED, "too many sessions")
    fake.servicer.error_after = -1
    for _ in range(5):
        status, _, err = await run(StreamOptions(str(tmp_path / "a.wav"), endpoint=fake.endpoint, fast=True))
        assert (status, err) == (1, "speechkit-operator stream: RESOURCE_EXHAUSTED: too many sessions\n")


async def test_an_unreachable_service_is_unavailable(tmp_path: Path) -> None:
    wav_file(tmp_path / "a.wav", 0.5)
    status, _, err = await run(StreamOptions(str(tmp_path / "a.wav"), endpoint="127.0.0.1:1", fast=True))
    assert status == 1
    assert "UNAVAILABLE" in err


async def test_stdin_that_pauses_ends_the_session_before_the_5_second_rule(
    fake: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stream_cli, "INPUT_GAP_SECONDS", 0.5)
    read_end, write_end = os.pipe()
    os.write(write_end, bytes(6400 * 2))  # 0.8 s at 8 kHz, then nothing
    options = StreamOptions("-", endpoint=fake.endpoint, fast=True, encoding="lpcm", sample_rate=8000)
    with os.fdopen(read_end, "rb") as stdin:
        try:
            status, out, err = await run(options, stdin=stdin)
        finally:
            os.close(write_end)
    assert status == 1
    assert "stdin sent nothing for 0.5 s" in err
    assert "5 s without a message" in err
    assert [len(piece) for piece in fake.servicer.audio] == [6400, 6400]
    assert out == "the end\n"  # the results of what was sent still come


async def test_stdin_is_cut_at_the_session_limit(fake: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream_cli, "SessionLimits", functools.partial(SessionLimits, max_seconds=1.0))
    options = StreamOptions("-", endpoint=fake.endpoint, fast=True, encoding="lpcm", sample_rate=8000)
    status, out, err = await run(options, stdin=io.BytesIO(bytes(8000 * 2 * 3)))
    assert status == 1
    assert "stopped at 1 s of audio" in err
    assert sum(len(piece) for piece in fake.servicer.audio) == 16000
    assert out.endswith("the end\n")


# --- A real process: real-time pacing and Ctrl-C -----------------------------------------------------------


def _environment() -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("SPEECHKIT_", "API_SECRET")) and "proxy" not in name.lower()
    }
    env["SPEECHKIT_API_KEY"] = API_KEY
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "operator"), env.get("PYTHONPATH", "")])
    return env


@pytest.fixture
def subprocess_env() -> Iterator[dict[str, str]]:
    yield _environment()


async def test_real_time_pacing_and_ctrl_c_in_a_real_process(
    fake: Server, tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    wav_file(tmp_path / "a.wav", 4.0)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "speechkit_operator",
        "stream",
        str(tmp_path / "a.wav"),
        "--endpoint",
        fake.endpoint,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=subprocess_env,
    )
    try:
        await asyncio.wait_for(fake.servicer.audio_messages.wait(), RUN_TIMEOUT)
        process.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(process.communicate(), RUN_TIMEOUT)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 130, err
    assert err.decode().strip().endswith("interrupted")
    assert API_KEY not in err.decode()
    # The audio stopped (a 4 s file: 10 chunks), the stream was half-closed and its results came.
    assert 3 <= len(fake.servicer.audio) < 10
    assert fake.servicer.half_closed
    assert out.decode().endswith("the end\n")
    # 400 ms of audio every 400 ms.
    gaps = [later - earlier for earlier, later in itertools.pairwise(fake.servicer.arrivals[1:])]
    assert all(0.3 < gap < 0.55 for gap in gaps), gaps


async def test_an_error_while_stdin_is_still_open_exits_1_not_abort(
    fake: Server, subprocess_env: dict[str, str]
) -> None:
    """The reading thread is blocked on a pipe that stays open when the service ends the call: the
    process must still exit with its status (a blocked BufferedReader made the exit abort, 134)."""
    fake.servicer.error = (grpc.StatusCode.UNAUTHENTICATED, "The API key is not valid")
    fake.servicer.error_after = 2
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "speechkit_operator",
        "stream",
        "-",
        "--endpoint",
        fake.endpoint,
        "--fast",
        "--encoding",
        "lpcm",
        "--sample-rate",
        "8000",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=subprocess_env,
    )
    assert process.stdin is not None
    try:
        process.stdin.write(bytes(8000 * 2 * 2))  # 2 s of audio, and the pipe stays open
        await process.stdin.drain()
        await asyncio.wait_for(process.wait(), RUN_TIMEOUT)
        assert process.stderr is not None
        err = (await process.stderr.read()).decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        process.stdin.close()
    assert process.returncode == 1, err
    assert "UNAUTHENTICATED: The API key is not valid" in err
    assert "Fatal Python error" not in err


# --- The real self-hosted service ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
async def selfhosted(subprocess_env: dict[str, str], tmp_path: Path) -> AsyncIterator[str]:
    """`speechkit-operator serve` with its gRPC port (one worker, an API key); its gRPC endpoint."""
    grpc_port = _free_port()
    env = {name: value for name, value in subprocess_env.items() if not name.startswith("SPEECHKIT_SERVE_")}
    env |= {
        "SPEECHKIT_SERVE_HOST": "127.0.0.1",
        "SPEECHKIT_SERVE_PORT": str(_free_port()),
        "SPEECHKIT_SERVE_GRPC_PORT": str(grpc_port),
        "SPEECHKIT_SERVE_API_KEYS": API_KEY,
        "SPEECHKIT_SERVE_WORKERS": "1",
    }
    log = (tmp_path / "serve.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "speechkit_operator", "serve", env=env, stdout=log, stderr=log
    )
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while b"recognition worker(s) ready" not in (tmp_path / "serve.log").read_bytes():
            if process.returncode is not None or time.monotonic() > deadline:
                pytest.skip(f"speechkit-operator serve did not start: {(tmp_path / 'serve.log').read_text()}")
            await asyncio.sleep(0.2)
        yield f"127.0.0.1:{grpc_port}"
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()
        log.close()


async def test_the_self_hosted_service_recognises_a_stream(selfhosted: str) -> None:
    path = audio_dir() / "librivox-0880.wav"  # "he was not an ill disposed young man"
    options = StreamOptions(str(path), endpoint=selfhosted, fast=True, language="en-US", partials=True)
    status, out, err = await run(options, environ={"SPEECHKIT_API_KEY": API_KEY})
    assert (status, err) == (0, "")
    finals = [line for line in out.splitlines() if not line.startswith("partial: ")]
    assert len(finals) == 1
    # tiny.en, the streaming model for English, hears "ill disposed" as "old-s-posed" (docs/streaming.md)
    assert "was not" in finals[0] and "young man" in finals[0]
    status, _, err = await run(options, environ={"SPEECHKIT_API_KEY": "not-the-key"})
    assert status == 1
    assert err.startswith("speechkit-operator stream: UNAUTHENTICATED")
    assert "not-the-key" not in err
