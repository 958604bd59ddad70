"""Synthetic source database: the demo's data, the tests' fixtures and the benchmark's load.

Creates the source tables of SPEC section 2 and fills them with campaigns, contacts, call attempts
and survey answers whose distributions look like production and whose text is as awkward as what
users type (commas, quotes, lone CR, CRLF, accents, CJK, emoji, leading = + - @ TAB, empty strings
next to NULL), plus the anomalies the exporter must count rather than fail on (transcripts that are
not objects, answers out of range, attempts filed under another campaign, negative durations).

Generation is vectorised with polars over random bits from a seeded ``random.Random``, so a seed
gives the same data on every run and the same rows in PostgreSQL and SQLite. PostgreSQL is loaded
with COPY on three connections at once (contacts, attempts, answers) and transcripts are joined in
server-side from a small pool, because parsing a gigabyte of JSON through COPY costs more than
everything else together; indexes are built after the load, then the tables are vacuumed and
analysed. SQLite (demos and tests, up to ~100k contacts) stores uuids and timestamps as ISO 8601
TEXT (``2026-01-02T03:04:05.123456+00:00``), cost_usd as REAL and transcripts as JSON TEXT.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import random
import sqlite3
import uuid
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import psycopg
import pyarrow as pa
from psycopg.copy import QueuedLibpqWriter

# --- schema -----------------------------------------------------------------------------------

_COLUMNS = {
    "campaigns": [
        ("id", "uuid", "PRIMARY KEY"),
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
        ("id", "uuid", "PRIMARY KEY"),
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
        ("id", "uuid", "PRIMARY KEY"),
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
_COMPOSITE_KEYS = {
    "survey_questions": "campaign_id, position",
    "survey_responses": "contact_id, question_position",
}
_INDEXES = [
    ("contacts_campaign_id_idx", "contacts", "campaign_id"),
    ("contacts_campaign_id_updated_at_idx", "contacts", "campaign_id, updated_at"),
    ("call_attempts_campaign_id_idx", "call_attempts", "campaign_id"),
    ("call_attempts_contact_id_idx", "call_attempts", "contact_id"),
    ("survey_responses_campaign_id_idx", "survey_responses", "campaign_id"),
]
_SQLITE_TYPES = {"uuid": "TEXT", "text": "TEXT", "smallint": "INTEGER", "int": "INTEGER",
                 "timestamptz": "TEXT", "numeric(12,4)": "REAL", "jsonb": "TEXT"}


def _table_ddl(table: str, sqlite: bool) -> str:
    parts = [
        " ".join(filter(None, [name, _SQLITE_TYPES[kind] if sqlite else kind, constraint]))
        for name, kind, constraint in _COLUMNS[table]
    ]
    if table in _COMPOSITE_KEYS:
        parts.append(f"PRIMARY KEY ({_COMPOSITE_KEYS[table]})")
    return f"CREATE TABLE IF NOT EXISTS {table} ({', '.join(parts)})"


def _names(table: str) -> list[str]:
    return [name for name, _, _ in _COLUMNS[table]]


def _index_ddl() -> list[str]:
    return [f"CREATE INDEX IF NOT EXISTS {name} ON {table} ({cols})" for name, table, cols in _INDEXES]


def _sqlite_path(url: str) -> Path | None:
    """The file of a sqlite:/// URL, None for a PostgreSQL URL; anything else is refused."""
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
        path.parent.mkdir(parents=True, exist_ok=True)
        return path
    if url.startswith(("postgresql://", "postgres://")):
        return None
    raise ValueError(f"unsupported source URL scheme {url.split(':', 1)[0]!r}: "
                     "expected postgresql://... or sqlite:///path")


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
_CAMPAIGN_STATUSES = ["completed", "running", "paused", "cancelled", "scheduled"]  # the last is "draft"

