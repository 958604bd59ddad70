"""The file writers (core/writers.py, SPEC section 3) on small frames of awkward values: the CSV byte for byte
(quotes, commas, CR/LF, empty versus null, the formula guard, money and durations as exact decimals), gzip,
JSON Lines, Parquet and Excel's cell limit. Plain functions, no server."""

from __future__ import annotations

import gzip
import json
from decimal import Decimal

import polars as pl
import pyarrow.parquet as pq
import pytest

from exports_pipeline.core.instants import INFINITY_US, PARQUET_INFINITY_US, UTC_US
from exports_pipeline.core.writers import (
    XLSX_CUT_MARKER,
    XLSX_MAX_CELL_CHARS,
    CsvWriter,
    JsonLinesWriter,
    ParquetWriter,
    csv_frame,
    fit_excel_cell,
)

COLUMNS = ["contact_id", "name", "phone_number", "call_cost_usd", "call_duration_seconds", "completed_at", "q1_answer"]
HEADER = b"contact_id,name,phone_number,call_cost_usd,call_duration_seconds,completed_at,q1_answer\n"
BOM = b"\xef\xbb\xbf"


def rows(*records: tuple) -> pl.DataFrame:
    """Export rows as the transform gives them: money in integer units, durations in milliseconds."""
    names = ["contact_id", "name", "phone_number", "call_cost_units", "call_duration_ms", "completed_at", "q1_answer"]
    frame = pl.DataFrame(
        [dict(zip(names, r, strict=True)) for r in records],
        schema={
            "contact_id": pl.String,
            "name": pl.String,
            "phone_number": pl.String,
            "call_cost_units": pl.Int64,
            "call_duration_ms": pl.Int64,
            "completed_at": pl.Int64,
            "q1_answer": pl.String,
        },
        orient="row",
    )
    return frame.with_columns(pl.col("completed_at").cast(UTC_US))


T1 = 1_767_323_045_678_901  # 2026-01-02T03:04:05.678901Z
AWKWARD = rows(
    ("k1", 'Smith, "Jo"', "+33612345678", 12_345, 1_500, T1, "=1+1"),
    ("k2", "", "+1-555", -5, None, None, None),  # empty name versus null answer
    ("k3", "line1\r\nline2", "555-1234", 0, 0, -1, "@SUM(A1)"),
    ("k4", "\tTab", "-42", 999_999_999_999, 59_999, 0, "-5"),  # the largest call cost Parquet holds: 12 digits
    ("k5", "Zoë 東京 🎉", None, None, 86_400_000, T1, "ok, fine"),
)
EXPECTED_CSV = (
    HEADER
    + b'k1,"Smith, ""Jo""",+33612345678,1.2345,1.500,2026-01-02T03:04:05.678Z,\'=1+1\n'
    + b'k2,"",\'+1-555,-0.0005,,,\n'
    + b'k3,"line1\r\nline2",555-1234,0.0000,0.000,1969-12-31T23:59:59.999Z,\'@SUM(A1)\n'
    + b"k4,'\tTab,'-42,99999999.9999,59.999,1970-01-01T00:00:00.000Z,'-5\n"
    + 'k5,Zoë 東京 🎉,,,86400.000,2026-01-02T03:04:05.678Z,"ok, fine"\n'.encode()
)


def write_csv(path, batches, **options) -> bytes:
    writer = CsvWriter(
        path, COLUMNS, options.get("bom", True), options.get("formula_guard", True), options.get("compress", False)
    )
    for batch in batches:
        writer.write(batch)
    writer.close(AWKWARD.head(0))
    return path.read_bytes()


def test_csv_is_byte_for_byte_the_hand_written_expectation(tmp_path):
    assert write_csv(tmp_path / "a.csv", [AWKWARD]) == BOM + EXPECTED_CSV


def test_csv_batches_write_one_header_and_one_bom(tmp_path):
    assert write_csv(tmp_path / "a.csv", [AWKWARD.head(2), AWKWARD.slice(2, 0), AWKWARD.tail(3)]) == BOM + EXPECTED_CSV


def test_csv_without_bom_and_guard_writes_the_values_as_they_are(tmp_path):
    written = write_csv(tmp_path / "a.csv", [AWKWARD], bom=False, formula_guard=False)
    assert written.startswith(HEADER)
    assert b",=1+1\n" in written and b",+1-555," in written and b"k4,\tTab,-42," in written and b"'" not in written


def test_csv_of_no_rows_is_the_header_alone(tmp_path):
    assert write_csv(tmp_path / "a.csv", []) == BOM + HEADER


def test_gzip_csv_is_the_same_bytes_and_reproducible(tmp_path):
    first = write_csv(tmp_path / "a.csv.gz", [AWKWARD], compress=True)
    second = write_csv(tmp_path / "b.csv.gz", [AWKWARD], compress=True)
    assert gzip.decompress(first) == BOM + EXPECTED_CSV
    assert first == second  # no time or file name in the gzip header


