"""CSV and Parquet writers that follow SPEC section 3 byte for byte, batch after batch.

A writer is opened once per export, receives the export rows batch by batch (native types from
transform.build_batch) and is closed; memory holds one batch at a time.
"""

from __future__ import annotations

import gzip
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from exports_pipeline.core.instants import (
    INFINITY_US,
    NEG_INFINITY_US,
    has_edges,
    holds_any,
    parquet_timestamp,
    timestamp_text,
)
from exports_pipeline.core.options import BASE_COLUMNS
from exports_pipeline.core.text import text_width

TIMESTAMP_COLUMNS = ("last_attempt_at", "completed_at", "call_started_at", "call_ended_at")
MONEY_COLUMNS = {"call_cost_usd": ("call_cost_units", 12), "total_cost_usd": ("total_cost_units", 38)}
# Never guarded: ids are ours and never start with a formula character.
UNGUARDED_TEXT = ("campaign_id", "contact_id")
TEXT_COLUMNS = (
    "campaign_id",
    "campaign_name",
    "assistant_name",
    "contact_id",
    "external_contact_id",
    "name",
    "business_name",
    "phone_number",
    "outcome",
    "call_status",
    "ended_reason",
    "recording_url",
    "transcript_summary",
)
REPEATED_VALUE_COLUMNS = ("campaign_id", "campaign_name", "assistant_name", "outcome", "call_status", "ended_reason")
E164 = r"^\+[1-9][0-9]{1,14}$"
FORMULA_START = r"^[=+\-@\t\r\n]"
CSV_DATETIME_FORMAT = "%Y-%m-%dT%H:%M:%S%.3fZ"
CSV_FRACTION_DIGITS, JSON_FRACTION_DIGITS = 3, 6


def _is_text(column: str) -> bool:
    return column in TEXT_COLUMNS or column not in BASE_COLUMNS  # qN_answer columns are text


