"""The Helm chart with the real helm binary: lint, render, server-side dry-run, install and uninstall.

Nothing runs the operator here (the e2e cluster has no kubelet): these tests check what the chart
asks the API server for, and that the API server accepts it.
"""

from __future__ import annotations

import json
import os
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack.components import REPO_ROOT, KubeCluster, Response
from speechkit_operator.config import Settings
from tests.e2e.crd_fixtures import InstalledCrd, create_namespace, delete_namespace, unique_name

CHART = REPO_ROOT / "deploy" / "helm" / "speechkit-operator"
RELEASE = "e2e-helm"  # not the release tests/e2e/operator_fixtures.py renders: no shared ClusterRole
FULLNAME = "e2e-helm-speechkit-operator"  # the chart's fullname rule: "<release>-<chart>"
IMAGE_REPOSITORY = "registry.example.com/speechkit-operator"
SETTINGS_PREFIX = "SPEECHKIT_OPERATOR_"
RECOGNIZER = f"{FULLNAME}-recognizer"
RECOGNIZER_IMAGE_REPOSITORY = "registry.example.com/speechkit-recognizer"


def custom_values(watch_namespaces: list[str]) -> dict[str, Any]:
    """Non-default values touching every part of the chart."""
    return {
        "watchNamespaces": watch_namespaces,
        "logLevel": "debug",
        "image": {"repository": IMAGE_REPOSITORY, "tag": "0.1.0-rc1"},
        "settings": {
            "max_submit_attempts": 2,
            "http_timeout": 12.5,
            "presign_expiry_seconds": 604_800,  # a float64 to Helm: must render as an integer
            "storage_endpoint": "http://minio.storage.svc:9000",
            "storage_region": None,  # unset: the operator's built-in default applies
        },
        "resources": {
            "requests": {"cpu": "10m", "memory": "64Mi"},
            "limits": {"cpu": "250m", "memory": "256Mi"},
        },
        "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy.example:3128"}],
        "logFormat": "json",
        # A private CA bundle from a ConfigMap and proxy variables from another: the API server's
        # dry run checks the rendered volumes, mounts and envFrom.
        "extraVolumes": [{"name": "ca-bundle", "configMap": {"name": "corporate-ca"}}],
        "extraVolumeMounts": [{"name": "ca-bundle", "mountPath": "/etc/speechkit/ca", "readOnly": True}],
        "extraEnvFrom": [{"configMapRef": {"name": "proxy-env", "optional": True}}],
    }


def recognizer_values(api_key_secret: str = "recognizer-api-key") -> dict[str, Any]:
    """The recognition service enabled, with non-default values in each of its parts."""
    return {
        "image": {"repository": IMAGE_REPOSITORY, "tag": "0.1.0"},
        "recognizer": {
            "enabled": True,
            "replicas": 2,
            "image": {"repository": RECOGNIZER_IMAGE_REPOSITORY, "tag": "0.1.0"},
            "workers": 3,
            "queueSize": 8,
            "retentionSeconds": 86_400,
            "apiKeySecret": {"name": api_key_secret, "key": "api-key"},
            "logLevel": "warning",
            "settings": {"max_audio_bytes": 52_428_800, "fetch_timeout": 60},
            "extraEnv": [{"name": "OMP_NUM_THREADS", "value": "1"}],
            "logFormat": "json",
            "extraVolumes": [{"name": "ca-bundle", "secret": {"secretName": "corporate-ca"}}],
            "extraVolumeMounts": [{"name": "ca-bundle", "mountPath": "/etc/speechkit/ca", "readOnly": True}],
            "extraEnvFrom": [{"secretRef": {"name": "recognizer-s3", "optional": True}}],
            "service": {"sessionAffinity": "ClientIP", "sessionAffinityTimeoutSeconds": 3600},
            "podAnnotations": {"example.com/team": "speech"},
            "nodeSelector": {"kubernetes.io/os": "linux"},
        },
    }


def _values_file(directory: Path, values: dict[str, Any] | None) -> list[str]:
    """Helm arguments for ``values``: none for the chart's defaults, else ``-f <file>``."""
    if values is None:
        return []
    path = directory / "values.yaml"
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    return ["-f", str(path)]


