"""Source database and export destination, configured from the environment through dg.EnvVar."""
from __future__ import annotations

import dagster as dg
from pydantic import Field

from exports_pipeline.core.destinations import Destination, open_destination


class SourceDatabase(dg.ConfigurableResource):
    """The operational database the exports read (never written)."""

    url: str = Field(description="postgresql://user:password@host:port/db or sqlite:///path (EXPORTS_SOURCE_URL)")
    statement_timeout_ms: int = Field(default=600_000, description="Statement timeout for every source query.")


class ExportDestination(dg.ConfigurableResource):
    """Where snapshots are published: s3://bucket/prefix or a local folder (EXPORTS_DESTINATION)."""

    url: str = Field(description="s3://bucket/prefix or a local folder path (EXPORTS_DESTINATION)")

    def open(self) -> Destination:
        return open_destination(self.url)


def default_resources() -> dict:
    return {
        "source": SourceDatabase(url=dg.EnvVar("EXPORTS_SOURCE_URL")),
        "destination": ExportDestination(url=dg.EnvVar("EXPORTS_DESTINATION")),
    }
