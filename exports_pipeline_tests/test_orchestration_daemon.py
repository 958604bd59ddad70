"""The production instance for real: `dagster-daemon run` (and nothing else) with the top-level
dagster.yaml (PostgreSQL storage, run queue, pools, monitoring, retries) in a temporary DAGSTER_HOME,
the repository's workspace.yaml, a seeded PostgreSQL source and a local destination."""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import dagster as dg
import psycopg
import pytest

from exports_pipeline.core.seed import seed_source
from exports_pipeline_tests.conftest import ADMIN_URL

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SEED_NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) - dt.timedelta(days=30)
POOL_LIMIT = 2  # concurrency.pools.default_limit of dagster.yaml


@dataclass
class Deployment:
    home: Path
    env: dict
    instance: dg.DagsterInstance
    source_url: str
    exports: Path
    campaigns: list[str]
    daemon_log: Path

    def wait_for(self, what: str, predicate, timeout: float):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.5)
        log = self.daemon_log.read_text(errors="replace")[-4000:]
        pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}; daemon log ends with:\n{log}")

    def sensor_state(self, name: str):
        return next((s for s in self.instance.all_instigator_state() if s.instigator_name == name), None)

    def runs(self, **tags) -> list[dg.DagsterRun]:
        return list(self.instance.get_runs(filters=dg.RunsFilter(tags=tags)))


def _create_database() -> str:
    name = f"exports_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def _drop_databases(names: list[str]) -> None:
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        for name in names:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    home = tmp_path_factory.mktemp("dagster_home")
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    server = urlsplit(ADMIN_URL)
    storage_db, source_db = _create_database(), _create_database()
    source_url = ADMIN_URL.rsplit("/", 1)[0] + "/" + source_db
    env = {
        "DAGSTER_HOME": str(home), "DAGSTER_PG_HOST": server.hostname, "DAGSTER_PG_PORT": str(server.port or 5432),
        "DAGSTER_PG_USER": server.username or "postgres", "DAGSTER_PG_PASSWORD": server.password or "",
        "DAGSTER_PG_DB": storage_db, "EXPORTS_SOURCE_URL": source_url, "EXPORTS_DESTINATION": str(home / "exports"),
        "EXPORTS_SENSOR_INTERVAL_SECONDS": "5",
    }
    daemon = None
    try:
        campaigns = seed_source(source_url, contacts=4_400, campaigns=22, seed=11, now=SEED_NOW)
        with pytest.MonkeyPatch.context() as patch:
            for key, value in env.items():
                patch.setenv(key, value)
            # The test process creates the storage tables first, so that the daemon and it never race to.
            with dg.DagsterInstance.from_config(str(home)) as instance:
                log = home / "daemon.log"
                with open(log, "wb") as out:
                    daemon = subprocess.Popen([BIN / "dagster-daemon", "run", "-w", REPO / "workspace.yaml"], cwd=home,
                                              env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
                                              start_new_session=True)
                yield Deployment(home, {**os.environ, **env}, instance, source_url, home / "exports", campaigns, log)
    finally:
        if daemon is not None:  # the daemon, its code server and run workers share its process group
            os.killpg(daemon.pid, signal.SIGTERM)
            try:
                daemon.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(daemon.pid, signal.SIGKILL)
                daemon.wait()
        _drop_databases([storage_db, source_db])


