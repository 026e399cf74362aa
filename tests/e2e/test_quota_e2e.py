"""The submission quota on the real components: no 429, the promised order, no burst after a crash.

The operator runs as shipped (``speechkit-operator run``, the chart's RBAC identity, leader
election on) against the real kube-apiserver, MinIO and the SpeechKit emulator, whose quotas are
shrunk to a few dozen calls per window of a few seconds; the operator is told the same quotas
(``SPEECHKIT_OPERATOR_SUBMIT_QUOTA``, ``..._CHECK_QUOTA``, ``..._QUOTA_WINDOW_SECONDS``), where the
other e2e tests give it budgets that never bind.

* test_200_jobs_within_a_tiny_quota_get_no_429_and_the_promised_order: 200 jobs exist before the
  operator starts (a backlog five times the quota). SpeechKit refuses no call; no sliding window
  holds more submissions than the quota; the high-priority jobs, created last, are submitted first;
  a second namespace's few jobs take turns with the first's many instead of waiting behind them;
  jobs that wait say so (phase ``Queued``, their place in line and when); every job succeeds, each
  object submitted exactly once. With and without Retry-After on SpeechKit's 429s.
* test_a_sigkill_mid_backlog_brings_no_burst_and_no_second_submission: the operator is SIGKILLed
  the moment SpeechKit accepts a submission (its answer is never read) while a backlog waits, and a
  new one takes over the Lease. No window spanning the restart holds more submissions than the
  quota, SpeechKit refuses no call, and the only object submitted twice is the one whose job
  records the uncertain submission.

The measured numbers are printed (run with ``-s``).
"""

from __future__ import annotations

import asyncio
import collections
import os
import re
import signal
import statistics
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio

from speechkit_operator.constants import API_VERSION, GROUP, JOB_KIND, JOB_PLURAL, VERSION
from tests.e2e.operator_fixtures import E2E, OperatorRunner, remove_jobs
from tests.e2e.test_chaos import ACTING, SIGKILL_RUN, SIGTERM_WAIT, _condition, _parse_time
from tests.emulator import EmulatedOperation, SpeechKitEmulator
from tests.support.audio import audio_dir

in_module_loop = pytest.mark.asyncio(loop_scope="module")

SOURCE = "librivox-0880.wav"
#: SpeechKit finishes operations this fast (the operator checks every 0.5 s: FAST_POLLING).
COMPLETION_DELAY = 0.2
#: How long a run may take until every job has finished (generous: the machine is shared).
RUN_TIMEOUT = 240.0

#: The ordering run: 200 jobs, a backlog of five windows' worth.
QUOTA = 40
WINDOW = 4.0
CHECK_QUOTA = 100
BULK = 180  # the big namespace's ordinary jobs, created first
SMALL = 10  # the small namespace's jobs, created next
VIPS = 10  # the big namespace's high-priority jobs, created last
VIP_PRIORITY = 5
#: Submissions that may go out while the new operator still takes in the jobs it has just listed
#: (its budget starts empty, so the first comes ~1/rate = 0.1 s after the first job is queued).
INTAKE_SLACK = 3
#: How far off an expected time may be (a factor, plus a window; see the test).
ESTIMATE_FACTOR = 3.0

#: The crash run: a window longer than a Lease takeover, so that the windows after the restart
#: still hold the submissions of the killed operator.
CRASH_QUOTA = 50
CRASH_WINDOW = 10.0
CRASH_CHECK_QUOTA = 200
CRASH_JOBS = 200
#: The operator is SIGKILLed when SpeechKit accepts the run's submission number KILL_AT.
KILL_AT = 80

_QUEUED = re.compile(r"^waiting for the submission quota: about (\d+) in line; expected at (\S+)$")


