"""Killed processes (issue 8): an export killed mid-way never moves latest.json off a complete snapshot,
what it leaves behind is reachable from no latest.json nor manifest, and retention removes it.

(a) the production deployment (dagster-daemon, PostgreSQL storage, the top-level dagster.yaml): a run worker
    of two campaigns SIGKILLed while publishing the second is failed by its code server and started again by
    run retries, which exports what did not publish; (b) the `exports-pipeline export` process SIGKILLed
    mid-read and mid-publication.
The read is held by a lock on call_attempts taken from another session. Publication is killed once the new
snapshot folder appears, at whatever point it has reached by then (an empty folder, some files, .partial-*
files, or a whole snapshot with its manifest), while the test holds the lock that moving latest.json takes:
the assertions are the invariants that hold at every such point, never one intermediate state.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
import signal
import subprocess
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from exports_pipeline.core.destinations import LOCK_NAME, LocalDestination
from exports_pipeline.core.retention import STAGING_PREFIX, apply_retention, apply_staging_retention
from exports_pipeline.core.seed import seed_source
from exports_pipeline_tests.conftest import BIN, REPO, running_deployment
from exports_pipeline_tests.test_cli import CLI, run_cli

SEED_NOW = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(days=30)
PAST_THE_GRACE = dt.timedelta(hours=25)  # retention's default leftover grace is 24 hours


def snapshot_folders(exports: Path, cid: str) -> set[str]:
    return {p.name for p in (exports / f"campaign_id={cid}").iterdir() if p.is_dir()}


def whole_files(manifest_file: Path) -> list[Path]:
    """The files a manifest lists, after checking each one against its bytes and sha256 (none half-written)."""
    manifest = json.loads(manifest_file.read_text())
    assert manifest["snapshot"] == manifest_file.parent.name and manifest["files"]
    paths = [manifest_file.parent / record["name"] for record in manifest["files"]]
    for path, record in zip(paths, manifest["files"], strict=True):
        data = path.read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (record["bytes"], record["sha256"])
    return paths


def verified_latest(exports: Path, cid: str) -> dict:
    """latest.json's manifest, after checking every file it lists."""
    latest = json.loads((exports / f"campaign_id={cid}" / "latest.json").read_text())
    assert latest["manifest"] == f"campaign_id={cid}/{latest['snapshot']}/manifest.json"
    whole_files(exports / latest["manifest"])
    return json.loads((exports / latest["manifest"]).read_text())


def reachable_keys(exports: Path) -> set[str]:
    """Every key a reader can reach: latest.json files, every manifest, the files each lists (checked whole)."""
    paths = list(exports.glob("campaign_id=*/latest.json"))
    for manifest_file in exports.glob("campaign_id=*/*/manifest.json"):
        paths += [manifest_file, *whole_files(manifest_file)]
    return {path.relative_to(exports).as_posix() for path in paths}


def staging_leftovers(temp_dir: Path) -> list[Path]:
    return sorted(temp_dir.glob(STAGING_PREFIX + "*"))


def age(paths: list[Path], by: dt.timedelta) -> None:
    """Make files and folders look untouched for a while (the retention grace counts from the newest)."""
    when = time.time() - by.total_seconds()
    for path in paths:
        for item in [path, *path.rglob("*")]:
            os.utime(item, (when, when))


@contextmanager
def attempts_locked(source_url: str):
    """Hold ACCESS EXCLUSIVE on call_attempts: an export that starts reading waits there, mid-read."""
    with psycopg.connect(source_url) as conn:
        conn.execute("LOCK TABLE call_attempts IN ACCESS EXCLUSIVE MODE")
        yield
        conn.rollback()


