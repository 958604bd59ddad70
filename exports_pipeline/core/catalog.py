"""The campaign catalog that the sensors and the nightly schedule read: small, paginated, read-only queries.

No Dagster here. Every listing is a keyset page (``ORDER BY key LIMIT n`` after a position), so a
sensor tick costs a few short statements whatever the number of campaigns. PostgreSQL: one
autocommit connection, read-only, named application_name=exports-pipeline, every statement bounded
by a statement timeout. Listing by id uses the primary key; listing by (created_at, id) or
(updated_at, id) scans the campaigns table (tens of thousands of rows: a short scan) unless the
indexes the README recommends exist. SQLite (the embedded demo, a handful of campaigns): the
campaigns table is read whole and paged in Python, because its ids and timestamps are free-form text.

Fingerprints (SPEC section 5) for many campaigns: one set-based query per page of ids in PostgreSQL
(fingerprint.postgres_fingerprints, which PostgresSource.fingerprint runs for one campaign); SQLite
delegates to SourceReader.

Search (the `campaigns` command): any part of the name or id, case-insensitive. PostgreSQL: one ILIKE
scan of the campaigns table (tens of thousands of rows, no extension or index needed),
sorted by name, a page of it; contacts are counted for that page only, through contacts(campaign_id).
SQLite (the demo): the same, in Python, over the campaigns the catalog has read.
"""

from __future__ import annotations

import re
import sqlite3
from abc import abstractmethod
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg

from exports_pipeline.core.errors import ConfigurationError, InvalidInputError, SourceUnavailableError
from exports_pipeline.core.fingerprint import postgres_fingerprints
from exports_pipeline.core.ids import parse_campaign_id
from exports_pipeline.core.instants import clamped_datetime
from exports_pipeline.core.source import (
    ClosingReader,
    connect_reading,
    instant_micros,
    open_source,
)
from exports_pipeline.core.sourceurl import POSTGRESQL, redact_text, redact_url, source_dialect, sqlite_path

NIL_ID = "00000000-0000-0000-0000-000000000000"  # sorts before every campaign id
Position = tuple[datetime, str]  # a keyset position: (timestamp, campaign id)
CAMPAIGN_STATUSES = ("draft", "scheduled", "running", "paused", "completed", "cancelled")


@dataclass(frozen=True)
class CampaignRow:
    id: str
    name: str
    status: str
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None

    @property
    def created_position(self) -> Position:
        return self.created_at, self.id

    @property
    def updated_position(self) -> Position:
        return self.updated_at, self.id


@dataclass(frozen=True)
class CampaignMatch:
    id: str
    name: str
    status: str
    contacts: int


@dataclass(frozen=True)
class SearchPage:
    campaigns: list[CampaignMatch]  # sorted by name (any case), then id
    total: int  # every campaign that matches, listed or not


def _like_pattern(text: str | None) -> str:
    """An ILIKE pattern for text anywhere in a value; LIKE's own characters in it match themselves."""
    escaped = re.sub(r"([\\%_])", r"\\\1", text or "")
    return f"%{escaped}%"


def canonical_ids(keys) -> list[str]:
    """The keys that are campaign ids in canonical form (partition keys may hold anything)."""
    valid = []
    for key in keys:
        try:
            if parse_campaign_id(key) == key:
                valid.append(key)
        except InvalidInputError:
            pass
    return valid


class Catalog(ClosingReader):
    """Read-only campaign listings. Use as a context manager."""

    @abstractmethod
    def now(self) -> datetime:
        """The source database's clock (what its timestamps are compared with)."""

    @abstractmethod
    def created_after(self, after: Position, limit: int) -> list[CampaignRow]:
        """Campaigns whose (created_at, id) is greater than after, in that order."""

    @abstractmethod
    def completed_after(self, after: Position, limit: int) -> list[CampaignRow]:
        """Completed campaigns whose (updated_at, id) is greater than after, in that order."""

    @abstractmethod
    def ids_after(self, after: str | None, limit: int) -> list[str]:
        """Campaign ids greater than after (all when None), in id order."""

    @abstractmethod
    def fingerprints(self, campaign_ids: list[str]) -> dict[str, dict]:
        """SourceReader.fingerprint of each of these campaigns that exists (others are left out)."""

    @abstractmethod
    def names(self, campaign_ids: list[str]) -> dict[str, str]:
        """The name of each of these campaigns that exists (others are left out)."""

    @abstractmethod
    def search(self, text: str | None, status: str | None, limit: int) -> SearchPage:
        """Campaigns whose name or id contains text (any case; all when None), in this status (any when
        None): the first limit by name (any case) then id, with their contacts counted, and how many match."""


