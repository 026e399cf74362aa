"""Networks as they are: a CA bundle, proxies from the environment and clear TLS errors.

Real TLS on 127.0.0.1 with certificates of a throwaway CA (devstack's certificate builder), a real
forward proxy (tests/support/forward_proxy.py), and the real SpeechKit, IAM and S3 clients.
"""

from __future__ import annotations

import base64
import dataclasses
import http.server
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import SSLError as BotoSSLError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from devstack.components import CertificateAuthority, ServingCertificate
from speechkit_operator.clients.retry import RetryPolicy
from speechkit_operator.clients.speech.auth import load_ca_bundle, proxy_for
from speechkit_operator.clients.speech.errors import (
    CA_BUNDLE_SETTING,
    OperationNotFoundError,
    SpeechApiError,
    TlsError,
    tls_problem,
)
from speechkit_operator.clients.speech.v2 import SpeechKitV2Client
from speechkit_operator.clients.storage import (
    ObjectHead,
    ObjectStorage,
    StorageError,
    StorageFactory,
    _classify,
)
from speechkit_operator.config import Settings
from speechkit_operator.context import build_context
from speechkit_operator.models.credentials import (
    AnonymousCredentials,
    ApiKeyCredentials,
    Credentials,
    ServiceAccountKeyCredentials,
)
from speechkit_operator.models.storage import StorageConfig
from tests.emulator import SpeechKitEmulator
from tests.support.forward_proxy import ForwardProxy, ProxyRecord
from tests.support.free_port import free_port