@pytest_asyncio.fixture(loop_scope="module")
async def operator(operator_runner: OperatorRunner) -> AsyncIterator[OperatorRunner]:
    """The module's runner, stopped: each test starts its operators with its own quota settings
    (restored afterwards), after creating its jobs."""
    if operator_runner.current is not None:
        await operator_runner.terminate(timeout=SIGTERM_WAIT)
    saved = dict(operator_runner.env)
    try:
        yield operator_runner
    finally:
        if operator_runner.current is not None:
            await operator_runner.terminate(timeout=SIGTERM_WAIT)
        operator_runner.show_new_output()
        operator_runner.env.clear()
        operator_runner.env.update(saved)


# --------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class Spec:
    namespace: str
    name: str
    priority: int
    key: str


@dataclass
class Ledger:
    """The submissions SpeechKit accepted during a run: when (its clock) and for which object."""

    bucket: str
    times: list[float] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    walls: list[float] = field(default_factory=list)  # the operations' createdAt (time.time())

    def record(self, operation: EmulatedOperation) -> None:
        prefix = f"/{self.bucket}/"
        if operation.audio_path.startswith(prefix):
            self.times.append(time.monotonic())
            self.keys.append(operation.audio_path.removeprefix(prefix))
            self.walls.append(operation.created_at.timestamp())

    def peak(self, window: float) -> tuple[int, float]:
        """The most submissions in any window of `window` seconds, and when that window starts
        (seconds after the first submission)."""
        best, start, end = 0, 0.0, 0
        for first, at in enumerate(self.times):
            while end < len(self.times) and self.times[end] < at + window:
                end += 1
            if end - first > best:
                best, start = end - first, at - self.times[0]
        return best, start

    def between(self, start: float, end: float) -> int:
        return sum(start <= at < end for at in self.times)


@contextmanager
def quotas(
    speechkit: SpeechKitEmulator,
    ledger: Ledger,
    *,
    submits: int,
    checks: int,
    window: float,
    retry_after: bool = True,
) -> Iterator[None]:
    """SpeechKit with these quotas per `window` seconds, recording into `ledger`; restored after."""
    saved = (
        speechkit.submit_quota_per_hour,
        speechkit.check_quota_per_hour,
        speechkit.quota_window_seconds,
        speechkit.quota_retry_after,
        speechkit.completion_delay,
    )
    speechkit.submit_quota_per_hour, speechkit.check_quota_per_hour = submits, checks
    speechkit.quota_window_seconds, speechkit.quota_retry_after = window, retry_after
    speechkit.completion_delay = COMPLETION_DELAY
    speechkit.on_submission = ledger.record
    try:
        yield
    finally:
        speechkit.on_submission = None
        (
            speechkit.submit_quota_per_hour,
            speechkit.check_quota_per_hour,
            speechkit.quota_window_seconds,
            speechkit.quota_retry_after,
            speechkit.completion_delay,
        ) = saved


def operator_quotas(runner: OperatorRunner, *, submits: int, checks: int, window: float) -> None:
    """The next operators' quotas (operator_environment's never bind)."""
    runner.env.update(
        SPEECHKIT_OPERATOR_SUBMIT_QUOTA=str(submits),
        SPEECHKIT_OPERATOR_CHECK_QUOTA=str(checks),
        SPEECHKIT_OPERATOR_QUOTA_WINDOW_SECONDS=str(window),
    )


async def upload_all(e2e: E2E, specs: list[Spec]) -> None:
    """A copy of SOURCE under each job's own key."""
    content = (audio_dir() / SOURCE).read_bytes()

    def upload() -> None:
        for spec in specs:
            e2e.s3.put_object(Bucket=e2e.bucket, Key=spec.key, Body=content)

    await asyncio.to_thread(upload)


async def create_all(e2e: E2E, specs: list[Spec]) -> None:
    """The jobs of `specs`, all at once (concurrent POSTs, as the admin)."""

    async def create(spec: Spec) -> None:
        body = {
            "apiVersion": API_VERSION,
            "kind": JOB_KIND,
            "metadata": {"name": spec.name},
            "spec": {
                "source": {"bucket": e2e.bucket, "key": spec.key},
                "recognition": {"languageCode": "en-US"},
                "priority": spec.priority,
            },
        }
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{spec.namespace}/{JOB_PLURAL}"
        response = await asyncio.to_thread(e2e.cluster.request, "POST", path, body=body)
        assert response.status == 201, (spec.name, response.status, response.body[:300])

    await asyncio.gather(*(create(spec) for spec in specs))


