"""The exports-pipeline command, run as a user runs it: a process, from a temporary folder."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from exports_pipeline.core.catalog import open_catalog
from exports_pipeline.run_tags import campaign_name_tag
from exports_pipeline_tests import awkward
from exports_pipeline_tests.awkward import C1

CLI = shutil.which("exports-pipeline") or str(Path(sys.executable).with_name("exports-pipeline"))


def run_cli(args: list[str], cwd: Path, **env) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items()
               if k not in ("EXPORTS_SOURCE_URL", "EXPORTS_DESTINATION", "DAGSTER_HOME", "EXPORTS_DEMO_DIR")}
    environ.update(env)
    return subprocess.run([CLI, *args], cwd=cwd, env=environ, capture_output=True, text=True, timeout=300)


def test_demo_end_to_end_from_an_empty_folder(tmp_path, monkeypatch):
    result = run_cli(["demo"], tmp_path)
    assert result.returncode == 0, result.stderr
    exports = tmp_path / "demo" / "exports"
    latest_files = sorted(exports.glob("campaign_id=*/latest.json"))
    assert len(latest_files) >= 3
    for latest_file in latest_files:
        latest = json.loads(latest_file.read_text())
        manifest = json.loads((exports / latest["manifest"]).read_text())
        assert {f["name"] for f in manifest["files"]} >= {"campaign_results.csv", "campaign_results.parquet"}
        assert str(latest_file.parent / latest["snapshot"] / "campaign_results.csv") in result.stdout
    assert (tmp_path / ".dagster_home").is_dir()  # the run history of the embedded default
    again = run_cli(["demo"], tmp_path)  # the source exists now: it is reused, exports made anew
    assert again.returncode == 0, again.stderr
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / ".dagster_home"))
    with dg.DagsterInstance.get() as instance:  # the run history is the export history
        runs = instance.get_runs()
    campaigns = {p.parent.name.removeprefix("campaign_id=") for p in latest_files}
    assert len(runs) == 2 * len(campaigns) and all(r.is_success for r in runs)
    assert {r.tags["campaign_id"] for r in runs} == campaigns and {r.tags["trigger"] for r in runs} == {"manual"}
    with open_catalog(f"sqlite:///{tmp_path / 'demo' / 'source.sqlite'}") as catalog:
        names = catalog.names(sorted(campaigns))
    assert all({"campaign_name": r.tags["campaign_name"]} == campaign_name_tag(names[r.tags["campaign_id"]])
               for r in runs)


def test_export_prints_locations_and_records_the_run(pg_url, tmp_path):
    awkward.load(pg_url)
    result = run_cli(["export", C1, "--format", "csv"], tmp_path, EXPORTS_SOURCE_URL=pg_url,
                     EXPORTS_DESTINATION=str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    printed = result.stdout.strip().splitlines()
    assert [Path(p).name for p in printed] == ["campaign_results.csv", "campaign_stats.json"]
    assert Path(printed[0]).read_bytes() == awkward.expected_csv()


@pytest.mark.parametrize("present, missing", [("EXPORTS_SOURCE_URL", "EXPORTS_DESTINATION"),
                                              ("EXPORTS_DESTINATION", "EXPORTS_SOURCE_URL")])
def test_one_setting_without_the_other_is_refused_naming_it(tmp_path, present, missing):
    result = run_cli(["export", C1], tmp_path, **{present: "postgresql://x@127.0.0.1/x" if "SOURCE" in present
                                                 else str(tmp_path)})
    assert result.returncode != 0
    assert f"{missing} is not set" in result.stderr


@pytest.mark.parametrize("campaign, message", [
    ("d0000000-0000-4000-8000-000000000000", "campaign d0000000-0000-4000-8000-000000000000 is not in the source"),
    ("../../etc", "campaign id '../../etc' is not a UUID"),
])
def test_export_of_a_bad_id_fails_without_writing_or_registering(pg_url, tmp_path, campaign, message):
    awkward.load(pg_url)
    result = run_cli(["export", campaign], tmp_path, EXPORTS_SOURCE_URL=pg_url,
                     EXPORTS_DESTINATION=str(tmp_path / "out"))
    assert result.returncode != 0 and message in result.stderr
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / ".dagster_home").exists()  # no instance touched, so no partition registered


def test_help_for_every_command(tmp_path):
    for command in ("demo", "export", "seed"):
        result = run_cli([command, "--help"], tmp_path)
        assert result.returncode == 0 and "usage: exports-pipeline" in result.stdout
