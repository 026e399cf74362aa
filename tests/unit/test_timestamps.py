"""RFC 3339 formatting and parsing as the Kubernetes API writes timestamps."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest

from speechkit_operator.models.timestamps import format_time, parse_time, utcnow

MOMENT = datetime(2026, 1, 2, 3, 4, 5, 678_000, tzinfo=UTC)


def test_format_uses_z_and_milliseconds() -> None:
    assert format_time(MOMENT) == "2026-01-02T03:04:05.678Z"


def test_format_truncates_to_milliseconds() -> None:
    assert format_time(MOMENT.replace(microsecond=678_999)) == "2026-01-02T03:04:05.678Z"


def test_format_whole_seconds_keeps_the_fraction() -> None:
    assert format_time(MOMENT.replace(microsecond=0)) == "2026-01-02T03:04:05.000Z"


def test_format_converts_other_zones_to_utc() -> None:
    moscow = datetime(2026, 1, 2, 6, 4, 5, 678_000, tzinfo=timezone(timedelta(hours=3)))

    assert format_time(moscow) == "2026-01-02T03:04:05.678Z"


def test_parse_z() -> None:
    assert parse_time("2026-01-02T03:04:05.678Z") == MOMENT


def test_parse_without_fraction() -> None:
    assert parse_time("2026-01-02T03:04:05Z") == MOMENT.replace(microsecond=0)


def test_parse_offset() -> None:
    parsed = parse_time("2026-01-02T06:04:05.678+03:00")

    assert parsed == MOMENT
    assert parsed is not None
    assert parsed.utcoffset() == timedelta(hours=3)


def test_parse_naive_is_utc() -> None:
    parsed = parse_time("2026-01-02T03:04:05.678")

    assert parsed == MOMENT
    assert parsed is not None
    assert parsed.tzinfo is UTC


@pytest.mark.parametrize("text", [None, "", "garbage", "2026-13-01T00:00:00Z", "yesterday", "12:00"])
def test_garbage_is_none(text: str | None) -> None:
    assert parse_time(text) is None


@pytest.mark.parametrize(
    "moment",
    [
        MOMENT,
        datetime(1999, 12, 31, 23, 59, 59, 999_000, tzinfo=UTC),
        datetime(2026, 6, 1, 0, 0, tzinfo=timezone(timedelta(hours=-7, minutes=-30))),
    ],
)
def test_round_trip(moment: datetime) -> None:
    text = format_time(moment)

    assert text.endswith("Z")
    assert parse_time(text) == moment
    assert format_time(parse_time(text) or MOMENT) == text


@pytest.fixture
def local_zone_tokyo() -> Iterator[None]:
    """Run with a local time zone nine hours east of UTC (a POSIX TZ string: no tzdata needed)."""
    saved = os.environ.get("TZ")
    os.environ["TZ"] = "JST-9"
    time.tzset()
    try:
        yield
    finally:
        if saved is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = saved
        time.tzset()


@pytest.mark.usefixtures("local_zone_tokyo")
def test_parse_naive_is_utc_whatever_the_local_zone() -> None:
    assert parse_time("2026-01-02T03:04:05.678") == MOMENT


@pytest.mark.usefixtures("local_zone_tokyo")
def test_format_naive_is_utc_whatever_the_local_zone() -> None:
    naive = MOMENT.replace(tzinfo=None)

    assert format_time(naive) == "2026-01-02T03:04:05.678Z"


def test_utcnow_is_aware_utc_and_current() -> None:
    before = datetime.now(UTC)
    now = utcnow()
    after = datetime.now(UTC)

    assert now.tzinfo is UTC
    assert before <= now <= after