def render(
    cluster: KubeCluster, namespace: str, values_args: list[str], *extra: str
) -> tuple[str, list[dict[str, Any]]]:
    """`helm template` of the chart as release RELEASE in ``namespace``: the text and its objects."""
    text = cluster.helm(
        "template", RELEASE, str(CHART), "--namespace", namespace, *values_args, *extra
    ).stdout
    return text, [doc for doc in yaml.safe_load_all(text) if doc]


def only(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [obj for obj in objects if obj["kind"] == kind]
    assert len(found) == 1, (kind, [obj["kind"] for obj in objects])
    return found[0]


def container_env(deployment: dict[str, Any]) -> dict[str, str]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {item["name"]: item["value"] for item in container["env"] if "value" in item}


def rule_resources(rules: list[dict[str, Any]]) -> set[str]:
    return {resource for rule in rules for resource in rule["resources"]}


def wait_until(what: str, condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting until {what}"
        time.sleep(0.2)


def _gone(cluster: KubeCluster, path: str) -> Callable[[], bool]:
    return lambda: cluster.request("GET", path).status == 404


def _empty(cluster: KubeCluster, list_path: str) -> Callable[[], bool]:
    return lambda: _ok(cluster.request("GET", list_path))["items"] == []


def _ok(response: Response) -> Any:
    assert response.status == 200, (response.status, response.body[:2000])
    return response.json()


# --------------------------------------------------------------------------- lint


@pytest.mark.parametrize("variant", ["default-values", "custom-values", "recognizer"])
def test_helm_lint_strict_passes(kube_cluster: KubeCluster, tmp_path: Path, variant: str) -> None:
    values = {
        "default-values": None,
        "custom-values": custom_values(["team-a", "team-b"]),
        "recognizer": recognizer_values(),
    }[variant]
    values_args = _values_file(tmp_path, values)

    result = kube_cluster.helm("lint", "--strict", str(CHART), *values_args)

    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout, result.stdout
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout
    # Lint mode turns the chart's `fail` into an [INFO] line and exits 0 (helm/helm#11957): look for it.
    assert "Fail:" not in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("values", "message"),
    [
        pytest.param(
            {"watchNamespaces": ["team-*"]}, 'watchNamespaces: "team-*" is not a namespace name', id="glob"
        ),
        pytest.param(
            {"settings": {"namespaces": "team-a"}},
            "settings.namespaces is not supported: list the namespaces in watchNamespaces",
            id="settings-namespaces",
        ),
        pytest.param(
            {"recognizer": {"enabled": True, "replicas": 3}},
            "recognizer.replicas > 1 needs recognizer.service.sessionAffinity=ClientIP",
            id="recognizer-replicas",
        ),
        pytest.param(
            {
                "recognizer": {"enabled": True},
                "extraEnv": [{"name": "SPEECHKIT_OPERATOR_BACKEND", "value": "x"}],
            },
            "extraEnv: SPEECHKIT_OPERATOR_BACKEND is set by the chart",
            id="duplicate-env",
        ),
    ],
)
def test_invalid_values_are_refused_with_the_charts_message(
    kube_cluster: KubeCluster, tmp_path: Path, values: dict[str, Any], message: str
) -> None:
    """The chart's own checks stop `helm template` (and so `helm install`) with a clear message."""
    result = kube_cluster.helm("template", RELEASE, str(CHART), *_values_file(tmp_path, values), check=False)

    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("values", "named"),
    [
        pytest.param({"settings": {"bakend": "self-hosted"}}, "bakend", id="settings-typo"),
        pytest.param({"watchNamespace": ["team-a"]}, "watchNamespace", id="top-level-typo"),
        pytest.param({"recognizer": {"sevice": {"port": 80}}}, "sevice", id="recognizer-typo"),
        pytest.param({"settings": {"http_timeout": "soon"}}, "http_timeout", id="wrong-type"),
        pytest.param({"logLevel": "trace"}, "logLevel", id="log-level"),
        pytest.param({"logFormat": "xml"}, "logFormat", id="log-format"),
    ],
)
def test_values_schema_refuses_typos_and_wrong_types(
    kube_cluster: KubeCluster, tmp_path: Path, values: dict[str, Any], named: str
) -> None:
    """values.schema.json stops `helm template` (and install, upgrade, lint) naming the bad key."""
    result = kube_cluster.helm("template", RELEASE, str(CHART), *_values_file(tmp_path, values), check=False)

    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr, result.stderr
    assert named in result.stderr, result.stderr
    assert result.stdout == ""

    linted = kube_cluster.helm("lint", "--strict", str(CHART), *_values_file(tmp_path, values), check=False)
    assert linted.returncode != 0
    assert named in linted.stdout + linted.stderr


