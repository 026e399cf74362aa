"""Networks as they are: the operator behind an egress proxy, with S3 and SpeechKit on a private CA.

On the session's real kube-apiserver (127.0.0.1), with:

* a MinIO of its own serving HTTPS on 127.0.0.3 with a certificate of a throwaway CA,
* the SpeechKit emulator (SpeechKit and IAM) serving HTTPS on 127.0.0.2 with a certificate of the
  same CA,
* a forward proxy on 127.0.0.1 (tests/support/forward_proxy.py) that records every target,

the operator runs as a subprocess under the chart's identity with ``HTTPS_PROXY`` pointing at the
proxy and ``NO_PROXY=127.0.0.1,localhost``: SpeechKit, IAM and S3 must go through the proxy (in
CONNECT tunnels), the kube-apiserver must not. With ``SPEECHKIT_OPERATOR_CA_BUNDLE`` the job
succeeds; without it the job's status says which certificate is not trusted and what to set.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pytest
import pytest_asyncio
from botocore.config import Config
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from devstack.components import (
    Binaries,
    CertificateAuthority,
    ComponentError,
    KubeCluster,
    MinioServer,
    ServingCertificate,
    running_minio,
)
from tests.e2e.crd_fixtures import InstalledCrd
from tests.e2e.operator_fixtures import (
    CREDENTIALS_SECRET,
    E2E,
    FOLDER_ID,
    STORAGE_SECRET,
    OperatorIdentity,
    OperatorRunner,
    operator_environment,
    remove_jobs,
    secret_manifest,
)
from tests.emulator import SpeechKitEmulator, words_for_text
from tests.support.audio import manifest, reference_text
from tests.support.forward_proxy import ForwardProxy

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

in_module_loop = pytest.mark.asyncio(loop_scope="module")

EMULATOR_HOST = "127.0.0.2"
MINIO_HOST = "127.0.0.3"
#: The kube-apiserver is on 127.0.0.1: it must never be reached through the proxy.
NO_PROXY = "127.0.0.1,localhost"
CA_BUNDLE_VARIABLE = "SPEECHKIT_OPERATOR_CA_BUNDLE"
KEY_ID = "ajenetworkkey0001"
SERVICE_ACCOUNT_ID = "ajenetworksa00001"
AUDIO = "librivox-0870.ogg"
#: Variables of the test run's own environment that would change whom the operator trusts or how it
#: connects; the operator gets exactly the ones each test sets.
_NETWORK_VARIABLES = (
    "HTTPS_PROXY",
    "HTTP_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "AWS_CA_BUNDLE",
    "REQUESTS_CA_BUNDLE",
    "NETRC",
)


@dataclass(frozen=True)
class NetworkPki:
    ca: CertificateAuthority
    emulator: ServingCertificate
    minio: ServingCertificate


@pytest.fixture(scope="module")
def network_pki(tmp_path_factory: pytest.TempPathFactory) -> NetworkPki:
    directory = tmp_path_factory.mktemp("network-pki")
    ca = CertificateAuthority.create(directory, "speechkit-e2e-private-ca")
    return NetworkPki(
        ca=ca,
        emulator=ca.issue(directory, "speechkit", [EMULATOR_HOST]),
        minio=ca.issue(directory, "minio", [MINIO_HOST]),
    )


@pytest.fixture(scope="module")
def tls_minio(e2e_binaries: Binaries, network_pki: NetworkPki) -> Iterator[MinioServer]:
    """A MinIO of this module's own, over HTTPS on 127.0.0.3 (the session's MinIO is plain HTTP)."""
    try:
        with running_minio(e2e_binaries.minio, host=MINIO_HOST, tls=network_pki.minio) as server:
            yield server
    except ComponentError as exc:
        pytest.fail(f"the TLS MinIO failed: {exc}", pytrace=False)


@pytest.fixture(scope="module")
def tls_s3(tls_minio: MinioServer, network_pki: NetworkPki) -> S3Client:
    """The test's own S3 client of the TLS MinIO: direct, trusting the private CA."""
    client: S3Client = boto3.client(
        "s3",
        endpoint_url=tls_minio.endpoint,
        aws_access_key_id=tls_minio.access_key,
        aws_secret_access_key=tls_minio.secret_key,
        region_name=tls_minio.region,
        verify=str(network_pki.ca.cert_path),
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}, proxies={}),
    )
    return client


