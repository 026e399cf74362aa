"""Quota-aware scheduling at scale: the operator as shipped, on the real components, against the emulator.

For each ``--jobs N`` a fresh kube-apiserver + etcd + kube-controller-manager and a fresh MinIO are
started (the e2e tier's components, ~/.cache/speechkit-operator/components), the CRD and the chart's
RBAC are applied, and the operator runs as the e2e tier runs it: the ``speechkit-operator run`` console
script in a subprocess, under the chart's ServiceAccount. Its settings are the shipped defaults except
the endpoints, the credentials, the metrics port and ``SPEECHKIT_OPERATOR_QUOTA_WINDOW_SECONDS``: the
quota hour is compressed to ``--window`` seconds, on the operator's side and on the emulator's
(``quota_window_seconds``), with the documented quotas (500 submissions and 2,500 checks per window).

The workload: N source objects in MinIO (copies of short WAV files of the shared corpus, one key per
job), N TranscriptionJobs created at once while the operator is stopped (a backlog of N queued jobs),
then the operator is started and runs them all to the end. The emulator's processing time is
duration-based (see ``ProcessingModel``): ``--pace`` seconds per audio second, times a jitter uniform in
+-20 %, and 5 % of the jobs take 10 times longer (like ``deferred-general``).

With ``--in-flight`` the run goes on: N more jobs whose operations take hours are submitted, the
operator's CPU is measured while they are all in flight, then the operator is restarted with them all
Running (startup time to its first check) and measured idle again.

With ``--baseline`` the same workload (the same objects, the same processing times) then goes through
a re-creation of the seed script's algorithm (see ``seed_baseline.py``) against a fresh emulator.

    python bench/scale.py --jobs 100 --jobs 1000 [--window 20] [--pace 2] [--baseline] [--in-flight]

Prints each run's figures and a summary table at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devstack.components import (  # noqa: E402
    KubeCluster,
    MinioServer,
    free_port,
    http_request,
    locate_binaries,
    running_cluster,
    running_minio,
)
from speechkit_operator.constants import API_VERSION, GROUP, JOB_KIND, JOB_PLURAL, VERSION  # noqa: E402
from tests.e2e import operator_fixtures as fixtures  # noqa: E402
from tests.e2e.crd_fixtures import install_crd  # noqa: E402
from tests.emulator import EmulatedOperation, ProcessingModel, SpeechKitEmulator  # noqa: E402
from tests.support.audio import AUDIO_DIR  # noqa: E402
from tests.support.speechkit import corpus_emulator  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from seed_baseline import BaselineResult, peak_in_window, percentile, run_seed_baseline  # noqa: E402

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

#: Short mono 16 kHz WAV files of the shared corpus and their durations (manifest.json); job i gets
#: a copy of SOURCES[i % 5] under a key of its own.
SOURCES = {
    "librivox-0880.wav": 2.99,
    "librivox-0930.wav": 3.29,
    "librivox-0890.wav": 5.30,
    "librivox-0920.wav": 6.05,
    "librivox-0870.wav": 7.10,
}
SUBMIT_QUOTA = 500
CHECK_QUOTA = 2500
NAMESPACE = "scale"
#: Settings of operator_environment() that are the e2e tier's speed-ups, not what ships: dropped here.
E2E_SPEEDUPS = (
    "FIRST_CHECK_MIN_SECONDS",
    "SECONDS_PER_AUDIO_MINUTE",
    "POLL_INITIAL_INTERVAL_SECONDS",
    "POLL_BACKOFF_FACTOR",
    "SUBMIT_RETRY_BASE_SECONDS",
    "SUBMIT_QUOTA",
    "CHECK_QUOTA",
)
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- measuring


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


def scrape(port: int) -> dict[str, float]:
    """The operator's /metrics as ``name{labels}`` -> value."""
    text = http_request(f"http://127.0.0.1:{port}/metrics", timeout=10).body.decode()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if (found := _SAMPLE.match(line)) is not None:
            samples[found.group(1) + (found.group(2) or "")] = float(found.group(3))
    return samples


def metric_sum(samples: dict[str, float], prefix: str) -> float:
    return sum(value for name, value in samples.items() if name.startswith(prefix))


def tail_windows(times: list[float], start: float, end: float, window: float) -> list[int]:
    """Calls in consecutive windows of ``window`` seconds from ``start`` to ``end`` (whole windows)."""
    counts = []
    moment = start
    while moment + window <= end:
        counts.append(sum(1 for t in times if moment <= t < moment + window))
        moment += window
    return counts


