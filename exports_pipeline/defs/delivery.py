"""Mail delivery: the campaign owner and configured recipients get a download link after each successful
export; operators get the campaign and the cause after each failed one.

Run status sensors rather than hooks or an extra op: they see every export run whoever launched it
(launchpad, asset page, backfill, schedule, sensor, command line), add nothing to the export's own
run (a slow or down mail server never fails or delays an export). A mail that cannot be sent is
the tick's error on the sensor's page and in the daemon's log, and is not retried: the sensor's
cursor moves past that run. Both sensors are on by default and send nothing while
EXPORTS_SMTP_HOST is unset. They return None rather than a SkipReason for runs they pass over:
a run status sensor stops its tick at the first run whose function returns something.
"""
from __future__ import annotations

import os

import dagster as dg
from pydantic import Field

from exports_pipeline.core.destinations import S3Destination
from exports_pipeline.core.links import file_link, link_expiry_seconds
from exports_pipeline.core.mail import (ExportFigures, SmtpSettings, export_failed_message, export_ready_message,
                                        send)
from exports_pipeline.core.source import open_source
from exports_pipeline.defs.assets import FORMAT_KEYS, STATS_KEY
from exports_pipeline.defs.resources import ExportDestination, SourceDatabase
from exports_pipeline.defs.sensors import sensor_interval_seconds

DEFAULT_MAIL_LINK_EXPIRY_SECONDS = 3 * 24 * 3600  # a mail is often read a day or two later


def _env(value, name: str, default=None):
    """The field's value, else the environment variable read now (at tick time, never at import), else default."""
    if value is not None:
        return value
    return os.environ.get(name, "").strip() or default


def _addresses(text: str | None) -> list[str]:
    return [a.strip() for a in (text or "").split(",") if a.strip()]


class MailDelivery(dg.ConfigurableResource):
    """SMTP settings and recipients. Every field left unset is read from the environment variable its
    description names, when a sensor ticks; with no host anywhere, delivery is off."""

    host: str | None = Field(default=None, description="SMTP server. Unset: EXPORTS_SMTP_HOST; unset there too, "
                                                       "no mail is sent.")
    port: int | None = Field(default=None, description="Unset: EXPORTS_SMTP_PORT, else 587.")
    starttls: bool | None = Field(default=None, description="Upgrade with STARTTLS before logging in. Unset: "
                                                            "EXPORTS_SMTP_STARTTLS (false/0/no turns it off), else on.")
    username: str | None = Field(default=None, description="Unset: EXPORTS_SMTP_USERNAME, else no login.")
    password: str | None = Field(default=None, description="Unset: EXPORTS_SMTP_PASSWORD.")
    sender: str | None = Field(default=None, description="From address. Unset: EXPORTS_MAIL_FROM, else "
                                                         "exports-pipeline@localhost.")
    recipients: str | None = Field(default=None, description="Comma-separated addresses mailed after every "
                                                             "successful export besides the campaign's owner_email. "
                                                             "Unset: EXPORTS_MAIL_TO.")
    operators: str | None = Field(default=None, description="Comma-separated addresses mailed when an export fails. "
                                                            "Unset: EXPORTS_MAIL_OPERATORS.")
    link_expiry_seconds: int | None = Field(default=None, description="Lifetime of the presigned link in mails, "
                                                                      "1 s to 7 days. Unset: "
                                                                      "EXPORTS_MAIL_LINK_EXPIRY_SECONDS, else 3 days.")

    def smtp(self) -> SmtpSettings | None:
        host = _env(self.host, "EXPORTS_SMTP_HOST")
        if host is None:
            return None
        starttls = _env(self.starttls, "EXPORTS_SMTP_STARTTLS", True)
        return SmtpSettings(host=host, port=int(_env(self.port, "EXPORTS_SMTP_PORT", 587)),
                            starttls=starttls if isinstance(starttls, bool) else starttls.lower() not in
                            ("false", "0", "no"),
                            username=_env(self.username, "EXPORTS_SMTP_USERNAME"),
                            password=_env(self.password, "EXPORTS_SMTP_PASSWORD"),
                            sender=_env(self.sender, "EXPORTS_MAIL_FROM", "exports-pipeline@localhost"))

    def recipient_list(self) -> list[str]:
        return _addresses(_env(self.recipients, "EXPORTS_MAIL_TO"))

    def operator_list(self) -> list[str]:
        return _addresses(_env(self.operators, "EXPORTS_MAIL_OPERATORS"))

    def link_seconds(self) -> int:
        """Refused (the tick fails and says why) outside 1 s to 7 days, the longest a SigV4 link lasts."""
        return link_expiry_seconds(int(_env(self.link_expiry_seconds, "EXPORTS_MAIL_LINK_EXPIRY_SECONDS",
                                            DEFAULT_MAIL_LINK_EXPIRY_SECONDS)))


