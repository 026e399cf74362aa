"""Find and run the real components of the e2e tier and the demo.

etcd, kube-apiserver, kube-controller-manager and MinIO, with kubectl and helm beside them.

The binaries are built by `.ci/build-components` into a cache outside the repository at the versions
pinned in `devstack/versions.env` (the one place the pins live). A binary is taken from, in order:

1. `SPEECHKIT_<BINARY>` (e.g. `SPEECHKIT_KUBE_APISERVER=/path/to/kube-apiserver`; `<cache>/env.sh`,
   written by the build script, exports all of them);
2. `KUBEBUILDER_ASSETS`, for kube-apiserver, kube-controller-manager, kubectl and etcd;
3. `<cache>/<component>-<version>/<binary>`, where `<cache>` is `SPEECHKIT_COMPONENTS_CACHE`, else
   `${XDG_CACHE_HOME:-~/.cache}/speechkit-operator/components`.

Every process is started by this module, on 127.0.0.1 with free ports and its state in a temporary
directory, and is stopped by it (SIGTERM, then SIGKILL after a timeout) -- nothing else is touched.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import http.client
import ipaddress
import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` (a loopback address) that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
VERSIONS_FILE = HERE / "versions.env"
BUILD_SCRIPT = ".ci/build-components"

#: binary -> (component directory name in the cache, key of its version in versions.env)
BINARIES: dict[str, tuple[str, str]] = {
    "etcd": ("etcd", "ETCD_VERSION"),
    "kube-apiserver": ("kubernetes", "KUBERNETES_VERSION"),
    "kube-controller-manager": ("kubernetes", "KUBERNETES_VERSION"),
    "kubectl": ("kubernetes", "KUBERNETES_VERSION"),
    "minio": ("minio", "MINIO_VERSION"),
    "helm": ("helm", "HELM_VERSION"),
}
#: the binaries that KUBEBUILDER_ASSETS may provide
KUBEBUILDER_BINARIES = frozenset({"etcd", "kube-apiserver", "kube-controller-manager", "kubectl"})

SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"

STOP_TIMEOUT = 15.0
START_TIMEOUT = float(os.environ.get("SPEECHKIT_E2E_START_TIMEOUT", "120"))


class ComponentError(RuntimeError):
    """A component could not be started or did not become ready."""


# --------------------------------------------------------------------------- locating binaries


def read_versions(path: Path = VERSIONS_FILE) -> dict[str, str]:
    """Parse versions.env: `KEY=VALUE` lines, `#` comments and blank lines."""
    versions: dict[str, str] = {}
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.isidentifier() or not value:
            raise ValueError(f"{path}:{lineno}: expected KEY=VALUE, got {raw!r}")
        versions[key] = value
    return versions


def cache_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """The components cache, computed exactly as .ci/build-components does."""
    if explicit := environ.get("SPEECHKIT_COMPONENTS_CACHE"):
        return Path(explicit)
    xdg = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "speechkit-operator" / "components"


def env_var_for(binary: str) -> str:
    return "SPEECHKIT_" + binary.upper().replace("-", "_")


@dataclass(frozen=True)
class Binaries:
    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kubectl: Path
    minio: Path
    helm: Path


@dataclass(frozen=True)
class Lookup:
    """The outcome of looking for every binary: where each is, or was expected."""

    found: dict[str, Path]
    missing: dict[str, Path]
    versions: dict[str, str]

    def binaries(self) -> Binaries:
        if self.missing:
            raise ComponentError(self.explain())
        return Binaries(**{name.replace("-", "_"): path for name, path in self.found.items()})

    def explain(self) -> str:
        lines = [
            "the real e2e components are not built: "
            + ", ".join(f"{name} (looked for {path})" for name, path in self.missing.items()),
            f"build them with `{BUILD_SCRIPT}` (pinned in devstack/versions.env: "
            + ", ".join(f"{k}={v}" for k, v in self.versions.items())
            + "); a cold build takes tens of minutes on 2 cores, a warm rerun seconds",
        ]
        return "\n".join(lines)


def locate_binaries(environ: Mapping[str, str] = os.environ) -> Lookup:
    versions = read_versions()
    cache = cache_dir(environ)
    assets = environ.get("KUBEBUILDER_ASSETS")
    found: dict[str, Path] = {}
    missing: dict[str, Path] = {}
    for binary, (component, version_key) in BINARIES.items():
        candidates: list[Path] = []
        if explicit := environ.get(env_var_for(binary)):
            candidates.append(Path(explicit))
        if assets and binary in KUBEBUILDER_BINARIES:
            candidates.append(Path(assets) / binary)
        candidates.append(cache / f"{component}-{versions[version_key]}" / binary)
        for candidate in candidates:
            if candidate.is_file() and os.access(candidate, os.X_OK):
                found[binary] = candidate
                break
        else:
            missing[binary] = candidates[-1]
    return Lookup(found=found, missing=missing, versions=versions)


# --------------------------------------------------------------------------- processes


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class ManagedProcess:
    """One process this module started; its output goes to `log_path`."""

    name: str
    argv: Sequence[str]
    log_path: Path
    env: Mapping[str, str] | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _log: IO[bytes] | None = field(default=None, init=False, repr=False)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        argv = list(self.argv)
        # If the test run dies without tearing down (SIGKILL), take the child with it.
        if setpriv := shutil.which("setpriv"):
            argv = [setpriv, "--pdeathsig", "TERM", "--", *argv]
        self._proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=dict(self.env) if self.env is not None else None,
            start_new_session=True,  # a Ctrl-C of pytest reaches the fixtures' teardown, not the children
        )

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def check_running(self) -> None:
        if self._proc is None:
            raise ComponentError(f"{self.name} was never started")
        if (rc := self._proc.poll()) is not None:
            raise ComponentError(f"{self.name} exited with code {rc}; last output:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM the process we started, SIGKILL it if it outlives `timeout`."""
        proc, self._proc = self._proc, None
        try:
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=timeout)
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None