@pytest.fixture(scope="module")
def service_account_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def tls_speechkit(
    network_pki: NetworkPki, service_account_key: rsa.RSAPrivateKey
) -> AsyncIterator[SpeechKitEmulator]:
    """SpeechKit and IAM over HTTPS on 127.0.0.2; they accept only IAM tokens of our service account,
    and download audio from the TLS MinIO trusting the private CA."""
    emulator = SpeechKitEmulator(api_keys=set(), completion_delay=0.3)
    for name in manifest()["files"]:
        emulator.transcripts[name] = {
            channel: words_for_text(text) for channel, text in reference_text(name).items()
        }
    public = service_account_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    emulator.add_service_account_key(KEY_ID, SERVICE_ACCOUNT_ID, public.decode())
    await emulator.start(
        EMULATOR_HOST,
        ssl_context=network_pki.emulator.server_context(),
        download_ssl=network_pki.emulator.client_context(),  # trusts the CA of MinIO's certificate too
    )
    try:
        yield emulator
    finally:
        await emulator.stop()


@pytest.fixture(scope="module")
def forward_proxy() -> Iterator[ForwardProxy]:
    with ForwardProxy("127.0.0.1") as proxy:
        yield proxy


def _target(url: str) -> str:
    return url.split("://", 1)[1].rstrip("/")


# --------------------------------------------------------------------------- one case


@dataclass
class Case:
    harness: E2E
    proxy: ForwardProxy
    pki: NetworkPki

    @property
    def emulator_target(self) -> str:
        return _target(self.harness.speechkit.url)

    @property
    def minio_target(self) -> str:
        return _target(self.harness.minio.endpoint)


def _operator_env(
    speechkit: SpeechKitEmulator,
    identity: OperatorIdentity,
    minio: MinioServer,
    proxy: ForwardProxy,
    ca_bundle: Path | None,
) -> dict[str, str]:
    env = operator_environment(speechkit, identity.kubeconfig)
    for name in _NETWORK_VARIABLES:
        env.pop(name, None)
        env.pop(name.lower(), None)
    for name, value in {"HTTPS_PROXY": proxy.url, "HTTP_PROXY": proxy.url, "NO_PROXY": NO_PROXY}.items():
        env[name] = env[name.lower()] = value
    env["SPEECHKIT_OPERATOR_STORAGE_ENDPOINT"] = minio.endpoint
    env["SPEECHKIT_OPERATOR_STORAGE_REGION"] = minio.region
    # The default endpoint is always allowed; no other.
    env["SPEECHKIT_OPERATOR_STORAGE_ENDPOINTS"] = minio.endpoint
    if ca_bundle is not None:
        env[CA_BUNDLE_VARIABLE] = str(ca_bundle)
    return env


@pytest_asyncio.fixture(loop_scope="module")
async def case(
    request: pytest.FixtureRequest,
    kube_cluster: KubeCluster,
    operator_identity: OperatorIdentity,
    operator_crd: InstalledCrd,
    tls_minio: MinioServer,
    tls_s3: S3Client,
    tls_speechkit: SpeechKitEmulator,
    forward_proxy: ForwardProxy,
    network_pki: NetworkPki,
    service_account_key: rsa.RSAPrivateKey,
    tmp_path: Path,
) -> AsyncIterator[Case]:
    """A namespace with an authorized-key Secret and a storage Secret (keys only: the endpoint is the
    operator's setting), a bucket on the TLS MinIO, and an operator behind the proxy: with the CA
    bundle unless the test is parametrized indirectly with False."""
    del operator_crd  # only needed to exist before the operator starts
    with_ca_bundle = bool(getattr(request, "param", True))
    namespace = f"e2e-net-{uuid.uuid4().hex[:8]}"
    bucket = f"e2e-net-{uuid.uuid4().hex[:10]}"
    tls_s3.create_bucket(Bucket=bucket)
    private = service_account_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    authorized_key = {"id": KEY_ID, "service_account_id": SERVICE_ACCOUNT_ID, "private_key": private.decode()}
    secrets = [
        secret_manifest(
            CREDENTIALS_SECRET, {"authorized-key.json": json.dumps(authorized_key), "folder-id": FOLDER_ID}
        ),
        secret_manifest(
            STORAGE_SECRET,
            {"access-key-id": tls_minio.access_key, "secret-access-key": tls_minio.secret_key},
        ),
    ]
    runner = OperatorRunner(
        env=_operator_env(
            tls_speechkit,
            operator_identity,
            tls_minio,
            forward_proxy,
            network_pki.ca.cert_path if with_ca_bundle else None,
        ),
        log_dir=tmp_path,
    )
    harness = E2E(
        cluster=kube_cluster,
        minio=tls_minio,
        s3=tls_s3,
        speechkit=tls_speechkit,
        operator=runner,
        namespace=namespace,
        bucket=bucket,
    )
    namespace_manifest = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
    await harness.kubectl("apply", "-f", "-", stdin=json.dumps(namespace_manifest))
    await harness.kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": secrets}),
    )
    forward_proxy.clear()
    try:
        await runner.start()
        yield Case(harness=harness, proxy=forward_proxy, pki=network_pki)
    finally:
        try:
            await remove_jobs(kube_cluster, namespace)  # while the operator runs: it removes finalizers
            await harness.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        finally:
            await asyncio.to_thread(runner.stop_all)
            runner.show_new_output()