def open_catalog(url: str, statement_timeout_ms: int = 30_000) -> Catalog:
    if source_dialect(url) == POSTGRESQL:
        return PostgresCatalog(url, statement_timeout_ms)
    return SqliteCatalog(url)


def _utc(value: datetime | int | None) -> datetime | None:
    return clamped_datetime(value) if value is not None else None


class PostgresCatalog(Catalog):
    _COLUMNS = "id::text, name, status, created_at, updated_at, completed_at"

    def __init__(self, url: str, statement_timeout_ms: int):
        self._url = url
        try:
            self._conn = connect_reading(url, statement_timeout_ms)
        except psycopg.Error as exc:
            raise SourceUnavailableError(
                f"cannot connect to source {redact_url(url)}: {redact_text(str(exc).strip(), url)}"
            ) from None

    def close(self) -> None:
        self._conn.close()

    def _rows(self, sql: str, params: tuple | dict, binary: bool = False) -> list[tuple]:
        """binary: instants come through source.EdgeInstantLoader (datetime, or microseconds at the edges)."""
        try:
            return self._conn.execute(sql, params, binary=binary).fetchall()
        except psycopg.Error as exc:
            raise SourceUnavailableError(
                f"source catalog query failed: {redact_text(str(exc).strip(), self._url)}"
            ) from None

    def _campaigns(self, sql: str, params: tuple) -> list[CampaignRow]:
        return [
            CampaignRow(i, n, s, _utc(c), _utc(u), _utc(d)) for i, n, s, c, u, d in self._rows(sql, params, binary=True)
        ]

    def now(self) -> datetime:
        return _utc(self._rows("SELECT now()", ())[0][0])

    def created_after(self, after: Position, limit: int) -> list[CampaignRow]:
        return self._campaigns(
            f"SELECT {self._COLUMNS} FROM campaigns WHERE (created_at, id) > (%s, %s::uuid) "
            "ORDER BY created_at, id LIMIT %s",
            (*after, limit),
        )

    def completed_after(self, after: Position, limit: int) -> list[CampaignRow]:
        return self._campaigns(
            f"SELECT {self._COLUMNS} FROM campaigns WHERE status = 'completed' AND (updated_at, id) > (%s, %s::uuid) "
            "ORDER BY updated_at, id LIMIT %s",
            (*after, limit),
        )

    def ids_after(self, after: str | None, limit: int) -> list[str]:
        return [
            r[0]
            for r in self._rows(
                "SELECT id::text FROM campaigns WHERE id > %s::uuid ORDER BY id LIMIT %s", (after or NIL_ID, limit)
            )
        ]

    def fingerprints(self, campaign_ids: list[str]) -> dict[str, dict]:
        return postgres_fingerprints(
            lambda sql, params: self._rows(sql, params, binary=True), sorted(canonical_ids(campaign_ids))
        )

    def names(self, campaign_ids: list[str]) -> dict[str, str]:
        rows = self._rows(
            "SELECT id::text, name FROM campaigns WHERE id = ANY(%s::uuid[])", (canonical_ids(campaign_ids),)
        )
        return dict(rows)

    def search(self, text: str | None, status: str | None, limit: int) -> SearchPage:
        # The window count is taken over every match before LIMIT; the correlated count runs for the page only.
        rows = self._rows(
            "SELECT p.id::text, p.name, p.status, (SELECT count(*) FROM contacts ct WHERE ct.campaign_id = p.id), "
            "       p.total "
            "FROM (SELECT id, name, status, count(*) OVER () AS total FROM campaigns "
            "      WHERE (name ILIKE %(pattern)s OR id::text ILIKE %(pattern)s) "
            "        AND (%(status)s::text IS NULL OR status = %(status)s) "
            "      ORDER BY lower(name), id LIMIT %(limit)s) p "
            "ORDER BY lower(p.name), p.id",
            {"pattern": _like_pattern(text), "status": status, "limit": limit},
        )
        return SearchPage([CampaignMatch(*row[:4]) for row in rows], rows[0][4] if rows else 0)


