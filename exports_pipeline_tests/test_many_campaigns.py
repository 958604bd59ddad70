"""Many campaigns per run (issue 14): a run over a range of campaign partitions publishes, materializes and
checks each campaign on its own, and a campaign that fails fails alone."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import dagster as dg
import psycopg
import pytest

import exports_pipeline.core.reading as reading
import exports_pipeline.defs.assets as assets_module
from exports_pipeline.core.errors import SourceUnavailableError
from exports_pipeline.defs.assets import DEFAULT_EXPORT_KEYS, campaign_export
from exports_pipeline.defs.partitions import campaigns_partitions
from exports_pipeline.defs.resources import ExportDestination, SourceDatabase
from exports_pipeline_tests import awkward
from exports_pipeline_tests.awkward import C1, C2, EMPTY

CAMPAIGNS = [C1, C2, EMPTY]  # partitions in this order: the range C1..EMPTY holds all three
NAN_ATTEMPT = "b0000000-0000-4000-8000-0000000000ff"


@pytest.fixture
def source(pg_url) -> str:
    """The awkward source, where campaign C2 holds a NaN cost: its export fails naming the attempt."""
    awkward.load(pg_url)
    with psycopg.connect(pg_url) as conn:
        conn.execute(
            "INSERT INTO call_attempts (id, campaign_id, contact_id, attempt_number, status, cost_usd) "
            f"VALUES ('{NAN_ATTEMPT}', '{C2}', '{awkward.K5}', 9, 'failed', 'NaN')"
        )
    return pg_url


def _range_run(instance, pg_url: str, out: Path, selection=DEFAULT_EXPORT_KEYS) -> dg.ExecuteInProcessResult:
    instance.add_dynamic_partitions("campaigns", CAMPAIGNS)
    return dg.materialize(
        [campaign_export],
        selection=selection,
        instance=instance,
        raise_on_error=False,
        tags={"dagster/asset_partition_range_start": C1, "dagster/asset_partition_range_end": EMPTY},
        resources={"source": SourceDatabase(url=pg_url), "destination": ExportDestination(url=str(out))},
    )


def _materialized(result) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for event in result.get_asset_materialization_events():
        found.setdefault(event.partition, set()).add(event.asset_key.to_user_string())
    return found


def _snapshots(out: Path, campaign_id: str) -> list[str]:
    folder = out / f"campaign_id={campaign_id}"
    return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.exists() else []


def test_a_failing_campaign_fails_alone_and_the_others_publish(source, tmp_path):
    with dg.instance_for_test() as instance:
        result = _range_run(instance, source, tmp_path)
        assert not result.success
        default_keys = {k.to_user_string() for k in DEFAULT_EXPORT_KEYS}
        assert _materialized(result) == {C1: default_keys, EMPTY: default_keys}
        (failure,) = result.get_step_failure_events()
        message = failure.event_specific_data.error.message
        assert f"export of campaign {C2} failed" in message and NAN_ATTEMPT in message and C1 not in message
        evaluations = {(e.partition, e.check_name): e.passed for e in result.get_asset_check_evaluations()}
        assert evaluations[(C1, "row_count_matches_source")] and evaluations[(EMPTY, "contact_id_unique")]
        assert not any(partition == C2 for partition, _ in evaluations)
    for campaign_id in (C1, EMPTY):
        latest = json.loads((tmp_path / f"campaign_id={campaign_id}" / "latest.json").read_text())
        assert _snapshots(tmp_path, campaign_id) == [latest["snapshot"]]
        assert latest["snapshot"].endswith(result.run_id[:8])
    assert not (tmp_path / f"campaign_id={C2}").exists()  # nothing of the failed campaign


def test_the_retry_after_a_transient_error_exports_only_what_did_not_publish(source, tmp_path, monkeypatch):
    with psycopg.connect(source) as conn:
        conn.execute(f"DELETE FROM call_attempts WHERE id = '{NAN_ATTEMPT}'")
    stagings: list[str] = []
    real = assets_module.stage_export

    def lose_c2_once(source_url, campaign_id, *args, **kwargs):
        stagings.append(campaign_id)
        if campaign_id == C2 and stagings.count(C2) == 1:
            raise SourceUnavailableError("source read failed: terminating connection (injected)")
        return real(source_url, campaign_id, *args, **kwargs)

    monkeypatch.setattr(assets_module, "stage_export", lose_c2_once)
    monkeypatch.setattr(assets_module, "RETRY_DELAY_SECONDS", 0)
    with dg.instance_for_test() as instance:
        result = _range_run(instance, source, tmp_path)
        assert result.success
        assert stagings == [C1, C2, EMPTY, C2]  # the retry exported C2 alone
        assert set(_materialized(result)) == set(CAMPAIGNS)
    for campaign_id in CAMPAIGNS:
        assert len(_snapshots(tmp_path, campaign_id)) == 1


def test_a_range_run_of_xlsx_alone_writes_only_xlsx(source, tmp_path):
    xlsx = dg.AssetKey("campaign_results_xlsx")
    with dg.instance_for_test() as instance:
        result = _range_run(instance, source, tmp_path, selection=[xlsx])
        assert _materialized(result) == {C1: {"campaign_results_xlsx"}, EMPTY: {"campaign_results_xlsx"}}
        assert not result.get_asset_check_evaluations()  # the CSV's checks were not selected
    (snapshot,) = _snapshots(tmp_path, C1)
    assert (tmp_path / f"campaign_id={C1}" / snapshot / "campaign_results.xlsx").exists()
    assert not (tmp_path / f"campaign_id={C1}" / snapshot / "campaign_results.csv").exists()


@pytest.mark.parametrize("event_batch_size", [None, "200"])
def test_only_the_failed_campaigns_partitions_show_failed(source, tmp_path, monkeypatch, event_batch_size):
    """Also with Dagster's batched event writes, which the deployment turns on (docs/operations.md)."""
    if event_batch_size:
        monkeypatch.setenv("DAGSTER_EVENT_BATCH_SIZE", event_batch_size)
    with dg.instance_for_test() as instance:
        result = _range_run(instance, source, tmp_path)
        assert not result.success
        for key in DEFAULT_EXPORT_KEYS:
            status = instance.get_status_by_partition(key, CAMPAIGNS, campaigns_partitions)
            assert status == {
                C1: dg.AssetPartitionStatus.MATERIALIZED,
                C2: dg.AssetPartitionStatus.FAILED,
                EMPTY: dg.AssetPartitionStatus.MATERIALIZED,
            }, key


