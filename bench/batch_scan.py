"""TranscriptionBatch at scale: the scan rate, the child-creation rate and the operator's memory.

One run starts the real components (kube-apiserver + etcd + kube-controller-manager, MinIO) and the
operator as shipped, in a subprocess, against the SpeechKit emulator, as ``bench/scale.py`` does (its
helpers are reused). The workload, in one bucket:

- ``--objects N`` audio objects under ``input/``, in key order ``input/000000...``;
- all but ``--new M`` of them are tiny placeholders (``input/<i>.wav``, 4 bytes) whose transcript
  ``out/input/<i>.wav.json`` exists, so the batch skips them after one HEAD. They are uploaded as
  tars that MinIO extracts (its "snowball" auto-extract PUT, 3x faster than a PUT per object here);
  the upload is timed apart;
- the M others (``input/<i>/<corpus file>``) are real short WAV files of the shared corpus without a
  transcript: they get children, which run to the end against the emulator (its quota window
  compressed to ``--window`` seconds, on both sides, as in scale.py). By default they are one block of
  consecutive keys in the middle of the listing (``--new-at 0.5``), so that the listing has a
  skipped-only stretch before and after them; ``--spread`` spreads them evenly instead.

With ``--storage-latency MS`` the operator (and the emulator's audio downloads) reach MinIO through
a proxy that delays every request by MS milliseconds, as a remote object storage would.

The operator is started and measured idle first, then one TranscriptionBatch over ``input/`` is
created (``maxInFlight`` = ``--max-in-flight``). Its status (written by the operator every 2 s) and its
children (a watch of the namespace's TranscriptionJobs) are followed, and the operator's VmRSS and CPU
are sampled from /proc every 0.25 s, until the first pass over the listing is complete
(``status.passes == 1``), then until the batch is Complete.

    python bench/batch_scan.py --objects 3000 --new 200
    python bench/batch_scan.py --objects 100000 --new 2000 --max-in-flight 1000
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import functools
import io
import json
import statistics
import sys
import tarfile
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import boto3
from botocore.config import Config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import (
    NAMESPACE,
    SOURCES,
    Kube,
    Stack,
    audio_seconds,
    collections_of,
    components,
    cpu_seconds,
    metric_sum,
    operator_env,
    rss_mb,
    scrape,
    show,
)

from devstack.components import free_port
from speechkit_operator.constants import API_VERSION, BATCH_KIND, GROUP, VERSION
from tests.e2e import operator_fixtures as fixtures
from tests.emulator import ProcessingModel
from tests.support.audio import AUDIO_DIR
from tests.support.speechkit import corpus_emulator

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

BUCKET = "batch-scan"
PREFIX = "input/"
OUTPUT_PREFIX = "out/"
BATCH_NAME = "scan"
BATCH_PLURAL = "transcriptionbatches"
PLACEHOLDER = b"RIFF"
TRANSCRIPT = b'{"chunks": []}'
#: Objects per auto-extracted tar (about 1 KiB each in the tar).
SNOWBALL_ENTRIES = 20_000
#: Seconds between two samples of the operator's VmRSS and CPU.
SAMPLE_EVERY = 0.25


# --------------------------------------------------------------------------- the workload


@dataclass
class Layout:
    """Which of the N objects are new (no transcript), and their keys."""

    objects: int
    new: frozenset[int]

    @classmethod
    def make(cls, objects: int, new: int, *, at: float, spread: bool) -> Layout:
        new = min(new, objects)
        if spread:
            chosen = {round(i * objects / new) for i in range(new)} if new else set()
        else:
            start = min(int(objects * at), objects - new)
            chosen = set(range(start, start + new))
        return cls(objects=objects, new=frozenset(chosen))

    def key(self, i: int) -> str:
        if i in self.new:
            # The corpus files in turn, whichever objects are new.
            names = list(SOURCES)
            return f"{PREFIX}{i:06d}/{names[self.rank[i] % len(names)]}"
        return f"{PREFIX}{i:06d}.wav"

    @functools.cached_property
    def rank(self) -> dict[int, int]:
        return {i: rank for rank, i in enumerate(sorted(self.new))}


def s3_client(stack: Stack, threads: int) -> S3Client:
    """A client whose connection pool fits ``threads`` concurrent calls (the fixture's holds 10)."""
    minio = stack.minio
    client: S3Client = boto3.client(
        "s3",
        endpoint_url=minio.endpoint,
        aws_access_key_id=minio.access_key,
        aws_secret_access_key=minio.secret_key,
        region_name=minio.region,
        config=Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 5, "mode": "standard"},
            max_pool_connections=threads,
            read_timeout=600,  # MinIO answers an auto-extracted tar once it is extracted
        ),
    )
    return client