def _fixed_point(units: pl.Expr, scale: int) -> pl.Expr:
    """Integer units as text with exactly `scale` decimals: never a float, never an exponent."""
    sign = pl.when(units < 0).then(pl.lit("-")).otherwise(pl.lit(""))
    magnitude = units.abs()
    return (
        sign + (magnitude // 10**scale).cast(pl.String) + "." + (magnitude % 10**scale).cast(pl.String).str.zfill(scale)
    )


def guard_formula(column: str) -> pl.Expr:
    """OWASP CSV injection guard: a leading apostrophe before = + - @ TAB CR LF (valid E.164 phones excepted)."""
    value = pl.col(column)
    risky = value.str.contains(FORMULA_START)
    if column == "phone_number":
        risky = risky & ~value.str.contains(E164)
    return pl.when(risky).then(pl.lit("'") + value).otherwise(value).alias(column)


def timestamps_in(columns: list[str]) -> list[str]:
    return [c for c in columns if c in TIMESTAMP_COLUMNS]


def csv_frame(rows: pl.DataFrame, columns: list[str], formula_guard: bool, timestamps_as_text: bool) -> pl.DataFrame:
    """The batch as the CSV shows it. Timestamps: as text (instants.timestamp_text), or left datetimes for
    the CSV writer's millisecond format, which gives the same text for years 0001..9999."""
    exprs = []
    for column in columns:
        if column in TIMESTAMP_COLUMNS and timestamps_as_text:
            exprs.append(timestamp_text(column, CSV_FRACTION_DIGITS))
        elif column in MONEY_COLUMNS:
            exprs.append(_fixed_point(pl.col(MONEY_COLUMNS[column][0]), 4).alias(column))
        elif column == "call_duration_seconds":
            exprs.append(_fixed_point(pl.col("call_duration_ms"), 3).alias(column))
        elif formula_guard and _is_text(column) and column not in UNGUARDED_TEXT:
            exprs.append(guard_formula(column))
        else:
            exprs.append(pl.col(column))
    return rows.select(exprs)


class CsvWriter:
    """RFC 4180, LF line ends, null as an empty field and "" for an empty string, optional UTF-8 BOM.
    With compress, the same bytes gzipped (no timestamp in the gzip header, so exports stay reproducible)."""

    def __init__(self, path: Path, columns: list[str], bom: bool, formula_guard: bool, compress: bool = False):
        self.path, self.columns, self.bom, self.formula_guard = path, columns, bom, formula_guard
        self.rows = 0
        self._raw = open(path, "wb")  # noqa: SIM115 (held across write() calls, closed by close())
        self._file = gzip.GzipFile(fileobj=self._raw, mode="wb", mtime=0, filename="") if compress else self._raw
        self._header_written = False

    def write(self, rows: pl.DataFrame) -> None:
        edges = has_edges(rows, timestamps_in(self.columns))
        csv_frame(rows, self.columns, self.formula_guard, timestamps_as_text=edges).write_csv(
            self._file,
            include_header=not self._header_written,
            include_bom=self.bom and not self._header_written,
            quote_style="necessary",
            datetime_format=CSV_DATETIME_FORMAT,
            line_terminator="\n",
            null_value="",
        )
        self._header_written = True
        self.rows += rows.height

    def close(self, empty_rows: pl.DataFrame) -> None:
        """Write the header alone when no batch came (a campaign with no contacts)."""
        if not self._header_written:
            self.write(empty_rows)
        self._file.close()
        self._raw.close()


def parquet_schema(columns: list[str]) -> pa.Schema:
    def arrow_type(column: str) -> pa.DataType:
        if column in TIMESTAMP_COLUMNS:
            return pa.timestamp("us", tz="UTC")
        if column in MONEY_COLUMNS:
            return pa.decimal128(MONEY_COLUMNS[column][1], 4)
        if column == "call_duration_seconds":
            return pa.float64()
        if column == "attempt_count":
            return pa.int64()
        return pa.string()

    return pa.schema([pa.field(c, arrow_type(c)) for c in columns])


def parquet_table(rows: pl.DataFrame, schema: pa.Schema) -> pa.Table:
    infinities = holds_any(rows, timestamps_in(schema.names), [INFINITY_US, NEG_INFINITY_US])
    exprs = []
    for column in schema.names:
        if column in TIMESTAMP_COLUMNS and infinities:
            exprs.append(parquet_timestamp(column))
        elif column in MONEY_COLUMNS:
            exprs.append((pl.col(MONEY_COLUMNS[column][0]).cast(pl.Decimal(38, 4)) / 10_000).alias(column))
        elif column == "call_duration_seconds":
            exprs.append((pl.col("call_duration_ms") / 1000).alias(column))
        else:
            exprs.append(pl.col(column))
    return rows.select(exprs).to_arrow().cast(schema)


class ParquetWriter:
    """Native types (SPEC section 3), zstd; one row group per batch."""

    def __init__(self, path: Path, columns: list[str]):
        self.path = path
        self.schema = parquet_schema(columns)
        self.rows = 0
        # Dictionary encoding only where values repeat: on per-contact values (ids, names, phones, links,
        # summaries, times, amounts) it costs time and saves nothing.
        repeated = [c for c in columns if c in REPEATED_VALUE_COLUMNS or c not in BASE_COLUMNS]
        self._writer = pq.ParquetWriter(path, self.schema, compression="zstd", use_dictionary=repeated)

    def write(self, rows: pl.DataFrame) -> None:
        self._writer.write_table(parquet_table(rows, self.schema))
        self.rows += rows.height

    def close(self, empty_rows: pl.DataFrame) -> None:
        self._writer.close()


class JsonLinesWriter:
    """One JSON object per contact: native values as in Parquet (never guarded); money as exact decimal
    strings and timestamps as ISO 8601 UTC strings with microseconds, so that no JSON reader rounds them."""

    def __init__(self, path: Path, columns: list[str]):
        self.path, self.columns, self.rows = path, columns, 0
        self._file = open(path, "wb")  # noqa: SIM115 (held across write() calls, closed by close())

    def write(self, rows: pl.DataFrame) -> None:
        edges = has_edges(rows, timestamps_in(self.columns))
        exprs = []
        for column in self.columns:
            if column in MONEY_COLUMNS:
                exprs.append(_fixed_point(pl.col(MONEY_COLUMNS[column][0]), 4).alias(column))
            elif column == "call_duration_seconds":
                exprs.append((pl.col("call_duration_ms") / 1000).alias(column))
            elif column in TIMESTAMP_COLUMNS:
                exprs.append(timestamp_text(column, JSON_FRACTION_DIGITS, edges))
            else:
                exprs.append(pl.col(column))
        if rows.height:
            rows.select(exprs).write_ndjson(self._file)
        self.rows += rows.height

    def close(self, empty_rows: pl.DataFrame) -> None:
        self._file.close()


XLSX_MAX_ROWS = 1_048_575  # one sheet holds 1,048,576 rows, the header included
XLSX_MAX_COLUMNS = 16_384
XLSX_MAX_CELL_CHARS = 32_767  # Excel counts UTF-16 code units
XLSX_CUT_MARKER = " [… cut: Excel holds 32,767 characters per cell; the CSV has the whole text]"
EXCEL_FIRST_DATE = datetime(1900, 3, 1, tzinfo=UTC)  # Excel's dates before March 1900 are unreliable
EXCEL_LAST_DATE = datetime(9999, 12, 31, 23, 59, 59, 999_000, tzinfo=UTC)
XLSX_DATE_FORMAT = "yyyy-mm-dd hh:mm:ss.000"
XLSX_MIN_WIDTH, XLSX_MAX_WIDTH = 8, 60  # column widths, in characters (Excel's default is 8.43)
XLSX_FILTER_BUTTON_WIDTH = 2  # the header's filter button covers about two characters
# Text widths come from the first rows: measuring every cell would cost more than writing it. Numbers are
# measured on every row (vectorized), since a number wider than its column shows as ###.
XLSX_WIDTH_SAMPLE_ROWS = 1_000
NUMBER_COLUMNS = (*MONEY_COLUMNS, "call_duration_seconds", "attempt_count")


def fit_excel_cell(text: str) -> str | None:
    """The text cut to Excel's cell limit with XLSX_CUT_MARKER at the end, or None when it fits."""
    if len(text) <= XLSX_MAX_CELL_CHARS // 2:  # fits even if every character takes two UTF-16 units
        return None
    encoded = text.encode("utf-16-le")
    if len(encoded) <= 2 * XLSX_MAX_CELL_CHARS:
        return None
    keep = 2 * (XLSX_MAX_CELL_CHARS - len(XLSX_CUT_MARKER))
    return encoded[:keep].decode("utf-16-le", errors="ignore") + XLSX_CUT_MARKER  # never half a character


def _shown_width(text: str) -> int:
    """Characters a text takes in a cell, wide ones (CJK, emoji) counting two; measured up to the widest column."""
    head = text[:XLSX_MAX_WIDTH]
    return len(head) if head.isascii() else text_width(head)


def shown_widths(rows: pl.DataFrame, columns: list[str], sample_rows: int) -> dict[str, int]:
    """The widest cell of each column as the CSV writes it (the XLSX shows the same digits): numbers
    over every row, the other columns over the first sample_rows rows (none: not measured)."""
    numbers = [c for c in columns if c in NUMBER_COLUMNS]
    lengths = csv_frame(rows, numbers, formula_guard=False, timestamps_as_text=False).select(
        pl.all().cast(pl.String).str.len_chars()
    )
    widths = {c: lengths[c].max() or 0 for c in numbers}
    if sample_rows:
        others = [c for c in columns if c not in NUMBER_COLUMNS]
        sample = csv_frame(rows.head(sample_rows), others, formula_guard=False, timestamps_as_text=True)
        for column in others:
            widths[column] = max(map(_shown_width, sample[column].drop_nulls().unique()), default=0)
    return widths


def column_width(column: str, shown: int) -> int:
    """Room for the header and its filter button and for the widest cell, within the bounds; a date
    column always fits a date, which Excel would otherwise show as ###."""
    floor = len(XLSX_DATE_FORMAT) if column in TIMESTAMP_COLUMNS else XLSX_MIN_WIDTH
    return min(XLSX_MAX_WIDTH, max(floor, len(column) + XLSX_FILTER_BUTTON_WIDTH, shown + 1))


def _excel_source(column: str) -> pl.Expr:
    """What a cell is written from: integer units for money and durations, the row's value otherwise;
    timestamps floored to the millisecond like the CSV, and only where Excel has a date for them."""
    if column in MONEY_COLUMNS:
        return pl.col(MONEY_COLUMNS[column][0])
    if column == "call_duration_seconds":
        return pl.col("call_duration_ms")
    if column in TIMESTAMP_COLUMNS:
        floored = pl.col(column).dt.truncate("1ms")
        return pl.when(_has_excel_date(column)).then(floored).alias(column)
    return pl.col(column)


def _has_excel_date(column: str) -> pl.Expr:
    return pl.col(column).dt.truncate("1ms").is_between(EXCEL_FIRST_DATE, EXCEL_LAST_DATE)


def _excel_text(column: str) -> pl.Expr:
    """A timestamp Excel has no date for, as the CSV writes it (text cell)."""
    return (
        pl.when(~_has_excel_date(column)).then(timestamp_text(column, CSV_FRACTION_DIGITS)).alias(f"{column} as text")
    )


class XlsxWriter:
    """A workbook for spreadsheet users: text cells stay text (never formulas, numbers or links),
    timestamps are real dates in UTC where Excel has them (text otherwise), phone numbers keep their
    plus; text past Excel's cell limit is cut with a marker and counted; a frozen header with a filter
    and columns as wide as their content (bounded); a second sheet lists the questions. Rows are
    streamed (constant_memory): the widths are kept as one number per column and set on close."""

    def __init__(self, path: Path, columns: list[str], questions: list[tuple[int, str]]):
        import xlsxwriter

        self.path, self.columns, self.questions, self.rows = path, columns, questions, 0
        self.cut_cells = 0
        self._book = xlsxwriter.Workbook(
            str(path),
            {
                "constant_memory": True,
                "strings_to_formulas": False,
                "strings_to_numbers": False,
                "strings_to_urls": False,
                "default_date_format": XLSX_DATE_FORMAT,
            },
        )
        self._book.set_properties({"created": datetime(2000, 1, 1)})  # reproducible bytes
        self._sheet = self._book.add_worksheet("results")
        self._formats = {
            "money": self._book.add_format({"num_format": "0.0000"}),
            "seconds": self._book.add_format({"num_format": "0.000"}),
            "date": self._book.add_format({"num_format": XLSX_DATE_FORMAT}),
        }
        self._shown = dict.fromkeys(columns, 0)
        timestamps = timestamps_in(columns)
        self._sources = [_excel_source(c) for c in columns] + [_excel_text(c) for c in timestamps]
        self._text_at = {columns.index(c): len(columns) + i for i, c in enumerate(timestamps)}
        for index, column in enumerate(columns):
            self._sheet.write_string(0, index, column)

    def _string(self, sheet, row: int, index: int, text: str) -> None:
        cut = fit_excel_cell(text)
        if cut is not None:
            self.cut_cells += 1
        sheet.write_string(row, index, text if cut is None else cut)

    def _cell(self, row: int, index: int, column: str, value) -> None:
        if value is None:
            return
        if column in TIMESTAMP_COLUMNS:
            self._sheet.write_datetime(row, index, value.replace(tzinfo=None), self._formats["date"])
        elif column in MONEY_COLUMNS:
            self._sheet.write_number(row, index, value / 10_000, self._formats["money"])
        elif column == "call_duration_seconds":
            self._sheet.write_number(row, index, value / 1000, self._formats["seconds"])
        elif column == "attempt_count":
            self._sheet.write_number(row, index, value)
        else:
            self._string(self._sheet, row, index, value)

    def _measure(self, rows: pl.DataFrame) -> None:
        sample_rows = max(0, XLSX_WIDTH_SAMPLE_ROWS - self.rows)
        for column, width in shown_widths(rows, self.columns, sample_rows).items():
            self._shown[column] = max(self._shown[column], width)

    def write(self, rows: pl.DataFrame) -> None:
        self._measure(rows)
        for values in rows.select(self._sources).iter_rows():
            self.rows += 1
            for index, column in enumerate(self.columns):
                text_at = self._text_at.get(index)
                if text_at is not None and values[text_at] is not None:
                    self._string(self._sheet, self.rows, index, values[text_at])
                else:
                    self._cell(self.rows, index, column, values[index])

    def close(self, empty_rows: pl.DataFrame) -> None:
        for index, column in enumerate(self.columns):
            self._sheet.set_column(index, index, column_width(column, self._shown[column]))
        self._sheet.freeze_panes(1, 0)
        self._sheet.autofilter(0, 0, self.rows, len(self.columns) - 1)
        sheet = self._book.add_worksheet("questions")
        sheet.write_string(0, 0, "position")
        sheet.write_string(0, 1, "prompt")
        sheet.set_column(1, 1, column_width("prompt", max((_shown_width(p) for _, p in self.questions), default=0)))
        for row, (position, prompt) in enumerate(self.questions, start=1):
            sheet.write_number(row, 0, position)
            self._string(sheet, row, 1, prompt)
        self._book.close()
