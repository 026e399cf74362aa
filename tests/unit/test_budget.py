"""Quota budgets: never more than the quota in any window, at least 99% of it with a backlog."""

from __future__ import annotations

import bisect

import pytest

from speechkit_operator.config import Settings
from speechkit_operator.logic.budget import CALL_LATENESS_SECONDS, CarriedOver, ConcurrencyWindow, TokenBucket

HOUR = 3600.0


def taken_at(bucket: TokenBucket, *, until: float, step: float) -> list[float]:
    """A backlog that never runs dry, served as the scheduler serves it: at ``ready_at``, or
    ``step`` seconds later (a loop that wakes late)."""
    times = []
    now = 0.0
    while now < until:
        if bucket.take(now):
            times.append(now)
        now = max(now + 1e-6, bucket.ready_at(now)) if step == 0 else now + step
    return times


def most_in_any_window(times: list[float], window: float) -> int:
    return max(
        (bisect.bisect_left(times, start + window) - index for index, start in enumerate(times)), default=0
    )


@pytest.mark.parametrize(
    ("quota", "step", "share"),
    [(500, 0, 0.99), (2500, 0, 0.99), (100, 0, 0.98), (7, 0, 5 / 7), (500, 0.5, 0.99), (2500, 0.1, 0.99)],
)
def test_a_backlog_stays_a_call_below_the_quota_in_any_window_and_gets_99_percent(
    quota: int, step: float, share: float
) -> None:
    bucket = TokenBucket.for_quota(quota, HOUR, share=0.99, now=0.0)
    times = taken_at(bucket, until=4 * HOUR, step=step)
    # One below the quota: calls reach the API a little after their tokens are taken.
    assert most_in_any_window(times, HOUR) <= quota - 1
    # In steady state (after the first hour), 99% of SpeechKit's default quotas per hour.
    per_hour = [sum(1 for t in times if start <= t < start + HOUR) for start in (HOUR, 2 * HOUR)]
    # (the rate leaves room for calls that arrive up to CALL_LATENESS_SECONDS late)
    assert min(per_hour) >= share * quota * HOUR / (HOUR + CALL_LATENESS_SECONDS) - 1


def test_a_new_bucket_starts_empty_so_a_restart_makes_no_burst() -> None:
    bucket = TokenBucket.for_quota(500, HOUR, share=0.99, now=100.0)
    assert bucket.available(100.0) == 0
    assert not bucket.take(100.0)
    assert bucket.ready_at(100.0) == pytest.approx(100.0 + 1 / bucket.max_rate)
    assert bucket.max_rate == pytest.approx(500 * 0.99 / (HOUR + CALL_LATENESS_SECONDS))
    full = TokenBucket.for_quota(500, HOUR, share=0.99, now=0.0, full=True)
    assert full.available(0.0) == 4


def test_a_429_halves_the_rate_and_waits_for_retry_after() -> None:
    bucket = TokenBucket.for_quota(500, HOUR, share=0.99, now=0.0, full=True)
    assert bucket.take(0.0)
    bucket.refused(0.0, retry_after=30.0)
    assert bucket.rate == pytest.approx(bucket.max_rate / 2)
    assert not bucket.take(29.0)
    assert bucket.ready_at(1.0) >= 30.0
    # Without Retry-After: one token's time at the lowered rate.
    other = TokenBucket.for_quota(500, HOUR, share=0.99, now=0.0, full=True)
    other.refused(10.0, retry_after=None)
    assert other.blocked_until == pytest.approx(10.0 + 1 / other.rate)


def test_a_lower_real_quota_is_learned_not_hammered() -> None:
    """The real quota is 100 an hour though 500 are configured: count the 429s over 3 hours."""
    bucket = TokenBucket.for_quota(500, HOUR, share=0.99, now=0.0)
    accepted: list[float] = []
    refusals = 0
    now = 0.0
    while now < 3 * HOUR:
        if bucket.take(now):
            if most_in_any_window([*accepted, now], HOUR) > 100:
                refusals += 1
                bucket.refused(now, retry_after=None)
            else:
                accepted.append(now)
                bucket.succeeded(now)
        now += 1.0
    assert len(accepted) >= 0.8 * 300  # most of what the real quota allows ...
    assert refusals <= 0.2 * len(accepted)  # ... with few refusals, not one per waiting job


def test_successes_win_the_rate_back_up_to_the_configured_one() -> None:
    bucket = TokenBucket.for_quota(500, HOUR, share=0.99, now=0.0)
    bucket.refused(0.0, None)
    bucket.refused(0.0, None)  # a 429 of a call that was in flight with the first: halved once
    assert bucket.rate == pytest.approx(bucket.max_rate / 2)
    bucket.refused(bucket.blocked_until, None)  # a 429 after the wait: halved again
    assert bucket.rate == pytest.approx(bucket.max_rate / 4)
    for _ in range(200):
        bucket.succeeded(0.0)
    assert bucket.rate == bucket.max_rate


