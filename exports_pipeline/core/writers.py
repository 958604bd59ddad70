"""CSV and Parquet writers that follow SPEC section 3 byte for byte, batch after batch.

A writer is opened once per export, receives the export rows batch by batch (native types from
transform.build_batch) and is closed; memory holds one batch at a time.
"""
from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from exports_pipeline.core.options import BASE_COLUMNS

TIMESTAMP_COLUMNS = ("last_attempt_at", "completed_at", "call_started_at", "call_ended_at")
MONEY_COLUMNS = {"call_cost_usd": ("call_cost_units", 12), "total_cost_usd": ("total_cost_units", 38)}
# Never guarded: ids are ours and never start with a formula character.
UNGUARDED_TEXT = ("campaign_id", "contact_id")
TEXT_COLUMNS = ("campaign_id", "campaign_name", "assistant_name", "contact_id", "external_contact_id", "name",
                "business_name", "phone_number", "outcome", "call_status", "ended_reason", "recording_url",
                "transcript_summary")
E164 = r"^\+[1-9][0-9]{1,14}$"
FORMULA_START = r"^[=+\-@\t\r\n]"
CSV_DATETIME_FORMAT = "%Y-%m-%dT%H:%M:%S%.3fZ"


def _is_text(column: str) -> bool:
    return column in TEXT_COLUMNS or column not in BASE_COLUMNS  # qN_answer columns are text


def _fixed_point(units: pl.Expr, scale: int) -> pl.Expr:
    """Integer units as text with exactly `scale` decimals: never a float, never an exponent."""
    sign = pl.when(units < 0).then(pl.lit("-")).otherwise(pl.lit(""))
    magnitude = units.abs()
    return (sign + (magnitude // 10 ** scale).cast(pl.String) + "."
            + (magnitude % 10 ** scale).cast(pl.String).str.zfill(scale))


def guard_formula(column: str) -> pl.Expr:
    """OWASP CSV injection guard: a leading apostrophe before = + - @ TAB CR LF (valid E.164 phones excepted)."""
    value = pl.col(column)
    risky = value.str.contains(FORMULA_START)
    if column == "phone_number":
        risky = risky & ~value.str.contains(E164)
    return pl.when(risky).then(pl.lit("'") + value).otherwise(value).alias(column)


def csv_frame(rows: pl.DataFrame, columns: list[str], formula_guard: bool) -> pl.DataFrame:
    """The batch as the CSV shows it; timestamps stay datetimes for the writer's millisecond format."""
    exprs = []
    for column in columns:
        if column in MONEY_COLUMNS:
            exprs.append(_fixed_point(pl.col(MONEY_COLUMNS[column][0]), 4).alias(column))
        elif column == "call_duration_seconds":
            exprs.append(_fixed_point(pl.col("call_duration_ms"), 3).alias(column))
        elif formula_guard and _is_text(column) and column not in UNGUARDED_TEXT:
            exprs.append(guard_formula(column))
        else:
            exprs.append(pl.col(column))
    return rows.select(exprs)


class CsvWriter:
    """RFC 4180, LF line ends, null as an empty field and "" for an empty string, optional UTF-8 BOM."""

    def __init__(self, path: Path, columns: list[str], bom: bool, formula_guard: bool):
        self.path, self.columns, self.bom, self.formula_guard = path, columns, bom, formula_guard
        self.rows = 0
        self._file = open(path, "wb")
        self._header_written = False

    def write(self, rows: pl.DataFrame) -> None:
        csv_frame(rows, self.columns, self.formula_guard).write_csv(
            self._file, include_header=not self._header_written, include_bom=self.bom and not self._header_written,
            quote_style="necessary", datetime_format=CSV_DATETIME_FORMAT, line_terminator="\n", null_value="")
        self._header_written = True
        self.rows += rows.height

    def close(self, empty_rows: pl.DataFrame) -> None:
        """Write the header alone when no batch came (a campaign with no contacts)."""
        if not self._header_written:
            self.write(empty_rows)
        self._file.close()


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
    exprs = []
    for column in schema.names:
        if column in MONEY_COLUMNS:
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
        self._writer = pq.ParquetWriter(path, self.schema, compression="zstd")

    def write(self, rows: pl.DataFrame) -> None:
        self._writer.write_table(parquet_table(rows, self.schema))
        self.rows += rows.height

    def close(self, empty_rows: pl.DataFrame) -> None:
        self._writer.close()
