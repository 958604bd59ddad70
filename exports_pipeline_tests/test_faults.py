"""Faults (issue 8): source connections terminated mid-export, an export while the campaign is being
written to, two runs of one campaign at once, and S3 credentials that are refused.

All of it real: sessions are ended with pg_terminate_backend, the command line runs as a process,
S3 is moto's server. "Mid-export" is made deterministic with an ACCESS EXCLUSIVE lock, taken by the
test on a source table, on which the export's next read waits (seen in pg_stat_activity by the
export's application_name). Exports whose reads wait on such a lock run in another process:
connectorx keeps the GIL while its query waits, which would freeze a monitor in this process.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import boto3
import dagster as dg
import polars as pl
import psycopg
import pytest

from exports_pipeline.core.destinations import LocalDestination, s3_client
from exports_pipeline.core.export import publish_export, stage_export
from exports_pipeline.core.options import ExportOptions
from exports_pipeline.core.seed import seed_source
from exports_pipeline.core.source import APPLICATION_NAME
from exports_pipeline.defs.assets import DEFAULT_EXPORT_KEYS, TRANSIENT_RETRIES, campaign_export
from exports_pipeline.defs.resources import ExportDestination, SourceDatabase
from exports_pipeline_tests import awkward
from exports_pipeline_tests.awkward import C1
from exports_pipeline_tests.test_cli import run_cli
from exports_pipeline_tests.test_s3 import PREFIX, get, s3_destination

SEED_NOW = datetime(2026, 3, 1, tzinfo=UTC)
# How a terminated session shows: PostgreSQL's notice, or the driver finding its connection gone.
CONNECTION_LOST = re.compile("terminating connection due to administrator command|connection closed")


@pytest.fixture
def awkward_pg(pg_url) -> str:
    awkward.load(pg_url)
    return pg_url


def wait_for(what: str, probe, timeout: float = 120.0, every: float = 0.1):
    """Poll until probe() gives a truthy value (returned); fail naming what never happened."""
    deadline = time.monotonic() + timeout
    while not (value := probe()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)
    return value


def export_sessions(monitor: psycopg.Connection, waiting_on_lock: bool = False) -> list[int]:
    """Backend pids of the export's sessions in this database (every one names itself exports-pipeline)."""
    sql = "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = %s" + (
        " AND wait_event_type = 'Lock'" if waiting_on_lock else ""
    )
    return [pid for (pid,) in monitor.execute(sql, (APPLICATION_NAME,)).fetchall()]


def terminate_export_sessions(monitor: psycopg.Connection) -> int:
    """pg_terminate_backend every export session, waiting (up to 30 s each) until each has exited."""
    pids = export_sessions(monitor)
    for pid in pids:
        monitor.execute("SELECT pg_terminate_backend(%s, 30000)", (pid,))
    return len(pids)


@contextmanager
def table_locked(url: str, table: str):
    """ACCESS EXCLUSIVE on a source table: a read of it waits until the block ends (the lock is released)."""
    with psycopg.connect(url) as conn:
        conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        try:
            yield
        finally:
            conn.rollback()


def cli_env(url: str, destination: str) -> dict:
    return {"EXPORTS_SOURCE_URL": url, "EXPORTS_DESTINATION": destination}


