"""One campaign export, end to end, in two steps that Dagster (or any caller) drives:

1. stage_export: read the campaign in one source snapshot (its own, streamed batch by batch through the
   disk spill; or one shared with other small campaigns of the run, in memory: reading.py), route its rows
   into export-order buckets, write them through the transform into local files, and run the blocking
   checks on what was written;
2. publish_export: only when every blocking check passed, upload files, manifest, then latest.json.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from exports_pipeline import __version__
from exports_pipeline.core.destinations import Destination
from exports_pipeline.core.errors import BlockingCheckError, InvalidInputError
from exports_pipeline.core.fingerprint import fingerprint_of
from exports_pipeline.core.ids import parse_campaign_id
from exports_pipeline.core.options import ExportOptions, export_columns
from exports_pipeline.core.publish import (
    SCHEMA_VERSION,
    StagedFile,
    campaign_prefix,
    is_run_snapshot,
    move_latest,
    read_latest,
    remove_snapshot,
    snapshot_folder,
    snapshot_manifest_key,
    snapshot_name,
    upload_snapshot,
)
from exports_pipeline.core.reading import CampaignRead, MemorySpill, read_campaign
from exports_pipeline.core.retention import STAGING_PREFIX
from exports_pipeline.core.source import (
    ANSWERS_SCHEMA,
    ATTEMPTS_SCHEMA,
    CONTACTS_SCHEMA,
    CampaignInfo,
    SourceReader,
    open_source,
)
from exports_pipeline.core.spill import (
    BucketSpill,
    StreamTally,
    bucket_boundaries,
    sample_fraction,
    spill_table,
    spill_table_in_process,
)
from exports_pipeline.core.stats import CampaignStats, percentage
from exports_pipeline.core.transform import ANOMALY_KINDS, bucket_anomalies, build_rows, select_contacts
from exports_pipeline.core.writers import (
    E164,
    XLSX_MAX_COLUMNS,
    XLSX_MAX_ROWS,
    CsvWriter,
    JsonLinesWriter,
    ParquetWriter,
    XlsxWriter,
    csv_frame,
)

PREVIEW_ROWS = 5
# The checks' names (SPEC section 6): the export computes them, the Dagster asset checks carry them.
ROW_COUNT_CHECK = "row_count_matches_source"
UNIQUE_IDS_CHECK = "contact_id_unique"
HEADER_CHECK = "header_matches_spec"
ANOMALIES_CHECK = "no_row_anomalies"
E164_CHECK = "phone_numbers_e164"
FILE_NAMES = {
    "csv": "campaign_results.csv",
    "parquet": "campaign_results.parquet",
    "jsonl": "campaign_results.jsonl",
    "xlsx": "campaign_results.xlsx",
    "csv.gz": "campaign_results.csv.gz",
    "pdf": "campaign_summary.pdf",
}
STATS_FILE = "campaign_stats.json"
ROW_FORMATS = ("csv", "parquet", "jsonl", "xlsx", "csv.gz")
# From this size on, each table is read in its own process. Below it, threads of this process are
# quicker and smaller (a process costs CPU time and memory to start). Above it, the readers' turns at
# the GIL (connectorx keeps it while it reads) let unread frames pile up in memory. The figures:
# docs/performance.md, "Figures behind the code's choices".
READER_PROCESSES_MIN_CONTACTS = 2_000_000


@dataclass(frozen=True)
class CheckOutcome:
    name: str
    passed: bool
    blocking: bool
    description: str
    metadata: dict = field(default_factory=dict)


@dataclass
class StagedExport:
    """A complete export in local staging, not yet published."""

    campaign_id: str
    campaign: CampaignInfo
    snapshot: str
    snapshot_time: datetime
    started_at: datetime
    options: ExportOptions
    columns: list[str]
    questions: list[tuple[int, str]]
    rows: int
    anomalies: dict[str, int]
    fingerprint: dict
    files: list[StagedFile]
    checks: list[CheckOutcome]
    preview: pl.DataFrame
    run_id: str
    stats: dict

    @property
    def failed_blocking_checks(self) -> list[CheckOutcome]:
        return [c for c in self.checks if c.blocking and not c.passed]


@dataclass(frozen=True)
class Publication:
    """Everything a publication writes, computed before it writes anything: what can fail fails here."""

    staged: StagedExport
    manifest_key: str
    manifest: dict
    file_keys: dict[str, str]  # format -> key

    @property
    def snapshot(self) -> str:
        return self.staged.snapshot


@dataclass(frozen=True)
class PublishedExport:
    snapshot: str
    manifest_key: str
    manifest: dict
    file_keys: dict[str, str]
    latest_moved: bool


def _empty_rows(question_count: int, campaign: CampaignInfo) -> pl.DataFrame:
    """A zero-row frame with every column build_rows produces (the header of an empty export)."""
    return build_rows(
        campaign,
        pl.DataFrame(schema=CONTACTS_SCHEMA),
        pl.DataFrame(schema=ATTEMPTS_SCHEMA),
        pl.DataFrame(schema=ANSWERS_SCHEMA),
        question_count,
    )


def _open_writers(folder: Path, options: ExportOptions, columns: list[str], questions: list[tuple[int, str]]):
    factories = {
        "csv": lambda path: CsvWriter(path, columns, options.bom, options.formula_guard),
        "csv.gz": lambda path: CsvWriter(path, columns, options.bom, options.formula_guard, compress=True),
        "parquet": lambda path: ParquetWriter(path, columns),
        "jsonl": lambda path: JsonLinesWriter(path, columns),
        "xlsx": lambda path: XlsxWriter(path, columns, questions),
    }
    return {fmt: factories[fmt](folder / FILE_NAMES[fmt]) for fmt in options.formats if fmt in ROW_FORMATS}


def _check_xlsx_limits(campaign_id: str, options: ExportOptions, rows: int, columns: list[str]) -> None:
    """A sheet's limits fail the export before any read: Excel would drop the rows or columns past them."""
    if "xlsx" not in options.formats:
        return
    if rows > XLSX_MAX_ROWS:
        raise InvalidInputError(
            f"option formats: xlsx holds at most {XLSX_MAX_ROWS:,} rows and campaign {campaign_id} selects "
            f"{rows:,} contacts; choose csv, csv.gz, parquet or jsonl, or filter the contacts"
        )
    if len(columns) > XLSX_MAX_COLUMNS:
        raise InvalidInputError(
            f"option formats: xlsx holds at most {XLSX_MAX_COLUMNS:,} columns and campaign {campaign_id} exports "
            f"{len(columns):,} (its questions reach position {columns[-1].removeprefix('q').removesuffix('_answer')});"
            " choose csv, csv.gz, parquet or jsonl, or select fewer columns"
        )


