"""Before kopf starts: one actionable line for each setup that cannot work.

A small HTTP server on loopback plays the API server's few endpoints the checks use; the e2e tier
runs the same checks against the real kube-apiserver.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from speechkit_operator.cli import main
from speechkit_operator.clients.kube_preflight import PreflightError, preflight
from tests.support.free_port import free_port


@dataclass
class FakeApiServer:
    crd_installed: bool = True
    #: (verb, resource, namespace or "") the identity may not do.
    denied: set[tuple[str, str, str]] = field(default_factory=set)
    version_status: int = 200
    reviews: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
def api_server() -> Iterator[tuple[FakeApiServer, str]]:
    state = FakeApiServer()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_: Any) -> None:
            pass

        def _answer(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path.rstrip("/") == "/version":
                self._answer(state.version_status, {"major": "1", "minor": "36"})
            elif self.path == "/apis/speechkit.dev/v1alpha1" and state.crd_installed:
                self._answer(200, {"resources": [{"name": "transcriptionjobs"}]})
            else:
                self._answer(404, {"kind": "Status", "code": 404})

        def do_POST(self) -> None:
            review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state.reviews.append(review)
            attributes = review["spec"]["resourceAttributes"]
            resource = attributes["resource"] + (
                "/" + attributes["subresource"] if attributes.get("subresource") else ""
            )
            allowed = (attributes["verb"], resource, attributes.get("namespace", "")) not in state.denied
            self._answer(201, {**review, "status": {"allowed": allowed}})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def use_kubeconfig(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, server: str) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": {"token": "t0ken"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps(config))
    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)


def failure(namespaces: list[str] | None = None) -> str:
    with pytest.raises(PreflightError) as raised:
        preflight(namespaces or [])
    message = str(raised.value)
    assert "\n" not in message
    return message


def test_no_kubeconfig(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    message = failure()
    assert message.startswith("no Kubernetes credentials")
    assert "set KUBECONFIG or create ~/.kube/config" in message


def test_unreachable_api_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    server = f"http://127.0.0.1:{free_port()}"
    use_kubeconfig(monkeypatch, tmp_path, server)
    message = failure()
    assert message.startswith(f"cannot reach the Kubernetes API server at {server}")
    assert "check the kubeconfig's server address" in message


def test_refused_credentials(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, api_server: tuple[FakeApiServer, str]
) -> None:
    state, url = api_server
    state.version_status = 401
    use_kubeconfig(monkeypatch, tmp_path, url)
    assert "refused the credentials (401 Unauthorized)" in failure()


def test_crd_not_installed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, api_server: tuple[FakeApiServer, str]
) -> None:
    state, url = api_server
    state.crd_installed = False
    use_kubeconfig(monkeypatch, tmp_path, url)
    message = failure()
    assert "CRD (transcriptionjobs.speechkit.dev/v1alpha1) is not installed" in message
    assert "kubectl apply -f deploy/crds/" in message


def test_rbac_forbidding_the_watch_cluster_wide(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, api_server: tuple[FakeApiServer, str]
) -> None:
    state, url = api_server
    state.denied = {("watch", "transcriptionjobs", ""), ("patch", "transcriptionjobs/status", "")}
    use_kubeconfig(monkeypatch, tmp_path, url)
    message = failure()
    assert message.startswith(
        "RBAC forbids the operator to watch transcriptionjobs.speechkit.dev, "
        "patch transcriptionjobs/status.speechkit.dev cluster-wide"
    )


def test_rbac_is_checked_in_each_watched_namespace(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, api_server: tuple[FakeApiServer, str]
) -> None:
    state, url = api_server
    state.denied = {("get", "secrets", "speech-b")}
    use_kubeconfig(monkeypatch, tmp_path, url)
    assert failure(["speech-a", "speech-b"]).startswith(
        "RBAC forbids the operator to get secrets in namespace speech-b"
    )
    # Globs cannot be checked before kopf resolves them; the namespace listing it needs can.
    state.reviews.clear()
    preflight(["speech-*"])
    checked = {review["spec"]["resourceAttributes"].get("namespace") for review in state.reviews}
    assert checked == {None}


def test_a_working_setup_passes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, api_server: tuple[FakeApiServer, str]
) -> None:
    state, url = api_server
    use_kubeconfig(monkeypatch, tmp_path, url)
    preflight([])
    verbs = {
        (review["spec"]["resourceAttributes"]["verb"], review["spec"]["resourceAttributes"]["resource"])
        for review in state.reviews
    }
    assert ("watch", "transcriptionjobs") in verbs and ("get", "secrets") in verbs


def test_run_prints_one_line_and_exits_1(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert main(["run"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("speechkit-operator: no Kubernetes credentials")
