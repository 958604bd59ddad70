"""The export multi_asset: one read of a campaign's snapshot materializes its files together."""
import time
from typing import NoReturn

import dagster as dg

from exports_pipeline.core.destinations import Destination
from exports_pipeline.core.errors import TRANSIENT_ERRORS, ExportError
from exports_pipeline.core.export import (
    Publication,
    StagedExport,
    prepare_publication,
    publish,
    remove_earlier_attempts,
    stage_export,
)
from exports_pipeline.defs.checks import CSV_KEY, check_results, check_specs
from exports_pipeline.defs.config import ExportRunConfig
from exports_pipeline.defs.partitions import campaigns_partitions
from exports_pipeline.defs.resources import ExportDestination, SourceDatabase

PARQUET_KEY = dg.AssetKey("campaign_results_parquet")
STATS_KEY = dg.AssetKey("campaign_stats")
FORMAT_KEYS = {"csv": CSV_KEY, "parquet": PARQUET_KEY, "jsonl": dg.AssetKey("campaign_results_jsonl"),
               "xlsx": dg.AssetKey("campaign_results_xlsx"), "csv.gz": dg.AssetKey("campaign_results_csv_gz"),
               "pdf": dg.AssetKey("campaign_summary_pdf")}
FORMAT_DESCRIPTIONS = {
    "csv": "The campaign's results as CSV for spreadsheets (one row per contact).",
    "parquet": "The campaign's results as Parquet with native types.",
    "jsonl": "The campaign's results as JSON Lines (native values, exact money strings).",
    "xlsx": "The campaign's results as an Excel workbook (text stays text, real dates).",
    "csv.gz": "The campaign's results as gzip-compressed CSV.",
    "pdf": "A one-page PDF summary: headline figures and attempts per day.",
}
SOURCE_POOL = "source_database"

# Only errors a retry can mend are retried (core.errors.TRANSIENT_ERRORS: a lost connection, a timeout,
# S3 5xx or throttling), with exponential backoff. Bad input, bad data and bugs fail at once with their cause.
TRANSIENT_RETRIES = 3
RETRY_DELAY_SECONDS = 3


class ProgressLog:
    """Logs rows done of the total (counted in the same snapshot) at most every few seconds."""

    def __init__(self, log, campaign_id: str, every_seconds: float = 5.0):
        self.log, self.campaign_id, self.every = log, campaign_id, every_seconds
        self.last = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last >= self.every or done == total:
            self.last = now
            share = f" ({done * 100 // total}%)" if total else ""
            self.log.info(f"campaign {self.campaign_id}: {done:,} of {total:,} rows written{share}")


def _preview_table(staged: StagedExport) -> dg.TableMetadataValue:
    """The first rows as the CSV shows them (guarded text, fixed-point money, timestamps as text)."""
    frame = staged.preview
    schema = dg.TableSchema(columns=[dg.TableColumn(name, "string") for name in frame.columns])
    records = [dg.TableRecord({name: None if value is None else str(value) for name, value in row.items()})
               for row in frame.iter_rows(named=True)]
    return dg.MetadataValue.table(records, schema)


def _campaign_metadata(staged: StagedExport) -> dict:
    campaign = staged.campaign
    return {"campaign_name": campaign.name, "campaign_status": campaign.status,
            "campaign_owner": campaign.owner_email or ""}


def _stats_metadata(publication: Publication, target: Destination) -> dict:
    """Numbers Dagster plots across materializations, and the figures file."""
    stats = publication.staged.stats
    durations = stats["call_duration_seconds"]
    return {
        "contacts": stats["contacts"]["total"],
        "completed": stats["contacts"]["completed"],
        "completion_rate": stats["completion_rate"],
        "conversion_rate": stats["conversion_rate"],
        "call_attempts": stats["attempts"]["total"],
        "average_call_seconds": durations["average"] if durations["average"] is not None else 0.0,
        "total_cost_usd": float(stats["total_cost_usd"]),
        "snapshot": publication.snapshot,
        "location": dg.MetadataValue.path(target.location(publication.file_keys["json"])),
        "figures": dg.MetadataValue.json(stats),
        **_campaign_metadata(publication.staged),
    }