def _spill_campaign(
    source: SourceReader, campaign_id: str, contacts: int, spill: BucketSpill, batch_size: int, reader_processes: bool
) -> dict[str, StreamTally]:
    """Phase 1: the three tables streamed at once (PostgreSQL serves them in parallel) into the buckets,
    each read in its own process when asked and the source can share its snapshot."""
    queries = source.snapshot_queries(campaign_id, contacts) if reader_processes else None
    streams = {"contacts": source.contact_frames, "attempts": source.attempt_frames, "answers": source.answer_frames}
    with ThreadPoolExecutor(max_workers=len(streams), thread_name_prefix="export-read") as pool:
        if queries:
            futures = {
                table: pool.submit(spill_table_in_process, queries[table], batch_size, spill, table)
                for table in streams
            }
        else:
            futures = {
                table: pool.submit(spill_table, frames(campaign_id, batch_size), spill, table)
                for table, frames in streams.items()
            }
        tallies = {table: future.result() for table, future in futures.items()}
    spill.close()
    return tallies


@contextmanager
def stage_export(
    source_url: str,
    campaign_id: str,
    options: ExportOptions,
    run_id: str,
    *,
    statement_timeout_ms: int = 600_000,
    progress: Callable[[int, int], None] | None = None,
    reader_processes: bool | None = None,
    shared_read: CampaignRead | None = None,
) -> Iterator[StagedExport]:
    """Read the campaign in one snapshot and write its files to a temporary folder (removed on exit), in
    four steps: read, route, write, check.
    reader_processes: read the tables in child processes (None: from READER_PROCESSES_MIN_CONTACTS on).
    shared_read: the campaign already read, rows included, from a snapshot shared with other campaigns
    (reading.campaigns_in_read_order); None: read it here, from its own snapshot, streaming."""
    cid = parse_campaign_id(campaign_id)
    started_at = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix=STAGING_PREFIX) as staging:
        folder = Path(staging)
        if shared_read is None:
            with open_source(source_url, statement_timeout_ms) as source:
                read = _read(source, cid, options)
                spill, tallies = _route(source, cid, read, folder, options, reader_processes)
        else:
            read = _checked(shared_read, cid, options)
            spill, tallies = _route_in_memory(read)
        writers, written = _write(read, spill, folder, options, progress)
        snapshot = snapshot_name(read.snapshot_time, run_id)
        figures = {"campaign_id": cid, "snapshot": snapshot, **written.stats.figures()}
        files = _files(folder, writers, read, snapshot, figures, written.rows, options)
        anomalies = _anomalies(tallies, written, writers)
        yield StagedExport(
            campaign_id=cid,
            campaign=read.campaign,
            snapshot=snapshot,
            snapshot_time=read.snapshot_time,
            started_at=started_at,
            options=options,
            columns=_columns(read, options),
            questions=read.questions,
            rows=written.rows,
            anomalies=dict(anomalies),
            fingerprint=_fingerprint(read, tallies),
            files=files,
            checks=_checks(files, _columns(read, options), written, read.selected_contacts, anomalies),
            preview=written.preview,
            run_id=run_id,
            stats=figures,
        )


