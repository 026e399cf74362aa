"""Checks made before the operator starts, so that a broken setup ends in one line that says what
to do, not in a traceback or an operator that runs but never sees a job.

In order: credentials (in-cluster service account, else kubeconfig), the API server answering, the
TranscriptionJob CRD being served, and RBAC allowing what the operator does in each watched scope
(asked with SelfSubjectAccessReviews, which every authenticated user may create).
"""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import urllib3
from kubernetes import client as kube_client
from kubernetes import config as kube_config
from kubernetes.client.exceptions import ApiException

from speechkit_operator.constants import BATCH_PLURAL, GROUP, JOB_PLURAL, VERSION

#: Seconds each preflight request may take.
TIMEOUT = 10.0


class PreflightError(Exception):
    """The operator cannot work in this setup; the message says what to do, in one line."""


@dataclass(frozen=True)
class Permission:
    verb: str
    resource: str
    group: str = ""
    subresource: str = ""
    #: One object only (a Role's resourceNames).
    name: str = ""

    def __str__(self) -> str:
        resource = f"{self.resource}/{self.subresource}" if self.subresource else self.resource
        return f"{self.verb} {resource}.{self.group}" if self.group else f"{self.verb} {resource}"


#: What the operator does in each watched namespace (the chart's rules; keep them in step).
NAMESPACED_PERMISSIONS = (
    Permission("list", JOB_PLURAL, GROUP),
    Permission("watch", JOB_PLURAL, GROUP),
    Permission("get", JOB_PLURAL, GROUP),
    Permission("patch", JOB_PLURAL, GROUP),
    Permission("delete", JOB_PLURAL, GROUP),
    Permission("patch", JOB_PLURAL, GROUP, "status"),
    Permission("create", JOB_PLURAL, GROUP),
    Permission("list", BATCH_PLURAL, GROUP),
    Permission("watch", BATCH_PLURAL, GROUP),
    Permission("get", BATCH_PLURAL, GROUP),
    Permission("patch", BATCH_PLURAL, GROUP),
    Permission("patch", BATCH_PLURAL, GROUP, "status"),
    Permission("create", "events"),
    Permission("get", "secrets"),
)


def lease_permissions(name: str) -> tuple[Permission, ...]:
    """Leader election, in the Lease's namespace: create it, then read and renew that one."""
    return (
        Permission("create", "leases", "coordination.k8s.io"),
        Permission("get", "leases", "coordination.k8s.io", name=name),
        Permission("update", "leases", "coordination.k8s.io", name=name),
    )


#: kopf watches CRDs cluster-wide whatever the scope.
CLUSTER_PERMISSIONS = (
    Permission("list", "customresourcedefinitions", "apiextensions.k8s.io"),
    Permission("watch", "customresourcedefinitions", "apiextensions.k8s.io"),
)
# In namespaced mode kopf also lists and watches namespaces, but only to follow them: without the
# permission it warns and assumes they exist, so that one is not required here.


def _api_client() -> Any:
    """An API client from the in-cluster service account, else the kubeconfig (as kopf logs in)."""
    try:
        kube_config.load_incluster_config()  # type: ignore[no-untyped-call]
    except kube_config.ConfigException:
        try:
            # Read KUBECONFIG now: the library takes its default once, when it is imported.
            path = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
            kube_config.load_kube_config(config_file=path)  # type: ignore[no-untyped-call]
        except (kube_config.ConfigException, OSError) as exc:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise PreflightError(
                "no Kubernetes credentials: not running in a pod and no usable kubeconfig "
                f"({detail}); set KUBECONFIG or create ~/.kube/config (kubectl must work)"
            ) from None
    configuration = kube_client.Configuration.get_default_copy()
    configuration.retries = urllib3.Retry(total=0, connect=0, read=0, redirect=0, status=0)
    return kube_client.ApiClient(configuration)


def _server(api: Any) -> str:
    return str(api.configuration.host)


def _request(api: Any, call: Callable[..., Any], *args: Any) -> tuple[int, dict[str, Any]]:
    """Make one request; its HTTP status and JSON object (the client's strict models are not used:
    they reject answers they do not expect). An unreachable server raises :class:`PreflightError`."""
    try:
        response = call(*args, _request_timeout=TIMEOUT, _preload_content=False)
    except ApiException as exc:
        return int(exc.status or 0), {}
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise _unreachable(api, exc) from None
    try:
        data = json.loads(response.data)
    except ValueError:
        data = {}
    return int(response.status), data if isinstance(data, dict) else {}


