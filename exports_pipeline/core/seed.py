"""Synthetic source database: the demo's data, the tests' fixtures and the benchmark's load.

Creates the source tables of SPEC section 2 and fills them with campaigns, contacts, call attempts
and survey answers whose distributions look like production and whose text is as awkward as what
users type (commas, quotes, lone CR, CRLF, accents, CJK, emoji, leading = + - @ TAB, empty strings
next to NULL), plus the anomalies the exporter must count rather than fail on (transcripts that are
not objects, answers out of range, attempts filed under another campaign, negative durations).

Generation is vectorised with polars over SHAKE-128 streams keyed by a seeded ``random.Random``,
so a seed gives the same data on every run and the same rows in PostgreSQL and SQLite.
PostgreSQL is loaded with binary COPY (CSV costs the server 3-4 times more CPU, and a gigabyte of
transcript JSON through CSV more than everything else together) on three connections at once,
with keys and indexes built after the load: 1M contacts cost about 65 CPU-seconds in all. SQLite
(demos and tests, up to ~100k contacts) stores uuids and timestamps as ISO 8601 TEXT
(``2026-01-02T03:04:05.123456+00:00``), cost_usd as REAL and transcripts as JSON TEXT.
"""

from __future__ import annotations

import array
import binascii
import contextlib
import datetime as dt
import functools
import hashlib
import itertools
import json
import random
import sqlite3
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import psycopg
import pyarrow as pa
import pyarrow.compute as pc

from exports_pipeline.core.sourceurl import POSTGRESQL, source_dialect, sqlite_path

# --- schema -----------------------------------------------------------------------------------

_COLUMNS = {
    "campaigns": [
        ("id", "uuid", ""),
        ("name", "text", "NOT NULL"),
        ("assistant_name", "text", ""),
        ("owner_id", "uuid", "NOT NULL"),
        ("owner_email", "text", ""),
        ("status", "text", "NOT NULL"),
        ("created_at", "timestamptz", "NOT NULL"),
        ("updated_at", "timestamptz", "NOT NULL"),
        ("completed_at", "timestamptz", ""),
    ],
    "survey_questions": [
        ("campaign_id", "uuid", ""),
        ("position", "smallint", ""),
        ("prompt", "text", "NOT NULL"),
    ],
    "contacts": [
        ("id", "uuid", ""),
        ("campaign_id", "uuid", "NOT NULL"),
        ("external_contact_id", "text", ""),
        ("name", "text", ""),
        ("business_name", "text", ""),
        ("phone_number", "text", "NOT NULL"),
        ("state", "text", "NOT NULL"),
        ("attempt_count", "int", "NOT NULL"),
        ("last_attempt_at", "timestamptz", ""),
        ("completed_at", "timestamptz", ""),
        ("created_at", "timestamptz", "NOT NULL"),
        ("updated_at", "timestamptz", "NOT NULL"),
    ],
    "call_attempts": [
        ("id", "uuid", ""),
        ("campaign_id", "uuid", "NOT NULL"),
        ("contact_id", "uuid", "NOT NULL"),
        ("attempt_number", "int", "NOT NULL"),
        ("status", "text", "NOT NULL"),
        ("started_at", "timestamptz", ""),
        ("ended_at", "timestamptz", ""),
        ("ended_reason", "text", ""),
        ("cost_usd", "numeric(12,4)", ""),
        ("recording_url", "text", ""),
        ("transcript", "jsonb", ""),
    ],
    "survey_responses": [
        ("campaign_id", "uuid", ""),
        ("contact_id", "uuid", ""),
        ("question_position", "smallint", ""),
        ("answer", "text", ""),
        ("answered_at", "timestamptz", ""),
    ],
}
_KEYS = {
    "campaigns": "id",
    "survey_questions": "campaign_id, position",
    "contacts": "id",
    "call_attempts": "id",
    "survey_responses": "contact_id, question_position",
}
_INDEXES = [
    ("contacts_campaign_id_idx", "contacts", "campaign_id"),
    ("contacts_campaign_id_updated_at_idx", "contacts", "campaign_id, updated_at"),
    ("call_attempts_campaign_id_idx", "call_attempts", "campaign_id"),
    ("call_attempts_contact_id_idx", "call_attempts", "contact_id"),
    ("survey_responses_campaign_id_idx", "survey_responses", "campaign_id"),
]
_SQLITE_TYPES = {
    "uuid": "TEXT",
    "text": "TEXT",
    "smallint": "INTEGER",
    "int": "INTEGER",
    "timestamptz": "TEXT",
    "numeric(12,4)": "REAL",
    "jsonb": "TEXT",
}


def _table_ddl(table: str, sqlite: bool, keyed: bool = True) -> str:
    parts = [
        " ".join(filter(None, [name, _SQLITE_TYPES[kind] if sqlite else kind, constraint]))
        for name, kind, constraint in _COLUMNS[table]
    ]
    if keyed:
        parts.append(f"PRIMARY KEY ({_KEYS[table]})")
    return f"CREATE TABLE IF NOT EXISTS {table} ({', '.join(parts)})"


def _names(table: str) -> list[str]:
    return [name for name, _, _ in _COLUMNS[table]]


def _index_ddl(tables=_KEYS) -> list[str]:
    return [
        f"CREATE INDEX IF NOT EXISTS {name} ON {table} ({cols})" for name, table, cols in _INDEXES if table in tables
    ]


def _sqlite_path(url: str) -> Path | None:
    """The file of a sqlite:/// URL, None for a PostgreSQL URL; anything else is refused."""
    if source_dialect(url) == POSTGRESQL:
        return None
    path = sqlite_path(url)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _pg_connect(url: str, autocommit: bool = False) -> psycopg.Connection:
    return psycopg.connect(url, autocommit=autocommit, application_name="exports-pipeline-seed")