def _columns(read: CampaignRead, options: ExportOptions) -> list[str]:
    return export_columns(read.question_count, options.columns)


def _checked(read: CampaignRead, campaign_id: str, options: ExportOptions) -> CampaignRead:
    """The read, once the options can export it (a sheet's limits)."""
    _check_xlsx_limits(campaign_id, options, read.selected_contacts, _columns(read, options))
    return read


def _read(source: SourceReader, campaign_id: str, options: ExportOptions) -> CampaignRead:
    """Step 1: the campaign's description and counts in its snapshot."""
    return _checked(read_campaign(source, campaign_id, options), campaign_id, options)


def _route(
    source: SourceReader,
    cid: str,
    read: CampaignRead,
    folder: Path,
    options: ExportOptions,
    reader_processes: bool | None,
) -> tuple[BucketSpill, dict[str, StreamTally]]:
    """Step 2, streaming: the three tables routed into export-order buckets on local disk."""
    contacts = read.all_contacts
    (folder / "buckets").mkdir()
    sample = source.contact_key_sample(cid, sample_fraction(contacts, options.batch_size))
    spill = BucketSpill(folder / "buckets", bucket_boundaries(sample, contacts, options.batch_size))
    if reader_processes is None:
        reader_processes = contacts >= READER_PROCESSES_MIN_CONTACTS
    return spill, _spill_campaign(source, cid, contacts, spill, options.batch_size, reader_processes)


def _route_in_memory(read: CampaignRead) -> tuple[MemorySpill, dict[str, StreamTally]]:
    """Step 2, for rows already in memory (one bucket): the same routing, without the disk."""
    spill = MemorySpill()
    tallies = {
        table: spill_table(iter([frame] if frame.height else []), spill, table) for table, frame in read.tables.items()
    }
    return spill, tallies


def _fingerprint(read: CampaignRead, tallies: dict[str, StreamTally]) -> dict:
    return fingerprint_of(
        read.campaign.updated_at,
        {name: (tally.rows, tally.latest) for name, tally in tallies.items()},
        len(read.questions),
    )


@dataclass
class _Written:
    """What step 3 wrote and counted on the way."""

    stats: CampaignStats
    anomalies: Counter
    rows: int = 0
    invalid_phones: int = 0
    id_hashes: list[pl.Series] = field(default_factory=list)
    preview: pl.DataFrame | None = None


def _write(
    read: CampaignRead,
    spill: BucketSpill | MemorySpill,
    folder: Path,
    options: ExportOptions,
    progress: Callable[[int, int], None] | None,
) -> tuple[dict, _Written]:
    """Step 3: bucket by bucket, in export order, through the transform into the writers. Each format has its
    own writer thread (polars and pyarrow release the GIL), and a batch is written while the next one is
    built: at most two batches are in memory, and every writer still receives the batches in order."""
    columns = _columns(read, options)
    writers = _open_writers(folder, options, columns, read.questions)
    written = _Written(CampaignStats(read.snapshot_time), Counter())
    with ThreadPoolExecutor(max_workers=max(1, len(writers)), thread_name_prefix="export-write") as pool:
        writing: list = []
        for bucket in range(spill.count):
            batch = _batch(read, spill, bucket, options, written)
            if batch is None:
                continue
            for done in writing:
                done.result()
            if progress and written.rows:
                progress(written.rows, read.selected_contacts)
            writing = [pool.submit(writer.write, batch) for writer in writers.values()]
            written.rows += batch.height
        for done in writing:
            done.result()
    if progress and written.rows:
        progress(written.rows, read.selected_contacts)
    # A writer needs the empty frame's header only when no batch came; it costs milliseconds to build.
    empty = _empty_rows(read.question_count, read.campaign) if written.preview is None else None
    for writer in writers.values():
        writer.close(empty)
    if written.preview is None:
        written.preview = csv_frame(empty, columns, options.formula_guard, timestamps_as_text=True)
    return writers, written


