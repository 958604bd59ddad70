"""The export job: what the CLI, sensors, schedules and backfills launch per campaign partition."""
import dagster as dg

from exports_pipeline.defs.assets import campaign_export

export_campaign_job = dg.define_asset_job(
    "export_campaign",
    selection=dg.AssetSelection.assets(campaign_export),
    description="Export one campaign partition to a new snapshot (CSV, Parquet, stats, manifest, latest.json).",
)