# --------------------------------------------------------------------------- the harness


@dataclass
class TmpFactory:
    """Enough of pytest's tmp_path_factory for the e2e fixtures called directly."""

    root: Path

    def mktemp(self, name: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.root))


@dataclass
class Stack:
    cluster: KubeCluster
    minio: MinioServer
    s3: S3Client
    identity: fixtures.OperatorIdentity
    workdir: Path


@contextmanager
def components(workdir: Path) -> Iterator[Stack]:
    """The e2e tier's components, the CRD, the chart's RBAC and the namespace with its Secrets."""
    binaries = locate_binaries().binaries()
    factory = TmpFactory(workdir)
    with ExitStack() as stack:
        cluster = stack.enter_context(running_cluster(binaries))
        minio = stack.enter_context(running_minio(binaries.minio))
        crd = install_crd(cluster)
        fixtures.operator_crd.__wrapped__(cluster, crd)  # type: ignore[attr-defined]
        rbac = fixtures.chart_rbac.__wrapped__(binaries, factory)  # type: ignore[attr-defined]
        identity = fixtures.operator_identity.__wrapped__(cluster, rbac, factory)  # type: ignore[attr-defined]
        s3: S3Client = fixtures.s3.__wrapped__(minio)  # type: ignore[attr-defined]
        manifests = [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
            fixtures.secret_manifest(
                fixtures.CREDENTIALS_SECRET, {"api-key": fixtures.API_KEY, "folder-id": fixtures.FOLDER_ID}
            ),
            fixtures.secret_manifest(
                fixtures.STORAGE_SECRET,
                {
                    "access-key-id": minio.access_key,
                    "secret-access-key": minio.secret_key,
                    "endpoint": minio.endpoint,
                    "region": minio.region,
                },
            ),
        ]
        fixtures.run_kubectl(cluster, "apply", "-f", "-", stdin=json.dumps(manifests[0]))
        items = {"apiVersion": "v1", "kind": "List", "items": manifests[1:]}
        fixtures.run_kubectl(cluster, "apply", "-n", NAMESPACE, "-f", "-", stdin=json.dumps(items))
        yield Stack(cluster=cluster, minio=minio, s3=s3, identity=identity, workdir=workdir)


def upload(s3: S3Client, bucket: str, keys: dict[str, str]) -> float:
    """Put every job's object (a copy of the corpus file its key ends with) with 16 threads; the
    seconds it took."""
    contents = {name: (AUDIO_DIR / name).read_bytes() for name in SOURCES}
    started = time.monotonic()

    def put(key: str) -> None:
        s3.put_object(Bucket=bucket, Key=key, Body=contents[key.rsplit("/", 1)[-1]])

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, keys.values()))
    return time.monotonic() - started


def job_keys(prefix: str, jobs: int) -> dict[str, str]:
    """Job name -> object key; the corpus file is the key's last part."""
    names = list(SOURCES)
    return {f"{prefix}-{i:05d}": f"{prefix}/{i:05d}/{names[i % len(names)]}" for i in range(jobs)}


def audio_seconds(operation: EmulatedOperation) -> float | None:
    return SOURCES.get(operation.audio_path.rsplit("/", 1)[-1])


