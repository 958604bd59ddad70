"""Values at the edges (issue 17): instants PostgreSQL holds that Python's datetime does not, format
limits, and failures between staging and publication. The expected cells are written out by hand."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from pathlib import Path

import dagster as dg
import openpyxl
import polars as pl
import psycopg
import pyarrow.parquet as pq
import pytest

import exports_pipeline.defs.assets as assets_module
from exports_pipeline.core.catalog import open_catalog
from exports_pipeline.core.destinations import LocalDestination
from exports_pipeline.core.errors import DestinationUnavailableError, InvalidInputError, SourceSchemaError
from exports_pipeline.core.export import publish_export, stage_export
from exports_pipeline.core.options import ExportOptions
from exports_pipeline.core.publish import read_latest
from exports_pipeline.core.source import open_source
from exports_pipeline.core.sourceurl import sqlite_path
from exports_pipeline.core.writers import XLSX_CUT_MARKER, XLSX_MAX_CELL_CHARS
from exports_pipeline.defs.assets import DEFAULT_EXPORT_KEYS, FORMAT_KEYS, STATS_KEY, campaign_export
from exports_pipeline.defs.resources import ExportDestination, SourceDatabase
from exports_pipeline.defs.schedules import changed_campaigns
from exports_pipeline_tests import awkward
from exports_pipeline_tests.test_stats_and_formats import column_widths

EDGE = "e0000000-0000-4000-8000-00000000000e"
E1, E2, E3, E4 = (f"e1000000-0000-4000-8000-00000000000{i}" for i in range(1, 5))
A1, A2, A4 = (f"e2000000-0000-4000-8000-00000000000{i}" for i in (1, 2, 4))

# Each instant as PostgreSQL takes it, as the SQLite demo stores it (ISO 8601, expanded years), and the
# cells the export writes for it: CSV (milliseconds, floored), JSON Lines (microseconds), Parquet (int64
# microseconds since 1970), XLSX (text where Excel has no date; None: a real date cell).
INSTANTS = {
    "infinity": ("infinity", "infinity", "infinity", "infinity", 2**63 - 1, "infinity"),
    "-infinity": ("-infinity", "-infinity", "-infinity", "-infinity", -(2**63 - 1), "-infinity"),
    "44 BC": (
        "0044-03-15 12:00:00.123456+00 BC",
        "-0043-03-15T12:00:00.123456Z",
        "-000043-03-15T12:00:00.123Z",
        "-000043-03-15T12:00:00.123456Z",
        -63_517_780_799_876_544,
        "-000043-03-15T12:00:00.123Z",
    ),
    "year 20000": (
        "20000-01-01 00:00:00.123456+00",
        "+20000-01-01T00:00:00.123456Z",
        "+020000-01-01T00:00:00.123Z",
        "+020000-01-01T00:00:00.123456Z",
        568_971_820_800_123_456,
        "+020000-01-01T00:00:00.123Z",
    ),
    "4713 BC": (
        "4713-01-01 00:00:00+00 BC",
        "-4712-01-01T00:00:00Z",
        "-004712-01-01T00:00:00.000Z",
        "-004712-01-01T00:00:00.000000Z",
        -210_863_520_000_000_000,
        "-004712-01-01T00:00:00.000Z",
    ),
    "1 BC": (
        "0001-01-01 00:00:00+00 BC",
        "0000-01-01T00:00:00Z",
        "+000000-01-01T00:00:00.000Z",
        "+000000-01-01T00:00:00.000000Z",
        -62_167_219_200_000_000,
        "+000000-01-01T00:00:00.000Z",
    ),
    "last readable": (
        "262142-12-31 23:59:59.999998+00",
        "+262142-12-31T23:59:59.999998Z",
        "+262142-12-31T23:59:59.999Z",
        "+262142-12-31T23:59:59.999998Z",
        8_210_266_876_799_999_998,
        "+262142-12-31T23:59:59.999Z",
    ),
    "last of 9999": (
        "9999-12-31 23:59:59.999999+00",
        "9999-12-31T23:59:59.999999Z",
        "9999-12-31T23:59:59.999Z",
        "9999-12-31T23:59:59.999999Z",
        253_402_300_799_999_999,
        None,
    ),
    "first of 0001": (
        "0001-01-01 00:00:00+00",
        "0001-01-01T00:00:00Z",
        "0001-01-01T00:00:00.000Z",
        "0001-01-01T00:00:00.000000Z",
        -62_135_596_800_000_000,
        "0001-01-01T00:00:00.000Z",
    ),
    "before Excel": (
        "1899-12-31 23:59:59.9996+00",
        "1899-12-31T23:59:59.9996Z",
        "1899-12-31T23:59:59.999Z",
        "1899-12-31T23:59:59.999600Z",
        -2_208_988_800_000_400,
        "1899-12-31T23:59:59.999Z",
    ),
    "Excel's first": (
        "1900-03-01 00:00:00+00",
        "1900-03-01T00:00:00Z",
        "1900-03-01T00:00:00.000Z",
        "1900-03-01T00:00:00.000000Z",
        -2_203_891_200_000_000,
        None,
    ),
    "plain": (
        "2026-01-01 00:00:00+00",
        "2026-01-01T00:00:00Z",
        "2026-01-01T00:00:00.000Z",
        "2026-01-01T00:00:00.000000Z",
        1_767_225_600_000_000,
        None,
    ),
}
PG, SQLITE, CSV, JSONL, PARQUET, XLSX = range(6)

# contact: (last_attempt_at, completed_at, created_at, updated_at)
CONTACTS = {
    E1: ("infinity", "-infinity", "plain", "plain"),
    E2: ("year 20000", "4713 BC", "-infinity", "plain"),
    E3: ("1 BC", "last readable", "infinity", "infinity"),
    E4: ("last of 9999", "first of 0001", "44 BC", "plain"),
}
ORDER = [E2, E4, E1, E3]  # by created_at: -infinity, 44 BC, 2026, infinity
# attempt: (contact, started_at, ended_at, CSV call_duration_seconds)
ATTEMPTS = {
    A1: (E1, "-infinity", "plain", ""),
    A2: (E2, "year 20000", "infinity", ""),
    A4: (E4, "before Excel", "Excel's first", "5097600.001"),  # 59 days and 1 ms, from the floored start
}
ANSWERED_AT = "infinity"  # E4's answer to question 1
INFINITE_ROWS = 6  # contacts E1 E2 E3, attempts A1 A2, the answer


def _load_edge(
    url: str, *, questions: list[tuple[int, str]] = ((1, "Q"),), answer: str = "yes", campaign_name: str = "Edges"
) -> None:
    """The awkward source plus campaign EDGE with the instants above, in PostgreSQL or SQLite."""
    awkward.load(url)
    form = SQLITE if url.startswith("sqlite") else PG
    contacts = CONTACTS
    rows = {
        "campaigns (id, name, owner_id, status, created_at, updated_at)": [
            (EDGE, campaign_name, awkward.OWNER, "running", INSTANTS["plain"][form], INSTANTS["year 20000"][form])
        ],
        "survey_questions (campaign_id, position, prompt)": [(EDGE, p, t) for p, t in questions],
        "contacts (id, campaign_id, phone_number, state, attempt_count, last_attempt_at, completed_at, created_at, "
        "updated_at)": [
            (k, EDGE, "+15550000000", "completed", 1, *(INSTANTS[v][form] for v in values))
            for k, values in contacts.items()
        ],
        "call_attempts (id, campaign_id, contact_id, attempt_number, status, started_at, ended_at, cost_usd)": [
            (a, EDGE, k, 1, "completed", INSTANTS[s][form], INSTANTS[e][form], "0.1000")
            for a, (k, s, e, _) in ATTEMPTS.items()
        ],
        "survey_responses (campaign_id, contact_id, question_position, answer, answered_at)": [
            (EDGE, E4, 1, answer, INSTANTS[ANSWERED_AT][form])
        ],
    }
    if form == SQLITE:
        with sqlite3.connect(sqlite_path(url)) as conn:
            for table, values in rows.items():
                conn.executemany(f"INSERT INTO {table} VALUES ({', '.join('?' * len(values[0]))})", values)
        return
    with psycopg.connect(url) as conn:
        for table, values in rows.items():
            conn.cursor().executemany(f"INSERT INTO {table} VALUES ({', '.join(['%s'] * len(values[0]))})", values)


@pytest.fixture(params=["postgresql", "sqlite"])
def edge_url(request, make_pg_database, tmp_path) -> str:
    url = make_pg_database() if request.param == "postgresql" else f"sqlite:///{tmp_path / 'edge.sqlite'}"
    _load_edge(url)
    return url


ALL_FORMATS = ("csv", "parquet", "jsonl", "xlsx", "csv.gz", "pdf")


def _export(url: str, out: Path, **options):
    with stage_export(url, EDGE, ExportOptions(formats=ALL_FORMATS, **options), "edge0001") as staged:
        return staged, publish_export(staged, LocalDestination(out))


def _expected(column: int, form: int) -> str | None:
    """Each contact's row: {contact: (last_attempt_at, completed_at, call_started_at, call_ended_at)}."""
    started = {k: (s, e) for k, s, e, _ in ATTEMPTS.values()}
    return {
        k: tuple(INSTANTS[v][form] for v in (CONTACTS[k][0], CONTACTS[k][1], *started[k]))
        if k in started
        else (INSTANTS[CONTACTS[k][0]][form], INSTANTS[CONTACTS[k][1]][form], None, None)
        for k in ORDER
    }


