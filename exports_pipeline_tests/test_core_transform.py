"""Export rows from one bucket of contacts, attempts and answers (core/transform.py, SPEC section 3): the
latest attempt, totals, answers by position, anomalies. Plain functions on small frames, no server."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl
import pytest

from exports_pipeline.core.instants import INFINITY_US, UTC_US
from exports_pipeline.core.options import ExportOptions
from exports_pipeline.core.source import CampaignInfo
from exports_pipeline.core.transform import (
    bucket_anomalies,
    build_rows,
    call_duration_ms,
    latest_attempts,
    select_contacts,
)

MS = 1_000
T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z in microseconds
CAMPAIGN = CampaignInfo(
    id="c1000000-0000-4000-8000-000000000001",
    name='Été, "promo"\n東京',
    assistant_name=None,
    status="active",
    owner_email=None,
    updated_at=datetime(2026, 1, 1, tzinfo=UTC),
)


def instants(frame: pl.DataFrame, *columns: str) -> pl.DataFrame:
    return frame.with_columns(pl.col(c).cast(UTC_US) for c in columns)


def attempts(*records: tuple) -> pl.DataFrame:
    """(id, contact_id, attempt_number, started_at, ended_at, cost_units, status, transcript_kind)"""
    names = ["id", "contact_id", "attempt_number", "started_at", "ended_at", "cost_units", "status", "transcript_kind"]
    frame = pl.DataFrame(
        [dict(zip(names, r, strict=True)) for r in records],
        orient="row",
        schema={
            "id": pl.String,
            "contact_id": pl.String,
            "attempt_number": pl.Int64,
            "started_at": pl.Int64,
            "ended_at": pl.Int64,
            "cost_units": pl.Int64,
            "status": pl.String,
            "transcript_kind": pl.String,
        },
    )
    return instants(frame, "started_at", "ended_at").with_columns(
        pl.lit(None, pl.String).alias(c) for c in ("ended_reason", "recording_url", "transcript_summary")
    )


def contacts(*ids_states: tuple[str, str, int]) -> pl.DataFrame:
    frame = pl.DataFrame(
        [{"id": i, "state": s, "updated_at": u, "name": f"name of {i}"} for i, s, u in ids_states],
        schema={"id": pl.String, "state": pl.String, "updated_at": pl.Int64, "name": pl.String},
    )
    return instants(frame, "updated_at").with_columns(
        pl.lit(None, UTC_US).alias(c) for c in ("last_attempt_at", "completed_at", "created_at")
    )


def answers(*records: tuple[str, int, str | None]) -> pl.DataFrame:
    return pl.DataFrame(
        [dict(zip(["contact_id", "position", "answer"], r, strict=True)) for r in records],
        schema={"contact_id": pl.String, "position": pl.Int64, "answer": pl.String},
        orient="row",
    )


def test_the_latest_attempt_is_the_highest_number_then_the_later_start_then_the_greater_id():
    chosen = latest_attempts(
        attempts(
            ("a1", "k1", 1, T0 + 9 * MS, None, 1, "x", "ok"),
            ("a2", "k1", 2, T0, None, 1, "x", "ok"),  # number wins
            ("a3", "k2", 2, None, None, 1, "x", "ok"),
            ("a4", "k2", 2, T0, None, 1, "x", "ok"),  # null start counts earlier
            ("a6", "k3", 3, T0, None, 1, "x", "ok"),
            ("a5", "k3", 3, T0, None, 1, "x", "ok"),  # then the greater id
            ("a7", "k4", 1, None, None, 1, "x", "ok"),
        )
    )
    assert dict(chosen.select("contact_id", "id").iter_rows()) == {"k1": "a2", "k2": "a4", "k3": "a6", "k4": "a7"}


def test_call_duration_floors_each_end_to_the_millisecond_and_skips_missing_or_infinite_ends():
    frame = attempts(
        ("a", "k", 1, T0 + 1_999, T0 + 4_001, None, None, None),  # 1.999 ms to 4.001 ms: 4 - 1
        ("b", "k", 2, T0 - 1, T0, None, None, None),  # across a second: floored, not truncated
        ("c", "k", 3, T0, None, None, None, None),
        ("d", "k", 4, T0, INFINITY_US, None, None, None),
    )
    assert frame.select(call_duration_ms())["call_duration_ms"].to_list() == [3, 1, None, None]


@pytest.mark.parametrize(
    "options, kept",
    [
        (ExportOptions(), ["k3", "k1", "k2"]),
        (ExportOptions(states=("terminal",)), ["k3", "k2"]),
        (ExportOptions(updated_from=datetime.fromtimestamp(T0 / 1e6, UTC)), ["k1", "k2"]),  # from: included
        (ExportOptions(updated_to=datetime.fromtimestamp(T0 / 1e6, UTC)), ["k3"]),  # to: excluded
    ],
)
def test_select_contacts_applies_states_and_the_half_open_window_keeping_order(options, kept):
    frame = contacts(("k3", "completed", T0 - 1), ("k1", "pending", T0), ("k2", "refused", T0 + 1))
    assert select_contacts(frame, options)["id"].to_list() == kept


def test_rows_take_the_latest_attempt_the_total_cost_and_answers_by_position():
    rows = build_rows(
        CAMPAIGN,
        contacts(("k3", "completed", T0), ("k1", "completed", T0), ("k2", "pending", T0)),
        attempts(
            ("a1", "k1", 1, T0, T0 + 1_500 * MS, 100, "no_answer", "ok"),
            ("a2", "k1", 2, T0, T0 + 60_000 * MS, 250, "completed", "ok"),
            ("a3", "k3", 1, T0, None, None, "failed", "ok"),
        ),
        answers(
            ("k1", 1, 'oui, "vraiment"'), ("k1", 2, ""), ("k1", 3, "out of range"), ("k3", 0, "zero"), ("k3", 2, None)
        ),
        question_count=2,
    )
    assert rows["contact_id"].to_list() == ["k3", "k1", "k2"]  # the contacts' order
    by_id = {row["contact_id"]: row for row in rows.to_dicts()}
    assert (
        by_id["k1"]["call_status"],
        by_id["k1"]["call_cost_units"],
        by_id["k1"]["total_cost_units"],
        by_id["k1"]["call_duration_ms"],
    ) == ("completed", 250, 350, 60_000)
    assert (by_id["k1"]["q1_answer"], by_id["k1"]["q2_answer"]) == ('oui, "vraiment"', "")  # empty stays empty
    assert (by_id["k3"]["call_cost_units"], by_id["k3"]["total_cost_units"]) == (None, None)  # unknown, not 0
    assert (by_id["k3"]["q1_answer"], by_id["k3"]["q2_answer"]) == (None, None)
    assert by_id["k2"]["call_status"] is None and by_id["k2"]["total_cost_units"] is None
    assert {r["campaign_name"] for r in by_id.values()} == {CAMPAIGN.name}
    assert {r["outcome"] for r in by_id.values()} == {"completed", "pending"}


def test_anomalies_count_bad_transcripts_out_of_range_answers_and_infinite_rows():
    found = bucket_anomalies(
        contacts(("k1", "completed", T0), ("k2", "completed", INFINITY_US)),
        attempts(
            ("a1", "k1", 1, T0, INFINITY_US, None, None, "invalid_json"),
            ("a2", "k1", 2, T0, T0, None, None, "not_object"),
            ("a3", "k2", 1, T0, T0, None, None, "invalid_json"),
            ("a4", "k2", 2, T0, T0, None, None, "ok"),
        ),
        answers(("k1", 0, "a"), ("k1", 1, "b"), ("k1", 4, "c")).with_columns(
            pl.lit(T0).cast(UTC_US).alias("answered_at")
        ),
        question_count=3,
    )
    assert {k: v for k, v in found.items() if v} == {
        "transcript_invalid_json": 2,
        "transcript_not_object": 1,
        "answers_out_of_range": 2,
        "rows_with_infinite_timestamps": 2,
    }
