"""A hand-built source with every awkward case of SPEC section 3, loadable into PostgreSQL or SQLite.

The expected export rows are written out by hand below (EXPECTED_ROWS), not computed by the code
under test.
"""

from __future__ import annotations

import json
import sqlite3

import psycopg

from exports_pipeline.core.seed import create_source_schema
from exports_pipeline.core.sourceurl import sqlite_path

C1 = "c1000000-0000-4000-8000-000000000001"  # the campaign under test
C2 = "c2000000-0000-4000-8000-000000000002"  # another campaign (misfiled rows point at it)
EMPTY = "c3000000-0000-4000-8000-000000000003"  # no contacts, no questions
OWNER = "0a000000-0000-4000-8000-00000000000a"
K1, K2, K3, K4, K5 = (f"a0000000-0000-4000-8000-00000000000{i}" for i in range(1, 6))

LONG_TEXT = "a" * 99 + "😀" + "bcd"  # the 100th code point is the emoji

CAMPAIGNS = [
    # id, name, assistant_name, owner_id, owner_email, status, created_at, updated_at, completed_at
    (
        C1,
        'Spring, "promo"\r\nline',
        '=HYPERLINK("x")',
        OWNER,
        "owner@example.com",
        "running",
        "2026-01-01 00:00:00+00:00",
        "2026-01-05 00:00:00+00:00",
        None,
    ),
    (
        C2,
        "Other",
        None,
        OWNER,
        None,
        "completed",
        "2026-01-01 00:00:00+00:00",
        "2026-01-05 00:00:00+00:00",
        "2026-01-04 00:00:00+00:00",
    ),
    (EMPTY, "Empty", "Bot", OWNER, None, "draft", "2026-01-01 00:00:00+00:00", "2026-01-01 00:00:00+00:00", None),
]
QUESTIONS = [(C1, 1, 'How, "really"?'), (C1, 2, "Score"), (C1, 4, "Comments"), (C2, 1, "Other q")]
CONTACTS = [
    # id, campaign_id, external_contact_id, name, business_name, phone_number, state, attempt_count,
    # last_attempt_at, completed_at, created_at, updated_at
    (
        K1,
        C1,
        "",
        'Zoë, "Z"',
        "Café 東京 😀",
        "+15551234567",
        "completed",
        3,
        "2026-01-02 12:00:00.123999+02:00",
        "1969-12-31 23:59:59.9995+00:00",
        "2026-01-01 10:00:00+00:00",
        "2026-01-03 00:00:00+00:00",
    ),
    (
        K3,
        C1,
        "\nfirst line empty",
        None,
        "",
        "555-1234",
        "pending",
        0,
        None,
        None,
        "2026-01-01 11:00:00.000001+00:00",
        "2026-01-04 00:00:00+00:00",
    ),
    (
        K2,
        C1,
        "@ext",
        "\rcarriage",
        "-minus",
        "=1+1",
        "refused",
        1,
        None,
        None,
        "2026-01-01 11:00:00.000001+00:00",
        "2026-01-03 00:00:00+00:00",
    ),
    (
        K4,
        C1,
        "x,1",
        "\tTabbed",
        None,
        "+0123",
        "excluded",
        1,
        None,
        None,
        "1960-05-05 05:05:05.123456-05:00",
        "2026-01-02 00:00:00+00:00",
    ),
    (
        K5,
        C2,
        None,
        "Other person",
        None,
        "+442071234567",
        "completed",
        1,
        None,
        None,
        "2026-01-01 09:00:00+00:00",
        "2026-01-02 00:00:00+00:00",
    ),
]
ATTEMPTS = [
    # id, campaign_id, contact_id, attempt_number, status, started_at, ended_at, ended_reason, cost_usd,
    # recording_url, transcript
    (
        "b0000000-0000-4000-8000-000000000001",
        C1,
        K1,
        1,
        "failed",
        "2026-01-02 09:00:00+00:00",
        "2026-01-02 09:01:05+00:00",
        None,
        "0.1000",
        None,
        {"text": "short"},
    ),
    (
        "b0000000-0000-4000-8000-000000000002",
        C1,
        K1,
        2,
        "completed",
        "2026-01-02 10:00:00.0009+00:00",
        "2026-01-02 10:00:00.3001+00:00",
        "customer-ended-call",
        "12345678.9999",
        "https://rec.example/2?a=1,b=2",
        {"text": LONG_TEXT},
    ),
    # same attempt_number, no started_at: counts as earlier than the one above
    ("b0000000-0000-4000-8000-000000000003", C1, K1, 2, "no_answer", None, None, None, "-1.5000", None, None),
    # K1's attempt filed under another campaign: not part of the export (higher number, still ignored)
    (
        "b0000000-0000-4000-8000-000000000004",
        C2,
        K1,
        5,
        "completed",
        "2026-01-02 11:00:00+00:00",
        "2026-01-02 11:00:10+00:00",
        None,
        "100.0000",
        None,
        None,
    ),
    (
        "b0000000-0000-4000-8000-000000000005",
        C1,
        K2,
        1,
        "busy",
        "2150-01-01 00:00:05.0009+00:00",
        "2150-01-01 00:00:02.5+00:00",
        "+plus reason",
        None,
        None,
        [1, 2],
    ),
    (
        "b0000000-0000-4000-8000-000000000006",
        C1,
        K4,
        1,
        "completed",
        "1960-05-05 10:00:00.0001+00:00",
        None,
        None,
        "0",
        None,
        {"text": 5},
    ),
    # tie on number and started_at: the greater id wins
    (
        "b0000000-0000-4000-8000-00000000000f",
        C1,
        K4,
        1,
        "in_progress",
        "1960-05-05 10:00:00.0001+00:00",
        None,
        None,
        None,
        None,
        {"other": "no text key"},
    ),
    # filed under C1 for C2's contact: not part of C1's export
    ("b0000000-0000-4000-8000-000000000007", C1, K5, 1, "completed", None, None, None, "1.0000", None, None),
]
RESPONSES = [
    # campaign_id, contact_id, question_position, answer, answered_at
    (C1, K1, 1, "", "2026-01-02 10:05:00+00:00"),
    (C1, K1, 2, "=1+1", "2026-01-02 10:05:00+00:00"),
    (C1, K1, 4, "Line1\nLine2", "2026-01-02 10:05:00+00:00"),
    (C1, K1, 7, "out of range", "2026-01-02 10:05:00+00:00"),
    (C1, K1, 0, "zero", "2026-01-02 10:05:00+00:00"),
    (C2, K1, 3, "filed elsewhere", "2026-01-02 10:05:00+00:00"),
    (C1, K5, 1, "C2's contact", "2026-01-02 10:05:00+00:00"),
    (C1, K2, 2, "@mention", None),
]

