"""Bad input: each case fails with a message that names what is wrong and leaves no output behind;
row anomalies never fail an export; secrets never show (issue 8)."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from exports_pipeline.core.destinations import LocalDestination
from exports_pipeline.core.errors import ExportError
from exports_pipeline.core.export import publish_export, stage_export
from exports_pipeline.core.options import ExportOptions
from exports_pipeline.defs.assets import DEFAULT_EXPORT_KEYS, campaign_export
from exports_pipeline.defs.resources import ExportDestination, SourceDatabase
from exports_pipeline_tests import awkward
from exports_pipeline_tests.awkward import C1, K3

SECRET = "Pa55-w0rd-never-shown"


@pytest.fixture
def awkward_pg(pg_url) -> str:
    awkward.load(pg_url)
    return pg_url


def _with_password(url: str) -> str:
    """The local server trusts loopback, so any password connects: the password is only there to leak."""
    return url.replace("postgres@", f"postgres:{SECRET}@")


def _export(url: str, destination: Path, campaign: str = C1, options: ExportOptions = ExportOptions()):
    with stage_export(url, campaign, options, "run00001") as staged:
        return publish_export(staged, LocalDestination(destination))


BAD_SOURCES = {
    "unsupported scheme": ("mysql://root@127.0.0.1/x", "unsupported scheme 'mysql'"),
    "unreachable server": (f"postgresql://postgres:{SECRET}@127.0.0.1:1/x", "cannot connect to source"),
    "unknown database": (f"postgresql://postgres:{SECRET}@127.0.0.1:5432/no_such_db_here", "does not exist"),
    "missing SQLite file": ("sqlite:////nonexistent/folder/source.sqlite", "does not exist"),
}


@pytest.mark.parametrize(
    "case",
    [pytest.param(case, marks=pytest.mark.integration) if case == "unknown database" else case for case in BAD_SOURCES],
)  # only that one reaches PostgreSQL
def test_bad_source_urls_fail_clearly_without_echoing_the_password(tmp_path, case):
    url, named = BAD_SOURCES[case]
    with pytest.raises(ExportError, match=named) as error:
        _export(url, tmp_path / "out")
    assert SECRET not in str(error.value)
    assert not (tmp_path / "out").exists()


def test_destination_that_is_not_a_folder_fails_and_publishes_nothing(awkward_pg, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(ExportError, match="cannot write"):
        _export(awkward_pg, blocker / "exports")
    assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize(
    "column, sql",
    [
        ("contacts.phone_number", "ALTER TABLE contacts DROP COLUMN phone_number"),
        ("table campaigns", "DROP TABLE campaigns"),
        ("survey_questions.prompt", "ALTER TABLE survey_questions RENAME COLUMN prompt TO text"),
    ],
)
def test_schema_errors_name_the_table_or_column(awkward_pg, tmp_path, column, sql):
    with psycopg.connect(awkward_pg, autocommit=True) as conn:
        conn.execute(sql)
    with pytest.raises(ExportError, match=column):
        _export(awkward_pg, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_megabyte_text_value_is_exported_whole(awkward_pg, tmp_path):
    big = "é" * 1_000_000 + ',"end"'
    with psycopg.connect(awkward_pg, autocommit=True) as conn:
        conn.execute("UPDATE contacts SET name = %s WHERE id = %s", (big, K3))
    published = _export(awkward_pg, tmp_path)
    csv_text = (tmp_path / published.file_keys["csv"]).read_text("utf-8-sig")
    assert '"' + big.replace('"', '""') + '"' in csv_text


def test_secrets_never_reach_logs_metadata_manifests_or_errors(awkward_pg, tmp_path):
    url = _with_password(awkward_pg)
    destination = tmp_path / "exports"
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("campaigns", [C1, "d0000000-0000-4000-8000-000000000000"])
        runs = [
            dg.materialize(
                [campaign_export],
                selection=DEFAULT_EXPORT_KEYS,
                instance=instance,
                partition_key=key,
                raise_on_error=False,
                resources={"source": SourceDatabase(url=url), "destination": ExportDestination(url=str(destination))},
            )
            for key in (C1, "d0000000-0000-4000-8000-000000000000")
        ]
        assert runs[0].success and not runs[1].success
        texts = []
        for run in runs:
            for record in instance.all_logs(run.run_id):
                texts.append(record.user_message or "")
                if record.dagster_event is not None:
                    texts.append(repr(record.dagster_event.event_specific_data))
    texts += [p.read_text("utf-8", errors="replace") for p in destination.rglob("*.json")]
    texts += [p.read_text("utf-8-sig") for p in destination.rglob("*.csv")]
    assert any("campaign_results.csv" in t for t in texts)  # the material searched is real
    assert not [t for t in texts if SECRET in t]
    manifest = json.loads(next(destination.rglob("manifest.json")).read_text())
    assert SECRET not in json.dumps(manifest)
