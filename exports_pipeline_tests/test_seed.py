"""The synthetic source database: SPEC section 2's schema, realistic and awkward data, determinism."""

from __future__ import annotations

import datetime as dt
import json
import re
import sqlite3
from decimal import Decimal

import psycopg
import pytest

from exports_pipeline.core.seed import create_source_schema, seed_source

NOW = dt.datetime(2026, 11, 22, 8, 0, tzinfo=dt.UTC)

# SPEC section 2, written out independently of the module under test: (type, nullable).
SPEC_COLUMNS = {
    "campaigns": {
        "id": ("uuid", False),
        "name": ("text", False),
        "assistant_name": ("text", True),
        "owner_id": ("uuid", False),
        "owner_email": ("text", True),
        "status": ("text", False),
        "created_at": ("timestamp with time zone", False),
        "updated_at": ("timestamp with time zone", False),
        "completed_at": ("timestamp with time zone", True),
    },
    "survey_questions": {
        "campaign_id": ("uuid", False),
        "position": ("smallint", False),
        "prompt": ("text", False),
    },
    "contacts": {
        "id": ("uuid", False),
        "campaign_id": ("uuid", False),
        "external_contact_id": ("text", True),
        "name": ("text", True),
        "business_name": ("text", True),
        "phone_number": ("text", False),
        "state": ("text", False),
        "attempt_count": ("integer", False),
        "last_attempt_at": ("timestamp with time zone", True),
        "completed_at": ("timestamp with time zone", True),
        "created_at": ("timestamp with time zone", False),
        "updated_at": ("timestamp with time zone", False),
    },
    "call_attempts": {
        "id": ("uuid", False),
        "campaign_id": ("uuid", False),
        "contact_id": ("uuid", False),
        "attempt_number": ("integer", False),
        "status": ("text", False),
        "started_at": ("timestamp with time zone", True),
        "ended_at": ("timestamp with time zone", True),
        "ended_reason": ("text", True),
        "cost_usd": ("numeric", True),
        "recording_url": ("text", True),
        "transcript": ("jsonb", True),
    },
    "survey_responses": {
        "campaign_id": ("uuid", True),
        "contact_id": ("uuid", False),
        "question_position": ("smallint", False),
        "answer": ("text", True),
        "answered_at": ("timestamp with time zone", True),
    },
}
SPEC_KEYS = {
    "campaigns": ["id"],
    "survey_questions": ["campaign_id", "position"],
    "contacts": ["id"],
    "call_attempts": ["id"],
    "survey_responses": ["contact_id", "question_position"],
}
SPEC_INDEXES = {
    ("contacts", "(campaign_id)"),
    ("contacts", "(campaign_id, updated_at)"),
    ("call_attempts", "(campaign_id)"),
    ("call_attempts", "(contact_id)"),
    ("survey_responses", "(campaign_id)"),
}
STATES = {"pending", "in_progress", "completed", "refused", "not_reached", "excluded"}
STATUSES = {"queued", "ringing", "in_progress", "completed", "no_answer", "busy", "failed", "refused"}
CAMPAIGN_STATUSES = {"draft", "scheduled", "running", "paused", "completed", "cancelled"}
E164 = re.compile(r"^\+[1-9][0-9]{1,14}$")


def _rows(url: str, sql: str, params: tuple | None = None) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params).fetchall()


def _one(url: str, sql: str, params: tuple | None = None):
    return _rows(url, sql, params)[0][0]


def _check_schema(url: str) -> None:
    columns = _rows(
        url,
        """
        SELECT table_name, column_name, data_type, is_nullable, numeric_precision, numeric_scale
        FROM information_schema.columns WHERE table_schema = 'public' ORDER BY table_name, ordinal_position""",
    )
    found: dict[str, dict] = {}
    for table, column, kind, nullable, precision, scale in columns:
        found.setdefault(table, {})[column] = (kind, nullable == "YES")
        if kind == "numeric":
            assert (precision, scale) == (12, 4)
    assert found == SPEC_COLUMNS
    keys = _rows(
        url,
        """
        SELECT c.relname, array_agg(a.attname ORDER BY k.n)
        FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
        CROSS JOIN unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)
        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
        WHERE i.indisprimary AND c.relnamespace = 'public'::regnamespace GROUP BY c.relname""",
    )
    assert dict(keys) == SPEC_KEYS
    definitions = _rows(url, "SELECT tablename, indexdef FROM pg_indexes WHERE schemaname = 'public'")
    indexes = {(table, definition.split(" USING btree ", 1)[1]) for table, definition in definitions}
    assert indexes >= SPEC_INDEXES
    assert (
        _one(url, "SELECT count(*) FROM information_schema.table_constraints WHERE constraint_type = 'FOREIGN KEY'")
        == 0
    )