class Kube:
    """Concurrent requests to the apiserver as the admin (aiohttp), and a watch of the jobs."""

    def __init__(self, cluster: KubeCluster) -> None:
        self.cluster = cluster
        self.session = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {cluster.admin_token}"},
            connector=aiohttp.TCPConnector(ssl=cluster.ssl_context, limit=64),
            timeout=aiohttp.ClientTimeout(total=None, sock_read=None),
        )
        self.path = f"/apis/{GROUP}/{VERSION}/namespaces/{NAMESPACE}/{JOB_PLURAL}"
        #: job name -> phase, and time.time() when each job was first seen finished.
        self.phases: dict[str, str] = {}
        self.finished_at: dict[str, float] = {}
        self.checks: dict[str, int] = {}
        self.operation_ids: dict[str, str] = {}

    async def close(self) -> None:
        await self.session.close()

    async def create_jobs(self, bucket: str, keys: dict[str, str]) -> float:
        """POST every job, 48 at a time; the seconds it took."""
        started = time.monotonic()
        pending = iter(keys.items())

        async def worker() -> None:
            for name, key in pending:
                body = {
                    "apiVersion": API_VERSION,
                    "kind": JOB_KIND,
                    "metadata": {"name": name},
                    "spec": {
                        "source": {"bucket": bucket, "key": key},
                        "recognition": {"languageCode": "en-US"},
                    },
                }
                async with self.session.post(self.cluster.server + self.path, json=body) as response:
                    if response.status != 201:
                        raise RuntimeError(f"creating {name}: {response.status} {await response.text()}")

        await asyncio.gather(*(worker() for _ in range(48)))
        return time.monotonic() - started

    async def watch(self) -> None:
        """Follow the jobs for ever (a fresh LIST + WATCH whenever the stream ends)."""
        while True:
            async with self.session.get(self.cluster.server + self.path) as response:
                listed = await response.json()
            for item in listed["items"]:
                self._see(item)
            version = listed["metadata"]["resourceVersion"]
            url = f"{self.cluster.server}{self.path}?watch=true&resourceVersion={version}"
            try:
                async with self.session.get(url) as response:
                    async for line in response.content:
                        event = json.loads(line)
                        if event.get("type") in ("ADDED", "MODIFIED"):
                            self._see(event["object"])
            except (aiohttp.ClientError, ValueError):
                await asyncio.sleep(0.5)

    def _see(self, item: dict[str, Any]) -> None:
        name = item["metadata"]["name"]
        status = item.get("status") or {}
        phase = status.get("phase") or "New"
        self.phases[name] = phase
        self.checks[name] = int(status.get("checks") or 0)
        if status.get("operationId"):
            self.operation_ids[name] = status["operationId"]
        if phase in ("Succeeded", "Failed") and name not in self.finished_at:
            self.finished_at[name] = time.time()

    def count(self, prefix: str, *phases: str) -> int:
        return sum(1 for name, phase in self.phases.items() if name.startswith(prefix) and phase in phases)


def operator_env(
    speechkit: SpeechKitEmulator, stack: Stack, window: float, metrics_port: int
) -> dict[str, str]:
    """operator_environment() without the e2e tier's speed-ups: the shipped defaults, plus the
    compressed window and the metrics port."""
    env = fixtures.operator_environment(speechkit, stack.identity.kubeconfig)
    for name in E2E_SPEEDUPS:
        env.pop(f"SPEECHKIT_OPERATOR_{name}", None)
    env["SPEECHKIT_OPERATOR_QUOTA_WINDOW_SECONDS"] = repr(window)
    env["SPEECHKIT_OPERATOR_METRICS_PORT"] = str(metrics_port)
    return env


async def first_check_after(speechkit: SpeechKitEmulator, since: float, within: float) -> float | None:
    """time.monotonic() of the first check charged at the emulator after ``since``."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        later = [t for t in speechkit.quota_charges["operation"][-2000:] if t >= since]
        if later:
            return later[0]
        await asyncio.sleep(0.05)
    return None


async def idle(pid: int, speechkit: SpeechKitEmulator, seconds: float) -> dict[str, float]:
    """The operator's CPU (cores) and RSS over ``seconds``, with the calls it made meanwhile."""
    checks, submits = len(speechkit.quota_charges["operation"]), len(speechkit.quota_charges["submit"])
    cpu, started = cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(seconds)
    elapsed = time.monotonic() - started
    return {
        "cores": (cpu_seconds(pid) - cpu) / elapsed,
        "rss_mb": rss_mb(pid),
        "seconds": elapsed,
        "checks": len(speechkit.quota_charges["operation"]) - checks,
        "submissions": len(speechkit.quota_charges["submit"]) - submits,
    }


# --------------------------------------------------------------------------- one run


@dataclass
class RunResult:
    jobs: int
    window: float
    figures: dict[str, Any] = field(default_factory=dict)
    baseline: BaselineResult | None = None


def show(title: str, figures: dict[str, Any]) -> None:
    print(f"\n== {title}")
    for name, value in figures.items():
        shown = (
            f"{value:,.3f}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else value
        )
        print(f"  {name:52s} {shown}")


async def run_scale(args: argparse.Namespace, jobs: int, workdir: Path) -> RunResult:
    window: float = args.window
    result = RunResult(jobs=jobs, window=window)
    fig = result.figures
    with components(workdir) as stack:
        bucket = f"scale-{jobs}"
        stack.s3.create_bucket(Bucket=bucket)
        keys = job_keys("job", jobs)
        fig["upload seconds (MinIO)"] = await asyncio.to_thread(upload, stack.s3, bucket, keys)
        model = ProcessingModel(seconds_per_audio_second=args.pace, audio_seconds=audio_seconds, seed="scale")
        if not args.baseline_only:
            await run_operator(args, jobs, workdir, stack, bucket, keys, model, fig)
        if args.baseline or args.baseline_only:
            result.baseline = await run_seed_baseline(
                keys=keys,
                bucket=bucket,
                s3=stack.s3,
                model=model,
                window=window,
                period=args.baseline_period or 180.0 * window / 3600.0,
                api_key=fixtures.API_KEY,
                budget=args.timeout,
            )
            show(f"seed baseline, {jobs:,} jobs", result.baseline.figures)
    return result