def test_set_with_a_misspelt_setting_is_refused(kube_cluster: KubeCluster) -> None:
    result = kube_cluster.helm(
        "template", RELEASE, str(CHART), "--set", "settings.bakend=self-hosted", check=False
    )

    assert result.returncode != 0
    assert "bakend" in result.stderr, result.stderr
    assert result.stdout == ""


# --------------------------------------------------------------------------- render + server-side dry run


@pytest.mark.parametrize("custom", [False, True], ids=["cluster-wide", "namespaced"])
def test_rendered_chart_passes_a_server_side_dry_run(
    kube_cluster: KubeCluster,
    crd_installed: InstalledCrd,
    tmp_path: Path,
    custom: bool,
) -> None:
    release_namespace = create_namespace(kube_cluster, unique_name("helm-ops"))
    watched = [create_namespace(kube_cluster, unique_name(f"helm-team-{t}")) for t in "ab"] if custom else []
    try:
        values_args = _values_file(tmp_path, custom_values(watched) if custom else None)
        text, objects = render(kube_cluster, release_namespace, values_args, "--include-crds")

        kinds = Counter(obj["kind"] for obj in objects)
        expected = {
            "CustomResourceDefinition": 2,  # TranscriptionJob, TranscriptionBatch
            "ServiceAccount": 1,
            "ClusterRole": 1,
            "ClusterRoleBinding": 1,
            "Deployment": 1,
            # Leader election's Lease, in the release namespace.
            "Role": 1,
            "RoleBinding": 1,
            # The operator's metrics.
            "Service": 1,
        }
        if custom:
            expected |= {"Role": 3, "RoleBinding": 3}
        assert kinds == expected

        deployment = only(objects, "Deployment")
        assert deployment["metadata"]["namespace"] == release_namespace
        assert deployment["spec"]["replicas"] == 1
        assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
        service_account = only(objects, "ServiceAccount")
        assert (
            deployment["spec"]["template"]["spec"]["serviceAccountName"]
            == service_account["metadata"]["name"]
        )
        subject = {"kind": "ServiceAccount", "name": FULLNAME, "namespace": release_namespace}
        cluster_role = only(objects, "ClusterRole")
        assert only(objects, "ClusterRoleBinding")["subjects"] == [subject]
        if custom:
            # Least privilege: the job rules live in a Role per watched namespace only.
            roles = [
                obj
                for obj in objects
                if obj["kind"] == "Role" and not obj["metadata"]["name"].endswith("-leader-election")
            ]
            bindings = [
                obj
                for obj in objects
                if obj["kind"] == "RoleBinding" and not obj["metadata"]["name"].endswith("-leader-election")
            ]
            assert sorted(role["metadata"]["namespace"] for role in roles) == sorted(watched)
            assert sorted(b["metadata"]["namespace"] for b in bindings) == sorted(watched)
            assert all(b["subjects"] == [subject] for b in bindings)
            for role in roles:
                assert {"transcriptionjobs", "transcriptionjobs/status", "secrets"} <= rule_resources(
                    role["rules"]
                )
            assert rule_resources(cluster_role["rules"]) == {"customresourcedefinitions", "namespaces"}
        else:
            assert {"transcriptionjobs", "transcriptionjobs/status", "secrets", "events"} <= rule_resources(
                cluster_role["rules"]
            )

        manifest = tmp_path / "rendered.yaml"
        manifest.write_text(text, encoding="utf-8")
        applied = kube_cluster.kubectl("apply", "--dry-run=server", "-f", str(manifest))

        lines = applied.stdout.splitlines()
        assert len(lines) == len(objects), applied.stdout
        assert all(line.endswith("(server dry run)") for line in lines), applied.stdout
        assert f"deployment.apps/{FULLNAME} created (server dry run)" in lines
        # A dry run stores nothing.
        path = f"/apis/apps/v1/namespaces/{release_namespace}/deployments/{FULLNAME}"
        assert kube_cluster.request("GET", path).status == 404
    finally:
        for namespace in [release_namespace, *watched]:
            delete_namespace(kube_cluster, namespace)