def snowball(s3: S3Client, entries: list[tuple[str, bytes]]) -> None:
    """Put ``entries`` as one tar that MinIO extracts into as many objects (its auto-extract
    upload: a PUT with ``x-amz-meta-snowball-auto-extract: true``), several times faster than a PUT
    per object for tiny ones."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for key, body in entries:
            info = tarfile.TarInfo(key)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    s3.put_object(
        Bucket=BUCKET,
        Key=f"snowball-{entries[0][0].replace('/', '-')}.tar",
        Body=buffer.getvalue(),
        Metadata={"snowball-auto-extract": "true"},
    )


def upload(s3: S3Client, layout: Layout, threads: int) -> dict[str, float]:
    """The placeholders and their transcripts in tars of :data:`SNOWBALL_ENTRIES` objects (one at a
    time: MinIO extracts them no faster in parallel), then the new objects' audio with ``threads``
    concurrent PUTs; seconds, objects and objects per second of each."""
    tiny: list[tuple[str, bytes]] = []
    for i in range(layout.objects):
        if i not in layout.new:
            key = layout.key(i)
            tiny += [(key, PLACEHOLDER), (f"{OUTPUT_PREFIX}{key}.json", TRANSCRIPT)]
    started = time.monotonic()
    for first in range(0, len(tiny), SNOWBALL_ENTRIES):
        snowball(s3, tiny[first : first + SNOWBALL_ENTRIES])
    tiny_seconds = time.monotonic() - started

    contents = {name: (AUDIO_DIR / name).read_bytes() for name in SOURCES}
    audio = [layout.key(i) for i in sorted(layout.new)]

    def put(key: str) -> None:
        s3.put_object(Bucket=BUCKET, Key=key, Body=contents[key.rsplit("/", 1)[-1]])

    started = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(put, audio))
    audio_seconds = time.monotonic() - started
    return {
        "tiny": float(len(tiny)),
        "tiny_seconds": tiny_seconds,
        "audio": float(len(audio)),
        "audio_bytes": float(sum(len(contents[key.rsplit("/", 1)[-1]]) for key in audio)),
        "audio_seconds": audio_seconds,
    }


# --------------------------------------------------------------------------- storage latency


class DelayProxy:
    """A TCP proxy in front of MinIO that holds every chunk the client sends for ``delay`` seconds
    (pipelined: chunks are not held one after another), so that each storage request takes
    ``delay`` longer, as a remote object storage would."""

    def __init__(self, upstream: str, delay: float) -> None:
        parts = urllib.parse.urlsplit(upstream)
        assert parts.hostname is not None and parts.port is not None, upstream
        self.host, self.port, self.scheme = parts.hostname, parts.port, parts.scheme
        self.delay = delay
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    @property
    def endpoint(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"{self.scheme}://{self.host}:{port}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, self.host, 0)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self.tasks):
            task.cancel()

    async def _serve(self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            upstream_in, upstream_out = await asyncio.open_connection(self.host, self.port)
            chunks: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

            async def receive() -> None:
                while data := await client_in.read(65536):
                    chunks.put_nowait((time.monotonic() + self.delay, data))
                chunks.put_nowait((time.monotonic() + self.delay, b""))

            async def forward() -> None:
                while True:
                    due, data = await chunks.get()
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
                    if not data:
                        upstream_out.write_eof()
                        return
                    upstream_out.write(data)
                    await upstream_out.drain()

            async def answer() -> None:
                while data := await upstream_in.read(65536):
                    client_out.write(data)
                    await client_out.drain()
                client_out.close()

            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                await asyncio.gather(receive(), forward(), answer())
            upstream_out.close()
        except OSError:
            pass
        finally:
            client_out.close()
            self.tasks.discard(task)


def point_storage_secret_at(stack: Stack, endpoint: str) -> None:
    """The namespace's storage Secret (the jobs' and the batch's) with another endpoint."""
    minio = stack.minio
    secret = fixtures.secret_manifest(
        fixtures.STORAGE_SECRET,
        {
            "access-key-id": minio.access_key,
            "secret-access-key": minio.secret_key,
            "endpoint": endpoint,
            "region": minio.region,
        },
    )
    fixtures.run_kubectl(stack.cluster, "apply", "-n", NAMESPACE, "-f", "-", stdin=json.dumps(secret))


