"""Fixtures and helpers to run the operator as users run it, on the real e2e components.

* The chart's ServiceAccount and RBAC (cluster-wide default values) are rendered with the built
  helm and applied with the admin kubeconfig; a TokenRequest token of that ServiceAccount goes into
  a kubeconfig of its own, and the operator only ever gets THAT kubeconfig.
* The operator is the `speechkit-operator run --all-namespaces` console script in a subprocess,
  its output in a log file; the SpeechKit emulator runs in the test process, in the module's event
  loop (the tests that use it are marked `asyncio(loop_scope="module")`).
* Every test gets its own namespace (with the credentials and storage Secrets) and its own MinIO
  bucket.

The TranscriptionJob CRD comes from the shared `crd_installed` fixture (tests/e2e/crd_fixtures.py);
`operator_crd` adds a wait until the resource is actually served. tests/e2e/conftest.py imports
the fixtures, so every e2e module can request them by name; modules import only the plain helpers.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import boto3
import pytest
import pytest_asyncio
import yaml
from botocore.config import Config

from devstack.components import (
    REPO_ROOT,
    Binaries,
    KubeCluster,
    ManagedProcess,
    MinioServer,
    Response,
    http_request,
    write_kubeconfig,
)
from speechkit_operator.constants import API_VERSION, GROUP, JOB_KIND, JOB_PLURAL, VERSION
from tests.e2e.crd_fixtures import InstalledCrd
from tests.emulator import SpeechKitEmulator
from tests.support.audio import audio_dir
from tests.support.free_port import free_port
from tests.support.speechkit import corpus_emulator

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

T = TypeVar("T")

CHART = REPO_ROOT / "deploy" / "helm" / "speechkit-operator"
#: The release name equals the chart name, so every chart resource is called `speechkit-operator`.
RELEASE = "speechkit-operator"
OPERATOR_NAMESPACE = "speechkit-system"
SERVICE_ACCOUNT = RELEASE
SERVICE_ACCOUNT_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{SERVICE_ACCOUNT}"
API_KEY = "e2e-speechkit-api-key"
FOLDER_ID = "b1ge2efolder"
CREDENTIALS_SECRET = "speechkit-credentials"
STORAGE_SECRET = "speechkit-storage"
FINALIZER = f"{GROUP}/finalizer"

#: Settings for the operator subprocess: the emulator's URLs are added per run.
FAST_POLLING = {
    "FIRST_CHECK_MIN_SECONDS": "0.5",
    "SECONDS_PER_AUDIO_MINUTE": "0",
    "POLL_INITIAL_INTERVAL_SECONDS": "0.5",
    "POLL_BACKOFF_FACTOR": "1",
    "SUBMIT_RETRY_BASE_SECONDS": "1",
    "METRICS_PORT": "0",
    # Budgets that never bind here; tests of the quota set their own.
    "QUOTA_WINDOW_SECONDS": "1",
    "SUBMIT_QUOTA": "10000",
    "CHECK_QUOTA": "100000",
    # The storage Secrets name MinIO, on loopback at a port of its own.
    "STORAGE_ENDPOINTS": "http://127.0.0.1:*",
}
OPERATOR_START_TIMEOUT = 60.0

# Log lines start with logging's asctime ("2026-01-02 03:04:05,403 "): its milliseconds must not
# read as an HTTP status.
_ASCTIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")
# An HTTP 403 as kopf, the kubernetes client and the operator print it ("(403)", "HTTP 403",
# "403 Forbidden", "status=403"), but not a fraction of a second (".403Z", ",403") or part of a
# longer word: operation ids, names and hashes are random letters and digits ("e03pb75gpp4b4agq403k").
_HTTP_403 = re.compile(r"(?<![\w.,:])403(?!\w)")
_FORBIDDEN = re.compile(r"forbidden", re.IGNORECASE)
_TRACEBACK = "Traceback (most recent call last)"


# --------------------------------------------------------------------------- kubectl and helm


def run_kubectl(
    cluster: KubeCluster,
    *args: str,
    stdin: str | None = None,
    check: bool = True,
    timeout: float = 60,
    kubeconfig: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """kubectl as the admin (or with `kubeconfig`); a failure raises with kubectl's stderr."""
    env = cluster.env()
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    result = subprocess.run(
        [str(cluster.binaries.kubectl), *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"kubectl {' '.join(args)} exited with {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    return result


def render_chart(binaries: Binaries, workdir: Path, *show_only: str) -> list[dict[str, Any]]:
    """`helm template` of the chart with its default values (cluster-wide), as parsed manifests."""
    home = workdir / "helm-home"
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    argv = [str(binaries.helm), "template", RELEASE, str(CHART), "--namespace", OPERATOR_NAMESPACE]
    for template in show_only:
        argv += ["--show-only", template]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False, timeout=120)
    if result.returncode != 0:
        raise AssertionError(f"helm template failed ({result.returncode}):\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def access_allowed(
    cluster: KubeCluster,
    token: str,
    verb: str,
    resource: str,
    *,
    group: str = "",
    subresource: str = "",
    namespace: str = "default",
) -> bool:
    """A SelfSubjectAccessReview made with `token`: may its owner do this?"""
    attributes: dict[str, str] = {"verb": verb, "group": group, "resource": resource}
    if subresource:
        attributes["subresource"] = subresource
    if namespace:
        attributes["namespace"] = namespace
    response = cluster.request(
        "POST",
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        body={
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": attributes},
        },
        token=token,
    )
    assert response.status == 201, (response.status, response.body[:500])
    return bool(response.json()["status"].get("allowed"))


def _ok(response: Response, *statuses: int) -> Any:
    assert response.status in (statuses or (200, 201)), (response.status, response.body[:2000])
    return response.json()


# --------------------------------------------------------------------------- session fixtures


@pytest.fixture(scope="session")
def chart_rbac(e2e_binaries: Binaries, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """The chart's ServiceAccount, ClusterRole and ClusterRoleBinding, and the Role and RoleBinding
    of leader election, for its default values."""
    return render_chart(
        e2e_binaries,
        tmp_path_factory.mktemp("chart"),
        "templates/serviceaccount.yaml",
        "templates/rbac.yaml",
    )


@pytest.fixture(scope="session")
def operator_crd(kube_cluster: KubeCluster, crd_installed: InstalledCrd) -> InstalledCrd:
    """The shared `crd_installed` (deploy/crds/, Established), also served from the watch cache.

    Established is not yet served: until the resource's watch cache is ready the apiserver answers
    429 "storage is (re)initializing", which an operator started at that moment logs as an error.
    """
    deadline = time.monotonic() + 60
    path = f"/apis/{crd_installed.group}/{crd_installed.version}/{crd_installed.plural}"
    while (response := kube_cluster.request("GET", path)).status != 200:
        assert time.monotonic() < deadline, f"{path} is not served: {response.status} {response.body[:300]!r}"
        time.sleep(0.2)
    return crd_installed


@dataclass(frozen=True)
class OperatorIdentity:
    """The chart's ServiceAccount, applied to the cluster, and a kubeconfig that authenticates as it."""

    kubeconfig: Path
    token: str
    user: str


@pytest.fixture(scope="session")
def operator_identity(
    kube_cluster: KubeCluster,
    chart_rbac: list[dict[str, Any]],
    tmp_path_factory: pytest.TempPathFactory,
) -> OperatorIdentity:
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NAMESPACE}}
    manifests = [namespace, *chart_rbac]
    run_kubectl(kube_cluster, "apply", "-f", "-", stdin=yaml.safe_dump_all(manifests))
    token = run_kubectl(
        kube_cluster, "create", "token", SERVICE_ACCOUNT, "-n", OPERATOR_NAMESPACE, "--duration", "6h"
    ).stdout.strip()
    assert token.count(".") == 2, "kubectl create token did not print a JWT"
    path = tmp_path_factory.mktemp("operator-identity") / "operator.kubeconfig"
    write_kubeconfig(
        path, server=kube_cluster.server, ca_cert=kube_cluster.ca_path, user=SERVICE_ACCOUNT, token=token
    )
    # The token is the ServiceAccount's, not an admin's ...
    review = _ok(
        kube_cluster.request(
            "POST",
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            body={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
            token=token,
        )
    )
    assert review["status"]["userInfo"]["username"] == SERVICE_ACCOUNT_USER, review
    # ... and the freshly bound ClusterRole is in force before the operator starts.
    deadline = time.monotonic() + 30
    while not access_allowed(kube_cluster, token, "watch", JOB_PLURAL, group=GROUP):
        assert time.monotonic() < deadline, "the chart's ClusterRoleBinding never took effect"
        time.sleep(0.2)
    return OperatorIdentity(kubeconfig=path, token=token, user=SERVICE_ACCOUNT_USER)


@pytest.fixture(scope="session")
def s3(minio_server: MinioServer) -> S3Client:
    client: S3Client = boto3.client(
        "s3",
        endpoint_url=minio_server.endpoint,
        aws_access_key_id=minio_server.access_key,
        aws_secret_access_key=minio_server.secret_key,
        region_name=minio_server.region,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
    )
    return client


# --------------------------------------------------------------------------- the emulator


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def speechkit() -> AsyncIterator[SpeechKitEmulator]:
    """The SpeechKit emulator in this module's event loop, knowing the transcript of every shared file."""
    async with corpus_emulator(API_KEY) as emulator:
        yield emulator


# --------------------------------------------------------------------------- the operator process


def log_problems(text: str) -> list[str]:
    """Lines of operator output that show a denied Kubernetes request or an unexpected exception."""
    problems = []
    for line in text.splitlines():
        message = _ASCTIME.sub("", line)
        if _HTTP_403.search(message) or _FORBIDDEN.search(message) or _TRACEBACK in message:
            problems.append(line)
    return problems


@dataclass
class OperatorRunner:
    """Starts `speechkit-operator run --all-namespaces` subprocesses, one at a time."""

    env: dict[str, str]
    log_dir: Path
    processes: list[ManagedProcess] = field(default_factory=list)
    #: Several operators at once (leader election decides which one acts).
    many: bool = False
    #: log file -> how far it has been shown (printed for a failing test) / checked for problems
    _shown: dict[Path, int] = field(default_factory=dict)
    _checked: dict[Path, int] = field(default_factory=dict)

    @property
    def current(self) -> ManagedProcess | None:
        if self.processes and self.processes[-1].running():
            return self.processes[-1]
        return None

    def check_running(self) -> None:
        """Fail at once, with its output, when the operator process has died."""
        if self.many:
            return  # the test kills and starts them itself
        if self.current is None:
            raise AssertionError(f"the operator is not running; its output:\n{self.output()}")

    async def start(self) -> ManagedProcess:
        assert self.many or self.current is None, "one operator at a time, unless `many` is set"
        number = len(self.processes) + 1
        port = free_port()
        script = Path(sys.executable).with_name("speechkit-operator")
        process = ManagedProcess(
            f"speechkit-operator #{number}",
            [str(script), "run", "--all-namespaces", "--liveness-port", str(port)],
            self.log_dir / f"operator-{number}.log",
            env=self.env,
        )
        self.processes.append(process)
        # Popen in the event loop's (main) thread: setpriv's parent-death signal follows the thread
        # that started the child, and a worker thread of asyncio.to_thread may end at any time.
        process.start()
        health = f"http://127.0.0.1:{port}/healthz"
        deadline = time.monotonic() + OPERATOR_START_TIMEOUT
        while True:
            process.check_running()
            try:
                if (await asyncio.to_thread(http_request, health, timeout=2)).status == 200:
                    return process
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"the operator did not come up; its output:\n{self.output()}")
            await asyncio.sleep(0.2)

    def log_of(self, process: ManagedProcess) -> str:
        return _read(process.log_path)

    async def kill(self, process: ManagedProcess | None = None) -> int:
        """SIGKILL the running operator: no cleanup, no final patches. Returns its pid."""
        process = process or self.current
        assert process is not None and process.pid is not None, "no operator is running"
        pid = process.pid
        os.kill(pid, signal.SIGKILL)
        await asyncio.to_thread(process.stop)  # reaps it
        return pid

    async def terminate(self, process: ManagedProcess | None = None, *, timeout: float = 60.0) -> bool:
        """SIGTERM the running operator (a graceful stop, as Kubernetes stops a pod) and wait for it
        to exit; SIGKILL it if it is still running after `timeout`. True when it exited by itself."""
        process = process or self.current
        assert process is not None and process.pid is not None, "no operator is running"
        os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while process.running():
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        exited = not process.running()
        if not exited:
            os.kill(process.pid, signal.SIGKILL)
        await asyncio.to_thread(process.stop)  # reaps it
        return exited

    def stop_all(self) -> None:
        for process in self.processes:
            process.stop()

    def output(self, *, since_shown: bool = False) -> str:
        parts = []
        for process in self.processes:
            text = _read(process.log_path)
            start = self._shown.get(process.log_path, 0) if since_shown else 0
            parts.append(f"--- {process.name} ({process.log_path}):\n{text[start:]}")
        return "\n".join(parts)

    def show_new_output(self) -> None:
        """Print what the operators logged since the last call (pytest shows it for failed tests)."""
        print(self.output(since_shown=True))
        for process in self.processes:
            self._shown[process.log_path] = len(_read(process.log_path))

    def new_problems(self, *, mark_checked: bool = False) -> list[str]:
        """Problems (see `log_problems`) logged since the last check that marked them checked."""
        problems = []
        for process in self.processes:
            text = _read(process.log_path)
            problems += log_problems(text[self._checked.get(process.log_path, 0) :])
            if mark_checked:
                self._checked[process.log_path] = len(text)
        return problems


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def operator_environment(speechkit: SpeechKitEmulator, kubeconfig: Path) -> dict[str, str]:
    """The test's environment without Kubernetes or operator settings of its own, plus ours."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SPEECHKIT_OPERATOR_", "KUBERNETES_")) and key != "KUBECONFIG"
    }
    env["KUBECONFIG"] = str(kubeconfig)
    # As the chart's Deployment sets it: leader election's Lease lives in the release namespace.
    env["POD_NAMESPACE"] = OPERATOR_NAMESPACE
    settings = {
        "STT_URL": speechkit.url,
        "STT_V3_URL": speechkit.url,
        "OPERATION_URL": speechkit.url,
        "IAM_TOKEN_URL": f"{speechkit.url}/iam/v1/tokens",
        **FAST_POLLING,
    }
    env.update({f"SPEECHKIT_OPERATOR_{key}": value for key, value in settings.items()})
    return env


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def operator_runner(
    speechkit: SpeechKitEmulator,
    operator_identity: OperatorIdentity,
    operator_crd: InstalledCrd,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[OperatorRunner]:
    del operator_crd  # only needed to exist before the operator starts
    runner = OperatorRunner(
        env=operator_environment(speechkit, operator_identity.kubeconfig),
        log_dir=tmp_path_factory.mktemp("operator-logs"),
    )
    try:
        yield runner
    finally:
        await asyncio.to_thread(runner.stop_all)


@pytest_asyncio.fixture(loop_scope="module")
async def operator(operator_runner: OperatorRunner) -> AsyncIterator[OperatorRunner]:
    """The module's operator, running; its output of this test is printed (shown when the test fails)."""
    if operator_runner.current is None:
        await operator_runner.start()
    try:
        yield operator_runner
    finally:
        operator_runner.show_new_output()


