"""The code location: every Dagster definition of the project, assembled in one place."""
import dagster as dg

from exports_pipeline.defs.assets import campaign_export
from exports_pipeline.defs.jobs import export_campaign_job
from exports_pipeline.defs.resources import default_resources

defs = dg.Definitions(
    assets=[campaign_export],
    jobs=[export_campaign_job],
    resources=default_resources(),
)
