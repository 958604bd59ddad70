"""Reading one campaign from the source database in one consistent snapshot.

PostgreSQL: a psycopg session holds a REPEATABLE READ transaction and exports its snapshot; every
bulk read through connectorx imports it, so all reads see the same data while the campaign is being
written to. SQLite (the embedded demo): a read transaction held open keeps writers out meanwhile.
Every reader returns frames of one normalized shape (see the *_SCHEMA dicts), whatever the source.
"""

from __future__ import annotations

import re
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import NamedTuple
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import connectorx as cx
import polars as pl
import psycopg
from psycopg.types.datetime import TimestamptzBinaryLoader

from exports_pipeline.core.errors import (
    CampaignNotFoundError,
    ConfigurationError,
    SourceReadError,
    SourceSchemaError,
    SourceUnavailableError,
)
from exports_pipeline.core.fingerprint import STREAMS, Stream, fingerprint_of, postgres_fingerprints
from exports_pipeline.core.instants import INFINITY_US, NEG_INFINITY_US, UTC_US, holds_any
from exports_pipeline.core.options import ExportOptions
from exports_pipeline.core.sourceurl import POSTGRESQL, redact_text, redact_url, source_dialect, sqlite_path

APPLICATION_NAME = "exports-pipeline"

REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "campaigns": (
        "id",
        "name",
        "assistant_name",
        "owner_id",
        "owner_email",
        "status",
        "created_at",
        "updated_at",
        "completed_at",
    ),
    "survey_questions": ("campaign_id", "position", "prompt"),
    "contacts": (
        "id",
        "campaign_id",
        "external_contact_id",
        "name",
        "business_name",
        "phone_number",
        "state",
        "attempt_count",
        "last_attempt_at",
        "completed_at",
        "created_at",
        "updated_at",
    ),
    "call_attempts": (
        "id",
        "campaign_id",
        "contact_id",
        "attempt_number",
        "status",
        "started_at",
        "ended_at",
        "ended_reason",
        "cost_usd",
        "recording_url",
        "transcript",
    ),
    "survey_responses": ("campaign_id", "contact_id", "question_position", "answer", "answered_at"),
}

CONTACTS_SCHEMA = {
    "id": pl.String,
    "external_contact_id": pl.String,
    "name": pl.String,
    "business_name": pl.String,
    "phone_number": pl.String,
    "state": pl.String,
    "attempt_count": pl.Int64,
    "last_attempt_at": UTC_US,
    "completed_at": UTC_US,
    "created_at": UTC_US,
    "updated_at": UTC_US,
}
# Attempts and answers filed under the campaign, each with its contact's created_at: null when the
# contact is not one of the campaign's (such rows are counted, never exported).
ATTEMPTS_SCHEMA = {
    "contact_created_at": UTC_US,
    "id": pl.String,
    "contact_id": pl.String,
    "attempt_number": pl.Int64,
    "status": pl.String,
    "started_at": UTC_US,
    "ended_at": UTC_US,
    "ended_reason": pl.String,
    "cost_units": pl.Int64,
    "recording_url": pl.String,
    "transcript_kind": pl.String,
    "transcript_summary": pl.String,
}
ANSWERS_SCHEMA = {
    "contact_created_at": UTC_US,
    "contact_id": pl.String,
    "position": pl.Int64,
    "answer": pl.String,
    "answered_at": UTC_US,
}
TRANSCRIPT_KINDS = ("ok", "no_text", "not_object", "text_not_string", "invalid_json")


@dataclass(frozen=True)
class CampaignInfo:
    id: str
    name: str
    assistant_name: str | None
    status: str
    owner_email: str | None
    updated_at: datetime | int  # int: microseconds since 1970 where Python's datetime does not hold it


class EdgeInstantLoader(TimestamptzBinaryLoader):
    """timestamptz as a UTC datetime, or as microseconds since 1970 where Python's datetime does not
    hold it (infinity and -infinity as instants.INFINITY_US and NEG_INFINITY_US). For the few
    instants read through psycopg (fingerprints, the campaign row) in binary queries."""

    _PG_EPOCH_US = 946_684_800_000_000  # PostgreSQL counts microseconds from 2000-01-01
    _PG_INFINITY = 2**63 - 1

    def load(self, data) -> datetime | int:
        micros = int.from_bytes(data, "big", signed=True)
        if abs(micros) >= self._PG_INFINITY:
            return INFINITY_US if micros > 0 else NEG_INFINITY_US
        try:
            return super().load(data).astimezone(UTC)
        except psycopg.DataError:
            return micros + self._PG_EPOCH_US


