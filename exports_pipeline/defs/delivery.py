"""Mail delivery: the campaign owner and configured recipients get a download link after each campaign's
export; operators get the failed campaigns and the cause after each failed run.

Run status sensors rather than hooks or an extra op: they see every export run whoever launched it
(launchpad, asset page, backfill, schedule, sensor, command line), add nothing to the export's own
run (a slow or down mail server never fails or delays an export). A mail that cannot be sent is
the tick's error on the sensor's page and in the daemon's log, and is not retried: the sensor's
cursor moves past that run. Both sensors are on by default and send nothing while
EXPORTS_SMTP_HOST is unset. They return None rather than a SkipReason for runs they pass over:
a run status sensor stops its tick at the first run whose function returns something.
"""

from __future__ import annotations

import json

import dagster as dg

from exports_pipeline.core.destinations import Destination, S3Destination
from exports_pipeline.core.export import STATS_FILE
from exports_pipeline.core.links import file_link
from exports_pipeline.core.mail import ExportFigures, SmtpSettings, export_failed_message, export_ready_message, send
from exports_pipeline.core.publish import snapshot_folder
from exports_pipeline.core.source import open_source
from exports_pipeline.defs.assets import FORMAT_KEYS, STATS_KEY
from exports_pipeline.defs.partitions import campaigns_partitions
from exports_pipeline.defs.resources import ExportDestination, MailDelivery, SourceDatabase
from exports_pipeline.defs.sensors import DEFAULT_SENSOR_INTERVAL_SECONDS

RANGE_TAGS = ("dagster/asset_partition_range_start", "dagster/asset_partition_range_end")
# The file a mail links: the XLSX when the run wrote one (a CSV opened in Excel loses the "+" of phone
# numbers), else the CSV, else the first other file.
MAIL_FORMATS = ("xlsx", "csv", *(fmt for fmt in FORMAT_KEYS if fmt not in ("xlsx", "csv")))


def _published(instance: dg.DagsterInstance, run_id: str) -> dict[str, dict[dg.AssetKey, dict]]:
    """Metadata values of each asset the run materialized, by campaign (a run may export many)."""
    found: dict[str, dict[dg.AssetKey, dict]] = {}
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
        materialization = entry.asset_materialization
        found.setdefault(materialization.partition, {})[materialization.asset_key] = {
            k: v.value for k, v in materialization.metadata.items()
        }
    return found


def run_campaigns(instance: dg.DagsterInstance, run: dg.DagsterRun) -> list[str]:
    """The campaigns a run was to export: its partition, or its range of partitions."""
    if "dagster/partition" in run.tags:
        return [run.tags["dagster/partition"]]
    if not all(tag in run.tags for tag in RANGE_TAGS):
        return []
    keys = instance.get_dynamic_partitions(campaigns_partitions.name)
    start, end = (run.tags[tag] for tag in RANGE_TAGS)
    return keys[keys.index(start) : keys.index(end) + 1] if start in keys and end in keys else []


def _figures(campaign_id: str, files: dict, found: dict[dg.AssetKey, dict], target: Destination) -> ExportFigures:
    """The mail's figures: from campaign_stats' metadata, or its file (every snapshot has one) when the run
    did not select it."""
    if STATS_KEY in found:
        stats = found[STATS_KEY]["figures"]
    else:
        data, _ = target.read_versioned(f"{snapshot_folder(campaign_id, files['snapshot'])}/{STATS_FILE}")
        stats = json.loads(data)
    return ExportFigures(
        campaign_id=campaign_id,
        snapshot=files["snapshot"],
        rows=files["rows"],
        completion_rate=stats["completion_rate"],
        total_cost_usd=stats["total_cost_usd"],
        latest_moved=files["latest_moved"],
    )


