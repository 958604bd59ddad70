"""The Dagster layer: dg.materialize with dg.instance_for_test() on the real PostgreSQL source."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import dagster as dg
import pytest

from exports_pipeline.definitions import defs
from exports_pipeline.defs.resources import ExportDestination, SourceDatabase
from exports_pipeline_tests import awkward
from exports_pipeline_tests.awkward import C1
from exports_pipeline_tests.conftest import materialize


@pytest.fixture
def resources(pg_url, tmp_path):
    awkward.load(pg_url)
    return {"source": SourceDatabase(url=pg_url), "destination": ExportDestination(url=str(tmp_path / "exports"))}


@pytest.mark.dagster
def test_definitions_load_with_the_spec_names():
    assert {str(k.to_user_string()) for k in defs.resolve_asset_graph().get_all_asset_keys()} >= {
        "campaign_results_csv",
        "campaign_results_parquet",
    }
    assert defs.resolve_job_def("export_campaign").partitions_def.name == "campaigns"


def test_materialization_metadata_and_checks(resources, tmp_path):
    with dg.instance_for_test() as instance:
        result = materialize(resources, instance, C1)
        assert result.success
        by_key = {
            m.asset_key.to_user_string(): m.metadata for m in result.asset_materializations_for_node("campaign_export")
        }
        csv_meta = by_key["campaign_results_csv"]
        assert csv_meta["rows"].value == 4 and csv_meta["dagster/row_count"].value == 4
        location = csv_meta["location"].value
        assert location.startswith(str(tmp_path / "exports" / f"campaign_id={C1}"))
        with open(location, "rb") as handle:
            assert handle.read() == awkward.expected_csv()
        assert len(csv_meta["sha256"].value) == 64
        header, first_row = list(csv.reader(io.StringIO(awkward.expected_csv().decode("utf-8-sig"))))[:2]
        preview = csv_meta["preview"].value  # a table of the file's own cells
        assert [column.name for column in preview.schema.columns] == header
        assert [preview.records[0].data[name] or "" for name in header] == first_row
        assert csv_meta["campaign_name"].value == awkward.NAME
        assert csv_meta["anomalies"].value == awkward.EXPECTED_ANOMALIES
        checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
        assert checks == {
            "row_count_matches_source": True,
            "contact_id_unique": True,
            "header_matches_spec": True,
            "no_row_anomalies": False,
            "phone_numbers_e164": False,
        }
        messages = [entry.user_message for entry in instance.all_logs(result.run_id)]
        assert f"campaign {C1}: 4 of 4 rows written (100%)" in messages
        latest = json.loads((tmp_path / "exports" / f"campaign_id={C1}" / "latest.json").read_text())
        assert latest["snapshot"] == csv_meta["snapshot"].value
        assert latest["snapshot"].endswith(result.run_id[:8])


def test_unknown_campaign_partition_fails_naming_it_and_writes_nothing(resources, tmp_path):
    unknown = "d0000000-0000-4000-8000-000000000000"
    with dg.instance_for_test() as instance:
        result = materialize(resources, instance, unknown)
        assert not result.success
        assert unknown in result.failure_data_for_node("campaign_export").error.message
        assert not (tmp_path / "exports").exists()


def test_invalid_run_option_fails_before_any_work(resources, tmp_path):
    with dg.instance_for_test() as instance:
        result = materialize(resources, instance, C1, {"states": ["finished"]})
        assert not result.success
        message = result.failure_data_for_node("campaign_export").error.message
        assert "option states: finished" in message and "terminal" in message
        assert not (tmp_path / "exports").exists()


def test_the_selected_assets_decide_the_files_written(resources, tmp_path):
    """XLSX alone: its materialization and file only (with the stats file and manifest every snapshot has);
    latest.json stays where the default export put it, since the snapshot lacks the CSV and Parquet."""
    with dg.instance_for_test() as instance:
        default = materialize(resources, instance, C1)
        result = materialize(resources, instance, C1, selection=[dg.AssetKey("campaign_results_xlsx")])
        assert default.success and result.success
        keys = [m.asset_key.to_user_string() for m in result.asset_materializations_for_node("campaign_export")]
        assert keys == ["campaign_results_xlsx"]
        metadata = result.asset_materializations_for_node("campaign_export")[0].metadata
        folder = Path(metadata["location"].value).parent
        assert sorted(p.name for p in folder.iterdir()) == [
            "campaign_results.xlsx",
            "campaign_stats.json",
            "manifest.json",
        ]
        latest = json.loads((tmp_path / "exports" / f"campaign_id={C1}" / "latest.json").read_text())
        assert latest["snapshot"].endswith(default.run_id[:8]) and not metadata["latest_moved"].value


def test_local_destination_run_builds_no_s3_client(resources, monkeypatch):
    """S3Resource would attach a boto3 client to every run (about 0.3 s); a local export needs none."""
    import boto3.session

    def refuse(*args, **kwargs):
        raise AssertionError("an S3 client was built for a local destination")

    monkeypatch.setattr(boto3.session.Session, "client", refuse)
    with dg.instance_for_test() as instance:
        assert materialize(resources, instance, C1).success