def test_create_source_schema_postgres_then_append_seeds(pg_url):
    create_source_schema(pg_url)
    create_source_schema(pg_url)  # idempotent
    _check_schema(pg_url)
    # Seeding tables that already exist (with their keys), twice: new ids, rows added up.
    first = seed_source(pg_url, 200, campaigns=1, seed=5, now=NOW)
    second = seed_source(pg_url, 300, campaigns=2, seed=5, now=NOW)
    assert len(set(first + second)) == 3
    counts = dict(_rows(pg_url, "SELECT campaign_id::text, count(*) FROM contacts GROUP BY 1"))
    assert counts == {first[0]: 200, second[0]: 210, second[1]: 90}
    _check_schema(pg_url)


def test_create_source_schema_sqlite(tmp_path):
    nested = f"sqlite:///{tmp_path / 'a' / 'b' / 'source.sqlite'}"
    create_source_schema(nested)  # creates the parent folders
    with sqlite3.connect(nested.removeprefix("sqlite:///")) as conn:
        for table, columns in SPEC_COLUMNS.items():
            info = conn.execute(f"PRAGMA table_info({table})").fetchall()
            assert [row[1] for row in info] == list(columns)
            types = {row[1]: row[2] for row in info}
            assert all(
                types[c] == "TEXT"
                for c, (kind, _) in columns.items()
                if kind in ("uuid", "text", "jsonb") or kind.startswith("timestamp")
            )
            assert [row[1] for row in sorted(info, key=lambda r: r[5]) if row[5]] == SPEC_KEYS[table]
        indexed = {
            (t, tuple(r[2] for r in conn.execute(f"PRAGMA index_info({name})")))
            for name, t in conn.execute(
                "SELECT name, tbl_name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite_autoindex%'"
            )
        }
    assert indexed == {(t, tuple(c.strip("()").split(", "))) for t, c in SPEC_INDEXES}


def test_unsupported_url_is_refused_without_leaking_it():
    with pytest.raises(ValueError, match="unsupported scheme 'mysql'") as error:
        seed_source("mysql://user:s3cret@host/db", 10)
    assert "s3cret" not in str(error.value)