API_KEY = "AQVNnetworkapikey0123456789"
OBJECT = b"RIFF0123456789abcdefghijklmnopqrstuvwxyz"
PROXY_VARIABLES = ("HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "ALL_PROXY", "REQUEST_METHOD")


# --- PKI and a threaded TLS server that plays SpeechKit and S3 ------------------------------------


@dataclasses.dataclass(frozen=True)
class Pki:
    ca: CertificateAuthority
    localhost: ServingCertificate  # 127.0.0.1 and localhost
    elsewhere: ServingCertificate  # 127.0.0.2 only: wrong for a server on 127.0.0.1
    other_ca: CertificateAuthority


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority.create(directory / "ca", "network-test-ca")
    other = CertificateAuthority.create(directory / "other", "some-other-ca")
    return Pki(
        ca=ca,
        localhost=ca.issue(directory, "localhost", ["127.0.0.1", "localhost"]),
        elsewhere=ca.issue(directory, "elsewhere", ["127.0.0.2"]),
        other_ca=other,
    )


@dataclasses.dataclass
class TlsServer:
    """HTTPS on 127.0.0.1: ``GET /operations/{id}`` answers a running operation, ``HEAD`` and ``GET``
    of any other path answer :data:`OBJECT` (as S3 would). Every request is recorded."""

    url: str
    seen: list[dict[str, Any]]
    port: int


class _Handler(http.server.BaseHTTPRequestHandler):
    seen: list[dict[str, Any]]

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _record(self) -> None:
        self.seen.append({"method": self.command, "path": self.path, "headers": dict(self.headers)})

    def do_HEAD(self) -> None:
        self._record()
        self.send_response(200)
        self.send_header("Content-Length", str(len(OBJECT)))
        self.send_header("Content-Type", "audio/wav")
        self.end_headers()

    def do_GET(self) -> None:
        self._record()
        if self.path.startswith("/operations/"):
            body = json.dumps({"id": self.path.rsplit("/", 1)[1], "done": False}).encode()
            content_type = "application/json"
        else:
            body, content_type = OBJECT, "audio/wav"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", content_type)
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def tls_server(pki: Pki) -> Iterator[TlsServer]:
    yield from _serve(pki.localhost)


@pytest.fixture(scope="module")
def misnamed_server(pki: Pki) -> Iterator[TlsServer]:
    """A server on 127.0.0.1 whose certificate names only 127.0.0.2."""
    yield from _serve(pki.elsewhere)


def _serve(certificate: ServingCertificate) -> Iterator[TlsServer]:
    seen: list[dict[str, Any]] = []
    handler = type("Handler", (_Handler,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    server.socket = certificate.server_context().wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    port = server.server_address[1]
    try:
        yield TlsServer(url=f"https://127.0.0.1:{port}", seen=seen, port=port)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def proxy() -> Iterator[ForwardProxy]:
    with ForwardProxy() as running:
        yield running


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No proxy, netrc or CA variables of the test run's own environment."""
    for name in (*PROXY_VARIABLES, "NETRC", "SSL_CERT_FILE", "SSL_CERT_DIR", "AWS_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    return monkeypatch


def use_proxy(monkeypatch: pytest.MonkeyPatch, proxy: ForwardProxy, no_proxy: str = "") -> None:
    for name in ("HTTPS_PROXY", "HTTP_PROXY"):
        monkeypatch.setenv(name, proxy.url)
    monkeypatch.setenv("NO_PROXY", no_proxy)


class Sleeps(list[float]):
    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


def client(url: str, ca_bundle: Path | None, sleeps: Sleeps | None = None) -> SpeechKitV2Client:
    return SpeechKitV2Client(
        url,
        url,
        f"{url}/iam/v1/tokens",
        timeout=5.0,
        retry_policy=RetryPolicy(attempts=3, base_delay=0.01, max_delay=1.0),
        sleep=sleeps if sleeps is not None else Sleeps(),
        ca_bundle=ca_bundle,
    )


async def look(url: str, ca_bundle: Path | None, credentials: Credentials | None = None) -> str:
    async with client(url, ca_bundle) as speech:
        state = await speech.get_operation("e03op", credentials or ApiKeyCredentials(API_KEY))
    return state.id


# --- SpeechKit: the CA bundle ---------------------------------------------------------------------


async def test_speechkit_is_reached_with_the_ca_bundle(
    pki: Pki, tls_server: TlsServer, clean_env: pytest.MonkeyPatch
) -> None:
    assert await look(tls_server.url, pki.ca.cert_path) == "e03op"
    assert tls_server.seen[-1]["headers"]["Authorization"] == f"Api-Key {API_KEY}"


async def test_an_untrusted_certificate_says_what_to_set_and_is_not_retried_in_the_call(
    pki: Pki, tls_server: TlsServer, clean_env: pytest.MonkeyPatch
) -> None:
    before = len(tls_server.seen)
    sleeps = Sleeps()
    for bundle in (None, pki.other_ca.cert_path):  # the system's trust; a bundle of another CA
        async with client(tls_server.url, bundle, sleeps) as speech:
            with pytest.raises(TlsError) as caught:
                await speech.get_operation("e03op", ApiKeyCredentials(API_KEY))
        error = caught.value
        assert str(error).startswith("SpeechKit operation e03op: TLS certificate of ")
        assert f"TLS certificate of {tls_server.url} not trusted (" in str(error)
        assert f"set {CA_BUNDLE_SETTING} to a PEM file" in str(error)
        assert "/operations" not in str(error) and API_KEY not in str(error)
        assert error.transient and error.reason == "TlsCertificateRejected"
        assert error.certainly_unprocessed  # a submission failing so may be repeated later
    assert sleeps == []  # a handshake that failed is not repeated at once
    assert len(tls_server.seen) == before  # no request ever got through


async def test_a_certificate_for_another_host_is_named_as_such(
    pki: Pki, misnamed_server: TlsServer, clean_env: pytest.MonkeyPatch
) -> None:
    async with client(misnamed_server.url, pki.ca.cert_path) as speech:
        with pytest.raises(TlsError, match="is not valid for that host") as caught:
            await speech.get_operation("e03op", ApiKeyCredentials(API_KEY))
    assert "127.0.0.1" in str(caught.value) and CA_BUNDLE_SETTING not in str(caught.value)


async def test_plain_http_on_a_https_url_is_a_handshake_error(clean_env: pytest.MonkeyPatch) -> None:
    emulator = SpeechKitEmulator(api_keys={API_KEY})
    await emulator.start()
    try:
        url = emulator.url.replace("http://", "https://")
        with pytest.raises(
            TlsError, match=r"TLS handshake with https://127\.0\.0\.1:[0-9]+ failed"
        ) as caught:
            await look(url, None)
    finally:
        await emulator.stop()
    assert caught.value.reason == "TlsHandshakeFailed"


async def test_the_iam_exchange_uses_the_ca_bundle(
    pki: Pki, tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    credentials = ServiceAccountKeyCredentials("ajekey", "ajesa", private.decode())
    emulator = SpeechKitEmulator(api_keys=set())
    emulator.add_service_account_key("ajekey", "ajesa", public.decode())
    await emulator.start(ssl_context=pki.localhost.server_context())
    try:
        assert emulator.url.startswith("https://127.0.0.1:")
        # Trusted: the token is exchanged over TLS, then the operation is looked at (unknown: 404).
        with pytest.raises(OperationNotFoundError):
            await look(emulator.url, pki.ca.cert_path, credentials)
        assert emulator.counts["token"] == 1 and emulator.counts["operation"] == 1
        # Not trusted: the exchange itself fails, and says why.
        with pytest.raises(TlsError, match=f"^IAM token exchange: TLS certificate of {emulator.url} not"):
            await look(emulator.url, None, credentials)
        assert emulator.counts["token"] == 1
    finally:
        await emulator.stop()


def test_a_ca_bundle_that_is_no_pem_file_fails_at_once(tmp_path: Path) -> None:
    garbage = tmp_path / "ca.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ValueError, match=f"^{CA_BUNDLE_SETTING}=.*ca.pem is not a readable PEM file"):
        load_ca_bundle(garbage)
    with pytest.raises(ValueError, match=CA_BUNDLE_SETTING):
        build_context(Settings(ca_bundle=garbage))
    assert load_ca_bundle(None) is None


# --- SpeechKit: proxies from the environment --------------------------------------------------------


async def test_speechkit_goes_through_https_proxy_unless_no_proxy_names_the_host(
    pki: Pki, tls_server: TlsServer, proxy: ForwardProxy, clean_env: pytest.MonkeyPatch
) -> None:
    use_proxy(clean_env, proxy)
    assert await look(tls_server.url, pki.ca.cert_path) == "e03op"
    assert proxy.targets("CONNECT") == {f"127.0.0.1:{tls_server.port}"}  # a CONNECT tunnel, TLS inside

    # Through the tunnel, the certificate is still checked against the bundle, and blamed by name.
    with pytest.raises(TlsError, match=f"TLS certificate of {tls_server.url} not trusted"):
        await look(tls_server.url, None)

    proxy.clear()
    for no_proxy in ("127.0.0.1", f"127.0.0.1:{tls_server.port}", "localhost,127.0.0.1", "*"):
        clean_env.setenv("NO_PROXY", no_proxy)
        assert await look(tls_server.url, pki.ca.cert_path) == "e03op"
    assert proxy.records == []


async def test_plain_http_goes_through_http_proxy_in_absolute_form(
    proxy: ForwardProxy, clean_env: pytest.MonkeyPatch
) -> None:
    use_proxy(clean_env, proxy)
    emulator = SpeechKitEmulator(api_keys={API_KEY})
    await emulator.start()
    target = emulator.url.removeprefix("http://")
    try:
        with pytest.raises(OperationNotFoundError):  # the emulator's answer came back through the proxy
            await look(emulator.url, None)
    finally:
        await emulator.stop()
    assert proxy.records == [ProxyRecord("GET", target, 0)]
    assert emulator.counts["operation"] == 1


async def test_a_proxy_that_refuses_the_tunnel_is_named(
    proxy: ForwardProxy, clean_env: pytest.MonkeyPatch
) -> None:
    use_proxy(clean_env, proxy)
    with pytest.raises(
        SpeechApiError, match=r"the proxy refused to connect to https://10\.255\.255\.1 \(HTTP 403\)"
    ):
        await look("https://10.255.255.1", None)  # not loopback: the test proxy answers 403
    assert proxy.records[0].status == 403


async def test_an_unreachable_proxy_is_named(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("HTTPS_PROXY", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(SpeechApiError, match=r"the proxy 127\.0\.0\.1:[0-9]+ could not be reached"):
        await look("https://127.0.0.1:9", None)


async def test_netrc_credentials_are_never_sent(
    pki: Pki, tls_server: TlsServer, tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    """aiohttp's trust_env=True would add ~/.netrc's credentials, and refuse our own Authorization
    header next to them; the proxy is taken from the environment without it."""
    netrc = tmp_path / "netrc"
    netrc.write_text("default login someone password netrc-secret\n")
    netrc.chmod(0o600)
    clean_env.setenv("NETRC", str(netrc))
    assert await look(tls_server.url, pki.ca.cert_path) == "e03op"
    assert tls_server.seen[-1]["headers"]["Authorization"] == f"Api-Key {API_KEY}"
    assert await look(tls_server.url, pki.ca.cert_path, AnonymousCredentials()) == "e03op"
    assert "Authorization" not in tls_server.seen[-1]["headers"]


@pytest.mark.parametrize(
    ("environment", "url", "expected"),
    [
        ({}, "https://a.example", None),
        ({"HTTPS_PROXY": "http://proxy:3128"}, "https://a.example/x?y", "http://proxy:3128"),
        ({"HTTPS_PROXY": "proxy:3128"}, "https://a.example", "http://proxy:3128"),
        ({"https_proxy": "http://lower:3128"}, "https://a.example", "http://lower:3128"),
        ({"HTTP_PROXY": "http://proxy:3128"}, "https://a.example", None),
        ({"HTTP_PROXY": "http://proxy:3128"}, "http://a.example", "http://proxy:3128"),
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "example"}, "https://a.example", None),
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": ".example"}, "https://a.example", None),
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "a.example:8443"}, "https://a.example:8443", None),
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "a.example:8443"}, "https://a.example", "http://p:1"),
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "127.0.0.1"}, "https://127.0.0.2", "http://p:1"),
    ],
)
def test_proxy_for_follows_the_environment(
    clean_env: pytest.MonkeyPatch, environment: dict[str, str], url: str, expected: str | None
) -> None:
    for name, value in environment.items():
        clean_env.setenv(name, value)
    proxy = proxy_for(url)
    assert (str(proxy) if proxy else None) == expected


