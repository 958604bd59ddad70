"""The code location: every Dagster definition of the project, assembled in one place, and the one place
settings arrive from the environment (definitions_from_env; the command line builds its own resources)."""

from __future__ import annotations

import os
from collections.abc import Mapping

import dagster as dg

from exports_pipeline.defs.assets import campaign_export
from exports_pipeline.defs.delivery import mail_sensors
from exports_pipeline.defs.jobs import export_campaign_job
from exports_pipeline.defs.resources import resources_from_env
from exports_pipeline.defs.retention import export_retention_schedule
from exports_pipeline.defs.run_history import run_history_retention_schedule
from exports_pipeline.defs.schedules import nightly_changed_campaigns
from exports_pipeline.defs.sensors import DEFAULT_SENSOR_INTERVAL_SECONDS, campaign_sensors, sensor_interval_from_env


def project_definitions(
    resources: Mapping[str, dg.ConfigurableResource], sensor_interval_seconds: int = DEFAULT_SENSOR_INTERVAL_SECONDS
) -> dg.Definitions:
    """Every definition, with these resources (source, destination, mail) and the sensors' interval."""
    return dg.Definitions(
        assets=[campaign_export],
        jobs=[export_campaign_job],
        # Schedules bring their jobs (export_retention, run_history_retention).
        schedules=[export_retention_schedule, run_history_retention_schedule, nightly_changed_campaigns],
        sensors=[*campaign_sensors(sensor_interval_seconds), *mail_sensors(sensor_interval_seconds)],
        resources=dict(resources),
        # Every job here is a single step: a step subprocess per run (the multiprocess default) would only add
        # a Python start-up and a second import of the project to each of thousands of runs.
        executor=dg.in_process_executor,
    )


def definitions_from_env(environ: Mapping[str, str]) -> dg.Definitions:
    """The definitions with every setting from these variables (docs/operations.md lists them)."""
    return project_definitions(resources_from_env(environ), sensor_interval_from_env(environ))


defs = definitions_from_env(os.environ)