def connect_reading(url: str, statement_timeout_ms: int) -> psycopg.Connection:
    """A read-only autocommit session, named, with a statement timeout and EdgeInstantLoader; a lost host
    fails the connection after connect_timeout instead of hanging a sensor tick or an export."""
    conn = psycopg.connect(
        url,
        autocommit=True,
        application_name=APPLICATION_NAME,
        connect_timeout=10,
        options=f"-c statement_timeout={int(statement_timeout_ms)} -c default_transaction_read_only=on",
    )
    conn.adapters.register_loader("timestamptz", EdgeInstantLoader)
    return conn


def _in_list(values: list[str]) -> str:
    """SQL literal list of already-validated ids (UUIDs or our own enum values): never user free text."""
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values)


class ClosingReader(ABC):
    """A reader of the source holding a connection: use as a context manager, closed on exit."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @abstractmethod
    def close(self) -> None: ...


class SourceReader(ClosingReader):
    """One open snapshot of the source, held by a session of the database. Use as a context manager."""

    snapshot_time: datetime
    _session: psycopg.Connection | sqlite3.Connection

    def close(self) -> None:
        self._session.close()

    @abstractmethod
    def campaign(self, campaign_id: str) -> CampaignInfo | None: ...

    @abstractmethod
    def campaign_ids(self) -> list[str]: ...

    @abstractmethod
    def questions(self, campaign_id: str) -> list[tuple[int, str]]: ...

    @abstractmethod
    def count_contacts(self, campaign_id: str, options: ExportOptions) -> int: ...

    @abstractmethod
    def contact_key_sample(self, campaign_id: str, fraction: float) -> pl.DataFrame:
        """created_at and id of about this fraction of the campaign's contacts (to place bucket boundaries)."""

    @abstractmethod
    def contact_frames(self, campaign_id: str, batch_size: int) -> Iterator[pl.DataFrame]:
        """Every contact of the campaign (CONTACTS_SCHEMA), in any order, in frames of about batch_size rows."""

    @abstractmethod
    def attempt_frames(self, campaign_id: str, batch_size: int) -> Iterator[pl.DataFrame]:
        """Every attempt filed under the campaign (ATTEMPTS_SCHEMA), in any order."""

    @abstractmethod
    def answer_frames(self, campaign_id: str, batch_size: int) -> Iterator[pl.DataFrame]:
        """Every answer filed under the campaign (ANSWERS_SCHEMA), in any order."""

    @abstractmethod
    def fingerprint(self, campaign_id: str) -> dict:
        """SPEC section 5: what 'changed since the last export' compares (see fingerprint.py).
        CampaignNotFoundError for a campaign the source does not hold."""

    def snapshot_queries(self, campaign_id: str, contacts: int) -> dict[str, SnapshotQuery] | None:
        """The contacts, attempts and answers streams as queries another process can read in this
        snapshot, or None when the snapshot cannot be shared (SQLite). contacts: the campaign's size,
        which the server's memory for the reads is sized to."""
        return None


def open_source(url: str, statement_timeout_ms: int = 600_000) -> SourceReader:
    if source_dialect(url) == POSTGRESQL:
        return PostgresSource(url, statement_timeout_ms)
    return SqliteSource(url)


# --------------------------------------------------------------------------------------------- PostgreSQL

# The server's and the drivers' words for a read that a retry can mend: the connection was lost or refused,
# the server is restarting or full, the statement timed out, or a transaction lost a conflict.
TRANSIENT_SOURCE_FAILURES = re.compile(
    "terminating connection|server closed the connection|connection closed|connection (refused|reset)|"
    "could not connect|connection to server .* failed|broken pipe|unexpected eof|timed? ?out|"
    "canceling statement due to (statement|lock) timeout|the database system is (starting up|shutting down|"
    "in recovery mode)|too many (connections|clients)|could not serialize access|deadlock detected|"
    "out of shared memory|cannot connect now",
    re.IGNORECASE,
)


def _translate(message: str, url: str) -> Exception:
    text = redact_text(message.strip(), url)
    if "does not exist" in text:
        return SourceSchemaError(f"source schema: {text}")
    if TRANSIENT_SOURCE_FAILURES.search(text):
        return SourceUnavailableError(f"source read failed: {text}")
    return SourceReadError(f"source read failed: {text}")