async def test_the_proxy_url_credentials_become_proxy_authorization(
    pki: Pki, tls_server: TlsServer, proxy: ForwardProxy, clean_env: pytest.MonkeyPatch
) -> None:
    clean_env.setenv("HTTPS_PROXY", proxy.url.replace("http://", "http://user:p%40ss@"))
    assert await look(tls_server.url, pki.ca.cert_path) == "e03op"
    expected = "Basic " + base64.b64encode(b"user:p@ss").decode()
    assert [r.proxy_authorization for r in proxy.records] == [expected]
    assert "Proxy-Authorization" not in tls_server.seen[-1]["headers"]  # for the proxy only


# --- S3 ---------------------------------------------------------------------------------------------


def storage_config(url: str, key_id: str = "network-key") -> StorageConfig:
    return StorageConfig(endpoint=url, region="us-east-1", access_key_id=key_id, secret_access_key="s3cr3t")


class Storages:
    """Makes ObjectStorages and StorageFactories, and closes them after the test (no pooled socket
    is left to the garbage collector)."""

    def __init__(self) -> None:
        self.made: list[ObjectStorage | StorageFactory] = []

    def storage(self, url: str, ca_bundle: Path | None = None) -> ObjectStorage:
        storage = ObjectStorage(storage_config(url), timeout=5.0, ca_bundle=ca_bundle)
        self.made.append(storage)
        return storage

    def factory(self, ca_bundle: Path | None = None) -> StorageFactory:
        factory = StorageFactory(timeout=5.0, ca_bundle=ca_bundle)
        self.made.append(factory)
        return factory