def test_postgres_seed_is_realistic_and_awkward(pg_url):
    ids = seed_source(pg_url, 2000, campaigns=6, seed=3, now=NOW)
    _check_schema(pg_url)

    # Campaigns: every status, the first the largest, the last empty, completed_at iff completed.
    assert len(ids) == 6 and all(i == i.lower() for i in ids)
    campaigns = dict(_rows(pg_url, "SELECT id::text, status FROM campaigns"))
    assert set(campaigns) == set(ids) and set(campaigns.values()) == CAMPAIGN_STATUSES
    per_campaign = dict(_rows(pg_url, "SELECT campaign_id::text, count(*) FROM contacts GROUP BY 1"))
    assert ids[-1] not in per_campaign and sum(per_campaign.values()) == 2000
    assert per_campaign[ids[0]] == max(per_campaign.values())
    assert _one(pg_url, "SELECT bool_and((status = 'completed') = (completed_at IS NOT NULL)) FROM campaigns")

    # Questions: 3 to 5 per campaign, positions from 1, one campaign with a gap.
    positions = _rows(pg_url, "SELECT array_agg(position ORDER BY position) FROM survey_questions GROUP BY campaign_id")
    assert all(3 <= len(p) <= 5 and p[0] == 1 for (p,) in positions)
    assert [1, 2, 4] in [p for (p,) in positions]

    # Contacts: every state, attempt_count equal to the attempts, 0 to 3 attempts numbered 1..n.
    assert {s for (s,) in _rows(pg_url, "SELECT DISTINCT state FROM contacts")} == STATES
    assert (
        _one(
            pg_url,
            """
        SELECT count(*) FROM contacts c LEFT JOIN (
            SELECT contact_id, count(*) n, min(attempt_number) lo, max(attempt_number) hi,
                   count(DISTINCT attempt_number) d FROM call_attempts GROUP BY contact_id) a ON a.contact_id = c.id
        WHERE c.attempt_count <> coalesce(a.n, 0) OR a.n > 3 OR a.lo <> 1 OR a.hi <> a.n OR a.d <> a.n""",
        )
        == 0
    )
    assert {n for (n,) in _rows(pg_url, "SELECT DISTINCT attempt_count FROM contacts")} == {0, 1, 2, 3}
    assert 1.3 < _one(pg_url, "SELECT count(*)::float / 2000 FROM call_attempts") < 2.1
    assert _one(pg_url, "SELECT bool_and(created_at <= updated_at AND updated_at <= %s) FROM contacts", (NOW,))
    assert _one(pg_url, "SELECT min(created_at) FROM contacts") > NOW - dt.timedelta(days=200)
    assert _one(pg_url, "SELECT count(*) FROM (SELECT created_at FROM contacts GROUP BY 1 HAVING count(*) > 1) t") > 5
    assert _one(pg_url, "SELECT bool_and((state = 'completed') = (completed_at IS NOT NULL)) FROM contacts")

    # Attempts: every status, odd timestamps, costs with 4 decimals and some nulls.
    assert {s for (s,) in _rows(pg_url, "SELECT DISTINCT status FROM call_attempts")} == STATUSES
    assert _one(pg_url, "SELECT count(*) FROM call_attempts WHERE ended_at < started_at") > 0
    assert _one(pg_url, "SELECT count(*) FROM call_attempts WHERE started_at IS NULL") > 0
    assert _one(pg_url, "SELECT count(*) FROM call_attempts WHERE ended_at IS NULL") > 0
    assert (
        _one(pg_url, "SELECT count(*) FROM call_attempts WHERE extract(microseconds FROM started_at)::int % 1000 <> 0")
        > 1000
    )
    assert _one(pg_url, "SELECT count(*) FROM call_attempts WHERE cost_usd IS NULL AND ended_at IS NOT NULL") > 0
    assert _one(pg_url, "SELECT count(*) FROM call_attempts WHERE cost_usd * 1000 <> trunc(cost_usd * 1000)") > 100
    assert _one(pg_url, "SELECT count(*) FROM call_attempts WHERE cost_usd < 0") > 0
    assert (
        _one(
            pg_url,
            "SELECT count(*) FROM call_attempts a JOIN contacts c ON c.id = a.contact_id "
            "WHERE a.campaign_id <> c.campaign_id",
        )
        > 0
    )

    # Transcripts: {"text": 300..2000 characters}, plus nulls, objects without text and non-objects.
    lengths = _rows(
        pg_url,
        "SELECT min(length(transcript->>'text')), max(length(transcript->>'text')), count(*) "
        "FROM call_attempts WHERE jsonb_typeof(transcript->'text') = 'string'",
    )[0]
    assert lengths[0] >= 300 and lengths[1] <= 2000 and lengths[2] > 1000
    kinds = {
        k
        for (k,) in _rows(
            pg_url,
            "SELECT DISTINCT CASE WHEN transcript IS NULL THEN 'sql null' "
            "WHEN jsonb_typeof(transcript) <> 'object' THEN jsonb_typeof(transcript) "
            "WHEN transcript ? 'text' THEN 'object with text' "
            "ELSE 'object without text' END FROM call_attempts",
        )
    }
    assert {"sql null", "object with text", "object without text", "array", "string"} <= kinds

    # Answers: for a share of contacts, and a few outside the campaign's positions.
    answered = _one(pg_url, "SELECT count(DISTINCT contact_id) FROM survey_responses")
    assert 500 < answered < 2000
    assert (
        _one(
            pg_url,
            "SELECT count(*) FROM survey_responses r WHERE question_position > "
            "(SELECT max(position) FROM survey_questions q WHERE q.campaign_id = r.campaign_id)",
        )
        > 0
    )

    # Awkward text where users type.
    names = [n for (n,) in _rows(pg_url, "SELECT name FROM contacts")]
    assert None in names and "" in names
    assert any("\r" in n.replace("\r\n", "") for n in names if n)  # a lone CR
    assert any("\r\n" in n for n in names if n) and any("\n" in n.replace("\r\n", "") for n in names if n)
    for first in "=+-@\t":
        assert any(n.startswith(first) for n in names if n), repr(first)
    assert any("😀" in n and "東京" in n for n in names if n)
    assert any("," in n for n in names if n) and any('"' in n for n in names if n)
    assert any("é" in n or "ñ" in n for n in names if n)
    texts = [
        t
        for (t,) in _rows(
            pg_url,
            "SELECT business_name FROM contacts UNION ALL SELECT answer "
            "FROM survey_responses UNION ALL SELECT name FROM campaigns",
        )
    ]
    assert any("👍🏽" in t for t in texts if t) and any(t.startswith("=") for t in texts if t)
    phones = [p for (p,) in _rows(pg_url, "SELECT phone_number FROM contacts")]
    valid = sum(bool(E164.match(p)) for p in phones)
    assert 0.8 < valid / len(phones) < 0.99
    assert {"555-1234", "=1+1"} <= set(phones)


@pytest.mark.parametrize("campaigns, expected", [(1, [500]), (2, [350, 150]), (4, [300, 100, 100, 0])])
def test_contacts_spread_over_campaigns(sqlite_url, campaigns, expected):
    ids = seed_source(sqlite_url, 500, campaigns=campaigns, seed=1, now=NOW)
    with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as conn:
        counts = dict(conn.execute("SELECT campaign_id, count(*) FROM contacts GROUP BY 1").fetchall())
    assert [counts.get(i, 0) for i in ids] == expected


def _timestamp(value):
    return dt.datetime.fromisoformat(value) if isinstance(value, str) else value


