"""Prometheus metrics of the operator, served on ``metrics_port`` (``GET /metrics``).

Counted as they happen: SpeechKit calls by endpoint and outcome, 429s, detection latency (the
operation finished to its transcripts written) and checks per finished job. Read at each scrape
from the scheduler and the Kubernetes client (nothing to keep in step): jobs by phase, jobs waiting
for the quota, tokens left per budget, Kubernetes writes by kind.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

PREFIX = "speechkit_operator"


class Writes(Protocol):
    counts: dict[str, int]


class SchedulerState(Protocol):
    """What the metrics read of :class:`~speechkit_operator.scheduler.Scheduler` (a protocol: the
    workflow, below the scheduler, holds the metrics)."""

    def phase_counts(self) -> dict[str, int]: ...

    def budget_state(self) -> dict[str, dict[str, float]]: ...


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.api_calls = Counter(
            f"{PREFIX}_api_calls",
            "SpeechKit calls by endpoint (submit, operation) and HTTP status (0: no answer).",
            ["endpoint", "code"],
            registry=self.registry,
        )
        self.throttled = Counter(
            f"{PREFIX}_api_throttled",
            "SpeechKit calls answered 429 (quota exceeded), by endpoint.",
            ["endpoint"],
            registry=self.registry,
        )
        self.detection_latency = Histogram(
            f"{PREFIX}_detection_latency_seconds",
            "From a finished operation (its modifiedAt) to its transcripts written.",
            buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600),
            registry=self.registry,
        )
        self.checks_per_job = Histogram(
            f"{PREFIX}_checks_per_job",
            "Operation checks a job needed, observed when it succeeds.",
            buckets=(1, 2, 3, 4, 5, 8, 13, 21, 34, 55, 100, 300),
            registry=self.registry,
        )
        self._server: tuple[object, threading.Thread] | None = None

    def call(self, endpoint: str, code: int) -> None:
        self.api_calls.labels(endpoint=endpoint, code=str(code)).inc()
        if code == 429:
            self.throttled.labels(endpoint=endpoint).inc()

    def watch(self, scheduler: SchedulerState, writes: Writes) -> None:
        """Read the scheduler's and the Kubernetes client's state at each scrape."""
        self.registry.register(_StateCollector(scheduler, writes))

    def serve(self, port: int, address: str = "0.0.0.0") -> None:  # noqa: S104 - a pod's metrics port
        try:
            server, thread = start_http_server(port, addr=address, registry=self.registry)
        except OSError as exc:
            message = "no metrics: port %d cannot be served (%s); set SPEECHKIT_OPERATOR_METRICS_PORT"
            logger.error(message, port, exc)  # noqa: TRY400 - the reason is in the line, no traceback
            return
        self._server = (server, thread)
        logger.info("metrics at http://%s:%d/metrics", address, port)

    def stop(self) -> None:
        if self._server is not None:
            server, thread = self._server
            server.shutdown()  # type: ignore[attr-defined]
            server.server_close()  # type: ignore[attr-defined]
            thread.join(timeout=5)
            self._server = None


class _StateCollector(Collector):
    def __init__(self, scheduler: SchedulerState, writes: Writes) -> None:
        self.scheduler = scheduler
        self.writes = writes

    def collect(self) -> Iterator[Metric]:
        phases = GaugeMetricFamily(
            f"{PREFIX}_jobs", "Unfinished jobs the operator holds, by phase.", labels=["phase"]
        )
        for phase, count in sorted(self.scheduler.phase_counts().items()):
            phases.add_metric([phase], count)
        yield phases
        queue = GaugeMetricFamily(f"{PREFIX}_queue_length", "Jobs waiting to be submitted.", labels=["scope"])
        tokens = GaugeMetricFamily(
            f"{PREFIX}_budget_tokens", "Calls the budget allows right now.", labels=["scope", "budget"]
        )
        rate = GaugeMetricFamily(
            f"{PREFIX}_budget_rate_per_second",
            "The pace in force (lowered by 429s).",
            labels=["scope", "budget"],
        )
        running = GaugeMetricFamily(
            f"{PREFIX}_operations_in_flight", "Jobs with an operation in flight.", labels=["scope"]
        )
        concurrency = GaugeMetricFamily(
            f"{PREFIX}_concurrency_limit",
            "Self-hosted backend: the operations in flight it allows now (learned from 429s).",
            labels=["scope"],
        )
        for scope, state in sorted(self.scheduler.budget_state().items()):
            queue.add_metric([scope], state["queued"])
            running.add_metric([scope], state["running"])
            if "concurrency" in state:
                concurrency.add_metric([scope], state["concurrency"])
            for budget in ("submit", "check", "v3_check"):
                if f"{budget}_tokens" in state:
                    tokens.add_metric([scope, budget], state[f"{budget}_tokens"])
                    rate.add_metric([scope, budget], state[f"{budget}_rate"])
        yield queue
        yield running
        yield concurrency
        yield tokens
        yield rate
        writes = CounterMetricFamily(
            f"{PREFIX}_kubernetes_writes", "Writes to the Kubernetes API by kind.", labels=["kind"]
        )
        for kind, count in sorted(self.writes.counts.items()):
            writes.add_metric([kind], count)
        yield writes