def wait_until(
    what: str,
    ready: Callable[[], bool],
    *,
    timeout: float = START_TIMEOUT,
    interval: float = 0.25,
    watch: Sequence[ManagedProcess] = (),
) -> None:
    """Poll `ready()` until it is true; fail early if a watched process dies."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        for proc in watch:
            proc.check_running()
        try:
            if ready():
                return
        except (OSError, ValueError, http.client.HTTPException) as exc:  # refused, TLS not up yet...
            last_error = exc
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {p.name} ({p.log_path}):\n{p.log_tail()}" for p in watch)
            raise ComponentError(
                f"timed out after {timeout:.0f}s waiting for {what} ({last_error!r})\n{logs}"
            )
        time.sleep(interval)


# --------------------------------------------------------------------------- HTTP


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http_request(
    url: str,
    *,
    method: str = "GET",
    token: str | None = None,
    body: Any = None,
    context: ssl.SSLContext | None = None,
    timeout: float = 10.0,
    content_type: str = "application/json",
) -> Response:
    """One HTTP(S) request; HTTP error statuses are returned, not raised."""
    headers = {"Accept": "application/json"}
    data: bytes | None = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers["Content-Type"] = content_type
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return Response(status=response.status, body=response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return Response(status=exc.code, body=exc.read())


# --------------------------------------------------------------------------- PKI


def _write_key(path: Path, key: rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    ca_key: Path
    serving_cert: Path
    serving_key: Path
    sa_key: Path
    sa_pub: Path


def _certificate(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: rsa.RSAPublicKey,
    signing_key: rsa.RSAPrivateKey,
    *,
    validity: tuple[dt.datetime, dt.datetime],
    ca: bool,
    extensions: Sequence[x509.ExtensionType],
) -> x509.Certificate:
    """A certificate for a CA (signs certificates) or a TLS server (signs and enciphers keys)."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=not ca,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(signing_key, hashes.SHA256())


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


