"""Retention on a local folder and on S3 (moto's server), as plain functions and as the Dagster job."""

from __future__ import annotations

import os
import tempfile
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest

from exports_pipeline.core.destinations import LocalDestination
from exports_pipeline.core.publish import move_latest, read_manifest, snapshot_name
from exports_pipeline.core.retention import apply_retention
from exports_pipeline.definitions import defs
from exports_pipeline.defs.resources import ExportDestination
from exports_pipeline.defs.retention import export_retention
from exports_pipeline_tests.awkward import C1, C2


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.integration)])  # s3: moto's server
def destination_url(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "exports")
    return f"s3://{request.getfixturevalue('s3_bucket')}/exports"


def folder(snapshot: str) -> str:
    return f"campaign_id={C1}/{snapshot}"


def build_history(destination) -> dict[str, str]:
    """One campaign's snapshots by role, written through the destination as publication would."""
    now = datetime.now(UTC)
    snapshots = {
        "expired": snapshot_name(now - timedelta(days=40), "aaaaaaaa"),
        "latest": snapshot_name(now - timedelta(days=35), "bbbbbbbb"),  # old, but latest.json names it
        "recent": snapshot_name(now - timedelta(days=2), "cccccccc"),  # e.g. a filtered export
        "incomplete": snapshot_name(now - timedelta(days=3), "dddddddd"),  # a run that failed before its manifest
    }
    for role, snapshot in snapshots.items():
        destination.put_bytes(f"{folder(snapshot)}/campaign_results.csv", b"a\n", "text/csv")
        if role != "incomplete":
            destination.put_bytes(f"{folder(snapshot)}/manifest.json", b'{"files": []}', "application/json")
    assert move_latest(destination, C1, snapshots["latest"], f"{folder(snapshots['latest'])}/manifest.json")
    destination.put_bytes("notes/readme.txt", b"not an export", "text/plain")
    return snapshots


def keys(destination) -> set[str]:
    return {o.key for o in destination.list("")}


def test_retention_dry_run_lists_then_deletes_old_and_leftovers_never_latest(destination_url):
    destination = ExportDestination(url=destination_url).open()
    snapshots = build_history(destination)
    before = keys(destination)

    # Right now the incomplete folder is younger than the 24 h grace: it may be a running export.
    now = apply_retention(destination, 30, dry_run=True)
    assert [(r.path, r.reason) for r in now] == [(folder(snapshots["expired"]), "expired")]

    later = datetime.now(UTC) + timedelta(days=1, hours=1)
    planned = apply_retention(destination, 30, dry_run=True, now=later)
    assert sorted((r.path, r.reason) for r in planned) == [
        (folder(snapshots["expired"]), "expired"),
        (folder(snapshots["incomplete"]), "incomplete"),
    ]
    assert keys(destination) == before  # a dry run deletes nothing

    assert apply_retention(destination, 30, now=later) == planned
    assert keys(destination) == before - {key for removal in planned for key in removal.keys}
    assert f"{folder(snapshots['recent'])}/manifest.json" in keys(destination)
    assert "notes/readme.txt" in keys(destination)  # not the export layout: never touched
    assert read_manifest(destination, C1) == {"files": []}  # latest.json still leads to its snapshot


def test_local_partial_files_of_interrupted_writes_are_leftovers(tmp_path):
    destination = LocalDestination(tmp_path)
    snapshots = build_history(destination)
    stale = [tmp_path / folder(snapshots["latest"]) / ".partial-abc", tmp_path / f"campaign_id={C1}" / ".partial-def"]
    fresh = tmp_path / folder(snapshots["recent"]) / ".partial-ghi"
    for path in (*stale, fresh):
        path.write_bytes(b"half")
    for path in stale:
        os.utime(path, (0, (datetime.now(UTC) - timedelta(days=2)).timestamp()))
    removed = apply_retention(destination, 30)
    assert sorted((r.path, r.reason) for r in removed if r.reason == "partial") == sorted(
        (p.relative_to(tmp_path).as_posix(), "partial") for p in stale
    )
    assert not any(p.exists() for p in stale) and fresh.exists()
    assert not (tmp_path / folder(snapshots["expired"])).exists()  # the emptied folder went too
    assert read_manifest(destination, C1) == {"files": []}


def empty_folder(path, age: timedelta = timedelta(0)):
    """An empty folder last changed age ago."""
    path.mkdir(parents=True)
    when = (datetime.now(UTC) - age).timestamp()
    os.utime(path, (when, when))
    return path


def test_local_empty_snapshot_folders_of_killed_runs_are_leftovers(tmp_path):
    """An export killed between creating its snapshot folder and writing its first file leaves the folder empty."""
    destination = LocalDestination(tmp_path)
    build_history(destination)
    now = datetime.now(UTC)
    named = snapshot_name(now - timedelta(days=1), "eeeeeeee")
    assert move_latest(destination, C1, named, f"{folder(named)}/manifest.json")
    stale = [
        empty_folder(tmp_path / folder(snapshot_name(now - timedelta(days=2), "ffffffff")), timedelta(days=2)),
        empty_folder(tmp_path / f"campaign_id={C2}" / snapshot_name(now, "abababab"), timedelta(days=2)),
    ]
    kept = [
        empty_folder(tmp_path / folder(named), timedelta(days=2)),  # latest.json names it
        empty_folder(tmp_path / folder(snapshot_name(now, "cdcdcdcd"))),  # within the grace: maybe still running
        empty_folder(tmp_path / f"campaign_id={C1}" / "not-a-snapshot", timedelta(days=2)),
        empty_folder(tmp_path / "notes" / "empty", timedelta(days=2)),
    ]
    expected = sorted((p.relative_to(tmp_path).as_posix(), "incomplete") for p in stale)

    planned = apply_retention(destination, 30, dry_run=True)
    assert sorted((r.path, r.reason) for r in planned if not r.keys) == expected
    assert all(p.is_dir() for p in stale + kept)
    assert apply_retention(destination, 30) == planned
    assert not any(p.exists() for p in stale) and all(p.is_dir() for p in kept)


@pytest.mark.dagster
def test_retention_job_and_its_daily_schedule(destination_url, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # this machine's old staging leftovers do not count
    resource = ExportDestination(url=destination_url)
    snapshots = build_history(resource.open())
    schedule = defs.resolve_schedule_def("export_retention_daily")
    assert schedule.job_name == "export_retention" and schedule.cron_schedule == "30 3 * * *"

    def run(dry_run: bool):
        result = export_retention.execute_in_process(
            run_config={"ops": {"apply_export_retention": {"config": {"retention_days": 30, "dry_run": dry_run}}}},
            resources={"destination": resource},
            instance=instance,
        )
        assert result.success
        output = next(e for e in result.all_events if e.event_type_value == "STEP_OUTPUT")
        return result.output_for_node("apply_export_retention"), output.step_output_data.metadata

    with dg.instance_for_test() as instance:
        count, metadata = run(dry_run=True)
        assert count == 1 and metadata["expired"].value == 1 and metadata["dry_run"].value is True
        assert folder(snapshots["expired"]) in metadata["removals"].value
        assert f"{folder(snapshots['expired'])}/manifest.json" in keys(resource.open())
        count, metadata = run(dry_run=False)
        assert count == 1 and metadata["objects"].value == 2
        assert not any(k.startswith(folder(snapshots["expired"])) for k in keys(resource.open()))
        assert read_manifest(resource.open(), C1) == {"files": []}