def create_source_schema(url: str) -> None:
    """Create the five source tables and their production indexes, if absent."""
    path = _sqlite_path(url)
    statements = [_table_ddl(t, path is not None) for t in _COLUMNS] + _index_ddl()
    if path is None:
        with _pg_connect(url, autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement)
    else:
        with contextlib.closing(sqlite3.connect(path)) as conn:
            conn.executescript(";\n".join(statements) + ";")


# --- vocabulary -------------------------------------------------------------------------------

_STATES = ["pending", "in_progress", "completed", "refused", "not_reached", "excluded"]
_STATUSES = ["queued", "ringing", "in_progress", "completed", "no_answer", "busy", "failed", "refused"]
_CAMPAIGN_STATUSES = ["completed", "running", "paused", "cancelled", "scheduled"]  # cycled; "draft" is last

_CAMPAIGN_NAMES = [
    "Customer satisfaction, Q3",
    'Renewal "winback" campaign',
    "Enquête été — Île-de-France",
    "東京 customer check-in 😀",
    "=Quarterly NPS",
    "Line\rbreak campaign",
    "Follow-up\r\ncalls",
    "@mentions test",
    "-Draft copy",
    "+Upsell 👍🏽",
    "\tTabbed campaign",
    "Multi\nline",
]
_ASSISTANTS = ["Ava", "Léa (voix française)", None, "", 'Assistant "Max"', "ボット", "=Bot"]
_OWNER_EMAILS = ["ops@example.com", None, "ünïcode.user@example.com", "first.last+tag@example.co.uk", ""]
_PROMPTS = [
    "How satisfied were you with the call, from 1 to 5?",
    'Would you say the agent was "helpful"?',
    "¿Recomendaría nuestro servicio?",
    "Any other comments, questions or concerns?",
    "東京のオフィスを訪問しましたか？",
    "Rate us 👍 or 👎",
    "=Did the caller confirm the address?",
    "Line one\nline two of the prompt",
    "Preferred callback time (e.g. 9:00, 12:30)",
]
_FIRST = [
    "James",
    "María",
    "José",
    "Zoë",
    "François",
    "Søren",
    "Ngozi",
    "Wei",
    "Aiko",
    "Ólafur",
    "Mary-Jane",
    "D'Angelo",
    "Iñaki",
    "Chloé",
    "Mohammed",
    "Priya",
    "美咲",
    "Björn",
    "Łukasz",
    "Anne",
]
_LAST = [
    "Smith",
    "García",
    "Müller",
    "O'Brien",
    "Nguyễn",
    "Østergaard",
    "山田",
    "Dubois",
    "Kowalski",
    "Smith-Jones",
    "van der Berg",
    "Núñez",
    "Johnson",
    "Lefèvre",
    "Ivanova",
    "Kim",
    "Çelik",
    "Brown",
]
_AWKWARD = [
    "Smith, John",
    'Robert "Bob" Jones',
    "Anna\rBell",
    "Line\nBreak",
    "Windows\r\nUser",
    "=1+1",
    '=HYPERLINK("http://evil.example","click")',
    "+44 Caller",
    "-Minus Sign",
    "@handle",
    "\tTabbed",
    " Leading space",
    "Trailing space ",
    "😀 Happy Customer",
    "Thumbs 👍🏽 Up",
    "東京 太郎 😀",
    "Émilie Ñandú",
    "",
    ",",
    '"',
    "'Apostrophe",
    "Robert'); DROP TABLE contacts;--",
]
_BUSINESSES = [
    "Acme, Inc.",
    'Joe\'s "Best" Pizza',
    "Café Ñandú",
    "東京商事",
    "=CMD|' /C calc'!A0",
    "@Risk Ltd",
    "+Plus Co",
    "-Minus GmbH",
    "\tTab Corp",
    "Multi\r\nLine LLC",
    "Line\nFeed Ltd",
    "CR\rOnly Inc",
    "👍🏽 Thumbs Co",
    "Müller & Söhne",
    "Plain Business",
    "Smith Plumbing",
]
_EXTERNAL_IDS = ["00042", "=A1", "-17", "1E+10", "ext,with,commas", '"quoted"', "+33", "@crm", "", "0"]
_BAD_PHONES = [
    "555-1234",
    "=1+1",
    "(555) 123-4567",
    "+1 555 123 4567",
    "+0123456789",
    "",
    "15551234567",
    "+15551234567 ext. 12",
    "0033 6 12 34 56 78",
    "-5551234",
    "@555",
    "\t+15551234567",
    "+1555123456789012",
]
_COUNTRY_CODES = ["+44", "+33", "+81", "+49", "+34", "+61"]
_ANSWERS = [
    "5",
    "4",
    "3",
    "2",
    "1",
    "Yes",
    "No",
    "Oui, très satisfait",
    "Sí, claro",
    "はい",
    "😀",
    "👍🏽",
    "Maybe, not sure",
    'He said "never"',
    "line one\nline two",
    "windows\r\nline",
    "cr\ronly",
    "=1+1",
    "+1",
    "-1",
    "@support",
    "\tindented",
    "",
    None,
    "Ça dépend…",
]
_SENTENCES = [
    "Hello, this is Ava calling on behalf of Acme.",
    "Is now a good time to talk?",
    "Yes, go ahead.",
    'I said "no" last time, didn\'t I?',
    "Could you confirm your address, please?",
    "It's 12, rue de l'Église, Montréal.",
    "Très bien, merci beaucoup !",
    "东京的天气怎么样？",
    "We'd love your feedback 😀",
    "Thumbs up 👍🏽 from me.",
    "The total was $12.50, including tax.",
    "=SUM(A1:A9) is what the spreadsheet showed.",
    "Sorry, could you repeat that?",
    "Señor Núñez will call back tomorrow at 9:30.",
    "No, thank you; please remove me from the list.",
    "Great, I've noted that down.",
    "Is there anything else I can help with?",
    "Goodbye!",
]
_TRANSCRIPT_PREFIXES = ["", "", "", "", "", "=== Transcript ===\n", "- ", "+ ", "@agent ", "\t"]
_ODD_TRANSCRIPTS = [
    {"summary": "Caller asked for a callback, no transcript kept"},
    {"text": None},
    {"text": 12345},
    ["Agent: Hello", "Contact: Bye"],
    "Agent: a transcript stored as a bare JSON string",
    None,
    {},
]
_TEXT_TRANSCRIPTS = 2048