_CAMPAIGN_NAMES = [
    "Customer satisfaction, Q3", 'Renewal "winback" campaign', "Enquête été — Île-de-France",
    "東京 customer check-in 😀", "=Quarterly NPS", "Line\rbreak campaign", "Follow-up\r\ncalls",
    "@mentions test", "-Draft copy", "+Upsell 👍🏽", "\tTabbed campaign", "Multi\nline",
]
_ASSISTANTS = ["Ava", "Léa (voix française)", None, "", 'Assistant "Max"', "ボット", "=Bot"]
_OWNER_EMAILS = ["ops@example.com", None, "ünïcode.user@example.com", "first.last+tag@example.co.uk", ""]
_PROMPTS = [
    "How satisfied were you with the call, from 1 to 5?", 'Would you say the agent was "helpful"?',
    "¿Recomendaría nuestro servicio?", "Any other comments, questions or concerns?",
    "東京のオフィスを訪問しましたか？", "Rate us 👍 or 👎", "=Did the caller confirm the address?",
    "Line one\nline two of the prompt", "Preferred callback time (e.g. 9:00, 12:30)",
]
_FIRST = ["James", "María", "José", "Zoë", "François", "Søren", "Ngozi", "Wei", "Aiko", "Ólafur",
          "Mary-Jane", "D'Angelo", "Iñaki", "Chloé", "Mohammed", "Priya", "美咲", "Björn", "Łukasz", "Anne"]
_LAST = ["Smith", "García", "Müller", "O'Brien", "Nguyễn", "Østergaard", "山田", "Dubois", "Kowalski",
         "Smith-Jones", "van der Berg", "Núñez", "Johnson", "Lefèvre", "Ivanova", "Kim", "Çelik", "Brown"]
_AWKWARD = [
    "Smith, John", 'Robert "Bob" Jones', "Anna\rBell", "Line\nBreak", "Windows\r\nUser", "=1+1",
    '=HYPERLINK("http://evil.example","click")', "+44 Caller", "-Minus Sign", "@handle", "\tTabbed",
    " Leading space", "Trailing space ", "😀 Happy Customer", "Thumbs 👍🏽 Up", "東京 太郎 😀",
    "Émilie Ñandú", "", ",", '"', "'Apostrophe", "Robert'); DROP TABLE contacts;--",
]
_BUSINESSES = [
    "Acme, Inc.", 'Joe\'s "Best" Pizza', "Café Ñandú", "東京商事", "=CMD|' /C calc'!A0", "@Risk Ltd",
    "+Plus Co", "-Minus GmbH", "\tTab Corp", "Multi\r\nLine LLC", "Line\nFeed Ltd", "CR\rOnly Inc",
    "👍🏽 Thumbs Co", "Müller & Söhne", "Plain Business", "Smith Plumbing",
]
_EXTERNAL_IDS = ["00042", "=A1", "-17", "1E+10", "ext,with,commas", '"quoted"', "+33", "@crm", "", "0"]
_BAD_PHONES = ["555-1234", "=1+1", "(555) 123-4567", "+1 555 123 4567", "+0123456789", "", "15551234567",
               "+15551234567 ext. 12", "0033 6 12 34 56 78", "-5551234", "@555", "\t+15551234567",
               "+1555123456789012"]
_COUNTRY_CODES = ["+44", "+33", "+81", "+49", "+34", "+61"]
_ANSWERS = [
    "5", "4", "3", "2", "1", "Yes", "No", "Oui, très satisfait", "Sí, claro", "はい", "😀", "👍🏽",
    "Maybe, not sure", 'He said "never"', "line one\nline two", "windows\r\nline", "cr\ronly", "=1+1",
    "+1", "-1", "@support", "\tindented", "", None, "Ça dépend…",
]
_SENTENCES = [
    "Hello, this is Ava calling on behalf of Acme.", "Is now a good time to talk?",
    "Yes, go ahead.", 'I said "no" last time, didn\'t I?', "Could you confirm your address, please?",
    "It's 12, rue de l'Église, Montréal.", "Très bien, merci beaucoup !", "东京的天气怎么样？",
    "We'd love your feedback 😀", "Thumbs up 👍🏽 from me.", "The total was $12.50, including tax.",
    "=SUM(A1:A9) is what the spreadsheet showed.", "Sorry, could you repeat that?",
    "Señor Núñez will call back tomorrow at 9:30.", "No, thank you; please remove me from the list.",
    "Great, I've noted that down.", "Is there anything else I can help with?", "Goodbye!",
]
_TRANSCRIPT_PREFIXES = ["", "", "", "", "", "=== Transcript ===\n", "- ", "+ ", "@agent ", "\t"]
_ODD_TRANSCRIPTS = [
    {"summary": "Caller asked for a callback, no transcript kept"}, {"text": None}, {"text": 12345},
    ["Agent: Hello", "Contact: Bye"], "Agent: a transcript stored as a bare JSON string", None, {},
]
_TEXT_TRANSCRIPTS = 4096

