"""Bounded retries with exponential backoff and full jitter, for one call to a remote API.

The loop is short on purpose: it rides out a blip (a 503, a dropped connection, a brief 429).
Anything longer is the caller's business: when the attempts run out, or when the server asks
for a pause longer than :attr:`RetryPolicy.max_delay`, the last error is raised and the caller
reschedules the whole job.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from speechkit_operator.config import Settings

T = TypeVar("T")

#: Exponents above this cannot matter (2**60 times any sane base delay exceeds any max delay).
_MAX_EXPONENT = 60


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to repeat a call that failed transiently.

    ``attempts`` counts every call, the first included: 1 means no retries.
    """

    attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 30.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("RetryPolicy.attempts must be at least 1")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("RetryPolicy delays must not be negative")

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            attempts=settings.retry_attempts,
            base_delay=settings.retry_base_delay,
            max_delay=settings.retry_max_delay,
        )

    def backoff_ceiling(self, failed_attempt: int) -> float:
        """The longest wait after the ``failed_attempt``-th call failed (1-based): base * 2**(n-1), capped."""
        exponent = min(max(failed_attempt - 1, 0), _MAX_EXPONENT)
        return min(self.max_delay, self.base_delay * float(2**exponent))

    def backoff(self, failed_attempt: int, rand: Callable[[], float] = random.random) -> float:
        """A full-jitter delay: uniform in ``[0, backoff_ceiling(failed_attempt)]``."""
        return rand() * self.backoff_ceiling(failed_attempt)


#: Called before each wait with the number of the attempt that failed, its error and the delay.
RetryNotice = Callable[[int, Exception, float], None]


async def with_retries(
    call: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    is_transient: Callable[[Exception], bool],
    retry_after_of: Callable[[Exception], float | None] = lambda _exc: None,
    on_retry: RetryNotice | None = None,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    rand: Callable[[], float] = random.random,
) -> T:
    """Await ``call()`` until it succeeds, retrying transient errors according to ``policy``.

    - A permanent error (``is_transient`` false) is raised at once.
    - A transient error is retried after a full-jitter exponential backoff, or after exactly the
      server's Retry-After (``retry_after_of``) when it names one.
    - If that Retry-After exceeds ``policy.max_delay``, the error is raised at once: waiting that
      long inside one call would stall the caller, who should reschedule instead.
    - When the attempts run out, the last error is raised unchanged.

    Only :class:`Exception` is caught; cancellation passes straight through.
    """
    attempt = 0
    while True:
        attempt += 1
        try:
            return await call()
        except Exception as exc:
            if not is_transient(exc) or attempt >= policy.attempts:
                raise
            retry_after = retry_after_of(exc)
            if retry_after is not None:
                if retry_after > policy.max_delay:
                    raise
                delay = max(0.0, retry_after)
            else:
                delay = policy.backoff(attempt, rand)
            if on_retry is not None:
                on_retry(attempt, exc, delay)
        await sleep(delay)
