"""The export multi_asset: one read of a campaign's snapshot materializes its files together."""

import time
from collections.abc import Iterator
from collections.abc import Set as AbstractSet
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
from exports_pipeline.core.options import DEFAULT_FORMATS, ExportOptions
from exports_pipeline.core.reading import CampaignRead, campaigns_in_read_order
from exports_pipeline.defs.checks import CSV_KEY, check_evaluations, check_specs
from exports_pipeline.defs.config import ExportRunConfig
from exports_pipeline.defs.partitions import campaigns_partitions
from exports_pipeline.defs.resources import ExportDestination, SourceDatabase
from exports_pipeline.run_tags import missing_export_tags

PARQUET_KEY = dg.AssetKey("campaign_results_parquet")
STATS_KEY = dg.AssetKey("campaign_stats")
FORMAT_KEYS = {
    "csv": CSV_KEY,
    "parquet": PARQUET_KEY,
    "jsonl": dg.AssetKey("campaign_results_jsonl"),
    "xlsx": dg.AssetKey("campaign_results_xlsx"),
    "csv.gz": dg.AssetKey("campaign_results_csv_gz"),
    "pdf": dg.AssetKey("campaign_summary_pdf"),
}
FORMAT_DESCRIPTIONS = {
    "csv": "The campaign's results as CSV for spreadsheets (one row per contact).",
    "parquet": "The campaign's results as Parquet with native types.",
    "jsonl": "The campaign's results as JSON Lines (native values, exact money strings).",
    "xlsx": "The campaign's results as an Excel workbook (text stays text, real dates).",
    "csv.gz": "The campaign's results as gzip-compressed CSV.",
    "pdf": "A one-page PDF summary: headline figures and attempts per day.",
}
# The default export (SPEC section 4): what the export job, the sensors and the schedule materialize.
DEFAULT_EXPORT_KEYS = [*(FORMAT_KEYS[fmt] for fmt in DEFAULT_FORMATS), STATS_KEY]
SOURCE_POOL = "source_database"
# A run's creation and start (a process that imports Dagster and the project) are paid once per run: runs of
# 500 instead of 100 took Dagster's CPU per campaign in the run from 40 to 26 ms (docs/performance.md, "Run size").
CAMPAIGNS_PER_RUN = 500

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
    records = [
        dg.TableRecord({name: None if value is None else str(value) for name, value in row.items()})
        for row in frame.iter_rows(named=True)
    ]
    return dg.MetadataValue.table(records, schema)


def _campaign_metadata(staged: StagedExport) -> dict:
    campaign = staged.campaign
    return {
        "campaign_name": campaign.name,
        "campaign_status": campaign.status,
        "campaign_owner": campaign.owner_email or "",
    }


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


def _materializations(
    publication: Publication, target: Destination, destination: ExportDestination, selected: AbstractSet[dg.AssetKey]
) -> dict:
    """Metadata of each selected asset, built before publication, so that nothing can fail once latest.json
    has moved."""
    metadata = {
        FORMAT_KEYS[fmt]: _file_metadata(publication, target, fmt) | destination.link_metadata(target, publication, fmt)
        for fmt in publication.staged.options.formats
    }
    if STATS_KEY in selected:
        metadata[STATS_KEY] = _stats_metadata(publication, target)
    return metadata


def selected_formats(selected: AbstractSet[dg.AssetKey]) -> tuple[str, ...]:
    """The files a run writes: those of the selected assets (campaign_stats.json goes into every snapshot)."""
    return tuple(fmt for fmt, key in FORMAT_KEYS.items() if key in selected)


def _export_campaign(
    context: dg.AssetExecutionContext,
    campaign_id: str,
    options: ExportOptions,
    source: SourceDatabase,
    target: Destination,
    destination: ExportDestination,
    shared_read: CampaignRead | None,
    alone: bool,
) -> Iterator:
    """One campaign to a published snapshot, from the run's shared source snapshot (shared_read) or its own:
    its check evaluations, then (once published) a materialization of each selected asset for its partition.
    Log lines are events that Dagster stores one by one: a campaign of a run of many logs none of its own
    when it exports (its materializations and checks say it all), only when it fails or streams.
    alone: the run's only campaign."""
    progress = ProgressLog(context.log, campaign_id) if alone or shared_read is None else None
    with stage_export(
        source.url,
        campaign_id,
        options,
        context.run.run_id,
        statement_timeout_ms=source.statement_timeout_ms,
        progress=progress,
        shared_read=shared_read,
    ) as staged:
        if alone:
            _tag_run(context, options.formats, staged.campaign.name)
        # Check results come first: a failed blocking check is recorded, then publication refuses.
        yield from check_evaluations(staged.checks, campaign_id, context.selected_asset_check_keys)
        publication = prepare_publication(staged)
        materializations = _materializations(publication, target, destination, context.selected_asset_keys)
        moved = publish(publication, target)
    if alone:
        context.log.info(
            f"campaign {campaign_id}: {staged.rows} rows published as snapshot {publication.snapshot}"
            + ("" if moved else " (latest.json not moved)")
        )
    for key, metadata in materializations.items():
        yield dg.AssetMaterialization(asset_key=key, partition=campaign_id, metadata=metadata | {"latest_moved": moved})


def _tag_run(context: dg.AssetExecutionContext, formats: tuple[str, ...], name: str | None = None) -> None:
    """Add the export tags the run lacks (runs that Dagster creates have none of ours)."""
    missing = missing_export_tags(context.run, formats, name)
    if missing:
        context.instance.add_run_tags(context.run.run_id, missing)


