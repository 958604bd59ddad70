"""Export run tags (campaign_id, trigger, formats) on every export run, whoever launched it.

Sensors, the schedule and the command line tag their runs themselves. Runs that Dagster creates
(launchpad, job and asset backfills) carry only Dagster's own tags (dagster/partition,
dagster/backfill...): Dagster 1.13 has no run-tag policy, a job's tags are not applied to asset
backfill runs, and partition tags from a PartitionedConfig would override a sensor's trigger. Every
submitted run goes through the instance's run coordinator, so ExportRunCoordinator (named by
dagster.yaml) adds the tags an export run lacks before queuing it. This module stays light: the
daemon and the webserver import it with the instance.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import dagster as dg

from exports_pipeline.core.options import DEFAULT_FORMATS

EXPORT_JOB = "export_campaign"
EXPORT_ASSETS = frozenset({dg.AssetKey("campaign_results_csv"), dg.AssetKey("campaign_results_parquet")})


def export_run_tags(campaign_id: str, trigger: str, formats: Sequence[str] = DEFAULT_FORMATS) -> dict[str, str]:
    """The tags every export run carries, so that run history is the export history (filter on them)."""
    return {"campaign_id": campaign_id, "trigger": trigger, "formats": ",".join(formats)}


def trigger_of(tags: Mapping[str, str]) -> str:
    """What launched a run, from the tags Dagster sets: a backfill, a schedule, a sensor, else a person."""
    if "dagster/backfill" in tags:
        return "backfill"
    if "dagster/schedule_name" in tags:
        return "schedule"
    return "sensor" if "dagster/sensor_name" in tags else "manual"


def missing_export_tags(run: dg.DagsterRun) -> dict[str, str]:
    """The export tags this run lacks; none for a run that does not export one campaign partition."""
    partition = run.tags.get("dagster/partition")
    if not partition or not (run.job_name == EXPORT_JOB or EXPORT_ASSETS & set(run.asset_selection or ())):
        return {}
    config = run.run_config.get("ops", {}).get("campaign_export", {}).get("config", {})
    tags = export_run_tags(partition, trigger_of(run.tags), config.get("formats", DEFAULT_FORMATS))
    return {k: v for k, v in tags.items() if k not in run.tags}


class ExportRunCoordinator(dg.QueuedRunCoordinator):
    """Dagster's run queue (same configuration), adding missing export tags to export runs it queues."""

    def submit_run(self, context: dg.SubmitRunContext) -> dg.DagsterRun:
        run = context.dagster_run
        missing = missing_export_tags(run)
        if missing:
            self._instance.add_run_tags(run.run_id, missing)
            context = context._replace(dagster_run=run.with_tags({**run.tags, **missing}))
        return super().submit_run(context)