@dataclass(frozen=True)
class SnapshotQuery:
    """One query in an exported PostgreSQL snapshot, streamed by connectorx. It holds no connection, so
    it can be sent to another process: connectorx keeps the GIL while it reads, so streams read in
    threads of one process take turns, and in separate processes they run side by side."""

    cx_url: str
    source_url: str  # for redacting errors
    pre_execution: tuple[str, ...]
    sql: str
    schema: dict
    unreadable_instants_sql: str  # finds a finite instant that the read cannot hold (see instants.py)
    rejects_nan_costs: bool = False

    def frames(self, batch_size: int) -> Iterator[pl.DataFrame]:
        frames = self._frames(batch_size)
        return (_reject_nan_costs(frame) for frame in frames) if self.rejects_nan_costs else frames

    def _frames(self, batch_size: int) -> Iterator[pl.DataFrame]:
        """Select uuids as uuids: they travel as 16 bytes and connectorx writes the canonical lowercase
        text, which saves the server formatting them."""
        checked = False
        try:
            reader = cx.read_sql(
                self.cx_url,
                self.sql,
                return_type="arrow_stream",
                batch_size=batch_size,
                pre_execution_query=list(self.pre_execution),
            )
            for batch in reader:
                if batch.num_rows:
                    frame = pl.from_arrow(batch).cast(self.schema)
                    if not checked and holds_any(frame, _instant_columns(frame), [INFINITY_US]):
                        # infinity reads as the last instant connectorx holds: that instant itself must not be there
                        self._fail_on_unreadable_instants()
                        checked = True
                    yield frame
        except SourceSchemaError:
            raise
        except Exception as exc:  # connectorx raises RuntimeError for database errors
            raise _translate(str(exc), self.source_url) from None
        except BaseException as exc:
            if type(exc).__name__ != "PanicException":  # pyo3's, not an Exception: connectorx could not decode
                raise
            self._fail_on_unreadable_instants()
            raise SourceSchemaError(f"source read failed: {redact_text(str(exc), self.source_url)}") from None

    def _fail_on_unreadable_instants(self) -> None:
        try:
            found = cx.read_sql(
                self.cx_url,
                self.unreadable_instants_sql,
                return_type="polars",
                pre_execution_query=list(self.pre_execution),
            )
        except Exception as exc:
            raise _translate(str(exc), self.source_url) from None
        if found.height:
            column, row_id, value = found.row(0)
            raise SourceSchemaError(
                f"timestamp {value} in {column} (row id {row_id}) is after {LAST_READABLE_INSTANT} UTC, the latest "
                "instant the export can read (docs/contract.md, timestamps at the edges)"
            )


def _instant_columns(frame: pl.DataFrame) -> list[str]:
    return [c for c, dtype in frame.schema.items() if dtype == UTC_US]


LAST_READABLE_INSTANT = "262142-12-31 23:59:59.999998"  # INFINITY_US, one microsecond later, means infinity
# Per source table: its row id (as text) and its instants.
_INSTANT_COLUMNS = {
    "contacts": ("id::text", ("last_attempt_at", "completed_at", "created_at", "updated_at")),
    "call_attempts": ("id::text", ("started_at", "ended_at")),
    "survey_responses": ("contact_id::text || ' question ' || question_position", ("answered_at",)),
}


def unreadable_instants_sql(campaign_id: str) -> str:
    """A query for one of the campaign's finite instants after LAST_READABLE_INSTANT: table.column,
    row id and value (none when every instant can be read)."""
    return " UNION ALL ".join(
        f"(SELECT '{table}.{column}' AS column_name, {row_id} AS row_id, {column}::text AS value FROM {table} "
        f"WHERE campaign_id = '{campaign_id}' AND {column} > '{LAST_READABLE_INSTANT}+00' "
        f"AND {column} <> 'infinity' LIMIT 1)"
        for table, (row_id, columns) in _INSTANT_COLUMNS.items()
        for column in columns
    )


# The attempts and answers reads join to the campaign's contacts through an in-memory hash of them.
# When it does not fit in work_mem x hash_mem_multiplier, PostgreSQL falls back to index lookups per
# attempt, which are much slower (docs/performance.md, "Figures behind the code's choices"). So the
# reading sessions, and only their hash tables, get the memory the campaign needs.
JOIN_HASH_BYTES_PER_CONTACT = 128  # with a margin for the planner's estimate
READ_WORK_MEM_BYTES = 256 * 2**20


def join_hash_mem_multiplier(contacts: int) -> float:
    """hash_mem_multiplier for a read joining to this many contacts, with work_mem READ_WORK_MEM_BYTES:
    PostgreSQL's default 2 up to about 4M contacts, then growing with the campaign."""
    return round(max(2.0, contacts * JOIN_HASH_BYTES_PER_CONTACT / READ_WORK_MEM_BYTES), 1)


_SNAPSHOT_TRANSACTION = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
# A wrong password or database name will not fix itself: no retry for those.
_PERMANENT_CONNECT_FAILURES = ("does not exist", "authentication failed", "no password")


def _connect_source(url: str, statement_timeout_ms: int) -> psycopg.Connection:
    """connect_reading, its failure stated without the password: a setting to fix, or transient."""
    try:
        return connect_reading(url, statement_timeout_ms)
    except psycopg.Error as exc:
        message = f"cannot connect to source {redact_url(url)}: {redact_text(str(exc).strip(), url)}"
        permanent = any(s in message for s in _PERMANENT_CONNECT_FAILURES)
        raise (ConfigurationError if permanent else SourceUnavailableError)(message) from None