def _batch(
    read: CampaignRead, spill: BucketSpill | MemorySpill, bucket: int, options: ExportOptions, written: _Written
) -> pl.DataFrame | None:
    """One bucket's export rows (None when the options select none of its contacts); the figures, anomalies,
    id hashes and preview take it into account."""
    contacts = spill.read("contacts", bucket, CONTACTS_SCHEMA).sort("created_at", "id")
    attempts = spill.read("attempts", bucket, ATTEMPTS_SCHEMA)
    answers = spill.read("answers", bucket, ANSWERS_SCHEMA)
    written.stats.add(contacts, attempts)  # the figures always cover the whole campaign
    written.anomalies.update(bucket_anomalies(contacts, attempts, answers, read.question_count))
    selected = select_contacts(contacts, options)
    if selected.is_empty():
        return None
    batch = build_rows(read.campaign, selected, attempts, answers, read.question_count)
    written.id_hashes.append(batch["contact_id"].hash(seed=0))
    written.invalid_phones += int((~selected["phone_number"].str.contains(E164)).sum())
    if written.preview is None:
        written.preview = csv_frame(
            batch.head(PREVIEW_ROWS), _columns(read, options), options.formula_guard, timestamps_as_text=True
        )
    return batch


def _anomalies(tallies: dict[str, StreamTally], written: _Written, writers: dict) -> Counter:
    anomalies: Counter = Counter(dict.fromkeys(ANOMALY_KINDS, 0))
    anomalies.update(
        {"attempts_other_campaign": tallies["attempts"].misfiled, "answers_other_campaign": tallies["answers"].misfiled}
    )
    anomalies.update(written.anomalies)
    if "xlsx" in writers:
        anomalies["xlsx_cells_cut"] += writers["xlsx"].cut_cells
    return anomalies


def _files(
    folder: Path, writers: dict, read: CampaignRead, snapshot: str, figures: dict, rows: int, options: ExportOptions
) -> list[StagedFile]:
    """The staged files: the writers', the PDF summary when asked, and the figures."""
    files = [StagedFile(FILE_NAMES[fmt], fmt, w.path, w.rows) for fmt, w in writers.items()]
    if "pdf" in options.formats:
        from exports_pipeline.core.summary_pdf import write_summary_pdf  # reportlab: loaded for PDFs only

        write_summary_pdf(
            folder / FILE_NAMES["pdf"], figures["campaign_id"], read.campaign.name, snapshot, rows, figures
        )
        files.append(StagedFile(FILE_NAMES["pdf"], "pdf", folder / FILE_NAMES["pdf"], None))
    (folder / STATS_FILE).write_text(json.dumps(figures, indent=2))
    files.append(StagedFile(STATS_FILE, "json", folder / STATS_FILE, None))
    return files


def _checks(
    files: list[StagedFile], columns: list[str], written: _Written, expected_rows: int, anomalies: Counter
) -> list[CheckOutcome]:
    """Step 4: the blocking checks on what was written, then the reported ones."""
    return [
        *_blocking_checks(files, columns, written.rows, expected_rows, written.id_hashes),
        CheckOutcome(
            ANOMALIES_CHECK,
            not any(anomalies.values()),
            False,
            "Rows the export set aside or could not read (counted, never fatal).",
            dict(anomalies),
        ),
        CheckOutcome(
            E164_CHECK,
            written.invalid_phones == 0,
            False,
            "Share of exported phone numbers that are not valid E.164.",
            {"not_e164": written.invalid_phones, "share_percent": percentage(written.invalid_phones, written.rows)},
        ),
    ]


def _written_header(files: list[StagedFile], columns: list[str]) -> list[str]:
    """The header as a reader sees it, read back from the written file."""
    for staged in files:
        if staged.format == "csv":
            with open(staged.path, "rb") as handle:
                line = handle.readline().decode("utf-8").removeprefix("\ufeff").rstrip("\n")
            return line.split(",")
    for staged in files:
        if staged.format == "parquet":
            return pq.read_schema(staged.path).names
    return columns  # no file with a header (jsonl, xlsx and pdf only): nothing to compare