def _table(weights: dict) -> list:
    """A weighted lookup table of 100 entries, indexed by a uniform draw in 0..99."""
    table = [value for value, weight in weights.items() for _ in range(weight)]
    assert len(table) == 100, weights
    return table


_STATE_TABLE = _table({0: 8, 1: 4, 2: 45, 3: 10, 4: 28, 5: 5})
_COUNT_TABLE = list(
    itertools.chain.from_iterable(
        _table(w)
        for w in [
            {0: 100},
            {1: 50, 2: 30, 3: 20},
            {1: 60, 2: 25, 3: 15},  # pending, in_progress, completed
            {1: 60, 2: 25, 3: 15},
            {1: 15, 2: 25, 3: 60},
            {0: 70, 1: 30},  # refused, not_reached, excluded
        ]
    )
)
# Status of the contact's final attempt by contact state; row 6 is for the earlier attempts.
_FINAL_STATUS_TABLE = list(
    itertools.chain.from_iterable(
        _table(w)
        for w in [
            {0: 100},
            {0: 30, 1: 20, 2: 50},
            {3: 100},
            {7: 100},
            {4: 60, 5: 20, 6: 20},
            {6: 50, 4: 50},
            {4: 60, 5: 20, 6: 20},
        ]
    )
)
_DURATION_RANGE_S = [None, None, None, (30, 900), (15, 45), (1, 6), (0, 3), (5, 120)]
_REASON_TABLE = list(
    itertools.chain.from_iterable(
        _table(w)
        for w in [
            {None: 100},
            {None: 100},
            {None: 100},
            {
                "customer-ended-call": 50,
                "assistant-ended-call": 40,
                "silence-timed-out": 5,
                'assistant said "goodbye", then hung up': 5,
            },
            {"customer-did-not-answer": 70, "voicemail": 30},
            {"customer-busy": 100},
            {
                "twilio-failed-to-connect-call": 40,
                "pipeline-error-openai-llm-failed": 30,
                'error: SIP 503, "Service Unavailable"': 20,
                None: 10,
            },
            {"customer-ended-call": 60, "Refusé — « ne plus appeler »": 20, "": 20},
        ]
    )
)

_DAY_US = 86_400_000_000
_SECOND_US = 1_000_000


# --- generation -------------------------------------------------------------------------------


@dataclass
class _Campaign:
    id: str
    contacts: int
    positions: list[int]
    start_us: int  # contacts are created from here
    end_us: int  # last activity
    row: tuple  # values of the campaigns row, timestamps as epoch microseconds


_UUID_VERSION = bytes((b & 0x0F) | 0x40 for b in range(256))  # byte 6: version 4
_UUID_VARIANT = bytes((b & 0x3F) | 0x80 for b in range(256))  # byte 8: RFC 4122 variant
_UUID_HEX_AT = [i for i in range(36) if i not in (8, 13, 18, 23)]  # where the 32 hex digits go


class _Bits:
    """Vectorised random draws: SHAKE-128 streams keyed by a seeded ``random.Random``.

    Both are specified algorithms, so a seed gives the same data on every platform and version.
    """

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def _bytes(self, size: int) -> bytes:
        return hashlib.shake_128(self.rng.getrandbits(128).to_bytes(16, "little")).digest(size)

    def _ints(self, n: int, kind: pa.DataType) -> pl.Series:
        buffer = pa.py_buffer(self._bytes(kind.byte_width * n))
        return pl.from_arrow(pa.Array.from_buffers(kind, n, [None, buffer]))

    def below(self, n: int, m: int) -> pl.Series:
        """Uniform integers in 0..m-1 (32-bit draws for small m: a negligible bias)."""
        return (self._ints(n, pa.uint32() if m <= 1 << 16 else pa.uint64()) % m).cast(pl.Int64)

    def unit(self, n: int) -> pl.Series:
        """Uniform floats in [0, 1) with 53 random bits (enough for microseconds over months)."""
        return (self._ints(n, pa.uint64()) // 2048).cast(pl.Float64) / float(2**53)

    def uuids(self, n: int) -> pl.Series:
        """Random version-4 UUIDs in canonical lowercase form."""
        raw = bytearray(self._bytes(16 * n))
        raw[6::16] = raw[6::16].translate(_UUID_VERSION)
        raw[8::16] = raw[8::16].translate(_UUID_VARIANT)
        hexed = raw.hex().encode()
        text = bytearray(b"-" * (36 * n))
        for source, target in enumerate(_UUID_HEX_AT):
            text[target::36] = hexed[source::32]
        offsets = array.array("i", range(0, 36 * n + 1, 36))
        return pl.from_arrow(pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(text)]))


def _pick(values: list, index: pl.Series | pl.Expr) -> pl.Expr:
    """values[index] as an expression (None entries give nulls)."""
    return pl.lit(pl.Series(values)).gather(index)