# --------------------------------------------------------------------------- following the run


@dataclass
class Snapshot:
    """The batch's status as a watch event delivered it."""

    at: float
    matched: int
    skipped: int
    passes: int
    phase: str
    counts: dict[str, int]


@dataclass
class Samples:
    """The operator's VmRSS (MB) and CPU seconds over time."""

    times: list[float] = field(default_factory=list)
    rss: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def add(self, pid: int) -> None:
        with contextlib.suppress(OSError):
            rss, cpu = rss_mb(pid), cpu_seconds(pid)
            self.times.append(time.monotonic())
            self.rss.append(rss)
            self.cpu.append(cpu)

    def between(self, start: float, end: float) -> list[float]:
        return [rss for at, rss in zip(self.times, self.rss, strict=True) if start <= at <= end]


class Children(Kube):
    """The namespace's TranscriptionJobs (only the batch's children are there): when each was first
    seen (monotonic), and when it finished."""

    def __init__(self, stack: Stack) -> None:
        super().__init__(stack.cluster)
        self.created: dict[str, float] = {}
        self.done: dict[str, float] = {}

    def _see(self, item: dict[str, Any]) -> None:
        super()._see(item)
        name = item["metadata"]["name"]
        now = time.monotonic()
        self.created.setdefault(name, now)
        if self.phases.get(name) in ("Succeeded", "Failed"):
            self.done.setdefault(name, now)

    def in_flight(self) -> int:
        return len(self.created) - len(self.done)


