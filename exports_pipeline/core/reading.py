"""What an export reads of a campaign, and small campaigns read together from one source snapshot.

A campaign read on its own opens a snapshot session and up to three reading sessions, each importing the
snapshot: tens of milliseconds before the first row, whatever the campaign's size. A run of many
campaigns instead opens one snapshot, reads each campaign's description and counts there, and the rows of
its small campaigns (at most SMALL_CAMPAIGN_MAX_CONTACTS contacts) a chunk at a time: one query per table
for the whole chunk, the source's own per-campaign queries joined by UNION ALL, each row tagged with its
campaign. Each campaign then goes through the same route, transform and writers as when read alone, from
frames in memory instead of the disk spill, so its files are the same bytes. Large campaigns keep their
own snapshot and the bounded-memory streaming path.

Whatever the shared read cannot serve is left to a read of the campaign on its own, as before, where it
succeeds or fails with its own cause: a campaign not found, a NaN cost, a chunk whose read met bad data.
An error a retry can mend (a lost connection, a timeout: errors.TRANSIENT_ERRORS) is not read around: it is
the cause of failure of every campaign the shared read had not served yet, which the retry then exports.
A run of one campaign reads it on its own, as the command line always did.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, replace
from datetime import datetime

import polars as pl

from exports_pipeline.core.errors import TRANSIENT_ERRORS, CampaignNotFoundError, ExportError
from exports_pipeline.core.options import ExportOptions
from exports_pipeline.core.source import (
    ANSWERS_SCHEMA,
    ATTEMPTS_SCHEMA,
    CONTACTS_SCHEMA,
    CampaignInfo,
    SnapshotQuery,
    SourceReader,
    open_source,
)

# A campaign up to this many contacts is read with others of its run (never more than the run's batch_size:
# its rows are one bucket); a larger one streams through the disk spill from its own snapshot.
SMALL_CAMPAIGN_MAX_CONTACTS = 10_000
# A chunk of small campaigns read together holds at most this many contacts (with their attempts and
# answers) in memory, and at most this many campaigns (one subquery each in the UNION ALL).
CONTACTS_PER_CHUNK = 50_000
CAMPAIGNS_PER_CHUNK = 100
TABLE_SCHEMAS = {"contacts": CONTACTS_SCHEMA, "attempts": ATTEMPTS_SCHEMA, "answers": ANSWERS_SCHEMA}
_TAG = "export_campaign_id"


@dataclass(frozen=True)
class CampaignRead:
    """What an export knows of its campaign from the snapshot before any row: its description, questions and
    counts; with the rows themselves (TABLE_SCHEMAS) when the campaign was read together with others."""

    campaign: CampaignInfo
    questions: list[tuple[int, str]]
    all_contacts: int
    selected_contacts: int
    snapshot_time: datetime
    tables: dict[str, pl.DataFrame] | None = None

    @property
    def question_count(self) -> int:
        return max((p for p, _ in self.questions), default=0)


def read_campaign(source: SourceReader, campaign_id: str, options: ExportOptions) -> CampaignRead:
    """The campaign's description and counts in the source's snapshot (the contacts the options select
    are counted there too: the blocking row count check compares the rows written with them)."""
    campaign = source.campaign(campaign_id)
    if campaign is None:
        raise CampaignNotFoundError(f"campaign {campaign_id} is not in the source")
    questions = source.questions(campaign_id)
    all_contacts = source.count_contacts(campaign_id, ExportOptions())
    selected = all_contacts if options.is_default_selection else source.count_contacts(campaign_id, options)
    return CampaignRead(campaign, questions, all_contacts, selected, source.snapshot_time)


class MemorySpill:
    """The spill of a campaign that fits one bucket, kept in memory: what spill.spill_table routes into it is
    read back as it came (BucketSpill's interface, one bucket)."""

    count = 1

    def __init__(self):
        self._frames: dict[str, list[pl.DataFrame]] = {}

    def add(self, table: str, rows: pl.DataFrame, created_at: str, contact_id: str) -> None:
        if not rows.is_empty():
            self._frames.setdefault(table, []).append(rows)

    def close(self) -> None:
        pass

    def read(self, table: str, bucket: int, schema: dict) -> pl.DataFrame:
        frames = self._frames.get(table)
        return pl.concat(frames).cast(schema) if frames else pl.DataFrame(schema=schema)


def is_small(read: CampaignRead, options: ExportOptions) -> bool:
    return read.all_contacts <= min(SMALL_CAMPAIGN_MAX_CONTACTS, options.batch_size)


def _chunks(reads: dict[str, CampaignRead]) -> Iterator[list[str]]:
    """The campaigns in order, cut into chunks of at most CONTACTS_PER_CHUNK contacts and CAMPAIGNS_PER_CHUNK."""
    chunk: list[str] = []
    contacts = 0
    for campaign_id, read in reads.items():
        if chunk and (contacts + read.all_contacts > CONTACTS_PER_CHUNK or len(chunk) == CAMPAIGNS_PER_CHUNK):
            yield chunk
            chunk, contacts = [], 0
        chunk.append(campaign_id)
        contacts += read.all_contacts
    if chunk:
        yield chunk


def _query_together(queries: dict[str, SnapshotQuery]) -> SnapshotQuery:
    """One query for the rows of these campaigns: each campaign's own query, its rows tagged with its id.
    NaN costs are not rejected here, where they would fail every campaign of the chunk, but per campaign."""
    first = next(iter(queries.values()))
    sql = " UNION ALL ".join(
        f"(SELECT '{cid}'::text AS {_TAG}, q.* FROM ({query.sql}) q)" for cid, query in queries.items()
    )
    unreadable = " UNION ALL ".join(query.unreadable_instants_sql for query in queries.values())
    return replace(
        first,
        sql=sql,
        schema={_TAG: pl.String, **first.schema},
        unreadable_instants_sql=unreadable,
        rejects_nan_costs=False,
    )


def _tables_together(queries: dict[str, dict[str, SnapshotQuery]], contacts: int) -> dict[str, dict]:
    """Per table, the rows of these campaigns by campaign id, each table read in one query."""
    tables = {}
    for table in TABLE_SCHEMAS:
        together = _query_together({cid: q[table] for cid, q in queries.items()})
        frames = list(together.frames(max(1, contacts)))
        frame = pl.concat(frames) if frames else pl.DataFrame(schema=together.schema)
        tables[table] = {
            key[0]: part for key, part in frame.partition_by(_TAG, as_dict=True, include_key=False).items()
        }
    return tables


def _rows_of(tables: dict[str, dict], campaign_id: str) -> dict[str, pl.DataFrame] | None:
    """One campaign's rows in the readers' schemas, or None when one of its costs is NaN (its own read
    names the attempt)."""
    rows = {table: tables[table].get(campaign_id, pl.DataFrame(schema=TABLE_SCHEMAS[table])) for table in TABLE_SCHEMAS}
    attempts = rows["attempts"]
    if "nan_cost_id" in attempts.columns and attempts["nan_cost_id"].is_not_null().any():
        return None
    return {table: frame.select(list(TABLE_SCHEMAS[table])) for table, frame in rows.items()}


def _rows_alone(source: SourceReader, campaign_id: str) -> dict[str, pl.DataFrame] | None:
    """One campaign's rows read by the source's own readers in the open snapshot, or None when they fail."""
    streams = {"contacts": source.contact_frames, "attempts": source.attempt_frames, "answers": source.answer_frames}
    try:
        frames = {table: list(stream(campaign_id, CONTACTS_PER_CHUNK)) for table, stream in streams.items()}
    except TRANSIENT_ERRORS:
        raise
    except ExportError:
        return None
    return {
        table: pl.concat(parts) if parts else pl.DataFrame(schema=TABLE_SCHEMAS[table])
        for table, parts in frames.items()
    }


def _read_chunk(source: SourceReader, reads: dict[str, CampaignRead]) -> dict[str, CampaignRead]:
    """The chunk's campaigns with their rows: in one query per table where the source can share its snapshot
    with a query (PostgreSQL), else campaign by campaign in the open snapshot (SQLite). Those the shared read
    cannot serve are left out."""
    queries = {cid: source.snapshot_queries(cid, read.all_contacts) for cid, read in reads.items()}
    if all(queries.values()):
        try:
            tables = _tables_together(queries, sum(read.all_contacts for read in reads.values()))
        except TRANSIENT_ERRORS:
            raise
        except ExportError:
            return {}
        served = {cid: _rows_of(tables, cid) for cid in reads}
    else:
        served = {cid: _rows_alone(source, cid) for cid in reads}
    return {cid: replace(reads[cid], tables=rows) for cid, rows in served.items() if rows is not None}


def _reads(source: SourceReader, campaign_ids: list[str], options: ExportOptions) -> dict[str, CampaignRead]:
    """The small campaigns of these, described and counted in the shared snapshot."""
    reads = {}
    for campaign_id in campaign_ids:
        try:
            read = read_campaign(source, campaign_id, options)
        except CampaignNotFoundError:
            continue
        if is_small(read, options):
            reads[campaign_id] = read
    return reads


def _shared_reads(
    source_url: str, campaign_ids: list[str], options: ExportOptions, statement_timeout_ms: int
) -> Iterator[tuple[str, CampaignRead]]:
    with open_source(source_url, statement_timeout_ms) as source:
        reads = _reads(source, campaign_ids, options)
        for chunk in _chunks(reads):
            yield from _read_chunk(source, {cid: reads[cid] for cid in chunk}).items()


def campaigns_in_read_order(
    source_url: str, campaign_ids: list[str], options: ExportOptions, statement_timeout_ms: int = 600_000
) -> Iterator[tuple[str, CampaignRead | ExportError | None]]:
    """Each of these campaigns once: first those served by the shared snapshot with their read (small
    campaigns, chunk by chunk, while the snapshot is open), then, once it is closed, the others with None
    (each reads on its own), or with the transient error that stopped the shared read (their cause of failure).
    A shared snapshot that cannot be opened for another reason leaves every campaign to its own read."""
    served: set[str] = set()
    stopped: ExportError | None = None
    if len(campaign_ids) > 1:
        try:
            with closing(_shared_reads(source_url, campaign_ids, options, statement_timeout_ms)) as shared:
                for campaign_id, read in shared:
                    served.add(campaign_id)
                    yield campaign_id, read
        except TRANSIENT_ERRORS as exc:
            stopped = exc
        except ExportError:
            pass
    for campaign_id in campaign_ids:
        if campaign_id not in served:
            yield campaign_id, stopped
