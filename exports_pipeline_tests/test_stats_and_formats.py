"""Campaign stats against hand-computed figures, the extra formats read back by their own readers,
and blocking checks that fail and then publish nothing (SPEC sections 3 and 6)."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime, timedelta

import dagster as dg
import openpyxl
import polars as pl
import psycopg
import pytest
from pypdf import PdfReader

import exports_pipeline.core.export as export_module
from exports_pipeline.core.errors import InvalidInputError
from exports_pipeline.core.export import stage_export
from exports_pipeline.core.options import ExportOptions
from exports_pipeline.core.source import PostgresSource
from exports_pipeline.core.stats import percentage
from exports_pipeline.core.writers import XLSX_MAX_WIDTH, XLSX_MIN_WIDTH, shown_widths
from exports_pipeline.defs.assets import DEFAULT_EXPORT_KEYS, campaign_export
from exports_pipeline.defs.resources import ExportDestination, SourceDatabase
from exports_pipeline_tests import awkward
from exports_pipeline_tests.awkward import C1, EMPTY, K1, K2


@pytest.fixture
def awkward_pg(pg_url) -> str:
    awkward.load(pg_url)
    return pg_url


def test_percentages_round_half_up_and_survive_zero():
    assert percentage(1, 800) == 0.13  # 0.125: half-up, not banker's rounding
    assert percentage(2, 3) == 66.67
    assert percentage(0, 0) == 0.0


def test_stats_equal_the_hand_computed_figures(awkward_pg):
    with stage_export(awkward_pg, C1, ExportOptions(), "run00001") as staged:
        stats = staged.stats
    assert stats["contacts"] == {
        "total": 4,
        "pending": 1,
        "in_progress": 0,
        "completed": 1,
        "refused": 1,
        "not_reached": 0,
        "excluded": 1,
    }
    # own attempts only: the one filed under C2 and the one of C2's contact are left out
    assert stats["attempts"] == {
        "total": 6,
        "queued": 0,
        "ringing": 0,
        "in_progress": 1,
        "completed": 2,
        "no_answer": 1,
        "busy": 1,
        "failed": 1,
        "refused": 0,
    }
    assert stats["completion_rate"] == 25.0 and stats["conversion_rate"] == 50.0
    # 65.000 + 0.300 - 2.500 seconds (floored to the millisecond, as in the CSV)
    assert stats["call_duration_seconds"] == {"count": 3, "average": 20.933, "min": -2.5, "max": 65.0, "total": 62.8}
    assert stats["total_cost_usd"] == "12345677.5999"
    assert len(stats["attempts_per_hour"]) == 24 and len(stats["attempts_per_day"]) == 30


def test_empty_campaign_gives_zero_rates_and_empty_buckets(awkward_pg):
    with stage_export(awkward_pg, EMPTY, ExportOptions(), "run00001") as staged:
        stats = staged.stats
    assert stats["contacts"]["total"] == 0 and stats["completion_rate"] == 0 and stats["conversion_rate"] == 0
    assert stats["call_duration_seconds"] == {"count": 0, "average": None, "min": None, "max": None, "total": 0.0}
    assert {b["attempts"] for b in stats["attempts_per_hour"] + stats["attempts_per_day"]} == {0}


def test_activity_buckets_are_anchored_to_the_snapshot_time(awkward_pg):
    offsets = {"30 minutes": 1, "5 hours": 1, "23 hours": 1, "3 days": 1, "29 days": 1, "40 days": 1}
    with psycopg.connect(awkward_pg, autocommit=True) as conn:
        for number, offset in enumerate(offsets, start=1):
            conn.execute(
                f"INSERT INTO call_attempts (id, campaign_id, contact_id, attempt_number, status, started_at) "
                f"VALUES ('e0000000-0000-4000-8000-00000000000{number}', '{C1}', '{K2}', {10 + number}, "
                f"'completed', now() - interval '{offset}')"
            )
        instants = [
            r[0]
            for r in conn.execute(
                "SELECT started_at FROM call_attempts WHERE id::text LIKE 'e0000000%' ORDER BY id"
            ).fetchall()
        ]
    with stage_export(awkward_pg, C1, ExportOptions(), "run00001") as staged:
        stats, snapshot_time = staged.stats, staged.snapshot_time
    last_hour = snapshot_time.replace(minute=0, second=0, microsecond=0)
    last_day = last_hour.replace(hour=0)
    expected_hours = {(last_hour - timedelta(hours=h)).strftime("%Y-%m-%dT%H:00:00Z") for h in range(24)}
    expected_days = {(last_day - timedelta(days=d)).strftime("%Y-%m-%d") for d in range(30)}
    hour_counts = {b["hour"]: b["attempts"] for b in stats["attempts_per_hour"]}
    day_counts = {b["day"]: b["attempts"] for b in stats["attempts_per_day"]}
    assert set(hour_counts) == expected_hours and set(day_counts) == expected_days
    for instant in instants:
        hour = instant.astimezone(UTC).strftime("%Y-%m-%dT%H:00:00Z")
        day = instant.astimezone(UTC).strftime("%Y-%m-%d")
        assert hour_counts.get(hour, 1) >= 1 and day_counts.get(day, 1) >= 1
    in_hours = sum(1 for i in instants if i >= last_hour - timedelta(hours=23))
    in_days = sum(1 for i in instants if i >= last_day - timedelta(days=29))
    assert sum(hour_counts.values()) == in_hours and sum(day_counts.values()) == in_days
    assert in_days <= 5  # 40 days ago is outside the window


def test_filtered_export_still_reports_figures_for_the_whole_campaign(awkward_pg):
    with stage_export(awkward_pg, C1, ExportOptions(states=("pending",)), "run00001") as staged:
        assert staged.rows == 1
        assert staged.stats["contacts"]["total"] == 4 and staged.stats["attempts"]["total"] == 6


ALL_FORMATS = ("csv", "parquet", "jsonl", "xlsx", "csv.gz", "pdf")


@pytest.fixture
def every_format(awkward_pg):
    with stage_export(awkward_pg, C1, ExportOptions(formats=ALL_FORMATS), "run00001") as staged:
        yield {f.format: f.path.read_bytes() for f in staged.files}, staged


def test_gzip_csv_holds_the_same_bytes(every_format):
    files, _ = every_format
    assert gzip.decompress(files["csv.gz"]) == files["csv"] == awkward.expected_csv()


def test_json_lines_read_back_with_the_json_module(every_format):
    files, _ = every_format
    rows = [json.loads(line) for line in files["jsonl"].decode().splitlines()]
    assert [r["contact_id"] for r in rows] == [awkward.K4, K1, K2, awkward.K3]
    k1 = rows[1]
    assert list(k1) == awkward.HEADER
    assert k1["call_cost_usd"] == "12345678.9999" and k1["total_cost_usd"] == "12345677.5999"
    assert k1["completed_at"] == "1969-12-31T23:59:59.999500Z"
    assert k1["q2_answer"] == "=1+1" and k1["q1_answer"] == "" and k1["q3_answer"] is None
    assert k1["attempt_count"] == 3 and k1["call_duration_seconds"] == 0.3
    assert k1["transcript_summary"] == "a" * 99 + "😀"


def test_xlsx_keeps_text_as_text_and_dates_as_dates(every_format, tmp_path):
    files, _ = every_format
    path = tmp_path / "results.xlsx"
    path.write_bytes(files["xlsx"])
    book = openpyxl.load_workbook(path)
    sheet = book["results"]
    header = [c.value for c in sheet[1]]
    assert header == awkward.HEADER
    cells = [cell for row in sheet.iter_rows() for cell in row]
    assert not [c.coordinate for c in cells if c.data_type == "f"]  # no formula anywhere
    k1 = dict(zip(header, sheet[3], strict=True))
    assert k1["q2_answer"].value == "=1+1" and k1["q2_answer"].data_type == "s"
    assert k1["phone_number"].value == "+15551234567" and k1["phone_number"].data_type == "s"
    assert k1["last_attempt_at"].is_date
    assert abs(k1["last_attempt_at"].value - datetime(2026, 1, 2, 10, 0, 0, 123000)) < timedelta(milliseconds=1)
    assert k1["call_cost_usd"].value == 12345678.9999 and k1["attempt_count"].value == 3
    assert [[c.value for c in row] for row in book["questions"].iter_rows()] == [
        ["position", "prompt"],
        [1, 'How, "really"?'],
        [2, "Score"],
        [4, "Comments"],
    ]


def column_widths(sheet) -> dict[str, int]:
    """Each header's column width in characters (xlsxwriter stores neighbours of one width as one range,
    and adds Excel's cell padding, under one character)."""
    widths = {}
    for dimension in sheet.column_dimensions.values():
        for index in range(dimension.min, dimension.max + 1):
            widths[sheet.cell(1, index).value] = int(dimension.width)
    return widths