@functools.cache
def _transcript_pool() -> list[str]:
    """JSON texts of transcripts: many {"text": ...} objects of 300-2,000 characters, then odd ones.

    Each text is a stretch, starting at a line, of one long random dialogue. The pool is the same
    for every seed (the seed decides which attempt gets which) and is built once per process.
    """
    rng = random.Random("exports-seed-transcripts")
    lines = [
        speaker + sentence + end
        for speaker in ("Agent: ", "Contact: ")
        for sentence in _SENTENCES
        for end in ("\n", "\n", "\r\n")
    ]
    dialogue = [lines[b % len(lines)] for b in rng.randbytes(30_000)]
    starts = list(itertools.accumulate(map(len, dialogue), initial=0))[: len(dialogue) // 2]
    text = "".join(dialogue)
    pool = []
    for i in range(_TEXT_TRANSCRIPTS):
        length = 300 + (i * 1701) // _TEXT_TRANSCRIPTS  # lengths spread evenly over 300..2000
        start = rng.choice(starts)
        pool.append({"text": (rng.choice(_TRANSCRIPT_PREFIXES) + text[start : start + length])[:length]})
    return [json.dumps(t, ensure_ascii=False) for t in pool + _ODD_TRANSCRIPTS]


def mixed_sizes(campaigns: int, mix: Sequence[tuple[float, int, int]], seed: int = 0) -> list[int]:
    """Contacts per campaign drawn from bands of (percent of the campaigns, fewest, most contacts): each
    band gets its share of the campaigns, rounded (the first band takes what rounding leaves), sizes
    uniform within a band, the bands shuffled among the campaigns; the same for a seed. For loads whose
    campaign sizes are heavy-tailed, as in production (most small, a few large)."""
    if (
        campaigns < 1
        or not mix
        or any(p < 0 or lo < 0 or hi < lo for p, lo, hi in mix)
        or abs(sum(p for p, _, _ in mix) - 100) > 1e-9
    ):
        raise ValueError(
            "a size mix needs bands of (percent, fewest, most) with 0 <= fewest <= most, percents adding up to 100"
        )
    counts = [round(campaigns * p / 100) for p, _, _ in mix[1:]]
    counts.insert(0, campaigns - sum(counts))
    if counts[0] < 0:
        raise ValueError(f"the size mix's shares round to more than {campaigns} campaigns")
    rng = random.Random(f"exports-seed-sizes:{seed}")
    sizes = [rng.randint(lo, hi) for (_, lo, hi), n in zip(mix, counts, strict=True) for _ in range(n)]
    rng.shuffle(sizes)
    return sizes


def _split(contacts: int, campaigns: int) -> list[int]:
    """Contacts per campaign: the first holds most; with 3+ campaigns the last holds none."""
    if campaigns == 1:
        return [contacts]
    if campaigns == 2:
        return [contacts - contacts * 3 // 10, contacts * 3 // 10]
    each = contacts * 2 // 5 // (campaigns - 2)
    return [contacts - each * (campaigns - 2)] + [each] * (campaigns - 2) + [0]


def _make_campaigns(rng: random.Random, sizes: list[int], offset: int, now_us: int) -> list[_Campaign]:
    result, count = [], len(sizes)
    for i, n in enumerate(sizes):
        g = offset + i  # global index: appended campaigns continue the name and status cycles
        status = "draft" if count >= 3 and i == count - 1 else _CAMPAIGN_STATUSES[g % len(_CAMPAIGN_STATUSES)]
        start = now_us - rng.randrange(60 * _DAY_US, 120 * _DAY_US)
        end = now_us - rng.randrange(_DAY_US, 14 * _DAY_US) if status in ("completed", "cancelled") else now_us
        created = start - rng.randrange(_DAY_US, 10 * _DAY_US)
        updated = end if status in ("completed", "cancelled") else now_us - rng.randrange(0, 2 * _DAY_US)
        n_questions = 4 if g == 1 else 3 + g % 3
        positions = [1, 2, 4] if g == 1 else list(range(1, n_questions + 1))  # campaign 2 has a gap
        cid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        name = _CAMPAIGN_NAMES[g % len(_CAMPAIGN_NAMES)]
        if g >= len(_CAMPAIGN_NAMES):
            name += f" ({g // len(_CAMPAIGN_NAMES) + 1})"
        row = (
            cid,
            name,
            _ASSISTANTS[g % len(_ASSISTANTS)],
            str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            _OWNER_EMAILS[g % len(_OWNER_EMAILS)],
            status,
            created,
            max(updated, created),
            end if status == "completed" else None,
        )
        result.append(_Campaign(cid, n, positions, start, end, row))
    return result


def _questions(campaigns: list[_Campaign]) -> pl.DataFrame:
    rows = [(c.id, p, _PROMPTS[(i + p) % len(_PROMPTS)]) for i, c in enumerate(campaigns) for p in c.positions]
    return pl.DataFrame(rows, schema=_names("survey_questions"), orient="row")


def _chunk(
    bits: _Bits, camp: _Campaign, other_campaign: str, first: int, n: int, now_us: int, transcripts: int
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """n contacts of one campaign with their attempts and answers.

    Timestamps are epoch microseconds, cost_usd is in ten-thousandths of a dollar and transcript is
    an index into the transcript pool (the backends convert them). The steps draw from bits in a
    fixed order (contacts, attempts, answers), which keeps a seed's data the same.
    """
    drawn = _draw_contacts(bits, camp, n)
    attempts = _attempt_outcomes(camp, other_campaign, transcripts, _attempt_times(bits, camp, drawn, transcripts))
    per_contact = attempts.group_by("k").agg(
        last_attempt_at=pl.col("started_at").max(),
        last_activity=pl.coalesce("ended_at", "started_at").max(),
    )
    drawn = drawn.join(per_contact, on="k", how="left", maintain_order="left")
    answers = _answers(bits, camp, drawn, now_us)
    last_answer = answers.group_by("k").agg(last_answer=pl.col("answered_at").max())
    contacts = _contacts(drawn.join(last_answer, on="k", how="left", maintain_order="left"), camp, first, now_us)
    return contacts, attempts.select(*_names("call_attempts")), answers.select(*_names("survey_responses"))


def _draw_contacts(bits: _Bits, camp: _Campaign, n: int) -> pl.DataFrame:
    """The random draws behind n contacts (k: their index in the chunk), with created and attempt_count."""
    created = camp.start_us + (bits.unit(n) * ((camp.end_us - camp.start_us) * 0.6)).cast(pl.Int64)
    return (
        pl.DataFrame(
            {
                "id": bits.uuids(n),
                "state_i": pl.Series(_STATE_TABLE).gather(bits.below(n, 100)),
                "created": created,
                "tie": bits.below(n, 100),
                "r_count": bits.below(n, 100),
                "r_name": bits.below(n, 1000),
                "first": bits.below(n, len(_FIRST)),
                "last": bits.below(n, len(_LAST)),
                "awk": bits.below(n, len(_AWKWARD)),
                "r_biz": bits.below(n, 100),
                "biz": bits.below(n, len(_BUSINESSES)),
                "r_ext": bits.below(n, 100),
                "ext": bits.below(n, len(_EXTERNAL_IDS)),
                "r_phone": bits.below(n, 100),
                "digits": bits.below(n, 10**9),
                "cc": bits.below(n, len(_COUNTRY_CODES)),
                "bad": bits.below(n, len(_BAD_PHONES)),
                "r_upd": bits.below(n, 60 * _SECOND_US),
            }
        )
        .with_row_index("k")
        .with_columns(
            # Some contacts share the previous one's created_at to the microsecond (import batches).
            created=pl.when(pl.col("tie") < 3)
            .then(pl.col("created").shift(1))
            .otherwise(pl.col("created"))
            .fill_null(pl.col("created")),
            attempt_count=_pick(_COUNT_TABLE, pl.col("state_i") * 100 + pl.col("r_count")),
        )
    )


def _attempt_times(bits: _Bits, camp: _Campaign, drawn: pl.DataFrame, transcripts: int) -> pl.DataFrame:
    """One row per attempt of the drawn contacts, with its draws (transcripts: the pool's size), final
    status, start and duration."""
    a = (
        drawn.select("k", "id", "state_i", "created", "attempt_count")
        .filter(pl.col("attempt_count") > 0)
        .rename({"id": "contact_id"})
        .with_columns(attempt_number=pl.int_ranges(1, pl.col("attempt_count") + 1))
        .explode("attempt_number")
    )
    m = a.height
    margin = 3600 * _SECOND_US  # keeps every activity before now_us
    durations = [(r[0] * _SECOND_US, r[1] * _SECOND_US) if r else (None, None) for r in _DURATION_RANGE_S]
    return (
        a.with_columns(
            id=bits.uuids(m),
            r_status=bits.below(m, 100),
            u_start=bits.unit(m),
            u_dur=bits.unit(m),
            r_odd=bits.below(m, 1000),
            r_reason=bits.below(m, 100),
            r_cost=bits.below(m, 50),
            r_transcript=bits.below(m, 100),
            transcript_i=bits.below(m, transcripts - len(_ODD_TRANSCRIPTS)),
            odd_i=bits.below(m, len(_ODD_TRANSCRIPTS)),
            neg=bits.below(m, 5 * _SECOND_US),
        )
        .with_columns(
            status_i=_pick(
                _FINAL_STATUS_TABLE,
                pl.when(pl.col("attempt_number") == pl.col("attempt_count")).then(pl.col("state_i")).otherwise(6) * 100
                + pl.col("r_status"),
            ),
            # Attempt k starts in the k-th third of the time left between creation and the campaign's end.
            start=pl.col("created")
            + (
                (pl.col("attempt_number") - 1 + pl.col("u_start"))
                / 3
                * (camp.end_us - margin - pl.col("created")).clip(0)
            ).cast(pl.Int64),
        )
        .with_columns(
            lo=_pick([d[0] for d in durations], pl.col("status_i")),
            hi=_pick([d[1] for d in durations], pl.col("status_i")),
        )
        .with_columns(
            duration=pl.when((pl.col("r_odd") < 10) & (pl.col("status_i") >= 3))
            .then(-pl.col("neg"))  # 1% of finished calls ended before they started
            .otherwise(pl.col("lo") + (pl.col("u_dur") * (pl.col("hi") - pl.col("lo"))).cast(pl.Int64)),
        )
    )


def _attempt_outcomes(camp: _Campaign, other_campaign: str, transcripts: int, a: pl.DataFrame) -> pl.DataFrame:
    """The attempts' columns as the source holds them, with the odd ones planted (no start, no end, a
    refund, filed under another campaign, odd transcripts)."""
    return (
        a.with_columns(
            started_at=pl.when(pl.col("status_i") == 0)
            .then(None)
            .when((pl.col("r_odd") >= 990) & (pl.col("status_i") >= 3))
            .then(None)  # 1% of finished: no start
            .otherwise(pl.col("start")),
        )
        .with_columns(
            ended_at=pl.when(pl.col("r_odd").is_between(980, 989))
            .then(None)  # 1%: no end
            .otherwise(pl.col("start") + pl.col("duration")),
            ended_reason=_pick(_REASON_TABLE, pl.col("status_i") * 100 + pl.col("r_reason")),
            cost_usd=pl.when((pl.col("status_i") < 3) | (pl.col("r_odd").is_between(900, 949)))
            .then(None)  # 5% null
            .when(pl.col("r_odd") == 950)
            .then(-15000)  # a refund
            .otherwise((pl.col("duration").abs() * 17 // _SECOND_US) + pl.col("r_cost")),
            has_text=pl.col("status_i").is_in([2, 3, 7]) | ((pl.col("status_i") == 4) & (pl.col("r_transcript") < 25)),
        )
        .with_columns(
            campaign_id=pl.when(pl.col("r_odd") == 951).then(pl.lit(other_campaign)).otherwise(pl.lit(camp.id)),
            status=_pick(_STATUSES, pl.col("status_i")),
            recording_url=pl.when(pl.col("has_text")).then(
                pl.concat_str(
                    [
                        pl.lit(f"https://recordings.example.com/{camp.id}/"),
                        pl.col("id"),
                        pl.when(pl.col("r_transcript") < 3)
                        .then(pl.lit(".wav?sig=a%2Cb,c&v=1"))
                        .otherwise(pl.lit(".wav")),
                    ]
                )
            ),
            transcript=pl.when(~pl.col("has_text"))
            .then(None)
            .when(pl.col("r_transcript") >= 97)
            .then(transcripts - len(_ODD_TRANSCRIPTS) + pl.col("odd_i"))
            .otherwise(pl.col("transcript_i")),
        )
    )


def _answers(bits: _Bits, camp: _Campaign, drawn: pl.DataFrame, now_us: int) -> pl.DataFrame:
    """Answers of the contacts that reached the survey, with a few stray answers to no question."""
    positions = pl.DataFrame({"question_position": [*camp.positions, max(camp.positions) + 1]})
    r = drawn.filter(pl.col("state_i").is_in([1, 2, 3])).select("k", "id", "state_i", "last_attempt_at", "created")
    r = r.join(positions, how="cross").rename({"id": "contact_id"})
    k = r.height
    out_of_range = pl.col("question_position") > max(camp.positions)
    return (
        r.with_columns(chance=bits.below(k, 1000), answer_i=bits.below(k, len(_ANSWERS)), u=bits.unit(k))
        .filter(
            pl.when(out_of_range)
            .then((pl.col("state_i") == 2) & (pl.col("chance") < 3))  # stray answers
            .when(pl.col("state_i") == 2)
            .then(pl.col("chance") < 900)
            .when(pl.col("question_position") == 1)
            .then(pl.col("chance") < 400)
            .otherwise(False)
        )
        .with_columns(
            campaign_id=pl.lit(camp.id),
            answer=_pick(_ANSWERS, pl.col("answer_i")),
            answered_at=pl.min_horizontal(
                pl.coalesce("last_attempt_at", "created")
                + (pl.col("u") * 30 * _SECOND_US * pl.col("question_position")).cast(pl.Int64),
                pl.lit(now_us),
            ),
        )
    )


def _contacts(drawn: pl.DataFrame, camp: _Campaign, first: int, now_us: int) -> pl.DataFrame:
    """The contacts' columns as the source holds them, from their draws, attempts and answers."""
    name = pl.concat_str([_pick(_FIRST, pl.col("first")), pl.lit(" "), _pick(_LAST, pl.col("last"))])
    return drawn.select(
        "id",
        campaign_id=pl.lit(camp.id),
        external_contact_id=pl.when(pl.col("r_ext") < 70)
        .then(pl.concat_str([pl.lit("CRM-"), (pl.col("k") + first).cast(pl.String).str.zfill(7)]))
        .when(pl.col("r_ext") < 85)
        .then(None)
        .otherwise(_pick(_EXTERNAL_IDS, pl.col("ext"))),
        name=pl.when(pl.col("r_name") < 30)
        .then(None)
        .when(pl.col("r_name") < 150)
        .then(_pick(_AWKWARD, pl.col("awk")))
        .otherwise(name),
        business_name=pl.when(pl.col("r_biz") < 35).then(None).otherwise(_pick(_BUSINESSES, pl.col("biz"))),
        phone_number=pl.when(pl.col("r_phone") < 85)
        .then(pl.concat_str([pl.lit("+1555"), (pl.col("digits") % 10**7).cast(pl.String).str.zfill(7)]))
        .when(pl.col("r_phone") < 92)
        .then(pl.concat_str([_pick(_COUNTRY_CODES, pl.col("cc")), pl.col("digits").cast(pl.String).str.zfill(9)]))
        .otherwise(_pick(_BAD_PHONES, pl.col("bad"))),
        state=_pick(_STATES, pl.col("state_i")),
        attempt_count="attempt_count",
        last_attempt_at="last_attempt_at",
        completed_at=pl.when(pl.col("state_i") == 2).then(pl.coalesce("last_activity", "created")),
        created_at="created",
        updated_at=pl.min_horizontal(
            pl.max_horizontal("created", "last_activity", "last_answer")
            + pl.when(pl.col("r_upd") < 12 * _SECOND_US).then(0).otherwise(pl.col("r_upd")),  # 20%: equal
            pl.lit(now_us),
        ).clip(pl.col("created")),
    )


def _generate(sizes: list[int], seed: int, existing: int, now: dt.datetime | None, chunk: int):
    """(campaigns, questions, transcript pool, iterator of (contacts, attempts, answers) chunks)."""
    if now is None:
        now = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
    elif now.tzinfo is None:
        now = now.replace(tzinfo=dt.UTC)
    now_us = (now - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)
    rng = random.Random(f"exports-seed:{seed}:{existing}")  # existing data -> other ids
    camps = _make_campaigns(rng, sizes, existing, now_us)
    pool = _transcript_pool()
    bits = _Bits(rng)

    def chunks():
        for i, camp in enumerate(camps):
            other = camps[(i + 1) % len(camps)].id  # a few attempts are filed under it
            for first in range(0, camp.contacts, chunk):
                yield _chunk(bits, camp, other, first, min(chunk, camp.contacts - first), now_us, len(pool))

    return camps, _questions(camps), pool, chunks()


_TS_COLUMNS = {"created_at", "updated_at", "completed_at", "last_attempt_at", "started_at", "ended_at", "answered_at"}


def _text_timestamps(frame: pl.DataFrame) -> pl.DataFrame:
    """Epoch-microsecond columns as ISO 8601 text (SQLite, and campaigns rows for PostgreSQL)."""
    return frame.with_columns(
        pl.col(c).cast(pl.Datetime("us")).dt.strftime("%Y-%m-%dT%H:%M:%S%.6f+00:00")
        for c in frame.columns
        if c in _TS_COLUMNS
    )


def _campaign_rows(camps: list[_Campaign]) -> pl.DataFrame:
    return _text_timestamps(pl.DataFrame([c.row for c in camps], schema=_names("campaigns"), orient="row"))


# --- loading ----------------------------------------------------------------------------------


def seed_source(
    url: str,
    contacts: int,
    campaigns: int = 1,
    seed: int = 0,
    *,
    now: dt.datetime | None = None,
    sizes: Sequence[int] | None = None,
) -> list[str]:
    """Generate a synthetic source database; return the new campaign ids in creation order.

    Deterministic for a seed and a reference time ``now`` (default: the current UTC hour, so runs
    within the same hour match; naive means UTC); every timestamp is at or before it. Appending to a database that
    already holds campaigns mixes their count into the random stream, so ids never clash. ``sizes``
    (contacts per campaign, e.g. from mixed_sizes; their sum and count must be contacts and campaigns)
    replaces the default split, in which the first campaign holds most contacts.
    """
    if contacts < 0 or campaigns < 1:
        raise ValueError("contacts must be >= 0 and campaigns >= 1")
    if sizes is not None and (len(sizes) != campaigns or sum(sizes) != contacts or min(sizes) < 0):
        raise ValueError("sizes must be one count >= 0 per campaign, adding up to contacts")
    split = list(sizes) if sizes is not None else _split(contacts, campaigns)
    path = _sqlite_path(url)
    if path is None:
        return _seed_postgres(url, split, seed, now)
    return _seed_sqlite(path, split, seed, now)


_CHUNK = 100_000  # contacts per generated batch: bounds memory and keeps COPY buffers under 2 GB
_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01, the zero of PostgreSQL's binary timestamps
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
_COPY_TRAILER = b"\xff\xff"
_COPY_NULL = pa.scalar(b"\xff\xff\xff\xff", pa.binary())


def _big_endian(values: pl.Series, code: str, valid: pl.Series | None = None, per_row: int = 1) -> pa.Array:
    """Integers (``per_row`` of them per value) as big-endian fixed-size binary, null where not valid."""
    arrow = values.fill_null(0).rechunk().to_arrow()
    width = array.array(code).itemsize
    swapped = array.array(code)
    swapped.frombytes(memoryview(arrow.buffers()[1])[arrow.offset * width : (arrow.offset + len(arrow)) * width])
    swapped.byteswap()
    bitmap = None if valid is None else valid.rechunk().to_arrow().buffers()[1]
    return pa.Array.from_buffers(
        pa.binary(width * per_row), len(arrow) // per_row, [bitmap, pa.py_buffer(swapped)]
    ).cast(pa.binary())


def _numeric(cost: pl.Series) -> pa.Array:
    """Ten-thousandths of a dollar in numeric's binary form.

    Two big-endian words per value: (ndigits 4, weight 2, sign, dscale 4) and the base-10000
    digits (0, dollars // 10000, dollars % 10000, ten-thousandths); the server strips the zeros.
    """
    c = cost.fill_null(0)
    head = (c < 0).cast(pl.Int64) * (0x4000 << 16) + ((4 << 48) + (2 << 32) + 4)
    digits = c.abs() // 10**8 * (1 << 32) + c.abs() // 10**4 % 10**4 * (1 << 16) + c.abs() % 10**4
    interleaved = pl.concat([head, digits]).gather(
        pl.int_range(0, 2 * len(c), eager=True) // 2 + pl.int_range(0, 2 * len(c), eager=True) % 2 * len(c)
    )
    return _big_endian(interleaved, "q", cost.is_not_null(), per_row=2)


def _uuid_bytes(column: pl.Series) -> pa.Array:
    """Canonical UUID strings (never null) as their 16 bytes."""
    raw = binascii.unhexlify(column.str.join("").item().encode().replace(b"-", b""))
    return pa.Array.from_buffers(pa.binary(16), len(column), [None, pa.py_buffer(raw)]).cast(pa.binary())


def _copy_binary(table: str, frame: pl.DataFrame, jsonb_fields: pa.Array | None = None) -> memoryview | bytes:
    """Rows of COPY's binary format (no parsing left for the server: 3-4 times cheaper than CSV).

    A jsonb column holds indices into ``jsonb_fields``, whole fields encoded once (length, version
    byte and JSON text); a null index gives the last one, the null marker.
    """
    if frame.height == 0:
        return b""
    pieces = [pa.scalar(len(_COLUMNS[table]).to_bytes(2, "big"), pa.binary())]
    for name, kind, _ in _COLUMNS[table]:
        column = frame[name]
        if kind == "jsonb":
            pieces.append(jsonb_fields.take(column.fill_null(len(jsonb_fields) - 1).to_arrow()))
            continue
        if kind == "uuid":
            values = _uuid_bytes(column)
        elif kind == "text":
            values = column.cast(pl.Binary).to_arrow().cast(pa.binary())
        elif kind == "timestamptz":
            values = _big_endian(column - _PG_EPOCH_US, "q", column.is_not_null())
        elif kind == "numeric(12,4)":
            values = _numeric(column)
        else:
            values = _big_endian(
                column.cast(pl.Int16 if kind == "smallint" else pl.Int32),
                "h" if kind == "smallint" else "i",
                column.is_not_null(),
            )
        lengths = pl.from_arrow(pc.binary_length(values)).fill_null(-1).cast(pl.Int32)  # -1: null
        pieces += [_big_endian(lengths, "i"), values]
    rows = pc.binary_join_element_wise(*pieces, b"", null_handling="replace", null_replacement="")
    offsets = memoryview(rows.buffers()[1]).cast("i")
    return memoryview(rows.buffers()[2])[offsets[rows.offset] : offsets[rows.offset + len(rows)]]


# Each COPY target gets its own connection and transaction, which also creates the new tables
# it loads: three server processes then work at once, and COPY FREEZE applies (rows written
# frozen and all-visible, so no VACUUM pass over the new tables).
_LOADS = {
    "contacts": ["campaigns", "survey_questions", "contacts"],
    "call_attempts": ["call_attempts"],
    "survey_responses": ["survey_responses"],
}


def _seed_postgres(url: str, sizes: list[int], seed: int, now: dt.datetime | None) -> list[str]:
    with _pg_connect(url, autocommit=True) as admin:
        fresh = {t for t in _COLUMNS if admin.execute("SELECT to_regclass(%s)", (t,)).fetchone()[0] is None}
        existing = 0 if "campaigns" in fresh else admin.execute("SELECT count(*) FROM campaigns").fetchone()[0]
    camps, questions, pool, chunks = _generate(sizes, seed, existing, now, _CHUNK)
    jsonb = [b"\x01" + text.encode() for text in pool]  # version 1, then the JSON text
    jsonb_fields = pa.array([len(b).to_bytes(4, "big") + b for b in jsonb] + [_COPY_NULL.as_py()], pa.binary())

    with contextlib.ExitStack() as stack:
        conns = {target: stack.enter_context(_pg_connect(url)) for target in _LOADS}
        for target, conn in conns.items():
            for table in _LOADS[target]:
                if table in fresh:  # keys and indexes come after the load
                    conn.execute(_table_ddl(table, sqlite=False, keyed=False))
        with conns["contacts"].cursor() as cur:
            cur.executemany(f"INSERT INTO campaigns VALUES ({', '.join(['%s'] * 9)})", _campaign_rows(camps).rows())
            cur.executemany("INSERT INTO survey_questions VALUES (%s, %s, %s)", questions.rows())
        with contextlib.ExitStack() as copying, ThreadPoolExecutor(len(conns)) as senders:
            copies = []
            for target, conn in conns.items():
                options = "FORMAT binary, FREEZE" if target in fresh else "FORMAT binary"
                statement = f"COPY {target} ({', '.join(_names(target))}) FROM STDIN ({options})"
                copies.append(copying.enter_context(conn.cursor().copy(statement)))
                copies[-1].write(_COPY_HEADER)
            # Threads send a batch while this one makes the next: at most two batches in memory.
            sending = []
            for batch in chunks:
                data = [_copy_binary(target, rows, jsonb_fields) for target, rows in zip(conns, batch, strict=True)]
                for sent in sending:
                    sent.result()
                sending = [senders.submit(copy.write, chunk) for copy, chunk in zip(copies, data, strict=True)]
            for sent in sending:
                sent.result()
            for copy in copies:
                copy.write(_COPY_TRAILER)

        def finish(conn: psycopg.Connection, tables: list[str]) -> None:
            conn.execute("SET maintenance_work_mem = '256MB'")
            for table in tables:
                if table in fresh:
                    conn.execute(f"ALTER TABLE {table} ADD PRIMARY KEY ({_KEYS[table]})")
            for statement in _index_ddl(tables):
                conn.execute(statement)
            conn.execute(f"ANALYZE {', '.join(tables)}")

        with ThreadPoolExecutor(len(conns)) as executor:  # keys, indexes and statistics of all tables at once
            for done in [executor.submit(finish, conn, _LOADS[target]) for target, conn in conns.items()]:
                done.result()
    return [c.id for c in camps]


def _seed_sqlite(path: Path, sizes: list[int], seed: int, now: dt.datetime | None) -> list[str]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.executescript(";\n".join(_table_ddl(t, sqlite=True) for t in _COLUMNS) + ";")
        existing = conn.execute("SELECT count(*) FROM campaigns").fetchone()[0]
        camps, questions, pool, chunks = _generate(sizes, seed, existing, now, _CHUNK)

        def insert(table: str, frame: pl.DataFrame) -> None:
            marks = ", ".join("?" * frame.width)
            conn.executemany(f"INSERT INTO {table} ({', '.join(frame.columns)}) VALUES ({marks})", frame.rows())

        with conn:  # one transaction
            insert("campaigns", _campaign_rows(camps))
            insert("survey_questions", questions)
            for contact_rows, attempt_rows, answer_rows in chunks:
                insert("contacts", _text_timestamps(contact_rows))
                insert(
                    "call_attempts",
                    _text_timestamps(
                        attempt_rows.with_columns(
                            cost_usd=pl.col("cost_usd") / 10_000, transcript=_pick(pool, pl.col("transcript"))
                        )
                    ),
                )
                insert("survey_responses", _text_timestamps(answer_rows))
        conn.executescript(";\n".join(_index_ddl()) + ";\nANALYZE;")
    return [c.id for c in camps]
