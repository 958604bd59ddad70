"""The resources, and the one place their settings come from: resources_from_env, which
definitions.py calls with the environment when the definitions load.

A field whose variable is set is a dg.EnvVar: Dagster reads the value when a run or tick starts and
stores, shows and logs only the variable's name, so a password never reaches the run history (a
literal value would: Dagster keeps every field's value in the job snapshot it stores with each run).
A field whose variable is unset keeps its default, which the Launchpad then shows.
"""

from __future__ import annotations

from collections.abc import Mapping

import boto3
import dagster as dg
from dagster_aws.s3 import S3Resource
from pydantic import Field

from exports_pipeline.core.catalog import Catalog, open_catalog
from exports_pipeline.core.destinations import (
    Destination,
    S3Destination,
    endpoint_variable,
    open_destination,
    s3_client,
)
from exports_pipeline.core.errors import ConfigurationError
from exports_pipeline.core.export import Publication
from exports_pipeline.core.links import DEFAULT_LINK_EXPIRY_SECONDS, LINK_EXPIRY_ENV, file_link, link_expiry_seconds
from exports_pipeline.core.mail import DEFAULT_SENDER, DEFAULT_SMTP_PORT, SmtpSettings
from exports_pipeline.core.sourceurl import DESTINATION_ENV, SOURCE_ENV

DEFAULT_MAIL_LINK_EXPIRY_SECONDS = 3 * 24 * 3600  # a mail is often read a day or two later
FLAG_WORDS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


class SourceDatabase(dg.ConfigurableResource):
    """The operational database the exports read (never written)."""

    url: str = Field(description="postgresql://user:password@host:port/db or sqlite:///path (EXPORTS_SOURCE_URL).")
    statement_timeout_ms: int = Field(default=600_000, description="Statement timeout for every source query.")
    catalog_statement_timeout_ms: int = Field(
        default=30_000,
        description="Statement timeout of the sensors' catalog queries, which run inside "
        "Dagster's tick time limit (60 s by default).",
    )

    def catalog(self, statement_timeout_ms: int | None = None) -> Catalog:
        """Paginated campaign listings and fingerprints for sensors and schedules (exports use open_source),
        by default with catalog_statement_timeout_ms."""
        return open_catalog(self.url, statement_timeout_ms or self.catalog_statement_timeout_ms)


class ExportDestination(S3Resource):
    """Where snapshots are published: s3://bucket/prefix or a local folder (EXPORTS_DESTINATION).

    For s3:// it is dagster-aws's S3Resource: region, profile and credentials left unset come from the
    standard AWS chain (AWS_REGION, AWS_PROFILE, AWS_ACCESS_KEY_ID..., an instance or task role).
    """

    url: str = Field(description="s3://bucket/prefix or a local folder path (EXPORTS_DESTINATION).")
    sse: str | None = Field(
        default=None,
        description="Server-side encryption of every object: AES256 or aws:kms (EXPORTS_S3_SSE). "
        "None: none requested, the bucket's default applies.",
    )
    kms_key_id: str | None = Field(
        default=None,
        description="KMS key id or ARN for sse=aws:kms (EXPORTS_S3_KMS_KEY_ID). None: the account's aws/s3 key.",
    )
    link_expiry_seconds: int = Field(
        default=DEFAULT_LINK_EXPIRY_SECONDS,
        description="Lifetime of presigned download links, 1 s to 7 days (EXPORTS_LINK_EXPIRY_SECONDS).",
    )
    link_in_metadata: bool = Field(
        default=False,
        description="Also put a presigned download URL in materialization metadata: anyone who can "
        "read the run history can then download the file until the link expires "
        "(EXPORTS_LINK_IN_METADATA). False: only the s3:// location.",
    )

    def get_client(self):
        """A client from S3Resource's settings, with the botocore Config of core.destinations.s3_client
        (retries, SigV4, S3-compatible endpoints): S3Resource.get_client accepts no botocore Config."""
        return s3_client(
            boto3.session.Session(profile_name=self.profile_name),
            endpoint_url=self.endpoint_url,
            max_attempts=self.max_attempts,
            unsigned=self.use_unsigned_session,
            region_name=self.region_name,
            use_ssl=self.use_ssl,
            verify=self.verify,
            aws_access_key_id=self.aws_access_key_id,
            aws_secret_access_key=self.aws_secret_access_key,
            aws_session_token=self.aws_session_token,
        )

    def get_object_to_set_on_execution_context(self):
        """Assets take this resource itself (typed), not S3Resource's client: building a boto3 client costs
        about 0.3 s at every run's start, and a local destination needs none."""
        return self

    def open(self) -> Destination:
        if not self.url.startswith("s3://"):
            return open_destination(self.url)
        return open_destination(
            self.url, client=self.get_client(), sse=self.sse or None, kms_key_id=self.kms_key_id or None
        )

    def link_metadata(self, target: Destination, published: Publication, fmt: str) -> dict:
        """A presigned download URL for materialization metadata, only when enabled and only for S3."""
        if not isinstance(target, S3Destination) or not self.link_in_metadata:
            return {}
        record = next(f for f in published.manifest["files"] if f["format"] == fmt)
        url = file_link(
            target,
            published.manifest["campaign_id"],
            published.snapshot,
            record,
            link_expiry_seconds(self.link_expiry_seconds),
        )
        return {"download_link": dg.MetadataValue.url(url)}