def test_xlsx_opens_with_a_frozen_filtered_header_and_columns_as_wide_as_their_text(every_format, tmp_path):
    files, _ = every_format
    path = tmp_path / "results.xlsx"
    path.write_bytes(files["xlsx"])
    sheet = openpyxl.load_workbook(path)["results"]
    pane = sheet.sheet_view.pane
    assert (sheet.freeze_panes, pane.ySplit, pane.xSplit, pane.topLeftCell, pane.state) == (
        "A2",
        1,
        None,
        "A2",
        "frozen",
    )
    assert sheet.auto_filter.ref == "A1:Y5"  # 25 columns, the header and C1's 4 contacts
    widths = column_widths(sheet)
    assert list(widths) == awkward.HEADER
    assert all(XLSX_MIN_WIDTH <= w <= XLSX_MAX_WIDTH for w in widths.values()), widths
    # the widest cell and one character: 36-character ids, the name with CR LF, K2's link, K2's "\rcarriage"
    assert (widths["campaign_id"], widths["campaign_name"], widths["recording_url"], widths["name"]) == (37, 22, 30, 10)
    assert widths["transcript_summary"] == XLSX_MAX_WIDTH  # 103 characters
    assert widths["business_name"] == 15  # the header and its filter button: "Café 東京 😀" takes 12
    assert widths["last_attempt_at"] == 25 and widths["completed_at"] == 25  # the text of 1969-12-31T23:59:59.999Z
    assert widths["call_started_at"] >= 23  # room for a date cell, whatever the sample held


