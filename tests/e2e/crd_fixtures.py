"""The TranscriptionJob CRD on the e2e cluster, applied once per session; fresh namespaces for tests.

tests/e2e/conftest.py imports the fixtures, so every e2e module can request them by name; import only the
plain helpers. ``crd_installed`` is idempotent (a server-side apply of the same CRD changes nothing, and
takes the fields over if Helm created the CRD first), so a test may also apply the CRD again itself.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from devstack.components import REPO_ROOT, KubeCluster

CRD_DIR = REPO_ROOT / "deploy" / "crds"


@dataclass(frozen=True)
class InstalledCrd:
    """The TranscriptionJob resource as the API server serves it."""

    name: str = "transcriptionjobs.speechkit.dev"
    group: str = "speechkit.dev"
    version: str = "v1alpha1"
    plural: str = "transcriptionjobs"
    kind: str = "TranscriptionJob"

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"

    def collection(self, namespace: str) -> str:
        """The API path of the TranscriptionJobs of ``namespace``."""
        return f"/apis/{self.group}/{self.version}/namespaces/{namespace}/{self.plural}"

    def path(self, namespace: str, name: str, subresource: str = "") -> str:
        """The API path of one TranscriptionJob, or of its ``subresource`` (``"status"``)."""
        suffix = f"/{subresource}" if subresource else ""
        return f"{self.collection(namespace)}/{name}{suffix}"


def install_crd(cluster: KubeCluster, crd: InstalledCrd = InstalledCrd()) -> InstalledCrd:
    """Apply deploy/crds/ and wait until the CRD is Established (served and ready for objects)."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_DIR))
    cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd.name}", "--timeout=60s", timeout=90)
    return crd


@pytest.fixture(scope="session")
def crd_installed(kube_cluster: KubeCluster) -> InstalledCrd:
    """The TranscriptionJob CRD from deploy/crds/, applied with the built kubectl and Established."""
    return install_crd(kube_cluster)


def unique_name(prefix: str) -> str:
    """``prefix`` and 8 random hex digits: a DNS label unique within the session."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def create_namespace(cluster: KubeCluster, name: str) -> str:
    """Create namespace ``name`` (it must not exist) through the API; return its name."""
    response = cluster.request(
        "POST",
        "/api/v1/namespaces",
        body={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
    )
    assert response.status == 201, (response.status, response.body[:1000])
    return name


def delete_namespace(cluster: KubeCluster, name: str) -> None:
    """Ask for the namespace's deletion; the namespace controller finishes it in the background."""
    response = cluster.request("DELETE", f"/api/v1/namespaces/{name}")
    assert response.status in (200, 202, 404), (response.status, response.body[:1000])


@pytest.fixture
def fresh_namespace(kube_cluster: KubeCluster) -> Iterator[str]:
    """A fresh namespace for one test.

    Afterwards its TranscriptionJobs are deleted at once, so that an operator started later in the
    session (tests/e2e/test_operator_e2e.py watches every namespace) never sees them, and then the
    namespace itself, without waiting for the namespace controller.
    """
    name = create_namespace(kube_cluster, unique_name("tj-api"))
    yield name
    crd = InstalledCrd()
    response = kube_cluster.request("DELETE", crd.collection(name))
    assert response.status in (200, 404), (response.status, response.body[:1000])
    delete_namespace(kube_cluster, name)