def _status_line(status: dict[str, Any]) -> str:
    return f"{status.get('phase')} {status.get('reason')}: {status.get('message')}"


# --------------------------------------------------------------------------- the tests


@in_module_loop
async def test_a_job_succeeds_through_the_proxy_with_the_private_ca(case: Case) -> None:
    e2e = case.harness
    key = e2e.upload(AUDIO)
    tokens_before = e2e.speechkit.counts["token"]
    await e2e.create_job("through-proxy", key)

    status = await e2e.wait_for_phase("through-proxy", "Succeeded", "Failed", timeout=45)
    assert status["phase"] == "Succeeded", _status_line(status)
    assert set(status["outputs"]) == {"json", "txt", "srt", "vtt"}
    text, content_type = e2e.read_output(status["outputs"]["txt"])
    assert text.strip() and content_type.startswith("text/plain")
    assert len(e2e.submissions_for(key)) == 1
    # An authorized key: the IAM exchange went to the emulator too, over the same TLS and proxy.
    assert e2e.speechkit.counts["token"] > tokens_before

    # SpeechKit + IAM (127.0.0.2) and MinIO (127.0.0.3) were reached in CONNECT tunnels only ...
    connects = case.proxy.targets("CONNECT")
    assert {case.emulator_target, case.minio_target} <= connects, case.proxy.records
    assert case.proxy.targets() == connects, case.proxy.records  # nothing in plain HTTP
    # ... and the kube-apiserver on 127.0.0.1 never (NO_PROXY).
    assert "127.0.0.1" not in case.proxy.hosts(), case.proxy.records
    e2e.assert_operator_log_clean()


@in_module_loop
@pytest.mark.parametrize("case", [False], indirect=True, ids=["without-ca-bundle"])
async def test_without_the_ca_bundle_the_status_says_what_to_set(case: Case) -> None:
    e2e = case.harness
    key = e2e.upload(AUDIO)
    await e2e.create_job("untrusted", key)

    job = await e2e.wait_for_job(
        "untrusted",
        lambda job: "not trusted" in str(job.get("status", {}).get("message", "")),
        "to say a certificate is not trusted",
        timeout=45,
    )
    status = job["status"]
    message = status["message"]
    # The source is looked at first: MinIO's certificate is the one named.
    assert f"TLS certificate of {e2e.minio.endpoint} not trusted (" in message, message
    assert f"set {CA_BUNDLE_VARIABLE} to a PEM file with the CA that signed it" in message, message
    assert "?" not in message and "X-Amz" not in message, message
    assert "Traceback" not in message, message
    assert status["phase"] == "Pending", _status_line(status)  # retried with backoff, never Succeeded
    assert not e2e.submissions_for(key)
    assert case.minio_target in case.proxy.targets("CONNECT"), case.proxy.records
    assert "127.0.0.1" not in case.proxy.hosts(), case.proxy.records
    event = await e2e.wait_for_event("untrusted", "RetryScheduled")
    assert CA_BUNDLE_VARIABLE in event["message"], event
    e2e.assert_operator_log_clean()