@pytest.fixture
def storages() -> Iterator[Storages]:
    made = Storages()
    yield made
    for item in made.made:
        item.close()


async def test_storage_verifies_with_the_ca_bundle(
    pki: Pki, tls_server: TlsServer, storages: Storages, clean_env: pytest.MonkeyPatch
) -> None:
    storage = storages.storage(tls_server.url, pki.ca.cert_path)
    assert await storage.head("bucket", "calls/a.wav") == ObjectHead(
        size=len(OBJECT), content_type="audio/wav"
    )
    assert tls_server.seen[-1]["path"] == "/bucket/calls/a.wav"


async def test_storage_with_an_untrusted_certificate_says_what_to_set(
    tls_server: TlsServer, storages: Storages, clean_env: pytest.MonkeyPatch
) -> None:
    storage = storages.storage(tls_server.url)
    with pytest.raises(StorageError) as caught:
        await storage.read_range("bucket", "calls/a.wav", "bytes=0-10")
    error = caught.value
    assert error.kind == "unavailable" and error.transient  # fixed by a setting and a restart
    assert error.message.startswith(
        f"s3://bucket/calls/a.wav: TLS certificate of {tls_server.url} not trusted ("
    )
    assert f"set {CA_BUNDLE_SETTING} to a PEM file" in error.message


async def test_storage_factory_passes_the_ca_bundle_to_every_storage(
    pki: Pki, tls_server: TlsServer, storages: Storages, clean_env: pytest.MonkeyPatch
) -> None:
    factory = storages.factory(pki.ca.cert_path)
    for key_id in ("one", "two"):
        assert (await factory.get(storage_config(tls_server.url, key_id)).head("b", "k")).size == len(OBJECT)
    with pytest.raises(StorageError, match="not trusted"):
        await storages.factory().get(storage_config(tls_server.url)).head("b", "k")