@pytest.mark.parametrize(
    "value, guarded",
    [
        ("=cmd|' /C calc'!A0", True),
        ("+1", True),
        ("-1", True),
        ("@x", True),
        ("\tx", True),
        ("\rx", True),
        ("\nx", True),
        (" =x", False),
        ("a=b", False),
        ("'=x", False),
        ("", False),
        ("＝x", False),  # fullwidth
    ],
)
def test_the_formula_guard_prefixes_an_apostrophe_to_formula_starts(value, guarded):
    shown = csv_frame(rows(("k", value, None, None, None, None, value)), ["name", "q1_answer"], True, False)
    assert shown.row(0) == (("'" + value,) * 2 if guarded else (value, value))


@pytest.mark.parametrize(
    "phone, shown",
    [
        ("+33612345678", "+33612345678"),  # valid E.164: left alone
        ("+123456789012345", "+123456789012345"),  # 15 digits, the most E.164 allows
        ("+1234567890123456", "'+1234567890123456"),  # 16 digits: not a phone number, guarded
        ("+0612345678", "'+0612345678"),  # no country code starts with 0
        ("+33 6 12 34 56 78", "'+33 6 12 34 56 78"),
        ("-33612345678", "'-33612345678"),
        ("0612345678", "0612345678"),
    ],
)
def test_valid_e164_phone_numbers_keep_their_plus(phone, shown):
    assert csv_frame(rows(("k", None, phone, None, None, None, None)), ["phone_number"], True, False).item() == shown


def test_ids_are_never_guarded():
    frame = rows(("-k", None, None, None, None, None, None))
    assert csv_frame(frame, ["contact_id"], True, False).item() == "-k"


def test_json_lines_keep_native_values_and_exact_money(tmp_path):
    writer = JsonLinesWriter(tmp_path / "a.jsonl", COLUMNS)
    writer.write(AWKWARD)
    writer.close(AWKWARD.head(0))
    lines = (tmp_path / "a.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == writer.rows == 5
    assert records[0] == {
        "contact_id": "k1",
        "name": 'Smith, "Jo"',
        "phone_number": "+33612345678",
        "call_cost_usd": "1.2345",
        "call_duration_seconds": 1.5,
        "completed_at": "2026-01-02T03:04:05.678901Z",
        "q1_answer": "=1+1",
    }  # never guarded
    assert records[1]["name"] == "" and records[1]["q1_answer"] is None and records[1]["call_duration_seconds"] is None
    assert records[2]["name"] == "line1\r\nline2" and records[2]["completed_at"] == "1969-12-31T23:59:59.999999Z"
    assert records[3]["call_cost_usd"] == "99999999.9999"
    assert records[4]["name"] == "Zoë 東京 🎉"


def test_json_lines_of_no_rows_is_an_empty_file(tmp_path):
    writer = JsonLinesWriter(tmp_path / "a.jsonl", COLUMNS)
    writer.close(AWKWARD.head(0))
    assert (tmp_path / "a.jsonl").read_bytes() == b""


def test_parquet_holds_native_types_exact_decimals_and_infinity(tmp_path):
    writer = ParquetWriter(tmp_path / "a.parquet", COLUMNS)
    writer.write(AWKWARD.head(3))
    writer.write(AWKWARD.tail(2).with_columns(pl.lit(INFINITY_US).cast(UTC_US).alias("completed_at")))
    writer.close(AWKWARD.head(0))
    table = pq.read_table(tmp_path / "a.parquet")
    assert pq.ParquetFile(tmp_path / "a.parquet").metadata.num_row_groups == 2  # one per batch
    assert table.column("call_cost_usd").to_pylist() == [
        Decimal("1.2345"),
        Decimal("-0.0005"),
        Decimal("0.0000"),
        Decimal("99999999.9999"),
        None,
    ]
    assert table.column("call_duration_seconds").to_pylist() == [1.5, None, 0.0, 59.999, 86400.0]
    assert table.column("q1_answer").to_pylist()[:2] == ["=1+1", None]  # unguarded; null stays null
    assert table.column("name").to_pylist()[1] == ""
    micros = table.column("completed_at").cast("int64").to_pylist()
    assert micros[:3] == [T1, None, -1] and micros[3:] == [PARQUET_INFINITY_US] * 2
    assert str(table.schema.field("completed_at").type) == "timestamp[us, tz=UTC]"


@pytest.mark.parametrize(
    "text", ["", "short", "x" * XLSX_MAX_CELL_CHARS, "é" * XLSX_MAX_CELL_CHARS, "🎉" * (XLSX_MAX_CELL_CHARS // 2)]
)
def test_text_that_fits_an_excel_cell_is_left_whole(text):
    assert fit_excel_cell(text) is None


@pytest.mark.parametrize(
    "text",
    [
        "x" * (XLSX_MAX_CELL_CHARS + 1),
        "🎉" * (XLSX_MAX_CELL_CHARS // 2 + 1),
        "a" + "🎉" * XLSX_MAX_CELL_CHARS,
        "東" * 100_000,
    ],
)
def test_longer_text_is_cut_to_the_limit_in_utf16_units_with_the_marker(text):
    cut = fit_excel_cell(text)
    assert cut is not None and cut.endswith(XLSX_CUT_MARKER)
    units = len(cut.encode("utf-16-le")) // 2
    assert XLSX_MAX_CELL_CHARS - 1 <= units <= XLSX_MAX_CELL_CHARS  # one less when an emoji would be halved
    assert text.startswith(cut.removesuffix(XLSX_CUT_MARKER))  # a start of the text, never half an emoji