def test_xlsx_of_an_empty_campaign_is_a_filtered_header(awkward_pg, tmp_path):
    with stage_export(awkward_pg, EMPTY, ExportOptions(formats=("xlsx",)), "run00001") as staged:
        path = tmp_path / "empty.xlsx"
        path.write_bytes(staged.files[0].path.read_bytes())
    sheet = openpyxl.load_workbook(path)["results"]
    assert [c.value for c in sheet[1]] == awkward.HEADER[:21] and sheet.max_row == 1
    assert sheet.freeze_panes == "A2" and sheet.auto_filter.ref == "A1:U1"
    widths = column_widths(sheet)
    assert (widths["name"], widths["campaign_id"], widths["external_contact_id"], widths["completed_at"]) == (
        XLSX_MIN_WIDTH,
        13,
        21,
        23,
    )  # the minimum, the headers and their filter button, a date


def test_xlsx_widths_measure_numbers_on_every_row_and_text_on_the_first_rows():
    rows = pl.DataFrame(
        {"attempt_count": [1, 123_456_789_012], "name": ["a", "bbbbbbbbbb"], "q1_answer": ["東京😀", None]}
    )
    assert shown_widths(rows, ["attempt_count", "name", "q1_answer"], 1) == {
        "attempt_count": 12,
        "name": 1,
        "q1_answer": 6,
    }
    assert shown_widths(rows, ["attempt_count", "name"], 0) == {"attempt_count": 12}
    assert shown_widths(rows, ["name"], 2) == {"name": 10}


def test_pdf_summary_shows_the_figures(every_format, tmp_path):
    files, staged = every_format
    path = tmp_path / "summary.pdf"
    path.write_bytes(files["pdf"])
    text = PdfReader(path).pages[0].extract_text()
    assert "Campaign summary" in text and C1 in text and staged.snapshot in text
    assert "25.00 %" in text and "50.00 %" in text and "USD 12345677.5999" in text
    assert "attempts per day" in text


def test_xlsx_beyond_the_sheet_limit_is_refused_before_any_work(awkward_pg, monkeypatch):
    monkeypatch.setattr(export_module, "XLSX_MAX_ROWS", 3)
    with (
        pytest.raises(InvalidInputError, match="option formats: xlsx holds at most 3 rows"),
        stage_export(awkward_pg, C1, ExportOptions(formats=("xlsx",)), "run00001"),
    ):
        pass


# ------------------------------------------------------------------------------------ blocking checks


def _duplicate_rows(build_rows):
    def duplicated(*args, **kwargs):
        rows = build_rows(*args, **kwargs)
        return rows.vstack(rows)

    return duplicated


def _drop_last_header_column(csv_frame):
    return lambda rows, columns, guard, **text: csv_frame(rows, columns, guard, **text).rename(
        {columns[-1]: "surprise"}
    )


@pytest.mark.parametrize(
    "failing_check, break_it",
    [
        (
            "row_count_matches_source",
            lambda mp: mp.setattr(PostgresSource, "count_contacts", lambda self, cid, options: 999),
        ),
        (
            "contact_id_unique",
            lambda mp: mp.setattr(export_module, "build_rows", _duplicate_rows(export_module.build_rows)),
        ),
        (
            "header_matches_spec",
            lambda mp: mp.setattr(
                "exports_pipeline.core.writers.csv_frame", _drop_last_header_column(export_module.csv_frame)
            ),
        ),
    ],
)
def test_a_failed_blocking_check_fails_the_run_and_publishes_nothing(
    awkward_pg, tmp_path, monkeypatch, failing_check, break_it
):
    break_it(monkeypatch)
    destination = tmp_path / "exports"
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("campaigns", [C1])
        result = dg.materialize(
            [campaign_export],
            selection=DEFAULT_EXPORT_KEYS,
            instance=instance,
            partition_key=C1,
            raise_on_error=False,
            resources={
                "source": SourceDatabase(url=awkward_pg),
                "destination": ExportDestination(url=str(destination)),
            },
        )
        assert not result.success
        failed = {c.check_name for c in result.get_asset_check_evaluations() if not c.passed}
        assert failing_check in failed
        assert "blocking check" in result.failure_data_for_node("campaign_export").error.message
        assert not result.asset_materializations_for_node("campaign_export")
    assert not destination.exists()