def test_a_completion_in_the_source_is_exported_once_by_the_daemon(deployment):
    d = deployment
    d.wait_for("the partition sensor to register the seeded campaigns",
               lambda: set(d.campaigns) <= set(d.instance.get_dynamic_partitions("campaigns")), 90)
    d.wait_for("the completion sensor's first tick",
               lambda: (s := d.sensor_state("campaign_completed_sensor")) and s.sensor_instigator_data.cursor, 60)
    with psycopg.connect(d.source_url, autocommit=True) as conn:
        (cid, completed_at), = conn.execute(
            "UPDATE campaigns SET status = 'completed', completed_at = now(), updated_at = now() WHERE id = "
            "(SELECT id FROM campaigns WHERE status = 'running' ORDER BY id LIMIT 1) RETURNING id::text, completed_at"
        ).fetchall()

    run = d.wait_for("the sensor's export run to finish", lambda: next(
        (r for r in d.runs(campaign_id=cid, trigger="sensor") if r.is_finished), None), 120)
    assert run.status == dg.DagsterRunStatus.SUCCESS
    assert run.tags["formats"] == "csv,parquet" and run.tags["dagster/partition"] == cid
    assert run.tags["dagster/run_key"] == f"{cid}:{completed_at.astimezone(dt.timezone.utc).isoformat()}"
    latest = json.loads((d.exports / f"campaign_id={cid}" / "latest.json").read_text())
    manifest = json.loads((d.exports / latest["manifest"]).read_text())
    assert manifest["run_id"] == run.run_id and latest["snapshot"].endswith(run.run_id[:8])
    snapshot = d.exports / f"campaign_id={cid}" / latest["snapshot"]
    assert {f["name"] for f in manifest["files"]} <= {p.name for p in snapshot.iterdir()}

    # Later ticks read the completion again (look-back window): Dagster skips the run key.
    state = d.sensor_state("campaign_completed_sensor")
    created = d.instance.get_run_record_by_id(run.run_id).create_timestamp.timestamp()
    d.wait_for("two completion sensor ticks after the run was requested", lambda: len(d.instance.get_ticks(
        state.instigator_origin_id, state.selector_id, after=created)) >= 2, 40)
    assert len(d.runs(campaign_id=cid)) == 1


def _step_intervals(instance: dg.DagsterInstance, run_id: str) -> list[tuple[float, float]]:
    starts, ends = {}, {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event and event.step_key == "campaign_export":
            if event.event_type == dg.DagsterEventType.STEP_START:
                starts[event.step_key] = entry.timestamp
            elif event.event_type in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE):
                ends[event.step_key] = entry.timestamp
    return [(starts[k], ends[k]) for k in starts]


def _max_overlap(intervals: list[tuple[float, float]]) -> int:
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = peak = 0
    for _, change in edges:  # at equal times the end (-1) sorts first
        running += change
        peak = max(peak, running)
    return peak


def test_a_backfill_of_20_partitions_completes_within_the_source_pool_limit(deployment):
    d = deployment
    keys = d.campaigns[:20]
    d.instance.add_dynamic_partitions("campaigns", keys)
    launched = subprocess.run([BIN / "dagster", "job", "backfill", "-j", "export_campaign", "--partitions",
                               ",".join(keys), "--noprompt", "-w", REPO / "workspace.yaml"],
                              cwd=d.home, env=d.env, capture_output=True, text=True, timeout=120)
    assert launched.returncode == 0, launched.stderr[-3000:]
    backfill_id = re.search(r"Launched backfill job `(\w+)`", launched.stdout).group(1)

    runs = d.wait_for("20 backfill runs to finish", lambda: (
        runs if len(runs := d.runs(**{"dagster/backfill": backfill_id})) == 20 and all(r.is_finished for r in runs)
        else None), 900)  # generous: a loaded 2-core machine runs 20 run workers slowly
    assert {r.status for r in runs} == {dg.DagsterRunStatus.SUCCESS}
    assert sorted(r.tags["campaign_id"] for r in runs) == sorted(keys)  # added by ExportRunCoordinator
    assert {(r.tags["trigger"], r.tags["formats"]) for r in runs} == {("backfill", "csv,parquet")}
    assert all((d.exports / f"campaign_id={k}" / "latest.json").is_file() for k in keys)

    everything = [i for r in d.instance.get_runs() for i in _step_intervals(d.instance, r.run_id)]
    assert len(everything) >= 20 and _max_overlap(everything) <= POOL_LIMIT
