"""`speechkit-operator run` against the real API server when the setup cannot work: one line that
says what to do, and a non-zero exit, instead of a traceback or an operator that never sees a job."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from devstack.components import KubeCluster, free_port, write_kubeconfig
from speechkit_operator.clients.kube_preflight import preflight
from tests.e2e.operator_fixtures import OperatorIdentity, run_kubectl

SYSTEM_CA = Path("/etc/ssl/certs/ca-certificates.crt")


def run_operator(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("SPEECHKIT_OPERATOR_")}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    env["KUBECONFIG"] = str(kubeconfig)
    return subprocess.run(
        [sys.executable, "-m", "speechkit_operator", "run", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("speechkit-operator: ")
    return lines[0].removeprefix("speechkit-operator: ")


@pytest.fixture(scope="module")
def nobody(kube_cluster: KubeCluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kubeconfig for a ServiceAccount that no role is bound to."""
    run_kubectl(kube_cluster, "create", "namespace", "preflight-nobody")
    run_kubectl(kube_cluster, "create", "serviceaccount", "nobody", "-n", "preflight-nobody")
    token = run_kubectl(kube_cluster, "create", "token", "nobody", "-n", "preflight-nobody").stdout.strip()
    path = tmp_path_factory.mktemp("nobody") / "kubeconfig"
    write_kubeconfig(
        path, server=kube_cluster.server, ca_cert=kube_cluster.ca_path, user="nobody", token=token
    )
    return path


@pytest.mark.usefixtures("crd_installed")
def test_rbac_that_forbids_the_watch(nobody: Path) -> None:
    message = one_line(run_operator(nobody))
    assert message.startswith("RBAC forbids the operator to list customresourcedefinitions")
    assert "grant the Helm chart's (Cluster)Role" in message

    # Namespaced: the cluster-scoped rules come first, then each watched namespace.
    assert one_line(run_operator(nobody, "--namespace", "speech")).startswith("RBAC forbids the operator to")


@pytest.mark.usefixtures("crd_installed")
def test_the_charts_rbac_passes_the_preflight(
    operator_identity: OperatorIdentity, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(operator_identity.kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    preflight([])
    preflight(["speech-a", "speech-*"])


def test_unreachable_api_server(kube_cluster: KubeCluster, tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    server = f"https://127.0.0.1:{free_port()}"
    write_kubeconfig(path, server=server, ca_cert=kube_cluster.ca_path, user="x", token="y")
    message = one_line(run_operator(path))
    assert message.startswith(f"cannot reach the Kubernetes API server at {server}")


def test_an_api_server_whose_certificate_is_not_trusted(kube_cluster: KubeCluster, tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    write_kubeconfig(path, server=kube_cluster.server, ca_cert=SYSTEM_CA, user="x", token="y")
    message = one_line(run_operator(path))
    assert "TLS certificate is not trusted" in message


def test_credentials_the_api_server_refuses(kube_cluster: KubeCluster, tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    write_kubeconfig(path, server=kube_cluster.server, ca_cert=kube_cluster.ca_path, user="x", token="forged")
    assert "refused the credentials (401 Unauthorized)" in one_line(run_operator(path))


def test_no_kubeconfig(tmp_path: Path) -> None:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"KUBECONFIG", "KUBERNETES_SERVICE_HOST"}
    }
    env["HOME"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "speechkit_operator", "run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert one_line(result).startswith("no Kubernetes credentials")