@dataclass(frozen=True)
class ServingCertificate:
    """A TLS server's certificate and key (PEM files), and the certificate of the CA that signed it."""

    cert: Path
    key: Path
    ca_cert: Path

    def server_context(self) -> ssl.SSLContext:
        """An SSL context that serves this certificate."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        return context

    def client_context(self) -> ssl.SSLContext:
        """An SSL context that trusts only the CA of this certificate."""
        return ssl.create_default_context(cafile=str(self.ca_cert))


@dataclass(frozen=True)
class CertificateAuthority:
    """A throwaway CA (PEM files in its directory) that issues serving certificates."""

    name: x509.Name
    key: rsa.RSAPrivateKey = field(repr=False)
    cert_path: Path
    key_path: Path
    validity: tuple[dt.datetime, dt.datetime]

    @classmethod
    def create(
        cls,
        directory: Path,
        common_name: str = "speechkit-e2e-ca",
        *,
        cert_file: str = "ca.crt",
        key_file: str = "ca.key",
        lifetime: dt.timedelta = dt.timedelta(days=2),
    ) -> CertificateAuthority:
        """A new CA, valid from an hour ago for `lifetime`, written to `directory`."""
        directory.mkdir(parents=True, exist_ok=True)
        now = dt.datetime.now(dt.UTC)
        validity = (now - dt.timedelta(hours=1), now + lifetime)
        key = _new_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        cert = _certificate(
            name,
            name,
            key.public_key(),
            key,
            validity=validity,
            ca=True,
            extensions=[x509.SubjectKeyIdentifier.from_public_key(key.public_key())],
        )
        ca = cls(
            name=name,
            key=key,
            cert_path=directory / cert_file,
            key_path=directory / key_file,
            validity=validity,
        )
        ca.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(ca.key_path, key)
        return ca

    def issue(
        self, directory: Path, name: str, hosts: Sequence[str], *, common_name: str | None = None
    ) -> ServingCertificate:
        """A serving certificate for `hosts` (IP addresses or DNS names, all in its SANs), written to
        `directory` as `<name>.crt` and `<name>.key`."""
        if not hosts:
            raise ValueError("a serving certificate needs at least one host")
        directory.mkdir(parents=True, exist_ok=True)
        key = _new_key()
        cert = _certificate(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name or hosts[0])]),
            self.name,
            key.public_key(),
            self.key,
            validity=self.validity,
            ca=False,
            extensions=[
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                x509.SubjectAlternativeName([_general_name(host) for host in hosts]),
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
            ],
        )
        serving = ServingCertificate(
            cert=directory / f"{name}.crt", key=directory / f"{name}.key", ca_cert=self.cert_path
        )
        serving.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(serving.key, key)
        return serving


def make_pki(directory: Path) -> Pki:
    """A throwaway CA, a serving certificate for 127.0.0.1 signed by it, and a service-account key pair."""
    ca = CertificateAuthority.create(directory)
    serving = ca.issue(
        directory,
        "apiserver",
        [
            "127.0.0.1",
            "10.0.0.1",  # the `kubernetes` Service's ClusterIP
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ],
        common_name="kube-apiserver",
    )
    sa_key = _new_key()
    pki = Pki(
        ca_cert=ca.cert_path,
        ca_key=ca.key_path,
        serving_cert=serving.cert,
        serving_key=serving.key,
        sa_key=directory / "sa.key",
        sa_pub=directory / "sa.pub",
    )
    _write_key(pki.sa_key, sa_key)
    pki.sa_pub.write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return pki


def write_kubeconfig(path: Path, *, server: str, ca_cert: Path, user: str, token: str) -> None:
    """A kubeconfig that verifies the server against `ca_cert` (embedded) and sends a bearer token."""
    ca_data = base64.b64encode(ca_cert.read_bytes()).decode()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": {"server": server, "certificate-authority-data": ca_data}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": user}}],
        "current-context": "e2e",
        "preferences": {},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    path.chmod(0o600)


# --------------------------------------------------------------------------- the cluster


@dataclass
class KubeCluster:
    """etcd + kube-apiserver (TLS, static tokens, service-account tokens, RBAC) + kube-controller-manager.

    `kubeconfig` is an admin kubeconfig (user `e2e-admin` in `system:masters`) that verifies TLS against
    `ca_path`. `env()` gives an environment for kubectl/helm subprocesses pointing at it.
    """

    binaries: Binaries
    workdir: Path
    server: str = ""
    kubeconfig: Path = field(default_factory=Path)
    ca_path: Path = field(default_factory=Path)
    admin_token: str = ""
    processes: list[ManagedProcess] = field(default_factory=list)
    _ssl: ssl.SSLContext | None = field(default=None, repr=False)

    # ------------------------------------------------------------------ use

    @property
    def ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context(cafile=str(self.ca_path))
        return self._ssl

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        token: str | None = None,
        anonymous: bool = False,
        content_type: str = "application/json",
    ) -> Response:
        """A request to the apiserver as the admin, as `token`, or with no credentials at all."""
        bearer = None if anonymous else (token if token is not None else self.admin_token)
        return http_request(
            self.server + path,
            method=method,
            token=bearer,
            body=body,
            context=self.ssl_context,
            content_type=content_type,
        )

    def env(self) -> dict[str, str]:
        """os.environ plus KUBECONFIG and private Helm directories, for kubectl/helm subprocesses."""
        helm_home = self.workdir / "helm"
        return {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "HELM_CACHE_HOME": str(helm_home / "cache"),
            "HELM_CONFIG_HOME": str(helm_home / "config"),
            "HELM_DATA_HOME": str(helm_home / "data"),
        }

    def kubectl(
        self, *args: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.binaries.kubectl), *args],
            env=self.env(),
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
        )

    def helm(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.binaries.helm), *args],
            env=self.env(),
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
        )

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        tokens = {"admin": secrets.token_urlsafe(32), "kcm": secrets.token_urlsafe(32)}
        self.admin_token = tokens["admin"]
        pki = make_pki(self.workdir / "pki")
        self.ca_path = pki.ca_cert
        logs = self.workdir / "logs"

        etcd_port, etcd_peer_port, api_port, kcm_port = (free_port() for _ in range(4))
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        etcd = ManagedProcess(
            "etcd",
            [
                str(self.binaries.etcd),
                "--name=e2e",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{etcd_peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer_port}",
                f"--initial-cluster=e2e=http://127.0.0.1:{etcd_peer_port}",
                "--initial-cluster-state=new",
                "--unsafe-no-fsync",  # throwaway data: durability buys nothing, fsync costs a lot
                "--log-level=warn",
            ],
            logs / "etcd.log",
        )
        self.processes.append(etcd)
        etcd.start()
        wait_until(
            "etcd /health",
            lambda: http_request(etcd_url + "/health", timeout=2).status == 200,
            watch=[etcd],
        )

        token_file = self.workdir / "tokens.csv"
        token_file.write_text(
            f'{tokens["admin"]},e2e-admin,e2e-admin,"system:masters"\n'
            f"{tokens['kcm']},system:kube-controller-manager,system:kube-controller-manager\n",
            encoding="utf-8",
        )
        token_file.chmod(0o600)
        self.server = f"https://127.0.0.1:{api_port}"
        apiserver = ManagedProcess(
            "kube-apiserver",
            [
                str(self.binaries.kube_apiserver),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={api_port}",
                f"--cert-dir={self.workdir / 'apiserver'}",
                f"--tls-cert-file={pki.serving_cert}",
                f"--tls-private-key-file={pki.serving_key}",
                f"--client-ca-file={pki.ca_cert}",
                f"--token-auth-file={token_file}",
                "--anonymous-auth=false",
                "--authorization-mode=RBAC",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={pki.sa_pub}",
                f"--service-account-signing-key-file={pki.sa_key}",
                f"--api-audiences={SERVICE_ACCOUNT_ISSUER}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                # Endpoints may not hold loopback addresses: do not publish one for `kubernetes`.
                "--endpoint-reconciler-type=none",
                "--profiling=false",
                "--v=1",
            ],
            logs / "kube-apiserver.log",
        )
        self.processes.append(apiserver)
        apiserver.start()
        wait_until(
            "kube-apiserver /readyz",
            lambda: self.request("GET", "/readyz").status == 200,
            watch=[etcd, apiserver],
        )

        self.kubeconfig = self.workdir / "admin.kubeconfig"
        write_kubeconfig(
            self.kubeconfig, server=self.server, ca_cert=pki.ca_cert, user="e2e-admin", token=tokens["admin"]
        )
        kcm_kubeconfig = self.workdir / "kube-controller-manager.kubeconfig"
        write_kubeconfig(
            kcm_kubeconfig,
            server=self.server,
            ca_cert=pki.ca_cert,
            user="system:kube-controller-manager",
            token=tokens["kcm"],
        )
        kcm = ManagedProcess(
            "kube-controller-manager",
            [
                str(self.binaries.kube_controller_manager),
                f"--kubeconfig={kcm_kubeconfig}",
                f"--authentication-kubeconfig={kcm_kubeconfig}",
                f"--authorization-kubeconfig={kcm_kubeconfig}",
                # The apiserver sets no request-header CA: do not look for one in its ConfigMap.
                "--authentication-skip-lookup",
                "--bind-address=127.0.0.1",
                f"--secure-port={kcm_port}",
                f"--cert-dir={self.workdir / 'kube-controller-manager'}",
                f"--tls-cert-file={pki.serving_cert}",
                f"--tls-private-key-file={pki.serving_key}",
                "--controllers=*",
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki.sa_key}",
                f"--root-ca-file={pki.ca_cert}",
                f"--cluster-signing-cert-file={pki.ca_cert}",
                f"--cluster-signing-key-file={pki.ca_key}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                "--profiling=false",
                "--v=1",
            ],
            logs / "kube-controller-manager.log",
        )
        self.processes.append(kcm)
        kcm.start()
        kcm_health = f"https://127.0.0.1:{kcm_port}/healthz"
        wait_until(
            "kube-controller-manager /healthz",
            lambda: http_request(kcm_health, context=self.ssl_context, timeout=2).status == 200,
            watch=self.processes,
        )
        # The service-account controller creating `default` shows the controllers are running.
        wait_until(
            "the `default` ServiceAccount (kube-controller-manager's controllers)",
            lambda: self.request("GET", "/api/v1/namespaces/default/serviceaccounts/default").status == 200,
            watch=self.processes,
        )

    # ------------------------------------------------------------------ restarting the apiserver

    @property
    def apiserver(self) -> ManagedProcess:
        """The kube-apiserver process that start() started (running or stopped)."""
        for proc in self.processes:
            if proc.name == "kube-apiserver":
                return proc
        raise ComponentError("the cluster has no kube-apiserver: start() it first")

    def apiserver_ready(self) -> bool:
        """Whether the kube-apiserver answers /readyz with 200 right now (False while it is down)."""
        try:
            return self.request("GET", "/readyz").status == 200
        except (OSError, http.client.HTTPException):
            return False

    def stop_apiserver(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop the kube-apiserver (SIGTERM, SIGKILL after `timeout`); etcd and the rest keep running.
        `start_apiserver()` brings it back on the same port with the same etcd and certificates.

        On SIGTERM it stops listening at once, but its process may take longer than STOP_TIMEOUT to
        exit: a short `timeout` shortens the outage, not the graceful part of its shutdown."""
        self.apiserver.stop(timeout)

    def start_apiserver(self, *, wait: bool = True, timeout: float = START_TIMEOUT) -> None:
        """Start the stopped kube-apiserver again: the same arguments (port, etcd, certificates,
        tokens), its output appended to the same log. With `wait`, block until /readyz answers 200;
        without, return once the process is started (poll `apiserver_ready()` yourself -- from a
        thread that outlives the process, see ManagedProcess: setpriv's parent-death signal follows
        the thread that started it)."""
        apiserver = self.apiserver
        if apiserver.running():
            raise ComponentError("kube-apiserver is already running")
        apiserver.start()
        if wait:
            wait_until(
                "kube-apiserver /readyz after a restart",
                self.apiserver_ready,
                timeout=timeout,
                watch=[proc for proc in self.processes if proc is apiserver or proc.name == "etcd"],
            )

    def restart_apiserver(self, downtime: float = 0.0, *, stop_timeout: float = 5.0) -> None:
        """Stop the kube-apiserver (SIGKILL if it has not exited `stop_timeout` seconds after
        SIGTERM), leave it down for `downtime` more seconds, start it again and wait until it is
        ready."""
        self.stop_apiserver(stop_timeout)
        time.sleep(downtime)
        self.start_apiserver()

    def stop(self) -> None:
        """Stop what start() started, newest first; every process gets its stop even if one fails."""
        errors: list[BaseException] = []
        while self.processes:
            proc = self.processes.pop()
            try:
                proc.stop()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise ComponentError(f"stopping the cluster failed: {errors!r}")

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ({p.log_path}):\n{p.log_tail()}" for p in self.processes)