@contextmanager
def cli_instance(folder: Path, monkeypatch):
    """The instance the command line used when run from folder (./.dagster_home)."""
    monkeypatch.setenv("DAGSTER_HOME", str(folder / ".dagster_home"))
    with dg.DagsterInstance.get() as instance:
        yield instance


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_snapshot_complete(read, snapshot: str) -> None:
    """Every file the snapshot's manifest lists is stored with the manifest's bytes and sha256 (read: key ->
    bytes, local or S3), and the CSV is the expected one."""
    folder = f"campaign_id={C1}/{snapshot}"
    manifest = json.loads(read(f"{folder}/manifest.json"))
    assert manifest["snapshot"] == snapshot
    for record in manifest["files"]:
        data = read(f"{folder}/{record['name']}")
        assert (record["bytes"], record["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
    assert read(f"{folder}/campaign_results.csv") == awkward.expected_csv()


# ------------------------------------------------------------------ item 1: connections terminated mid-export


def test_connections_terminated_once_mid_export_are_retried_and_the_retry_publishes(awkward_pg, tmp_path, monkeypatch):
    """Here the export waits in a bulk read (connectorx) when its sessions are terminated."""
    out = tmp_path / "out"
    with ThreadPoolExecutor(1) as pool, psycopg.connect(awkward_pg, autocommit=True) as monitor:
        with table_locked(awkward_pg, "call_attempts"):
            run = pool.submit(run_cli, ["export", C1], tmp_path, **cli_env(awkward_pg, str(out)))
            wait_for("the export to wait for call_attempts", lambda: export_sessions(monitor, waiting_on_lock=True))
            assert terminate_export_sessions(monitor) >= 2  # the snapshot's session and a reader, at least
        result = run.result()

    assert result.returncode == 0, result.stderr
    latest = json.loads((out / f"campaign_id={C1}" / "latest.json").read_text())
    assert_snapshot_complete(lambda key: (out / key).read_bytes(), latest["snapshot"])
    with cli_instance(tmp_path, monkeypatch) as instance:
        (run_record,) = instance.get_runs()
        assert run_record.is_success and latest["snapshot"].endswith(run_record.run_id[:8])
        retries = instance.all_logs(run_record.run_id, of_type=dg.DagsterEventType.STEP_UP_FOR_RETRY)
        assert len(retries) == 1
        cause = retries[0].dagster_event.event_specific_data.error.cause  # what the retry policy caught
        assert cause.cls_name == "SourceUnavailableError" and CONNECTION_LOST.search(cause.message)


def test_connections_terminated_at_every_attempt_fail_the_run_naming_campaign_and_cause(
    awkward_pg, tmp_path, monkeypatch
):
    """Here the export waits in its snapshot session's own query (psycopg) when its sessions are terminated."""
    out = tmp_path / "out"
    with stage_export(awkward_pg, C1, ExportOptions(), "before00") as staged:
        publish_export(staged, LocalDestination(out))
    before = tree(out)

    terminated = 0
    with ThreadPoolExecutor(1) as pool, psycopg.connect(awkward_pg, autocommit=True) as monitor:
        with table_locked(awkward_pg, "survey_questions"):
            run = pool.submit(run_cli, ["export", C1], tmp_path, **cli_env(awkward_pg, str(out)))
            deadline = time.monotonic() + 240
            while not run.done() and time.monotonic() < deadline:
                if export_sessions(monitor, waiting_on_lock=True):
                    terminate_export_sessions(monitor)
                    terminated += 1
                time.sleep(0.1)
        result = run.result(timeout=60)

    assert result.returncode == 1 and terminated == TRANSIENT_RETRIES + 1
    (printed,) = [line for line in result.stderr.splitlines() if line.startswith("exports-pipeline: ")]
    assert f"campaign {C1}" in printed and CONNECTION_LOST.search(printed), printed
    assert tree(out) == before  # latest.json byte-identical, and no new file, reachable or not
    with cli_instance(tmp_path, monkeypatch) as instance:
        (failed,) = instance.get_runs()
        retries = instance.all_logs(failed.run_id, of_type=dg.DagsterEventType.STEP_UP_FOR_RETRY)
        assert len(retries) == TRANSIENT_RETRIES
        (step_failure,) = instance.all_logs(failed.run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
        cause = step_failure.dagster_event.event_specific_data.error.cause  # under "Exceeded max_retries"
        assert cause.cls_name == "SourceUnavailableError"
        assert f"export of campaign {C1} failed" in cause.message and CONNECTION_LOST.search(cause.message)


# ------------------------------------------------------------------ item 3: an export while the campaign is written to

NEW_CONTACTS_PER_WRITE = 2  # each with one attempt and one answer; plus one existing contact updated,
ATTEMPTS_PER_WRITE = NEW_CONTACTS_PER_WRITE + 1  # which gets a new latest attempt


class CampaignWriter(threading.Thread):
    """Commits small transactions one after another, as the application does while a campaign runs.

    Transaction i inserts contacts marked writer-i-j with an attempt and an answer each, renames the
    i-th existing contact to writer-i and gives it a new latest attempt marked writer-i. It records,
    in commit order, the server's clock just before each commit.
    """

    def __init__(self, url: str, campaign_id: str, existing: list[str], position: int):
        super().__init__(name="campaign-writer", daemon=True)
        self.url, self.campaign_id, self.existing, self.position = url, campaign_id, existing, position
        self.before_commit: list[datetime] = []
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with psycopg.connect(self.url) as conn:
                for i, contact in enumerate(self.existing):
                    if self.stop.is_set():
                        return
                    self.before_commit.append(self._write(conn, i, contact))
        except BaseException as exc:  # reported by the test
            self.error = exc

    def _write(self, conn: psycopg.Connection, i: int, contact: str) -> datetime:
        with conn.transaction():
            for j in range(NEW_CONTACTS_PER_WRITE):
                marker, new_contact = f"writer-{i}-{j}", str(uuid.uuid4())
                conn.execute(
                    "INSERT INTO contacts (id, campaign_id, external_contact_id, name, phone_number, state, "
                    "attempt_count, created_at, updated_at) "
                    "VALUES (%s, %s, %s, %s, '+15550000000', 'completed', 1, now(), now())",
                    (new_contact, self.campaign_id, marker, marker),
                )
                self._attempt(conn, new_contact, 1, marker)
                conn.execute(
                    "INSERT INTO survey_responses (campaign_id, contact_id, question_position, answer, "
                    "answered_at) VALUES (%s, %s, %s, %s, now())",
                    (self.campaign_id, new_contact, self.position, marker),
                )
            conn.execute(
                "UPDATE contacts SET name = %s, attempt_count = attempt_count + 1, updated_at = now() WHERE id = %s",
                (f"writer-{i}", contact),
            )
            self._attempt(conn, contact, 1_000_000 + i, f"writer-{i}")
            return conn.execute("SELECT clock_timestamp()").fetchone()[0]

    def _attempt(self, conn: psycopg.Connection, contact: str, number: int, marker: str) -> None:
        conn.execute(
            "INSERT INTO call_attempts (id, campaign_id, contact_id, attempt_number, status, started_at, "
            "ended_at, cost_usd, recording_url) VALUES (%s, %s, %s, %s, 'completed', now(), now(), 0.5, %s)",
            (str(uuid.uuid4()), self.campaign_id, contact, number, marker),
        )


def exported(url: str, campaign_id: str, run_id: str) -> dict:
    """What an export staged: its Parquet rows (by contact id) and its manifest figures."""
    with stage_export(url, campaign_id, ExportOptions(batch_size=500), run_id) as staged:
        parquet = next(f.path for f in staged.files if f.format == "parquet")
        rows = {row["contact_id"]: row for row in pl.read_parquet(parquet).iter_rows(named=True)}
        return {
            "rows": rows,
            "fingerprint": staged.fingerprint,
            "anomalies": staged.anomalies,
            "stats": staged.stats,
            "snapshot_time": staged.snapshot_time,
            "checks": staged.checks,
        }


def test_export_during_writes_is_one_consistent_snapshot(pg_url):
    (campaign_id,) = seed_source(pg_url, contacts=3_000, campaigns=1, seed=8, now=SEED_NOW)
    with psycopg.connect(pg_url) as conn:
        existing = [
            i
            for (i,) in conn.execute(
                "SELECT id::text FROM contacts WHERE campaign_id = %s ORDER BY id", (campaign_id,)
            ).fetchall()
        ]
        (position,) = conn.execute(
            "SELECT min(position) FROM survey_questions WHERE campaign_id = %s", (campaign_id,)
        ).fetchone()
    base = exported(pg_url, campaign_id, "base0000")

    writer = CampaignWriter(pg_url, campaign_id, existing, position)
    writer.start()
    try:
        wait_for("the writer's first commits", lambda: len(writer.before_commit) >= 3 or writer.error)
        with ThreadPoolExecutor(1) as pool, psycopg.connect(pg_url, autocommit=True) as monitor:
            # The export waits on survey_questions, which the writer never touches, just after taking its
            # snapshot; the writer commits more meanwhile, and on while the export streams the tables.
            with table_locked(pg_url, "survey_questions"):
                export = pool.submit(exported, pg_url, campaign_id, "during00")
                wait_for("the export to hold its snapshot", lambda: export_sessions(monitor, waiting_on_lock=True))
                committed = len(writer.before_commit)
                wait_for(
                    "commits after the snapshot", lambda: len(writer.before_commit) >= committed + 5 or writer.error
                )
            during = export.result(timeout=120)
    finally:
        writer.stop.set()
        writer.join(timeout=60)
    assert writer.error is None, writer.error

    rows = during["rows"]
    by_marker = {
        r["external_contact_id"]: r for r in rows.values() if (r["external_contact_id"] or "").startswith("writer-")
    }
    visible = []
    for i in range(len(writer.before_commit)):
        new = [by_marker.get(f"writer-{i}-{j}") for j in range(NEW_CONTACTS_PER_WRITE)]
        updated = rows[existing[i]]
        seen = [r is not None for r in new] + [
            updated["name"] == f"writer-{i}",
            updated["recording_url"] == f"writer-{i}",
        ]
        assert all(seen) or not any(seen), f"transaction {i} is only partly in the export: {seen}"
        if all(seen):
            visible.append(i)
            assert all(
                (r["name"], r["recording_url"], r[f"q{position}_answer"], r["call_status"])
                == (f"writer-{i}-{j}", f"writer-{i}-{j}", f"writer-{i}-{j}", "completed")
                for j, r in enumerate(new)
            )
        else:
            assert updated == base["rows"][existing[i]]
    k = len(visible)
    assert visible == list(range(k)), "the visible transactions are not a prefix of the commit order"
    assert k >= 3 and len(writer.before_commit) - k >= 5  # writes on both sides of the snapshot
    assert writer.before_commit[k - 1] < during["snapshot_time"]
    assert len(by_marker) == NEW_CONTACTS_PER_WRITE * k  # no contact of a later transaction

    untouched = set(base["rows"]) - set(existing[:k])
    assert all(rows[c] == base["rows"][c] for c in untouched)
    assert len(rows) == len(base["rows"]) + NEW_CONTACTS_PER_WRITE * k
    # The counts are those of the database right after commit k-1: one snapshot, whatever the table.
    added = {
        "contacts_count": NEW_CONTACTS_PER_WRITE * k,
        "attempts_count": ATTEMPTS_PER_WRITE * k,
        "answers_count": NEW_CONTACTS_PER_WRITE * k,
    }
    for name, more in added.items():
        assert during["fingerprint"][name] == base["fingerprint"][name] + more, name
    assert during["stats"]["contacts"]["total"] == len(rows)
    assert during["stats"]["attempts"]["total"] == base["stats"]["attempts"]["total"] + ATTEMPTS_PER_WRITE * k
    # every attempt and answer read belongs to an exported contact: none more set aside than before
    assert during["anomalies"] == base["anomalies"]
    assert all(c.passed for c in during["checks"] if c.blocking)


# ------------------------------------------------------------------ item 4: two runs of one campaign at once


def test_two_runs_of_a_campaign_at_once_publish_two_complete_snapshots(awkward_pg, s3_bucket, tmp_path, monkeypatch):
    env = cli_env(awkward_pg, f"s3://{s3_bucket}/{PREFIX}")
    # Both commands start on a new ./.dagster_home: one at a time creates its tables.
    with ThreadPoolExecutor(2) as pool, psycopg.connect(awkward_pg, autocommit=True) as monitor:
        # Both runs take their snapshot, then wait on survey_questions until both are that far.
        with table_locked(awkward_pg, "survey_questions"):
            runs = [pool.submit(run_cli, ["export", C1], tmp_path, **env) for _ in range(2)]
            wait_for(
                "both runs to hold a snapshot",
                lambda: len(export_sessions(monitor, waiting_on_lock=True)) == 2 or any(r.done() for r in runs),
            )
        results = [r.result() for r in runs]
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]

    destination = s3_destination(s3_bucket)
    snapshots = sorted({Path(line).parent.name for r in results for line in r.stdout.split()})
    assert len(snapshots) == 2
    for snapshot in snapshots:
        assert_snapshot_complete(lambda key: get(destination, key), snapshot)
    assert json.loads(get(destination, f"campaign_id={C1}/latest.json")) == {
        "snapshot": snapshots[-1],
        "manifest": f"campaign_id={C1}/{snapshots[-1]}/manifest.json",
    }
    with cli_instance(tmp_path, monkeypatch) as instance:
        history = instance.get_runs(limit=2)  # newest first: the two at once
        assert len(instance.get_runs()) == 2 and all(r.is_success for r in history)
        assert sorted(r.run_id[:8] for r in history) == sorted(s[-8:] for s in snapshots)
        assert instance.get_dynamic_partitions("campaigns") == [C1]


# ------------------------------------------------------------------ denied S3 credentials


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def strict_s3():
    """A moto S3 server of this module's own that checks credentials, in its own process (moto's auth
    switch is process-wide). Set up with auth off: a bucket, an admin key, a key with no permission;
    then moto's reset-auth endpoint turns checking on for every later request."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for("moto's server to listen", lambda: _listening(port), timeout=60)
        settings = {"endpoint_url": endpoint, "region_name": "us-east-1"}
        setup = {**settings, "aws_access_key_id": "setup", "aws_secret_access_key": "setup"}
        iam = boto3.client("iam", **setup)
        bucket = f"exports-{uuid.uuid4().hex[:12]}"
        s3_client(**setup).create_bucket(Bucket=bucket)
        keys = {}
        for user, actions in (("admin", "*"), ("nobody", None)):
            iam.create_user(UserName=user)
            if actions:
                iam.put_user_policy(
                    UserName=user,
                    PolicyName="all",
                    PolicyDocument=json.dumps(
                        {
                            "Version": "2012-10-17",
                            "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}],
                        }
                    ),
                )
            key = iam.create_access_key(UserName=user)["AccessKey"]
            keys[user] = (key["AccessKeyId"], key["SecretAccessKey"])
        urllib.request.urlopen(
            urllib.request.Request(
                f"{endpoint}/moto-api/reset-auth", data=b"0", method="POST", headers={"Content-Type": "text/plain"}
            )
        )
        yield {"settings": settings, "bucket": bucket, "keys": keys}
    finally:
        server.terminate()
        server.wait(timeout=30)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


DENIED_SECRET = "denied-secret-never-shown"
DENIED = {  # credentials -> the S3 error code the run must name
    "unknown access key": (lambda keys: ("AKIAUNKNOWNKEY000000", DENIED_SECRET), "InvalidAccessKeyId"),
    "wrong secret key": (lambda keys: (keys["admin"][0], DENIED_SECRET), "SignatureDoesNotMatch"),
    "key without permission": (lambda keys: keys["nobody"], "AccessDenied"),
}


@pytest.mark.parametrize("case", DENIED)
def test_denied_s3_credentials_fail_naming_destination_and_error_without_the_secret(awkward_pg, strict_s3, case):
    credentials, code = DENIED[case]
    key_id, secret = credentials(strict_s3["keys"])
    bucket, settings = strict_s3["bucket"], strict_s3["settings"]
    admin_id, admin_secret = strict_s3["keys"]["admin"]
    admin = s3_client(**settings, aws_access_key_id=admin_id, aws_secret_access_key=admin_secret)
    assert admin.list_objects_v2(Bucket=bucket)["KeyCount"] == 0  # auth is on: the admin key works

    destination = ExportDestination(
        url=f"s3://{bucket}/{PREFIX}", aws_access_key_id=key_id, aws_secret_access_key=secret, **settings
    )
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("campaigns", [C1])
        result = dg.materialize(
            [campaign_export],
            selection=DEFAULT_EXPORT_KEYS,
            instance=instance,
            partition_key=C1,
            raise_on_error=False,
            resources={"source": SourceDatabase(url=awkward_pg), "destination": destination},
        )
        assert not result.success
        message = result.failure_data_for_node("campaign_export").error.message
        logs = "".join(repr(entry) for entry in instance.all_logs(result.run_id))
    assert f"campaign {C1}" in message and f"s3://{bucket}/{PREFIX}/" in message and code in message, message
    assert secret not in message and secret not in logs
    assert admin.list_objects_v2(Bucket=bucket)["KeyCount"] == 0  # nothing published
    assert admin.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
