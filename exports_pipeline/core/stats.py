"""Dashboard figures of a campaign (SPEC section 6), accumulated batch by batch from the export's reads.

The figures cover the whole campaign in the export's snapshot: the export's own batches when it has
no filter, otherwise a second pass over every contact. Attempts count when they are filed under the
campaign and belong to one of its contacts (the export's own rule).
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

import polars as pl

from exports_pipeline.core.options import CONTACT_STATES
from exports_pipeline.core.transform import call_duration_ms

ATTEMPT_STATUSES = ("queued", "ringing", "in_progress", "completed", "no_answer", "busy", "failed", "refused")
HOURS, DAYS = 24, 30


def percentage(numerator: int, denominator: int) -> float:
    """Half-up to 2 decimals; 0 when the denominator is 0."""
    if not denominator:
        return 0.0
    return float((Decimal(numerator) * 100 / Decimal(denominator)).quantize(Decimal("0.01"), ROUND_HALF_UP))


def _seconds(milliseconds: int | None) -> float | None:
    return None if milliseconds is None else milliseconds / 1000


def _money(units: int) -> str:
    sign = "-" if units < 0 else ""
    return f"{sign}{abs(units) // 10_000}.{abs(units) % 10_000:04d}"


class CampaignStats:
    """Accumulates the figures over batches of (contacts, the campaign's own attempts)."""

    def __init__(self, snapshot_time: datetime):
        self.snapshot_time = snapshot_time.astimezone(UTC)
        self.last_hour = self.snapshot_time.replace(minute=0, second=0, microsecond=0)
        self.last_day = self.last_hour.replace(hour=0)
        self.states: Counter = Counter()
        self.statuses: Counter = Counter()
        self.durations = {"count": 0, "total": 0, "min": None, "max": None}
        self.cost_units = 0
        self.hourly: Counter = Counter()
        self.daily: Counter = Counter()

    def add(self, contacts: pl.DataFrame, attempts: pl.DataFrame) -> None:
        self.states.update(dict(contacts.group_by("state").len().iter_rows()))
        self.statuses.update(dict(attempts.group_by("status").len().iter_rows()))
        durations = attempts.select(call_duration_ms().alias("ms")).drop_nulls()
        if durations.height:
            row = durations.select(
                pl.len(),
                pl.col("ms").sum().alias("total"),
                pl.col("ms").min().alias("min"),
                pl.col("ms").max().alias("max"),
            ).row(0)
            self.durations["count"] += row[0]
            self.durations["total"] += row[1]
            self.durations["min"] = row[2] if self.durations["min"] is None else min(self.durations["min"], row[2])
            self.durations["max"] = row[3] if self.durations["max"] is None else max(self.durations["max"], row[3])
        self.cost_units += attempts["cost_units"].sum() or 0
        started = attempts.select("started_at").drop_nulls().filter(pl.col("started_at") <= self.snapshot_time)
        hours = started.filter(pl.col("started_at") >= self.last_hour - timedelta(hours=HOURS - 1))
        self.hourly.update(dict(hours.group_by(pl.col("started_at").dt.truncate("1h")).len().iter_rows()))
        days = started.filter(pl.col("started_at") >= self.last_day - timedelta(days=DAYS - 1))
        self.daily.update(dict(days.group_by(pl.col("started_at").dt.truncate("1d")).len().iter_rows()))

    def figures(self) -> dict:
        contacts = {"total": sum(self.states.values()), **{s: self.states.get(s, 0) for s in CONTACT_STATES}}
        contacts.update({s: n for s, n in sorted(self.states.items()) if s not in CONTACT_STATES})
        attempts = {"total": sum(self.statuses.values()), **{s: self.statuses.get(s, 0) for s in ATTEMPT_STATUSES}}
        attempts.update({s: n for s, n in sorted(self.statuses.items()) if s not in ATTEMPT_STATUSES})
        count = self.durations["count"]
        average = (
            (Decimal(self.durations["total"]) / count / 1000).quantize(Decimal("0.001"), ROUND_HALF_UP)
            if count
            else None
        )
        return {
            "snapshot_time": self.snapshot_time.isoformat(),
            "contacts": contacts,
            "attempts": attempts,
            "completion_rate": percentage(contacts["completed"], contacts["total"]),
            "conversion_rate": percentage(contacts["completed"], contacts["completed"] + contacts["refused"]),
            "call_duration_seconds": {
                "count": count,
                "average": float(average) if average is not None else None,
                "min": _seconds(self.durations["min"]),
                "max": _seconds(self.durations["max"]),
                "total": _seconds(self.durations["total"]) if count else 0.0,
            },
            "total_cost_usd": _money(self.cost_units),
            "attempts_per_hour": [
                {
                    "hour": (h := self.last_hour - timedelta(hours=HOURS - 1 - i)).strftime("%Y-%m-%dT%H:00:00Z"),
                    "attempts": self.hourly.get(h, 0),
                }
                for i in range(HOURS)
            ],
            "attempts_per_day": [
                {
                    "day": (d := self.last_day - timedelta(days=DAYS - 1 - i)).strftime("%Y-%m-%d"),
                    "attempts": self.daily.get(d, 0),
                }
                for i in range(DAYS)
            ],
        }