def _cx_url(url: str) -> str:
    """The URL connectorx reads: scheme postgresql, its sessions named like ours."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query["application_name"] = APPLICATION_NAME
    return urlunsplit(parts._replace(scheme="postgresql", query=urlencode(query)))


def _joining_snapshot(snapshot_id: str, statement_timeout_ms: int) -> tuple[str, ...]:
    """What each connectorx read runs first: into the exported snapshot, with the reads' settings."""
    return (
        _SNAPSHOT_TRANSACTION,
        f"SET TRANSACTION SNAPSHOT '{snapshot_id}'",
        f"SET statement_timeout = {statement_timeout_ms}",
        f"SET work_mem = '{READ_WORK_MEM_BYTES // 2**20}MB'",
        "SET jit = off",  # JIT compilation costs seconds per plan and saves nothing on these plain scans
    )


def _require_columns(found: dict[str, set[str]]) -> None:
    """Fail naming each missing table (found: the columns of each table there is) and each missing column."""
    missing = [
        f"table {t}" if t not in found else f"column {t}.{c}"
        for t, cols in REQUIRED_COLUMNS.items()
        for c in cols
        if t not in found or c not in found[t]
    ]
    if missing:
        raise SourceSchemaError("source schema: missing " + ", ".join(dict.fromkeys(missing)))


def _contact_filter(campaign_id: str, options: ExportOptions) -> str:
    where = f"c.campaign_id = '{campaign_id}'"
    if options.states is not None:
        where += f" AND c.state IN ({_in_list(list(options.states))})"
    if options.updated_from is not None:
        where += f" AND c.updated_at >= '{options.updated_from.isoformat()}'::timestamptz"
    if options.updated_to is not None:
        where += f" AND c.updated_at < '{options.updated_to.isoformat()}'::timestamptz"
    return where


# Bucket boundaries only bound bucket sizes, so an approximate instant will do: infinities and instants
# past what the reads can hold (they fail there, by name) are clamped.
_CREATED_US = (
    f"CASE WHEN created_at > '{LAST_READABLE_INSTANT}+00' THEN {INFINITY_US} "
    f"WHEN created_at = '-infinity' THEN {NEG_INFINITY_US} "
    "ELSE (extract(epoch FROM created_at) * 1000000)::int8 END"
)


def _contacts_sql(campaign_id: str) -> str:
    return (
        "SELECT c.id, c.external_contact_id, c.name, c.business_name, c.phone_number, c.state, "
        "c.attempt_count::int8 AS attempt_count, c.last_attempt_at, c.completed_at, c.created_at, c.updated_at "
        f"FROM contacts c WHERE c.campaign_id = '{campaign_id}'"
    )


def _attempts_sql(campaign_id: str) -> str:
    return (
        "SELECT c.created_at AS contact_created_at, a.id, a.contact_id, "
        "a.attempt_number::int8 AS attempt_number, a.status, a.started_at, a.ended_at, a.ended_reason, "
        "CASE WHEN a.cost_usd = 'NaN' THEN NULL ELSE (a.cost_usd * 10000)::int8 END AS cost_units, "
        "CASE WHEN a.cost_usd = 'NaN' THEN a.id::text END AS nan_cost_id, a.recording_url, "
        # Each use of a.transcript decompresses it again: the subquery (kept apart by OFFSET 0) takes its
        # "text" member once; only a transcript without one is looked at again.
        "CASE WHEN a.text IS NOT NULL THEN "
        "       CASE WHEN jsonb_typeof(a.text) = 'string' THEN 'ok' ELSE 'text_not_string' END "
        "     WHEN a.transcript IS NULL THEN NULL "
        "     WHEN jsonb_typeof(a.transcript) = 'object' THEN 'no_text' ELSE 'not_object' END AS transcript_kind, "
        "CASE WHEN jsonb_typeof(a.text) = 'string' THEN left(a.text #>> '{}', 100) END AS transcript_summary "
        "FROM (SELECT a.*, a.transcript -> 'text' AS text FROM call_attempts a "
        f"      WHERE a.campaign_id = '{campaign_id}' OFFSET 0) a "
        "LEFT JOIN contacts c ON c.id = a.contact_id AND c.campaign_id = a.campaign_id"
    )


def _answers_sql(campaign_id: str) -> str:
    return (
        "SELECT c.created_at AS contact_created_at, r.contact_id, "
        "r.question_position::int8 AS position, r.answer, r.answered_at FROM survey_responses r "
        "LEFT JOIN contacts c ON c.id = r.contact_id AND c.campaign_id = r.campaign_id "
        f"WHERE r.campaign_id = '{campaign_id}'"
    )