class BatchWatch:
    """The batch's status from a watch of the namespace's TranscriptionBatches."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self.path = f"/apis/{GROUP}/{VERSION}/namespaces/{NAMESPACE}/{BATCH_PLURAL}"
        self.snapshots: list[Snapshot] = []
        self.latest: dict[str, Any] = {}
        self.scanned_at: float | None = None
        self.complete_at: float | None = None

    async def create(self, max_in_flight: int) -> None:
        body = {
            "apiVersion": API_VERSION,
            "kind": BATCH_KIND,
            "metadata": {"name": BATCH_NAME},
            "spec": {
                "source": {"bucket": BUCKET, "prefix": PREFIX},
                "template": {"recognition": {"languageCode": "en-US"}},
                "maxInFlight": max_in_flight,
            },
        }
        url = self.kube.cluster.server + self.path
        async with self.kube.session.post(url, json=body) as response:
            if response.status != 201:
                raise RuntimeError(f"creating the batch: {response.status} {await response.text()}")

    async def watch(self) -> None:
        server, session = self.kube.cluster.server, self.kube.session
        while True:
            async with session.get(server + self.path) as response:
                listed = await response.json()
            for item in listed["items"]:
                self._see(item)
            version = listed["metadata"]["resourceVersion"]
            url = f"{server}{self.path}?watch=true&resourceVersion={version}"
            try:
                async with session.get(url) as response:
                    async for line in response.content:
                        event = json.loads(line)
                        if event.get("type") in ("ADDED", "MODIFIED"):
                            self._see(event["object"])
            except (aiohttp.ClientError, ValueError):
                await asyncio.sleep(0.5)

    def _see(self, item: dict[str, Any]) -> None:
        now = time.monotonic()
        status = item.get("status") or {}
        self.latest = status
        scan = status.get("scan") or {}
        counts = {name: int(value) for name, value in (status.get("counts") or {}).items()}
        passes = int(status.get("passes") or 0)
        if scan:
            matched, skipped = int(scan.get("matched") or 0), int(scan.get("skipped") or 0)
        elif passes:
            matched, skipped = counts.get("discovered", 0), counts.get("skipped", 0)
        else:
            matched = skipped = 0
        phase = str(status.get("phase") or "")
        self.snapshots.append(Snapshot(now, matched, skipped, passes, phase, counts))
        if passes >= 1 and self.scanned_at is None:
            self.scanned_at = now
        if phase == "Complete" and self.complete_at is None:
            self.complete_at = now


async def sample(pid: int, samples: Samples) -> None:
    while True:
        samples.add(pid)
        await asyncio.sleep(SAMPLE_EVERY)


# --------------------------------------------------------------------------- the figures


def skipped_only_stretches(snapshots: list[Snapshot], start: float) -> list[tuple[float, float, int]]:
    """The stretches of the pass in which no new object was found: runs of consecutive snapshots
    (from the batch's creation, ``start``, to the end of the pass) whose count of objects given a
    child (matched - skipped) does not change, as (from, to, objects listed)."""
    points = [(start, 0, 0)]
    for snapshot in snapshots:
        points.append((snapshot.at, snapshot.matched, snapshot.matched - snapshot.skipped))
        if snapshot.passes >= 1:
            break
    stretches = []
    run_start = 0
    for i in range(1, len(points) + 1):
        if i == len(points) or points[i][2] != points[run_start][2]:
            first, final = points[run_start], points[i - 1]
            if final[1] > first[1]:
                stretches.append((first[0], final[0], final[1] - first[1]))
            run_start = i
    return stretches


def cores_over(samples: Samples, stretches: list[tuple[float, float, int]]) -> float:
    """Mean cores the sampled process used over ``stretches`` (CPU read at the nearest samples)."""
    if not samples.times:
        return float("nan")
    busy = spent = 0.0
    for begin, end, _ in stretches:
        low = max(0, bisect.bisect_right(samples.times, begin) - 1)
        high = min(len(samples.times) - 1, bisect.bisect_left(samples.times, end))
        if samples.times[high] > samples.times[low]:
            busy += samples.cpu[high] - samples.cpu[low]
            spent += samples.times[high] - samples.times[low]
    return busy / spent if spent else float("nan")


def creation_rates(created: Iterable[float], room: int) -> dict[str, Any]:
    """Children per second: over the first ``room`` creations (``maxInFlight`` not reached yet), and
    the busiest second."""
    times = sorted(created)
    figures: dict[str, Any] = {}
    if not times:
        return figures
    first = times[: max(1, room)]
    span = first[-1] - first[0]
    figures["child creation: children while room allows"] = len(first)
    figures["child creation: seconds for them (first to last seen)"] = span
    figures["child creation: rate while room allows (children/s)"] = (
        (len(first) - 1) / span if span > 0 else float("nan")
    )
    per_second: dict[int, int] = {}
    for moment in times:
        per_second[int(moment - times[0])] = per_second.get(int(moment - times[0]), 0) + 1
    figures["child creation: busiest second"] = max(per_second.values())
    if len(times) > len(first):
        rest = times[len(first) :]
        rest_span = rest[-1] - first[-1]
        figures["child creation after maxInFlight was reached: children / seconds"] = (
            f"{len(rest):,} / {rest_span:.1f}"
        )
        figures["child creation after maxInFlight was reached (children/s)"] = (
            len(rest) / rest_span if rest_span > 0 else float("nan")
        )
    return figures


def writes_by_kind(samples: dict[str, float]) -> dict[str, int]:
    return {
        name.split('kind="')[1].rstrip('"}'): int(value)
        for name, value in samples.items()
        if name.startswith("speechkit_operator_kubernetes_writes") and 'kind="' in name
    }


def difference(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {kind: after[kind] - before.get(kind, 0) for kind in after if after[kind] != before.get(kind, 0)}


def progress_line(
    started: float, batch: BatchWatch, children: Children, samples: Samples, layout: Layout
) -> str:
    snapshot = batch.snapshots[-1] if batch.snapshots else None
    matched = snapshot.matched if snapshot else 0
    skipped = snapshot.skipped if snapshot else 0
    rss = samples.rss[-1] if samples.rss else 0.0
    return (
        f"  t={time.monotonic() - started:7.1f}s  listed {matched:>7,}/{layout.objects:,}"
        f"  skipped {skipped:>7,}  children {len(children.created):>5,}"
        f"  in flight {children.in_flight():>5,}  done {len(children.done):>5,}"
        f"  phase {snapshot.phase if snapshot else '-':9s}  RSS {rss:6.1f} MB"
    )


# --------------------------------------------------------------------------- the run


@dataclass
class Moments:
    """What was read at the batch's creation, at the end of its pass and when it was Complete."""

    started: float
    cpu_start: float
    writes_before: dict[str, int]
    scanned: float = 0.0
    cpu_scan: float = 0.0
    writes_scan: dict[str, int] = field(default_factory=dict)
    rss_at_scan_end: float = 0.0
    completed: float = 0.0
    cpu_end: float = 0.0
    metrics_end: dict[str, float] = field(default_factory=dict)
    rss_after: list[float] = field(default_factory=list)


@dataclass
class Run:
    args: argparse.Namespace
    layout: Layout
    pid: int
    runner: fixtures.OperatorRunner
    metrics_port: int
    children: Children
    batch: BatchWatch
    samples: Samples
    #: MinIO's CPU (and RSS), sampled as the operator's.
    minio: Samples
    next_line: float = 0.0

    def progress(self, started: float, *, due: bool = False) -> None:
        if due or time.monotonic() >= self.next_line:
            print(progress_line(started, self.batch, self.children, self.samples, self.layout), flush=True)
            self.next_line = max(self.next_line + self.args.progress_every, time.monotonic())

    async def until(self, done: Callable[[], bool], started: float, what: str) -> None:
        """Wait until ``done()``, printing progress lines, within the run's budget."""
        deadline = started + self.args.timeout
        while not done():
            self.runner.check_running()
            if time.monotonic() > deadline:
                print(f"  timed out before {what}: {json.dumps(self.batch.latest)[:2000]}")
                return
            self.progress(started)
            await asyncio.sleep(0.1)
        self.progress(started, due=True)

    async def idle(self, fig: dict[str, Any]) -> None:
        """The operator before the batch: its VmRSS and CPU over ``--idle-seconds``."""
        await asyncio.sleep(self.args.idle_seconds / 2)
        since, cpu = time.monotonic(), cpu_seconds(self.pid)
        await asyncio.sleep(self.args.idle_seconds / 2)
        fig["operator idle: VmRSS MB (mean of samples)"] = statistics.mean(
            self.samples.between(since, time.monotonic())
        )
        fig["operator idle: cores"] = (cpu_seconds(self.pid) - cpu) / (time.monotonic() - since)

    async def writes(self) -> dict[str, int]:
        return writes_by_kind(await asyncio.to_thread(scrape, self.metrics_port))

    async def measure(self) -> Moments:
        """Create the batch; follow it to the end of its pass, then to Complete, then at rest."""
        writes_before = await self.writes()
        started = time.monotonic()
        moments = Moments(started=started, cpu_start=cpu_seconds(self.pid), writes_before=writes_before)
        self.next_line = started
        await self.batch.create(self.args.max_in_flight)
        await self.until(lambda: self.batch.scanned_at is not None, started, "the end of the pass")
        moments.scanned = self.batch.scanned_at or time.monotonic()
        moments.cpu_scan = cpu_seconds(self.pid)
        moments.rss_at_scan_end = rss_mb(self.pid)
        moments.writes_scan = await self.writes()
        await self.until(lambda: self.batch.complete_at is not None, started, "Complete")
        moments.completed = self.batch.complete_at or time.monotonic()
        moments.cpu_end = cpu_seconds(self.pid)
        moments.metrics_end = await asyncio.to_thread(scrape, self.metrics_port)
        # The operator at rest again after the batch: what it keeps.
        await asyncio.sleep(self.args.idle_seconds)
        now = time.monotonic()
        moments.rss_after = self.samples.between(now - self.args.idle_seconds / 2, now)
        return moments

    def report(self, fig: dict[str, Any], at: Moments, refusals: int) -> None:
        batch, children, samples = self.batch, self.children, self.samples
        pass_seconds = at.scanned - at.started
        discovered = int((batch.latest.get("counts") or {}).get("discovered", 0))
        fig["pass: seconds (batch created -> passes == 1)"] = pass_seconds
        fig["pass: selected objects handled"] = discovered
        fig["scan rate, whole pass (objects/s)"] = discovered / pass_seconds if pass_seconds else 0.0
        stretches = skipped_only_stretches(batch.snapshots, at.started)
        objects = sum(listed for _, _, listed in stretches)
        seconds = sum(end - begin for begin, end, _ in stretches)
        fig["scan rate, skipped-only stretches (objects/s)"] = objects / seconds if seconds else float("nan")
        fig["  skipped-only stretches: objects / seconds"] = f"{objects:,} / {seconds:.1f}"
        fig["  skipped-only stretches: cores, operator / MinIO"] = (
            f"{cores_over(samples, stretches):.2f} / {cores_over(self.minio, stretches):.2f}"
        )
        for number, (begin, end, listed) in enumerate(stretches, 1):
            fig[f"  stretch {number}: s after creation, objects, objects/s, operator cores"] = (
                f"{begin - at.started:.1f}-{end - at.started:.1f}, {listed:,}, "
                f"{listed / (end - begin):.0f}, {cores_over(samples, [(begin, end, listed)]):.2f}"
            )
        first_child = min(children.created.values(), default=None)
        if first_child is not None:
            fig["first child seen (s after the batch's creation)"] = first_child - at.started
        fig.update(creation_rates(children.created.values(), self.args.max_in_flight))
        levels = in_flight_levels(children)
        fig["in flight at most (children seen - finished)"] = max((n for _, n in levels), default=0)
        fig["operator VmRSS during the pass: peak MB"] = max(
            samples.between(at.started, at.scanned), default=float("nan")
        )
        fig["operator VmRSS at the end of the pass MB"] = at.rss_at_scan_end
        fig["operator VmRSS: peak until Complete MB"] = max(
            samples.between(at.started, at.completed), default=float("nan")
        )
        fig["operator VmRSS after Complete (at rest) MB"] = (
            statistics.mean(at.rss_after) if at.rss_after else float("nan")
        )
        fig["operator CPU seconds for the pass"] = at.cpu_scan - at.cpu_start
        fig["operator cores, mean over the pass"] = (
            (at.cpu_scan - at.cpu_start) / pass_seconds if pass_seconds else float("nan")
        )
        fig["operator CPU seconds per 1,000 objects (pass)"] = (
            1000 * (at.cpu_scan - at.cpu_start) / discovered if discovered else float("nan")
        )
        fig["operator CPU seconds, batch created -> Complete"] = at.cpu_end - at.cpu_start
        fig["seconds, batch created -> Complete"] = at.completed - at.started
        fig["Kubernetes writes during the pass (by kind)"] = json.dumps(
            difference(at.writes_scan, at.writes_before)
        )
        fig["Kubernetes writes, batch created -> Complete"] = json.dumps(
            difference(writes_by_kind(at.metrics_end), at.writes_before)
        )
        fig["429s (emulator / operator's metrics)"] = (
            f"{refusals} / {int(metric_sum(at.metrics_end, 'speechkit_operator_api_throttled'))}"
        )
        fig["batch: final phase"] = batch.latest.get("phase")
        fig["batch: final counts"] = json.dumps(batch.latest.get("counts"))
        fig["batch: passes / failures kept"] = (
            f"{batch.latest.get('passes')} / {len(batch.latest.get('failures') or [])}"
        )
        fig["children by phase"] = json.dumps(collections_of(children.phases))
        log = self.runner.output()
        fig["operator log: ERROR lines / tracebacks"] = f"{log.count(' ERROR ')} / {log.count('Traceback')}"


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    fig: dict[str, Any] = {}
    layout = Layout.make(args.objects, args.new, at=args.new_at, spread=args.spread)
    fig["objects under the prefix / new (no transcript)"] = f"{layout.objects:,} / {len(layout.new):,}"
    fig["new objects"] = (
        "spread evenly" if args.spread else f"one block from key #{min(layout.new, default=0):,}"
    )
    fig["maxInFlight"] = args.max_in_flight
    with components(workdir) as stack:
        s3 = s3_client(stack, args.upload_threads)
        s3.create_bucket(Bucket=BUCKET)
        uploaded = await asyncio.to_thread(upload, s3, layout, args.upload_threads)
        fig["upload: placeholders + transcripts (auto-extracted tars)"] = (
            f"{uploaded['tiny']:,.0f} objects in {uploaded['tiny_seconds']:.1f} s"
            f" = {uploaded['tiny'] / uploaded['tiny_seconds']:,.0f}/s"
        )
        fig["upload: new objects' audio (PUTs)"] = (
            f"{uploaded['audio']:,.0f} objects, {uploaded['audio_bytes'] / 2**20:.0f} MiB,"
            f" in {uploaded['audio_seconds']:.1f} s = {uploaded['audio'] / uploaded['audio_seconds']:,.0f}/s"
        )
        show("upload", {k: v for k, v in fig.items() if k.startswith("upload")})
        async with AsyncExitStack() as exits:
            if args.storage_latency:
                proxy = DelayProxy(stack.minio.endpoint, args.storage_latency / 1000)
                await proxy.start()
                exits.push_async_callback(proxy.stop)
                await asyncio.to_thread(point_storage_secret_at, stack, proxy.endpoint)
                fig["storage latency added per request (ms)"] = args.storage_latency
            speechkit = await exits.enter_async_context(corpus_emulator(fixtures.API_KEY))
            speechkit.quota_window_seconds = args.window
            speechkit.processing_model = ProcessingModel(
                seconds_per_audio_second=args.pace, audio_seconds=audio_seconds, seed="batch-scan"
            )
            children = Children(stack)
            exits.push_async_callback(children.close)
            metrics_port = free_port()
            runner = fixtures.OperatorRunner(
                env=operator_env(speechkit, stack, args.window, metrics_port),
                log_dir=workdir / "operator-logs",
            )
            exits.callback(runner.stop_all)
            process = await runner.start()
            assert process.pid is not None
            bench = Run(
                args=args,
                layout=layout,
                pid=process.pid,
                runner=runner,
                metrics_port=metrics_port,
                children=children,
                batch=BatchWatch(children),
                samples=Samples(),
                minio=Samples(),
            )
            assert stack.minio.process is not None and stack.minio.process.pid is not None
            for coroutine in (
                children.watch(),
                bench.batch.watch(),
                sample(process.pid, bench.samples),
                sample(stack.minio.process.pid, bench.minio),
            ):
                exits.callback(asyncio.create_task(coroutine).cancel)
            await bench.idle(fig)
            moments = await bench.measure()
            bench.report(fig, moments, sum(speechkit.quota_refusals.values()))
            print(f"  operator logs: {runner.log_dir}")
    return fig


def in_flight_levels(children: Children) -> list[tuple[float, int]]:
    """(moment, children created and not finished from then on), in order."""
    events = sorted([(t, 1) for t in children.created.values()] + [(t, -1) for t in children.done.values()])
    levels, level = [], 0
    for moment, step in events:
        level += step
        levels.append((moment, level))
    return levels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--objects", type=int, default=100_000, help="objects under the prefix")
    parser.add_argument("--new", type=int, default=2000, help="of them, objects without a transcript")
    parser.add_argument("--max-in-flight", type=int, default=1000, help="the batch's maxInFlight")
    parser.add_argument(
        "--new-at", type=float, default=0.5, help="where the block of new objects starts (share of the keys)"
    )
    parser.add_argument("--spread", action="store_true", help="spread the new objects evenly instead")
    parser.add_argument("--window", type=float, default=20.0, help="the compressed quota hour, seconds")
    parser.add_argument("--pace", type=float, default=10.0 / 60.0, help="emulator processing s per audio s")
    parser.add_argument(
        "--storage-latency",
        type=float,
        default=0.0,
        help="milliseconds added to every storage request of the operator (a delaying proxy)",
    )
    parser.add_argument("--upload-threads", type=int, default=16, help="concurrent PUTs of audio")
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument("--progress-every", type=float, default=10.0, help="seconds between progress lines")
    parser.add_argument("--timeout", type=float, default=3600.0, help="budget from the batch's creation, s")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix=f"speechkit-batch-scan-{args.objects}-"))  # kept: the logs
    figures = asyncio.run(run(args, workdir))
    show(f"TranscriptionBatch over {args.objects:,} objects ({args.new:,} new)", figures)


if __name__ == "__main__":
    main()