def _lineage(context: dg.AssetExecutionContext) -> list[str]:
    """This run's id and those of the runs it re-executes (a retry of a run, a re-execution from failure)."""
    run_ids, parent = [context.run.run_id], context.run.parent_run_id
    while parent:
        run_ids.append(parent)
        parent_run = context.instance.get_run_by_id(parent)
        parent = parent_run.parent_run_id if parent_run else None
    return run_ids


def _published_by(context: dg.AssetExecutionContext, run_ids: list[str], campaign_ids: list[str]) -> set[str]:
    """The campaigns of these that one of these runs materialized (any selected asset stands for all)."""
    root = context.instance.get_run_record_by_id(run_ids[-1])
    records_filter = dg.AssetRecordsFilter(
        asset_key=sorted(context.selected_asset_keys)[0],
        asset_partitions=campaign_ids,
        after_timestamp=root.create_timestamp.timestamp() if root else None,
    )
    published, cursor = set(), None
    while True:
        page = context.instance.fetch_materializations(records_filter, limit=1000, cursor=cursor)
        published |= {r.partition_key for r in page.records if r.run_id in run_ids}
        if not page.has_more:
            return published
        cursor = page.cursor


def _campaigns_to_export(context: dg.AssetExecutionContext, target: Destination) -> list[str]:
    """The run's campaigns, less those published by an earlier attempt of the run or by the run it
    re-executes; what such an attempt left of the others (its own clean-up failed too) is removed."""
    campaign_ids = context.partition_keys
    if not (context.retry_number or context.run.parent_run_id):
        return campaign_ids
    run_ids = _lineage(context)
    published = _published_by(context, run_ids, campaign_ids)
    remaining = [cid for cid in campaign_ids if cid not in published]
    for campaign_id in remaining:
        for run_id in run_ids:
            remove_earlier_attempts(target, campaign_id, run_id)
    if published:
        context.log.info(f"{len(published)} of {len(campaign_ids)} campaigns were published before: not again")
    return remaining


def _raise_for(context: dg.AssetExecutionContext, failures: dict[str, Exception]) -> NoReturn:
    """Fail the step naming each failed campaign and its cause: a retry when one of the causes is transient
    (the retry exports only what did not publish), else a failure without retries."""
    described = "\n".join(f"export of campaign {cid} failed: {exc}" for cid, exc in failures.items())
    if len(failures) > 1:
        described = f"{len(failures)} of {len(context.partition_keys)} campaigns failed:\n{described}"
    transient = next((exc for exc in failures.values() if isinstance(exc, TRANSIENT_ERRORS)), None)
    if transient is not None:
        wait = RETRY_DELAY_SECONDS * 2**context.retry_number
        raise dg.RetryRequested(max_retries=TRANSIENT_RETRIES, seconds_to_wait=wait) from type(transient)(described)
    raise dg.Failure(
        description=described,
        allow_retries=False,
        metadata={"failed_campaigns": dg.MetadataValue.json({c: str(e) for c, e in failures.items()})},
    )


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            key,
            description=FORMAT_DESCRIPTIONS[fmt],
            partitions_def=campaigns_partitions,
            skippable=True,
            group_name="campaign_exports",
            kinds={fmt.split(".")[0]},
        )
        for fmt, key in FORMAT_KEYS.items()
    ]
    + [
        dg.AssetSpec(
            STATS_KEY,
            description="Dashboard figures of the whole campaign (SPEC section 6).",
            partitions_def=campaigns_partitions,
            skippable=True,
            group_name="campaign_exports",
            kinds={"json"},
        ),
    ],
    check_specs=check_specs,
    partitions_def=campaigns_partitions,
    can_subset=True,
    # A backfill's runs each export up to CAMPAIGNS_PER_RUN campaigns of a stretch of partitions, so that
    # the cost of starting a run (a process that imports Dagster and the project) is paid once per batch.
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=CAMPAIGNS_PER_RUN),
    pool=SOURCE_POOL,
)
def campaign_export(
    context: dg.AssetExecutionContext, config: ExportRunConfig, source: SourceDatabase, destination: ExportDestination
):
    """Export each campaign partition of the run, one after the other, each to its own immutable snapshot:
    small campaigns from a source snapshot shared a chunk at a time (core/reading.py), large ones each from its
    own. A campaign that fails fails alone: the others publish, then the step fails naming each failed campaign."""
    formats = selected_formats(context.selected_asset_keys)
    _tag_run(context, formats)
    try:
        options = config.to_options(formats)
        target = destination.open()
    except ExportError as exc:
        _raise_for(context, dict.fromkeys(context.partition_keys, exc))
    failures: dict[str, Exception] = {}
    # Each reading of context.partition_keys lists every dynamic partition from the instance: never per campaign.
    alone = len(context.partition_keys) == 1
    campaign_ids = _campaigns_to_export(context, target)
    for campaign_id, shared_read in campaigns_in_read_order(
        source.url, campaign_ids, options, source.statement_timeout_ms
    ):
        try:
            if isinstance(shared_read, ExportError):
                raise shared_read  # the shared read stopped on an error a retry can mend
            yield from _export_campaign(context, campaign_id, options, source, target, destination, shared_read, alone)
        except ExportError as exc:
            failures[campaign_id] = exc
        except Exception as exc:  # a bug met by one campaign fails it alone, with its traceback in the log
            context.log.exception(f"campaign {campaign_id}: unexpected error")
            failures[campaign_id] = exc
    if not alone:
        context.log.info(f"{len(campaign_ids) - len(failures)} of {len(campaign_ids)} campaigns published")
    if failures:
        _raise_for(context, failures)