# --------------------------------------------------------------------------- MinIO


@dataclass
class MinioServer:
    """A single-drive MinIO on a loopback address (S3 API at `endpoint`).

    With `tls`, MinIO serves HTTPS with that certificate (its SANs must name `host`), read from
    `--certs-dir` as `public.crt` and `private.key`; clients then verify it with `ssl_context`.
    """

    binary: Path
    workdir: Path
    endpoint: str = ""
    console: str = ""
    access_key: str = "speechkit-e2e"
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    region: str = "us-east-1"
    process: ManagedProcess | None = None
    host: str = "127.0.0.1"
    tls: ServingCertificate | None = None

    @property
    def ssl_context(self) -> ssl.SSLContext | None:
        """A client context that trusts this MinIO's CA, or None without TLS."""
        return self.tls.client_context() if self.tls is not None else None

    def start(self) -> None:
        port, console_port = free_port(self.host), free_port(self.host)
        while console_port == port:  # the kernel may hand the just-released port out again
            console_port = free_port(self.host)
        scheme = "https" if self.tls is not None else "http"
        self.endpoint = f"{scheme}://{self.host}:{port}"
        self.console = f"{scheme}://{self.host}:{console_port}"
        self._launch(port, console_port)

    def start_again(self, *, wait: bool = True, timeout: float = START_TIMEOUT) -> None:
        """Start a stopped MinIO again on the same address (S3 and console ports), with the same
        data directory, credentials and certificates: its buckets and objects are still there.
        With `wait`, block until it is ready; without, return once the process is started (poll
        `ready()` yourself, from a thread that outlives the process: see ManagedProcess)."""
        if not self.endpoint or not self.console:
            raise ComponentError("MinIO was never started: start() it first")
        if self.process is not None and self.process.running():
            raise ComponentError("MinIO is already running")
        port = urllib.parse.urlsplit(self.endpoint).port
        console_port = urllib.parse.urlsplit(self.console).port
        assert port is not None and console_port is not None, (self.endpoint, self.console)
        self._launch(port, console_port, wait=wait, timeout=timeout)

    def ready(self) -> bool:
        """Whether MinIO answers its readiness probe right now (False while it is down)."""
        try:
            url = self.endpoint + "/minio/health/ready"
            return http_request(url, context=self.ssl_context, timeout=2).status == 200
        except (OSError, http.client.HTTPException):
            return False

    def _launch(
        self, port: int, console_port: int, *, wait: bool = True, timeout: float = START_TIMEOUT
    ) -> None:
        certs = self.workdir / "certs"
        if self.tls is not None:
            certs.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.tls.cert, certs / "public.crt")
            shutil.copyfile(self.tls.key, certs / "private.key")
            (certs / "private.key").chmod(0o600)
        env = {
            **os.environ,
            "MINIO_ROOT_USER": self.access_key,
            "MINIO_ROOT_PASSWORD": self.secret_key,
            "MINIO_REGION": self.region,
            "MINIO_UPDATE": "off",
            "MINIO_CI_CD": "1",  # allows data on the root disk, no TTY games
        }
        self.process = ManagedProcess(
            "minio",
            [
                str(self.binary),
                "server",
                str(self.workdir / "data"),
                f"--address={self.host}:{port}",
                f"--console-address={self.host}:{console_port}",
                f"--certs-dir={certs}",
                "--quiet",
            ],
            self.workdir / "logs" / "minio.log",
            env=env,
        )
        self.process.start()
        if not wait:
            return
        context = self.ssl_context
        wait_until(
            "MinIO /minio/health/ready",
            lambda: (
                http_request(self.endpoint + "/minio/health/ready", context=context, timeout=2).status == 200
            ),
            timeout=timeout,
            watch=[self.process],
        )

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None


# --------------------------------------------------------------------------- context managers


@contextlib.contextmanager
def _workdir(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        if os.environ.get("SPEECHKIT_E2E_KEEP_TMP"):
            print(f"[e2e] kept {path} (SPEECHKIT_E2E_KEEP_TMP is set)")
        else:
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def running_cluster(binaries: Binaries) -> Iterator[KubeCluster]:
    with _workdir("speechkit-e2e-kube-") as workdir:
        cluster = KubeCluster(binaries=binaries, workdir=workdir)
        try:
            cluster.start()
            yield cluster
        finally:
            cluster.stop()


@contextlib.contextmanager
def running_minio(
    binary: Path, *, host: str = "127.0.0.1", tls: ServingCertificate | None = None
) -> Iterator[MinioServer]:
    """A MinIO on `host`, over HTTPS with `tls` (see MinioServer), stopped and removed afterwards."""
    with _workdir("speechkit-e2e-minio-") as workdir:
        server = MinioServer(binary=binary, workdir=workdir, host=host, tls=tls)
        try:
            server.start()
            yield server
        finally:
            server.stop()
