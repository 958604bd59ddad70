"""The export job: what the CLI, sensors, schedules and backfills launch per campaign partition."""

import dagster as dg

from exports_pipeline.defs.assets import DEFAULT_EXPORT_KEYS
from exports_pipeline.run_tags import EXPORT_JOB

export_campaign_job = dg.define_asset_job(
    EXPORT_JOB,
    selection=dg.AssetSelection.assets(*DEFAULT_EXPORT_KEYS),
    description="The default export of campaign partitions: for each, a new snapshot (CSV, Parquet, stats, "
    "manifest) and latest.json. Other files: materialize their assets.",
)
