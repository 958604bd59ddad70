"""Export run tags (campaign_id, campaign_name, trigger, formats) on every export run, whoever launched it.

Sensors, the schedule and the command line tag their runs themselves. Runs that Dagster creates
(launchpad, job and asset backfills) carry only Dagster's own tags (dagster/partition,
dagster/backfill...): Dagster 1.13 has no run-tag policy, a job's tags are not applied to asset
backfill runs, and partition tags from a PartitionedConfig would override a sensor's trigger. Every
submitted run goes through the instance's run coordinator, so ExportRunCoordinator (named by
dagster.yaml) adds the tags an export run lacks before queuing it, reading the campaign's name from
the source. This module stays light: the daemon and the webserver import it with the instance.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import dagster as dg

from exports_pipeline.core.errors import ExportError
from exports_pipeline.core.options import DEFAULT_FORMATS
from exports_pipeline.core.sourceurl import SOURCE_ENV
from exports_pipeline.core.text import shorten, single_line

EXPORT_JOB = "export_campaign"
EXPORT_ASSETS = frozenset({dg.AssetKey("campaign_results_csv"), dg.AssetKey("campaign_results_parquet")})
NAME_TAG = "campaign_name"
# Run tags accept any string, but Dagster means tags as short labels (its strict tags stop at 63
# characters) and indexes (key, value) in its run storage, where PostgreSQL refuses entries over 2.7 kB.
NAME_TAG_MAX_CHARS = 63
NAME_LOOKUP_TIMEOUT_MS = 5_000


def campaign_name_tag(name: str | None) -> dict[str, str]:
    """The name on one line, cut to NAME_TAG_MAX_CHARS with an ellipsis; no tag for an empty name."""
    value = shorten(single_line(name or ""), NAME_TAG_MAX_CHARS)
    return {NAME_TAG: value} if value else {}


def export_run_tags(campaign_id: str, trigger: str, formats: Sequence[str] = DEFAULT_FORMATS,
                    name: str | None = None) -> dict[str, str]:
    """The tags every export run carries, so that run history is the export history (filter on them)."""
    return {"campaign_id": campaign_id, **campaign_name_tag(name), "trigger": trigger, "formats": ",".join(formats)}


def trigger_of(tags: Mapping[str, str]) -> str:
    """What launched a run, from the tags Dagster sets: a backfill, a schedule, a sensor, else a person."""
    if "dagster/backfill" in tags:
        return "backfill"
    if "dagster/schedule_name" in tags:
        return "schedule"
    return "sensor" if "dagster/sensor_name" in tags else "manual"


def missing_export_tags(run: dg.DagsterRun, name_of: Callable[[str], str | None] = lambda cid: None) \
        -> dict[str, str]:
    """The export tags this run lacks; none for a run that does not export one campaign partition.
    name_of(campaign id) is asked only when the name tag is missing."""
    partition = run.tags.get("dagster/partition")
    if not partition or not (run.job_name == EXPORT_JOB or EXPORT_ASSETS & set(run.asset_selection or ())):
        return {}
    config = run.run_config.get("ops", {}).get("campaign_export", {}).get("config", {})
    name = name_of(partition) if NAME_TAG not in run.tags else None
    tags = export_run_tags(partition, trigger_of(run.tags), config.get("formats", DEFAULT_FORMATS), name)
    return {k: v for k, v in tags.items() if k not in run.tags}


class ExportRunCoordinator(dg.QueuedRunCoordinator):
    """Dagster's run queue (same configuration), adding missing export tags to export runs it queues.

    The campaign's name is read from EXPORTS_SOURCE_URL, taken when the instance builds the coordinator.
    A name is a label, so it never blocks a launch: without the variable, or when the source cannot
    answer, the run is queued without it (Dagster's `env:` setting would fail every launch instead)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._source_url = dg.EnvVar(SOURCE_ENV).get_value()

    def campaign_name(self, campaign_id: str) -> str | None:
        if not self._source_url:
            return None
        from exports_pipeline.core.catalog import open_catalog  # the source's drivers, only when a run needs them

        try:
            with open_catalog(self._source_url, NAME_LOOKUP_TIMEOUT_MS) as catalog:
                return catalog.names([campaign_id]).get(campaign_id)
        except ExportError as exc:
            dg.get_dagster_logger().warning(f"run of campaign {campaign_id} queued without its {NAME_TAG} tag: {exc}")
            return None

    def submit_run(self, context: dg.SubmitRunContext) -> dg.DagsterRun:
        run = context.dagster_run
        missing = missing_export_tags(run, self.campaign_name)
        if missing:
            self._instance.add_run_tags(run.run_id, missing)
            context = context._replace(dagster_run=run.with_tags({**run.tags, **missing}))
        return super().submit_run(context)
