"""Smoke tests of the e2e components themselves: if these fail, no e2e test of the operator can pass."""

from __future__ import annotations

import ssl
import time
import urllib.error
import uuid
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from botocore.config import Config

from devstack.components import SERVICE_ACCOUNT_ISSUER, KubeCluster, MinioServer, Response, http_request

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _ok(response: Response, *statuses: int) -> Any:
    expected = statuses or (200, 201)
    assert response.status in expected, (response.status, response.body[:2000])
    return response.json()


def _wait_gone(cluster: KubeCluster, path: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while (response := cluster.request("GET", path)).status != 404:
        assert response.status == 200, (response.status, response.body[:500])
        assert time.monotonic() < deadline, f"{path} still exists after {timeout}s: {response.body[:1000]!r}"
        time.sleep(0.5)


def test_version_over_tls_with_admin_token(kube_cluster: KubeCluster) -> None:
    assert kube_cluster.server.startswith("https://127.0.0.1:")
    version = _ok(kube_cluster.request("GET", "/version"))
    assert version["major"] == "1"
    assert int(version["minor"].rstrip("+")) >= 29, version  # CEL validation rules are GA
    # The serving certificate chains to the fixture's CA only: the system trust store rejects it.
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        http_request(kube_cluster.server + "/version", context=ssl.create_default_context())


def test_unauthenticated_requests_are_rejected(kube_cluster: KubeCluster) -> None:
    assert kube_cluster.request("GET", "/api/v1/namespaces", anonymous=True).status == 401
    assert kube_cluster.request("GET", "/api/v1/namespaces", token="not-a-token").status == 401


def test_rbac_denies_a_service_account_without_bindings(kube_cluster: KubeCluster) -> None:
    name = _unique("smoke-nobody")
    _ok(
        kube_cluster.request(
            "POST",
            "/api/v1/namespaces/default/serviceaccounts",
            body={
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": name},
            },
        )
    )
    try:
        issued = _ok(
            kube_cluster.request(
                "POST",
                f"/api/v1/namespaces/default/serviceaccounts/{name}/token",
                body={
                    "apiVersion": "authentication.k8s.io/v1",
                    "kind": "TokenRequest",
                    "spec": {"audiences": [SERVICE_ACCOUNT_ISSUER], "expirationSeconds": 600},
                },
            )
        )
        token = issued["status"]["token"]

        # Authenticated (a SelfSubjectReview names the service account) ...
        review = _ok(
            kube_cluster.request(
                "POST",
                "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                body={
                    "apiVersion": "authentication.k8s.io/v1",
                    "kind": "SelfSubjectReview",
                },
                token=token,
            )
        )
        assert review["status"]["userInfo"]["username"] == f"system:serviceaccount:default:{name}"
        # ... but not authorized.
        assert kube_cluster.request("GET", "/api/v1/namespaces/default/pods", token=token).status == 403
    finally:
        kube_cluster.request("DELETE", f"/api/v1/namespaces/default/serviceaccounts/{name}")


def test_namespace_deletion_completes(kube_cluster: KubeCluster) -> None:
    namespace = _unique("smoke-ns")
    _ok(
        kube_cluster.request(
            "POST",
            "/api/v1/namespaces",
            body={
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": namespace},
            },
        )
    )
    # Content that the namespace controller has to delete before the namespace can go.
    _ok(
        kube_cluster.request(
            "POST",
            f"/api/v1/namespaces/{namespace}/configmaps",
            body={
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "content"},
                "data": {"k": "v"},
            },
        )
    )
    _ok(kube_cluster.request("DELETE", f"/api/v1/namespaces/{namespace}"), 200, 202)
    _wait_gone(kube_cluster, f"/api/v1/namespaces/{namespace}")


