"""The export multi_asset: one read of a campaign's snapshot materializes its files together."""
import time

import dagster as dg

from exports_pipeline.core.errors import ExportError, SourceUnavailableError
from exports_pipeline.core.export import PublishedExport, StagedExport, publish_export, stage_export
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

# Transient source failures (connection lost, timeouts) are retried with backoff; bad input and
# schema errors are raised as dg.Failure(allow_retries=False) and fail at once.
SOURCE_RETRY_POLICY = dg.RetryPolicy(max_retries=3, delay=3, backoff=dg.Backoff.EXPONENTIAL)


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


def _markdown_preview(staged: StagedExport) -> str:
    def cell(value) -> str:
        text = "" if value is None else str(value)
        return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", "\\r").replace("\n", "\\n")

    frame = staged.preview
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.iter_rows()]
    return "\n".join(lines)


def _stats_metadata(staged: StagedExport, published: PublishedExport, destination) -> dict:
    """Numbers Dagster plots across materializations, and the figures file."""
    stats = staged.stats
    durations = stats["call_duration_seconds"]
    return {
        "contacts": stats["contacts"]["total"],
        "completed": stats["contacts"]["completed"],
        "completion_rate": stats["completion_rate"],
        "conversion_rate": stats["conversion_rate"],
        "call_attempts": stats["attempts"]["total"],
        "average_call_seconds": durations["average"] if durations["average"] is not None else 0.0,
        "total_cost_usd": float(stats["total_cost_usd"]),
        "snapshot": published.snapshot,
        "location": dg.MetadataValue.path(destination.location(published.file_keys["json"])),
        "figures": dg.MetadataValue.json(stats),
    }


def _file_metadata(staged: StagedExport, published: PublishedExport, destination, fmt: str) -> dict:
    record = next(f for f in published.manifest["files"] if f["format"] == fmt)
    rows = record["rows"] if record["rows"] is not None else staged.rows
    return {
        "rows": rows,
        "dagster/row_count": rows,
        "bytes": record["bytes"],
        "sha256": record["sha256"],
        "location": dg.MetadataValue.path(destination.location(published.file_keys[fmt])),
        "snapshot": published.snapshot,
        "manifest": dg.MetadataValue.path(destination.location(published.manifest_key)),
        "latest_moved": published.latest_moved,
        "anomalies": dg.MetadataValue.json(staged.anomalies),
        "preview": dg.MetadataValue.md(_markdown_preview(staged)),
    }


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
    retry_policy=SOURCE_RETRY_POLICY,
)
def campaign_export(context: dg.AssetExecutionContext, config: ExportRunConfig, source: SourceDatabase,
                    destination: ExportDestination):
    """Export one campaign partition from one source snapshot and publish it as an immutable snapshot."""
    campaign_id = context.partition_key
    try:
        options = config.to_options()
        target = destination.open()
        with stage_export(source.url, campaign_id, options, context.run.run_id,
                          statement_timeout_ms=source.statement_timeout_ms,
                          progress=ProgressLog(context.log, campaign_id)) as staged:
            # Check results come first: a failed blocking check is recorded, then publication refuses.
            yield from check_results(staged.checks)
            published = publish_export(staged, target)
    except SourceUnavailableError as exc:
        # Transient: the retry policy tries again. Named here, as the run's failure once retries run out.
        raise SourceUnavailableError(f"export of campaign {campaign_id} failed: {exc}") from None
    except ExportError as exc:
        raise dg.Failure(description=f"export of campaign {campaign_id} failed: {exc}", allow_retries=False) \
            from None
    context.log.info(f"campaign {campaign_id}: {staged.rows} rows published as snapshot {published.snapshot}"
                     + ("" if published.latest_moved else " (latest.json not moved)"))
    for fmt in options.formats:
        yield dg.MaterializeResult(asset_key=FORMAT_KEYS[fmt],
                                   metadata=_file_metadata(staged, published, target, fmt)
                                   | destination.link_metadata(target, published, fmt))
    yield dg.MaterializeResult(asset_key=STATS_KEY, metadata=_stats_metadata(staged, published, target))
