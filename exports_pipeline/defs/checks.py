"""Publication checks (SPEC section 6), computed during the export: the blocking ones before anything is
published, the reported ones (warnings) on every materialization with their numbers."""

from __future__ import annotations

from collections.abc import Set as AbstractSet

import dagster as dg

from exports_pipeline.core.export import (
    ANOMALIES_CHECK,
    E164_CHECK,
    HEADER_CHECK,
    ROW_COUNT_CHECK,
    UNIQUE_IDS_CHECK,
    CheckOutcome,
)

CSV_KEY = dg.AssetKey("campaign_results_csv")
BLOCKING_CHECKS = {
    ROW_COUNT_CHECK: "Rows written equal the contacts selected in the same source snapshot.",
    UNIQUE_IDS_CHECK: "Each contact appears once in the export.",
    HEADER_CHECK: "The header is the SPEC section 3 column list for the options used.",
}

REPORTED_CHECKS = {
    ANOMALIES_CHECK: "Rows set aside or unreadable (other campaign, answers out of range, bad transcripts).",
    E164_CHECK: "Share of exported phone numbers that are not valid E.164.",
}

check_specs = [
    dg.AssetCheckSpec(name, asset=CSV_KEY, description=text, blocking=True) for name, text in BLOCKING_CHECKS.items()
] + [dg.AssetCheckSpec(name, asset=CSV_KEY, description=text) for name, text in REPORTED_CHECKS.items()]


ANOMALY_LABELS = {  # kind: (one, several)
    "attempts_other_campaign": (
        "call attempt of another campaign's contact",
        "call attempts of another campaign's contacts",
    ),
    "answers_other_campaign": ("answer of another campaign's contact", "answers of another campaign's contacts"),
    "answers_out_of_range": ("answer to no question", "answers to no question"),
    "transcript_not_object": ("transcript not a JSON object", "transcripts not a JSON object"),
    "transcript_text_not_string": ("transcript text not a string", "transcript texts not a string"),
    "transcript_invalid_json": ("transcript not valid JSON", "transcripts not valid JSON"),
    "rows_with_infinite_timestamps": ("row with an infinite timestamp", "rows with an infinite timestamp"),
    "xlsx_cells_cut": ("XLSX cell cut to Excel's limit", "XLSX cells cut to Excel's limit"),
}


def _counted(count: int, one: str, several: str) -> str:
    return f"{count:,} {one if count == 1 else several}"


def _phones_line(metadata: dict) -> str:
    line = _counted(int(metadata["not_e164"]), "phone number is", "phone numbers are") + " not E.164"
    return line + (f", {metadata['share_percent']}% of rows" if "share_percent" in metadata else "")


def _anomalies_line(counts: dict) -> str:
    """counts: anomalies by kind (SPEC section 6); a kind not labelled here is named as it is counted."""
    labels = {kind: ANOMALY_LABELS.get(kind, (kind.replace("_", " "),) * 2) for kind in counts}
    return "row anomalies: " + ", ".join(_counted(int(n), *labels[kind]) for kind, n in counts.items() if int(n))


def explain(outcome: CheckOutcome) -> str | None:
    """One line for a person, for a reported check that did not pass (the UI and the command line show it);
    None otherwise: a failed blocking check fails the export with its own message."""
    if outcome.passed or outcome.blocking:
        return None
    if outcome.name == E164_CHECK and "not_e164" in outcome.metadata:
        what = _phones_line(outcome.metadata)
    elif outcome.name == ANOMALIES_CHECK:
        what = _anomalies_line(outcome.metadata)
    else:
        what = f"{outcome.name}: {outcome.description}"
    return f"{what} (reported, not blocking)"


def check_evaluations(
    outcomes: list[CheckOutcome], campaign_id: str, selected: AbstractSet[dg.AssetCheckKey]
) -> list[dg.AssetCheckEvaluation]:
    """The selected checks' results for the campaign's partition (a run may export many campaigns)."""
    return [
        dg.AssetCheckEvaluation(
            asset_key=CSV_KEY,
            check_name=o.name,
            passed=o.passed,
            partition=campaign_id,
            severity=dg.AssetCheckSeverity.ERROR if o.blocking else dg.AssetCheckSeverity.WARN,
            metadata={k: dg.MetadataValue.text(str(v)) for k, v in o.metadata.items()},
            description=explain(o),
        )
        for o in outcomes
        if dg.AssetCheckKey(CSV_KEY, o.name) in selected
    ]
