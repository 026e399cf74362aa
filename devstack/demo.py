"""The one-command demo: the whole product on this machine, with no cluster and no cloud account.

1. Real kube-apiserver + etcd + kube-controller-manager and MinIO (built by ``.ci/build-components``
   on first use), or the current kubectl context with ``--current-context``.
2. The TranscriptionJob CRD, the self-hosted recognition service (``speechkit-operator serve``) and
   the operator (``speechkit-operator run``, ``backend: self-hosted``).
3. Sample audio from ``examples/audio`` uploaded to MinIO (Ogg Opus, MP3 and a stereo WAV) and a
   TranscriptionJob for each.
4. The jobs shown as they progress, like ``kubectl get tj -w``; then each transcript and where its
   outputs are.
5. The stack left running until Ctrl-C, with instructions for kubectl; everything stopped on exit.

Run it with ``./scripts/demo`` (or ``python -m devstack.demo --help``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3

from devstack.components import (
    BUILD_SCRIPT,
    REPO_ROOT,
    ComponentError,
    ManagedProcess,
    MinioServer,
    free_port,
    http_request,
    locate_binaries,
    running_cluster,
    running_minio,
    wait_until,
)

NAMESPACE = "speechkit-demo"
BUCKET = "recordings"
API_KEY = "demo-api-key"
#: The samples ship with the repository (see their ATTRIBUTION.md), so a plain clone runs the demo.
DEFAULT_AUDIO_DIR = REPO_ROOT / "examples" / "audio"
TERMINAL = ("Succeeded", "Failed")


@dataclass(frozen=True)
class Sample:
    job: str
    file: str
    note: str
    language: str = "en-US"


SAMPLES = (
    Sample("all-five-sentences", "librivox-all.ogg", "28 s of Ogg Opus"),
    Sample("stereo-interview", "librivox-stereo-0880L-0930R.wav", "a stereo WAV, one speaker per channel"),
    Sample("short-mp3", "librivox-0870.mp3", "7 s of MP3"),
    Sample("russian-greeting", "ru-greeting.wav", "7 s of Russian (Whisper; synthesised)", "ru-RU"),
)


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


# --------------------------------------------------------------------------- Kubernetes access


@dataclass
class Kube:
    """kubectl against either the demo's own cluster or the current context."""

    kubectl: str
    env: dict[str, str]
    kubeconfig: str | None

    def run(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        result = subprocess.run(
            [self.kubectl, *args],
            input=stdin,
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        if check and result.returncode != 0:
            raise ComponentError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def apply(self, manifest: dict[str, Any]) -> None:
        self.run("apply", "-f", "-", stdin=json.dumps(manifest))


# --------------------------------------------------------------------------- the stack


def ensure_components(names: Sequence[str]) -> None:
    lookup = locate_binaries()
    if not any(name in lookup.missing for name in names):
        return
    say(f"building the real components once with {BUILD_SCRIPT} (about 20 minutes on 2 cores; then cached)")
    subprocess.run([str(REPO_ROOT / BUILD_SCRIPT)], check=True, cwd=REPO_ROOT)


@contextlib.contextmanager
def kubernetes(current_context: bool) -> Iterator[Kube]:
    if current_context:
        kubectl = shutil.which("kubectl") or str(locate_binaries().binaries().kubectl)
        kube = Kube(kubectl=kubectl, env=dict(os.environ), kubeconfig=os.environ.get("KUBECONFIG"))
        context = kube.run("config", "current-context").strip()
        say(f"using the current kubectl context {context!r}")
        yield kube
        return
    say("starting etcd, kube-apiserver and kube-controller-manager on loopback")
    with running_cluster(locate_binaries().binaries()) as cluster:
        say(f"Kubernetes API at {cluster.server}")
        yield Kube(
            kubectl=str(cluster.binaries.kubectl), env=cluster.env(), kubeconfig=str(cluster.kubeconfig)
        )


@contextlib.contextmanager
def recognition_service(workdir: Path, storage_endpoint: str) -> Iterator[str]:
    """The service, allowed to download from the demo's MinIO only (the operator gives it presigned
    http URLs there); its operations live in memory."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = ManagedProcess(
        "speechkit-operator serve",
        [sys.executable, "-m", "speechkit_operator", "serve"],
        workdir / "serve.log",
        env={
            **os.environ,
            "SPEECHKIT_SERVE_HOST": "127.0.0.1",
            "SPEECHKIT_SERVE_PORT": str(port),
            # The demo streams nothing: no gRPC server (its default port, 8089, may be taken).
            "SPEECHKIT_SERVE_GRPC_PORT": "0",
            "SPEECHKIT_SERVE_API_KEYS": API_KEY,
            "SPEECHKIT_SERVE_WORKERS": "2",
            "SPEECHKIT_SERVE_ALLOWED_HOSTS": urlsplit(storage_endpoint).netloc,
        },
    )
    say(f"starting the self-hosted recognition service at {url} (pocketsphinx, 2 worker processes)")
    process.start()
    try:
        wait_until(
            "the recognition service",
            lambda: http_request(f"{url}/readyz", timeout=2).status == 200,
            watch=[process],
            timeout=180,
        )
        yield url
    finally:
        process.stop()


@contextlib.contextmanager
def operator(kube: Kube, service_url: str, namespace: str, workdir: Path) -> Iterator[ManagedProcess]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("SPEECHKIT_OPERATOR_")}
    if kube.kubeconfig:
        env["KUBECONFIG"] = kube.kubeconfig
    env.update(
        SPEECHKIT_OPERATOR_BACKEND="self-hosted",
        SPEECHKIT_OPERATOR_SELF_HOSTED_URL=service_url,
        SPEECHKIT_OPERATOR_FIRST_CHECK_MIN_SECONDS="2",
        SPEECHKIT_OPERATOR_SECONDS_PER_AUDIO_MINUTE="5",
        SPEECHKIT_OPERATOR_POLL_INITIAL_INTERVAL_SECONDS="2",
        SPEECHKIT_OPERATOR_POLL_MAX_INTERVAL_SECONDS="5",
        SPEECHKIT_OPERATOR_SUBMIT_RETRY_BASE_SECONDS="2",
        SPEECHKIT_OPERATOR_METRICS_PORT=str(free_port()),
        # The storage Secret names the demo's MinIO, on loopback at a port of its own.
        SPEECHKIT_OPERATOR_STORAGE_ENDPOINTS="http://127.0.0.1:*",
    )
    process = ManagedProcess(
        "speechkit-operator run",
        [sys.executable, "-m", "speechkit_operator", "run", "--namespace", namespace],
        workdir / "operator.log",
        env=env,
    )
    say(f"starting the operator (backend: self-hosted), watching namespace {namespace}")
    process.start()
    try:
        yield process
    finally:
        process.stop()


# --------------------------------------------------------------------------- the jobs


def upload_samples(minio: MinioServer, audio_dir: Path) -> Any:
    s3 = boto3.client(
        "s3",
        endpoint_url=minio.endpoint,
        region_name=minio.region,
        aws_access_key_id=minio.access_key,
        aws_secret_access_key=minio.secret_key,
    )
    s3.create_bucket(Bucket=BUCKET)
    for sample in SAMPLES:
        s3.upload_file(str(audio_dir / sample.file), BUCKET, f"incoming/{sample.file}")
        say(f"uploaded s3://{BUCKET}/incoming/{sample.file} ({sample.note})")
    return s3


def apply_jobs(kube: Kube, minio: MinioServer, namespace: str) -> None:
    kube.run("apply", "-f", str(REPO_ROOT / "deploy" / "crds"))
    kube.run("wait", "--for=condition=Established", "crd/transcriptionjobs.speechkit.dev", "--timeout=60s")
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "speechkit-credentials", "namespace": namespace},
            "stringData": {"api-key": API_KEY},
        }
    )
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "speechkit-storage", "namespace": namespace},
            "stringData": {
                "access-key-id": minio.access_key,
                "secret-access-key": minio.secret_key,
                "endpoint": minio.endpoint,
                "region": minio.region,
            },
        }
    )
    for sample in SAMPLES:
        kube.apply(
            {
                "apiVersion": "speechkit.dev/v1alpha1",
                "kind": "TranscriptionJob",
                "metadata": {"name": sample.job, "namespace": namespace},
                "spec": {
                    "source": {"bucket": BUCKET, "key": f"incoming/{sample.file}"},
                    "output": {"prefix": "transcripts/"},
                    "recognition": {"languageCode": sample.language},
                },
            }
        )
    say(f"applied {len(SAMPLES)} TranscriptionJobs in namespace {namespace}")


def _row(job: dict[str, Any]) -> tuple[str, ...]:
    status = job.get("status") or {}
    duration = (status.get("audio") or {}).get("durationSeconds")
    return (
        job["metadata"]["name"],
        status.get("phase") or "",
        job["spec"].get("recognition", {}).get("languageCode", ""),
        "" if duration is None else f"{duration:g}",
        status.get("message") or "",
    )


def watch_jobs(kube: Kube, namespace: str, processes: Sequence[ManagedProcess], timeout: float) -> list[Any]:
    """Print a line whenever a job changes, like ``kubectl get tj -w -o wide``; return the jobs."""
    widths = (20, 10, 9, 9)
    header = ("NAME", "PHASE", "LANGUAGE", "DURATION", "MESSAGE")
    print("   ".join(h.ljust(w) for h, w in zip(header, (*widths, 0), strict=True)).rstrip(), flush=True)
    seen: dict[str, tuple[str, ...]] = {}
    deadline = time.monotonic() + timeout
    while True:
        for process in processes:
            process.check_running()
        jobs = json.loads(kube.run("get", "transcriptionjobs", "-n", namespace, "-o", "json"))["items"]
        for job in jobs:
            row = _row(job)
            if seen.get(row[0]) != row:
                seen[row[0]] = row
                cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
                print("   ".join([*cells, row[4]]).rstrip(), flush=True)
        phases = [(job.get("status") or {}).get("phase") for job in jobs]
        if len(jobs) == len(SAMPLES) and all(phase in TERMINAL for phase in phases):
            return list(jobs)
        if time.monotonic() > deadline:
            raise ComponentError(f"the jobs did not finish within {timeout:.0f} s")
        time.sleep(1)


def show_results(jobs: Sequence[Any], s3: Any) -> bool:
    ok = True
    for job in jobs:
        name, status = job["metadata"]["name"], job.get("status") or {}
        print(f"\n--- {name}: {status.get('phase')} ---", flush=True)
        if status.get("phase") != "Succeeded":
            ok = False
            print(f"    {status.get('reason')}: {status.get('message')}")
            continue
        outputs: dict[str, str] = status.get("outputs") or {}
        bucket, _, key = outputs["txt"].removeprefix("s3://").partition("/")
        text = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
        for line in text.strip().splitlines():
            print(f"    {line}")
        print("    outputs:")
        for output, uri in sorted(outputs.items()):
            print(f"      {output:6} {uri}")
    return ok


def instructions(kube: Kube, minio: MinioServer, service_url: str, namespace: str, workdir: Path) -> None:
    print("\nThe stack keeps running until Ctrl-C. In another terminal:")
    if kube.kubeconfig:
        print(f"  export KUBECONFIG={kube.kubeconfig}")
    print(f"  {kube.kubectl} get tj -n {namespace} -o wide")
    print(f"  {kube.kubectl} describe tj -n {namespace} {SAMPLES[0].job}")
    print(f"  MinIO: {minio.endpoint} (access key {minio.access_key}, secret key {minio.secret_key})")
    print(f"  recognition service: {service_url} (Authorization: Api-Key {API_KEY})")
    print(f"  logs: {workdir}/operator.log, {workdir}/serve.log", flush=True)


def wait_for_ctrl_c() -> None:
    stop = False

    def handle(signum: int, frame: object) -> None:
        del signum, frame
        nonlocal stop
        stop = True

    previous = signal.signal(signal.SIGTERM, handle)
    try:
        while not stop:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="devstack.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--current-context",
        action="store_true",
        help="use the cluster of the current kubectl context instead of starting one",
    )
    parser.add_argument(
        "--exit-when-done",
        action="store_true",
        help="stop the stack as soon as every job has finished (for scripts and tests)",
    )
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for the jobs")
    parser.add_argument("--audio-dir", type=Path, default=DEFAULT_AUDIO_DIR, help="where the sample audio is")
    args = parser.parse_args(argv)

    missing = [s.file for s in SAMPLES if not (args.audio_dir / s.file).is_file()]
    if missing:
        print(f"demo: sample audio missing in {args.audio_dir}: {', '.join(missing)}", file=sys.stderr)
        return 2
    ensure_components(["minio"] if args.current_context else ["etcd", "kube-apiserver", "minio"])

    workdir = Path(tempfile.mkdtemp(prefix="speechkit-demo-"))
    try:
        with (
            kubernetes(args.current_context) as kube,
            running_minio(locate_binaries().binaries().minio) as minio,
        ):
            say(f"MinIO at {minio.endpoint}")
            s3 = upload_samples(minio, args.audio_dir)
            with (
                recognition_service(workdir, minio.endpoint) as service_url,
                operator(kube, service_url, NAMESPACE, workdir) as operator_process,
            ):
                apply_jobs(kube, minio, NAMESPACE)
                jobs = watch_jobs(kube, NAMESPACE, [operator_process], args.timeout)
                ok = show_results(jobs, s3)
                print(f"\n{'every job Succeeded' if ok else 'some jobs did not succeed'}", flush=True)
                if not args.exit_when_done:
                    instructions(kube, minio, service_url, NAMESPACE, workdir)
                    wait_for_ctrl_c()
                if args.current_context:
                    kube.run("delete", "namespace", NAMESPACE, "--wait=false", check=False)
        say("stopped everything")
        return 0 if ok else 1
    except ComponentError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        for log in sorted(workdir.glob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-30:]
            print(f"--- {log.name}:\n" + "\n".join(tail), file=sys.stderr)
        return 1
    finally:
        if not os.environ.get("SPEECHKIT_E2E_KEEP_TMP"):
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