# --------------------------------------------------------------------------- per-test resources


@dataclass
class E2E:
    """One test's namespace and bucket, with the cluster, MinIO, the emulator and the operator."""

    cluster: KubeCluster
    minio: MinioServer
    s3: S3Client
    speechkit: SpeechKitEmulator
    operator: OperatorRunner
    namespace: str
    bucket: str

    # -- Kubernetes ----------------------------------------------------------------------------

    async def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(
            run_kubectl, self.cluster, *args, stdin=stdin, check=check, timeout=timeout
        )

    def job_path(self, name: str = "") -> str:
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{self.namespace}/{JOB_PLURAL}"
        return f"{path}/{name}" if name else path

    async def create_job(self, name: str, key: str, **spec: Any) -> None:
        """`kubectl apply` a TranscriptionJob for `key` in this test's bucket (en-US)."""
        body = {
            "apiVersion": API_VERSION,
            "kind": JOB_KIND,
            "metadata": {"name": name},
            "spec": {
                "source": {"bucket": self.bucket, "key": key},
                "recognition": {"languageCode": "en-US"},
                **spec,
            },
        }
        await self.kubectl("apply", "-n", self.namespace, "-f", "-", stdin=json.dumps(body))

    async def job(self, name: str) -> dict[str, Any] | None:
        response = await asyncio.to_thread(self.cluster.request, "GET", self.job_path(name))
        if response.status == 404:
            return None
        body: dict[str, Any] = _ok(response, 200)
        return body

    async def wait_for(
        self,
        what: str,
        probe: Callable[[], Awaitable[T | None]],
        *,
        timeout: float = 60,
        interval: float = 0.25,
    ) -> T:
        """Await `probe()` until it returns something other than None; fail after `timeout`.

        Fails at once when the operator has died or has logged a denied request or a traceback.
        """
        deadline = time.monotonic() + timeout
        while True:
            self.operator.check_running()
            # A denied request or a crash will not heal: say so now rather than at the timeout.
            if problems := self.operator.new_problems():
                raise AssertionError(
                    f"waiting for {what}, the operator logged denied requests or tracebacks:\n"
                    + "\n".join(problems)
                )
            last = await probe()
            if last is not None:
                return last
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout:.0f}s waiting for {what}; last seen: {last!r}"
                )
            await asyncio.sleep(interval)

    async def wait_for_job(
        self, name: str, predicate: Callable[[dict[str, Any]], bool], what: str, *, timeout: float = 60
    ) -> dict[str, Any]:
        async def probe() -> dict[str, Any] | None:
            job = await self.job(name)
            return job if job is not None and predicate(job) else None

        try:
            return await self.wait_for(f"{name} {what}", probe, timeout=timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nthe job now: {await self.job(name)!r}") from None

    async def wait_for_phase(self, name: str, *phases: str, timeout: float = 60) -> dict[str, Any]:
        """The job's status once its phase is one of `phases`."""
        job = await self.wait_for_job(
            name,
            lambda job: job.get("status", {}).get("phase") in phases,
            f"to be {'/'.join(phases)}",
            timeout=timeout,
        )
        status: dict[str, Any] = job["status"]
        return status

    async def events(self, name: str) -> list[dict[str, Any]]:
        path = f"/api/v1/namespaces/{self.namespace}/events?fieldSelector=involvedObject.name%3D{name}"
        listed = _ok(await asyncio.to_thread(self.cluster.request, "GET", path), 200)
        items: list[dict[str, Any]] = listed["items"]
        return items

    async def wait_for_event(self, name: str, reason: str, *, timeout: float = 30) -> dict[str, Any]:
        """kopf posts events in the background, after the status patch: wait for one to arrive."""

        async def probe() -> dict[str, Any] | None:
            return next((e for e in await self.events(name) if e.get("reason") == reason), None)

        return await self.wait_for(f"a {reason} event of {name}", probe, timeout=timeout)

    async def all_jobs(self) -> list[dict[str, Any]]:
        """Every TranscriptionJob in the cluster."""
        path = f"/apis/{GROUP}/{VERSION}/{JOB_PLURAL}"
        listed = _ok(await asyncio.to_thread(self.cluster.request, "GET", path), 200)
        items: list[dict[str, Any]] = listed["items"]
        return items

    def assert_operator_log_clean(self) -> None:
        problems = self.operator.new_problems(mark_checked=True)
        assert not problems, "the operator logged denied requests or tracebacks:\n" + "\n".join(problems)

    async def add_namespace(self, namespace: str) -> None:
        """Create `namespace` with the credentials and storage Secrets (as the test's own has them)."""
        manifests = [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
            _secret(CREDENTIALS_SECRET, {"api-key": API_KEY, "folder-id": FOLDER_ID}),
            _secret(
                STORAGE_SECRET,
                {
                    "access-key-id": self.minio.access_key,
                    "secret-access-key": self.minio.secret_key,
                    "endpoint": self.minio.endpoint,
                    "region": self.minio.region,
                },
            ),
        ]
        await self.kubectl("apply", "-f", "-", stdin=json.dumps(manifests[0]))
        await self.kubectl(
            "apply",
            "-n",
            namespace,
            "-f",
            "-",
            stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests[1:]}),
        )

    # -- storage and SpeechKit -----------------------------------------------------------------

    def upload(self, name: str, key: str | None = None) -> str:
        """Put one file of the shared corpus into this test's bucket; returns its key."""
        key = key or f"incoming/{name}"
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=(audio_dir() / name).read_bytes())
        return key

    def read_output(self, uri: str) -> tuple[str, str]:
        """The text and content type of an `s3://bucket/key` output."""
        assert uri.startswith("s3://"), uri
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        answer = self.s3.get_object(Bucket=bucket, Key=key)
        return answer["Body"].read().decode("utf-8"), answer["ContentType"]

    def submissions_for(self, key: str) -> list[dict[str, Any]]:
        """The emulator's accepted submissions whose audio is `key` in this test's bucket."""
        wanted = f"/{self.bucket}/{key}"
        return [s for s in self.speechkit.submissions if urlsplit(s["audio"]["uri"]).path == wanted]