TIMESTAMP_COLUMNS = ("last_attempt_at", "completed_at", "call_started_at", "call_ended_at")


def test_every_instant_is_written_exactly_in_csv_jsonl_parquet_and_xlsx(edge_url, tmp_path):
    staged, published = _export(edge_url, tmp_path)
    folder = tmp_path / published.manifest_key.rsplit("/", 1)[0]

    rows = list(csv.DictReader(io.StringIO((folder / "campaign_results.csv").read_text(encoding="utf-8-sig"))))
    assert [r["contact_id"] for r in rows] == ORDER
    expected_csv = _expected(0, CSV)
    for row in rows:
        assert tuple(row[c] for c in TIMESTAMP_COLUMNS) == tuple(v or "" for v in expected_csv[row["contact_id"]])
    assert {r["contact_id"]: r["call_duration_seconds"] for r in rows} == {k: d for k, _, _, d in ATTEMPTS.values()} | {
        E3: ""
    }

    lines = [json.loads(line) for line in (folder / "campaign_results.jsonl").read_text().splitlines()]
    expected_json = _expected(0, JSONL)
    assert {r["contact_id"]: tuple(r[c] for c in TIMESTAMP_COLUMNS) for r in lines} == expected_json
    assert {r["contact_id"]: r["call_duration_seconds"] for r in lines} == {
        E1: None,
        E2: None,
        E3: None,
        E4: 5097600.001,
    }

    table = pl.from_arrow(pq.read_table(folder / "campaign_results.parquet"))
    assert all(table.schema[c] == pl.Datetime("us", "UTC") for c in TIMESTAMP_COLUMNS)
    micros = table.select("contact_id", *(pl.col(c).dt.epoch("us") for c in TIMESTAMP_COLUMNS))
    assert {r[0]: r[1:] for r in micros.iter_rows()} == _expected(0, PARQUET)

    sheet = openpyxl.load_workbook(folder / "campaign_results.xlsx", read_only=True)["results"]
    header, *cells = [list(r) for r in sheet.iter_rows(values_only=True)]
    found = {r[header.index("contact_id")]: tuple(r[header.index(c)] for c in TIMESTAMP_COLUMNS) for r in cells}
    expected_xlsx, expected_text = _expected(0, XLSX), expected_csv
    for contact, values in found.items():
        for value, text, shown in zip(values, expected_xlsx[contact], expected_text[contact], strict=True):
            if text is not None:  # no date in Excel: the CSV's text
                assert value == text
            elif shown is not None:  # a real date, floored to the millisecond like the CSV
                assert value.isoformat(timespec="milliseconds") + "Z" == shown, (contact, value)

    assert staged.anomalies["rows_with_infinite_timestamps"] == INFINITE_ROWS
    preview = {r["contact_id"]: tuple(r[c] for c in TIMESTAMP_COLUMNS) for r in staged.preview.iter_rows(named=True)}
    assert preview == expected_csv  # the file's own text, which the materialization's table shows