async def test_storage_goes_through_https_proxy_unless_no_proxy_names_the_host(
    pki: Pki, tls_server: TlsServer, proxy: ForwardProxy, storages: Storages, clean_env: pytest.MonkeyPatch
) -> None:
    use_proxy(clean_env, proxy)
    await storages.storage(tls_server.url, pki.ca.cert_path).head("bucket", "a.wav")
    assert proxy.targets("CONNECT") == {f"127.0.0.1:{tls_server.port}"}

    proxy.clear()
    for no_proxy in ("127.0.0.1", f"127.0.0.1:{tls_server.port}", "localhost,127.0.0.1"):
        clean_env.setenv("NO_PROXY", no_proxy)  # botocore reads it when a client is created
        await storages.storage(tls_server.url, pki.ca.cert_path).head("bucket", "a.wav")
    assert proxy.records == []


def test_storage_tls_messages_keep_paths_and_queries_out() -> None:
    url = "https://minio.internal:9000/bucket/a.wav?X-Amz-Signature=deadbeef&X-Amz-Credential=AKIA"
    error = ssl.SSLCertVerificationError(
        1,
        "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: unable to get local issuer certificate",
    )
    classified = _classify(BotoSSLError(endpoint_url=url, error=error), "s3://bucket/a.wav")
    assert classified.message == (
        "s3://bucket/a.wav: TLS certificate of https://minio.internal:9000 not trusted "
        f"(unable to get local issuer certificate): set {CA_BUNDLE_SETTING} to a PEM file with the CA "
        "that signed it and restart the operator"
    )
    assert classified.transient


def test_tls_problem_names_each_kind_of_failure() -> None:
    origin = "https://h:1"
    expired = ssl.SSLCertVerificationError(1, "certificate verify failed")
    expired.verify_code, expired.verify_message = 10, "certificate has expired"
    assert tls_problem(origin, expired) == (
        "TLS certificate of https://h:1 is not valid now (certificate has expired): renew it, "
        "or check the clocks"
    )
    handshake = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")
    handshake.reason = "WRONG_VERSION_NUMBER"
    assert tls_problem(origin, handshake).startswith("TLS handshake with https://h:1 failed (WRONG_VERSION")


# --- build_context wires it all -------------------------------------------------------------------


async def test_build_context_gives_the_ca_bundle_to_speechkit_and_storage(
    pki: Pki, tls_server: TlsServer, clean_env: pytest.MonkeyPatch
) -> None:
    settings = Settings(backend="self-hosted", self_hosted_url=tls_server.url, ca_bundle=pki.ca.cert_path)
    context = build_context(settings)
    try:
        assert (await context.speech.get_operation("e03ctx", AnonymousCredentials())).id == "e03ctx"
        storage = context.workflow.storage.get(storage_config(tls_server.url))
        assert (await storage.head("bucket", "a.wav")).size == len(OBJECT)
    finally:
        await context.close()

    context = build_context(Settings(backend="self-hosted", self_hosted_url=tls_server.url))
    try:
        with pytest.raises(TlsError):
            await context.speech.get_operation("e03ctx", AnonymousCredentials())
    finally:
        await context.close()


# --- The test proxy itself ------------------------------------------------------------------------


def _raw(proxy: ForwardProxy, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(4096):
            chunks.append(chunk)
        return b"".join(chunks)


def test_the_proxy_refuses_non_loopback_targets_and_reports_unreachable_ones(proxy: ForwardProxy) -> None:
    assert _raw(proxy, b"CONNECT 192.0.2.1:443 HTTP/1.1\r\nHost: 192.0.2.1:443\r\n\r\n").startswith(
        b"HTTP/1.1 403"
    )
    closed = free_port()
    assert _raw(proxy, f"CONNECT 127.0.0.1:{closed} HTTP/1.1\r\n\r\n".encode()).startswith(b"HTTP/1.1 502")
    assert _raw(proxy, b"GET /relative HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert [r.status for r in proxy.records] == [403, 502, 400]


def test_the_proxy_stops_with_a_tunnel_open() -> None:
    with socket.create_server(("127.0.0.1", 0)) as upstream:
        proxy = ForwardProxy(idle_timeout=60)
        proxy.start()
        port = upstream.getsockname()[1]
        client_socket = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        try:
            client_socket.sendall(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n".encode())
            assert client_socket.recv(100).startswith(b"HTTP/1.1 200")
            started = time.monotonic()
            proxy.stop()
            assert time.monotonic() - started < 5
            assert client_socket.recv(100) == b""  # the tunnel was closed
        finally:
            client_socket.close()
        proxy.stop()  # twice is fine
