"""Streaming recognition: latency from the end of speech to the final result, and concurrent sessions.

Starts ``speechkit-operator serve`` on loopback (its default engine, Whisper when installed, with its
streaming model, tiny.en for English, unless ``--streaming-model`` names another; N worker
processes) and streams ``librivox-all.wav`` (five utterances with 0.8 s of silence between them)
through ``StreamingRecognize`` as LINEAR16_PCM at 16 kHz, paced at real time: ``--chunk-ms`` of
audio every ``--chunk-ms`` (100 ms by default, so the measure is not rounded to the docs' 400 ms
example). With ``--sessions 1,2,4`` it runs that many sessions at once, one round per figure; their
starts are ``--stagger`` seconds apart (1.3 s: independent callers do not end their sentences in the
same 100 ms; 0 makes every session's utterances end together, the worst case).

End of speech: the end of the last 20 ms frame louder than -35 dBFS of each utterance's span
(the spans are the manifest's: the five source files laid end to end with 0.8 s of silence), in
audio time; it was sent when the wall clock reached the session's start plus that time (the audio
is sent as it would be recorded). Latency: from that moment to the arrival of the final result
that ends the utterance. A final that matches no utterance, or an utterance without a final, is
reported. Each session also reports its word error rate against the manifest's text.

    python bench/streaming_latency.py [--workers 2] [--sessions 1,2,4] [--chunk-ms 100] [--rounds 2]
                                      [--stagger 1.3] [--whisper-threads 1] [--streaming-model NAME]
                                      [--per-utterance] [--verbose-service] [--russian]

Exits 1 when a session ended in an error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import sys
import tempfile
import time
import wave
from array import array
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc import aio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "operator"))

from devstack.components import ManagedProcess, free_port, http_request, wait_until  # noqa: E402
from speechkit_operator.contracts.stt_streaming import stt_service_pb2 as pb  # noqa: E402
from speechkit_operator.contracts.stt_streaming import stt_service_pb2_grpc as pb_grpc  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine_quality import edit_distance  # noqa: E402

AUDIO_DIR = ROOT.parent / "shared" / "audio"
PARTS = (
    "librivox-0870.wav",
    "librivox-0880.wav",
    "librivox-0890.wav",
    "librivox-0920.wav",
    "librivox-0930.wav",
)
GAP_SECONDS = 0.8
EXAMPLES_DIR = ROOT / "examples" / "audio"
RUSSIAN_PARTS = (
    ("ru-greeting.wav", "добрый день спасибо что позвонили в нашу компанию чем я могу вам помочь"),
    (
        "ru-courier.wav",
        "курьер привезёт вашу посылку завтра пожалуйста не выключайте телефон он позвонит вам за час до "
        "приезда",
    ),
)
FRAME_SECONDS = 0.02
LOUD_DBFS = -35.0


@dataclass
class Utterance:
    start: float
    end_of_speech: float
    text: str


@dataclass
class SessionResult:
    latencies: list[float] = field(default_factory=list)
    #: The latency of each utterance's final, by its index in the spans.
    by_utterance: dict[int, float] = field(default_factory=dict)
    partials: int = 0
    finals: list[str] = field(default_factory=list)
    unmatched: int = 0
    missed: int = 0
    error: str | None = None
    words: int = 0
    errors: int = 0


def read_pcm(path: Path) -> tuple[bytes, int]:
    with wave.open(str(path), "rb") as stream:
        assert stream.getsampwidth() == 2 and stream.getnchannels() == 1, path
        return stream.readframes(stream.getnframes()), stream.getframerate()


def speech_end(pcm: bytes, rate: int) -> float:
    """Audio time of the end of the last loud frame."""
    samples = array("h", pcm)
    frame = int(rate * FRAME_SECONDS)
    last = 0.0
    for index in range(0, len(samples) - frame + 1, frame):
        window = samples[index : index + frame]
        rms = math.sqrt(sum(value * value for value in window) / frame) or 1e-9
        if 20 * math.log10(rms / 32768) > LOUD_DBFS:
            last = (index + frame) / rate
    return last


def utterances() -> list[Utterance]:
    manifest = json.loads((AUDIO_DIR / "manifest.json").read_text(encoding="utf-8"))["files"]
    found: list[Utterance] = []
    offset = 0.0
    for name in PARTS:
        pcm, rate = read_pcm(AUDIO_DIR / name)
        found.append(Utterance(offset, offset + speech_end(pcm, rate), manifest[name]["text"]))
        offset += len(pcm) / 2 / rate + GAP_SECONDS
    return found


def russian() -> tuple[bytes, int, list[Utterance]]:
    """The demo's two Russian samples (synthesised; texts in their ATTRIBUTION.md) laid end to end with
    ``GAP_SECONDS`` of zeros, as librivox-all is made: the stream, its rate and its utterances."""
    pieces: list[bytes] = []
    found: list[Utterance] = []
    offset = 0.0
    rate = 16000
    for name, text in RUSSIAN_PARTS:
        pcm, rate = read_pcm(EXAMPLES_DIR / name)
        found.append(Utterance(offset, offset + speech_end(pcm, rate), text))
        pieces += [pcm, bytes(2 * round(GAP_SECONDS * rate))]
        offset += len(pcm) / 2 / rate + GAP_SECONDS
    return b"".join(pieces[:-1]), rate, found


def normalized(text: str) -> list[str]:
    lowered = text.lower().replace("ё", "е")  # noqa: RUF001 - Cyrillic io as ie
    return "".join(c if c.isalnum() or c.isspace() else " " for c in lowered).split()


async def one_session(
    endpoint: str,
    pcm: bytes,
    rate: int,
    spans: list[Utterance],
    chunk_ms: int,
    *,
    delay: float = 0.0,
    language: str = "en-US",
) -> SessionResult:
    await asyncio.sleep(delay)
    result = SessionResult()
    chunk = rate * 2 * chunk_ms // 1000
    started = 0.0

    async def requests() -> AsyncIterator[pb.StreamingRecognitionRequest]:
        nonlocal started
        spec = pb.RecognitionSpec(
            language_code=language,
            model="general",
            partial_results=True,
            audio_encoding=pb.RecognitionSpec.LINEAR16_PCM,
            sample_rate_hertz=rate,
        )
        yield pb.StreamingRecognitionRequest(config=pb.RecognitionConfig(specification=spec))
        started = time.monotonic()
        for index, offset in enumerate(range(0, len(pcm), chunk)):
            # The chunk [t, t + chunk) has been "recorded" at t + chunk.
            due = started + (index + 1) * chunk_ms / 1000
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            yield pb.StreamingRecognitionRequest(audio_content=pcm[offset : offset + chunk])

    pending = list(spans)
    async with aio.insecure_channel(endpoint) as channel:
        stub = pb_grpc.SttServiceStub(channel)
        try:
            async for response in stub.StreamingRecognize(requests()):
                arrived = time.monotonic() - started
                for piece in response.chunks:
                    if not piece.final:
                        result.partials += 1
                        continue
                    text = piece.alternatives[0].text if piece.alternatives else ""
                    result.finals.append(text)
                    # The final ends the earliest utterance whose speech has ended by now.
                    ended = [u for u in pending if u.end_of_speech <= arrived]
                    if not ended:
                        result.unmatched += 1
                        continue
                    utterance = ended[0]
                    pending.remove(utterance)
                    result.latencies.append(arrived - utterance.end_of_speech)
                    result.by_utterance[spans.index(utterance)] = arrived - utterance.end_of_speech
        except grpc.aio.AioRpcError as exc:
            result.error = f"{exc.code().name}: {exc.details()}"
    result.missed = len(pending)
    reference = normalized(" ".join(u.text for u in spans))
    hypothesis = normalized(" ".join(result.finals))
    result.words = len(reference)
    result.errors = edit_distance(reference, hypothesis)
    return result


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))]


async def run(args: argparse.Namespace) -> int:
    if args.russian:
        pcm, rate, spans = russian()
    else:
        pcm, rate = read_pcm(AUDIO_DIR / "librivox-all.wav")
        spans = utterances()
    port, grpc_port = free_port(), free_port()
    while grpc_port == port:
        grpc_port = free_port()
    env = {
        **{name: value for name, value in os.environ.items() if not name.startswith("SPEECHKIT_SERVE_")},
        "SPEECHKIT_SERVE_WORKERS": str(args.workers),
        "SPEECHKIT_SERVE_GRPC_PORT": str(grpc_port),
        "SPEECHKIT_SERVE_STREAMING_MAX_SESSIONS": str(max(args.sessions)),
        "SPEECHKIT_SERVE_WHISPER_THREADS": str(args.whisper_threads),
    }
    if args.streaming_model is not None:
        env["SPEECHKIT_SERVE_STREAMING_WHISPER_MODEL"] = args.streaming_model
    failed = False
    log = Path(tempfile.gettempdir()) / f"speechkit-bench-stream-{port}.log"
    command = [
        sys.executable,
        "-m",
        "speechkit_operator",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    if args.verbose_service:
        command.append("--verbose")
    server = ManagedProcess("serve", command, log, env=env)
    server.start()
    try:
        await asyncio.to_thread(
            wait_until,
            "the service",
            lambda: http_request(f"http://127.0.0.1:{port}/readyz", timeout=2).status == 200,
            timeout=300,
            watch=[server],
        )
        model = "default" if args.streaming_model is None else repr(args.streaming_model)
        print(
            f"service ready: {args.workers} workers, {args.whisper_threads} Whisper thread(s) each, "
            f"streaming model {model} "
            f"(cores: {os.cpu_count()}); streaming on :{grpc_port}"
        )
        print(
            f"{'sessions':>8} {'finals':>6} {'p50 ms':>7} {'p95 ms':>7} {'max ms':>7} "
            f"{'partials/s':>10} {'missed':>6} {'WER':>6} errors"
        )
        for sessions in args.sessions:
            results: list[SessionResult] = []
            for _ in range(args.rounds):
                results += await asyncio.gather(
                    *(
                        one_session(
                            f"127.0.0.1:{grpc_port}",
                            pcm,
                            rate,
                            spans,
                            args.chunk_ms,
                            delay=index * args.stagger,
                            language="ru-RU" if args.russian else "en-US",
                        )
                        for index in range(sessions)
                    )
                )
            latencies = [value for r in results for value in r.latencies]
            errors = [r.error for r in results if r.error]
            failed = failed or bool(errors)
            seconds = len(pcm) / 2 / rate
            partial_rate = statistics.mean(r.partials for r in results) / seconds
            wer = sum(r.errors for r in results) / max(1, sum(r.words for r in results))
            cells = (
                [
                    f"{1000 * statistics.median(latencies):.0f}",
                    f"{1000 * percentile(latencies, 0.95):.0f}",
                    f"{1000 * max(latencies):.0f}",
                ]
                if latencies
                else ["-", "-", "-"]
            )
            print(
                f"{sessions:>8} {len(latencies):>6} {cells[0]:>7} {cells[1]:>7} {cells[2]:>7} "
                f"{partial_rate:>10.2f} {sum(r.missed + r.unmatched for r in results):>6} "
                f"{100 * wer:>5.1f}% {'; '.join(errors) or '-'}"
            )
            if args.per_utterance:
                for index, span in enumerate(spans):
                    values = sorted(r.by_utterance[index] for r in results if index in r.by_utterance)
                    shown = " ".join(f"{1000 * value:.0f}" for value in values)
                    spoken = span.end_of_speech - span.start
                    print(f"{'':>8} utterance {index + 1} ({spoken:.1f} s): {shown} ms")
    finally:
        server.stop()
        if args.verbose_service:
            print(f"service log: {log}")
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--sessions", default="1,2,4", help="comma-separated session counts, one figure each")
    parser.add_argument("--chunk-ms", type=int, default=100)
    parser.add_argument(
        "--whisper-threads", type=int, default=1, help="SPEECHKIT_SERVE_WHISPER_THREADS of the service"
    )
    parser.add_argument("--rounds", type=int, default=2, help="repetitions per session count")
    parser.add_argument(
        "--stagger",
        type=float,
        default=1.3,
        help="seconds between the starts of concurrent sessions (independent callers do not speak in "
        "unison; 0: all at once, every utterance ending at the same moment in every session)",
    )
    parser.add_argument(
        "--streaming-model",
        help="SPEECHKIT_SERVE_STREAMING_WHISPER_MODEL of the service (unset: its default, tiny.en; "
        "main: the main model, base)",
    )
    parser.add_argument(
        "--russian",
        action="store_true",
        help="stream the demo's two Russian samples (ru-RU, 16.7 s, two utterances) instead of "
        "librivox-all: the main model's latency, which Russian streams get",
    )
    parser.add_argument(
        "--per-utterance", action="store_true", help="also print each utterance's latencies, sorted"
    )
    parser.add_argument(
        "--verbose-service",
        action="store_true",
        help="run the service with --verbose (each recognition's time in its log, named at the end)",
    )
    args = parser.parse_args()
    args.sessions = [int(value) for value in args.sessions.split(",")]
    return asyncio.run(run(args))


if __name__ == "__main__":
    raise SystemExit(main())