def _secret(name: str, data: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "type": "Opaque",
        "data": {key: base64.b64encode(value.encode()).decode() for key, value in data.items()},
    }


async def _remove_jobs(cluster: KubeCluster, namespace: str) -> None:
    """Delete the namespace's jobs through the operator; strip finalizers only if it cannot help."""
    await asyncio.to_thread(
        run_kubectl,
        cluster,
        "delete",
        JOB_PLURAL,
        "--all",
        "-n",
        namespace,
        "--timeout=30s",
        check=False,
        timeout=60,
    )
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{JOB_PLURAL}"
    listed = await asyncio.to_thread(cluster.request, "GET", path)
    for item in listed.json().get("items", []) if listed.status == 200 else []:
        await asyncio.to_thread(
            cluster.request,
            "PATCH",
            f"{path}/{item['metadata']['name']}",
            body={"metadata": {"finalizers": None}},
            content_type="application/merge-patch+json",
        )


@pytest.fixture
def bucket(s3: S3Client) -> Iterator[str]:
    name = f"e2e-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    yield name
    # MinIO's data dir is thrown away with the session; nothing to clean.


@pytest_asyncio.fixture(loop_scope="module")
async def e2e(
    kube_cluster: KubeCluster,
    minio_server: MinioServer,
    s3: S3Client,
    speechkit: SpeechKitEmulator,
    operator: OperatorRunner,
    bucket: str,
) -> AsyncIterator[E2E]:
    """A fresh namespace with the credentials and storage Secrets, and a fresh bucket.

    It is torn down while the operator still runs (it depends on `operator`), so that the jobs'
    finalizers are removed by the operator, as in a real cluster.
    """
    namespace = f"e2e-{uuid.uuid4().hex[:10]}"
    harness = E2E(
        cluster=kube_cluster,
        minio=minio_server,
        s3=s3,
        speechkit=speechkit,
        operator=operator,
        namespace=namespace,
        bucket=bucket,
    )
    await harness.add_namespace(namespace)
    try:
        yield harness
    finally:
        await _remove_jobs(kube_cluster, namespace)
        await harness.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


# --------------------------------------------------------------------------- helpers for other modules


def secret_manifest(name: str, data: dict[str, str]) -> dict[str, Any]:
    """An Opaque Secret manifest with `data` base64-encoded."""
    return _secret(name, data)


async def remove_jobs(cluster: KubeCluster, namespace: str) -> None:
    """Delete the namespace's jobs through the running operator (finalizers stripped as a last resort)."""
    await _remove_jobs(cluster, namespace)
