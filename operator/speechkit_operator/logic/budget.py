"""Quota budgets: a token bucket per quota scope and kind of call, that learns a lower quota.

SpeechKit allows, per cloud, a number of calls per window (500 submissions and 2,500 v2 checks an
hour by default). A bucket of ``capacity`` tokens refilled at ``rate`` per second never allows more
than ``capacity + rate * window`` calls in any window; :meth:`TokenBucket.for_quota` keeps that
one below the quota even for calls that reach the API up to 2 s late, while a backlog still gets
``share`` of it at most (99.5% of 500 or 2,500 an hour by default).

A 429 means the real quota is lower than configured (or shared with another client): the rate is
halved and the bucket waits for ``Retry-After`` (or one token's time); each success afterwards
adds back a hundredth of the configured rate (additive increase, multiplicative decrease).

Pure: every method takes ``now`` (seconds, any monotonic origin); nothing reads a clock.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

#: The lowest rate a bucket learns, as a share of the configured one.
MIN_RATE_SHARE = 1 / 64
#: How much of the configured rate each success gives back after a 429.
RECOVERY_SHARE = 1 / 100
#: How long after its token is taken a call may reach the API (a busy event loop, a new
#: connection): the windows the API counts are shifted by up to this much against the bucket's.
CALL_LATENESS_SECONDS = 2.0


@dataclass
class TokenBucket:
    max_rate: float  # tokens per second, as configured
    capacity: float  # the most tokens it holds (the burst)
    rate: float = 0.0  # the rate in force (lowered by 429s)
    tokens: float = 0.0
    updated: float = 0.0
    blocked_until: float = 0.0

    def __post_init__(self) -> None:
        if self.rate <= 0:
            self.rate = self.max_rate

    @classmethod
    def for_quota(
        cls, quota: float, window_seconds: float, *, share: float, now: float, full: bool = False
    ) -> TokenBucket:
        """A bucket that keeps within ``quota`` calls per ``window_seconds``, using ``share`` of it.

        At most ``capacity + rate * (window + lateness)`` tokens are taken in a window widened by
        how late a call may reach the API (:data:`CALL_LATENESS_SECONDS`, a hundredth of the
        window for windows shorter than 200 s): that is kept one below the quota, so that every
        window the API counts holds fewer calls than the quota however late each call arrives
        within that allowance; a backlog gets at most ``share`` of the quota. A new bucket starts
        empty unless ``full``: after a restart the previous process may have used the current
        window, and an empty bucket keeps the two processes' calls together within the quota."""
        capacity = max(1.0, math.floor(quota * (1 - share)) - 1)
        lateness = min(CALL_LATENESS_SECONDS, window_seconds / 100)
        max_rate = min(
            quota * share / window_seconds,
            max(quota - capacity - 1, quota / 2) / (window_seconds + lateness),
        )
        return cls(
            max_rate=max_rate,
            capacity=capacity,
            tokens=capacity if full else 0.0,
            updated=now,
        )

    def _refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
            self.updated = now

    def available(self, now: float) -> float:
        """Whole tokens available at ``now`` (0 while blocked). Reads only: the metrics thread
        calls it while the loop takes tokens."""
        if now < self.blocked_until:
            return 0.0
        tokens = min(self.capacity, self.tokens + max(0.0, now - self.updated) * self.rate)
        return float(max(0, math.floor(tokens)))

    def ready_at(self, now: float) -> float:
        """The earliest time a token can be taken (``now`` when one can)."""
        self._refill(now)
        missing = max(0.0, 1.0 - self.tokens)
        return max(self.blocked_until, now + missing / self.rate)

    def take(self, now: float) -> bool:
        """Take one token if there is one; True when taken."""
        self._refill(now)
        if now < self.blocked_until or self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True

    def debit(self, now: float, calls: int) -> None:
        """``calls`` more calls were made than tokens were taken (a check that also read its results):
        the tokens go below zero, and the next call waits until they are paid back."""
        self._refill(now)
        self.tokens -= calls

    def give_back(self, now: float) -> None:
        """A token taken for a call that was never made (the job was not ready after all)."""
        self._refill(now)
        self.tokens = min(self.capacity, self.tokens + 1.0)

    def refused(self, now: float, retry_after: float | None) -> None:
        """The API answered 429: halve the rate, empty the bucket and wait (Retry-After, else one
        token's time at the new rate). The 429s of calls that were in flight together halve it
        once: while the bucket waits, another 429 only extends the wait."""
        self._refill(now)
        if now >= self.blocked_until:
            self.rate = max(self.max_rate * MIN_RATE_SHARE, self.rate / 2)
        self.tokens = 0.0
        wait = retry_after if retry_after is not None and retry_after > 0 else 1.0 / self.rate
        self.blocked_until = max(self.blocked_until, now + wait)

    def succeeded(self, now: float) -> None:
        """A call went through: win back a little of the configured rate."""
        self._refill(now)
        self.rate = min(self.max_rate, self.rate + self.max_rate * RECOVERY_SHARE)


@dataclass
class CarriedOver:
    """Calls made before this process started (another process's, recorded in the jobs' status),
    for the first window after the start: together with the calls made since, they never exceed
    ``limit`` in any window. A bucket that starts empty is enough when the previous process paced
    itself the same way; this also holds after one that did not (an older version, other settings),
    and lets the earlier calls' slots come back as they age out of the window."""

    limit: float  # the most calls in any window (a bucket's ``capacity + max_rate * window``)
    window: float
    until: float  # the start + the window: later, no earlier call is in any window
    earlier: list[float] = field(default_factory=list)  # sorted
    made: int = 0

    def add_earlier(self, at: float) -> None:
        bisect.insort(self.earlier, at)

    def ready_at(self, now: float) -> float:
        """The earliest time one more call keeps every window within ``limit``."""
        if now >= self.until:
            return now
        first = bisect.bisect_right(self.earlier, now - self.window)
        inside = self.earlier[first:]
        excess = len(inside) + self.made + 1 - math.floor(self.limit)
        if excess <= 0:
            return now
        if excess > len(inside):
            return self.until  # this process's own calls fill it: wait for the bucket alone
        return min(self.until, inside[excess - 1] + self.window)


@dataclass
class ConcurrencyWindow:
    """For a backend without an hourly quota (the self-hosted service): how many operations may
    be in flight at once, learned from its 429s: halved on each (and a pause for ``Retry-After``),
    one more per window's worth of accepted submissions while it is full, up to ``limit``. It
    starts at a quarter of ``limit``."""

    limit: int
    size: float = 0.0
    blocked_until: float = 0.0

    def __post_init__(self) -> None:
        if self.size <= 0:
            self.size = float(max(1, self.limit // 4))

    def has_room(self, in_flight: int, now: float) -> bool:
        """Whether one more operation may be submitted while ``in_flight`` are running."""
        return now >= self.blocked_until and in_flight < math.floor(self.size)

    def refused(self, now: float, retry_after: float | None) -> None:
        self.size = max(1.0, self.size / 2)
        wait = retry_after if retry_after is not None and retry_after > 0 else 1.0
        self.blocked_until = max(self.blocked_until, now + wait)

    def succeeded(self, in_flight: int) -> None:
        """A submission was accepted with ``in_flight`` operations now running: when that filled
        the window, it grows by one per window's worth of acceptances (additive increase)."""
        if in_flight >= math.floor(self.size):
            self.size = min(float(self.limit), self.size + 1.0 / self.size)
