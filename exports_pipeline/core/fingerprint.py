"""SPEC section 5's source fingerprint: what "changed since the last export" compares.

It is the campaign's updated_at, then for each of its streams (contacts, attempts, answers) how many
rows are filed under the campaign and the latest of their activity instants, then how many questions
it has. The export tallies it while it reads; the sources and the catalog ask the database for it.
All of them take the streams and their activity instants from STREAMS, and the order from here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import polars as pl

from exports_pipeline.core.instants import fingerprint_instant

FINGERPRINT_FIELDS = (
    "campaign_updated_at",
    "contacts_count",
    "contacts_max_updated_at",
    "attempts_count",
    "attempts_max_time",
    "answers_count",
    "answers_max_answered_at",
    "questions_count",
)
FINGERPRINT_INSTANTS = (
    "campaign_updated_at",
    "contacts_max_updated_at",
    "attempts_max_time",
    "answers_max_answered_at",
)


@dataclass(frozen=True)
class Stream:
    """One table the fingerprint counts: its source table, the columns whose first non-null value is a
    row's activity instant (an attempt that has not ended counts from its start), and the column that
    names a row in errors."""

    table: str
    activity: tuple[str, ...]
    row_id: str

    def activity_sql(self) -> str:
        """The activity instant in SQL (SQLite's coalesce wants two arguments or more)."""
        return self.activity[0] if len(self.activity) == 1 else f"coalesce({', '.join(self.activity)})"

    def activity_expr(self) -> pl.Expr:
        """The activity instant of a frame of the stream."""
        return pl.coalesce(self.activity)


STREAMS = {
    "contacts": Stream("contacts", ("updated_at",), "id"),
    "attempts": Stream("call_attempts", ("ended_at", "started_at"), "id"),
    "answers": Stream("survey_responses", ("answered_at",), "contact_id"),
}


def fingerprint_fields(values) -> dict:
    """The fingerprint from its values in FINGERPRINT_FIELDS order; instants as datetimes or
    microseconds since 1970, written as instants.fingerprint_instant says."""
    return {
        name: fingerprint_instant(value) if name in FINGERPRINT_INSTANTS else value
        for name, value in zip(FINGERPRINT_FIELDS, values, strict=True)
    }


def fingerprint_of(campaign_updated_at, streams: Mapping[str, tuple[int, object]], questions: int) -> dict:
    """The fingerprint from the campaign's updated_at, each of STREAMS' (rows, latest activity instant)
    and the number of questions."""
    return fingerprint_fields((campaign_updated_at, *(value for name in STREAMS for value in streams[name]), questions))


def _postgres_sql() -> str:
    """The fingerprints of a page of campaigns in one statement. Each stream is read over the id range of
    the page (one index range scan each; callers pass consecutive ids in order), which PostgreSQL does
    several times faster than probing the index once per id."""
    in_range = "campaign_id BETWEEN %(first)s::uuid AND %(last)s::uuid"
    counted = [
        (f"s_{name}", f"count(*) n, max({stream.activity_sql()}) m", stream.table) for name, stream in STREAMS.items()
    ] + [("s_questions", "count(*) n", "survey_questions")]
    joins = " ".join(
        f"LEFT JOIN (SELECT campaign_id, {aggregates} FROM {table} WHERE {in_range} "
        f"GROUP BY campaign_id) {alias} ON {alias}.campaign_id = c.id"
        for alias, aggregates, table in counted
    )
    values = ", ".join(f"coalesce(s_{name}.n, 0), s_{name}.m" for name in STREAMS)
    return (
        f"SELECT c.id::text, c.updated_at, {values}, coalesce(s_questions.n, 0) FROM campaigns c {joins} "
        "WHERE c.id = ANY(%(ids)s::uuid[])"
    )


_POSTGRES_SQL = _postgres_sql()


def postgres_fingerprints(rows: Callable[[str, dict], list[tuple]], campaign_ids: list[str]) -> dict[str, dict]:
    """The fingerprint of each of these campaigns (canonical ids, in order) that exists. rows runs a query
    with parameters, reading instants as datetimes or microseconds (source.EdgeInstantLoader)."""
    if not campaign_ids:
        return {}
    found = rows(_POSTGRES_SQL, {"ids": campaign_ids, "first": campaign_ids[0], "last": campaign_ids[-1]})
    return {row[0]: fingerprint_fields(row[1:]) for row in found}
