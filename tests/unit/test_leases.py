"""The Lease renewer: a failed renewal is retried soon, not a whole renew period later."""

from __future__ import annotations

import threading
import time

from speechkit_operator.clients.leases import LeaderElector, LeaseError


class _FlakyLock:
    """Answers the first ``failures`` renewals with a LeaseError, then renews."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[float] = []
        self.holder = "me"
        self.identity = "me"
        self.namespace, self.name = "ns", "lease"
        self.renewed = threading.Event()

    def try_acquire_or_renew(self) -> bool:
        self.calls.append(time.monotonic())
        if len(self.calls) <= self.failures:
            raise LeaseError("apiserver unreachable")
        self.renewed.set()
        return True

    def release(self) -> None:
        pass


def _elector(lock: _FlakyLock, lost: list[bool]) -> LeaderElector:
    return LeaderElector(
        lock,  # type: ignore[arg-type]
        renew_seconds=1.0,
        renew_deadline_seconds=30.0,
        retry_seconds=0.05,
        on_lost=lambda: lost.append(True),
    )


def test_a_failed_renewal_is_retried_every_retry_period() -> None:
    lock, lost = _FlakyLock(failures=3), list[bool]()
    elector = _elector(lock, lost)
    elector.start_renewing()
    try:
        assert lock.renewed.wait(5.0)
    finally:
        elector.stop_and_release()
    retries = lock.calls[1:4]
    # The three retries after the first failure come within retry_seconds, not renew_seconds, each.
    gaps = [later - earlier for earlier, later in zip(lock.calls[:3], lock.calls[1:4], strict=True)]
    assert len(retries) == 3
    assert all(gap < 0.5 for gap in gaps), gaps
    assert not lost


def test_after_a_successful_renewal_the_pace_is_the_renew_period_again() -> None:
    lock, lost = _FlakyLock(failures=1), list[bool]()
    elector = _elector(lock, lost)
    elector.start_renewing()
    try:
        assert lock.renewed.wait(5.0)
        time.sleep(0.5)
    finally:
        elector.stop_and_release()
    # One failure, one quick retry that renews, then nothing for a renew period.
    assert len(lock.calls) == 2, lock.calls
    assert not lost