def test_the_fingerprint_holds_infinity_and_far_years_and_matches_the_sources(edge_url):
    with stage_export(edge_url, EDGE, ExportOptions(), "edge0001") as staged, open_source(edge_url) as source:
        assert staged.fingerprint == source.fingerprint(EDGE)
    with open_catalog(edge_url) as catalog:
        assert catalog.fingerprints([EDGE]) == {EDGE: staged.fingerprint}
    assert staged.fingerprint == {
        "campaign_updated_at": "+020000-01-01T00:00:00.123456+00:00",
        "contacts_count": 4,
        "contacts_max_updated_at": "infinity",
        "attempts_count": 3,
        "attempts_max_time": "infinity",
        "answers_count": 1,
        "answers_max_answered_at": "infinity",
        "questions_count": 1,
    }


def test_the_nightly_schedule_orders_and_compares_such_fingerprints(edge_url, tmp_path):
    destination = LocalDestination(tmp_path)
    with open_catalog(edge_url) as catalog:
        assert changed_campaigns(catalog, destination, [EDGE, awkward.C1]) == [EDGE, awkward.C1]  # infinity first
        _export(edge_url, tmp_path)
        assert changed_campaigns(catalog, destination, [EDGE, awkward.C1]) == [awkward.C1]


def test_stats_leave_infinite_calls_out_of_durations(edge_url):
    with stage_export(edge_url, EDGE, ExportOptions(), "edge0001") as staged:
        durations = staged.stats["call_duration_seconds"]
    assert durations == {
        "count": 1,
        "average": 5097600.001,
        "min": 5097600.001,
        "max": 5097600.001,
        "total": 5097600.001,
    }


