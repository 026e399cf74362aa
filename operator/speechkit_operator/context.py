"""The one object handlers receive (through kopf's memo): settings plus the clients built from them."""

from __future__ import annotations

import logging
import secrets as random
import socket
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

import kubernetes

from speechkit_operator.batches import BatchController
from speechkit_operator.clients.kube import JobStore
from speechkit_operator.clients.leases import default_lease_namespace
from speechkit_operator.clients.secrets import SecretReader
from speechkit_operator.clients.speech.base import SpeechClient
from speechkit_operator.clients.speech.errors import origin_of
from speechkit_operator.clients.speech.v2 import SpeechKitV2Client
from speechkit_operator.clients.speech.v3 import SpeechKitV3Client
from speechkit_operator.clients.storage import StorageFactory
from speechkit_operator.config import Settings
from speechkit_operator.metrics import OperatorMetrics
from speechkit_operator.scheduler import Scheduler
from speechkit_operator.workflow import JobWorkflow

logger = logging.getLogger(__name__)


@dataclass
class OperatorContext:
    settings: Settings
    speech: SpeechClient
    workflow: JobWorkflow
    scheduler: Scheduler
    batches: BatchController

    metrics: OperatorMetrics

    async def close(self) -> None:
        """Let the steps in flight finish (a submission and its record above all), then close."""
        await self.batches.stop()
        await self.scheduler.stop(self.settings.shutdown_timeout_seconds)
        await self.workflow.save_rates()
        self.metrics.stop()
        await self.speech.close()
        if self.workflow.speech_v3 is not None:
            await self.workflow.speech_v3.close()
        self.workflow.storage.close()
        self.workflow.jobs.close()


def instance_identity() -> str:
    """Who this operator process is, in intents and Leases: the pod's name and a random suffix."""
    return f"{socket.gethostname()}-{random.token_hex(4)}"


def build_context(
    settings: Settings,
    *,
    secrets: SecretReader | None = None,
    api_client_factory: Callable[[], kubernetes.client.ApiClient] | None = None,
    identity: str | None = None,
    sole_actor: bool | None = None,
) -> OperatorContext:
    """The clients for ``settings``: SpeechKit (and IAM) and S3 share the CA bundle and the proxies
    of the environment. A CA bundle that is not a PEM file of certificates raises ValueError.
    ``sole_actor``: no other operator acts on these jobs (default: with leader election)."""
    speech = SpeechKitV2Client.from_settings(settings)
    speech_v3 = SpeechKitV3Client.from_settings(settings)
    metrics = OperatorMetrics()
    workflow = JobWorkflow(
        settings,
        speech=speech,
        speech_v3=speech_v3,
        storage=StorageFactory(timeout=settings.http_timeout, ca_bundle=settings.ca_bundle),
        secrets=secrets
        or SecretReader(cache_seconds=settings.secret_cache_seconds, api_client_factory=api_client_factory),
        jobs=JobStore(api_client_factory=api_client_factory, timeout=settings.request_timeout),
        identity=identity or instance_identity(),
        metrics=metrics,
    )
    scheduler = Scheduler(
        workflow, settings, sole_actor=settings.leader_election if sole_actor is None else sole_actor
    )
    metrics.watch(scheduler, workflow.jobs.writes)
    if settings.predictions_configmap:
        workflow.rates_store = (
            default_lease_namespace(settings.lease_namespace),
            settings.predictions_configmap,
        )
    _log_network(settings)
    return OperatorContext(
        settings=settings,
        speech=speech,
        workflow=workflow,
        scheduler=scheduler,
        batches=BatchController(workflow),
        metrics=metrics,
    )


def _log_network(settings: Settings) -> None:
    """Say once which trust and which proxies outbound calls use (never a proxy's credentials)."""
    proxies = urllib.request.getproxies()
    named = {scheme: origin_of(url) for scheme, url in proxies.items() if scheme in ("http", "https")}
    trust = f"CA bundle {settings.ca_bundle}" if settings.ca_bundle else "the system's CA certificates"
    if named:
        shown = ", ".join(f"{scheme} via {origin}" for scheme, origin in sorted(named.items()))
        no_proxy = proxies.get("no", "")
        logger.info("outbound HTTPS trusts %s; proxies: %s; NO_PROXY: %s", trust, shown, no_proxy)
    else:
        logger.info("outbound HTTPS trusts %s; no proxy", trust)
