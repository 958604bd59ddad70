"""The export's columns and run options (SPEC section 3), validated before any work starts."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from exports_pipeline.core.errors import InvalidInputError

BASE_COLUMNS: tuple[str, ...] = (
    "campaign_id",
    "campaign_name",
    "assistant_name",
    "contact_id",
    "external_contact_id",
    "name",
    "business_name",
    "phone_number",
    "outcome",
    "attempt_count",
    "last_attempt_at",
    "completed_at",
    "call_status",
    "call_started_at",
    "call_ended_at",
    "call_duration_seconds",
    "ended_reason",
    "call_cost_usd",
    "total_cost_usd",
    "recording_url",
    "transcript_summary",
)
ANSWER_COLUMN = re.compile(r"^q([1-9][0-9]*)_answer$")
CONTACT_STATES: tuple[str, ...] = ("pending", "in_progress", "completed", "refused", "not_reached", "excluded")
TERMINAL_STATES: tuple[str, ...] = ("completed", "refused", "not_reached", "excluded")
STATE_PRESETS = {"terminal": TERMINAL_STATES}
FORMATS: tuple[str, ...] = ("csv", "parquet", "jsonl", "xlsx", "csv.gz", "pdf")
DEFAULT_FORMATS: tuple[str, ...] = ("csv", "parquet")
DEFAULT_BATCH_SIZE = 50_000


def answer_columns(question_count: int) -> list[str]:
    return [f"q{k}_answer" for k in range(1, question_count + 1)]


def export_columns(question_count: int, selected: tuple[str, ...] | None = None) -> list[str]:
    """The header for a campaign with N questions, restricted to a selection (kept in spec order)."""
    every = list(BASE_COLUMNS) + answer_columns(question_count)
    if selected is None:
        return every
    unknown = [c for c in selected if c not in every]
    if unknown:
        raise InvalidInputError(
            f"option columns: unknown column(s) {', '.join(unknown)} for this campaign; allowed: {', '.join(every)}"
        )
    chosen = set(selected)
    return [c for c in every if c in chosen]


def _utc(value: datetime | None, name: str) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise InvalidInputError(f"option {name}: {value.isoformat()} has no time zone; give an offset or Z")
    return value.astimezone(UTC)


@dataclass(frozen=True)
class ExportOptions:
    """What one export run does. The defaults are the default export that moves latest.json."""

    states: tuple[str, ...] | None = None
    updated_from: datetime | None = None
    updated_to: datetime | None = None
    columns: tuple[str, ...] | None = None
    formats: tuple[str, ...] = DEFAULT_FORMATS
    bom: bool = True
    formula_guard: bool = True
    batch_size: int = DEFAULT_BATCH_SIZE

    def __post_init__(self):
        if self.states is not None:
            expanded: list[str] = []
            for state in self.states:
                expanded.extend(STATE_PRESETS.get(state, (state,)))
            bad = [s for s in expanded if s not in CONTACT_STATES]
            if bad or not expanded:
                raise InvalidInputError(
                    f"option states: {', '.join(bad) or 'empty list'} not allowed; allowed: "
                    f"{', '.join(CONTACT_STATES)} or the preset 'terminal' ({', '.join(TERMINAL_STATES)})"
                )
            object.__setattr__(self, "states", tuple(s for s in CONTACT_STATES if s in set(expanded)))
        object.__setattr__(self, "updated_from", _utc(self.updated_from, "updated_from"))
        object.__setattr__(self, "updated_to", _utc(self.updated_to, "updated_to"))
        if self.updated_from and self.updated_to and self.updated_from >= self.updated_to:
            raise InvalidInputError("option updated_from must be earlier than updated_to")
        if self.columns is not None:
            if not self.columns:
                raise InvalidInputError("option columns: an empty selection exports nothing; omit it for all")
            bad = [c for c in self.columns if c not in BASE_COLUMNS and not ANSWER_COLUMN.match(c)]
            if bad:
                raise InvalidInputError(
                    f"option columns: unknown column(s) {', '.join(bad)}; allowed: "
                    f"{', '.join(BASE_COLUMNS)}, q1_answer..qN_answer"
                )
            object.__setattr__(self, "columns", tuple(dict.fromkeys(self.columns)))
        bad_formats = [f for f in self.formats if f not in FORMATS]
        if bad_formats:
            raise InvalidInputError(
                f"option formats: {', '.join(bad_formats)} not allowed; allowed: {', '.join(FORMATS)}"
            )
        object.__setattr__(self, "formats", tuple(f for f in FORMATS if f in set(self.formats)))
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise InvalidInputError(f"option batch_size: {self.batch_size!r} must be a positive integer")

    @property
    def is_default_selection(self) -> bool:
        """True when no state, time or column filter applies."""
        return self.states is None and self.updated_from is None and self.updated_to is None and self.columns is None

    @property
    def moves_latest(self) -> bool:
        """Only a default export moves latest.json: no filter, and at least the default files (a snapshot
        of an XLSX alone would hide the campaign's latest CSV and Parquet)."""
        return self.is_default_selection and set(DEFAULT_FORMATS) <= set(self.formats)

    def describe(self) -> dict:
        """The options as recorded in the manifest (JSON-safe)."""
        return {
            "states": list(self.states) if self.states is not None else None,
            "updated_from": self.updated_from.isoformat() if self.updated_from else None,
            "updated_to": self.updated_to.isoformat() if self.updated_to else None,
            "columns": list(self.columns) if self.columns is not None else None,
            "formats": list(self.formats),
            "bom": self.bom,
            "formula_guard": self.formula_guard,
            "batch_size": self.batch_size,
        }
