"""Publication checks (SPEC section 6), computed during the export: the blocking ones before anything is
published, the reported ones (warnings) on every materialization with their numbers."""
from __future__ import annotations

from collections.abc import Set as AbstractSet

import dagster as dg

from exports_pipeline.core.export import CheckOutcome

CSV_KEY = dg.AssetKey("campaign_results_csv")
BLOCKING_CHECKS = {
    "row_count_matches_source": "Rows written equal the contacts selected in the same source snapshot.",
    "contact_id_unique": "Each contact appears once in the export.",
    "header_matches_spec": "The header is the SPEC section 3 column list for the options used.",
}

REPORTED_CHECKS = {
    "no_row_anomalies": "Rows set aside or unreadable (other campaign, answers out of range, bad transcripts).",
    "phone_numbers_e164": "Share of exported phone numbers that are not valid E.164.",
}

check_specs = [dg.AssetCheckSpec(name, asset=CSV_KEY, description=text, blocking=True)
               for name, text in BLOCKING_CHECKS.items()] + [
    dg.AssetCheckSpec(name, asset=CSV_KEY, description=text) for name, text in REPORTED_CHECKS.items()]


def check_evaluations(outcomes: list[CheckOutcome], campaign_id: str,
                      selected: AbstractSet[dg.AssetCheckKey]) -> list[dg.AssetCheckEvaluation]:
    """The selected checks' results for the campaign's partition (a run may export many campaigns)."""
    return [dg.AssetCheckEvaluation(asset_key=CSV_KEY, check_name=o.name, passed=o.passed, partition=campaign_id,
                                    severity=dg.AssetCheckSeverity.ERROR if o.blocking else dg.AssetCheckSeverity.WARN,
                                    metadata={k: dg.MetadataValue.text(str(v)) for k, v in o.metadata.items()})
            for o in outcomes if dg.AssetCheckKey(CSV_KEY, o.name) in selected]