def _unreachable(api: Any, exc: Exception) -> PreflightError:
    reason = exc
    while isinstance(reason, urllib3.exceptions.MaxRetryError) and reason.reason is not None:
        reason = reason.reason
    if isinstance(reason, ssl.SSLError) or "CERTIFICATE_VERIFY_FAILED" in str(reason):
        what = "its TLS certificate is not trusted by the kubeconfig's certificate-authority"
    elif isinstance(reason, urllib3.exceptions.TimeoutError):
        what = f"no answer within {TIMEOUT:.0f}s"
    else:
        what = type(reason).__name__
    return PreflightError(
        f"cannot reach the Kubernetes API server at {_server(api)} ({what}); "
        "check the kubeconfig's server address, the network, or whether the cluster is running"
    )


def _refused_credentials(api: Any) -> PreflightError:
    return PreflightError(
        f"the Kubernetes API server at {_server(api)} refused the credentials (401 Unauthorized); "
        "renew the token or certificate in the kubeconfig"
    )


def _check_server(api: Any) -> None:
    status, _ = _request(api, kube_client.VersionApi(api).get_code)
    # Anonymous access to /version may be off (403); anything that answers is reachable.
    if status == 401:
        raise _refused_credentials(api)


def _check_crd(api: Any) -> None:
    status, resources = _request(api, kube_client.CustomObjectsApi(api).get_api_resources, GROUP, VERSION)
    if status == 404:
        raise PreflightError(
            f"the TranscriptionJob CRD ({JOB_PLURAL}.{GROUP}/{VERSION}) is not installed in the cluster "
            f"at {_server(api)}: kubectl apply -f deploy/crds/ (or install the Helm chart)"
        )
    if status == 401:
        raise _refused_credentials(api)
    if status >= 400:
        raise PreflightError(
            f"the Kubernetes API server at {_server(api)} answered {status} for /apis/{GROUP}/{VERSION}"
        )
    names = {item.get("name") for item in resources.get("resources") or [] if isinstance(item, dict)}
    if JOB_PLURAL not in names:
        raise PreflightError(
            f"the API group {GROUP}/{VERSION} has no {JOB_PLURAL}: "
            "kubectl apply -f deploy/crds/ (or upgrade the Helm chart)"
        )


def _allowed(api: Any, permission: Permission, namespace: str | None) -> bool:
    attributes = kube_client.V1ResourceAttributes(
        verb=permission.verb,
        group=permission.group,
        resource=permission.resource,
        subresource=permission.subresource or None,
        name=permission.name or None,
        namespace=namespace,
    )
    review = kube_client.V1SelfSubjectAccessReview(
        api_version="authorization.k8s.io/v1",
        kind="SelfSubjectAccessReview",
        spec=kube_client.V1SelfSubjectAccessReviewSpec(resource_attributes=attributes),
    )
    status, answer = _request(
        api, kube_client.AuthorizationV1Api(api).create_self_subject_access_review, review
    )
    if status >= 400 or not answer:
        return True  # the review itself is unavailable: kopf will find out and report
    verdict = answer.get("status")
    return isinstance(verdict, dict) and verdict.get("allowed") is True


def state_permissions(name: str) -> tuple[Permission, ...]:
    """The ConfigMap that keeps the learned processing paces."""
    return (
        Permission("create", "configmaps"),
        Permission("get", "configmaps", name=name),
        Permission("patch", "configmaps", name=name),
    )


def _check_rbac(
    api: Any, namespaces: Sequence[str], lease: tuple[str, str] | None, state: tuple[str, str] | None
) -> None:
    scopes: list[tuple[str | None, tuple[Permission, ...]]] = [(None, CLUSTER_PERMISSIONS)]
    if lease is not None:
        scopes.append((lease[0], lease_permissions(lease[1])))
    if state is not None:
        scopes.append((state[0], state_permissions(state[1])))
    if namespaces:
        # Globs are resolved by kopf at run time; only exact names can be checked here.
        exact = [name for name in namespaces if not any(char in name for char in "*?[!")]
        scopes.extend((namespace, NAMESPACED_PERMISSIONS) for namespace in exact)
    else:
        scopes.append((None, NAMESPACED_PERMISSIONS))
    for namespace, permissions in scopes:
        missing = [str(permission) for permission in permissions if not _allowed(api, permission, namespace)]
        if missing:
            where = f"in namespace {namespace}" if namespace else "cluster-wide"
            raise PreflightError(
                f"RBAC forbids the operator to {', '.join(missing)} {where}; grant the Helm chart's "
                "(Cluster)Role to its identity, or watch only namespaces it may use (--namespace)"
            )


def preflight(
    namespaces: Sequence[str], *, lease: tuple[str, str] | None = None, state: tuple[str, str] | None = None
) -> None:
    """Raise :class:`PreflightError` when the operator cannot work; return when it can.
    ``lease``: the namespace and name of leader election's Lease (None: no leader election);
    ``state``: those of the ConfigMap of learned processing paces (None: not kept)."""
    api = _api_client()
    try:
        _check_server(api)
        _check_crd(api)
        _check_rbac(api, namespaces, lease, state)
    finally:
        api.close()
