"""Throughput of the self-hosted service under load.

Starts ``speechkit-operator serve`` with N workers (default 2) on loopback, submits one file (default
``librivox-all.ogg``) M times at once (default 20) through the v2 async API with inline content,
honours 429 + Retry-After by resubmitting, polls every operation to the end, and prints: how many
requests got which status (anything but 200 and a proper 429 is a failure), wall time, throughput in
audio seconds per wall second, latency per operation, and the WER of every result.

    python bench/service_throughput.py [--workers 2] [--copies 20] [--queue-size 16] [--file librivox-all.ogg]

Exits 1 when a request failed other than with a proper 429, or an operation ended in an error.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devstack.components import ManagedProcess, free_port, http_request, wait_until  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine_quality import edit_distance, references  # noqa: E402

AUDIO_DIR = ROOT.parent / "shared" / "audio"
SUBMIT = "/speech/stt/v2/longRunningRecognize"


async def submit_until_accepted(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any], statuses: collections.Counter[int]
) -> tuple[str, float]:
    while True:
        async with session.post(url + SUBMIT, json=body) as response:
            statuses[response.status] += 1
            if response.status == 200:
                return str((await response.json())["id"]), time.monotonic()
            if response.status == 429 and response.headers.get("Retry-After"):
                await asyncio.sleep(min(float(response.headers["Retry-After"]), 5.0))
                continue
            raise RuntimeError(f"submission failed: HTTP {response.status} {await response.text()}")


async def wait_done(session: aiohttp.ClientSession, url: str, operation_id: str) -> dict[str, Any]:
    while True:
        async with session.get(f"{url}/operations/{operation_id}") as response:
            if response.status != 200:
                raise RuntimeError(f"GET operation: HTTP {response.status} {await response.text()}")
            operation: dict[str, Any] = await response.json()
        if operation.get("done"):
            return operation
        await asyncio.sleep(0.5)


async def load(url: str, audio: bytes, copies: int) -> tuple[collections.Counter[int], list[Any], float]:
    body = {
        "config": {"specification": {"languageCode": "en-US", "audioEncoding": "OGG_OPUS"}},
        "audio": {"content": base64.b64encode(audio).decode()},
    }
    statuses: collections.Counter[int] = collections.Counter()
    started = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:

        async def one() -> tuple[dict[str, Any], float]:
            operation_id, accepted = await submit_until_accepted(session, url, body, statuses)
            del accepted
            operation = await wait_done(session, url, operation_id)
            return operation, time.monotonic() - started

        results = await asyncio.gather(*(one() for _ in range(copies)))
    return statuses, list(results), time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--copies", type=int, default=20)
    parser.add_argument("--queue-size", type=int, default=16)
    parser.add_argument("--file", default="librivox-all.ogg")
    args = parser.parse_args()

    audio = (AUDIO_DIR / args.file).read_bytes()
    seconds = json.loads((AUDIO_DIR / "manifest.json").read_text())["files"][args.file]["seconds"]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = Path(tempfile.gettempdir()) / f"speechkit-bench-serve-{port}.log"
    server = ManagedProcess(
        "serve",
        [sys.executable, "-m", "speechkit_operator", "serve", "--port", str(port)],
        log,
        # The service's defaults but for these two: the audio is inline, so it needs no allowed hosts
        # or buckets, and operations stay in memory (no SPEECHKIT_SERVE_STATE_DIR from the caller).
        env={
            **{name: value for name, value in os.environ.items() if not name.startswith("SPEECHKIT_SERVE_")},
            "SPEECHKIT_SERVE_WORKERS": str(args.workers),
            "SPEECHKIT_SERVE_QUEUE_SIZE": str(args.queue_size),
            "SPEECHKIT_SERVE_GRPC_PORT": "0",  # the async API only; 8089 may be taken
        },
    )
    server.start()
    try:
        wait_until(
            "the service", lambda: http_request(f"{url}/readyz", timeout=2).status == 200, watch=[server]
        )
        statuses, results, wall = asyncio.run(load(url, audio, args.copies))
    finally:
        server.stop()

    manifest = json.loads((AUDIO_DIR / "manifest.json").read_text())["files"]
    reference = references(manifest, args.file)["1"].split()
    errors = [op["error"] for op, _ in results if "error" in op]
    wers = []
    for operation, _ in results:
        if "response" in operation:
            words = [
                w["word"]
                for chunk in operation["response"].get("chunks", [])
                for w in chunk["alternatives"][0]["words"]
            ]
            wers.append(edit_distance(reference, words) / len(reference))
    latencies = sorted(latency for _, latency in results)
    failures = sum(count for status, count in statuses.items() if status not in (200, 429))

    print(f"file                      {args.file} ({seconds} s of audio) x {args.copies}")
    print(f"workers / queue size      {args.workers} / {args.queue_size} (cores: {os.cpu_count()})")
    print(f"HTTP statuses (submit)    {dict(sorted(statuses.items()))}")
    print(f"failed requests           {failures} (anything but 200 and 429 with Retry-After)")
    print(f"operations with an error  {len(errors)}")
    print(f"wall time                 {wall:.1f} s")
    print(f"throughput                {seconds * args.copies / wall:.2f} audio s per wall s")
    print(f"RTF per worker            {wall * args.workers / (seconds * args.copies):.3f}")
    print(
        f"latency (s)               min {latencies[0]:.1f}  median {statistics.median(latencies):.1f}  "
        f"max {latencies[-1]:.1f}"
    )
    if wers:
        spread = f"{min(wers):.1%}..{max(wers):.1%}"
        print(f"WER                       {statistics.mean(wers):.1%} (every result: {spread})")
    return 1 if failures or errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