def test_garbage_collector_deletes_dependents(kube_cluster: KubeCluster) -> None:
    owner = _ok(
        kube_cluster.request(
            "POST",
            "/api/v1/namespaces/default/configmaps",
            body={
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": _unique("smoke-owner")},
            },
        )
    )
    dependent_name = _unique("smoke-dependent")
    _ok(
        kube_cluster.request(
            "POST",
            "/api/v1/namespaces/default/configmaps",
            body={
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": dependent_name,
                    "ownerReferences": [
                        {
                            "apiVersion": "v1",
                            "kind": "ConfigMap",
                            "name": owner["metadata"]["name"],
                            "uid": owner["metadata"]["uid"],
                        }
                    ],
                },
            },
        )
    )
    _ok(kube_cluster.request("DELETE", f"/api/v1/namespaces/default/configmaps/{owner['metadata']['name']}"))
    _wait_gone(kube_cluster, f"/api/v1/namespaces/default/configmaps/{dependent_name}")


def test_crd_validation_rules_are_enforced(kube_cluster: KubeCluster) -> None:
    """x-kubernetes-validations (CEL, GA since 1.29) reject an invalid custom resource."""
    group, plural = "smoke.speechkit.example.com", _unique("widgets").replace("-", "")
    kind = "Widget" + plural[-8:]
    crd_name = f"{plural}.{group}"
    spec_schema = {
        "type": "object",
        "properties": {"min": {"type": "integer"}, "max": {"type": "integer"}},
        "x-kubernetes-validations": [{"rule": "self.min <= self.max", "message": "min must not exceed max"}],
    }
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": crd_name},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": plural, "singular": plural[:-1], "kind": kind},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": spec_schema}}},
                }
            ],
        },
    }
    _ok(kube_cluster.request("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", body=crd))
    try:
        deadline = time.monotonic() + 30
        collection = f"/apis/{group}/v1/namespaces/default/{plural}"
        while kube_cluster.request("GET", collection).status != 200:
            assert time.monotonic() < deadline, "the CRD never became served"
            time.sleep(0.2)

        def widget(lo: int, hi: int) -> Response:
            body = {
                "apiVersion": f"{group}/v1",
                "kind": kind,
                "metadata": {"name": _unique("w")},
                "spec": {"min": lo, "max": hi},
            }
            return kube_cluster.request("POST", collection, body=body)

        _ok(widget(1, 2), 201)
        rejected = widget(3, 2)
        assert rejected.status == 422, rejected.body
        assert "min must not exceed max" in rejected.json()["message"]
    finally:
        kube_cluster.request("DELETE", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd_name}")


def test_kubectl_get_namespaces(kube_cluster: KubeCluster) -> None:
    result = kube_cluster.kubectl("--kubeconfig", str(kube_cluster.kubeconfig), "get", "ns", "-o", "name")
    names = set(result.stdout.split())
    assert {"namespace/default", "namespace/kube-system"} <= names, result.stdout


def test_helm_runs_against_the_cluster(kube_cluster: KubeCluster) -> None:
    version = kube_cluster.helm("version", "--short")
    assert version.stdout.startswith("v3."), version.stdout
    listed = kube_cluster.helm("list", "--all-namespaces", "-o", "json")
    assert listed.stdout.strip() == "[]", listed.stdout


@pytest.fixture
def s3(minio_server: MinioServer) -> S3Client:
    return boto3.client(
        "s3",
        endpoint_url=minio_server.endpoint,
        aws_access_key_id=minio_server.access_key,
        aws_secret_access_key=minio_server.secret_key,
        region_name=minio_server.region,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
    )


def test_minio_bucket_put_get(s3: S3Client) -> None:
    bucket = _unique("smoke-bucket")
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="audio/hello.txt", Body=b"hello, minio")
    got = s3.get_object(Bucket=bucket, Key="audio/hello.txt")
    assert got["Body"].read() == b"hello, minio"
    listed = s3.list_objects_v2(Bucket=bucket)
    assert [obj["Key"] for obj in listed.get("Contents", [])] == ["audio/hello.txt"]
