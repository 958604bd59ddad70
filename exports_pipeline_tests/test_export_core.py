"""The export core (plain functions) against a real PostgreSQL and SQLite: every rule of SPEC section 3."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import stat
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import polars as pl
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from exports_pipeline.core.destinations import LocalDestination
from exports_pipeline.core.errors import (
    CampaignNotFoundError,
    InvalidInputError,
    PublicationError,
    SourceSchemaError,
)
from exports_pipeline.core.export import publish_export, stage_export
from exports_pipeline.core.options import ExportOptions
from exports_pipeline.core.publish import move_latest, read_latest
from exports_pipeline.core.source import PostgresSource, open_source
from exports_pipeline_tests import awkward
from exports_pipeline_tests.awkward import C1, EMPTY, EXPECTED_ANOMALIES, EXPECTED_ROWS, HEADER, K1, K2, K3, K4


@pytest.fixture
def awkward_pg(pg_url) -> str:
    awkward.load(pg_url)
    return pg_url


def staged_bytes(
    url: str,
    campaign: str = C1,
    options: ExportOptions = ExportOptions(),
    run_id: str = "run00001",
    reader_processes: bool | None = None,
):
    """(csv bytes, parquet table, staged export) of one export, without publishing."""
    with stage_export(url, campaign, options, run_id, reader_processes=reader_processes) as staged:
        files = {f.format: f.path for f in staged.files}
        csv_bytes = files["csv"].read_bytes() if "csv" in files else None
        table = pq.read_table(files["parquet"]) if "parquet" in files else None
        return csv_bytes, table, staged


def test_csv_is_byte_for_byte_the_hand_written_expectation(awkward_pg):
    csv_bytes, _, staged = staged_bytes(awkward_pg)
    assert csv_bytes == awkward.expected_csv()
    assert staged.anomalies == EXPECTED_ANOMALIES
    assert staged.rows == 4 and not staged.failed_blocking_checks
    reported = {c.name: c for c in staged.checks if not c.blocking}
    assert not reported["no_row_anomalies"].passed and reported["no_row_anomalies"].metadata == EXPECTED_ANOMALIES
    assert reported["phone_numbers_e164"].metadata == {"not_e164": 3, "share_percent": 75.0}


def test_csv_reads_back_with_python_csv_module(awkward_pg):
    csv_bytes, _, _ = staged_bytes(awkward_pg)
    rows = list(csv.reader(io.StringIO(csv_bytes.decode("utf-8-sig"), newline="")))
    assert rows[0] == HEADER
    assert rows[1:] == [["" if v is None else v for v in row] for row in EXPECTED_ROWS]


def test_csv_reads_back_with_polars_keeping_null_apart_from_empty(awkward_pg):
    csv_bytes, _, _ = staged_bytes(awkward_pg)
    frame = pl.read_csv(csv_bytes, infer_schema=False)
    assert frame.columns == HEADER
    assert [list(r) for r in frame.iter_rows()] == EXPECTED_ROWS


def test_batch_size_and_reader_processes_never_change_the_output(awkward_pg):
    outputs = [
        staged_bytes(awkward_pg, options=ExportOptions(batch_size=size), reader_processes=processes)
        for size, processes in ((1, False), (7, False), (100_000, False), (1, True), (100_000, True))
    ]
    first_csv, first_parquet, first = outputs[0]
    assert first_csv == awkward.expected_csv()
    for csv_bytes, table, staged in outputs[1:]:
        assert csv_bytes == first_csv and table.equals(first_parquet)
        assert staged.fingerprint == first.fingerprint and staged.anomalies == first.anomalies


def test_parquet_has_native_types_unfloored_times_and_no_guard(awkward_pg):
    _, table, _ = staged_bytes(awkward_pg)
    schema = table.schema
    assert schema.field("call_started_at").type == pa.timestamp("us", tz="UTC")
    assert schema.field("call_cost_usd").type == pa.decimal128(12, 4)
    assert schema.field("total_cost_usd").type == pa.decimal128(38, 4)
    assert schema.field("attempt_count").type == pa.int64()
    assert schema.field("call_duration_seconds").type == pa.float64()
    rows = {r["contact_id"]: r for r in table.to_pylist()}
    k1, k2 = rows[K1], rows[K2]
    assert k1["completed_at"] == datetime(1969, 12, 31, 23, 59, 59, 999500, tzinfo=UTC)
    assert k1["call_started_at"] == datetime(2026, 1, 2, 10, 0, 0, 900, tzinfo=UTC)
    assert k1["call_cost_usd"] == Decimal("12345678.9999") and k1["total_cost_usd"] == Decimal("12345677.5999")
    assert k1["call_duration_seconds"] == 0.3 and k2["call_duration_seconds"] == -2.5
    assert k1["q2_answer"] == "=1+1" and k2["phone_number"] == "=1+1"  # never guarded
    assert k1["q1_answer"] == "" and k1["q3_answer"] is None  # empty string stays apart from null
    assert rows[K3]["business_name"] == "" and rows[K3]["name"] is None
    assert rows[K4]["total_cost_usd"] == Decimal("0.0000") and k2["total_cost_usd"] is None
    assert table.column("contact_id").to_pylist() == [K4, K1, K2, K3]


@pytest.mark.parametrize("money_as_real", [False, True], ids=["money-text", "money-real"])
def test_sqlite_source_gives_the_same_csv(sqlite_url, money_as_real):
    awkward.load(sqlite_url, sqlite_money_as_real=money_as_real)
    csv_bytes, table, staged = staged_bytes(sqlite_url)
    assert csv_bytes == awkward.expected_csv()
    assert staged.anomalies == EXPECTED_ANOMALIES
    assert table.column("call_cost_usd").to_pylist()[1] == Decimal("12345678.9999")


def test_sqlite_invalid_json_transcript_is_counted_not_fatal(sqlite_url):
    awkward.load(sqlite_url)
    import sqlite3

    with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as conn:
        conn.execute(
            "UPDATE call_attempts SET transcript = '{not json' WHERE id = 'b0000000-0000-4000-8000-000000000001'"
        )
    _, _, staged = staged_bytes(sqlite_url)
    assert staged.anomalies["transcript_invalid_json"] == 1


def test_sqlite_unparseable_timestamp_names_table_column_and_row(sqlite_url):
    awkward.load(sqlite_url)
    import sqlite3

    with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as conn:
        conn.execute(f"UPDATE contacts SET completed_at = 'yesterday-ish' WHERE id = '{K3}'")
    with pytest.raises(SourceSchemaError, match=f"contacts.completed_at.*{K3}"):
        staged_bytes(sqlite_url)


def test_empty_campaign_exports_the_header_only(awkward_pg):
    csv_bytes, table, staged = staged_bytes(awkward_pg, campaign=EMPTY)
    assert csv_bytes == ("\ufeff" + ",".join(HEADER[:21]) + "\n").encode()
    assert table.num_rows == 0 and table.column_names == HEADER[:21]
    assert staged.rows == 0 and all(c.passed for c in staged.checks)  # no rows: nothing to warn about


def test_unknown_campaign_fails_naming_the_id(awkward_pg):
    unknown = "d0000000-0000-4000-8000-000000000000"
    with pytest.raises(CampaignNotFoundError, match=unknown):
        staged_bytes(awkward_pg, campaign=unknown)


@pytest.mark.parametrize(
    "bad_id",
    [
        "not-a-uuid",
        "",
        "c1000000-0000-4000-8000-00000000000",
        "../../etc/passwd",
        "c1000000-0000-4000-8000-000000000001' OR '1'='1",
        "{c1000000-0000-4000-8000-000000000001}",
    ],
)
def test_malformed_campaign_id_fails_naming_the_id(awkward_pg, bad_id):
    with pytest.raises(InvalidInputError, match="is not a UUID") as error:
        staged_bytes(awkward_pg, campaign=bad_id)
    assert repr(bad_id) in str(error.value)


def test_uppercase_id_is_accepted_in_canonical_form(awkward_pg):
    _, _, staged = staged_bytes(awkward_pg, campaign=C1.upper())
    assert staged.campaign_id == C1


@pytest.mark.parametrize("reader_processes", [False, True])
def test_nan_money_fails_naming_the_column_and_attempt(awkward_pg, reader_processes):
    with psycopg.connect(awkward_pg, autocommit=True) as conn:
        conn.execute("UPDATE call_attempts SET cost_usd = 'NaN' WHERE id = 'b0000000-0000-4000-8000-000000000001'")
    with pytest.raises(SourceSchemaError, match=r"call_attempts.cost_usd.*b0000000-0000-4000-8000-000000000001"):
        staged_bytes(awkward_pg, reader_processes=reader_processes)


def test_missing_column_fails_naming_it(awkward_pg):
    with psycopg.connect(awkward_pg, autocommit=True) as conn:
        conn.execute("ALTER TABLE call_attempts DROP COLUMN recording_url")
    with pytest.raises(SourceSchemaError, match=r"call_attempts.recording_url"):
        staged_bytes(awkward_pg)


def test_missing_table_fails_naming_it(awkward_pg):
    with psycopg.connect(awkward_pg, autocommit=True) as conn:
        conn.execute("DROP TABLE survey_responses")
    with pytest.raises(SourceSchemaError, match="table survey_responses"):
        staged_bytes(awkward_pg)


def test_export_reads_one_snapshot_while_the_campaign_is_written(awkward_pg, monkeypatch):
    """Rows committed after the snapshot was taken, before the bulk reads start, are not part of it."""
    take_sample = PostgresSource.contact_key_sample

    def write_then_sample(self, campaign_id, fraction):
        with psycopg.connect(awkward_pg, autocommit=True) as conn:
            conn.execute(
                f"INSERT INTO call_attempts (id, campaign_id, contact_id, attempt_number, status) "
                f"VALUES ('b0000000-0000-4000-8000-0000000000aa', '{C1}', '{K3}', 9, 'completed')"
            )
            conn.execute(
                f"INSERT INTO contacts VALUES ('a0000000-0000-4000-8000-0000000000ff', '{C1}', NULL, 'Late',"
                f" NULL, '+15550000000', 'pending', 0, NULL, NULL, '2030-01-01', '2030-01-01')"
            )
            conn.execute(f"UPDATE survey_responses SET answer = 'changed' WHERE contact_id = '{K1}'")
        return take_sample(self, campaign_id, fraction)

    monkeypatch.setattr(PostgresSource, "contact_key_sample", write_then_sample)
    csv_bytes, _, staged = staged_bytes(awkward_pg, options=ExportOptions(batch_size=1), reader_processes=True)
    assert csv_bytes == awkward.expected_csv()
    assert staged.fingerprint["contacts_count"] == 4 and staged.rows == 4
    with psycopg.connect(awkward_pg) as conn:  # the writes did land
        assert conn.execute("SELECT count(*) FROM contacts").fetchone()[0] == 6


@pytest.mark.parametrize("batch_size", [1, 3, 100_000])
def test_fingerprint_from_the_streams_equals_the_sql_fingerprint(awkward_pg, sqlite_url, batch_size):
    awkward.load(sqlite_url)
    for url in (awkward_pg, sqlite_url):
        _, _, staged = staged_bytes(url, options=ExportOptions(batch_size=batch_size))
        with open_source(url) as source:
            assert staged.fingerprint == source.fingerprint(C1)


def test_run_options_filter_states_and_select_columns(awkward_pg):
    options = ExportOptions(states=("terminal",), columns=("q2_answer", "contact_id", "outcome"), bom=False)
    csv_bytes, _, staged = staged_bytes(awkward_pg, options=options)
    assert (
        csv_bytes
        == b"contact_id,outcome,q2_answer\n"
        + f"{K4},excluded,\n{K1},completed,'=1+1\n{K2},refused,'@mention\n".encode()
    )
    assert staged.options.states == ("completed", "refused", "not_reached", "excluded")


def test_updated_at_window_and_formula_guard_off(awkward_pg):
    options = ExportOptions(
        updated_from=datetime(2026, 1, 3, tzinfo=UTC),
        updated_to=datetime(2026, 1, 4, tzinfo=UTC),
        columns=("contact_id", "phone_number"),
        formula_guard=False,
    )
    csv_bytes, _, _ = staged_bytes(awkward_pg, options=options)
    assert csv_bytes == "\ufeffcontact_id,phone_number\n".encode() + f"{K1},+15551234567\n{K2},=1+1\n".encode()


@pytest.mark.parametrize(
    "kwargs, named",
    [
        ({"states": ("done",)}, "option states: done"),
        ({"columns": ("nope",)}, "option columns: unknown column"),
        ({"formats": ("docx",)}, "option formats: docx"),
        ({"batch_size": 0}, "option batch_size"),
        ({"updated_from": datetime(2026, 1, 1)}, "option updated_from"),
    ],
)
def test_invalid_options_fail_naming_the_option(kwargs, named):
    with pytest.raises(InvalidInputError, match=named):
        ExportOptions(**kwargs)


def test_answer_column_beyond_the_campaign_questions_is_refused(awkward_pg):
    with pytest.raises(InvalidInputError, match="q9_answer"):
        staged_bytes(awkward_pg, options=ExportOptions(columns=("contact_id", "q9_answer")))


# ------------------------------------------------------------------------------------------ publication


def publish(url: str, destination, options: ExportOptions = ExportOptions(), run_id: str = "run00001"):
    with stage_export(url, C1, options, run_id) as staged:
        return publish_export(staged, destination)


def test_publication_layout_manifest_and_latest(awkward_pg, tmp_path):
    destination = LocalDestination(tmp_path)
    published = publish(awkward_pg, destination, run_id="1a2b3c4d-rest-of-run-id")
    folder = tmp_path / f"campaign_id={C1}" / published.snapshot
    assert published.snapshot.endswith("Z-1a2b3c4d") and len(published.snapshot) == len(
        "20261122T081530.123456Z-1a2b3c4d"
    )
    assert sorted(p.name for p in folder.iterdir()) == [
        "campaign_results.csv",
        "campaign_results.parquet",
        "campaign_stats.json",
        "manifest.json",
    ]
    manifest = json.loads((folder / "manifest.json").read_text())
    for field in (
        "schema_version",
        "tool_version",
        "campaign_id",
        "run_id",
        "snapshot",
        "started_at",
        "finished_at",
        "options",
        "source_fingerprint",
        "questions",
        "anomalies",
        "files",
    ):
        assert field in manifest
    assert manifest["questions"][0] == {"position": 1, "prompt": 'How, "really"?'}
    for record in manifest["files"]:
        data = (folder / record["name"]).read_bytes()
        assert record["bytes"] == len(data) and record["sha256"] == hashlib.sha256(data).hexdigest()
        assert record["rows"] == (None if record["name"] == "campaign_stats.json" else 4)
    latest = json.loads((tmp_path / f"campaign_id={C1}" / "latest.json").read_text())
    assert latest == {
        "snapshot": published.snapshot,
        "manifest": f"campaign_id={C1}/{published.snapshot}/manifest.json",
    }
    assert not any(p.name.startswith(".partial") for p in folder.iterdir())


@pytest.mark.parametrize("umask", [0o022, 0o027], ids=oct)
def test_every_published_file_and_latest_json_get_the_permissions_the_umask_gives(awkward_pg, tmp_path, umask):
    """Whoever may read the data files of a local destination may read its manifest and latest.json too."""
    previous = os.umask(umask)
    try:
        published = publish(awkward_pg, LocalDestination(tmp_path))
    finally:
        os.umask(previous)
    campaign = tmp_path / f"campaign_id={C1}"
    files = [*(campaign / published.snapshot).iterdir(), campaign / "latest.json"]
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {p.name: oct(0o666 & ~umask) for p in files}


def test_second_export_of_unchanged_data_is_byte_identical(awkward_pg, tmp_path):
    destination = LocalDestination(tmp_path)
    first = publish(awkward_pg, destination, run_id="aaaaaaaa")
    second = publish(awkward_pg, destination, run_id="bbbbbbbb")
    assert first.snapshot != second.snapshot
    csv_hashes = [next(f["sha256"] for f in p.manifest["files"] if f["format"] == "csv") for p in (first, second)]
    assert csv_hashes[0] == csv_hashes[1]
    assert read_latest(destination, C1)["snapshot"] == second.snapshot


class FailingDestination(LocalDestination):
    """A real folder that fails on one key, as a crash between two publication steps would."""

    def __init__(self, base: Path, fail_on: str):
        super().__init__(base)
        self.fail_on = fail_on

    def put_bytes(self, key, data, content_type):
        if key.endswith(self.fail_on):
            raise PublicationError(f"injected failure writing {key}")
        super().put_bytes(key, data, content_type)


@pytest.mark.parametrize("fail_on", ["manifest.json", "latest.json"])
def test_failure_between_files_and_latest_leaves_latest_as_it_was(awkward_pg, tmp_path, fail_on):
    good = publish(awkward_pg, LocalDestination(tmp_path), run_id="aaaaaaaa")
    latest_before = (tmp_path / f"campaign_id={C1}" / "latest.json").read_bytes()
    with pytest.raises(PublicationError, match="injected"):
        publish(awkward_pg, FailingDestination(tmp_path, fail_on), run_id="bbbbbbbb")
    assert (tmp_path / f"campaign_id={C1}" / "latest.json").read_bytes() == latest_before
    assert read_latest(LocalDestination(tmp_path), C1)["snapshot"] == good.snapshot
    # what the failed publication had uploaded is gone again: no folder of run bbbbbbbb is left
    assert [p.name for p in (tmp_path / f"campaign_id={C1}").iterdir() if p.is_dir()] == [good.snapshot]


def test_latest_never_moves_backwards(tmp_path):
    destination = LocalDestination(tmp_path)
    assert move_latest(destination, C1, "20261122T000002.000000Z-bbbbbbbb", "m2")
    assert not move_latest(destination, C1, "20261122T000001.000000Z-aaaaaaaa", "m1")
    assert read_latest(destination, C1)["snapshot"] == "20261122T000002.000000Z-bbbbbbbb"


def test_filtered_export_writes_a_snapshot_but_does_not_move_latest(awkward_pg, tmp_path):
    destination = LocalDestination(tmp_path)
    default = publish(awkward_pg, destination, run_id="aaaaaaaa")
    filtered = publish(awkward_pg, destination, ExportOptions(states=("pending",)), run_id="bbbbbbbb")
    assert not filtered.latest_moved and (tmp_path / filtered.manifest_key).exists()
    assert read_latest(destination, C1)["snapshot"] == default.snapshot