@dataclass
class Watch:
    """The jobs' statuses as last listed, and the first Queued status each one showed."""

    specs: dict[tuple[str, str], Spec]
    statuses: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    queued: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    async def until_finished(self, e2e: E2E, *, timeout: float = RUN_TIMEOUT) -> None:
        async def probe() -> bool | None:
            for item in await e2e.all_jobs():
                meta = item["metadata"]
                job = (meta["namespace"], meta["name"])
                if job not in self.specs:
                    continue
                status = self.statuses[job] = item.get("status") or {}
                if status.get("phase") == "Queued":
                    self.queued.setdefault(job, status)
            finished = [s for s in self.statuses.values() if s.get("phase") in ("Succeeded", "Failed")]
            return True if len(finished) == len(self.specs) else None

        try:
            await e2e.wait_for(f"{len(self.specs)} jobs to finish", probe, timeout=timeout, interval=0.2)
        finally:
            phases = collections.Counter(s.get("phase") for s in self.statuses.values())
            print(f"[quota] the jobs as last listed: {dict(phases)}")

    def not_succeeded(self) -> dict[str, tuple[Any, ...]]:
        return {
            f"{namespace}/{name}": (status.get("phase"), status.get("reason"), status.get("message"))
            for (namespace, name), status in sorted(self.statuses.items())
            if status.get("phase") != "Succeeded"
        }


async def delete_jobs(e2e: E2E, namespace: str) -> None:
    """Every job of `namespace`, deleted in one request (the fixture's `kubectl delete --all`
    deletes one at a time, at kubectl's client-side pace)."""
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{JOB_PLURAL}"
    response = await asyncio.to_thread(e2e.cluster.request, "DELETE", path)
    assert response.status == 200, (response.status, response.body[:300])


async def quiet(started: float, window: float) -> None:
    """Until a whole quota window has passed since `started` (the last operator had stopped by
    then): SpeechKit's windows hold no call that a new operator could not know about."""
    await asyncio.sleep(max(0.0, started + window - time.monotonic()))


# --------------------------------------------------------------------------- the tests