@pytest.mark.parametrize(
    "kind, table, column, row, instant",
    [
        ("postgresql", "contacts", "last_attempt_at", E1, "270000-01-01 00:00:00+00"),  # past what connectorx decodes
        ("postgresql", "contacts", "completed_at", E2, "262142-12-31 23:59:59.999999+00"),  # reads as infinity
        ("postgresql", "call_attempts", "ended_at", A4, "294276-12-31 23:59:59.999999+00"),  # PostgreSQL's last
        ("sqlite", "contacts", "last_attempt_at", E1, "+270000-01-01T00:00:00Z"),
    ],
)
def test_an_instant_past_the_readable_range_fails_naming_table_column_and_row(
    make_pg_database, tmp_path, kind, table, column, row, instant
):
    url = make_pg_database() if kind == "postgresql" else f"sqlite:///{tmp_path / 'edge.sqlite'}"
    _load_edge(url)
    update = f"UPDATE {table} SET {column} = '{instant}' WHERE id = '{row}'"
    with sqlite3.connect(sqlite_path(url)) if kind == "sqlite" else psycopg.connect(url) as conn:
        conn.execute(update)
    with pytest.raises(SourceSchemaError) as failure:
        _export(url, tmp_path / "out")
    message = str(failure.value)
    assert f"{table}.{column}" in message and row in message, message
    assert not (tmp_path / "out").exists()


