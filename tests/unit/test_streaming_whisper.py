"""THE streaming test: ``speechkit-operator serve`` with the real Whisper engine, and a client on the stubs
that Yandex's SDK generated from SpeechKit's protos (in a process of its own, written like the seed's
example), streaming the shared LibriVox recording in 400 ms pieces as fast as it can. Each utterance gets
partial results and then a final one with ``end_of_utterance`` that holds its key words, as LINEAR16_PCM
at 16 kHz and as OGG_OPUS. Then SIGTERM stops the service cleanly.

Every wait has a deadline: the service's start, each client run (which also gives its call a deadline)
and the shutdown. The client runs in a subprocess with ``subprocess.run`` from a plain (not async) test,
and the service in another process: nothing blocks the event loop the server runs on, which is how an
earlier attempt at this test hung (a blocking client on the server's own loop).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from speechkit_operator.contracts.stt_streaming import SERVICE_NAME
from tests.support.audio import audio_dir, manifest
from tests.support.free_port import free_port

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "tests" / "support" / "yandex_stream_client.py"
KEY = "streaming-test-key"
#: Words of each utterance of librivox-all (in order) that the final result must hold.
KEY_WORDS = [
    {"dashwood", "leisure", "prudently"},
    {"young", "man"},
    {"rather", "selfish"},
    {"married", "respectable"},
    {"amiable", "himself"},
]


@dataclass
class Serve:
    process: subprocess.Popen[str]
    address: str
    log: Path


def _wait_serving(address: str, process: subprocess.Popen[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, "serve exited at startup"
        try:
            with grpc.insecure_channel(address) as channel:
                health: Any = health_pb2_grpc.HealthStub(channel)  # the stubs' HealthStub has no methods
                answer = health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=2)
            if answer.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass
        assert time.monotonic() < deadline, "streaming did not become ready"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    port, grpc_port = free_port(), free_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith("SPEECHKIT_SERVE_")}
    env |= {
        "SPEECHKIT_SERVE_HOST": "127.0.0.1",
        "SPEECHKIT_SERVE_PORT": str(port),
        "SPEECHKIT_SERVE_GRPC_PORT": str(grpc_port),
        "SPEECHKIT_SERVE_API_KEYS": KEY,
        "SPEECHKIT_SERVE_WORKERS": "2",
        "SPEECHKIT_SERVE_ENGINE": "whisper",
    }
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "speechkit_operator", "serve", "-v"],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
        )
    address = f"127.0.0.1:{grpc_port}"
    try:
        _wait_serving(address, process, timeout=120)
        yield Serve(process, address, log)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def stream(serve: Serve, path: Path, *extra: str) -> list[dict[str, Any]]:
    finished = subprocess.run(
        [sys.executable, str(CLIENT), "--address", serve.address, "--key", KEY, "--path", str(path), *extra],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        cwd=ROOT,
    )
    assert finished.returncode == 0, finished.stderr
    lines = [json.loads(line) for line in finished.stdout.splitlines()]
    assert lines and lines[-1] == {"status": "OK"}, lines[-3:]
    return lines[:-1]


def check_utterances(responses: list[dict[str, Any]]) -> list[str]:
    """Partial results, then a final one, for each utterance; answers the finals' texts."""
    finals: list[str] = []
    partials_before: list[int] = []
    partials = 0
    for response in responses:
        if response["final"]:
            assert response["end_of_utterance"]
            finals.append(response["text"])
            partials_before.append(partials)
            partials = 0
        else:
            assert not response["end_of_utterance"]
            assert response["text"]
            partials += 1
    assert partials == 0, "partial results after the last final one"
    assert len(finals) == len(KEY_WORDS), finals
    assert all(count >= 1 for count in partials_before), partials_before
    for text, words in zip(finals, KEY_WORDS, strict=True):
        heard = set(re.findall(r"[a-z]+", text.lower()))
        assert words <= heard, (text, words - heard)
    return finals


def test_a_client_generated_from_speechkits_protos_streams_lpcm(serve: Serve, tmp_path: Path) -> None:
    assert manifest()["files"]["librivox-all.wav"]["seconds"] == pytest.approx(27.93)
    with wave.open(str(audio_dir() / "librivox-all.wav")) as recording:
        assert (recording.getframerate(), recording.getnchannels(), recording.getsampwidth()) == (16000, 1, 2)
        pcm = recording.readframes(recording.getnframes())
    raw = tmp_path / "librivox-all.pcm"
    raw.write_bytes(pcm)

    started = time.monotonic()
    responses = stream(serve, raw, "--encoding", "LINEAR16_PCM", "--rate", "16000", "--chunk-bytes", "12800")

    check_utterances(responses)
    assert time.monotonic() - started < 120


def test_the_startup_log_names_the_streaming_model_beside_the_main_one(serve: Serve) -> None:
    log = serve.log.read_text()
    assert re.search(r"Whisper model base \(bundled, .*\) verified", log), log
    assert re.search(r"Whisper model tiny\.en \(bundled, .*\) for streaming verified", log), log


def test_the_same_client_streams_ogg_opus(serve: Serve) -> None:
    path = audio_dir() / "librivox-all.ogg"
    per_400_ms = round(path.stat().st_size / 27.93 * 0.4)
    responses = stream(
        serve, path, "--encoding", "OGG_OPUS", "--rate", "48000", "--chunk-bytes", str(per_400_ms)
    )
    check_utterances(responses)


def test_a_bad_config_and_a_missing_key_get_their_codes(serve: Serve, tmp_path: Path) -> None:
    raw = tmp_path / "silence.pcm"
    raw.write_bytes(bytes(32000))
    finished = subprocess.run(
        [sys.executable, str(CLIENT), "--address", serve.address, "--path", str(raw), "--rate", "16000"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(finished.stdout.splitlines()[-1])["status"] == "UNAUTHENTICATED"
    bad = stream_status(serve, raw, "--rate", "44100")
    assert bad["status"] == "INVALID_ARGUMENT"
    assert "sampleRateHertz: unsupported value 44100" in bad["details"]


def stream_status(serve: Serve, path: Path, *extra: str) -> dict[str, Any]:
    finished = subprocess.run(
        [sys.executable, str(CLIENT), "--address", serve.address, "--key", KEY, "--path", str(path), *extra],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    status: dict[str, Any] = json.loads(finished.stdout.splitlines()[-1])
    return status


def test_sigterm_stops_the_service_cleanly(serve: Serve) -> None:
    """Last in this module: the service stops within its shutdown timeout and exits 0."""
    log = serve.log.read_text()
    assert f"streaming recognition (gRPC {SERVICE_NAME}/StreamingRecognize) on {serve.address}" in log
    assert KEY not in log  # the key is never logged
    serve.process.send_signal(signal.SIGTERM)
    assert serve.process.wait(timeout=60) == 0