class MailDelivery(dg.ConfigurableResource):
    """SMTP settings and recipients of the delivery mails (delivery.py); with no host, delivery is off."""

    host: str | None = Field(default=None, description="SMTP server (EXPORTS_SMTP_HOST). None: no mail is sent.")
    port: int = Field(default=DEFAULT_SMTP_PORT, description="SMTP port (EXPORTS_SMTP_PORT).")
    starttls: bool = Field(
        default=True,
        description="Upgrade with STARTTLS, the certificate verified, before logging in (EXPORTS_SMTP_STARTTLS).",
    )
    username: str | None = Field(default=None, description="SMTP login (EXPORTS_SMTP_USERNAME). None: no login.")
    password: str | None = Field(
        default=None,
        description="SMTP password (EXPORTS_SMTP_PASSWORD); set it through the variable, never as a literal value.",
    )
    sender: str = Field(default=DEFAULT_SENDER, description="From address (EXPORTS_MAIL_FROM).")
    recipients: str = Field(
        default="",
        description="Comma-separated addresses mailed after every successful "
        "export besides the campaign's owner_email (EXPORTS_MAIL_TO).",
    )
    operators: str = Field(
        default="", description="Comma-separated addresses mailed when an export fails (EXPORTS_MAIL_OPERATORS)."
    )
    link_expiry_seconds: int = Field(
        default=DEFAULT_MAIL_LINK_EXPIRY_SECONDS,
        description="Lifetime of the presigned link in mails, 1 s to 7 days (EXPORTS_MAIL_LINK_EXPIRY_SECONDS).",
    )

    def smtp(self) -> SmtpSettings | None:
        """None while no host is set. Values are stripped: a secret mounted from a file often ends in a newline."""
        if not _text(self.host):
            return None
        return SmtpSettings(
            host=_text(self.host),
            port=self.port,
            starttls=self.starttls,
            username=_text(self.username),
            password=_text(self.password),
            sender=_text(self.sender) or DEFAULT_SENDER,
        )

    def recipient_list(self) -> list[str]:
        return _addresses(self.recipients)

    def operator_list(self) -> list[str]:
        return _addresses(self.operators)

    def link_seconds(self) -> int:
        """Refused (the tick fails and says why) outside 1 s to 7 days, the longest a SigV4 link lasts."""
        return link_expiry_seconds(self.link_expiry_seconds)


def _text(value: str | None) -> str | None:
    return (value or "").strip() or None


def _addresses(text: str) -> list[str]:
    return [a.strip() for a in text.split(",") if a.strip()]


# Each resource field set from the environment, and its variable (docs/operations.md lists them).
SOURCE_VARIABLES = {"url": SOURCE_ENV}
DESTINATION_VARIABLES = {
    "url": DESTINATION_ENV,
    "sse": "EXPORTS_S3_SSE",
    "kms_key_id": "EXPORTS_S3_KMS_KEY_ID",
    "link_expiry_seconds": LINK_EXPIRY_ENV,
    "link_in_metadata": "EXPORTS_LINK_IN_METADATA",
}
MAIL_VARIABLES = {
    "host": "EXPORTS_SMTP_HOST",
    "port": "EXPORTS_SMTP_PORT",
    "starttls": "EXPORTS_SMTP_STARTTLS",
    "username": "EXPORTS_SMTP_USERNAME",
    "password": "EXPORTS_SMTP_PASSWORD",
    "sender": "EXPORTS_MAIL_FROM",
    "recipients": "EXPORTS_MAIL_TO",
    "operators": "EXPORTS_MAIL_OPERATORS",
    "link_expiry_seconds": "EXPORTS_MAIL_LINK_EXPIRY_SECONDS",
}
REQUIRED_FIELDS = ("url",)  # always from their variable: a run fails naming it when it is unset


def flag(text: str, name: str) -> bool:
    """A yes/no setting; any other word is refused rather than guessed (a mistyped "no" must not mean yes)."""
    value = FLAG_WORDS.get(text.strip().lower())
    if value is None:
        raise ConfigurationError(f"{name}={text!r}: use true or false")
    return value


def _fields(resource: type[dg.ConfigurableResource], variables: dict[str, str], environ: Mapping[str, str]) -> dict:
    """The resource's fields whose variable is set (or that are required): dg.EnvVar (dg.EnvVar.int for
    numbers), or the value itself for a yes/no flag, which Dagster would parse differently ("no" as true)."""
    values = {}
    for field, name in variables.items():
        text = environ.get(name, "").strip()
        if not text and field not in REQUIRED_FIELDS:
            continue
        kind = resource.model_fields[field].annotation
        values[field] = flag(text, name) if kind is bool else dg.EnvVar.int(name) if kind is int else dg.EnvVar(name)
    return values


def resources_from_env(environ: Mapping[str, str]) -> dict[str, dg.ConfigurableResource]:
    """Every resource, each setting from its variable in environ; the S3-compatible endpoint from the
    AWS SDK's own variable (AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL)."""
    endpoint = endpoint_variable(environ)
    return {
        "source": SourceDatabase(**_fields(SourceDatabase, SOURCE_VARIABLES, environ)),
        "destination": ExportDestination(
            **_fields(ExportDestination, DESTINATION_VARIABLES, environ),
            **({"endpoint_url": dg.EnvVar(endpoint)} if endpoint else {}),
        ),
        "mail": MailDelivery(**_fields(MailDelivery, MAIL_VARIABLES, environ)),
    }
