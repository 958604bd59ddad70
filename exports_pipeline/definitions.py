"""The code location: every Dagster definition of the project, assembled in one place."""
import dagster as dg

from exports_pipeline.defs.assets import campaign_export
from exports_pipeline.defs.delivery import MailDelivery, export_failed_mail_sensor, export_ready_mail_sensor
from exports_pipeline.defs.jobs import export_campaign_job
from exports_pipeline.defs.resources import default_resources
from exports_pipeline.defs.retention import export_retention_schedule
from exports_pipeline.defs.run_history import run_history_retention_schedule
from exports_pipeline.defs.schedules import nightly_changed_campaigns
from exports_pipeline.defs.sensors import campaign_completed_sensor, campaign_partitions_sensor

defs = dg.Definitions(
    assets=[campaign_export],
    jobs=[export_campaign_job],
    # Schedules bring their jobs (export_retention, run_history_retention).
    schedules=[export_retention_schedule, run_history_retention_schedule, nightly_changed_campaigns],
    sensors=[campaign_partitions_sensor, campaign_completed_sensor,
             export_ready_mail_sensor, export_failed_mail_sensor],
    resources=default_resources() | {"mail": MailDelivery()},
    # Every job here is a single step: a step subprocess per run (the multiprocess default) would only add
    # a Python start-up and a second import of Dagster and the project to each of thousands of runs.
    executor=dg.in_process_executor,
)
