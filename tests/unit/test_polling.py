"""The poll schedule: first check after the expected processing time, then geometric backoff to a cap."""

from __future__ import annotations

import os
import random
from datetime import UTC, datetime, timedelta

import pytest

from speechkit_operator.config import Settings
from speechkit_operator.logic.polling import (
    PollPolicy,
    check_due,
    expected_processing_seconds,
    first_check_at,
    interval_after,
    next_check_at,
)

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
POLICY = PollPolicy(
    seconds_per_audio_minute=10.0,
    first_check_min_seconds=5.0,
    initial_interval_seconds=5.0,
    backoff_factor=1.5,
    max_interval_seconds=300.0,
)


def seconds_after(moment: datetime) -> float:
    return (moment - T0).total_seconds()


# --- first check ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("duration", "channels", "expected"),
    [
        (60.0, 1, 10.0),  # a minute of mono audio: 10 s
        (180.0, 1, 30.0),
        (180.0, 2, 60.0),  # per channel
        (90.0, 1, 15.0),
        (600.0, 4, 400.0),
    ],
)
def test_first_check_waits_the_expected_processing_time(
    duration: float, channels: int, expected: float
) -> None:
    assert expected_processing_seconds(duration, channels, POLICY) == pytest.approx(expected)
    assert seconds_after(first_check_at(T0, duration, channels, POLICY)) == pytest.approx(expected)


@pytest.mark.parametrize("duration", [1.0, 12.0, 29.9])
def test_first_check_never_comes_sooner_than_the_minimum(duration: float) -> None:
    assert expected_processing_seconds(duration, 1, POLICY) < POLICY.first_check_min_seconds

    assert seconds_after(first_check_at(T0, duration, 1, POLICY)) == pytest.approx(5.0)


@pytest.mark.parametrize("duration", [None, 0.0, -3.0])
def test_unknown_duration_waits_the_minimum(duration: float | None) -> None:
    assert expected_processing_seconds(duration, 2, POLICY) == 0.0
    assert seconds_after(first_check_at(T0, duration, 2, POLICY)) == pytest.approx(5.0)


def test_channels_below_one_count_as_one() -> None:
    assert expected_processing_seconds(120.0, 0, POLICY) == pytest.approx(20.0)


def test_first_check_uses_the_policy_rate_and_minimum() -> None:
    policy = PollPolicy(seconds_per_audio_minute=30.0, first_check_min_seconds=45.0)

    assert seconds_after(first_check_at(T0, 60.0, 1, policy)) == pytest.approx(45.0)
    assert seconds_after(first_check_at(T0, 120.0, 1, policy)) == pytest.approx(60.0)


# --- intervals -----------------------------------------------------------------------------------


def test_interval_grows_by_the_factor() -> None:
    intervals = [interval_after(n, POLICY) for n in range(1, 6)]

    assert intervals == pytest.approx([5.0, 7.5, 11.25, 16.875, 25.3125])


def test_interval_before_any_check_is_the_initial_one() -> None:
    assert interval_after(0, POLICY) == pytest.approx(5.0)


def test_interval_is_capped() -> None:
    policy = PollPolicy(initial_interval_seconds=10.0, backoff_factor=2.0, max_interval_seconds=60.0)

    intervals = [interval_after(n, policy) for n in range(1, 8)]

    assert intervals == pytest.approx([10.0, 20.0, 40.0, 60.0, 60.0, 60.0, 60.0])


def test_interval_after_very_many_checks_stays_at_the_cap() -> None:
    assert interval_after(10_000, POLICY) == pytest.approx(300.0)


def test_factor_one_keeps_the_interval_constant() -> None:
    policy = PollPolicy(initial_interval_seconds=7.0, backoff_factor=1.0)

    assert {interval_after(n, policy) for n in range(1, 50)} == {7.0}


def test_next_check_is_the_check_time_plus_the_interval() -> None:
    assert seconds_after(next_check_at(T0, 1, POLICY)) == pytest.approx(5.0)
    assert seconds_after(next_check_at(T0, 3, POLICY)) == pytest.approx(11.25)


# --- Retry-After ---------------------------------------------------------------------------------