def test_xlsx_refuses_more_columns_than_a_sheet_holds_and_csv_keeps_them(pg_url, tmp_path):
    _load_edge(pg_url, questions=[(1, "Q"), (20_000, "Far")])
    with pytest.raises(InvalidInputError, match=r"xlsx holds at most 16,384 columns .* exports 20,021"):
        _export(pg_url, tmp_path)
    assert not (tmp_path / f"campaign_id={EDGE}").exists()
    with stage_export(pg_url, EDGE, ExportOptions(formats=("csv",)), "edge0002") as staged:
        header = staged.files[0].path.read_text(encoding="utf-8-sig").splitlines()[0].split(",")
    assert len(header) == 20_021 and header[-1] == "q20000_answer"


def test_xlsx_cuts_text_past_its_cell_limit_visibly_and_counts_it(pg_url, tmp_path):
    answer = "é" * 20_000 + "😀" * 10_000 + "end"  # 30,003 characters, 40,003 UTF-16 units
    long_name = "N" * 100_000
    _load_edge(pg_url, answer=answer, campaign_name=long_name)
    staged, published = _export(pg_url, tmp_path)
    folder = tmp_path / published.manifest_key.rsplit("/", 1)[0]
    book = openpyxl.load_workbook(folder / "campaign_results.xlsx", read_only=True)
    header, *cells = [list(r) for r in book["results"].iter_rows(values_only=True)]
    name_cell = cells[0][header.index("campaign_name")]
    answer_cell = next(r[header.index("q1_answer")] for r in cells if r[header.index("contact_id")] == E4)
    for cell, whole in ((name_cell, long_name), (answer_cell, answer)):
        assert cell.endswith(XLSX_CUT_MARKER) and len(cell.encode("utf-16-le")) // 2 <= XLSX_MAX_CELL_CHARS
        assert whole.startswith(cell.removesuffix(XLSX_CUT_MARKER))
    assert staged.anomalies["xlsx_cells_cut"] == len(cells) + 1  # the name on every row, and the answer
    manifest = json.loads((tmp_path / published.manifest_key).read_text())
    assert manifest["anomalies"]["xlsx_cells_cut"] == len(cells) + 1
    rows = list(csv.DictReader(io.StringIO((folder / "campaign_results.csv").read_text(encoding="utf-8-sig"))))
    assert rows[0]["campaign_name"] == long_name and rows[1]["q1_answer"] == answer  # the CSV keeps it all
    assert (folder / "campaign_summary.pdf").stat().st_size > 0  # the long name does not break the one page


def test_the_cut_cells_show_in_the_materialization_metadata_and_the_check(sqlite_url, tmp_path):
    _load_edge(sqlite_url, answer="x" * 40_000)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("campaigns", [EDGE])
        result = dg.materialize(
            [campaign_export],
            selection=[FORMAT_KEYS["csv"], FORMAT_KEYS["xlsx"], STATS_KEY],
            partition_key=EDGE,
            instance=instance,
            resources={
                "source": SourceDatabase(url=sqlite_url),
                "destination": ExportDestination(url=str(tmp_path / "out")),
            },
        )
    by_key = {
        m.asset_key.to_user_string(): m.metadata for m in result.asset_materializations_for_node("campaign_export")
    }
    assert by_key["campaign_results_xlsx"]["anomalies"].value["xlsx_cells_cut"] == 1
    (check,) = [c for c in result.get_asset_check_evaluations() if c.check_name == "no_row_anomalies"]
    assert not check.passed and check.metadata["xlsx_cells_cut"].value == "1"
    assert "1 XLSX cell cut to Excel's limit" in check.description
    manifest = json.loads(Path(by_key["campaign_results_xlsx"]["manifest"].value).read_text())
    assert manifest["anomalies"]["xlsx_cells_cut"] == 1