def _blocking_checks(
    files: list[StagedFile], columns: list[str], rows: int, expected_rows: int, id_hashes: list[pl.Series]
) -> list[CheckOutcome]:
    all_hashes = pl.concat(id_hashes) if id_hashes else pl.Series([], dtype=pl.UInt64)
    distinct = all_hashes.n_unique()
    header = _written_header(files, columns)
    return [
        CheckOutcome(
            ROW_COUNT_CHECK,
            rows == expected_rows,
            True,
            "Rows written equal the contacts selected in the same snapshot.",
            {"rows_written": rows, "contacts_selected": expected_rows},
        ),
        CheckOutcome(
            UNIQUE_IDS_CHECK,
            distinct == all_hashes.len(),
            True,
            "Each contact appears once.",
            {"rows": all_hashes.len(), "distinct_contact_ids": distinct},
        ),
        CheckOutcome(
            HEADER_CHECK,
            header == columns,
            True,
            "Header is the SPEC section 3 column list for the options used.",
            {"expected": ",".join(columns), "written": ",".join(header)},
        ),
    ]


def build_manifest(staged: StagedExport, file_records: list[dict]) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "tool_version": __version__,
        "campaign_id": staged.campaign_id,
        "run_id": staged.run_id,
        "snapshot": staged.snapshot,
        "snapshot_time": staged.snapshot_time.isoformat(),
        "started_at": staged.started_at.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
        "options": staged.options.describe(),
        "source_fingerprint": staged.fingerprint,
        "questions": [{"position": p, "prompt": t} for p, t in staged.questions],
        "anomalies": staged.anomalies,
        "files": file_records,
    }


def prepare_publication(staged: StagedExport) -> Publication:
    """The manifest and keys of the snapshot, once every blocking check passed."""
    failed = staged.failed_blocking_checks
    if failed:
        raise BlockingCheckError(
            f"campaign {staged.campaign_id}: blocking check(s) failed, nothing published: "
            + "; ".join(f"{c.name} {c.metadata}" for c in failed)
        )
    manifest = build_manifest(staged, [f.describe() for f in staged.files])
    folder = snapshot_folder(staged.campaign_id, staged.snapshot)
    return Publication(
        staged,
        snapshot_manifest_key(staged.campaign_id, staged.snapshot),
        manifest,
        {f.format: f"{folder}/{f.name}" for f in staged.files},
    )


def publish(publication: Publication, destination: Destination) -> bool:
    """Upload the snapshot, then move latest.json for a default export (no filters); True if it moved.
    All or nothing: when any step fails, what was uploaded is removed again, unless latest.json
    already names the snapshot (the answer to a write that landed was lost)."""
    staged = publication.staged
    try:
        upload_snapshot(
            destination,
            staged.campaign_id,
            staged.snapshot,
            staged.files,
            publication.manifest["files"],
            publication.manifest,
        )
        return staged.options.moves_latest and move_latest(
            destination, staged.campaign_id, staged.snapshot, publication.manifest_key
        )
    except BaseException:
        with suppress(Exception):
            if (read_latest(destination, staged.campaign_id) or {}).get("snapshot") == staged.snapshot:
                return True
            remove_snapshot(destination, staged.campaign_id, staged.snapshot)
        raise


def remove_earlier_attempts(destination: Destination, campaign_id: str, run_id: str) -> None:
    """Before a retry publishes, remove what an earlier attempt of the same run left of this campaign (its own
    clean-up failed too), so that a run never publishes two snapshots; never the one latest.json names."""
    named = (read_latest(destination, campaign_id) or {}).get("snapshot")
    earlier = {
        o.key.split("/")[1]
        for o in destination.list(campaign_prefix(campaign_id) + "/")
        if o.key.count("/") >= 2 and is_run_snapshot(o.key.split("/")[1], run_id)
    }
    for snapshot in earlier - {named}:
        remove_snapshot(destination, campaign_id, snapshot)


def publish_export(staged: StagedExport, destination: Destination) -> PublishedExport:
    """prepare_publication and publish in one call, for callers that report nothing in between."""
    publication = prepare_publication(staged)
    moved = publish(publication, destination)
    return PublishedExport(
        publication.snapshot, publication.manifest_key, publication.manifest, publication.file_keys, moved
    )