HEADER = [
    "campaign_id",
    "campaign_name",
    "assistant_name",
    "contact_id",
    "external_contact_id",
    "name",
    "business_name",
    "phone_number",
    "outcome",
    "attempt_count",
    "last_attempt_at",
    "completed_at",
    "call_status",
    "call_started_at",
    "call_ended_at",
    "call_duration_seconds",
    "ended_reason",
    "call_cost_usd",
    "total_cost_usd",
    "recording_url",
    "transcript_summary",
    "q1_answer",
    "q2_answer",
    "q3_answer",
    "q4_answer",
]
NAME, ASSISTANT = 'Spring, "promo"\r\nline', '\'=HYPERLINK("x")'
# The CSV's values, None for an empty (null) field; order: created_at, then id (K2 before K3: same instant,
# inserted the other way round).
EXPECTED_ROWS = [
    [
        C1,
        NAME,
        ASSISTANT,
        K4,
        "x,1",
        "'\tTabbed",
        None,
        "'+0123",
        "excluded",
        "1",
        None,
        None,
        "in_progress",
        "1960-05-05T10:00:00.000Z",
        None,
        None,
        None,
        None,
        "0.0000",
        None,
        None,
        None,
        None,
        None,
        None,
    ],
    [
        C1,
        NAME,
        ASSISTANT,
        K1,
        "",
        'Zoë, "Z"',
        "Café 東京 😀",
        "+15551234567",
        "completed",
        "3",
        "2026-01-02T10:00:00.123Z",
        "1969-12-31T23:59:59.999Z",
        "completed",
        "2026-01-02T10:00:00.000Z",
        "2026-01-02T10:00:00.300Z",
        "0.300",
        "customer-ended-call",
        "12345678.9999",
        "12345677.5999",
        "https://rec.example/2?a=1,b=2",
        "a" * 99 + "😀",
        "",
        "'=1+1",
        None,
        "Line1\nLine2",
    ],
    [
        C1,
        NAME,
        ASSISTANT,
        K2,
        "'@ext",
        "'\rcarriage",
        "'-minus",
        "'=1+1",
        "refused",
        "1",
        None,
        None,
        "busy",
        "2150-01-01T00:00:05.000Z",
        "2150-01-01T00:00:02.500Z",
        "-2.500",
        "'+plus reason",
        None,
        None,
        None,
        None,
        None,
        "'@mention",
        None,
        None,
    ],
    [
        C1,
        NAME,
        ASSISTANT,
        K3,
        "'\nfirst line empty",
        None,
        "",
        "555-1234",
        "pending",
        "0",
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
    ],
]
# A row filed under one campaign for another campaign's contact counts in the export of the campaign it is
# filed under: here the attempt and the answer filed under C1 for K5 (C2's); those filed under C2 for K1
# count in C2's export.
EXPECTED_ANOMALIES = {
    "attempts_other_campaign": 1,
    "answers_other_campaign": 1,
    "answers_out_of_range": 2,
    "transcript_not_object": 1,
    "transcript_text_not_string": 1,
    "transcript_invalid_json": 0,
    "rows_with_infinite_timestamps": 0,
    "xlsx_cells_cut": 0,
}