def test_retry_after_pushes_the_next_check_further() -> None:
    assert seconds_after(next_check_at(T0, 1, POLICY, retry_after=120.0)) == pytest.approx(120.0)


def test_retry_after_beyond_the_cap_is_honoured() -> None:
    assert seconds_after(next_check_at(T0, 50, POLICY, retry_after=900.0)) == pytest.approx(900.0)


@pytest.mark.parametrize("retry_after", [0.0, 1.0, 4.9])
def test_retry_after_never_brings_the_next_check_earlier(retry_after: float) -> None:
    assert seconds_after(next_check_at(T0, 1, POLICY, retry_after=retry_after)) == pytest.approx(5.0)


@pytest.mark.parametrize("retry_after", [1e12, 1e20])
def test_huge_retry_after_still_schedules_a_later_check(retry_after: float) -> None:
    assert next_check_at(T0, 1, POLICY, retry_after=retry_after) > T0


# --- check_due -----------------------------------------------------------------------------------


def test_check_due_without_a_schedule() -> None:
    assert check_due(T0, None) is True


def test_check_due_before_at_and_after_the_scheduled_time() -> None:
    scheduled = T0 + timedelta(seconds=10)

    assert check_due(T0, scheduled) is False
    assert check_due(scheduled - timedelta(microseconds=1), scheduled) is False
    assert check_due(scheduled, scheduled) is True
    assert check_due(scheduled + timedelta(seconds=1), scheduled) is True


# --- settings ------------------------------------------------------------------------------------


def test_policy_from_settings_reads_every_field() -> None:
    settings = Settings(
        seconds_per_audio_minute=12.0,
        first_check_min_seconds=3.0,
        poll_initial_interval_seconds=4.0,
        poll_backoff_factor=2.5,
        poll_max_interval_seconds=99.0,
    )

    assert PollPolicy.from_settings(settings) == PollPolicy(
        seconds_per_audio_minute=12.0,
        first_check_min_seconds=3.0,
        initial_interval_seconds=4.0,
        backoff_factor=2.5,
        max_interval_seconds=99.0,
    )


def test_policy_from_default_settings_matches_the_documented_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in list(os.environ):
        if name.startswith("SPEECHKIT_OPERATOR_"):
            monkeypatch.delenv(name)

    assert PollPolicy.from_settings(Settings()) == PollPolicy()


# --- properties over many inputs -----------------------------------------------------------------


def random_policy(rng: random.Random) -> PollPolicy:
    return PollPolicy(
        seconds_per_audio_minute=rng.uniform(0.0, 60.0),
        first_check_min_seconds=rng.uniform(0.0, 30.0),
        initial_interval_seconds=rng.uniform(0.01, 60.0),
        backoff_factor=rng.uniform(1.0, 4.0),
        max_interval_seconds=rng.uniform(0.01, 3600.0),
    )


def test_next_check_is_always_later_and_intervals_never_shrink() -> None:
    rng = random.Random(20260101)
    for _ in range(120):
        policy = random_policy(rng)
        checked_at = T0 + timedelta(seconds=rng.uniform(0.0, 1e6))
        previous_wait = 0.0
        for checks_done in range(1, 60):
            retry_after = rng.choice([None, 0.0, rng.uniform(0.0, 600.0)])
            plain = next_check_at(checked_at, checks_done, policy)
            pushed = next_check_at(checked_at, checks_done, policy, retry_after=retry_after)
            wait = (plain - checked_at).total_seconds()

            context = f"{policy} checks={checks_done} retry_after={retry_after}"
            assert plain > checked_at, context
            assert pushed >= plain, context
            assert wait >= previous_wait - 1e-9, context
            assert wait <= policy.max_interval_seconds + 1e-6, context
            previous_wait = wait


def test_first_check_is_never_before_the_minimum_over_many_inputs() -> None:
    rng = random.Random(7)
    for _ in range(1000):
        policy = random_policy(rng)
        duration = rng.choice([None, 0.0, rng.uniform(0.0, 7200.0)])
        channels = rng.randint(0, 8)

        wait = seconds_after(first_check_at(T0, duration, channels, policy))

        assert wait >= policy.first_check_min_seconds - 1e-6
        assert wait >= expected_processing_seconds(duration, channels, policy) - 1e-6