@in_module_loop
@pytest.mark.parametrize("retry_after", [True, False], ids=["with-retry-after", "without-retry-after"])
async def test_200_jobs_within_a_tiny_quota_get_no_429_and_the_promised_order(
    e2e: E2E, retry_after: bool
) -> None:
    started = time.monotonic()
    runner, speechkit = e2e.operator, e2e.speechkit
    small_namespace = f"{e2e.namespace}-small"
    await e2e.add_namespace(small_namespace)
    big = e2e.namespace
    specs = [Spec(big, f"bulk-{i:03d}", 0, f"big/bulk-{i:03d}/{SOURCE}") for i in range(BULK)]
    specs += [
        Spec(small_namespace, f"small-{i:02d}", 0, f"small/small-{i:02d}/{SOURCE}") for i in range(SMALL)
    ]
    specs += [Spec(big, f"vip-{i:02d}", VIP_PRIORITY, f"big/vip-{i:02d}/{SOURCE}") for i in range(VIPS)]
    by_key = {spec.key: spec for spec in specs}
    watch = Watch({(spec.namespace, spec.name): spec for spec in specs})
    ledger = Ledger(e2e.bucket)
    refused_before = collections.Counter(speechkit.quota_refusals)
    try:
        await upload_all(e2e, specs)
        # Created in this order, the VIPs last: by age alone they would go last, and the small
        # namespace's jobs after every one of the big namespace's.
        for group in ("bulk-", "small-", "vip-"):
            await create_all(e2e, [spec for spec in specs if spec.name.startswith(group)])
        with quotas(
            speechkit, ledger, submits=QUOTA, checks=CHECK_QUOTA, window=WINDOW, retry_after=retry_after
        ):
            operator_quotas(runner, submits=QUOTA, checks=CHECK_QUOTA, window=WINDOW)
            await quiet(started, WINDOW)
            await runner.start()
            await watch.until_finished(e2e)
        e2e.assert_operator_log_clean()
    finally:
        for namespace in (big, small_namespace):
            await delete_jobs(e2e, namespace)
        await remove_jobs(e2e.cluster, small_namespace)
        await e2e.kubectl("delete", "namespace", small_namespace, "--wait=false", check=False)

    refused = collections.Counter(speechkit.quota_refusals)
    refused.subtract(refused_before)
    order = [by_key[key] for key in ledger.keys]
    peak, peak_at = ledger.peak(WINDOW)
    span = ledger.times[-1] - ledger.times[0] if ledger.times else 0.0
    vips_at = [index for index, spec in enumerate(order) if spec.priority == VIP_PRIORITY]
    small_at = [index for index, spec in enumerate(order) if spec.namespace == small_namespace]
    bulk_before_small = [
        sum(1 for spec in order[:index] if spec.namespace == big and spec.priority == 0) for index in small_at
    ]
    positions = {
        job: (int(match.group(1)), match.group(2))
        for job, status in watch.queued.items()
        if (match := _QUEUED.match(status.get("message") or ""))
    }
    unseen = [
        (index, spec.name)
        for index, spec in enumerate(order)
        if (spec.namespace, spec.name) not in watch.queued
    ]
    print(
        f"[quota] retry-after {retry_after}: {len(ledger.times)} submissions over {span:.1f}s; "
        f"the most in any {WINDOW:.0f}s window: {peak} (quota {QUOTA}) from {peak_at:.1f}s; "
        f"429s for the quota: {dict(refused)}\n"
        f"  the VIPs went out as submissions {vips_at}\n"
        f"  the small namespace's as {small_at}, after {bulk_before_small} of the big one's\n"
        f"  seen Queued: {len(watch.queued)} of {len(specs)}; positions said: "
        f"{sorted(position for position, _ in positions.values())[-5:]} (largest); not seen Queued: "
        f"{unseen}"
    )

    # -- SpeechKit never refused a call, and no window held more than the quota ------------------
    assert refused["submit"] == 0, f"SpeechKit refused {refused['submit']} submissions for the quota"
    assert refused["operation"] == 0, f"SpeechKit refused {refused['operation']} checks for the quota"
    assert peak <= QUOTA, (
        f"{peak} submissions in the {WINDOW:.0f}s window from {peak_at:.1f}s (quota {QUOTA})"
    )

    # -- every job Succeeded, each object submitted exactly once -----------------------------------
    assert not watch.not_succeeded(), f"jobs that did not succeed: {watch.not_succeeded()}"
    per_key = collections.Counter(ledger.keys)
    assert set(per_key) == set(by_key), f"objects never submitted: {sorted(set(by_key) - set(per_key))}"
    doubled = {key: count for key, count in per_key.items() if count > 1}
    assert not doubled, f"objects submitted more than once: {doubled}"

    # -- the promised order -----------------------------------------------------------------------
    # Higher priority first: the VIPs, created last, before the ordinary jobs (but for the few that
    # went out while the new operator still took in what it had listed).
    assert max(vips_at) < VIPS + INTAKE_SLACK, f"the VIPs went out as submissions {vips_at}"
    # Namespaces take turns: the small namespace's i-th job after about i of the big one's.
    late = {
        index: before for index, before in enumerate(bulk_before_small) if before > index + 1 + INTAKE_SLACK
    }
    assert not late, (
        f"the small namespace's jobs waited behind the big one's: job i went out after "
        f"{bulk_before_small} of the big namespace's ordinary jobs"
    )

    # -- jobs that waited said so: their place in line and when -----------------------------------
    # A job says so when it expects to wait more than a second: the first ones taken in, with a
    # short line ahead of them at the time, may not (the VIPs, the first of each namespace); any
    # job that went out after a window's worth of submissions waited several seconds.
    late_unseen = [name for index, name in unseen if index >= QUOTA]
    assert not late_unseen, f"jobs that waited several seconds but were never seen Queued: {late_unseen}"
    malformed = {
        f"{namespace}/{name}": (status.get("reason"), status.get("message"), status.get("nextAttemptAt"))
        for (namespace, name), status in watch.queued.items()
        if (namespace, name) not in positions
        or status.get("reason") != "Queued"
        or status.get("nextAttemptAt") != positions[namespace, name][1]
    }
    assert not malformed, f"Queued statuses without a place in line and a time: {malformed}"
    # The estimates: a place in line within the backlog, and a time of the right size: the job
    # went out within a factor of ESTIMATE_FACTOR (and a window) of it, counted from the first
    # submission. (The estimate counts the jobs in line when it is made, not those of a higher
    # priority or another namespace taken in later, nor how long each submission takes here.)
    submitted_at = {by_key[key]: at for key, at in zip(ledger.keys, ledger.walls, strict=True)}
    origin = ledger.walls[0]
    offsets = {
        job: (_parse_time(eta) - origin, submitted_at[watch.specs[job]] - origin)
        for job, (_, eta) in positions.items()
    }
    lateness = [actual - expected for expected, actual in offsets.values()]
    print(
        f"  the jobs went out later than their expected times by: median {statistics.median(lateness):.1f}s, "
        f"from {min(lateness):.1f}s to {max(lateness):.1f}s"
    )
    wrong = {
        f"{namespace}/{name}": (position, *(f"{value:.1f}s" for value in offsets[namespace, name]))
        for (namespace, name), (position, _) in positions.items()
        if not 1 <= position <= len(specs)
        or not (
            offsets[namespace, name][0] / ESTIMATE_FACTOR - WINDOW
            <= offsets[namespace, name][1]
            <= max(offsets[namespace, name][0], 0.0) * ESTIMATE_FACTOR + WINDOW
        )
    }
    assert not wrong, f"places in line or expected times far off (position, expected, actual): {wrong}"
    assert max(position for position, _ in positions.values()) > len(specs) // 2, positions


