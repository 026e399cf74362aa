"""Session-scoped fixtures of the e2e tier: a real Kubernetes control plane and a real MinIO.

Binaries come from `.ci/build-components` (see devstack/components.py for where they are looked
for). When they are missing the e2e tests are skipped with a loud reason -- or fail, when the `CI`
environment variable is set, so that CI never passes by skipping its slowest tier.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.components import (
    BUILD_SCRIPT,
    Binaries,
    ComponentError,
    KubeCluster,
    MinioServer,
    locate_binaries,
    running_cluster,
    running_minio,
)
from tests.e2e.crd_fixtures import crd_installed, fresh_namespace
from tests.e2e.operator_fixtures import (
    bucket,
    chart_rbac,
    e2e,
    operator,
    operator_crd,
    operator_identity,
    operator_runner,
    s3,
    speechkit,
)

#: The shared fixtures of crd_fixtures.py and operator_fixtures.py: pytest registers the fixtures a
#: conftest module has, imported ones too, so every module under tests/e2e can request these by name
#: without importing them (a module may still override one, e.g. `operator`, with its own fixture).
__all__ = [
    "bucket",
    "chart_rbac",
    "crd_installed",
    "e2e",
    "fresh_namespace",
    "operator",
    "operator_crd",
    "operator_identity",
    "operator_runner",
    "s3",
    "speechkit",
]

E2E_DIR = Path(__file__).resolve().parent

_missing_components: list[str] = []


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under tests/e2e as `e2e` (the hook sees the whole session's items)."""
    del config
    for item in items:
        if E2E_DIR in item.path.resolve().parents:
            item.add_marker(pytest.mark.e2e)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _missing_components:
        terminalreporter.write_sep("!", "e2e tests SKIPPED: components not built", red=True, bold=True)
        terminalreporter.write_line(_missing_components[0], red=True)
        terminalreporter.write_line(
            f"run `{BUILD_SCRIPT}` once, then rerun the e2e tests", red=True, bold=True
        )


@pytest.fixture(scope="session")
def e2e_binaries() -> Binaries:
    lookup = locate_binaries()
    if lookup.missing:
        message = lookup.explain()
        if os.environ.get("CI"):
            pytest.fail(f"CI is set, so missing e2e components are an error:\n{message}", pytrace=False)
        _missing_components.append(message)
        pytest.skip(f"E2E COMPONENTS NOT BUILT -- run `{BUILD_SCRIPT}`. {message}")
    return lookup.binaries()


@pytest.fixture(scope="session")
def kube_cluster(e2e_binaries: Binaries) -> Iterator[KubeCluster]:
    """etcd + kube-apiserver (TLS, token auth, RBAC) + kube-controller-manager on 127.0.0.1."""
    try:
        with running_cluster(e2e_binaries) as cluster:
            yield cluster
    except ComponentError as exc:
        pytest.fail(f"the e2e Kubernetes control plane failed: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def minio_server(e2e_binaries: Binaries) -> Iterator[MinioServer]:
    """A real MinIO on 127.0.0.1 with its own root credentials."""
    try:
        with running_minio(e2e_binaries.minio) as server:
            yield server
    except ComponentError as exc:
        pytest.fail(f"the e2e MinIO failed: {exc}", pytrace=False)
