"""Retention of published snapshots (SPEC section 4): a job and its daily schedule.

The schedule is stopped by default: deleting exports is irreversible, so an operator turns it on
(in the UI, or default_status here) once retention_days suits them; a dry run lists what it would do.
Besides the destination, the op clears the staging folders that killed exports left in the temporary
folder of the host it runs on: the run workers' host with Dagster's default launcher (on ECS or
Kubernetes each run's temporary folder goes with its task or pod).
"""

from datetime import timedelta

import dagster as dg
from pydantic import Field

from exports_pipeline.core.errors import ExportError
from exports_pipeline.core.retention import REMOVAL_REASONS, apply_retention, apply_staging_retention
from exports_pipeline.defs.resources import ExportDestination

LISTED_REMOVALS = 200  # metadata lists at most this many folders; the log lists them all


class RetentionConfig(dg.Config):
    retention_days: int = Field(
        default=30,
        ge=1,
        description=(
            "Delete complete snapshots whose source snapshot was taken more than this many days ago "
            "(never the one latest.json names)."
        ),
    )
    dry_run: bool = Field(default=False, description="Only list what would be deleted; delete nothing.")
    leftover_grace_hours: int = Field(
        default=24,
        ge=1,
        description=(
            "Snapshot folders without manifest.json (empty ones too), .partial-* files and local staging folders of "
            "killed exports count as leftovers of failed runs once their newest object (or the empty folder) is this "
            "old; younger ones may belong to an export still running."
        ),
    )


@dg.op(
    description="Delete expired snapshots and leftovers of failed runs from the export destination, and "
    "staging folders of killed exports on this host."
)
def apply_export_retention(
    context: dg.OpExecutionContext, config: RetentionConfig, destination: ExportDestination
) -> dg.Output[int]:
    try:
        grace = timedelta(hours=config.leftover_grace_hours)
        removals = apply_retention(
            destination.open(), config.retention_days, dry_run=config.dry_run, leftover_grace=grace
        )
        removals += apply_staging_retention(dry_run=config.dry_run, leftover_grace=grace)
    except (ExportError, OSError) as exc:
        raise dg.Failure(description=f"retention failed: {exc}") from None
    verb = "would delete" if config.dry_run else "deleted"
    for removal in removals:
        context.log.info(f"{verb} {removal.path} ({removal.reason}, {len(removal.keys)} object(s))")
    counts = {reason: sum(r.reason == reason for r in removals) for reason in REMOVAL_REASONS}
    listing = "\n".join(f"- `{r.path}` ({r.reason})" for r in removals[:LISTED_REMOVALS]) or "nothing"
    return dg.Output(
        len(removals),
        metadata={
            "dry_run": config.dry_run,
            **counts,
            "objects": sum(len(r.keys) for r in removals),
            "removals": dg.MetadataValue.md(listing),
        },
    )


@dg.job(description="Apply the retention policy to the export destination (see the op's config).")
def export_retention():
    apply_export_retention()


export_retention_schedule = dg.ScheduleDefinition(
    name="export_retention_daily",
    job=export_retention,
    cron_schedule="30 3 * * *",
    execution_timezone="UTC",
    description="Daily retention of export snapshots, with the op's default config (30 days).",
    default_status=dg.DefaultScheduleStatus.STOPPED,
)