def csv_field(value: str | None) -> str:
    """RFC 4180 as SPEC section 3 words it, written independently of the code under test."""
    if value is None:
        return ""
    if value == "" or any(ch in value for ch in ',"\r\n'):
        return '"' + value.replace('"', '""') + '"'
    return value


def expected_csv(rows=EXPECTED_ROWS, header=HEADER, bom=True) -> bytes:
    lines = [",".join(header)] + [",".join(csv_field(v) for v in row) for row in rows]
    return ("\ufeff" if bom else "").encode() + ("\n".join(lines) + "\n").encode()


def load(url: str, *, sqlite_money_as_real: bool = False, extra_attempts: list[tuple] = ()) -> None:
    """Create the schema and insert the awkward data (PostgreSQL or SQLite)."""
    create_source_schema(url)
    attempts = [
        (*a[:10], json.dumps(a[10]) if a[10] is not None else None) for a in list(ATTEMPTS) + list(extra_attempts)
    ]
    tables = [
        ("campaigns", CAMPAIGNS),
        ("survey_questions", QUESTIONS),
        ("contacts", CONTACTS),
        ("call_attempts", attempts),
        ("survey_responses", RESPONSES),
    ]
    columns = {
        "campaigns": "id, name, assistant_name, owner_id, owner_email, status, created_at, updated_at, completed_at",
        "survey_questions": "campaign_id, position, prompt",
        "contacts": "id, campaign_id, external_contact_id, name, business_name, phone_number, state, attempt_count, "
        "last_attempt_at, completed_at, created_at, updated_at",
        "call_attempts": "id, campaign_id, contact_id, attempt_number, status, started_at, ended_at, ended_reason, "
        "cost_usd, recording_url, transcript",
        "survey_responses": "campaign_id, contact_id, question_position, answer, answered_at",
    }
    if url.startswith("sqlite"):
        if sqlite_money_as_real:
            attempts[:] = [(*a[:8], float(a[8]) if a[8] is not None else None, *a[9:]) for a in attempts]
        with sqlite3.connect(sqlite_path(url)) as conn:
            for table, rows in tables:
                marks = ", ".join("?" * len(rows[0]))
                conn.executemany(f"INSERT INTO {table} ({columns[table]}) VALUES ({marks})", rows)
        return
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        for table, rows in tables:
            marks = ", ".join(["%s"] * len(rows[0]))
            cur.executemany(f"INSERT INTO {table} ({columns[table]}) VALUES ({marks})", rows)
