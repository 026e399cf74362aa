"""The seed script's algorithm (the "SpeechKit Asynchronous Batch Recognizer" cron script), re-created
as a driver against the SpeechKit emulator, as the baseline of bench/scale.py.

What the seed does on each run (it is started by cron every 3 minutes):

1. list the ``input`` prefix; every audio file without a marker in ``log`` is sent to
   ``longRunningRecognize`` (a presigned URL), one request after another, and its operation id is
   written to a ``log`` marker (``done: false``); a failed request (a 429 included) writes nothing, so
   the file is sent again on the next run;
2. read every ``log`` marker with ``done: false`` (the ones just written too) and ask the Operation API
   about each; a finished one gets its result written to ``out`` and its marker set to ``done: true``.

It has no notion of the quotas, no Retry-After, no prediction: each run checks every file in flight.
Here the markers are kept in memory (the S3 writes of markers and results cost nothing at the
emulator and are not what is compared); the submissions and checks are real HTTP calls, one after
another as the script makes them, against a fresh emulator with the same quota window and the same
processing model as the operator's run. Runs never overlap: a run that lasts longer than the period
delays the next (a CronJob with ``concurrencyPolicy: Forbid``).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp

from tests.emulator import ProcessingModel
from tests.support.speechkit import corpus_emulator

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

SUBMIT = "/speech/stt/v2/longRunningRecognize"


@dataclass
class BaselineResult:
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Marker:
    operation_id: str
    done: bool = False
    seen_done_at: float | None = None  # time.time()


def peak_in_window(times: list[float], window: float) -> int:
    """The most calls in any sliding window of ``window`` seconds (the times are sorted)."""
    best, start = 0, 0
    for end, moment in enumerate(times):
        while times[start] <= moment - window:
            start += 1
        best = max(best, end - start + 1)
    return best


def percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


async def run_seed_baseline(
    *,
    keys: dict[str, str],
    bucket: str,
    s3: S3Client,
    model: ProcessingModel,
    window: float,
    period: float,
    api_key: str,
    budget: float,
) -> BaselineResult:
    """Run the seed's algorithm over ``keys`` (job name -> object key) until every file is done."""
    result = BaselineResult()
    fig = result.figures
    urls = {
        key: s3.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=6 * 3600
        )
        for key in keys.values()
    }
    markers: dict[str, _Marker] = {}
    runs = 0
    async with corpus_emulator(api_key) as speechkit, aiohttp.ClientSession() as session:
        speechkit.quota_window_seconds = window
        speechkit.processing_model = model
        headers = {"Authorization": f"Api-Key {api_key}"}
        started = time.monotonic()
        while len(markers) < len(keys) or not all(m.done for m in markers.values()):
            if time.monotonic() - started > budget:
                fig["timed out"] = True
                break
            run_started = time.monotonic()
            runs += 1
            for key, url in urls.items():  # step 1: submit what has no marker
                if key in markers:
                    continue
                body = {
                    "config": {"specification": {"languageCode": "en-US", "audioEncoding": "LINEAR16_PCM"}},
                    "audio": {"uri": url},
                }
                async with session.post(speechkit.url + SUBMIT, json=body, headers=headers) as response:
                    if response.status == 200:
                        markers[key] = _Marker(str((await response.json())["id"]))
            for marker in markers.values():  # step 2: check every file in flight
                if marker.done:
                    continue
                async with session.get(
                    f"{speechkit.url}/operations/{marker.operation_id}", headers=headers
                ) as r:
                    if r.status == 200 and (await r.json()).get("done"):
                        marker.done, marker.seen_done_at = True, time.time()
            await asyncio.sleep(max(0.0, period - (time.monotonic() - run_started)))
        wall = time.monotonic() - started
        per_job, latencies = [], []
        for marker in markers.values():
            operation = speechkit.operations[marker.operation_id]
            per_job.append(float(operation.checks))
            if operation.completed_wall is not None and marker.seen_done_at is not None:
                latencies.append(marker.seen_done_at - operation.completed_wall)
        fig["jobs"] = len(keys)
        fig["cron period s (180 s compressed)"] = period
        fig["cron runs"] = runs
        fig["wall seconds"] = wall
        fig["peak submissions in any window (quota 500)"] = peak_in_window(
            speechkit.quota_charges["submit"], window
        )
        fig["peak checks in any window (quota 2,500)"] = peak_in_window(
            speechkit.quota_charges["operation"], window
        )
        fig["429s received"] = sum(speechkit.quota_refusals.values())
        fig["429s on submissions / on checks"] = (
            f"{speechkit.quota_refusals['submit']} / {speechkit.quota_refusals['operation']}"
        )
        fig["checks per job, mean / p95"] = (
            f"{statistics.mean(per_job) if per_job else float('nan'):.2f} / {percentile(per_job, 0.95):.0f}"
        )
        fig["detection latency p50 / p95 s"] = (
            f"{percentile(latencies, 0.5):.2f} / {percentile(latencies, 0.95):.2f}"
        )
        fig["submissions made (accepted)"] = len(speechkit.quota_charges["submit"])
    return result
