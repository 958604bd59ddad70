"""Run history retention: a daily job that deletes old finished runs (dagster.yaml can only purge ticks).

Every export adds a run and its event log to the instance's database, thousands a night at scale,
and Dagster OSS never deletes them. Deleting a run deletes its events, materializations included, so
the run holding the latest materialization of a campaign partition is kept whatever its age: the
partition would otherwise show as never exported. The snapshots themselves are not touched.
"""

from datetime import UTC, datetime, timedelta

import dagster as dg
from pydantic import Field

from exports_pipeline.defs.assets import campaign_export

PAGE = 500
FINISHED = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]


class RunHistoryConfig(dg.Config):
    keep_days: int = Field(default=90, ge=0, description="Delete finished runs created more than this many days ago.")


def _holds_latest_export(instance: dg.DagsterInstance, run: dg.DagsterRun) -> bool:
    partition = run.tags.get("dagster/partition")
    return bool(partition) and any(
        (
            records := instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1
            ).records
        )
        and records[0].run_id == run.run_id
        for key in campaign_export.keys
    )


@dg.op(description="Delete finished runs older than keep_days, except each campaign's latest export run.")
def purge_run_history(context: dg.OpExecutionContext, config: RunHistoryConfig) -> dg.Output[int]:
    filters = dg.RunsFilter(statuses=FINISHED, created_before=datetime.now(UTC) - timedelta(days=config.keep_days))
    deleted = kept = 0
    cursor = None  # the last kept run: a deleted run cannot serve as a cursor
    while page := context.instance.get_run_records(filters=filters, limit=PAGE, cursor=cursor, ascending=True):
        for record in page:
            if _holds_latest_export(context.instance, record.dagster_run):
                kept, cursor = kept + 1, record.dagster_run.run_id
            else:
                context.instance.delete_run(record.dagster_run.run_id)
                deleted += 1
        if len(page) < PAGE:
            break
    context.log.info(f"deleted {deleted} runs older than {config.keep_days} days; kept {kept} latest exports")
    return dg.Output(deleted, metadata={"deleted": deleted, "kept_latest_exports": kept})


@dg.job(description="Delete old finished runs from the run history (see the op's config).")
def run_history_retention():
    purge_run_history()


run_history_retention_schedule = dg.ScheduleDefinition(
    name="run_history_retention_daily",
    job=run_history_retention,
    cron_schedule="0 4 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Daily deletion of finished runs older than 90 days (each campaign's latest export run is kept).",
)