# Weighted lookup tables: 100 entries each, indexed by a uniform draw in 0..99.


def _table(weights: dict) -> list:
    table = [value for value, weight in weights.items() for _ in range(weight)]
    assert len(table) == 100, weights
    return table


_STATE_TABLE = _table({0: 8, 1: 4, 2: 45, 3: 10, 4: 28, 5: 5})
_COUNT_TABLE = sum((_table(w) for w in [
    {0: 100}, {1: 50, 2: 30, 3: 20}, {1: 60, 2: 25, 3: 15},  # pending, in_progress, completed
    {1: 60, 2: 25, 3: 15}, {1: 15, 2: 25, 3: 60}, {0: 70, 1: 30},  # refused, not_reached, excluded
]), [])
# Status of the contact's final attempt by contact state; row 6 is for the earlier attempts.
_FINAL_STATUS_TABLE = sum((_table(w) for w in [
    {0: 100}, {0: 30, 1: 20, 2: 50}, {3: 100}, {7: 100}, {4: 60, 5: 20, 6: 20}, {6: 50, 4: 50},
    {4: 60, 5: 20, 6: 20},
]), [])
_DURATION_RANGE_S = [None, None, None, (30, 900), (15, 45), (1, 6), (0, 3), (5, 120)]
_REASON_TABLE = sum((_table(w) for w in [
    {None: 100}, {None: 100}, {None: 100},
    {"customer-ended-call": 50, "assistant-ended-call": 40, "silence-timed-out": 5,
     'assistant said "goodbye", then hung up': 5},
    {"customer-did-not-answer": 70, "voicemail": 30},
    {"customer-busy": 100},
    {"twilio-failed-to-connect-call": 40, "pipeline-error-openai-llm-failed": 30,
     'error: SIP 503, "Service Unavailable"': 20, None: 10},
    {"customer-ended-call": 60, "Refusé — « ne plus appeler »": 20, "": 20},
]), [])

_DAY_US = 86_400_000_000
_SECOND_US = 1_000_000


# --- generation -------------------------------------------------------------------------------


@dataclass
class _Campaign:
    id: str
    status: str
    contacts: int
    positions: list[int]
    start_us: int  # contacts are created from here
    end_us: int  # last activity
    row: tuple  # values of the campaigns row, timestamps as epoch microseconds