async def run_operator(
    args: argparse.Namespace,
    jobs: int,
    workdir: Path,
    stack: Stack,
    bucket: str,
    keys: dict[str, str],
    model: ProcessingModel,
    fig: dict[str, Any],
) -> None:
    """The operator as shipped over ``jobs`` jobs created at once (and, with ``--in-flight``, as many
    more held in flight and a restart)."""
    window: float = args.window
    async with AsyncExitStack() as exits:
        speechkit = await exits.enter_async_context(corpus_emulator(fixtures.API_KEY))
        speechkit.quota_window_seconds = window
        speechkit.processing_model = model
        kube = Kube(stack.cluster)
        exits.push_async_callback(kube.close)
        fig["job creation seconds (operator stopped)"] = await kube.create_jobs(bucket, keys)
        watcher = asyncio.create_task(kube.watch())
        exits.callback(watcher.cancel)
        metrics_port = free_port()
        runner = fixtures.OperatorRunner(
            env=operator_env(speechkit, stack, window, metrics_port), log_dir=workdir / "operator-logs"
        )
        exits.callback(runner.stop_all)
        started_wall, started = time.time(), time.monotonic()
        process = await runner.start()
        assert process.pid is not None
        pid = process.pid
        deadline = started + args.timeout
        while kube.count("job-", "Succeeded", "Failed") < jobs:
            process.check_running()
            if time.monotonic() > deadline:
                print(f"  timed out: {collections_of(kube.phases)}")
                break
            if backlog_measured(args, speechkit, kube):
                break
            await asyncio.sleep(1.0)
        finished, cpu, rss = time.monotonic(), cpu_seconds(pid), rss_mb(pid)
        fig["operator RSS at the end of the run (MB)"] = rss
        samples = await asyncio.to_thread(scrape, metrics_port)
        record_main(fig, args, jobs, speechkit, kube, samples, started, started_wall, finished, cpu)
        show(f"operator, {jobs:,} jobs (window {window:g} s)", fig)
        if args.in_flight:
            await in_flight(args, jobs, bucket, stack, speechkit, kube, runner, metrics_port, fig)
            show(f"operator, {jobs:,} jobs in flight", fig)
        log = runner.output()
        fig["operator log: ERROR lines / tracebacks"] = f"{log.count(' ERROR ')} / {log.count('Traceback')}"
        print(f"  operator logs: {runner.log_dir}")


def backlog_measured(args: argparse.Namespace, speechkit: SpeechKitEmulator, kube: Kube) -> bool:
    """With ``--backlog-windows K``: whether K windows of submissions have passed (the run stops)."""
    submits = speechkit.quota_charges["submit"]
    if not args.backlog_windows or not submits:
        return False
    if time.monotonic() <= submits[0] + (args.backlog_windows + 0.5) * args.window:
        return False
    print(f"  stopped after {args.backlog_windows} windows of backlog: {collections_of(kube.phases)}")
    return True


