"""Instants at the edges: what PostgreSQL holds that Python's datetime does not.

PostgreSQL's timestamptz runs from 4713 BC to 294276 AD, plus infinity and -infinity. Python's
datetime holds years 1 to 9999 only, so no value goes through it on the export's path. Frames
hold instants as polars Datetime("us", "UTC"); connectorx reads infinity and -infinity as the two
ends of the range its date library (chrono) holds, and those two values mean infinity here.
Finite instants from 262143 AD on (past that range) fail the export by name: see
source.EdgeTimestampError.

Text forms (docs/contract.md, "Timestamps at the edges"): years 0001 to 9999 as ISO 8601
(2026-11-22T08:15:30.123Z); other years in ISO 8601's expanded form with a sign and six digits
(+020000-01-01T00:00:00.000Z, -000043-03-15T12:00:00.000Z for 44 BC: year 0 is 1 BC);
infinity and -infinity as the words, PostgreSQL's own spelling.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl

UTC_US = pl.Datetime("us", "UTC")
# The ends of chrono's range in microseconds since 1970: what connectorx gives for -infinity / infinity.
NEG_INFINITY_US = -8_334_601_228_800_000_000  # -262143-01-01T00:00:00Z
INFINITY_US = 8_210_266_876_799_999_999  # +262142-12-31T23:59:59.999999Z
# Parquet has no infinite timestamp: it gets the values DuckDB reads as infinity and -infinity.
PARQUET_INFINITY_US = 2**63 - 1
PARQUET_NEG_INFINITY_US = -(2**63 - 1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_PLAIN_FIRST_US = -62_135_596_800_000_000  # 0001-01-01T00:00:00Z
_PLAIN_LAST_US = 253_402_300_799_999_999  # 9999-12-31T23:59:59.999999Z


def is_infinite(column: str) -> pl.Expr:
    return pl.col(column).dt.epoch("us").is_in([INFINITY_US, NEG_INFINITY_US])


def has_edges(frame: pl.DataFrame, columns: list[str]) -> bool:
    """Whether any of these timestamp columns holds a year outside 0001..9999 or an infinity."""
    if not columns or frame.is_empty():
        return False
    bounds = frame.select(
        [pl.col(c).dt.epoch("us").min().alias(f"{c}_min") for c in columns]
        + [pl.col(c).dt.epoch("us").max().alias(f"{c}_max") for c in columns]
    ).row(0)
    return any(v is not None and not _PLAIN_FIRST_US <= v <= _PLAIN_LAST_US for v in bounds)


def holds_any(frame: pl.DataFrame, columns: list[str], micros: list[int]) -> bool:
    """Whether any of these timestamp columns holds one of these instants (microseconds since 1970)."""
    if not columns or frame.is_empty():
        return False
    return bool(frame.select(pl.any_horizontal(pl.col(c).dt.epoch("us").is_in(micros).any() for c in columns)).item())


def timestamp_text(column: str, digits: int, edges: bool = True) -> pl.Expr:
    """The column as UTC text with this many fractional digits (floored), in the forms above.
    edges=False: the caller knows every value is within years 0001..9999 (a quicker expression)."""
    value = pl.col(column)
    plain = value.dt.to_string(f"%Y-%m-%dT%H:%M:%S%.{digits}fZ")
    if not edges:
        return plain.alias(column)
    year = value.dt.year()
    expanded = (
        pl.when(year < 0).then(pl.lit("-")).otherwise(pl.lit("+"))
        + year.abs().cast(pl.String).str.zfill(6)
        + value.dt.to_string(f"-%m-%dT%H:%M:%S%.{digits}fZ")
    )
    micros = value.dt.epoch("us")
    return (
        pl.when(micros == INFINITY_US)
        .then(pl.lit("infinity"))
        .when(micros == NEG_INFINITY_US)
        .then(pl.lit("-infinity"))
        .when(year.is_between(1, 9999))
        .then(plain)
        .otherwise(expanded)
        .alias(column)
    )


def parquet_timestamp(column: str) -> pl.Expr:
    """Infinity and -infinity as Parquet stores them (PARQUET_*INFINITY_US); other instants unchanged."""
    micros = pl.col(column).dt.epoch("us")
    return (
        pl.when(micros == INFINITY_US)
        .then(pl.lit(PARQUET_INFINITY_US))
        .when(micros == NEG_INFINITY_US)
        .then(pl.lit(PARQUET_NEG_INFINITY_US))
        .otherwise(micros)
        .cast(UTC_US)
        .alias(column)
    )


def _civil_date(days: int) -> tuple[int, int, int]:
    """Proleptic Gregorian (year, month, day) of a day count since 1970-01-01, for any year
    (H. Hinnant's civil_from_days)."""
    days += 719_468
    era = days // 146_097
    day_of_era = days - era * 146_097
    year_of_era = (day_of_era - day_of_era // 1460 + day_of_era // 36_524 - day_of_era // 146_096) // 365
    day_of_year = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)
    shifted_month = (5 * day_of_year + 2) // 153
    day = day_of_year - (153 * shifted_month + 2) // 5 + 1
    month = shifted_month + 3 if shifted_month < 10 else shifted_month - 9
    return year_of_era + era * 400 + (month <= 2), month, day


def instant_text(micros: int) -> str:
    """An instant (microseconds since 1970) for the source fingerprint: Python's isoformat where datetime
    holds it (as fingerprints have always been written), the expanded form or infinity elsewhere."""
    if micros == INFINITY_US:
        return "infinity"
    if micros == NEG_INFINITY_US:
        return "-infinity"
    if _PLAIN_FIRST_US <= micros <= _PLAIN_LAST_US:
        return (_EPOCH + timedelta(microseconds=micros)).isoformat()
    days, rest = divmod(micros, 86_400_000_000)
    year, month, day = _civil_date(days)
    seconds, fraction = divmod(rest, 1_000_000)
    sign = "-" if year < 0 else "+"
    return (
        f"{sign}{abs(year):06d}-{month:02d}-{day:02d}T{seconds // 3600:02d}:{seconds // 60 % 60:02d}:"
        f"{seconds % 60:02d}.{fraction:06d}+00:00"
    )


def clamped_datetime(value: datetime | int) -> datetime:
    """A UTC datetime for ordering (sensor cursors): instants Python's datetime does not hold become its
    first or last instant, which keeps their order (ties are broken by campaign id)."""
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    if _PLAIN_FIRST_US <= value <= _PLAIN_LAST_US:
        return _EPOCH + timedelta(microseconds=value)
    return (datetime.max if value > 0 else datetime.min).replace(tzinfo=UTC)


def fingerprint_order(text: str) -> datetime:
    """A fingerprint instant (fingerprint_instant's text) as a datetime that orders it: infinity and years
    past 9999 as Python's last instant, -infinity and years before 1 as its first."""
    if text.startswith(("+", "infinity")):
        return datetime.max.replace(tzinfo=UTC)
    if text.startswith("-"):
        return datetime.min.replace(tzinfo=UTC)
    return datetime.fromisoformat(text)


def fingerprint_instant(value: datetime | int | None) -> str | None:
    """An instant of the source fingerprint as text: from a datetime, or microseconds since 1970."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    return instant_text(value)