class _Bits:
    """Vectorised random draws from one seeded Mersenne Twister (stable across versions)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def u64(self, n: int) -> pl.Series:
        buffer = pa.py_buffer(self.rng.randbytes(8 * n))
        return pl.from_arrow(pa.Array.from_buffers(pa.uint64(), n, [None, buffer]))

    def below(self, n: int, m: int) -> pl.Series:
        return (self.u64(n) % m).cast(pl.Int64)

    def unit(self, n: int) -> pl.Series:
        return (self.u64(n) // 2048).cast(pl.Float64) / float(2 ** 53)

    def uuids(self, n: int) -> pl.Series:
        """Random version-4 UUIDs in canonical lowercase form."""
        buffer = pa.py_buffer(self.rng.randbytes(16 * n))
        hexed = pl.from_arrow(pa.Array.from_buffers(pa.binary(16), n, [None, buffer])).bin.encode("hex")
        frame = pl.DataFrame({"h": hexed, "v": pl.Series(list("89ab")).gather(self.below(n, 4))})
        h = pl.col("h").str
        return frame.select(pl.concat_str([
            h.slice(0, 8), pl.lit("-"), h.slice(8, 4), pl.lit("-4"), h.slice(13, 3), pl.lit("-"),
            pl.col("v"), h.slice(17, 3), pl.lit("-"), h.slice(20, 12)])).to_series()


def _pick(values: list, index: pl.Series | pl.Expr) -> pl.Expr:
    """values[index] as an expression (None entries give nulls)."""
    return pl.lit(pl.Series(values)).gather(index)


def _transcript_pool(seed: int) -> list[str]:
    """JSON texts of transcripts: many {"text": ...} objects of 300-2,000 characters, then odd ones."""
    rng = random.Random(f"exports-seed-transcripts:{seed}")
    pool = []
    for i in range(_TEXT_TRANSCRIPTS):
        length = 300 + (i * 1701) // _TEXT_TRANSCRIPTS  # lengths spread evenly over 300..2000
        parts, size, speaker = [rng.choice(_TRANSCRIPT_PREFIXES)], 0, 0
        while size < length:
            line = ("Agent: ", "Contact: ")[speaker] + rng.choice(_SENTENCES) + rng.choice(["\n", "\n", "\r\n"])
            parts.append(line)
            size += len(line)
            speaker ^= 1
        pool.append({"text": "".join(parts)[:length]})
    return [json.dumps(t, ensure_ascii=False) for t in pool + _ODD_TRANSCRIPTS]


def _split(contacts: int, campaigns: int) -> list[int]:
    """Contacts per campaign: the first holds most; with 3+ campaigns the last holds none."""
    if campaigns == 1:
        return [contacts]
    if campaigns == 2:
        return [contacts - contacts * 3 // 10, contacts * 3 // 10]
    each = contacts * 2 // 5 // (campaigns - 2)
    return [contacts - each * (campaigns - 2)] + [each] * (campaigns - 2) + [0]


def _make_campaigns(rng: random.Random, contacts: int, count: int, offset: int, now_us: int) -> list[_Campaign]:
    result = []
    for i, n in enumerate(_split(contacts, count)):
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
        row = (cid, name, _ASSISTANTS[g % len(_ASSISTANTS)], str(uuid.UUID(int=rng.getrandbits(128), version=4)),
               _OWNER_EMAILS[g % len(_OWNER_EMAILS)], status, created, max(updated, created),
               end if status == "completed" else None)
        result.append(_Campaign(cid, status, n, positions, start, end, row))
    return result


def _questions(campaigns: list[_Campaign]) -> pl.DataFrame:
    rows = [(c.id, p, _PROMPTS[(i + p) % len(_PROMPTS)]) for i, c in enumerate(campaigns) for p in c.positions]
    return pl.DataFrame(rows, schema=_names("survey_questions"), orient="row")


def _chunk(bits: _Bits, camp: _Campaign, other_campaign: str, first: int, n: int, now_us: int,
           transcripts: int) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """n contacts of one campaign with their attempts and answers.

    Timestamps are epoch microseconds, cost_usd is in ten-thousandths of a dollar and transcript is
    an index into the transcript pool (the backends convert them).
    """
    margin = 3600 * _SECOND_US  # keeps every activity before now_us
    created = camp.start_us + (bits.unit(n) * ((camp.end_us - camp.start_us) * 0.6)).cast(pl.Int64)
    c = pl.DataFrame({
        "id": bits.uuids(n), "state_i": pl.Series(_STATE_TABLE).gather(bits.below(n, 100)),
        "created": created, "tie": bits.below(n, 100), "r_count": bits.below(n, 100),
        "r_name": bits.below(n, 1000), "first": bits.below(n, len(_FIRST)), "last": bits.below(n, len(_LAST)),
        "awk": bits.below(n, len(_AWKWARD)), "r_biz": bits.below(n, 100), "biz": bits.below(n, len(_BUSINESSES)),
        "r_ext": bits.below(n, 100), "ext": bits.below(n, len(_EXTERNAL_IDS)), "r_phone": bits.below(n, 100),
        "digits": bits.below(n, 10 ** 9), "cc": bits.below(n, len(_COUNTRY_CODES)),
        "bad": bits.below(n, len(_BAD_PHONES)), "r_upd": bits.below(n, 60 * _SECOND_US),
    }).with_columns(
        # Some contacts share the previous one's created_at to the microsecond (import batches).
        created=pl.when(pl.col("tie") < 3).then(pl.col("created").shift(1)).otherwise(pl.col("created"))
        .fill_null(pl.col("created")),
        attempt_count=_pick(_COUNT_TABLE, pl.col("state_i") * 100 + pl.col("r_count")),
    )

    a = c.select("id", "state_i", "created", "attempt_count").filter(pl.col("attempt_count") > 0).rename(
        {"id": "contact_id"}).with_columns(attempt_number=pl.int_ranges(1, pl.col("attempt_count") + 1)
                                           ).explode("attempt_number")
    m = a.height
    durations = [(r[0] * _SECOND_US, r[1] * _SECOND_US) if r else (None, None) for r in _DURATION_RANGE_S]
    a = a.with_columns(
        id=bits.uuids(m), r_status=bits.below(m, 100), u_start=bits.unit(m), u_dur=bits.unit(m),
        r_odd=bits.below(m, 1000), r_reason=bits.below(m, 100), r_cost=bits.below(m, 50),
        r_transcript=bits.below(m, 100), transcript_i=bits.below(m, transcripts - len(_ODD_TRANSCRIPTS)),
        odd_i=bits.below(m, len(_ODD_TRANSCRIPTS)), neg=bits.below(m, 5 * _SECOND_US),
    ).with_columns(
        status_i=_pick(_FINAL_STATUS_TABLE, pl.when(pl.col("attempt_number") == pl.col("attempt_count"))
                       .then(pl.col("state_i")).otherwise(6) * 100 + pl.col("r_status")),
        # Attempt k starts in the k-th third of the time left between creation and the campaign's end.
        start=pl.col("created") + ((pl.col("attempt_number") - 1 + pl.col("u_start")) / 3
                                   * (camp.end_us - margin - pl.col("created")).clip(0)).cast(pl.Int64),
    ).with_columns(
        lo=_pick([d[0] for d in durations], pl.col("status_i")),
        hi=_pick([d[1] for d in durations], pl.col("status_i")),
    ).with_columns(
        duration=pl.when((pl.col("r_odd") < 10) & (pl.col("status_i") >= 3))
        .then(-pl.col("neg"))  # 1% of finished calls ended before they started
        .otherwise(pl.col("lo") + (pl.col("u_dur") * (pl.col("hi") - pl.col("lo"))).cast(pl.Int64)),
        started_at=pl.when(pl.col("status_i") == 0).then(None)
        .when((pl.col("r_odd") >= 990) & (pl.col("status_i") >= 3)).then(None)  # 1% of finished: no start
        .otherwise(pl.col("start")),
    ).with_columns(
        ended_at=pl.when(pl.col("r_odd").is_between(980, 989)).then(None)  # 1%: no end
        .otherwise(pl.col("start") + pl.col("duration")),
        ended_reason=_pick(_REASON_TABLE, pl.col("status_i") * 100 + pl.col("r_reason")),
        cost_usd=pl.when((pl.col("status_i") < 3) | (pl.col("r_odd").is_between(900, 949))).then(None)  # 5% null
        .when(pl.col("r_odd") == 950).then(-15000)  # a refund
        .otherwise((pl.col("duration").abs() * 17 // _SECOND_US) + pl.col("r_cost")),
        has_text=pl.col("status_i").is_in([2, 3, 7]) | ((pl.col("status_i") == 4) & (pl.col("r_transcript") < 25)),
    ).with_columns(
        campaign_id=pl.when(pl.col("r_odd") == 951).then(pl.lit(other_campaign)).otherwise(pl.lit(camp.id)),
        status=_pick(_STATUSES, pl.col("status_i")),
        recording_url=pl.when(pl.col("has_text")).then(pl.concat_str([
            pl.lit(f"https://recordings.example.com/{camp.id}/"), pl.col("id"),
            pl.when(pl.col("r_transcript") < 3).then(pl.lit(".wav?sig=a%2Cb,c&v=1")).otherwise(pl.lit(".wav"))])),
        transcript=pl.when(~pl.col("has_text")).then(None)
        .when(pl.col("r_transcript") >= 97).then(transcripts - len(_ODD_TRANSCRIPTS) + pl.col("odd_i"))
        .otherwise(pl.col("transcript_i")),
    )

    per_contact = a.group_by("contact_id").agg(
        last_attempt_at=pl.col("started_at").max(),
        last_activity=pl.coalesce("ended_at", "started_at").max(),
    )
    c = c.join(per_contact, left_on="id", right_on="contact_id", how="left", maintain_order="left")

    positions = pl.DataFrame({"question_position": camp.positions + [max(camp.positions) + 1]})
    r = c.filter(pl.col("state_i").is_in([1, 2, 3])).select("id", "state_i", "last_attempt_at", "created")
    r = r.join(positions, how="cross").rename({"id": "contact_id"})
    k = r.height
    out_of_range = pl.col("question_position") > max(camp.positions)
    r = r.with_columns(chance=bits.below(k, 1000), answer_i=bits.below(k, len(_ANSWERS)),
                       u=bits.unit(k)).filter(
        pl.when(out_of_range).then((pl.col("state_i") == 2) & (pl.col("chance") < 3))  # stray answers
        .when(pl.col("state_i") == 2).then(pl.col("chance") < 900)
        .when(pl.col("question_position") == 1).then(pl.col("chance") < 400)
        .otherwise(False)
    ).with_columns(
        campaign_id=pl.lit(camp.id),
        answer=_pick(_ANSWERS, pl.col("answer_i")),
        answered_at=pl.min_horizontal(
            pl.coalesce("last_attempt_at", "created")
            + (pl.col("u") * 30 * _SECOND_US * pl.col("question_position")).cast(pl.Int64),
            pl.lit(now_us)),
    )
    last_answer = r.group_by("contact_id").agg(last_answer=pl.col("answered_at").max())

    name = pl.concat_str([_pick(_FIRST, pl.col("first")), pl.lit(" "), _pick(_LAST, pl.col("last"))])
    contacts = c.join(last_answer, left_on="id", right_on="contact_id", how="left", maintain_order="left").select(
        "id",
        campaign_id=pl.lit(camp.id),
        external_contact_id=pl.when(pl.col("r_ext") < 70).then(
            pl.concat_str([pl.lit("CRM-"), (pl.int_range(pl.len()) + first).cast(pl.String).str.zfill(7)]))
        .when(pl.col("r_ext") < 85).then(None).otherwise(_pick(_EXTERNAL_IDS, pl.col("ext"))),
        name=pl.when(pl.col("r_name") < 30).then(None)
        .when(pl.col("r_name") < 150).then(_pick(_AWKWARD, pl.col("awk"))).otherwise(name),
        business_name=pl.when(pl.col("r_biz") < 35).then(None).otherwise(_pick(_BUSINESSES, pl.col("biz"))),
        phone_number=pl.when(pl.col("r_phone") < 85)
        .then(pl.concat_str([pl.lit("+1555"), (pl.col("digits") % 10 ** 7).cast(pl.String).str.zfill(7)]))
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
            + pl.when(pl.col("r_count") < 20).then(0).otherwise(pl.col("r_upd")),
            pl.lit(now_us)).clip(pl.col("created")),
    )
    attempts = a.select(*_names("call_attempts"))
    answers = r.select(*_names("survey_responses"))
    return contacts, attempts, answers


def _generate(contacts: int, campaigns: int, seed: int, existing: int, now: dt.datetime | None, chunk: int):
    """(campaigns, questions, transcript pool, iterator of (contacts, attempts, answers) chunks)."""
    if contacts < 0 or campaigns < 1:
        raise ValueError("contacts must be >= 0 and campaigns >= 1")
    if now is None:
        now = dt.datetime.now(dt.timezone.utc).replace(minute=0, second=0, microsecond=0)
    now_us = (now - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)) // dt.timedelta(microseconds=1)
    rng = random.Random(f"exports-seed:{seed}:{existing}")  # existing data -> other ids
    camps = _make_campaigns(rng, contacts, campaigns, existing, now_us)
    pool = _transcript_pool(seed)
    bits = _Bits(rng)

    def chunks():
        for i, camp in enumerate(camps):
            other = camps[(i + 1) % len(camps)].id  # a few attempts are filed under it
            for first in range(0, camp.contacts, chunk):
                yield _chunk(bits, camp, other, first, min(chunk, camp.contacts - first), now_us, len(pool))

    return camps, _questions(camps), pool, chunks()


_TS_COLUMNS = {"created_at", "updated_at", "completed_at", "last_attempt_at", "started_at", "ended_at",
               "answered_at"}


def _text_timestamps(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.with_columns(
        pl.col(c).cast(pl.Datetime("us")).dt.strftime("%Y-%m-%dT%H:%M:%S%.6f+00:00")
        for c in frame.columns if c in _TS_COLUMNS)


def _campaign_rows(camps: list[_Campaign]) -> pl.DataFrame:
    return _text_timestamps(pl.DataFrame([c.row for c in camps], schema=_names("campaigns"), orient="row"))


# --- loading ----------------------------------------------------------------------------------


def seed_source(url: str, contacts: int, campaigns: int = 1, seed: int = 0, *,
                now: dt.datetime | None = None) -> list[str]:
    """Generate a synthetic source database; return the new campaign ids in creation order.

    Deterministic for a seed and a reference time ``now`` (default: the current UTC hour, so runs
    within the same hour match); every timestamp is at or before it. Appending to a database that
    already holds campaigns mixes their count into the random stream, so ids never clash.
    """
    path = _sqlite_path(url)
    if path is None:
        return _seed_postgres(url, contacts, campaigns, seed, now)
    return _seed_sqlite(path, contacts, campaigns, seed, now)


_CHUNK = 100_000


def _queued_copy(conn: psycopg.Connection, statement: str) -> psycopg.Copy:
    """A COPY whose data a background thread sends, so generation goes on meanwhile."""
    cursor = conn.cursor()
    return cursor.copy(statement, writer=QueuedLibpqWriter(cursor))


def _copy_csv(copy, frame: pl.DataFrame) -> None:
    buffer = io.BytesIO()
    frame.write_csv(buffer, include_header=False)
    copy.write(buffer.getvalue())


def _seed_postgres(url: str, contacts: int, campaigns: int, seed: int, now: dt.datetime | None) -> list[str]:
    with _pg_connect(url, autocommit=True) as admin:
        for table in _COLUMNS:
            admin.execute(_table_ddl(table, sqlite=False))  # indexes come after the load
        existing = admin.execute("SELECT count(*) FROM campaigns").fetchone()[0]
    camps, questions, pool, chunks = _generate(contacts, campaigns, seed, existing, now, _CHUNK)

    attempt_cols = _names("call_attempts")
    staged = ", ".join(attempt_cols[:-1]) + ", transcript_i"
    # One connection per table so that three server processes parse COPY data at once.
    with contextlib.ExitStack() as stack:
        c_conn, a_conn, r_conn = (stack.enter_context(_pg_connect(url)) for _ in range(3))
        a_conn.execute("CREATE TEMP TABLE seed_transcripts (i int PRIMARY KEY, t jsonb) ON COMMIT DROP")
        a_conn.execute("CREATE TEMP TABLE seed_attempts ON COMMIT DROP AS "
                       f"SELECT {', '.join(attempt_cols[:-1])}, 0 AS transcript_i FROM call_attempts WITH NO DATA")
        with a_conn.cursor().copy("COPY seed_transcripts (i, t) FROM STDIN") as copy:
            for i, text in enumerate(pool):
                copy.write_row((i, text))
        with c_conn.cursor() as cur:
            cur.executemany(f"INSERT INTO campaigns VALUES ({', '.join(['%s'] * 9)})",
                            _campaign_rows(camps).rows())
            cur.executemany("INSERT INTO survey_questions VALUES (%s, %s, %s)", questions.rows())
        with contextlib.ExitStack() as copying:  # leaving it waits for the servers to finish
            copies = [copying.enter_context(_queued_copy(conn, statement)) for conn, statement in [
                (c_conn, f"COPY contacts ({', '.join(_names('contacts'))}) FROM STDIN (FORMAT csv)"),
                (a_conn, f"COPY seed_attempts ({staged}) FROM STDIN (FORMAT csv)"),
                (r_conn, f"COPY survey_responses ({', '.join(_names('survey_responses'))}) FROM STDIN (FORMAT csv)"),
            ]]
            for contact_rows, attempt_rows, answer_rows in chunks:
                _copy_csv(copies[0], _text_timestamps(contact_rows))
                _copy_csv(copies[1], _text_timestamps(_money_text(attempt_rows)))
                _copy_csv(copies[2], _text_timestamps(answer_rows))
        a_conn.execute(f"INSERT INTO call_attempts ({', '.join(attempt_cols)}) "
                       f"SELECT {', '.join('s.' + c for c in attempt_cols[:-1])}, p.t "
                       "FROM seed_attempts s LEFT JOIN seed_transcripts p ON p.i = s.transcript_i")

    with _pg_connect(url, autocommit=True) as admin:
        admin.execute("SET maintenance_work_mem = '512MB'")
        for statement in _index_ddl():
            admin.execute(statement)
        admin.execute(f"VACUUM (ANALYZE) {', '.join(_COLUMNS)}")
    return [c.id for c in camps]


def _money_text(attempts: pl.DataFrame) -> pl.DataFrame:
    """cost_usd from ten-thousandths to exact decimal text, e.g. -1.5000."""
    cost = pl.col("cost_usd")
    return attempts.with_columns(cost_usd=pl.concat_str([
        pl.when(cost < 0).then(pl.lit("-")).otherwise(pl.lit("")),
        (cost.abs() // 10_000).cast(pl.String), pl.lit("."),
        (cost.abs() % 10_000).cast(pl.String).str.zfill(4)]))


def _seed_sqlite(path: Path, contacts: int, campaigns: int, seed: int, now: dt.datetime | None) -> list[str]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.executescript(";\n".join(_table_ddl(t, sqlite=True) for t in _COLUMNS) + ";")
        existing = conn.execute("SELECT count(*) FROM campaigns").fetchone()[0]
        camps, questions, pool, chunks = _generate(contacts, campaigns, seed, existing, now, _CHUNK)

        def insert(table: str, frame: pl.DataFrame) -> None:
            marks = ", ".join("?" * frame.width)
            conn.executemany(f"INSERT INTO {table} ({', '.join(frame.columns)}) VALUES ({marks})", frame.rows())

        with conn:  # one transaction
            insert("campaigns", _campaign_rows(camps))
            insert("survey_questions", questions)
            for contact_rows, attempt_rows, answer_rows in chunks:
                insert("contacts", _text_timestamps(contact_rows))
                insert("call_attempts", _text_timestamps(attempt_rows.with_columns(
                    cost_usd=pl.col("cost_usd") / 10_000, transcript=_pick(pool, pl.col("transcript")))))
                insert("survey_responses", _text_timestamps(answer_rows))
        conn.executescript(";\n".join(_index_ddl()) + ";\nANALYZE;")
    return [c.id for c in camps]
