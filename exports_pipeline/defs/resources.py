"""Source database and export destination, configured from the environment through dg.EnvVar."""
from __future__ import annotations

import os

import boto3
import dagster as dg
from dagster_aws.s3 import S3Resource
from pydantic import Field

from exports_pipeline.core.catalog import Catalog, open_catalog
from exports_pipeline.core.destinations import Destination, S3Destination, open_destination, s3_client
from exports_pipeline.core.export import Publication
from exports_pipeline.core.links import file_link, link_expiry_seconds, links_in_metadata


class SourceDatabase(dg.ConfigurableResource):
    """The operational database the exports read (never written)."""

    url: str = Field(description="postgresql://user:password@host:port/db or sqlite:///path (EXPORTS_SOURCE_URL)")
    statement_timeout_ms: int = Field(default=600_000, description="Statement timeout for every source query.")
    catalog_statement_timeout_ms: int = Field(
        default=30_000, description="Statement timeout of the sensors' catalog queries, which run inside "
                                    "Dagster's tick time limit (60 s by default).")

    def catalog(self, statement_timeout_ms: int | None = None) -> Catalog:
        """Paginated campaign listings and fingerprints for sensors and schedules (exports use open_source),
        by default with catalog_statement_timeout_ms."""
        return open_catalog(self.url, statement_timeout_ms or self.catalog_statement_timeout_ms)


class ExportDestination(S3Resource):
    """Where snapshots are published: s3://bucket/prefix or a local folder (EXPORTS_DESTINATION).

    For s3:// it is dagster-aws's S3Resource: region, profile, endpoint and credentials left unset
    come from the standard AWS chain (AWS_REGION, AWS_PROFILE, AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID...).
    Settings left unset here are read from the environment when the run starts, never at import.
    """

    url: str = Field(description="s3://bucket/prefix or a local folder path (EXPORTS_DESTINATION)")
    sse: str | None = Field(
        default=None, description="Server-side encryption of every object: AES256 or aws:kms. Unset: "
                                  "EXPORTS_S3_SSE, else none requested (the bucket's default applies).")
    kms_key_id: str | None = Field(
        default=None, description="KMS key id or ARN for sse=aws:kms. Unset: EXPORTS_S3_KMS_KEY_ID, else the "
                                  "account's aws/s3 key.")
    link_expiry_seconds: int | None = Field(
        default=None, description="Lifetime of presigned download links, 1 s to 7 days. Unset: "
                                  "EXPORTS_LINK_EXPIRY_SECONDS, else 3600.")
    link_in_metadata: bool | None = Field(
        default=None, description="Also put a presigned download URL in materialization metadata (anyone who can "
                                  "read the run history can then download the file until the link expires). "
                                  "Unset: EXPORTS_LINK_IN_METADATA=true, else only the s3:// location.")

    def get_client(self):
        """A client from S3Resource's settings, with the botocore Config of core.destinations.s3_client
        (retries, SigV4, S3-compatible endpoints): S3Resource.get_client accepts no botocore Config."""
        return s3_client(boto3.session.Session(profile_name=self.profile_name), endpoint_url=self.endpoint_url,
                         max_attempts=self.max_attempts, unsigned=self.use_unsigned_session,
                         region_name=self.region_name, use_ssl=self.use_ssl, verify=self.verify,
                         aws_access_key_id=self.aws_access_key_id, aws_secret_access_key=self.aws_secret_access_key,
                         aws_session_token=self.aws_session_token)

    def get_object_to_set_on_execution_context(self):
        """Assets take this resource itself (typed), not S3Resource's client: building a boto3 client costs
        about 0.3 s at every run's start, and a local destination needs none."""
        return self

    def open(self) -> Destination:
        if not self.url.startswith("s3://"):
            return open_destination(self.url)
        return open_destination(self.url, client=self.get_client(),
                                sse=self.sse or os.environ.get("EXPORTS_S3_SSE") or None,
                                kms_key_id=self.kms_key_id or os.environ.get("EXPORTS_S3_KMS_KEY_ID") or None)

    def link_metadata(self, target: Destination, published: Publication, fmt: str) -> dict:
        """A presigned download URL for materialization metadata, only when enabled and only for S3."""
        if not isinstance(target, S3Destination) or not links_in_metadata(self.link_in_metadata):
            return {}
        record = next(f for f in published.manifest["files"] if f["format"] == fmt)
        url = file_link(target, published.manifest["campaign_id"], published.snapshot, record,
                        link_expiry_seconds(self.link_expiry_seconds))
        return {"download_link": dg.MetadataValue.url(url)}


def default_resources() -> dict:
    return {
        "source": SourceDatabase(url=dg.EnvVar("EXPORTS_SOURCE_URL")),
        "destination": ExportDestination(url=dg.EnvVar("EXPORTS_DESTINATION")),
    }
