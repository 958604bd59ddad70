"""Run options shown in the Launchpad (SPEC section 3), turned into the core's ExportOptions."""

from __future__ import annotations

from datetime import datetime

import dagster as dg
from pydantic import Field

from exports_pipeline.core.errors import InvalidInputError
from exports_pipeline.core.options import (
    CONTACT_STATES,
    DEFAULT_BATCH_SIZE,
    ExportOptions,
)


def _instant(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInputError(
            f"option {name}: {value!r} is not an ISO 8601 time such as 2026-11-01T00:00:00Z"
        ) from None


class ExportRunConfig(dg.Config):
    """Options of one export run. With no state, time or column filter the export moves latest.json."""

    states: list[str] | None = Field(
        default=None,
        description=f"Only contacts in these states ({', '.join(CONTACT_STATES)}); 'terminal' stands for "
        "completed, refused, not_reached and excluded. Default: all contacts.",
    )
    updated_from: str | None = Field(
        default=None, description="Only contacts with updated_at at or after this ISO 8601 time (with offset or Z)."
    )
    updated_to: str | None = Field(
        default=None, description="Only contacts with updated_at before this ISO 8601 time (with offset or Z)."
    )
    columns: list[str] | None = Field(
        default=None, description="Only these export columns (kept in the standard order). Default: all."
    )
    bom: bool = Field(default=True, description="Start the CSV with a UTF-8 byte-order mark (Excel needs it).")
    formula_guard: bool = Field(
        default=True, description="Prefix text cells starting with = + - @ TAB CR LF with an apostrophe."
    )
    batch_size: int = Field(
        default=DEFAULT_BATCH_SIZE,
        description="Contacts read and written per batch; bounds memory, never changes output.",
    )

    def to_options(self, formats: tuple[str, ...]) -> ExportOptions:
        """formats: those of the selected assets (assets.selected_formats)."""
        return ExportOptions(
            states=tuple(self.states) if self.states is not None else None,
            updated_from=_instant(self.updated_from, "updated_from"),
            updated_to=_instant(self.updated_to, "updated_to"),
            columns=tuple(self.columns) if self.columns is not None else None,
            formats=formats,
            bom=self.bom,
            formula_guard=self.formula_guard,
            batch_size=self.batch_size,
        )