def test_a_token_not_used_is_given_back() -> None:
    bucket = TokenBucket.for_quota(500, HOUR, share=0.99, now=0.0, full=True)
    assert bucket.take(0.0)
    bucket.give_back(0.0)
    assert bucket.available(0.0) == 4


def test_the_self_hosted_window_learns_its_concurrency() -> None:
    window = ConcurrencyWindow(limit=16)
    assert window.size == 4
    assert window.has_room(3, now=0.0)
    assert not window.has_room(4, now=0.0)
    window.refused(10.0, retry_after=5.0)
    assert window.size == 2
    assert not window.has_room(0, now=14.9)  # Retry-After is honoured
    assert window.has_room(1, now=15.0)
    assert not window.has_room(2, now=15.0)
    window.succeeded(in_flight=1)
    assert window.size == 2  # it did not fill the window: nothing learned
    for _ in range(300):
        window.succeeded(in_flight=int(window.size))
    assert window.size == 16
    for _ in range(10):
        window.refused(20.0, retry_after=None)
    assert window.size == 1  # never closed
    assert window.has_room(0, now=21.0)


def test_calls_carried_over_from_before_the_start_keep_every_window_within_the_limit() -> None:
    carried = CarriedOver(limit=5, window=10.0, until=10.0)
    for at in (-8.0, -6.0, -1.0):
        carried.add_earlier(at)
    assert carried.ready_at(0.0) == 0.0  # 3 earlier + 1 new: within 5
    carried.made = 2
    # 3 earlier + 2 made fill the window: the next one when the oldest (-8) leaves it.
    assert carried.ready_at(0.0) == 2.0
    assert carried.ready_at(2.0) == 2.0
    carried.made = 4
    assert carried.ready_at(2.5) == 9.0  # -8 has left; -6 and -1 must leave too
    assert carried.ready_at(10.0) == 10.0  # after the first window, the bucket alone decides


@pytest.mark.parametrize("quota", [500, 2500])
def test_the_default_share_gives_a_backlog_over_99_percent_and_never_the_whole_quota(quota: int) -> None:
    share = Settings().quota_share
    bucket = TokenBucket.for_quota(quota, HOUR, share=share, now=0.0)
    assert bucket.max_rate * HOUR >= 0.99 * quota + 1  # a little slack for a slow start
    assert bucket.capacity + bucket.max_rate * HOUR <= quota - 1


@pytest.mark.parametrize(
    ("quota", "window"), [(500, HOUR), (2500, HOUR), (500, 600.0), (2500, 20.0), (6, 3.0)]
)
def test_calls_that_reach_the_api_late_still_keep_every_window_below_the_quota(
    quota: int, window: float
) -> None:
    """The API counts calls when they arrive, up to CALL_LATENESS_SECONDS after their tokens were
    taken (a loaded loop, a new connection): late and unevenly late arrivals bunch up, and every
    window the API counts still holds fewer calls than the quota."""
    bucket = TokenBucket.for_quota(quota, window, share=0.996, now=0.0)
    taken = taken_at(bucket, until=4 * window, step=0)
    lateness = min(CALL_LATENESS_SECONDS, window / 100)
    # The worst case: the early calls of a stretch arrive as late as they may, the later ones at once.
    for cut in range(0, len(taken), max(1, len(taken) // 40)):
        arrived = sorted(t + (lateness if i < cut else 0.0) for i, t in enumerate(taken))
        assert most_in_any_window(arrived, window) <= quota - 1
    # Still at least 99% of the quota per window for a backlog once the burst is spent (the
    # default share, with windows of 10 minutes and more: shorter ones are for tests).
    if quota >= 500 and window >= 600:
        per_window = [sum(1 for t in taken if start <= t < start + window) for start in (window, 2 * window)]
        assert min(per_window) >= 0.99 * quota


def test_a_debit_makes_the_next_call_wait_for_the_calls_it_paid_for() -> None:
    """A v3 check that also read its results made two calls for one token: the next token comes one
    token's time later, so the calls stay within the quota (5 a second)."""
    plain = TokenBucket.for_quota(5, 1.0, share=0.996, now=0.0, full=True)
    debited = TokenBucket.for_quota(5, 1.0, share=0.996, now=0.0, full=True)
    assert plain.take(0.0) and debited.take(0.0)
    debited.debit(0.0, 1)
    assert debited.ready_at(0.0) - plain.ready_at(0.0) == pytest.approx(1 / debited.rate)
    assert debited.available(0.0) == 0
    calls = 0
    now = 0.0
    while now < 10.0:
        if debited.take(now):
            debited.debit(now, 1)
            calls += 2
        now += 0.001
    assert calls <= 5 * 10 + 2, "two calls per token still keep within 5 a second"
