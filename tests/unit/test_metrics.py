"""The Prometheus metrics: what the scheduler and the Kubernetes client hold, read at each scrape."""

from __future__ import annotations

import urllib.request
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import generate_latest

from speechkit_operator.clients.kube import WriteCounter
from speechkit_operator.config import Settings
from speechkit_operator.metrics import OperatorMetrics
from speechkit_operator.models.timestamps import format_time
from speechkit_operator.scheduler import Scheduler
from tests.support.free_port import free_port
from tests.unit.test_scheduler import FakeWorkflow, running


def scrape(metrics: OperatorMetrics) -> str:
    return generate_latest(metrics.registry).decode()


async def test_the_scrape_shows_jobs_queue_budgets_writes_and_calls() -> None:
    metrics = OperatorMetrics()
    scheduler = Scheduler(FakeWorkflow(), Settings(submit_quota=500))  # type: ignore[arg-type]
    writes = WriteCounter()
    writes.add("status")
    writes.add("status")
    writes.add("event")
    metrics.watch(scheduler, writes)
    later = datetime.now(UTC) + timedelta(hours=1)
    scheduler.observe(running("a", next_check=later))
    scheduler.observe(
        {
            **running("b"),
            "status": {"phase": "Running", "operationId": "x", "nextCheckAt": format_time(later)},
        }
    )
    metrics.call("submit", 200)
    metrics.call("operation", 429)
    metrics.checks_per_job.observe(2)
    metrics.detection_latency.observe(3.5)
    try:
        text = scrape(metrics)
    finally:
        await scheduler.stop(0.1)

    assert 'speechkit_operator_jobs{phase="Running"} 2.0' in text
    assert 'speechkit_operator_kubernetes_writes_total{kind="status"} 2.0' in text
    assert 'speechkit_operator_kubernetes_writes_total{kind="event"} 1.0' in text
    assert 'speechkit_operator_api_calls_total{code="200",endpoint="submit"} 1.0' in text
    assert 'speechkit_operator_api_throttled_total{endpoint="operation"} 1.0' in text
    assert "speechkit_operator_checks_per_job_count 1.0" in text
    assert 'speechkit_operator_detection_latency_seconds_bucket{le="5.0"} 1.0' in text


def test_metrics_are_served_over_http() -> None:
    metrics = OperatorMetrics()
    port = free_port()
    metrics.serve(port, address="127.0.0.1")
    try:
        metrics.call("submit", 200)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            assert b"speechkit_operator_api_calls_total" in response.read()
    finally:
        metrics.stop()


# prometheus_client leaves the socket of a failed bind to the garbage collector.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_busy_port_does_not_stop_the_operator() -> None:
    first, second = OperatorMetrics(), OperatorMetrics()
    port = free_port()
    first.serve(port, address="127.0.0.1")
    try:
        second.serve(port, address="127.0.0.1")  # logs an error, no exception
    finally:
        first.stop()
        second.stop()
