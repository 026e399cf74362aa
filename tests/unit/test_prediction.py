"""The processing pace per model, learned from finished jobs."""

from __future__ import annotations

import math

import pytest

from speechkit_operator.logic.prediction import MAX_RATE, MIN_RATE, ProcessingRates


def test_unknown_models_use_the_default_pace() -> None:
    rates = ProcessingRates(default=10 / 60)
    assert rates.predict("general", 60.0, 1) == pytest.approx(10.0)
    assert rates.predict("general", 60.0, 2) == pytest.approx(20.0)
    assert rates.predict("general", None, 1) == 0.0
    assert rates.predict("general", math.inf, 1) == 0.0


def test_a_model_learns_its_own_pace_and_others_keep_theirs() -> None:
    rates = ProcessingRates(default=10 / 60)
    assert rates.learn("deferred-general", 60.0, 1, took_seconds=3600.0)
    assert rates.rate("deferred-general") == pytest.approx(60.0)
    assert rates.rate("general") == pytest.approx(10 / 60)
    for _ in range(30):
        rates.learn("general", 120.0, 2, took_seconds=12.0)  # 0.05 s per audio second per channel
    assert rates.rate("general") == pytest.approx(0.05, rel=0.01)
    assert rates.predict("general", 300.0, 1) == pytest.approx(15.0, rel=0.01)


def test_a_stray_sample_moves_the_average_only_so_far() -> None:
    rates = ProcessingRates(default=0.1)
    for _ in range(20):
        rates.learn("general", 100.0, 1, took_seconds=10.0)
    rates.learn("general", 100.0, 1, took_seconds=86_400.0)  # waited a day in SpeechKit's queue
    assert rates.rate("general") < 0.1 * 0.8 + MAX_RATE * 0.2 + 1e-9
    assert rates.rate("general") >= MIN_RATE


@pytest.mark.parametrize(("duration", "took"), [(None, 5.0), (0.0, 5.0), (10.0, -1.0), (10.0, math.nan)])
def test_samples_that_tell_nothing_are_ignored(duration: float | None, took: float) -> None:
    rates = ProcessingRates(default=0.1)
    assert not rates.learn("general", duration, 1, took)
    assert rates.rates == {}


def test_the_paces_survive_a_round_trip_and_garbage_is_left_out() -> None:
    rates = ProcessingRates(default=0.1)
    rates.learn("general", 60.0, 1, 6.0)
    rates.learn("general:rc", 60.0, 1, 3.0)
    again = ProcessingRates.from_json(rates.to_json(), default=0.2)
    assert again.rates == rates.rates and again.samples == rates.samples
    assert again.default == 0.2
    assert ProcessingRates.from_json("not json", default=0.1).rates == {}
    odd = '{"a": {"rate": "fast"}, "b": 3, "c": {"rate": 1e9}, "d": {"rate": 0.5, "samples": 2}}'
    assert ProcessingRates.from_json(odd, default=0.1).rates == {"d": 0.5}