def _mail_ready(
    context,
    mail: MailDelivery,
    smtp: SmtpSettings,
    source: SourceDatabase,
    target: Destination,
    campaign_id: str,
    found: dict[dg.AssetKey, dict],
) -> None:
    """One campaign's export-ready mail to its owner and EXPORTS_MAIL_TO."""
    fmt, files = next((fmt, found[FORMAT_KEYS[fmt]]) for fmt in MAIL_FORMATS if FORMAT_KEYS[fmt] in found)
    with open_source(source.url, source.catalog_statement_timeout_ms) as reader:
        info = reader.campaign(campaign_id)
    recipients = list(dict.fromkeys(([info.owner_email] if info and info.owner_email else []) + mail.recipient_list()))
    if not recipients:
        context.log.info(f"campaign {campaign_id}: no owner_email and EXPORTS_MAIL_TO is empty, no mail")
        return
    expiry = mail.link_seconds()
    record = {"name": files["location"].rsplit("/", 1)[-1], "format": fmt}
    link = file_link(target, campaign_id, files["snapshot"], record, expiry)  # a file path when local
    send(
        smtp,
        export_ready_message(
            smtp.sender,
            recipients,
            _figures(campaign_id, files, found, target),
            link,
            expiry if isinstance(target, S3Destination) else None,
            fmt,
        ),
    )
    context.log.info(f"campaign {campaign_id}: snapshot {files['snapshot']} mailed to {len(recipients)} recipient(s)")


def _mail_every_ready(context, mail: MailDelivery, source: SourceDatabase, destination: ExportDestination) -> None:
    smtp = mail.smtp()
    if smtp is None:
        return
    published = _published(context.instance, context.dagster_run.run_id)
    target = destination.open() if published else None
    for campaign_id, found in published.items():
        if any(FORMAT_KEYS[fmt] in found for fmt in MAIL_FORMATS):
            _mail_ready(context, mail, smtp, source, target, campaign_id, found)


def _failure_cause(context: dg.RunFailureSensorContext) -> str:
    """The steps' errors (the dg.Failure description names each failed campaign and its cause), else the
    run's message."""
    causes = [
        e.event_specific_data.error.message.strip()
        for e in context.get_step_failure_events()
        if e.event_specific_data and e.event_specific_data.error
    ]
    return "\n\n".join(causes) or context.failure_event.message or "unknown (see the run's logs)"


def _mail_failed(
    context: dg.RunFailureSensorContext, mail: MailDelivery, source: SourceDatabase, destination: ExportDestination
) -> None:
    """The export-ready mails of the run's published campaigns, then the operators' mail of the others."""
    smtp, operators, run = mail.smtp(), mail.operator_list(), context.dagster_run
    _mail_every_ready(context, mail, source, destination)
    published = _published(context.instance, run.run_id)
    failed = [cid for cid in run_campaigns(context.instance, run) if cid not in published]
    if smtp is None or not operators or not failed:
        return
    send(smtp, export_failed_message(smtp.sender, operators, failed, run.run_id, _failure_cause(context)))


def mail_sensors(interval_seconds: int = DEFAULT_SENSOR_INTERVAL_SECONDS) -> list[dg.SensorDefinition]:
    """The export-ready and export-failed mail sensors, checking for finished runs every interval_seconds."""

    @dg.run_status_sensor(
        run_status=dg.DagsterRunStatus.SUCCESS,
        name="export_ready_mail_sensor",
        minimum_interval_seconds=interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Mails each exported campaign's owner and EXPORTS_MAIL_TO a download link and the headline "
        "figures after each successful export run (off while EXPORTS_SMTP_HOST is unset).",
    )
    def export_ready_mail_sensor(
        context: dg.RunStatusSensorContext, mail: MailDelivery, source: SourceDatabase, destination: ExportDestination
    ):
        _mail_every_ready(context, mail, source, destination)

    @dg.run_failure_sensor(
        name="export_failed_mail_sensor",
        minimum_interval_seconds=interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Mails EXPORTS_MAIL_OPERATORS the failed campaigns and the cause when an export run fails, and "
        "the owners of the run's other campaigns their export-ready mail (off while EXPORTS_SMTP_HOST "
        "is unset).",
    )
    def export_failed_mail_sensor(
        context: dg.RunFailureSensorContext, mail: MailDelivery, source: SourceDatabase, destination: ExportDestination
    ):
        _mail_failed(context, mail, source, destination)

    return [export_ready_mail_sensor, export_failed_mail_sensor]
