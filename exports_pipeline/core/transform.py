"""Turn one bucket of contacts, with their attempts and answers, into export rows (native types).

Buckets are whole contacts, so every rule here (latest attempt, totals, answers) is per contact and
the result does not depend on the bucket size. Money stays in exact integer ten-thousandths and
durations in integer milliseconds until a writer formats them.
"""

from __future__ import annotations

from collections import Counter

import polars as pl

from exports_pipeline.core.instants import is_infinite
from exports_pipeline.core.options import ExportOptions
from exports_pipeline.core.source import CampaignInfo

ANOMALY_KINDS = (
    "attempts_other_campaign",
    "answers_other_campaign",
    "answers_out_of_range",
    "transcript_not_object",
    "transcript_text_not_string",
    "transcript_invalid_json",
    "rows_with_infinite_timestamps",
    "xlsx_cells_cut",
)
# The instants of each table's rows (contacts, attempts, answers), where infinity is a row anomaly.
_INSTANTS = {
    "contacts": ("last_attempt_at", "completed_at", "created_at", "updated_at"),
    "attempts": ("started_at", "ended_at"),
    "answers": ("answered_at",),
}
_TRANSCRIPT_ANOMALIES = {
    "not_object": "transcript_not_object",
    "text_not_string": "transcript_text_not_string",
    "invalid_json": "transcript_invalid_json",
}


def latest_attempts(attempts: pl.DataFrame) -> pl.DataFrame:
    """Highest attempt_number; ties: later started_at (null counts earlier), then greater id.

    One grouped max keeps the highest attempt of each contact; only contacts left with a tie are
    sorted (a sort of every attempt costs five times as much). Rows come in no particular order."""
    highest = attempts.filter(pl.col("attempt_number") == pl.col("attempt_number").max().over("contact_id"))
    tied = highest["contact_id"].is_duplicated()
    if not tied.any():
        return highest
    ties = (
        highest.filter(tied)
        .sort(
            ["contact_id", "attempt_number", "started_at", "id"], descending=[False, True, True, True], nulls_last=True
        )
        .unique(subset="contact_id", keep="first", maintain_order=True)
    )
    return pl.concat([highest.filter(~tied), ties])


def _rows_with_infinity(frame: pl.DataFrame, columns: tuple[str, ...]) -> int:
    return frame.select(pl.any_horizontal(is_infinite(c) for c in columns).sum()).item() if frame.height else 0


def bucket_anomalies(
    contacts: pl.DataFrame, attempts: pl.DataFrame, answers: pl.DataFrame, question_count: int
) -> Counter:
    """Row anomalies among the campaign's own contacts, attempts and answers of one bucket."""
    anomalies: Counter = Counter()
    anomalies["rows_with_infinite_timestamps"] += sum(
        _rows_with_infinity(frame, _INSTANTS[table])
        for table, frame in (("contacts", contacts), ("attempts", attempts), ("answers", answers))
    )
    for kind, count in attempts.group_by("transcript_kind").len().iter_rows():
        if kind in _TRANSCRIPT_ANOMALIES:
            anomalies[_TRANSCRIPT_ANOMALIES[kind]] += count
    anomalies["answers_out_of_range"] += answers.filter(~pl.col("position").is_between(1, question_count)).height
    return anomalies


def call_duration_ms() -> pl.Expr:
    """ended_at - started_at, each floored to the millisecond; empty when either is missing or infinite."""
    finite = ~is_infinite("started_at") & ~is_infinite("ended_at")
    return (
        pl.when(finite)
        .then(pl.col("ended_at").dt.epoch("ms") - pl.col("started_at").dt.epoch("ms"))
        .alias("call_duration_ms")
    )


def select_contacts(contacts: pl.DataFrame, options: ExportOptions) -> pl.DataFrame:
    """The contacts the run options keep (states, updated_at window); order is kept."""
    keep = pl.lit(True)
    if options.states is not None:
        keep &= pl.col("state").is_in(options.states)
    if options.updated_from is not None:
        keep &= pl.col("updated_at") >= options.updated_from
    if options.updated_to is not None:
        keep &= pl.col("updated_at") < options.updated_to
    return contacts.filter(keep)


def build_rows(
    campaign: CampaignInfo, contacts: pl.DataFrame, attempts: pl.DataFrame, answers: pl.DataFrame, question_count: int
) -> pl.DataFrame:
    """Export rows for these contacts, in their order, from the campaign's own attempts and answers."""
    in_range = answers.filter(pl.col("position").is_between(1, question_count))
    latest = latest_attempts(attempts).select(
        "contact_id",
        pl.col("status").alias("call_status"),
        pl.col("started_at").alias("call_started_at"),
        pl.col("ended_at").alias("call_ended_at"),
        call_duration_ms(),
        "ended_reason",
        pl.col("cost_units").alias("call_cost_units"),
        "recording_url",
        "transcript_summary",
    )
    totals = attempts.group_by("contact_id").agg(
        pl.when(pl.col("cost_units").count() > 0).then(pl.col("cost_units").sum()).alias("total_cost_units")
    )
    frame = (
        contacts.drop("updated_at")
        .rename({"id": "contact_id", "state": "outcome"})
        .join(latest, on="contact_id", how="left", maintain_order="left")
        .join(totals, on="contact_id", how="left", maintain_order="left")
    )
    if question_count:
        pivot = in_range.group_by("contact_id").agg(
            pl.col("answer").filter(pl.col("position") == k).first().alias(f"q{k}_answer")
            for k in range(1, question_count + 1)
        )
        frame = frame.join(pivot, on="contact_id", how="left", maintain_order="left")
    frame = frame.with_columns(
        pl.lit(campaign.id, pl.String).alias("campaign_id"),
        pl.lit(campaign.name, pl.String).alias("campaign_name"),
        pl.lit(campaign.assistant_name, pl.String).alias("assistant_name"),
    )
    return frame
