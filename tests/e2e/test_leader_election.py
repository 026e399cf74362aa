"""Two operators against one cluster: one acts, the other waits and takes over.

The operators run under the Helm chart's ServiceAccount and RBAC, with a short Lease (4 s, renewed
every second), against the real kube-apiserver, MinIO and the SpeechKit emulator. The measured
failover times are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from devstack.components import ManagedProcess
from tests.e2e.operator_fixtures import E2E, OperatorRunner

in_module_loop = pytest.mark.asyncio(loop_scope="module")

LEASE_DURATION = 4.0
HOLDING = "holding Lease"
WAITING = "waiting to take over"


@pytest_asyncio.fixture(loop_scope="module")
async def operator(operator_runner: OperatorRunner) -> AsyncIterator[OperatorRunner]:
    operator_runner.many = True
    operator_runner.env.update(
        SPEECHKIT_OPERATOR_LEASE_DURATION_SECONDS=str(LEASE_DURATION),
        SPEECHKIT_OPERATOR_LEASE_RENEW_SECONDS="1",
    )
    try:
        yield operator_runner
    finally:
        operator_runner.show_new_output()


async def wait_for_log(
    runner: OperatorRunner, process: ManagedProcess, text: str, timeout: float = 30
) -> float:
    """When ``text`` appeared in the process's log (time.monotonic()), waiting for it."""
    deadline = time.monotonic() + timeout
    while text not in runner.log_of(process):
        assert time.monotonic() < deadline, f"{process.name} never logged {text!r}:\n{runner.log_of(process)}"
        await asyncio.sleep(0.05)
    return time.monotonic()


def submitted_by(runner: OperatorRunner, process: ManagedProcess) -> int:
    return runner.log_of(process).count(" submitted as operation ")


@in_module_loop
async def test_one_operator_acts_and_another_takes_over_when_it_dies(e2e: E2E) -> None:
    runner = e2e.operator
    first = await runner.start()
    await wait_for_log(runner, first, HOLDING)
    second = await runner.start()
    await wait_for_log(runner, second, WAITING)

    key = e2e.upload("librivox-0880.wav")
    await e2e.create_job("before", key)
    status = await e2e.wait_for_phase("before", "Succeeded", "Failed")
    assert status["phase"] == "Succeeded", status
    assert submitted_by(runner, first) == 1
    assert submitted_by(runner, second) == 0
    assert len(e2e.submissions_for(key)) == 1

    killed_at = time.monotonic()
    await runner.kill(first)
    later_key = e2e.upload("librivox-0930.wav", key="incoming/after.wav")
    await e2e.create_job("after", later_key)
    took_over_at = await wait_for_log(runner, second, HOLDING, timeout=LEASE_DURATION + 20)
    status = await e2e.wait_for_phase("after", "Succeeded", "Failed")
    done_at = time.monotonic()

    assert status["phase"] == "Succeeded", status
    assert submitted_by(runner, second) == 1
    failover = took_over_at - killed_at
    job_done = done_at - killed_at
    print(f"failover after SIGKILL: Lease taken {failover:.1f}s later, job done {job_done:.1f}s later")
    # The Lease is taken once it went unrenewed for its duration (seen from the waiting side).
    assert LEASE_DURATION - 1 <= failover <= LEASE_DURATION + 4


@in_module_loop
async def test_a_stopping_leader_hands_the_lease_over_at_once(e2e: E2E) -> None:
    runner = e2e.operator
    [leader] = [process for process in runner.processes if process.running()]
    standby = await runner.start()
    await wait_for_log(runner, standby, WAITING)

    stopped_at = time.monotonic()
    assert leader.pid is not None
    os.kill(leader.pid, signal.SIGTERM)
    took_over_at = await wait_for_log(runner, standby, HOLDING, timeout=LEASE_DURATION + 20)
    handover = took_over_at - stopped_at
    print(f"handover after SIGTERM: {handover:.1f}s")
    assert handover < LEASE_DURATION - 1, "a clean stop releases the Lease; no waiting for it to expire"

    key = e2e.upload("librivox-0870.wav")
    await e2e.create_job("handed-over", key)
    status = await e2e.wait_for_phase("handed-over", "Succeeded", "Failed")
    assert status["phase"] == "Succeeded", status
    assert len(e2e.submissions_for(key)) == 1
