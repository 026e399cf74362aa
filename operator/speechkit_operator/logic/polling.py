"""When to check a running operation: a pure schedule, separate from how a check is made.

The first check waits for the expected processing time (the docs say about 10 s per minute of mono
audio), then the interval grows geometrically up to a cap. A server's ``Retry-After`` pushes the next
check out further. Whatever wakes the operator (a kopf timer today, a shared quota-aware scheduler
later) asks :func:`check_due` and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from speechkit_operator.config import Settings


@dataclass(frozen=True)
class PollPolicy:
    seconds_per_audio_minute: float = 10.0
    first_check_min_seconds: float = 5.0
    initial_interval_seconds: float = 5.0
    backoff_factor: float = 1.5
    max_interval_seconds: float = 300.0

    @classmethod
    def from_settings(cls, settings: Settings) -> PollPolicy:
        return cls(
            seconds_per_audio_minute=settings.seconds_per_audio_minute,
            first_check_min_seconds=settings.first_check_min_seconds,
            initial_interval_seconds=settings.poll_initial_interval_seconds,
            backoff_factor=settings.poll_backoff_factor,
            max_interval_seconds=settings.poll_max_interval_seconds,
        )


def expected_processing_seconds(duration_seconds: float | None, channels: int, policy: PollPolicy) -> float:
    """About ``seconds_per_audio_minute`` per minute of audio, per channel; 0 when the duration is unknown."""
    if not duration_seconds or duration_seconds <= 0:
        return 0.0
    return duration_seconds / 60.0 * policy.seconds_per_audio_minute * max(1, channels)


def first_check_at(
    submitted_at: datetime, duration_seconds: float | None, channels: int, policy: PollPolicy
) -> datetime:
    wait = max(
        policy.first_check_min_seconds, expected_processing_seconds(duration_seconds, channels, policy)
    )
    return submitted_at + timedelta(seconds=wait)


def interval_after(checks_done: int, policy: PollPolicy) -> float:
    """The wait after the ``checks_done``-th check (1-based): initial, then times the factor, capped."""
    exponent = max(0, checks_done - 1)
    # Cap the exponent so that a very long-running job cannot overflow the float.
    interval = policy.initial_interval_seconds * policy.backoff_factor ** min(exponent, 64)
    return min(policy.max_interval_seconds, interval)


def next_check_at(
    checked_at: datetime, checks_done: int, policy: PollPolicy, retry_after: float | None = None
) -> datetime:
    wait = interval_after(checks_done, policy)
    if retry_after is not None:
        wait = max(wait, retry_after)
    return checked_at + timedelta(seconds=wait)


def check_due(now: datetime, scheduled: datetime | None) -> bool:
    """A check is due once its scheduled time has come; with no schedule it is due at once."""
    return scheduled is None or now >= scheduled