@in_module_loop
async def test_a_sigkill_mid_backlog_brings_no_burst_and_no_second_submission(e2e: E2E) -> None:
    started = time.monotonic()
    runner, speechkit = e2e.operator, e2e.speechkit
    specs = [Spec(e2e.namespace, f"job-{i:03d}", 0, f"crash/job-{i:03d}/{SOURCE}") for i in range(CRASH_JOBS)]
    by_key = {spec.key: spec for spec in specs}
    watch = Watch({(spec.namespace, spec.name): spec for spec in specs})
    ledger = Ledger(e2e.bucket)
    refused_before = collections.Counter(speechkit.quota_refusals)
    killed: list[float] = []  # time.monotonic() of the SIGKILL

    await upload_all(e2e, specs)
    await create_all(e2e, specs)
    # SIGKILL leaves the Lease held: a short one (as the chaos run's) lets the next operator take
    # over 4 s later.
    runner.env.update({f"SPEECHKIT_OPERATOR_{name}": value for name, value in SIGKILL_RUN.settings.items()})
    operator_quotas(runner, submits=CRASH_QUOTA, checks=CRASH_CHECK_QUOTA, window=CRASH_WINDOW)
    try:
        with quotas(speechkit, ledger, submits=CRASH_QUOTA, checks=CRASH_CHECK_QUOTA, window=CRASH_WINDOW):
            await quiet(started, CRASH_WINDOW)
            first = await runner.start()

            def kill_at_submission(operation: EmulatedOperation) -> None:
                # In the emulator's handler: the operation exists, its answer is not sent yet.
                ledger.record(operation)
                if len(ledger.times) == KILL_AT and first.running():
                    assert first.pid is not None
                    os.kill(first.pid, signal.SIGKILL)
                    killed.append(time.monotonic())

            speechkit.on_submission = kill_at_submission
            deadline = time.monotonic() + RUN_TIMEOUT
            while not killed:
                first.check_running()
                assert time.monotonic() < deadline, f"{len(ledger.times)} submissions, not {KILL_AT}"
                await asyncio.sleep(0.1)
            await runner.kill(first)  # reaps it
            speechkit.on_submission = ledger.record
            second = await runner.start()
            await watch.until_finished(e2e)
        e2e.assert_operator_log_clean()
    finally:
        await delete_jobs(e2e, e2e.namespace)

    refused = collections.Counter(speechkit.quota_refusals)
    refused.subtract(refused_before)
    kill = killed[0]
    before = [at for at in ledger.times if at <= kill]
    after = [at for at in ledger.times if at > kill]
    peak, peak_at = ledger.peak(CRASH_WINDOW)
    acting = ACTING in runner.log_of(second)
    # The windows that hold both operators' submissions: those starting within a window before the kill.
    spanning = max(
        (ledger.between(at, at + CRASH_WINDOW) for at in ledger.times if kill - CRASH_WINDOW < at <= kill),
        default=0,
    )
    per_key = collections.Counter(ledger.keys)
    statuses = {watch.specs[job].key: status for job, status in watch.statuses.items()}
    doubled = {key: count for key, count in per_key.items() if count > 1}
    uncertain = {
        key: int(status.get("uncertainSubmissions") or 0)
        for key, status in statuses.items()
        if status.get("uncertainSubmissions")
    }
    print(
        f"[quota] SIGKILL at submission {KILL_AT}: {len(before)} submissions before it, {len(after)} after; "
        f"the next operator's first came {after[0] - kill if after else float('nan'):.1f}s after the kill "
        f"(it holds the Lease: {acting})\n"
        f"  the most in any {CRASH_WINDOW:.0f}s window: {peak} (quota {CRASH_QUOTA}) from {peak_at:.1f}s; "
        f"in a window spanning the restart: {spanning}; 429s for the quota: {dict(refused)}\n"
        f"  objects submitted more than once: {doubled}; uncertain submissions recorded: {uncertain}"
    )

    assert after, "the next operator submitted nothing"
    assert refused["submit"] == 0, f"SpeechKit refused {refused['submit']} submissions for the quota"
    assert refused["operation"] == 0, f"SpeechKit refused {refused['operation']} checks for the quota"
    assert peak <= CRASH_QUOTA, (
        f"{peak} submissions in the {CRASH_WINDOW:.0f}s window from {peak_at:.1f}s (quota {CRASH_QUOTA}); "
        f"the kill was at {kill - ledger.times[0]:.1f}s"
    )
    assert not watch.not_succeeded(), f"jobs that did not succeed: {watch.not_succeeded()}"
    assert set(per_key) == set(by_key), f"objects never submitted: {sorted(set(by_key) - set(per_key))}"
    # A second submission only for a job that records its first as uncertain; one kill, one such.
    assert len(doubled) <= 1, f"objects submitted more than once after one SIGKILL: {doubled}"
    for key, count in doubled.items():
        status = statuses[key]
        condition = _condition(status, "SubmissionUncertain")
        assert uncertain.get(key, 0) >= 1, (
            f"{by_key[key].name}: {count} operations, but status.uncertainSubmissions is "
            f"{status.get('uncertainSubmissions')!r}"
        )
        assert condition is not None and condition.get("status") == "True", (
            f"{by_key[key].name}: {count} operations but no SubmissionUncertain condition: "
            f"{status.get('conditions')}"
        )
        assert count <= 1 + uncertain[key], (by_key[key].name, count, uncertain[key])
    # Each job's operation is one made for its own object.
    for key, status in statuses.items():
        operation = speechkit.operations.get(status.get("operationId") or "")
        assert operation is not None and operation.audio_path == f"/{e2e.bucket}/{key}", (key, status)
