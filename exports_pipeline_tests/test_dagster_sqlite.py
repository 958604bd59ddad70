"""The Dagster layer without a server: dg.materialize and a sensor tick on the awkward SQLite source, a local
destination and a temporary instance (dg.instance_for_test). The same definitions as production."""

from __future__ import annotations

import json

import dagster as dg
import pytest

from exports_pipeline.defs.assets import DEFAULT_EXPORT_KEYS
from exports_pipeline.defs.resources import ExportDestination, SourceDatabase
from exports_pipeline.defs.sensors import campaign_sensors
from exports_pipeline_tests import awkward
from exports_pipeline_tests.awkward import C1, EMPTY
from exports_pipeline_tests.conftest import materialize

campaign_partitions_sensor, _ = campaign_sensors()

pytestmark = pytest.mark.dagster


@pytest.fixture
def resources(sqlite_url, tmp_path) -> dict:
    awkward.load(sqlite_url)
    return {"source": SourceDatabase(url=sqlite_url), "destination": ExportDestination(url=str(tmp_path / "exports"))}


def test_a_sqlite_campaign_materializes_the_spec_csv_and_runs_its_checks(resources, tmp_path):
    with dg.instance_for_test() as instance:
        result = materialize(resources, instance, C1)
        assert result.success
        metadata = {
            m.asset_key.to_user_string(): m.metadata for m in result.asset_materializations_for_node("campaign_export")
        }
        assert set(metadata) == {key.to_user_string() for key in DEFAULT_EXPORT_KEYS}
        with open(metadata["campaign_results_csv"]["location"].value, "rb") as handle:
            assert handle.read() == awkward.expected_csv()  # the same bytes as from PostgreSQL
        checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
        assert checks == {
            "row_count_matches_source": True,
            "contact_id_unique": True,
            "header_matches_spec": True,
            "no_row_anomalies": False,
            "phone_numbers_e164": False,
        }
        latest = json.loads((tmp_path / "exports" / f"campaign_id={C1}" / "latest.json").read_text())
        assert latest["snapshot"] == metadata["campaign_results_csv"]["snapshot"].value
        assert latest["snapshot"].endswith(result.run_id[:8])


def test_a_campaign_without_contacts_publishes_header_only_files(resources, tmp_path):
    with dg.instance_for_test() as instance:
        result = materialize(resources, instance, EMPTY)
        checks = result.get_asset_check_evaluations()
        assert result.success and len(checks) == 5 and all(c.passed for c in checks)
        csv_meta = next(
            m.metadata
            for m in result.asset_materializations_for_node("campaign_export")
            if m.asset_key.to_user_string() == "campaign_results_csv"
        )
        assert csv_meta["rows"].value == 0
        with open(csv_meta["location"].value, "rb") as handle:
            assert handle.read() == awkward.expected_csv(rows=[], header=awkward.HEADER[:-4])  # no questions


def test_the_partition_sensor_registers_the_sqlite_campaigns(sqlite_url):
    awkward.load(sqlite_url)
    with dg.instance_for_test() as instance:
        source = {"source": SourceDatabase(url=sqlite_url)}
        with dg.build_sensor_context(instance=instance, resources=source) as context:
            result = campaign_partitions_sensor(context)
        added = {
            key
            for request in result.dynamic_partitions_requests
            if isinstance(request, dg.AddDynamicPartitionsRequest)
            for key in request.partition_keys
        }
        assert added == {campaign[0] for campaign in awkward.CAMPAIGNS}
        assert not [r for r in result.dynamic_partitions_requests if isinstance(r, dg.DeleteDynamicPartitionsRequest)]