class _StreamRead(NamedTuple):
    """A stream as PostgreSQL reads it."""

    sql: Callable[[str], str]  # from the campaign id
    schema: dict
    rejects_nan_costs: bool
    joins_contacts: bool  # sized by join_hash_mem_multiplier


_STREAM_READS = {
    "contacts": _StreamRead(_contacts_sql, CONTACTS_SCHEMA, rejects_nan_costs=False, joins_contacts=False),
    "attempts": _StreamRead(
        _attempts_sql, {**ATTEMPTS_SCHEMA, "nan_cost_id": pl.String}, rejects_nan_costs=True, joins_contacts=True
    ),
    "answers": _StreamRead(_answers_sql, ANSWERS_SCHEMA, rejects_nan_costs=False, joins_contacts=True),
}


class PostgresSource(SourceReader):
    """A REPEATABLE READ session exports its snapshot; every connectorx read imports it."""

    def __init__(self, url: str, statement_timeout_ms: int):
        self._url, self._cx_url = url, _cx_url(url)
        self._session = _connect_source(url, statement_timeout_ms)
        try:
            self._session.execute(_SNAPSHOT_TRANSACTION)
            snapshot_id, taken_at = self._session.execute("SELECT pg_export_snapshot(), clock_timestamp()").fetchone()
            self._check_schema()
        except psycopg.Error as exc:
            self._session.close()
            raise _translate(str(exc), url) from None
        except BaseException:
            self._session.close()
            raise
        self.snapshot_time = taken_at.astimezone(UTC)
        self._pre_execution = _joining_snapshot(snapshot_id, int(statement_timeout_ms))

    def _rows(self, sql: str, params: dict | None = None, binary: bool = False) -> list[tuple]:
        """binary: instants come through EdgeInstantLoader (datetime, or microseconds at the edges)."""
        try:
            return self._session.execute(sql, params, binary=binary).fetchall()
        except psycopg.Error as exc:
            raise _translate(str(exc), self._url) from None

    def _check_schema(self) -> None:
        found: dict[str, set[str]] = {}
        for table, column in self._rows(
            "SELECT table_name, column_name FROM information_schema.columns "
            f"WHERE table_schema = current_schema() AND table_name IN ({_in_list(list(REQUIRED_COLUMNS))})"
        ):
            found.setdefault(table, set()).add(column)
        _require_columns(found)

    def _query(self, stream: str, campaign_id: str, contacts: int = 0) -> SnapshotQuery:
        read = _STREAM_READS[stream]
        hash_memory = f"SET hash_mem_multiplier = {join_hash_mem_multiplier(contacts if read.joins_contacts else 0)}"
        return SnapshotQuery(
            self._cx_url,
            self._url,
            (*self._pre_execution, hash_memory),
            read.sql(campaign_id),
            read.schema,
            unreadable_instants_sql(campaign_id),
            read.rejects_nan_costs,
        )

    def campaign(self, campaign_id: str) -> CampaignInfo | None:
        rows = self._rows(
            "SELECT id::text, name, assistant_name, status, owner_email, updated_at "
            f"FROM campaigns WHERE id = '{campaign_id}'",
            binary=True,
        )
        return CampaignInfo(*rows[0]) if rows else None

    def campaign_ids(self) -> list[str]:
        return [r[0] for r in self._rows("SELECT id::text FROM campaigns ORDER BY created_at, id")]

    def questions(self, campaign_id: str) -> list[tuple[int, str]]:
        return [
            (int(p), t)
            for p, t in self._rows(
                f"SELECT position, prompt FROM survey_questions WHERE campaign_id = '{campaign_id}' ORDER BY position"
            )
        ]

    def count_contacts(self, campaign_id: str, options: ExportOptions) -> int:
        return self._rows(f"SELECT count(*) FROM contacts c WHERE {_contact_filter(campaign_id, options)}")[0][0]

    def contact_key_sample(self, campaign_id: str, fraction: float) -> pl.DataFrame:
        sample = "" if fraction >= 1 else f" AND random() < {fraction:.9f}"
        rows = self._rows(f"SELECT {_CREATED_US}, id::text FROM contacts WHERE campaign_id = '{campaign_id}'{sample}")
        return pl.DataFrame(
            rows,
            schema={"created_at": pl.Int64, "id": pl.String},
            orient="row",
        ).with_columns(pl.col("created_at").cast(UTC_US))

    def snapshot_queries(self, campaign_id: str, contacts: int) -> dict[str, SnapshotQuery]:
        return {stream: self._query(stream, campaign_id, contacts) for stream in _STREAM_READS}

    def contact_frames(self, campaign_id: str, batch_size: int) -> Iterator[pl.DataFrame]:
        return self._query("contacts", campaign_id).frames(batch_size)

    def attempt_frames(self, campaign_id: str, batch_size: int) -> Iterator[pl.DataFrame]:
        return self._query("attempts", campaign_id).frames(batch_size)

    def answer_frames(self, campaign_id: str, batch_size: int) -> Iterator[pl.DataFrame]:
        return self._query("answers", campaign_id).frames(batch_size)

    def fingerprint(self, campaign_id: str) -> dict:
        found = postgres_fingerprints(lambda sql, params: self._rows(sql, params, binary=True), [campaign_id])
        if campaign_id not in found:
            raise CampaignNotFoundError(f"campaign {campaign_id} is not in the source")
        return found[campaign_id]