def test_xlsx_widths_count_wide_characters_twice_and_accents_not_at_all(sqlite_url):
    _load_edge(sqlite_url, campaign_name="東京😀" * 7, answer="e\u0301" * 21)  # 21 characters each, 42 and 21 wide
    with stage_export(sqlite_url, EDGE, ExportOptions(formats=("xlsx",)), "edge0001") as staged:
        widths = column_widths(openpyxl.load_workbook(staged.files[0].path)["results"])
    assert widths["campaign_name"] == 43 and widths["q1_answer"] == 22  # and one character of room


# ------------------------------------------------------------------ failures between staging and publication


def _count_stagings(monkeypatch) -> list[str]:
    stagings: list[str] = []
    real = assets_module.stage_export

    def counted(*args, **kwargs):
        stagings.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(assets_module, "stage_export", counted)
    return stagings


def _snapshots(out: Path) -> list[str]:
    folder = out / f"campaign_id={EDGE}"
    return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.exists() else []


@pytest.fixture
def edge_pg(pg_url) -> str:
    _load_edge(pg_url)
    return pg_url


def test_an_error_after_staging_fails_at_once_and_publishes_nothing(edge_pg, tmp_path, monkeypatch):
    with stage_export(edge_pg, EDGE, ExportOptions(), "before00") as staged:
        publish_export(staged, LocalDestination(tmp_path))
    latest_before = (tmp_path / f"campaign_id={EDGE}" / "latest.json").read_bytes()
    stagings = _count_stagings(monkeypatch)

    def broken(*args):
        raise ValueError("injected: metadata could not be built")

    monkeypatch.setattr(assets_module, "_stats_metadata", broken)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("campaigns", [EDGE])
        result = dg.materialize(
            [campaign_export],
            selection=DEFAULT_EXPORT_KEYS,
            partition_key=EDGE,
            instance=instance,
            raise_on_error=False,
            resources={"source": SourceDatabase(url=edge_pg), "destination": ExportDestination(url=str(tmp_path))},
        )
        assert not result.success and stagings == [EDGE]  # exactly one snapshot attempt: a bug is not retried
        (failure,) = result.get_step_failure_events()
        assert "injected" in str(failure.event_specific_data.error.to_string())
        assert not result.get_asset_materialization_events()
    assert (tmp_path / f"campaign_id={EDGE}" / "latest.json").read_bytes() == latest_before
    assert _snapshots(tmp_path) == [json.loads(latest_before)["snapshot"]]  # no new folder


class FailingOnce(LocalDestination):
    """The manifest's first write fails as an unreachable S3 would."""

    failed = False

    def put_bytes(self, key, data, content_type):
        if key.endswith("manifest.json") and not FailingOnce.failed:
            FailingOnce.failed = True
            raise DestinationUnavailableError(f"injected: 503 writing {key}")
        super().put_bytes(key, data, content_type)


def test_a_transient_publication_error_is_retried_and_the_run_publishes_one_snapshot(edge_pg, tmp_path, monkeypatch):
    monkeypatch.setattr(ExportDestination, "open", lambda self: FailingOnce(self.url))
    monkeypatch.setattr(assets_module, "RETRY_DELAY_SECONDS", 0)
    stagings = _count_stagings(monkeypatch)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("campaigns", [EDGE])
        result = dg.materialize(
            [campaign_export],
            selection=DEFAULT_EXPORT_KEYS,
            partition_key=EDGE,
            instance=instance,
            resources={"source": SourceDatabase(url=edge_pg), "destination": ExportDestination(url=str(tmp_path))},
        )
        retries = instance.all_logs(result.run_id, of_type=dg.DagsterEventType.STEP_UP_FOR_RETRY)
    assert FailingOnce.failed and len(retries) == 1 and stagings == [EDGE, EDGE]
    (snapshot,) = _snapshots(tmp_path)  # the first attempt's files were removed when its manifest failed
    assert read_latest(LocalDestination(tmp_path), EDGE)["snapshot"] == snapshot and snapshot.endswith(
        result.run_id[:8]
    )