class SqliteCatalog(Catalog):
    def __init__(self, url: str):
        path = sqlite_path(url).resolve()
        if not path.is_file():
            raise ConfigurationError(f"SQLite source {path} does not exist (`exports-pipeline demo` creates the demo)")
        self._url, self._path = url, path
        rows = self._query("SELECT id, name, status, created_at, updated_at, completed_at FROM campaigns")
        self._campaigns = [self._row(*r) for r in rows]

    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        try:
            with closing(sqlite3.connect(f"file:{self._path}?mode=ro", uri=True)) as conn:
                return conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise SourceUnavailableError(f"cannot read SQLite source {self._path}: {exc}") from None

    @staticmethod
    def _row(raw_id, name, status, created, updated, completed) -> CampaignRow:
        cid = parse_campaign_id(raw_id)

        def instant(text, column):
            return _utc(instant_micros(str(text), "campaigns", column, cid)) if text is not None else None

        return CampaignRow(
            cid,
            name,
            status,
            instant(created, "created_at"),
            instant(updated, "updated_at"),
            instant(completed, "completed_at"),
        )

    def close(self) -> None:
        pass

    def now(self) -> datetime:
        return datetime.now(UTC)

    def created_after(self, after: Position, limit: int) -> list[CampaignRow]:
        rows = sorted((r for r in self._campaigns if r.created_position > after), key=lambda r: r.created_position)
        return rows[:limit]

    def completed_after(self, after: Position, limit: int) -> list[CampaignRow]:
        rows = sorted(
            (r for r in self._campaigns if r.status == "completed" and r.updated_position > after),
            key=lambda r: r.updated_position,
        )
        return rows[:limit]

    def ids_after(self, after: str | None, limit: int) -> list[str]:
        return sorted(r.id for r in self._campaigns if after is None or r.id > after)[:limit]

    def fingerprints(self, campaign_ids: list[str]) -> dict[str, dict]:
        known = {r.id for r in self._campaigns}
        with open_source(self._url) as source:
            return {cid: source.fingerprint(cid) for cid in campaign_ids if cid in known}

    def names(self, campaign_ids: list[str]) -> dict[str, str]:
        wanted = set(campaign_ids)
        return {r.id: r.name for r in self._campaigns if r.id in wanted}

    def search(self, text: str | None, status: str | None, limit: int) -> SearchPage:
        needle = (text or "").casefold()
        matches = sorted(
            (
                r
                for r in self._campaigns
                if status in (None, r.status) and (needle in r.name.casefold() or needle in r.id)
            ),
            key=lambda r: (r.name.lower(), r.id),
        )
        counts = self._contact_counts([r.id for r in matches[:limit]])
        return SearchPage(
            [CampaignMatch(r.id, r.name, r.status, counts.get(r.id, 0)) for r in matches[:limit]], len(matches)
        )

    def _contact_counts(self, campaign_ids: list[str]) -> dict[str, int]:
        """Contacts of these campaigns, whatever the case and hyphens of the ids stored in contacts."""
        by_hex = {cid.replace("-", ""): cid for cid in campaign_ids}
        if not by_hex:
            return {}
        rows = self._query(
            "SELECT lower(replace(campaign_id, '-', '')), count(*) FROM contacts "
            f"WHERE lower(replace(campaign_id, '-', '')) IN ({', '.join('?' * len(by_hex))}) "
            "GROUP BY 1",
            tuple(by_hex),
        )
        return {by_hex[key]: count for key, count in rows}