def _reject_nan_costs(frame: pl.DataFrame) -> pl.DataFrame:
    """A NaN amount cannot be written as money: fail naming the attempt (SPEC section 3)."""
    bad = frame.filter(pl.col("nan_cost_id").is_not_null())
    if bad.height:
        raise SourceSchemaError(
            f"call_attempts.cost_usd is NaN for attempt {bad['nan_cost_id'][0]}: money must be a number"
        )
    return frame.drop("nan_cost_id").select(list(ATTEMPTS_SCHEMA))


# --------------------------------------------------------------------------------------------- SQLite


def _canonical_uuid_expr(column: str) -> pl.Expr:
    """SQLite stores uuids as text in any case and with or without hyphens."""
    hexed = pl.col(column).str.strip_chars().str.to_lowercase().str.replace_all("-", "")
    return (
        hexed.str.slice(0, 8)
        + "-"
        + hexed.str.slice(8, 4)
        + "-"
        + hexed.str.slice(12, 4)
        + "-"
        + hexed.str.slice(16, 4)
        + "-"
        + hexed.str.slice(20, 12)
    ).alias(column)


def _timestamps(frame: pl.DataFrame, table: str, columns: list[str], id_column: str) -> pl.DataFrame:
    """Parse ISO 8601 text into UTC instants; a value without an offset is UTC. Years outside 0000..9999
    take ISO 8601's expanded form (a sign, then the digits); infinity and -infinity as PostgreSQL writes them."""
    exprs = []
    for column in columns:
        text = pl.col(column).str.strip_chars().str.replace("Z$", "+00:00").str.replace(" ", "T")
        with_offset = text.str.to_datetime("%Y-%m-%dT%H:%M:%S%.f%:z", time_unit="us", strict=False)
        naive = text.str.to_datetime("%Y-%m-%dT%H:%M:%S%.f", time_unit="us", strict=False)
        date_only = text.str.to_datetime("%Y-%m-%d", time_unit="us", strict=False)
        word = text.str.to_lowercase()
        infinity = (
            pl.when(word.is_in(["infinity", "+infinity"]))
            .then(pl.lit(INFINITY_US))
            .when(word == "-infinity")
            .then(pl.lit(NEG_INFINITY_US))
            .cast(UTC_US)
        )
        exprs.append(
            pl.coalesce(
                with_offset.dt.convert_time_zone("UTC"),
                naive.dt.replace_time_zone("UTC"),
                date_only.dt.replace_time_zone("UTC"),
                infinity,
            ).alias(column)
        )
    parsed = frame.with_columns(exprs)
    for column in columns:
        bad = frame.filter(parsed[column].is_null() & frame[column].is_not_null())
        if bad.height:
            raise SourceSchemaError(
                f"unparseable timestamp {bad[column][0]!r} in {table}.{column} (row id {bad[id_column][0]})"
            )
    return parsed


def instant_micros(text: str, table: str, column: str, row_id: str) -> int:
    """One SQLite timestamp as microseconds since 1970 (_timestamps' rules and errors)."""
    frame = pl.DataFrame({"at": [text], "id": [row_id]}, schema={"at": pl.String, "id": pl.String})
    return _timestamps(frame, table, ["at"], "id").select(pl.col("at").dt.epoch("us")).item()