@contextmanager
def latest_json_locked(exports: Path, cid: str):
    """Hold the local destination's lock beside latest.json, as a concurrent export moving it would: an export
    that comes to move latest.json waits there, so a kill during publication always lands before it moves."""
    with open(exports / f"campaign_id={cid}" / LOCK_NAME, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def export_waits_on_the_lock(source_url: str) -> bool:
    with psycopg.connect(source_url, autocommit=True) as conn:
        return conn.execute(
            "SELECT count(*) > 0 FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = 'exports-pipeline' AND wait_event_type = 'Lock'"
        ).fetchone()[0]


def worker_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    """The run worker's pid, from the engine event with which the worker announces itself."""
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        metadata = entry.dagster_event.event_specific_data.metadata
        if entry.step_key is None and "pid" in metadata:
            return int(metadata["pid"].value)
    return None


def launch(d, job: str, **tags) -> str:
    """Submit a run through the instance's run queue (the daemon launches it); returns its id."""
    run_id = str(uuid.uuid4())
    launched = subprocess.run(
        [
            BIN / "dagster",
            "job",
            "launch",
            "-j",
            job,
            "-w",
            REPO / "workspace.yaml",
            "--run-id",
            run_id,
            "--tags",
            json.dumps(tags),
        ],
        cwd=d.home,
        env=d.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    return run_id


def finished(d, run_id: str) -> dg.DagsterRun | None:
    run = d.instance.get_run_by_id(run_id)
    return run if run and run.is_finished else None


@pytest.mark.integration  # running_deployment: PostgreSQL and the daemon
def test_a_run_worker_killed_mid_batch_leaves_nothing_reachable_and_the_retry_exports_the_rest(tmp_path):
    """A run of two campaigns: the first is published, the second has uploaded its files and manifest and
    waits to move latest.json when its worker is killed. Dagster's code server fails the run, run_retries
    starts it again, and the new run exports only the second campaign, first removing the killed attempt's
    snapshot of it."""
    temp_dir, home = tmp_path / "tmp", tmp_path / "home"
    temp_dir.mkdir()
    home.mkdir()
    with running_deployment(
        home, contacts=2_000, campaigns=2, seed=5, now=SEED_NOW, env={"TMPDIR": str(temp_dir)}
    ) as d:
        first, second = d.campaigns[:2]
        d.instance.add_dynamic_partitions("campaigns", [first, second])
        (d.exports / f"campaign_id={second}").mkdir(parents=True)
        with latest_json_locked(d.exports, second):
            killed_id = launch(
                d,
                "export_campaign",
                **{"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": second},
            )
            d.wait_for(
                "the second campaign's manifest, its publication waiting for latest.json",
                lambda: list((d.exports / f"campaign_id={second}").glob("*/manifest.json")),
                180,
            )
            os.kill(worker_pid(d.instance, killed_id), signal.SIGKILL)
            killed = d.wait_for("the code server to fail the run", lambda: finished(d, killed_id), 120)
        assert killed.status == dg.DagsterRunStatus.FAILURE
        retry = d.wait_for(
            "run retries to start the run again and finish",
            lambda: next((r for r in d.runs(**{"dagster/parent_run_id": killed_id}) if r.is_finished), None),
            180,
        )
        assert retry.status == dg.DagsterRunStatus.SUCCESS, d.daemon_log.read_text(errors="replace")[-3000:]

        published_first = verified_latest(d.exports, first)
        assert published_first["run_id"] == killed_id  # published before the kill, not exported again
        assert snapshot_folders(d.exports, first) == {published_first["snapshot"]}
        published_second = verified_latest(d.exports, second)
        assert published_second["run_id"] == retry.run_id
        assert snapshot_folders(d.exports, second) == {published_second["snapshot"]}  # the killed one's is gone
        materialized = {
            e.dagster_event.partition
            for e in d.instance.all_logs(retry.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
        }
        assert materialized == {second}

        (leftover,) = staging_leftovers(temp_dir)  # the killed worker's staging (the retry removed its own)
        age([leftover], by=PAST_THE_GRACE)
        cleanup = launch(d, "export_retention")
        assert d.wait_for("the retention run", lambda: finished(d, cleanup), 120).is_success
        assert staging_leftovers(temp_dir) == []
        assert verified_latest(d.exports, second) == published_second


@pytest.mark.parametrize("phase, contacts", [("read", 2_000), ("publication", 100_000)])
def test_a_killed_export_command_leaves_latest_json_on_a_complete_snapshot_and_retention_removes_the_rest(
    phase, contacts, pg_url, tmp_path
):
    (cid,) = seed_source(pg_url, contacts=contacts, campaigns=1, seed=7, now=SEED_NOW)
    exports, temp_dir = tmp_path / "exports", tmp_path / "tmp"
    temp_dir.mkdir()
    env = {
        "EXPORTS_SOURCE_URL": pg_url,
        "EXPORTS_DESTINATION": str(exports),
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "TMPDIR": str(temp_dir),
    }
    first = run_cli(["export", cid], tmp_path, **env)
    assert first.returncode == 0, first.stderr
    latest_file = exports / f"campaign_id={cid}" / "latest.json"
    latest_before, published = latest_file.read_bytes(), snapshot_folders(exports, cid)
    manifest = verified_latest(exports, cid)

    if phase == "read":
        with attempts_locked(pg_url):
            export = subprocess.Popen(
                [CLI, "export", cid],
                cwd=tmp_path,
                env={**os.environ, **env},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + 120
            while not (export_waits_on_the_lock(pg_url) and staging_leftovers(temp_dir)):
                assert export.poll() is None and time.monotonic() < deadline, "the export never waited on the lock"
                time.sleep(0.2)
            export.kill()
            export.wait()
    else:  # killed once the new snapshot folder appears, wherever publication has got to by then (four files,
        # each synced to disk, leave time for every point before the manifest); never past latest.json (locked)
        with latest_json_locked(exports, cid):
            export = subprocess.Popen(
                [CLI, "export", cid, "--format", "csv", "--format", "jsonl", "--format", "parquet"],
                cwd=tmp_path,
                env={**os.environ, **env},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + 120
            while snapshot_folders(exports, cid) == published:
                assert export.poll() is None and time.monotonic() < deadline, "the export never started publishing"
                time.sleep(0.001)
            export.kill()
            export.wait()
    assert export.returncode == -signal.SIGKILL

    assert latest_file.read_bytes() == latest_before and verified_latest(exports, cid) == manifest
    new_folders = snapshot_folders(exports, cid) - published
    assert len(new_folders) == {"read": 0, "publication": 1}[phase]
    # A manifest the killed export wrote lists whole files only (reachable_keys checks them); the rest of what it
    # left is reachable from nothing and lies in its own snapshot folder.
    destination = LocalDestination(exports)
    leftovers = {o.key for o in destination.list("")} - reachable_keys(exports)
    assert all(any(key.startswith(f"campaign_id={cid}/{f}/") for f in new_folders) for key in leftovers)
    assert len(staging_leftovers(temp_dir)) == 1  # the killed export's (the first removed its own)

    # Within the grace period leftovers may be an export still running: nothing goes.
    assert apply_retention(destination, 30) == [] and apply_staging_retention(temp_dir) == []
    later = dt.datetime.now(dt.UTC) + PAST_THE_GRACE
    removed = apply_retention(destination, 30, now=later) + apply_staging_retention(temp_dir, now=later)
    assert {key for r in removed if r.reason != "staging" for key in r.keys} == leftovers
    assert [r.reason for r in removed if r.reason == "staging"] == ["staging"]
    # Its folder goes with them (even empty), unless it holds a whole snapshot: killed after its manifest, that
    # one stays until it expires, like a filtered export's snapshot (latest.json names neither).
    complete = {f for f in new_folders if (exports / f"campaign_id={cid}" / f / "manifest.json").exists()}
    assert staging_leftovers(temp_dir) == [] and snapshot_folders(exports, cid) == published | complete
    assert {o.key for o in destination.list("")} == reachable_keys(exports)
    expired = apply_retention(destination, 30, now=later + dt.timedelta(days=31))
    assert {r.path for r in expired} == {f"campaign_id={cid}/{f}" for f in complete}
    assert snapshot_folders(exports, cid) == published
    assert latest_file.read_bytes() == latest_before and verified_latest(exports, cid) == manifest
