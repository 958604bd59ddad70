"""Instants at the edges (core/instants.py, docs/contract.md "Timestamps at the edges"): pre-1970, year 0,
BC years, years past 9999 and infinity, as text and as ordering keys. Plain functions on small frames."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import polars as pl
import pytest

from exports_pipeline.core.instants import (
    INFINITY_US,
    NEG_INFINITY_US,
    PARQUET_INFINITY_US,
    PARQUET_NEG_INFINITY_US,
    UTC_US,
    clamped_datetime,
    fingerprint_instant,
    fingerprint_order,
    has_edges,
    holds_any,
    instant_text,
    parquet_timestamp,
    timestamp_text,
)

DAY_US = 86_400_000_000
CYCLE_DAYS = 146_097  # the Gregorian calendar repeats every 400 years, which lets datetime reach past its range


def micros(year: int, month: int, day: int, hour: int = 0, extra_us: int = 0) -> int:
    """Microseconds since 1970 of a UTC instant in any year, computed with datetime 400-year cycles away."""
    cycles = (1 - year) // 400 + 1 if year < 1 else -((year - 9999) // 400 + 1) if year > 9999 else 0
    days = (date(year + 400 * cycles, month, day) - date(1970, 1, 1)).days - cycles * CYCLE_DAYS
    return days * DAY_US + hour * 3_600_000_000 + extra_us


def frame(*values: int | None) -> pl.DataFrame:
    return pl.DataFrame({"t": pl.Series(values, dtype=pl.Int64)}).with_columns(pl.col("t").cast(UTC_US))


@pytest.mark.parametrize(
    "value, text",
    [
        (0, "1970-01-01T00:00:00+00:00"),
        (-1, "1969-12-31T23:59:59.999999+00:00"),
        (micros(1, 1, 1), "0001-01-01T00:00:00+00:00"),
        (micros(9999, 12, 31, 23, 3_599_999_999), "9999-12-31T23:59:59.999999+00:00"),
        (micros(10000, 1, 1), "+010000-01-01T00:00:00.000000+00:00"),
        (micros(20000, 1, 1), "+020000-01-01T00:00:00.000000+00:00"),
        (micros(1, 1, 1) - 1, "+000000-12-31T23:59:59.999999+00:00"),  # year 0 is 1 BC
        (micros(-43, 3, 15, 12), "-000043-03-15T12:00:00.000000+00:00"),  # 44 BC
        (micros(-4712, 1, 1), "-004712-01-01T00:00:00.000000+00:00"),  # PostgreSQL's first day
        (micros(2024, 2, 29, 23, 1), "2024-02-29T23:00:00.000001+00:00"),
        (INFINITY_US, "infinity"),
        (NEG_INFINITY_US, "-infinity"),
    ],
)
def test_instant_text_of_the_fingerprint(value, text):
    assert instant_text(value) == text


def test_fingerprint_instant_from_a_datetime_is_utc_and_none_stays_none():
    paris = timezone(timedelta(hours=2))
    assert fingerprint_instant(datetime(2026, 6, 1, 2, 30, tzinfo=paris)) == "2026-06-01T00:30:00+00:00"
    assert fingerprint_instant(datetime(1900, 1, 1, tzinfo=UTC)) == "1900-01-01T00:00:00+00:00"
    assert fingerprint_instant(micros(1900, 1, 1)) == "1900-01-01T00:00:00+00:00"  # the same from either form
    assert fingerprint_instant(None) is None


@pytest.mark.parametrize(
    "value",
    [
        NEG_INFINITY_US,
        micros(-43, 3, 15),
        micros(1, 1, 1) - 1,
        micros(1, 1, 1),
        -1,
        0,
        micros(9999, 12, 31),
        micros(10000, 1, 1),
        INFINITY_US,
    ],
)
def test_fingerprint_order_keeps_the_order_of_the_instants(value):
    """Each value orders at or after every smaller one, through its text (what sensor cursors store)."""
    earlier = [v for v in (NEG_INFINITY_US, micros(1, 1, 1), 0, micros(9999, 12, 31), INFINITY_US) if v < value]
    key = fingerprint_order(instant_text(value))
    assert key.tzinfo is not None
    assert all(fingerprint_order(instant_text(v)) <= key for v in earlier)


@pytest.mark.parametrize(
    "value, expected",
    [
        (INFINITY_US, datetime.max.replace(tzinfo=UTC)),
        (micros(10000, 1, 1), datetime.max.replace(tzinfo=UTC)),
        (NEG_INFINITY_US, datetime.min.replace(tzinfo=UTC)),
        (micros(-43, 3, 15), datetime.min.replace(tzinfo=UTC)),
        (-1, datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)),
        (datetime(2026, 1, 1, 1, tzinfo=timezone(timedelta(hours=1))), datetime(2026, 1, 1, tzinfo=UTC)),
    ],
)
def test_clamped_datetime_orders_what_datetime_cannot_hold(value, expected):
    assert clamped_datetime(value) == expected


def test_timestamp_text_floors_and_writes_every_form():
    values = frame(
        0,
        -1,
        micros(1, 1, 1),
        micros(10000, 1, 1, 0, 123_456),
        micros(-43, 3, 15, 12),
        INFINITY_US,
        NEG_INFINITY_US,
        None,
    )
    assert values.select(timestamp_text("t", 3))["t"].to_list() == [
        "1970-01-01T00:00:00.000Z",
        "1969-12-31T23:59:59.999Z",  # floored, never rounded up into 1970
        "0001-01-01T00:00:00.000Z",
        "+010000-01-01T00:00:00.123Z",
        "-000043-03-15T12:00:00.000Z",
        "infinity",
        "-infinity",
        None,  # null stays null (an empty CSV field)
    ]
    assert values.head(2).select(timestamp_text("t", 6))["t"].to_list() == [
        "1970-01-01T00:00:00.000000Z",
        "1969-12-31T23:59:59.999999Z",
    ]


def test_timestamp_text_without_edges_gives_the_same_text_for_plain_years():
    values = frame(-1, 0, micros(1900, 3, 1, 5, 7), micros(9999, 12, 31, 23, 3_599_999_999))
    assert values.select(timestamp_text("t", 3, edges=False)).equals(values.select(timestamp_text("t", 3)))


@pytest.mark.parametrize(
    "values, edges",
    [
        ((0, -1, micros(1, 1, 1), micros(9999, 12, 31, 23, 3_599_999_999)), False),
        ((None, None), False),
        ((0, micros(10000, 1, 1)), True),
        ((micros(1, 1, 1) - 1,), True),
        ((None, INFINITY_US), True),
        ((NEG_INFINITY_US,), True),
    ],
)
def test_has_edges_finds_years_outside_0001_9999_and_infinity(values, edges):
    assert has_edges(frame(*values), ["t"]) is edges


def test_has_edges_and_holds_any_on_nothing():
    assert not has_edges(frame(), ["t"]) and not has_edges(frame(INFINITY_US), [])
    assert not holds_any(frame(), ["t"], [INFINITY_US]) and not holds_any(frame(INFINITY_US), [], [INFINITY_US])
    assert holds_any(frame(0, INFINITY_US), ["t"], [INFINITY_US, NEG_INFINITY_US])
    assert not holds_any(frame(0, micros(10000, 1, 1)), ["t"], [INFINITY_US, NEG_INFINITY_US])


def test_parquet_gets_its_own_infinities_and_other_instants_unchanged():
    values = frame(INFINITY_US, NEG_INFINITY_US, -1, micros(20000, 1, 1), None)
    stored = values.select(parquet_timestamp("t"))
    assert stored.schema["t"] == UTC_US
    assert stored.select(pl.col("t").dt.epoch("us"))["t"].to_list() == [
        PARQUET_INFINITY_US,
        PARQUET_NEG_INFINITY_US,
        -1,
        micros(20000, 1, 1),
        None,
    ]