def _money_units(text: str | None, row_id: str) -> int | None:
    """SQLite money (TEXT or REAL) as ten-thousandths, rounded half-up to 4 places, exactly."""
    if text is None:
        return None
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise SourceSchemaError(f"call_attempts.cost_usd {text!r} is not a number (row id {row_id})") from None
    if not value.is_finite():
        raise SourceSchemaError(f"call_attempts.cost_usd is {text} for attempt {row_id}: money must be a number")
    return int((value * 10000).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _uuid_match(column: str, campaign_id: str) -> str:
    """SQL: the column holds this uuid, in any case, with or without hyphens."""
    return f"lower(replace({column}, '-', '')) = '{campaign_id.replace('-', '')}'"


def _as_text(columns: dict[str, str]) -> str:
    """SQL select list: each source expression as TEXT, named as its key."""
    return ", ".join(f"CAST({expression} AS TEXT) AS {name}" for name, expression in columns.items())


def _with_contact(alias: str, campaign_id: str) -> str:
    """The join that gives each row its contact's created_at, when the contact is the campaign's."""
    return (
        f"LEFT JOIN contacts c ON lower(replace(c.id, '-', '')) = lower(replace({alias}.contact_id, '-', '')) "
        f"AND {_uuid_match('c.campaign_id', campaign_id)} "
        f"WHERE {_uuid_match(alias + '.campaign_id', campaign_id)}"
    )


def _read_text(cx_url: str, sql: str, columns: list[str]) -> pl.DataFrame:
    """connectorx infers SQLite types from the first row (and fails on a NULL there), so every
    column is cast to TEXT and a first row of empty strings, dropped afterwards, fixes the types."""
    typing_row = ", ".join(f"'' AS {c}" for c in columns)
    wrapped = (
        f"SELECT 1 AS typing_row, {typing_row} UNION ALL "
        f"SELECT 0, {', '.join('q.' + c for c in columns)} FROM ({sql}) q"
    )
    try:
        frame = cx.read_sql(cx_url, wrapped, return_type="polars")
    except Exception as exc:
        raise SourceSchemaError(f"source read failed: {exc}") from None
    return frame.filter(pl.col("typing_row") == 0).drop("typing_row").cast(dict.fromkeys(columns, pl.String))


_SQLITE_CONTACTS = {column: f"c.{column}" for column in CONTACTS_SCHEMA}
_SQLITE_ATTEMPTS = {
    "contact_created_at": "c.created_at",
    "id": "a.id",
    "contact_id": "a.contact_id",
    "attempt_number": "a.attempt_number",
    "status": "a.status",
    "started_at": "a.started_at",
    "ended_at": "a.ended_at",
    "ended_reason": "a.ended_reason",
    "cost_text": "a.cost_usd",
    "recording_url": "a.recording_url",
}
_SQLITE_TRANSCRIPT = (
    "CASE WHEN a.transcript IS NULL THEN NULL WHEN NOT json_valid(a.transcript) THEN 'invalid_json' "
    "     WHEN json_type(a.transcript) <> 'object' THEN 'not_object' "
    "     WHEN json_type(a.transcript, '$.text') IS NULL THEN 'no_text' "
    "     WHEN json_type(a.transcript, '$.text') <> 'text' THEN 'text_not_string' ELSE 'ok' END AS transcript_kind, "
    "CASE WHEN json_valid(a.transcript) THEN CASE WHEN json_type(a.transcript) = 'object' "
    "     AND json_type(a.transcript, '$.text') = 'text' THEN substr(json_extract(a.transcript, '$.text'), 1, 100) "
    "     END END AS transcript_summary"
)
_SQLITE_ANSWERS = {
    "contact_created_at": "c.created_at",
    "contact_id": "r.contact_id",
    "position": "r.question_position",
    "answer": "r.answer",
    "answered_at": "r.answered_at",
}


class SqliteSource(SourceReader):
    """The embedded demo source. Campaign-sized reads are held in memory (demo scale)."""

    def __init__(self, url: str):
        path = sqlite_path(url).resolve()
        if not path.is_file():
            raise ConfigurationError(f"SQLite source {path} does not exist (`exports-pipeline demo` creates the demo)")
        self._cx_url = f"sqlite://{path}"
        try:
            self._session = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
            self._session.execute("BEGIN")
            self._check_schema()  # the first read takes the shared lock that keeps writers out
        except sqlite3.Error as exc:
            raise SourceUnavailableError(f"cannot open SQLite source {path}: {exc}") from None
        self.snapshot_time = datetime.now(UTC)

    def _rows(self, sql: str) -> list[tuple]:
        try:
            return self._session.execute(sql).fetchall()
        except sqlite3.Error as exc:
            raise SourceSchemaError(f"source schema: {exc}") from None

    def _check_schema(self) -> None:
        found = {
            table: {r[1] for r in self._session.execute(f"PRAGMA table_info({table})").fetchall()}
            for table in REQUIRED_COLUMNS
        }
        _require_columns({table: columns for table, columns in found.items() if columns})

    def _updated_at(self, campaign_id: str) -> tuple[tuple, int] | None:
        """The campaign's row (name, assistant_name, status, owner_email) and its updated_at in microseconds."""
        rows = self._rows(
            "SELECT name, assistant_name, status, owner_email, CAST(updated_at AS TEXT) "
            f"FROM campaigns WHERE {_uuid_match('id', campaign_id)}"
        )
        if not rows:
            return None
        *described, updated = rows[0]
        return tuple(described), instant_micros(updated, "campaigns", "updated_at", campaign_id)

    def campaign(self, campaign_id: str) -> CampaignInfo | None:
        found = self._updated_at(campaign_id)
        return CampaignInfo(campaign_id, *found[0], found[1]) if found else None

    def campaign_ids(self) -> list[str]:
        rows = self._rows("SELECT id FROM campaigns")
        return (
            pl.DataFrame({"id": [r[0] for r in rows]}, schema={"id": pl.String})
            .select(_canonical_uuid_expr("id"))["id"]
            .to_list()
        )

    def questions(self, campaign_id: str) -> list[tuple[int, str]]:
        return [
            (int(p), t)
            for p, t in self._rows(
                f"SELECT CAST(q.position AS INTEGER), q.prompt FROM survey_questions q "
                f"WHERE {_uuid_match('q.campaign_id', campaign_id)} ORDER BY 1"
            )
        ]

    def _contacts(self, campaign_id: str, states: tuple[str, ...] | None = None) -> pl.DataFrame:
        where = _uuid_match("c.campaign_id", campaign_id)
        if states is not None:
            where += f" AND c.state IN ({_in_list(list(states))})"
        frame = _read_text(
            self._cx_url, f"SELECT {_as_text(_SQLITE_CONTACTS)} FROM contacts c WHERE {where}", list(_SQLITE_CONTACTS)
        )
        frame = _timestamps(
            frame.with_columns(_canonical_uuid_expr("id")),
            "contacts",
            ["last_attempt_at", "completed_at", "created_at", "updated_at"],
            "id",
        )
        return frame.cast(CONTACTS_SCHEMA)

    def count_contacts(self, campaign_id: str, options: ExportOptions) -> int:
        contacts = self._contacts(campaign_id, options.states)
        if options.updated_from is not None:
            contacts = contacts.filter(pl.col("updated_at") >= options.updated_from)
        if options.updated_to is not None:
            contacts = contacts.filter(pl.col("updated_at") < options.updated_to)
        return contacts.height

    def contact_key_sample(self, campaign_id: str, fraction: float) -> pl.DataFrame:
        return self._contacts(campaign_id).select("created_at", "id")

    def contact_frames(self, campaign_id: str, batch_size: int) -> Iterator[pl.DataFrame]:
        yield self._contacts(campaign_id)

    def attempt_frames(self, campaign_id: str, batch_size: int) -> Iterator[pl.DataFrame]:
        frame = _read_text(
            self._cx_url,
            f"SELECT {_as_text(_SQLITE_ATTEMPTS)}, {_SQLITE_TRANSCRIPT} "
            f"FROM call_attempts a {_with_contact('a', campaign_id)}",
            [*_SQLITE_ATTEMPTS, "transcript_kind", "transcript_summary"],
        )
        frame = frame.with_columns(_canonical_uuid_expr("id"), _canonical_uuid_expr("contact_id"))
        frame = _timestamps(frame, "call_attempts", ["contact_created_at", "started_at", "ended_at"], "id")
        units = [_money_units(text, row_id) for text, row_id in zip(frame["cost_text"], frame["id"], strict=True)]
        yield (
            frame.with_columns(pl.Series("cost_units", units, dtype=pl.Int64))
            .select(list(ATTEMPTS_SCHEMA))
            .cast(ATTEMPTS_SCHEMA)
        )

    def answer_frames(self, campaign_id: str, batch_size: int) -> Iterator[pl.DataFrame]:
        frame = _read_text(
            self._cx_url,
            f"SELECT {_as_text(_SQLITE_ANSWERS)} FROM survey_responses r {_with_contact('r', campaign_id)}",
            list(_SQLITE_ANSWERS),
        )
        frame = _timestamps(
            frame.with_columns(_canonical_uuid_expr("contact_id")),
            "survey_responses",
            ["contact_created_at", "answered_at"],
            "contact_id",
        )
        yield frame.cast(ANSWERS_SCHEMA)

    def _activity(self, stream: Stream, campaign_id: str) -> tuple[int, int | None]:
        """How many rows of the stream the campaign has, and their latest activity instant."""
        at = stream.activity_sql()
        rows = self._rows(
            f"SELECT CAST({at} AS TEXT), CAST({stream.row_id} AS TEXT) "
            f"FROM {stream.table} WHERE {_uuid_match('campaign_id', campaign_id)}"
        )
        frame = _timestamps(
            pl.DataFrame(rows, schema={at: pl.String, "id": pl.String}, orient="row"), stream.table, [at], "id"
        )
        return len(rows), frame.select(pl.col(at).dt.epoch("us").max()).item()

    def fingerprint(self, campaign_id: str) -> dict:
        found = self._updated_at(campaign_id)
        if found is None:
            raise CampaignNotFoundError(f"campaign {campaign_id} is not in the source")
        return fingerprint_of(
            found[1],
            {name: self._activity(stream, campaign_id) for name, stream in STREAMS.items()},
            len(self.questions(campaign_id)),
        )