def test_a_run_holds_at_most_four_source_sessions_and_one_snapshot(source, tmp_path, monkeypatch):
    """The bound docs/operations.md states per export run: the shared snapshot's session and a reader, then
    each large campaign's snapshot session and up to three readers, never both."""
    monkeypatch.setattr(reading, "SMALL_CAMPAIGN_MAX_CONTACTS", 1)  # C1 (4 contacts) streams on its own
    peaks = {"sessions": 0, "snapshots": 0}
    done = threading.Event()

    def sample() -> None:
        with psycopg.connect(source, autocommit=True) as monitor:
            while not done.is_set():
                sessions, snapshots = monitor.execute(
                    # Sessions reading one snapshot share its xmin.
                    "SELECT count(*), count(DISTINCT backend_xmin::text) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND application_name = 'exports-pipeline'"
                ).fetchone()
                peaks["sessions"], peaks["snapshots"] = (
                    max(peaks["sessions"], sessions),
                    max(peaks["snapshots"], snapshots),
                )
                time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with dg.instance_for_test() as instance:
            result = _range_run(instance, source, tmp_path)
    finally:
        done.set()
        sampler.join()
    assert _materialized(result).keys() == {C1, EMPTY}  # C2 fails (its NaN cost), alone
    assert 1 <= peaks["sessions"] <= 4 and peaks["snapshots"] <= 1, peaks
