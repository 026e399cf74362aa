"""Leader election with a ``coordination.k8s.io/v1`` Lease, as Kubernetes' own controllers do it.

One operator acts; others wait. The holder renews the Lease every ``renew_seconds``; a Lease not
renewed for ``duration_seconds`` (measured on the waiting side's own clock, from when it last saw
the Lease change, so clock skew does not matter) may be taken over. A holder that cannot renew for
``renew_deadline_seconds`` (less than the duration) must stop acting before anybody else may start.
Stopping cleanly releases the Lease, so a waiting replica takes over at once.

Synchronous on purpose: it runs before kopf's event loop exists, then in its own thread, where a
busy event loop cannot delay a renewal.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import kubernetes

from speechkit_operator.clients.kube import KubeError, raw_request

logger = logging.getLogger(__name__)

TIMEOUT = 10.0


class LeaseError(Exception):
    pass


def _now_micro() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class _Seen:
    holder: str
    renew_time: str
    resource_version: str
    transitions: int
    at: float  # time.monotonic() when this record was first seen


class LeaseLock:
    def __init__(
        self,
        *,
        namespace: str,
        name: str,
        identity: str,
        duration_seconds: float,
        api_client_factory: Callable[[], kubernetes.client.ApiClient] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.duration_seconds = duration_seconds
        self._factory = api_client_factory or kubernetes.client.ApiClient
        self._api: kubernetes.client.ApiClient | None = None
        self._clock = clock
        self._seen: _Seen | None = None
        #: Seconds one request may take: a renewal (a GET and a PUT) must fit well inside the
        #: renew deadline.
        self.request_timeout = min(TIMEOUT, max(1.0, duration_seconds / 6))

    @property
    def holder(self) -> str:
        """The holder as last seen ("" when none)."""
        return self._seen.holder if self._seen else ""

    @property
    def path(self) -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases/{self.name}"

    def try_acquire_or_renew(self) -> bool:
        """One attempt; True when this identity holds the Lease afterwards."""
        status, lease = self._request("GET", self.path)
        now = _now_micro()
        if status == 404:
            body = self._lease_body(acquire_time=now, transitions=0)
            status, lease = self._request(
                "POST", f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases", body
            )
            if status in (200, 201):
                self._observe(lease)
                return True
            return False
        if status != 200:
            raise LeaseError(f"reading Lease {self.namespace}/{self.name}: HTTP {status}")
        self._observe(lease)
        seen = self._seen
        assert seen is not None
        spec = lease.get("spec") or {}
        if seen.holder == self.identity:
            body = self._lease_body(
                acquire_time=spec.get("acquireTime") or now,
                transitions=seen.transitions,
                resource_version=seen.resource_version,
            )
        elif seen.holder and self._clock() - seen.at < self.duration_seconds:
            return False  # held, and renewed recently enough (by what this process saw)
        else:
            body = self._lease_body(
                acquire_time=now, transitions=seen.transitions + 1, resource_version=seen.resource_version
            )
        status, lease = self._request("PUT", self.path, body)
        if status == 200:
            self._observe(lease)
            return True
        if status == 409:
            return False  # somebody else wrote it first
        raise LeaseError(f"writing Lease {self.namespace}/{self.name}: HTTP {status}")

    def release(self) -> None:
        """Give the Lease up, if held, so that a waiting replica takes over at once."""
        try:
            status, lease = self._request("GET", self.path)
            if status != 200 or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {
                    "name": self.name,
                    "namespace": self.namespace,
                    "resourceVersion": (lease.get("metadata") or {}).get("resourceVersion"),
                },
                "spec": {
                    **(lease.get("spec") or {}),
                    "holderIdentity": None,
                    "leaseDurationSeconds": 1,
                    "renewTime": _now_micro(),
                },
            }
            self._request("PUT", self.path, body)
        except LeaseError as exc:
            logger.warning("could not release Lease %s/%s: %s", self.namespace, self.name, exc)

    def _lease_body(
        self, *, acquire_time: str, transitions: int, resource_version: str | None = None
    ) -> dict[str, Any]:
        metadata: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if resource_version:
            metadata["resourceVersion"] = resource_version
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": metadata,
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": max(1, round(self.duration_seconds)),
                "acquireTime": acquire_time,
                "renewTime": _now_micro(),
                "leaseTransitions": transitions,
            },
        }

    def _observe(self, lease: dict[str, Any]) -> None:
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        renew = spec.get("renewTime") or ""
        version = str((lease.get("metadata") or {}).get("resourceVersion") or "")
        transitions = int(spec.get("leaseTransitions") or 0)
        if self._seen is None or (self._seen.holder, self._seen.renew_time) != (holder, renew):
            self._seen = _Seen(holder, renew, version, transitions, self._clock())
        else:
            self._seen.resource_version = version
        if not holder:
            self._seen.at = self._clock() - self.duration_seconds  # released: free at once

    def _request(self, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
        if self._api is None:
            self._api = self._factory()
        try:
            return raw_request(self._api, method, path, body, timeout=self.request_timeout)
        except KubeError as exc:
            raise LeaseError(str(exc)) from None


class LeaderElector:
    """Wait for the Lease, then keep it renewed in a thread; call ``on_lost`` if it slips away."""

    def __init__(
        self,
        lock: LeaseLock,
        *,
        renew_seconds: float,
        renew_deadline_seconds: float,
        retry_seconds: float = 2.0,
        on_lost: Callable[[], None],
    ) -> None:
        self.lock = lock
        self.renew_seconds = renew_seconds
        self.renew_deadline_seconds = renew_deadline_seconds
        self.retry_seconds = retry_seconds
        self.on_lost = on_lost
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watchdog: threading.Thread | None = None
        self._renewed_from = time.monotonic()
        self._lost_lock = threading.Lock()
        self._lost_called = False

    def acquire(self, *, stop: threading.Event | None = None) -> bool:
        """Block until this process holds the Lease (True), or ``stop`` is set (False)."""
        announced = ""
        stop = stop or threading.Event()
        while not stop.is_set():
            try:
                if self.lock.try_acquire_or_renew():
                    logger.info(
                        "holding Lease %s/%s as %s: acting",
                        self.lock.namespace,
                        self.lock.name,
                        self.lock.identity,
                    )
                    return True
            except LeaseError as exc:
                logger.warning("leader election: %s", exc)
            if self.lock.holder and self.lock.holder != announced:
                announced = self.lock.holder
                logger.info(
                    "Lease %s/%s is held by %s: waiting to take over",
                    self.lock.namespace,
                    self.lock.name,
                    announced,
                )
            stop.wait(self.retry_seconds)
        return False

    def start_renewing(self) -> None:
        # The last successful renewal, as of the moment its request *started*: a standby may count
        # the Lease's duration from any moment after that.
        self._renewed_from = time.monotonic()
        self._thread = threading.Thread(target=self._renew, name="lease-renewer", daemon=True)
        self._thread.start()
        # A watchdog independent of the renewals' blocking requests: a leader that has not renewed
        # for the renew deadline stops acting, however long a hanging request takes.
        self._watchdog = threading.Thread(target=self._watch, name="lease-watchdog", daemon=True)
        self._watchdog.start()

    def _watch(self) -> None:
        while not self._stop.wait(0.25):
            if time.monotonic() - self._renewed_from > self.renew_deadline_seconds:
                logger.error("the Lease could not be renewed for %.0fs", self.renew_deadline_seconds)
                self._lost()
                return

    def _lost(self) -> None:
        with self._lost_lock:
            if self._lost_called:
                return
            self._lost_called = True
        self.on_lost()

    def _renew(self) -> None:
        """Renew every ``renew_seconds``; after a failed renewal, try again every
        ``retry_seconds`` (at most ``renew_seconds``), so a short outage does not eat the Lease."""
        wait = self.renew_seconds
        while not self._stop.wait(wait):
            started = time.monotonic()
            wait = min(self.retry_seconds, self.renew_seconds)
            try:
                if self.lock.try_acquire_or_renew():
                    self._renewed_from = started
                    wait = self.renew_seconds
                    continue
                if self.lock.holder and self.lock.holder != self.lock.identity:
                    logger.error(
                        "Lease %s/%s was taken by %s", self.lock.namespace, self.lock.name, self.lock.holder
                    )
                    self._lost()
                    return
            except LeaseError as exc:
                logger.warning("renewing the Lease failed: %s", exc)

    def stop_and_release(self) -> None:
        self._stop.set()
        for thread in (self._thread, self._watchdog):
            if thread is not None:
                thread.join(timeout=TIMEOUT + 1)
        self.lock.release()


SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def default_lease_namespace(configured: str = "") -> str:
    """Where the Lease lives: the setting, else the pod's namespace, else the kubeconfig
    context's, else ``default``."""
    if configured:
        return configured
    if namespace := os.environ.get("POD_NAMESPACE", "").strip():
        return namespace
    try:
        with open(SERVICE_ACCOUNT_NAMESPACE, encoding="utf-8") as stream:
            if namespace := stream.read().strip():
                return namespace
    except OSError:
        pass
    try:
        _, context = kubernetes.config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
            config_file=os.environ.get("KUBECONFIG") or None
        )
        namespace = str((context or {}).get("context", {}).get("namespace") or "")
    except Exception:
        namespace = ""
    return namespace or "default"