def _same_data(pg_url: str, sqlite_path: str) -> bool:
    """Whether a PostgreSQL and a SQLite source hold the same rows, read back to Python values."""
    with sqlite3.connect(sqlite_path) as lite:
        for table, columns in SPEC_COLUMNS.items():
            pg_rows = _rows(pg_url, f"SELECT * FROM {table} ORDER BY 1, 2, 3")
            lite_rows = lite.execute(f"SELECT * FROM {table} ORDER BY 1, 2, 3").fetchall()
            if len(pg_rows) != len(lite_rows):
                return False
            for pg_row, lite_row in zip(pg_rows, lite_rows, strict=True):
                for (kind, _), a, b in zip(columns.values(), pg_row, lite_row, strict=True):
                    if kind == "uuid":
                        a = str(a)
                    elif kind.startswith("timestamp"):
                        b = _timestamp(b)
                    elif kind == "numeric" and b is not None:
                        b = Decimal(repr(b)).quantize(Decimal("0.0001"))
                    elif kind == "jsonb" and b is not None:
                        b = json.loads(b)
                    if a != b:
                        return False
    return True


def test_seed_is_deterministic_and_the_same_in_sqlite(make_pg_database, tmp_path):
    first, second = make_pg_database(), make_pg_database()
    ids = seed_source(first, 500, campaigns=3, seed=11, now=NOW)
    assert seed_source(second, 500, campaigns=3, seed=11, now=NOW) == ids
    for table in SPEC_COLUMNS:
        assert _rows(first, f"SELECT * FROM {table} ORDER BY 1, 2, 3") == _rows(
            second, f"SELECT * FROM {table} ORDER BY 1, 2, 3"
        ), table
    same, other = tmp_path / "same.sqlite", tmp_path / "other.sqlite"
    assert seed_source(f"sqlite:///{same}", 500, campaigns=3, seed=11, now=NOW) == ids
    assert _same_data(first, str(same))
    assert seed_source(f"sqlite:///{other}", 500, campaigns=3, seed=12, now=NOW) != ids
    with sqlite3.connect(same) as a, sqlite3.connect(other) as b:
        query = "SELECT name, phone_number, state FROM contacts ORDER BY created_at, id"
        assert a.execute(query).fetchall() != b.execute(query).fetchall()


def test_sqlite_seed_matches_the_spec_types(sqlite_url):
    seed_source(sqlite_url, 300, campaigns=3, seed=4, now=NOW)
    with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as conn:
        assert conn.execute("SELECT count(*) FROM contacts").fetchone()[0] == 300
        created, cost, transcript = conn.execute(
            "SELECT c.created_at, a.cost_usd, a.transcript FROM call_attempts a JOIN contacts c ON c.id = a.contact_id "
            "WHERE a.cost_usd IS NOT NULL AND a.transcript IS NOT NULL LIMIT 1"
        ).fetchone()
        assert _timestamp(created).utcoffset() == dt.timedelta(0)
        assert isinstance(cost, float)
        json.loads(transcript)
        assert conn.execute(
            "SELECT typeof(cost_usd) FROM call_attempts WHERE cost_usd IS NOT NULL GROUP BY 1"
        ).fetchall() == [("real",)]


def test_size_mix_gives_heavy_tailed_campaigns(sqlite_url, capsys):
    """`seed --size-mix`: each band's share of the campaigns, sizes within the band, the same for a seed."""
    from exports_pipeline.cli import main
    from exports_pipeline.core.seed import mixed_sizes

    mix = [(90, 1, 40), (9, 100, 400), (1, 2000, 4000)]
    sizes = mixed_sizes(1000, mix, seed=3)
    assert len(sizes) == 1000 and sizes == mixed_sizes(1000, mix, seed=3) != mixed_sizes(1000, mix, seed=4)
    assert [sum(lo <= n <= hi for n in sizes) for _, lo, hi in mix] == [900, 90, 10]
    assert max(sizes.index(n) for n in sizes if n >= 2000) > 100  # the large ones are spread out, not first
    with pytest.raises(ValueError, match="percents adding up to 100"):
        mixed_sizes(10, [(90, 1, 40)])

    assert main(["seed", "--url", sqlite_url, "--campaigns", "20", "--size-mix", "50:1-3,50:10-12", "--seed", "2"]) == 0
    ids = capsys.readouterr().out.split()
    with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as conn:
        counts = dict(conn.execute("SELECT campaign_id, count(*) FROM contacts GROUP BY 1").fetchall())
    assert [counts.get(i, 0) for i in ids] == mixed_sizes(20, [(50, 1, 3), (50, 10, 12)], seed=2)
    with pytest.raises(SystemExit):
        main(["seed", "--url", sqlite_url, "--contacts", "5", "--size-mix", "100:1-2"])
