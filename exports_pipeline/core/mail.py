"""Delivery mails: an export is ready (a download link and the headline figures), or an export failed.

Plain functions, no Dagster, so that message content is tested on its own. Subjects carry the
campaign id and the snapshot name only: subjects show in mail listings, notification previews and
relay logs, so no campaign name, owner or contact data goes there.
"""

from __future__ import annotations

import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import make_msgid

DEFAULT_SMTP_PORT = 587
DEFAULT_SENDER = "exports-pipeline@localhost"


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int = DEFAULT_SMTP_PORT
    starttls: bool = True
    username: str | None = None
    password: str | None = None
    sender: str = DEFAULT_SENDER
    timeout_seconds: float = 30.0


@dataclass(frozen=True)
class ExportFigures:
    """What the recipient needs to decide whether to open the file, from the run's materializations."""

    campaign_id: str
    snapshot: str
    rows: int
    completion_rate: float  # percent
    total_cost_usd: str  # exact decimal text, as in campaign_stats.json
    latest_moved: bool


def _duration(seconds: int) -> str:
    for unit, size in (("day", 86_400), ("hour", 3_600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds} seconds"


def _message(sender: str, recipients: list[str], subject: str, body: str) -> EmailMessage:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = sender, ", ".join(recipients), subject
    message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    message.set_content(body)
    return message


def export_ready_message(
    sender: str,
    recipients: list[str],
    figures: ExportFigures,
    link: str,
    link_expiry_seconds: int | None,
    file_format: str = "csv",
) -> EmailMessage:
    """The mail after a campaign's export. link_expiry_seconds is None for a local file path (no expiry)."""
    f = figures
    validity = (
        ""
        if link_expiry_seconds is None
        else f"\nThe link works for {_duration(link_expiry_seconds)}; ask for a fresh one with "
        f"`exports-pipeline link {f.campaign_id}`."
    )
    pointer = (
        "It is now the campaign's latest export."
        if f.latest_moved
        else "It was made with filters (or a newer snapshot exists): latest.json does not name it."
    )
    body = (
        f"The export of campaign {f.campaign_id} is ready.\n\n"
        f"Snapshot:         {f.snapshot}\n"
        f"Rows (contacts):  {f.rows:,}\n"
        f"Completion rate:  {f.completion_rate:.2f} %\n"
        f"Total cost (USD): {f.total_cost_usd}\n\n"
        f"{pointer}\n\nDownload the {file_format.upper()}:\n{link}\n{validity}\n"
    )
    return _message(sender, recipients, f"Export ready: campaign {f.campaign_id}, snapshot {f.snapshot}", body)


def export_failed_message(
    sender: str, recipients: list[str], campaign_ids: list[str], run_id: str, cause: str
) -> EmailMessage:
    """The mail to operators after a failed export run: which campaigns, which run, and why."""
    what = f"campaign {campaign_ids[0]}" if len(campaign_ids) == 1 else f"{len(campaign_ids)} campaigns"
    listed = "" if len(campaign_ids) == 1 else "Campaigns:\n" + "\n".join(campaign_ids) + "\n\n"
    body = (
        f"The export of {what} failed (Dagster run {run_id}).\n\n{listed}Cause:\n{cause}\n\n"
        "Nothing of a failed campaign is reachable from latest.json or a manifest (publication is "
        "all-or-nothing); the run's other campaigns were published.\n"
    )
    return _message(sender, recipients, f"Export failed: {what}", body)


def send(settings: SmtpSettings, message: EmailMessage) -> None:
    """Sends over SMTP, upgrading with STARTTLS (certificate verified) before any credential is sent."""
    with smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout_seconds) as smtp:
        if settings.starttls:
            smtp.starttls(context=ssl.create_default_context())
        if settings.username:
            smtp.login(settings.username, settings.password or "")
        smtp.send_message(message)