def _materializations(instance: dg.DagsterInstance, run_id: str) -> dict[dg.AssetKey, dict]:
    """Metadata values of each asset the run materialized."""
    found = {}
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
        materialization = entry.asset_materialization
        found[materialization.asset_key] = {k: v.value for k, v in materialization.metadata.items()}
    return found


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    name="export_ready_mail_sensor",
    minimum_interval_seconds=sensor_interval_seconds(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Mails the campaign's owner and EXPORTS_MAIL_TO a download link and the headline figures after "
                "each successful export (off while EXPORTS_SMTP_HOST is unset).",
)
def export_ready_mail_sensor(context: dg.RunStatusSensorContext, mail: MailDelivery, source: SourceDatabase,
                             destination: ExportDestination):
    smtp, run = mail.smtp(), context.dagster_run
    campaign_id = run.tags.get("campaign_id")  # every export run has it (run_tags.ExportRunCoordinator)
    if smtp is None or campaign_id is None:
        return None
    found = _materializations(context.instance, run.run_id)
    stats = found[STATS_KEY]  # a successful export always materializes it
    # The CSV when the run wrote one (what owners open), else the first other format it wrote.
    fmt, files = next((fmt, found[key]) for fmt, key in FORMAT_KEYS.items() if key in found)
    with open_source(source.url, source.catalog_statement_timeout_ms) as reader:
        info = reader.campaign(campaign_id)
    recipients = list(dict.fromkeys(([info.owner_email] if info and info.owner_email else [])
                                    + mail.recipient_list()))
    if not recipients:
        context.log.info(f"campaign {campaign_id}: no owner_email and EXPORTS_MAIL_TO is empty, no mail")
        return None
    target, expiry = destination.open(), mail.link_seconds()
    record = {"name": files["location"].rsplit("/", 1)[-1], "format": fmt}
    link = file_link(target, campaign_id, files["snapshot"], record, expiry)  # a file path when local
    figures = ExportFigures(campaign_id=campaign_id, snapshot=files["snapshot"], rows=files["rows"],
                            completion_rate=stats["completion_rate"],
                            total_cost_usd=stats["figures"]["total_cost_usd"], latest_moved=files["latest_moved"])
    send(smtp, export_ready_message(smtp.sender, recipients, figures, link,
                                    expiry if isinstance(target, S3Destination) else None))
    context.log.info(f"campaign {campaign_id}: snapshot {files['snapshot']} mailed to {len(recipients)} recipient(s)")


def _failure_cause(context: dg.RunFailureSensorContext) -> str:
    """The steps' errors (the dg.Failure description names the campaign and the cause), else the run's message."""
    causes = [e.event_specific_data.error.message.strip() for e in context.get_step_failure_events()
              if e.event_specific_data and e.event_specific_data.error]
    return "\n\n".join(causes) or context.failure_event.message or "unknown (see the run's logs)"


@dg.run_failure_sensor(
    name="export_failed_mail_sensor",
    minimum_interval_seconds=sensor_interval_seconds(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Mails EXPORTS_MAIL_OPERATORS the campaign and the cause when an export run fails "
                "(off while EXPORTS_SMTP_HOST is unset).",
)
def export_failed_mail_sensor(context: dg.RunFailureSensorContext, mail: MailDelivery):
    smtp, operators = mail.smtp(), mail.operator_list()
    campaign_id = context.dagster_run.tags.get("campaign_id")
    if smtp is None or not operators or campaign_id is None:
        return None
    send(smtp, export_failed_message(smtp.sender, operators, campaign_id, context.dagster_run.run_id,
                                     _failure_cause(context)))