def test_chart_with_the_recognizer_passes_a_server_side_dry_run(
    kube_cluster: KubeCluster,
    crd_installed: InstalledCrd,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The recognition service's Deployment, Service and ServiceAccount, and the operator aimed at it."""
    release_namespace = create_namespace(kube_cluster, unique_name("helm-rec"))
    try:
        values_args = _values_file(tmp_path, recognizer_values())
        text, objects = render(kube_cluster, release_namespace, values_args)

        kinds = Counter(obj["kind"] for obj in objects)
        # The API key comes from the named Secret, so the chart creates none; the NetworkPolicy is on.
        assert {
            kind: kinds[kind] for kind in ("ServiceAccount", "Deployment", "Service", "NetworkPolicy")
        } == {
            "ServiceAccount": 2,
            "Deployment": 2,
            "Service": 2,  # the recognizer's and the operator's metrics
            "NetworkPolicy": 1,
        }
        assert "Secret" not in kinds
        (operator,) = [o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == FULLNAME]
        (recognizer,) = [
            o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == RECOGNIZER
        ]
        (service,) = [o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == RECOGNIZER]
        url = f"http://{RECOGNIZER}.{release_namespace}.svc:8088"
        (operator_container,) = operator["spec"]["template"]["spec"]["containers"]
        names = [item["name"] for item in operator_container["env"]]
        assert len(names) == len(set(names)), names
        env = container_env(operator)
        assert env[SETTINGS_PREFIX + "BACKEND"] == "self-hosted"
        assert env[SETTINGS_PREFIX + "SELF_HOSTED_URL"] == url
        settings = _settings_from(env, monkeypatch)
        assert settings.submit_base_url == settings.operations_base_url == url

        pod = recognizer["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert recognizer["spec"]["replicas"] == 2
        assert container["image"] == f"{RECOGNIZER_IMAGE_REPOSITORY}:0.1.0"
        assert container["args"] == [
            "serve", "--host", "0.0.0.0", "--port", "8088", "--quiet", "--log-format", "json",
        ]  # fmt: skip
        # After the chart's own: /tmp, and the operations database (an emptyDir by default).
        assert pod["volumes"][1] == {"name": "state", "emptyDir": {"sizeLimit": "256Mi"}}
        assert container["volumeMounts"][1] == {"name": "state", "mountPath": "/var/lib/speechkit-recognizer"}
        assert pod["volumes"][2:] == recognizer_values()["recognizer"]["extraVolumes"]
        assert container["volumeMounts"][2:] == recognizer_values()["recognizer"]["extraVolumeMounts"]
        assert container["envFrom"] == recognizer_values()["recognizer"]["extraEnvFrom"]
        assert pod["serviceAccountName"] == RECOGNIZER
        assert pod["automountServiceAccountToken"] is False
        assert service["metadata"]["name"] == RECOGNIZER
        assert service["spec"]["sessionAffinityConfig"] == {"clientIP": {"timeoutSeconds": 3600}}
        subjects = [s for o in objects if o["kind"].endswith("RoleBinding") for s in o["subjects"]]
        assert {s["name"] for s in subjects} == {FULLNAME}, "the recognition service gets no RBAC"

        manifest = tmp_path / "rendered.yaml"
        manifest.write_text(text, encoding="utf-8")
        applied = kube_cluster.kubectl("apply", "--dry-run=server", "-f", str(manifest))

        lines = applied.stdout.splitlines()
        assert len(lines) == len(objects), applied.stdout
        assert all(line.endswith("(server dry run)") for line in lines), applied.stdout
        for created in (
            f"deployment.apps/{RECOGNIZER}",
            f"service/{RECOGNIZER}",
            f"serviceaccount/{RECOGNIZER}",
            f"networkpolicy.networking.k8s.io/{RECOGNIZER}",
            f"deployment.apps/{FULLNAME}",
        ):
            assert f"{created} created (server dry run)" in lines, applied.stdout
        path = f"/apis/apps/v1/namespaces/{release_namespace}/deployments/{RECOGNIZER}"
        assert kube_cluster.request("GET", path).status == 404

        # helm's own server-side dry run of the install, NOTES included.
        installed = kube_cluster.helm(
            "install", RELEASE, str(CHART), "--namespace", release_namespace, "--dry-run=server", *values_args
        )
        assert "STATUS: pending-install" in installed.stdout, installed.stdout
        notes = installed.stdout.split("NOTES:", 1)[1]
        assert f"self-hosted recognition service {RECOGNIZER}" in notes
        assert url in notes
        assert 'API keys from Secret "recognizer-api-key"' in notes
    finally:
        delete_namespace(kube_cluster, release_namespace)


def test_recognizer_key_survives_an_upgrade_and_its_policy_and_claim_are_accepted(
    kube_cluster: KubeCluster,
    crd_installed: InstalledCrd,
    tmp_path: Path,
) -> None:
    """The generated API key is created once and kept by `helm upgrade` (lookup against the real API
    server); the NetworkPolicy and the PersistentVolumeClaim are stored as rendered."""
    namespace = unique_name("helm-key")
    release = "e2e-key"
    secret_path = f"/api/v1/namespaces/{namespace}/secrets/{release}-speechkit-operator-recognizer-api-key"
    values = {
        "image": {"repository": IMAGE_REPOSITORY, "tag": "0.1.0"},
        "recognizer": {
            "enabled": True,
            "image": {"repository": RECOGNIZER_IMAGE_REPOSITORY, "tag": "0.1.0"},
            "persistence": {"type": "pvc", "size": "2Gi"},
        },
    }
    values_args = _values_file(tmp_path, values)
    try:
        kube_cluster.helm(
            "install", release, str(CHART), "--namespace", namespace, "--create-namespace", *values_args
        )
        first = _ok(kube_cluster.request("GET", secret_path))["data"]["api-key"]
        kube_cluster.helm("upgrade", release, str(CHART), "--namespace", namespace, *values_args)
        assert _ok(kube_cluster.request("GET", secret_path))["data"]["api-key"] == first

        name = f"{release}-speechkit-operator-recognizer"
        policy = _ok(
            kube_cluster.request(
                "GET", f"/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies/{name}"
            )
        )
        [rule] = policy["spec"]["ingress"]
        assert rule["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == release
        claim = _ok(
            kube_cluster.request("GET", f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{name}-state")
        )
        assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"
        deployments = f"/apis/apps/v1/namespaces/{namespace}/deployments"
        operator = _ok(kube_cluster.request("GET", f"{deployments}/{release}-speechkit-operator"))
        [container] = operator["spec"]["template"]["spec"]["containers"]
        [key_env] = [
            env for env in container["env"] if env["name"] == SETTINGS_PREFIX + "SELF_HOSTED_API_KEY"
        ]
        assert key_env["valueFrom"]["secretKeyRef"]["name"] == secret_path.rsplit("/", 1)[1]
    finally:
        kube_cluster.helm("uninstall", release, "--namespace", namespace, "--ignore-not-found", check=False)
        delete_namespace(kube_cluster, namespace)


# --------------------------------------------------------------------------- the Deployment


def test_rendered_deployment_runs_unprivileged(kube_cluster: KubeCluster) -> None:
    _, objects = render(kube_cluster, "speechkit-system", [])
    pod = only(objects, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] != 0
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    # The one writable place is a size-limited emptyDir.
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert pod["volumes"] == [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}]


def _settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The operator's Settings as the container would build them from ``env``."""
    for name in list(os.environ):
        if name.startswith(SETTINGS_PREFIX):
            monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith(SETTINGS_PREFIX):
            monkeypatch.setenv(name, value)
    return Settings()


def test_settings_values_become_the_operators_environment(
    kube_cluster: KubeCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, default_objects = render(kube_cluster, "speechkit-system", [])
    default_env = container_env(only(default_objects, "Deployment"))
    values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    assert set(default_env) == {
        SETTINGS_PREFIX + key.upper() for key, value in values["settings"].items() if value not in (None, "")
    }
    assert default_env[SETTINGS_PREFIX + "BACKEND"] == "cloud"
    assert SETTINGS_PREFIX + "SELF_HOSTED_URL" not in default_env, "empty: unset"
    with monkeypatch.context() as patch:
        built_in = _settings_from({}, patch).model_dump()
        assert _settings_from(default_env, patch).model_dump() == built_in, (
            "chart defaults = operator defaults"
        )

    _, objects = render(kube_cluster, "speechkit-system", _values_file(tmp_path, custom_values(["a", "b"])))
    deployment = only(objects, "Deployment")
    env = container_env(deployment)
    assert env[SETTINGS_PREFIX + "MAX_SUBMIT_ATTEMPTS"] == "2"
    assert env[SETTINGS_PREFIX + "HTTP_TIMEOUT"] == "12.5"
    assert env[SETTINGS_PREFIX + "PRESIGN_EXPIRY_SECONDS"] == "604800"
    assert env[SETTINGS_PREFIX + "STORAGE_ENDPOINT"] == "http://minio.storage.svc:9000"
    assert SETTINGS_PREFIX + "STORAGE_REGION" not in env
    assert SETTINGS_PREFIX + "NAMESPACES" not in env, "the namespaces go in as --namespace arguments"
    assert env[SETTINGS_PREFIX + "RETRY_ATTEMPTS"] == default_env[SETTINGS_PREFIX + "RETRY_ATTEMPTS"]
    assert env["HTTPS_PROXY"] == "http://proxy.example:3128"

    settings = _settings_from(env, monkeypatch)
    assert settings.max_submit_attempts == 2
    assert settings.http_timeout == 12.5
    assert settings.presign_expiry_seconds == 604_800
    assert str(settings.storage_endpoint) == "http://minio.storage.svc:9000/"
    assert settings.storage_region == "ru-central1"

    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"{IMAGE_REPOSITORY}:0.1.0-rc1"
    assert container["args"] == [
        "run",
        "--liveness-port",
        "8080",
        "--namespace",
        "a",
        "--namespace",
        "b",
        "--verbose",
        "--log-format",
        "json",
    ]
    assert container["resources"] == custom_values([])["resources"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["volumes"] == [
        {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
        *custom_values([])["extraVolumes"],
    ]
    assert container["volumeMounts"] == [
        {"name": "tmp", "mountPath": "/tmp"},
        *custom_values([])["extraVolumeMounts"],
    ]
    assert container["envFrom"] == custom_values([])["extraEnvFrom"]


# --------------------------------------------------------------------------- install for real


#: (verb, API group, resource, subresource) as a SubjectAccessReview asks about them
Access = tuple[str, str, str, str]


def _allowed(cluster: KubeCluster, service_account: tuple[str, str], access: Access) -> bool:
    """Whether RBAC lets the ServiceAccount do ``access`` in every namespace (a cluster-wide ask)."""
    namespace, name = service_account
    verb, group, resource, subresource = access
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": f"system:serviceaccount:{namespace}:{name}",
            "groups": [
                "system:serviceaccounts",
                f"system:serviceaccounts:{namespace}",
                "system:authenticated",
            ],
            "resourceAttributes": {
                "verb": verb,
                "group": group,
                "resource": resource,
                "subresource": subresource,
            },
        },
    }
    response = cluster.request("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", body=review)
    assert response.status == 201, (response.status, response.body[:2000])
    return bool(response.json()["status"].get("allowed", False))


def test_helm_install_deploys_and_uninstall_removes(
    kube_cluster: KubeCluster,
    crd_installed: InstalledCrd,
) -> None:
    namespace = unique_name("helm-install")
    uninstalled = False
    try:
        result = kube_cluster.helm(
            "install",
            RELEASE,
            str(CHART),
            "--namespace",
            namespace,
            "--create-namespace",
            "--set",
            f"image.repository={IMAGE_REPOSITORY}",
            "--set",
            "image.tag=0.1.0",
        )
        assert "STATUS: deployed" in result.stdout, result.stdout

        (listed,) = json.loads(kube_cluster.helm("list", "--namespace", namespace, "-o", "json").stdout)
        assert (listed["name"], listed["namespace"], listed["status"]) == (RELEASE, namespace, "deployed")
        assert (listed["chart"], listed["app_version"]) == ("speechkit-operator-0.1.0", "0.1.0")

        namespaced = {
            "deployment": f"/apis/apps/v1/namespaces/{namespace}/deployments/{FULLNAME}",
            "serviceaccount": f"/api/v1/namespaces/{namespace}/serviceaccounts/{FULLNAME}",
        }
        cluster_scoped = {
            "clusterrole": f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{FULLNAME}",
            "clusterrolebinding": f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{FULLNAME}",
        }
        stored = {
            kind: _ok(kube_cluster.request("GET", path))
            for kind, path in (namespaced | cluster_scoped).items()
        }
        deployment = stored["deployment"]
        assert deployment["spec"]["replicas"] == 1
        # Leader election makes a rolling update safe: the new pod waits for the old one's Lease.
        assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
        assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == f"{IMAGE_REPOSITORY}:0.1.0"
        for obj in stored.values():
            assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
            assert obj["metadata"]["annotations"]["meta.helm.sh/release-name"] == RELEASE

        # The RBAC is in force for the operator's ServiceAccount, and no wider than it needs.
        account = (namespace, FULLNAME)
        allowed: list[Access] = [
            ("watch", "speechkit.dev", "transcriptionjobs", ""),
            ("patch", "speechkit.dev", "transcriptionjobs", ""),
            ("patch", "speechkit.dev", "transcriptionjobs", "status"),
            ("get", "", "secrets", ""),
            ("create", "", "events", ""),
            ("watch", "apiextensions.k8s.io", "customresourcedefinitions", ""),
            # A fresh read after a conflict; deletion after ttlSecondsAfterFinished.
            ("get", "speechkit.dev", "transcriptionjobs", ""),
            ("delete", "speechkit.dev", "transcriptionjobs", ""),
        ]
        denied: list[Access] = [
            ("create", "speechkit.dev", "transcriptionbatches", ""),
            ("update", "speechkit.dev", "transcriptionjobs", ""),
            ("list", "", "secrets", ""),
            ("create", "", "pods", ""),
            ("create", "apiextensions.k8s.io", "customresourcedefinitions", ""),
        ]
        assert [access for access in allowed if not _allowed(kube_cluster, account, access)] == []
        assert [access for access in denied if _allowed(kube_cluster, account, access)] == []

        result = kube_cluster.helm("uninstall", RELEASE, "--namespace", namespace)
        uninstalled = True
        assert f'release "{RELEASE}" uninstalled' in result.stdout, result.stdout
        assert json.loads(kube_cluster.helm("list", "--namespace", namespace, "-o", "json").stdout) == []

        for kind, path in (namespaced | cluster_scoped).items():
            wait_until(f"the {kind} is deleted", _gone(kube_cluster, path))
        # The Deployment's ReplicaSet and (never scheduled) Pod go with it, by garbage collection.
        query = urllib.parse.urlencode({"labelSelector": f"app.kubernetes.io/instance={RELEASE}"})
        for collection in (
            f"/apis/apps/v1/namespaces/{namespace}/replicasets",
            f"/api/v1/namespaces/{namespace}/pods",
        ):
            wait_until(f"{collection} is empty", _empty(kube_cluster, f"{collection}?{query}"))
        # Helm never deletes CRDs: the TranscriptionJobs of everyone else survive.
        crd_path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd_installed.name}"
        assert kube_cluster.request("GET", crd_path).status == 200
    finally:
        if not uninstalled:  # also a release that failed to install: keep `helm list -A` empty
            kube_cluster.helm(
                "uninstall", RELEASE, "--namespace", namespace, "--ignore-not-found", check=False
            )
        delete_namespace(kube_cluster, namespace)
