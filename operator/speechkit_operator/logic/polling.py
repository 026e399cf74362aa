"""When to check a running operation: a pure schedule, separate from how a check is made.

The first check waits for the expected processing time (the docs say about 10 s per minute of mono
audio), then the interval grows geometrically up to a cap. A server's ``Retry-After`` pushes the next
check out further. Whatever wakes the operator (a kopf timer today, a shared quota-aware scheduler
later) asks :func:`check_due` and nothing else.

No input makes these functions raise: an absurd duration, channel count, policy or ``Retry-After``
(huge, infinite, NaN) is clamped, every wait is at most :data:`MAX_WAIT_SECONDS`, and a time beyond
the last one ``datetime`` can hold is that last one.
"""

from __future__ import annotations

import math
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


#: The longest a server's ``Retry-After`` may push a check out; results are kept only 3 days anyway.
MAX_RETRY_AFTER_SECONDS = 24 * 3600.0
#: The longest wait before any check: SpeechKit keeps results for 3 days, so a job is looked at well
#: before its result expires, whatever its duration, channels or the policy say.
MAX_WAIT_SECONDS = 24 * 3600.0


def _bounded_wait(seconds: float) -> float:
    """``seconds`` within ``[0, MAX_WAIT_SECONDS]``; NaN counts as 0."""
    if math.isnan(seconds):
        return 0.0
    return min(max(seconds, 0.0), MAX_WAIT_SECONDS)


def _later(moment: datetime, seconds: float) -> datetime:
    """``moment`` plus ``seconds`` (bounded), or the last representable time when that overflows."""
    try:
        return moment + timedelta(seconds=_bounded_wait(seconds))
    except OverflowError:
        return datetime.max.replace(tzinfo=moment.tzinfo)


def expected_processing_seconds(duration_seconds: float | None, channels: int, policy: PollPolicy) -> float:
    """About ``seconds_per_audio_minute`` per minute of audio, per channel; 0 when the duration is unknown
    (or not a number). Huge inputs give ``inf`` rather than an OverflowError."""
    if not duration_seconds or not duration_seconds > 0:
        return 0.0
    try:
        return duration_seconds / 60.0 * policy.seconds_per_audio_minute * max(1, channels)
    except OverflowError:  # a channel count too large for a float
        return math.inf


def first_check_at(
    submitted_at: datetime,
    duration_seconds: float | None,
    channels: int,
    policy: PollPolicy,
    *,
    expected_seconds: float | None = None,
) -> datetime:
    """When to look first: at the expected processing time (``expected_seconds`` when the model's
    pace is known, else the policy's per-minute figure), never sooner than the minimum."""
    if expected_seconds is None:
        expected_seconds = expected_processing_seconds(duration_seconds, channels, policy)
    wait = max(_bounded_wait(policy.first_check_min_seconds), _bounded_wait(expected_seconds))
    return _later(submitted_at, wait)


def interval_after(checks_done: int, policy: PollPolicy) -> float:
    """The wait after the ``checks_done``-th check (1-based): initial, then times the factor, capped."""
    exponent = max(0, checks_done - 1)
    try:
        interval = policy.initial_interval_seconds * policy.backoff_factor**exponent
    except OverflowError:  # a long-running job with a steep factor: long past the cap
        return policy.max_interval_seconds
    return min(policy.max_interval_seconds, interval)


def honoured_retry_after(retry_after: float | None) -> float:
    """A server's ``Retry-After`` in seconds, bounded to something schedulable (0 when absent)."""
    if retry_after is None or math.isnan(retry_after):
        return 0.0
    return min(max(retry_after, 0.0), MAX_RETRY_AFTER_SECONDS)


def next_check_at(
    checked_at: datetime, checks_done: int, policy: PollPolicy, retry_after: float | None = None
) -> datetime:
    wait = max(_bounded_wait(interval_after(checks_done, policy)), honoured_retry_after(retry_after))
    return _later(checked_at, wait)


def check_due(now: datetime, scheduled: datetime | None) -> bool:
    """A check is due once its scheduled time has come; with no schedule it is due at once."""
    return scheduled is None or now >= scheduled