def _file_metadata(publication: Publication, target: Destination, fmt: str) -> dict:
    staged = publication.staged
    record = next(f for f in publication.manifest["files"] if f["format"] == fmt)
    rows = record["rows"] if record["rows"] is not None else staged.rows
    return {
        "rows": rows,
        "dagster/row_count": rows,
        "bytes": record["bytes"],
        "sha256": record["sha256"],
        "location": dg.MetadataValue.path(target.location(publication.file_keys[fmt])),
        "snapshot": publication.snapshot,
        "manifest": dg.MetadataValue.path(target.location(publication.manifest_key)),
        "anomalies": dg.MetadataValue.json(staged.anomalies),
        "preview": _preview_table(staged),
        **_campaign_metadata(staged),
    }


def _materializations(publication: Publication, target: Destination, destination: ExportDestination) -> dict:
    """Metadata of each asset the export materializes, built before publication, so that nothing can fail
    once latest.json has moved."""
    metadata = {FORMAT_KEYS[fmt]: _file_metadata(publication, target, fmt)
                | destination.link_metadata(target, publication, fmt) for fmt in publication.staged.options.formats}
    return metadata | {STATS_KEY: _stats_metadata(publication, target)}


def _raise_for(context: dg.AssetExecutionContext, campaign_id: str, exc: ExportError) -> NoReturn:
    """A retry for a transient error, else a failure without retries; both name the campaign and the cause."""
    described = f"export of campaign {campaign_id} failed: {exc}"
    if isinstance(exc, TRANSIENT_ERRORS):
        wait = RETRY_DELAY_SECONDS * 2**context.retry_number
        raise dg.RetryRequested(max_retries=TRANSIENT_RETRIES, seconds_to_wait=wait) from type(exc)(described)
    raise dg.Failure(description=described, allow_retries=False) from None


@dg.multi_asset(
    specs=[
        dg.AssetSpec(key, description=FORMAT_DESCRIPTIONS[fmt], partitions_def=campaigns_partitions, skippable=True,
                     group_name="campaign_exports", kinds={fmt.split(".")[0]})
        for fmt, key in FORMAT_KEYS.items()
    ] + [
        dg.AssetSpec(STATS_KEY, description="Dashboard figures of the whole campaign (SPEC section 6).",
                     partitions_def=campaigns_partitions, group_name="campaign_exports", kinds={"json"}),
    ],
    check_specs=check_specs,
    partitions_def=campaigns_partitions,
    pool=SOURCE_POOL,
)
def campaign_export(context: dg.AssetExecutionContext, config: ExportRunConfig, source: SourceDatabase,
                    destination: ExportDestination):
    """Export one campaign partition from one source snapshot and publish it as an immutable snapshot."""
    campaign_id = context.partition_key
    try:
        options = config.to_options()
        target = destination.open()
        if context.retry_number:
            remove_earlier_attempts(target, campaign_id, context.run.run_id)
        with stage_export(source.url, campaign_id, options, context.run.run_id,
                          statement_timeout_ms=source.statement_timeout_ms,
                          progress=ProgressLog(context.log, campaign_id)) as staged:
            # Check results come first: a failed blocking check is recorded, then publication refuses.
            yield from check_results(staged.checks)
            publication = prepare_publication(staged)
            materializations = _materializations(publication, target, destination)
            moved = publish(publication, target)
    except ExportError as exc:
        _raise_for(context, campaign_id, exc)
    context.log.info(f"campaign {campaign_id}: {staged.rows} rows published as snapshot {publication.snapshot}"
                     + ("" if moved else " (latest.json not moved)"))
    for key, metadata in materializations.items():
        yield dg.MaterializeResult(asset_key=key, metadata=metadata | {"latest_moved": moved})
