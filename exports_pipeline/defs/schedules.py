"""Nightly schedule: export the campaigns whose source changed since their last export (SPEC section 5).

"Changed" is the SPEC's fingerprint: the one the source gives now (the catalog's set-based query, a
page of campaigns per statement) differs from the one in the manifest latest.json names
(publish.read_manifest), or there is no such manifest yet. Running campaigns are included;
unchanged campaigns get no run.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import dagster as dg

from exports_pipeline.core.catalog import Catalog
from exports_pipeline.core.destinations import Destination
from exports_pipeline.core.fingerprint import FINGERPRINT_INSTANTS
from exports_pipeline.core.instants import fingerprint_order
from exports_pipeline.core.publish import read_manifest
from exports_pipeline.defs.jobs import export_campaign_job
from exports_pipeline.defs.partitions import campaigns_partitions
from exports_pipeline.defs.resources import ExportDestination, SourceDatabase
from exports_pipeline.defs.run_requests import export_run_requests

FINGERPRINT_PAGE = 2_000  # campaigns per fingerprint query (consecutive ids: one index range per table)
MANIFEST_READERS = 16  # latest.json and manifest reads in flight (S3 round trips dominate the tick)
# Runs of up to CAMPAIGNS_PER_RUN campaigns make a night of tens of thousands affordable; past this, the least recently
# active wait for the next night, so that one tick never requests an unbounded number of runs.
MAX_CAMPAIGNS_PER_NIGHT = 100_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _last_activity(fingerprint: dict) -> datetime:
    return max((fingerprint_order(fingerprint[k]) for k in FINGERPRINT_INSTANTS if fingerprint.get(k)), default=EPOCH)


def changed_campaigns(catalog: Catalog, destination: Destination, campaign_ids: list[str]) -> list[str]:
    """The campaigns (of these) whose source fingerprint differs from their latest manifest's, most
    recently active first; campaigns no longer in the source are left out."""
    changed = []
    with ThreadPoolExecutor(MANIFEST_READERS) as pool:
        for start in range(0, len(campaign_ids), FINGERPRINT_PAGE):
            fingerprints = catalog.fingerprints(campaign_ids[start : start + FINGERPRINT_PAGE])
            manifests = pool.map(lambda cid: read_manifest(destination, cid), fingerprints)
            changed += [
                (_last_activity(fp), cid)
                for (cid, fp), manifest in zip(fingerprints.items(), manifests, strict=True)
                if manifest is None or manifest.get("source_fingerprint") != fp
            ]
    return [cid for _, cid in sorted(changed, reverse=True)]


@dg.schedule(
    job=export_campaign_job,
    cron_schedule="0 2 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Every night, exports the campaigns whose source fingerprint differs from their latest export's.",
)
def nightly_changed_campaigns(
    context: dg.ScheduleEvaluationContext, source: SourceDatabase, destination: ExportDestination
):
    """Considers the registered partitions (the sensor registers new campaigns within a tick). At most
    MAX_CAMPAIGNS_PER_NIGHT campaigns, most recently active first (running campaigns go before a backlog
    of never-exported old ones, which the following nights work through), in runs of consecutive
    partitions (run_requests.py)."""
    order = context.instance.get_dynamic_partitions(campaigns_partitions.name)
    # A page's fingerprint reads every row of its campaigns: the exports' statement timeout, not the sensors'.
    with source.catalog(source.statement_timeout_ms) as catalog:
        changed = changed_campaigns(catalog, destination.open(), sorted(order))
        tonight = changed[:MAX_CAMPAIGNS_PER_NIGHT]
        names = catalog.names(tonight)  # for the campaign_name tags of runs of one campaign
    if not changed:
        return dg.SkipReason(f"none of {len(order)} campaigns changed since its last export")
    if len(changed) > MAX_CAMPAIGNS_PER_NIGHT:
        context.log.warning(
            f"{len(changed)} campaigns changed; exporting the {MAX_CAMPAIGNS_PER_NIGHT} most "
            "recently active tonight, the others on the next nights"
        )
    night = context.scheduled_execution_time.strftime("%Y-%m-%d")
    return export_run_requests(tonight, order, "schedule", f"nightly:{night}", names)