def collections_of(phases: dict[str, str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for phase in phases.values():
        counts[phase] = counts.get(phase, 0) + 1
    return counts


def record_main(
    fig: dict[str, Any],
    args: argparse.Namespace,
    jobs: int,
    speechkit: SpeechKitEmulator,
    kube: Kube,
    samples: dict[str, float],
    started: float,
    started_wall: float,
    finished: float,
    cpu: float,
) -> None:
    window: float = args.window
    submits = speechkit.quota_charges["submit"]
    checks = speechkit.quota_charges["operation"]
    succeeded = kube.count("job-", "Succeeded")
    fig["jobs"] = jobs
    fig["succeeded / failed"] = f"{succeeded} / {kube.count('job-', 'Failed')}"
    fig["wall seconds (operator start -> all finished)"] = finished - started
    fig["peak submissions in any window (quota 500)"] = peak_in_window(submits, window)
    fig["peak checks in any window (quota 2,500)"] = peak_in_window(checks, window)
    fig["429s received (emulator quota_refusals)"] = sum(speechkit.quota_refusals.values())
    fig["429s as the operator counted them (metrics)"] = int(
        metric_sum(samples, "speechkit_operator_api_throttled")
    )
    # The backlog: submissions per whole window from the first submission while jobs were still queued.
    if submits:
        last_queued = submits[-1] if len(submits) < jobs else submits[jobs - 1]
        per_window = tail_windows(submits, submits[0], last_queued, window)
        if per_window:
            fig["backlog: submissions per full window (min/mean)"] = (
                f"{min(per_window)} / {statistics.mean(per_window):.1f} over {len(per_window)} windows"
            )
            fig["backlog: mean submissions per window / quota"] = statistics.mean(per_window) / SUBMIT_QUOTA
    operations = {op.id: op for op in speechkit.operations.values()}
    per_job, fast_per_job, latencies, fast_latencies = [], [], [], []
    for name, operation_id in kube.operation_ids.items():
        operation = operations.get(operation_id)
        if operation is None or kube.phases.get(name) != "Succeeded":
            continue
        per_job.append(float(operation.checks))
        done, seen = operation.completed_wall, kube.finished_at.get(name)
        latency = seen - done if done is not None and seen is not None else None
        if latency is not None:
            latencies.append(latency)
        if not operation.slow:
            fast_per_job.append(float(operation.checks))
            if latency is not None:
                fast_latencies.append(latency)
    fig["checks per job, mean / p95 (at the emulator)"] = (
        f"{_mean(per_job):.2f} / {percentile(per_job, 0.95):.0f}"
    )
    fig["checks per job, mean, the 95 % not slow"] = _mean(fast_per_job)
    fig["checks per job, mean (operator's status.checks)"] = _mean(
        [float(kube.checks[name]) for name in kube.operation_ids if kube.phases.get(name) == "Succeeded"]
    )
    fig["detection latency p50 / p95 s (all)"] = (
        f"{percentile(latencies, 0.5):.2f} / {percentile(latencies, 0.95):.2f}"
    )
    fig["detection latency p50 / p95 s (the 95 % not slow)"] = (
        f"{percentile(fast_latencies, 0.5):.2f} / {percentile(fast_latencies, 0.95):.2f}"
    )
    writes = {
        name.split('kind="')[1].rstrip('"}'): int(value)
        for name, value in samples.items()
        if name.startswith("speechkit_operator_kubernetes_writes") and 'kind="' in name
    }
    total_writes = sum(writes.values())
    fig["Kubernetes writes by kind (operator's metrics)"] = json.dumps(writes)
    fig["Kubernetes writes per successful job"] = total_writes / succeeded if succeeded else float("nan")
    fig["operator CPU seconds per job"] = cpu / jobs
    fig["operator CPU seconds total / mean cores"] = f"{cpu:.1f} / {cpu / (finished - started):.2f}"
    del started_wall


def _mean(values: list[float]) -> float:
    return statistics.mean(values) if values else float("nan")


async def in_flight(
    args: argparse.Namespace,
    jobs: int,
    bucket: str,
    stack: Stack,
    speechkit: SpeechKitEmulator,
    kube: Kube,
    runner: fixtures.OperatorRunner,
    metrics_port: int,
    fig: dict[str, Any],
) -> None:
    """N more jobs whose operations take hours: submitted, then idle, then a restart with them Running."""
    speechkit.processing_model = ProcessingModel(
        seconds_per_audio_second=3600.0, slow_share=0.0, audio_seconds=audio_seconds, seed="hold"
    )
    # The same objects: these jobs never finish, so they write no outputs next to them.
    keys = {name.replace("job-", "hold-"): key for name, key in job_keys("job", jobs).items()}
    fig["in flight: job creation seconds"] = await kube.create_jobs(bucket, keys)
    started = time.monotonic()
    while kube.count("hold-", "Running") < jobs:
        runner.check_running()
        if time.monotonic() - started > args.timeout:
            print(f"  in flight: timed out: {collections_of(kube.phases)}")
            break
        await asyncio.sleep(1.0)
    fig["in flight: seconds until all Running"] = time.monotonic() - started
    process = runner.current
    assert process is not None and process.pid is not None
    busy = await idle(process.pid, speechkit, args.idle_seconds)
    fig[f"in flight, window {args.window:g} s: cores / RSS MB"] = (
        f"{busy['cores']:.3f} / {busy['rss_mb']:.0f}"
    )
    fig[f"in flight, window {args.window:g} s: checks made in {busy['seconds']:.0f} s"] = int(busy["checks"])
    fig["429s received before the restart (in flight, compressed window)"] = sum(
        speechkit.quota_refusals.values()
    )
    # A restart with every job Running, under the shipped (uncompressed) window on both sides.
    await runner.terminate()
    refused_before = sum(speechkit.quota_refusals.values())
    speechkit.quota_window_seconds = 3600.0
    speechkit.reset_quota_windows()
    runner.env["SPEECHKIT_OPERATOR_QUOTA_WINDOW_SECONDS"] = "3600"
    since = time.monotonic()
    restarted = await runner.start()
    assert restarted.pid is not None

    async def all_held() -> float | None:
        while time.monotonic() - since < 120:
            with contextlib.suppress(OSError):
                held = metric_sum(await asyncio.to_thread(scrape, metrics_port), "speechkit_operator_jobs{")
                if held >= jobs:
                    return time.monotonic()
            await asyncio.sleep(0.25)
        return None

    first, loaded_at = await asyncio.gather(first_check_after(speechkit, since, within=120), all_held())
    fig[f"startup with {jobs:,} Running: seconds to first check"] = (
        first - since if first is not None else "no check in 120 s"
    )
    fig[f"startup with {jobs:,} Running: seconds until it holds them all"] = (
        loaded_at - since if loaded_at is not None else "not within 120 s"
    )
    fig["startup: CPU seconds until then"] = cpu_seconds(restarted.pid)
    await asyncio.sleep(10)  # past the startup burst
    calm = await idle(restarted.pid, speechkit, args.idle_seconds)
    fig["in flight, window 3600 s: cores / RSS MB"] = f"{calm['cores']:.3f} / {calm['rss_mb']:.0f}"
    fig[f"in flight, window 3600 s: checks made in {calm['seconds']:.0f} s"] = int(calm["checks"])
    fig["429s received after the restart"] = sum(speechkit.quota_refusals.values()) - refused_before
    del stack


# --------------------------------------------------------------------------- main


def summary(results: list[RunResult]) -> None:
    rows: list[tuple[str, Callable[[RunResult], Any]]] = [
        ("jobs", lambda r: r.jobs),
    ]
    names: list[str] = []
    for result in results:
        names += [name for name in result.figures if name not in names and name != "jobs"]
    print(
        "\n== summary (operator as shipped; MinIO; window compressed to "
        f"{results[0].window:g} s = 1 hour / {3600 / results[0].window:g})"
    )
    for name in ["jobs", *names]:
        cells = [_cell(r.figures.get(name, "")) for r in results]
        print(f"  {name:58s} " + " | ".join(f"{c:>24s}" for c in cells))
    if any(r.baseline is not None for r in results):
        print("\n== summary, seed baseline")
        base_names: list[str] = []
        for result in results:
            if result.baseline is not None:
                base_names += [n for n in result.baseline.figures if n not in base_names]
        for name in base_names:
            cells = [_cell(r.baseline.figures.get(name, "")) if r.baseline else "" for r in results]
            print(f"  {name:58s} " + " | ".join(f"{c:>24s}" for c in cells))
    del rows


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, action="append", help="jobs in a run (repeatable); default 100")
    parser.add_argument("--window", type=float, default=20.0, help="the compressed quota hour, seconds")
    parser.add_argument("--pace", type=float, default=2.0, help="emulator processing s per audio s")
    parser.add_argument("--timeout", type=float, default=1800.0, help="budget of a phase, seconds")
    parser.add_argument("--idle-seconds", type=float, default=45.0)
    parser.add_argument(
        "--backlog-windows",
        type=int,
        default=0,
        help="stop after this many quota windows of backlog (to measure the submission rate)",
    )
    parser.add_argument(
        "--in-flight", action="store_true", help="also measure N jobs in flight and a restart"
    )
    parser.add_argument("--baseline", action="store_true", help="also run the seed script's algorithm")
    parser.add_argument(
        "--baseline-only", action="store_true", help="run only the seed script's algorithm (no operator)"
    )
    parser.add_argument(
        "--baseline-period",
        type=float,
        default=0.0,
        help="the seed's cron period (default: 180 s compressed)",
    )
    args = parser.parse_args()
    results = []
    for jobs in args.jobs or [100]:
        # Kept: the operator's logs are under it.
        workdir = Path(tempfile.mkdtemp(prefix=f"speechkit-scale-{jobs}-"))
        results.append(asyncio.run(run_scale(args, jobs, workdir)))
    summary(results)


if __name__ == "__main__":
    main()
