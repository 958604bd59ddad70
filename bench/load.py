"""Load test (issue 8, item 7): one backfill of many small campaigns through the production instance.

    make load                                     # 1,000 campaigns of ~20 contacts
    make load LOAD_ARGS="--campaigns 30"          # a quick look
    python bench/load.py --campaigns 1000 --pool-limit 4 --max-concurrent-runs 20 --keep

What it does, end to end, with real processes only (not part of the test suite or CI):

  1. creates two databases on the local PostgreSQL server (--server-url): a source seeded with
     `exports-pipeline seed --contacts N*C --campaigns N` (the seed's split: the first campaign holds
     60 % of the contacts, the others about 0.4*C each, the last none) and a Dagster storage database;
  2. writes a temporary DAGSTER_HOME whose dagster.yaml is the repository's production dagster.yaml
     (PostgreSQL storage, ExportRunCoordinator queue, max_concurrent_runs, pool source_database, run
     launcher, monitoring and retries) with --max-concurrent-runs / --pool-limit applied when given,
     and a local destination folder;
  3. registers the N campaign partitions, starts `dagster-daemon run` and `dagster-webserver` on
     loopback (each with its code server, from workspace.yaml), waits for the daemons to be healthy,
     stops the nightly schedule (it would queue a run per never-exported campaign if the load spans
     02:00 UTC; the sensors keep running, as in production), then launches ONE backfill of all N
     partitions through the GraphQL API (`launchPartitionBackfill`, what the UI does);
  4. while it runs, samples pg_stat_activity of the SOURCE database every --sample-interval seconds
     (connections, active ones) and the RSS of the daemon's and webserver's process trees (code
     servers and run workers included) every second; prints progress every 30 s;
  5. reports the wall time from launch to the last run's end (and to the backfill's completed status),
     runs succeeded / failed, runs per minute, the peak source connections and the peak number of
     export steps running at once against the pool limit, per-run phase medians (queue, run worker
     start, slot wait, export step), CPU seconds of the process trees, peak RSS, and a projection to
     1,000 campaigns;
  6. checks that every campaign's latest.json names a complete snapshot: its manifest, written by
     that campaign's backfill run, lists files that exist with the recorded size and sha256, and the
     row count equals the campaign's contacts in the source;
  7. stops its processes, drops its databases and removes its temporary folders (also on Ctrl-C or
     SIGTERM; --keep leaves databases, DAGSTER_HOME and exports in place), and writes the raw results
     to bench/results/load-<UTC time>.json.

Exit code 0 only when every run succeeded and every campaign's export checks out.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import yaml

from bench import MIB, PAGE, git_revision, proc_stats, with_database  # bench/bench.py, the export benchmark
from exports_pipeline.core.sourceurl import redact_text, redact_url
from exports_pipeline.run_tags import EXPORT_JOB

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
BIN = Path(sys.executable).parent
WORKSPACE = REPO / "workspace.yaml"
REPOSITORY_NAME = "__repository__"  # the name Dagster gives the repository of a dg.Definitions
PARTITION_SET = f"{EXPORT_JOB}_partition_set"  # the export job's partition set, as Dagster names it
BACKFILL_TAG = "dagster/backfill"
PROGRESS_EVERY_S = 30.0
STARTUP_TIMEOUT_S = 300.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PROJECTED_CAMPAIGNS = 1000


# ------------------------------------------------------------------------------------------- GraphQL

DAEMON_HEALTH = """query { instance { daemonHealth { allDaemonStatuses { daemonType required healthy } } } }"""

SCHEDULE_STATE = """query State($selector: ScheduleSelector!) { scheduleOrError(scheduleSelector: $selector) {
  __typename ... on Schedule { scheduleState { id status } } ... on PythonError { message } } }"""

STOP_SCHEDULE = """mutation Stop($id: String!) { stopRunningSchedule(id: $id) {
  __typename ... on ScheduleStateResult { scheduleState { status } } ... on PythonError { message } } }"""

LAUNCH_BACKFILL = """mutation Backfill($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
  __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }"""

PROGRESS = """query Progress($id: String!, $all: RunsFilter!, $succeeded: RunsFilter!, $failed: RunsFilter!,
                         $running: RunsFilter!) {
  partitionBackfillOrError(backfillId: $id) { ... on PartitionBackfill { status endTimestamp } }
  all: runsOrError(filter: $all) { ... on Runs { count } }
  succeeded: runsOrError(filter: $succeeded) { ... on Runs { count } }
  failed: runsOrError(filter: $failed) { ... on Runs { count } }
  running: runsOrError(filter: $running) { ... on Runs { count } } }"""

RUN_DETAILS = """query Runs($filter: RunsFilter!, $cursor: String, $limit: Int!) {
  runsOrError(filter: $filter, cursor: $cursor, limit: $limit) {
    __typename
    ... on Runs { results { runId status creationTime startTime endTime tags { key value }
                            stats { ... on RunStatsSnapshot { enqueuedTime launchTime startTime endTime } }
                            stepStats { stepKey status startTime endTime attempts { startTime } } } }
    ... on PythonError { message } } }"""


class GraphQL:
    def __init__(self, url: str):
        self.url = url

    def __call__(self, query: str, variables: dict | None = None, timeout: float = 120) -> dict:
        request = urllib.request.Request(f"{self.url}/graphql", json.dumps(
            {"query": query, "variables": variables or {}}).encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = json.load(response)
        if body.get("errors"):
            raise RuntimeError(f"GraphQL errors: {json.dumps(body['errors'])[:2000]}")
        return body["data"]


def backfill_filter(backfill_id: str, *statuses: str) -> dict:
    return {"tags": [{"key": BACKFILL_TAG, "value": backfill_id}], **({"statuses": list(statuses)} if statuses else {})}


# ------------------------------------------------------------------------------------------ processes

class Service:
    """A Dagster process leading its own process group, which its code server and run workers join."""

    def __init__(self, name: str, command: list, env: dict, cwd: Path, logs: Path):
        self.name, self.log = name, logs / f"{name}.log"
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def tail(self, chars: int = 3000) -> str:
        return f"--- {self.log.name}\n{self.log.read_text(errors='replace')[-chars:]}"

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM to the process, so that it stops its code server; then whatever is left of its group goes."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # the group this process leads (start_new_session)
        except ProcessLookupError:
            pass
        self.process.wait()


def group_processes(pgids: set[int]) -> dict[tuple[int, int], tuple[int, int, float]]:
    """(pid, start time) -> (process group, RSS bytes, CPU seconds of its own) for the processes of these groups."""
    found = {}
    for pid, fields in proc_stats():
        if (group := int(fields[2])) in pgids:
            cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
            found[(pid, int(fields[19]))] = (group, int(fields[21]) * PAGE, cpu)
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(what: str, predicate, timeout: float, services: list[Service], interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if value := predicate():
                return value
        except OSError:
            pass  # the webserver is not listening yet
        time.sleep(interval)
    tails = "\n".join(s.tail() for s in services)
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}\n{tails}")


# ------------------------------------------------------------------------------------------- sampling

class Sampler(threading.Thread):
    """pg_stat_activity of the source database every `interval` s; every second, RSS and CPU of the services'
    process groups (code servers and run workers included). A process's CPU is its last sample's: a lower
    bound, short of at most its last second."""

    def __init__(self, admin_url: str, source_db: str, services: list[Service], interval: float):
        super().__init__(daemon=True)
        self.admin_url, self.source_db, self.services, self.interval = admin_url, source_db, services, interval
        self.started = time.time()
        self.samples = 0
        self.connections: Counter[int] = Counter()  # connections -> samples: how long each level lasted
        self.peak_connections = self.peak_active = 0
        self.peak_connections_at_s: float | None = None
        self.peak_rss = 0
        self.cpu: dict[tuple[int, int], tuple[int, float]] = {}  # (pid, start time) -> (group, CPU s)
        self.cpu_at_start: dict[int, float] | None = None
        self.timeline: list[tuple[float, int, int, float]] = []  # per 5 s: (t, max conns, max active, RSS MiB)
        self.error: str | None = None
        self._done = threading.Event()

    def stop(self) -> None:
        self._done.set()
        self.join(timeout=10)

    def run(self) -> None:
        bucket, last_rss, rss = None, 0.0, 0
        try:
            with psycopg.connect(self.admin_url, autocommit=True, application_name="exports-load-sampler") as conn:
                while not self._done.is_set():
                    now = time.time()
                    total, active = conn.execute(
                        "SELECT count(*), count(*) FILTER (WHERE state = 'active') FROM pg_stat_activity "
                        "WHERE datname = %s", (self.source_db,)).fetchone()
                    if now - last_rss >= 1.0:
                        rss, last_rss = self._sample_processes(), now
                    self.samples += 1
                    self.connections[total] += 1
                    if total > self.peak_connections:
                        self.peak_connections, self.peak_connections_at_s = total, now - self.started
                    self.peak_active = max(self.peak_active, active)
                    t = 5 * int((now - self.started) // 5)
                    if bucket is None or bucket[0] != t:
                        bucket = [t, total, active, rss / MIB]
                        self.timeline.append(bucket)
                    else:
                        bucket[1:] = [max(bucket[1], total), max(bucket[2], active), max(bucket[3], rss / MIB)]
                    self._done.wait(self.interval)
        except Exception as exc:  # reported with the results rather than killing the load
            self.error = f"{type(exc).__name__}: {exc}"

    def _sample_processes(self) -> int:
        processes = group_processes({s.process.pid for s in self.services})
        self.cpu.update({key: (group, cpu) for key, (group, _, cpu) in processes.items()})
        if self.cpu_at_start is None:
            self.cpu_at_start = self.cpu_by_group()
        rss = sum(r for _, r, _ in processes.values())
        self.peak_rss = max(self.peak_rss, rss)
        return rss

    def cpu_by_group(self) -> dict[int, float]:
        totals: Counter[int] = Counter()
        for group, cpu in self.cpu.values():
            totals[group] += cpu
        return totals

    def cpu_report(self) -> dict:
        """CPU seconds per service: in all, and since the launch (the load's own)."""
        totals, before = self.cpu_by_group(), self.cpu_at_start or {}
        return {s.name: {"total_s": round(totals[s.process.pid], 1),
                         "during_load_s": round(totals[s.process.pid] - before.get(s.process.pid, 0.0), 1),
                         "processes": sum(1 for group, _ in self.cpu.values() if group == s.process.pid)}
                for s in self.services}

    def report(self) -> dict:
        return {"cpu": self.cpu_report(), "samples": self.samples, "interval_s": self.interval, "error": self.error,
                "peak_source_connections": self.peak_connections, "peak_active_source_connections": self.peak_active,
                "peak_at_s_after_launch": self.peak_connections_at_s,
                "connections_histogram": {str(k): v for k, v in sorted(self.connections.items())},
                "peak_rss_mib": round(self.peak_rss / MIB, 1),
                "timeline_5s": [[t, c, a, round(r, 1)] for t, c, a, r in self.timeline]}


# ------------------------------------------------------------------------------------------ the setup

def create_databases(admin_url: str, names: list[str]) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        for name in names:
            conn.execute(f'CREATE DATABASE "{name}"')


def drop_databases(admin_url: str, names: list[str]) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        for name in names:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def instance_config(max_concurrent_runs: int | None, pool_limit: int | None) -> dict:
    """The production dagster.yaml with the two limits under test replaced when given."""
    config = yaml.safe_load((REPO / "dagster.yaml").read_text())
    if max_concurrent_runs is not None:
        config["concurrency"]["runs"]["max_concurrent_runs"] = max_concurrent_runs
    if pool_limit is not None:
        config["concurrency"]["pools"]["default_limit"] = pool_limit
    return config


def deployment_env(server_url: str, storage_db: str, source_url: str, home: Path, exports: Path) -> dict:
    """This process's environment without EXPORTS_* settings (no mail, no S3 endpoint) plus the deployment's."""
    server = urlsplit(server_url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPORTS_")}
    env.update(DAGSTER_HOME=str(home), DAGSTER_PG_HOST=server.hostname or "127.0.0.1",
               DAGSTER_PG_PORT=str(server.port or 5432), DAGSTER_PG_USER=server.username or "postgres",
               DAGSTER_PG_PASSWORD=server.password or "", DAGSTER_PG_DB=storage_db,
               EXPORTS_SOURCE_URL=source_url, EXPORTS_DESTINATION=str(exports))
    return env


def register_partitions(env: dict, campaign_ids: list[str]) -> None:
    """Also creates the storage tables, before the daemon and the webserver could race to."""
    import dagster as dg

    from exports_pipeline.defs.partitions import campaigns_partitions

    os.environ.update(env)  # DagsterInstance.get() reads DAGSTER_HOME and dagster.yaml's env references
    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions(campaigns_partitions.name, campaign_ids)


def stop_nightly_schedule(graphql: GraphQL, location: str) -> str:
    from exports_pipeline.defs.schedules import nightly_changed_campaigns

    selector = {"repositoryLocationName": location, "repositoryName": REPOSITORY_NAME,
                "scheduleName": nightly_changed_campaigns.name}
    state = graphql(SCHEDULE_STATE, {"selector": selector})["scheduleOrError"]
    if state["__typename"] != "Schedule":
        raise SystemExit(f"schedule {selector['scheduleName']}: {state}")
    stopped = graphql(STOP_SCHEDULE, {"id": state["scheduleState"]["id"]})["stopRunningSchedule"]
    if stopped["__typename"] != "ScheduleStateResult" or stopped["scheduleState"]["status"] != "STOPPED":
        raise SystemExit(f"could not stop schedule {selector['scheduleName']}: {stopped}")
    return selector["scheduleName"]


def daemons_healthy(graphql: GraphQL) -> list[str] | None:
    statuses = graphql(DAEMON_HEALTH)["instance"]["daemonHealth"]["allDaemonStatuses"]
    required = [s for s in statuses if s["required"]]
    return [s["daemonType"] for s in required] if required and all(s["healthy"] for s in required) else None


# ------------------------------------------------------------------------------------------ measuring

def watch_backfill(graphql: GraphQL, backfill_id: str, expected: int, launched: float, sampler: Sampler,
                   timeout: float, services: list[Service]) -> dict:
    """Polls until every run of the backfill finished and the backfill has a final status."""
    variables = {"id": backfill_id, "all": backfill_filter(backfill_id),
                 "succeeded": backfill_filter(backfill_id, "SUCCESS"),
                 "failed": backfill_filter(backfill_id, "FAILURE", "CANCELED"),
                 "running": backfill_filter(backfill_id, "STARTING", "STARTED")}
    deadline, next_print = launched + timeout, 0.0
    while True:
        data = graphql(PROGRESS, variables)
        backfill = data["partitionBackfillOrError"] or {}
        counts = {k: data[k]["count"] for k in ("all", "succeeded", "failed", "running")}
        finished = counts["succeeded"] + counts["failed"]
        elapsed = time.time() - launched
        if time.monotonic() >= next_print:
            rate = finished / elapsed * 60 if elapsed else 0.0
            print(f"  [{elapsed:6.0f} s] runs created {counts['all']}/{expected}, finished {finished} "
                  f"(ok {counts['succeeded']}, failed {counts['failed']}), in progress {counts['running']}; "
                  f"{rate:.1f} runs/min; source connections peak {sampler.peak_connections}; "
                  f"load {os.getloadavg()[0]:.1f}; backfill {backfill.get('status')}", flush=True)
            next_print = time.monotonic() + PROGRESS_EVERY_S
        if finished >= expected and backfill.get("status") not in (None, "REQUESTED", "CANCELING", "FAILING"):
            return {**counts, "backfill_status": backfill["status"], "backfill_end": backfill.get("endTimestamp")}
        if time.time() > deadline:
            tails = "\n".join(s.tail() for s in services)
            raise SystemExit(f"--timeout: {finished}/{expected} runs finished after {timeout:.0f} s\n{tails}")
        time.sleep(2.0)


def fetch_runs(graphql: GraphQL, backfill_id: str, page: int = 100) -> list[dict]:
    runs, cursor = [], None
    while True:
        data = graphql(RUN_DETAILS, {"filter": backfill_filter(backfill_id), "cursor": cursor, "limit": page},
                       timeout=300)["runsOrError"]
        if data["__typename"] != "Runs":
            raise SystemExit(f"cannot list the backfill's runs: {data}")
        runs += data["results"]
        if len(data["results"]) < page:
            return runs
        cursor = data["results"][-1]["runId"]


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """Most intervals open at one instant (an end at the same instant as a start closes first)."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = peak = 0
    for _, change in edges:
        running += change
        peak = max(peak, running)
    return peak


def run_phases(run: dict) -> dict | None:
    """Seconds spent in each phase of one run, from Dagster's own run statistics and step stats."""
    stats, step = run["stats"], next((s for s in run["stepStats"] if s["startTime"]), None)
    if not (stats.get("launchTime") and stats.get("startTime") and run["endTime"] and step and step["endTime"]):
        return None
    return {"queued_s": stats["launchTime"] - (stats.get("enqueuedTime") or run["creationTime"]),
            "worker_start_s": stats["startTime"] - stats["launchTime"],
            "slot_wait_and_setup_s": step["startTime"] - stats["startTime"],
            "export_step_s": step["endTime"] - step["startTime"],
            "teardown_s": run["endTime"] - step["endTime"],
            "launch_to_end_s": run["endTime"] - stats["launchTime"],
            "step_attempts": len(step["attempts"]) or 1}


def summarize_runs(runs: list[dict], launched: float) -> dict:
    phases = [p for p in map(run_phases, runs) if p]
    ends = sorted(r["endTime"] for r in runs if r["endTime"])
    steps = [(s["startTime"], s["endTime"]) for r in runs for s in r["stepStats"] if s["startTime"] and s["endTime"]]
    in_flight = [(r["stats"]["launchTime"], r["endTime"]) for r in runs
                 if r["stats"].get("launchTime") and r["endTime"]]
    summary: dict = {
        "runs": len(runs), "status": dict(Counter(r["status"] for r in runs)),
        "first_run_created_s": min(r["creationTime"] for r in runs) - launched if runs else None,
        "last_run_created_s": max(r["creationTime"] for r in runs) - launched if runs else None,
        "last_run_end_s": ends[-1] - launched if ends else None,
        "peak_export_steps_at_once": max_overlap(steps), "peak_runs_in_flight": max_overlap(in_flight),
        "retried_steps": sum(1 for p in phases if p["step_attempts"] > 1),
        "phase_median_s": {k: round(statistics.median(p[k] for p in phases), 3) for k in phases[0]
                           if k != "step_attempts"} if phases else {},
        "phase_total_s": {k: round(sum(p[k] for p in phases), 1) for k in phases[0]
                          if k != "step_attempts"} if phases else {},
    }
    if len(ends) >= 10:  # steady state: between the 10th and the 90th percentile of the finished runs
        low, high = ends[len(ends) // 10], ends[len(ends) * 9 // 10]
        if high > low:
            summary["steady_runs_per_min"] = (len(ends) * 9 // 10 - len(ends) // 10) / (high - low) * 60
    if ends and ends[-1] > launched:
        summary["overall_runs_per_min"] = len(ends) / (ends[-1] - launched) * 60
    return summary


# ----------------------------------------------------------------------------------------- the checks

def verify_exports(exports: Path, source_url: str, campaign_ids: list[str], runs: list[dict]) -> list[str]:
    """Problems found; empty when every campaign's latest.json names a complete snapshot of its run."""
    from exports_pipeline.core.destinations import LocalDestination
    from exports_pipeline.core.publish import StagedFile, campaign_prefix, read_latest, read_manifest

    run_of = {}
    for run in runs:
        run_of.setdefault({t["key"]: t["value"] for t in run["tags"]}.get("dagster/partition"), []).append(run)
    with psycopg.connect(source_url, autocommit=True) as conn:
        contacts = dict(conn.execute("SELECT c.id::text, count(k.id) FROM campaigns c "
                                     "LEFT JOIN contacts k ON k.campaign_id = c.id GROUP BY c.id").fetchall())
    destination = LocalDestination(exports)
    problems = []
    for cid in campaign_ids:
        found = run_of.get(cid, [])
        if len(found) != 1 or found[0]["status"] != "SUCCESS":
            problems.append(f"{cid}: backfill runs {[(r['runId'][:8], r['status']) for r in found]}")
            continue
        latest, manifest = read_latest(destination, cid), read_manifest(destination, cid)
        if latest is None or manifest is None:
            problems.append(f"{cid}: latest.json {'missing' if latest is None else 'names no manifest'}")
            continue
        if manifest.get("run_id") != found[0]["runId"]:
            problems.append(f"{cid}: manifest written by run {manifest.get('run_id')}, not {found[0]['runId']}")
        folder = exports / campaign_prefix(cid) / latest["snapshot"]
        for record in manifest["files"]:
            path = folder / record["name"]
            if not path.is_file():
                problems.append(f"{cid}: {record['name']} listed in the manifest is missing")
                continue
            written = StagedFile(record["name"], record["format"], path, record["rows"]).describe()
            if any(written[k] != record.get(k) for k in ("bytes", "sha256")):
                problems.append(f"{cid}: {record['name']} differs from its manifest entry")
            if record["rows"] is not None and record["rows"] != contacts.get(cid):
                problems.append(f"{cid}: {record['name']} has {record['rows']} rows, the source {contacts.get(cid)}")
    return problems


# ------------------------------------------------------------------------------------------------ main

class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The docstring's layout kept in the epilog, and the defaults shown."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=HelpFormatter)
    parser.add_argument("--campaigns", type=int, default=PROJECTED_CAMPAIGNS, help="campaigns (partitions) to backfill")
    parser.add_argument("--contacts-per-campaign", type=int, default=20,
                        help="seeded contacts = campaigns x this (the seed puts 60%% in the first campaign)")
    parser.add_argument("--max-concurrent-runs", type=int, default=None,
                        help="concurrency.runs.max_concurrent_runs (default: dagster.yaml's)")
    parser.add_argument("--pool-limit", type=int, default=None,
                        help="concurrency.pools.default_limit, the source_database pool (default: dagster.yaml's)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the databases, DAGSTER_HOME and exports (printed at the end), not removed")
    parser.add_argument("--server-url", default=os.environ.get("LOAD_PG_URL", "postgresql://postgres@127.0.0.1:5432/"),
                        help="PostgreSQL server for both databases (env LOAD_PG_URL)")
    parser.add_argument("--sample-interval", type=float, default=0.2, help="pg_stat_activity sampling interval (s)")
    parser.add_argument("--timeout", type=float, default=4 * 3600, help="give up when the backfill runs longer (s)")
    parser.add_argument("--seed", type=int, default=0, help="the seed generator's random seed")
    parser.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results", help="raw JSON results go here")
    args = parser.parse_args(argv)
    if args.campaigns < 1 or args.contacts_per_campaign < 0:
        parser.error("--campaigns must be >= 1 and --contacts-per-campaign >= 0")
    return args


def raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def print_report(report: dict, args: argparse.Namespace) -> None:
    s, c, runs = report["settings"], report["sampling"], report["runs"]
    wall = runs["last_run_end_s"]
    print("\n" + "=" * 100)
    print(f"{args.campaigns:,} campaigns ({report['contacts']:,} contacts), max_concurrent_runs "
          f"{s['max_concurrent_runs']}, pool {s['pool']} limit {s['pool_limit']} (run buffer {s['run_buffer']}), "
          f"{os.cpu_count()} CPUs")
    print(f"  wall time, launch -> last run finished: {wall:.1f} s ({wall / 60:.1f} min); backfill "
          f"{report['progress']['backfill_status']} at {report['backfill_completed_s']:.1f} s")
    print(f"  runs: {runs['status']}; runs created from {runs['first_run_created_s']:.1f} s to "
          f"{runs['last_run_created_s']:.1f} s after launch")
    print(f"  throughput: {runs.get('overall_runs_per_min', 0):.1f} runs/min overall, "
          f"{runs.get('steady_runs_per_min', 0):.1f} runs/min steady (10th-90th percentile of run ends)")
    print(f"  source database: peak {c['peak_source_connections']} connections ({c['peak_active_source_connections']} "
          f"active) vs pool limit {s['pool_limit']}; peak export steps at once {runs['peak_export_steps_at_once']}, "
          f"peak runs in flight {runs['peak_runs_in_flight']}")
    print(f"  peak RSS of the daemon's and webserver's process groups (code servers, run workers): "
          f"{c['peak_rss_mib']:.0f} MiB")
    during = sum(v["during_load_s"] for v in c["cpu"].values())
    print(f"  CPU during the load: {during:.0f} s = {during / args.campaigns:.2f} s per run ("
          + ", ".join(f"{k} group {v['during_load_s']:.0f} s, {v['processes']} processes" for k, v in c["cpu"].items())
          + "; PostgreSQL's not included)")
    print("  per-run medians (s): " + ", ".join(f"{k} {v:.2f}" for k, v in runs["phase_median_s"].items()))
    rate = runs.get("steady_runs_per_min") or runs.get("overall_runs_per_min")
    if rate and args.campaigns != PROJECTED_CAMPAIGNS:
        print(f"  projection: {PROJECTED_CAMPAIGNS:,} campaigns at {rate:.1f} runs/min = "
              f"{PROJECTED_CAMPAIGNS / rate:.0f} min (+ about {runs['first_run_created_s']:.0f} s to the first run)")
    problems = report["problems"]
    if not problems:
        print(f"  exports: all {args.campaigns:,} campaigns' latest.json name a complete snapshot of their run")
        return
    print(f"  exports: {len(problems)} problems (run again with --keep to look at the runs in the UI):")
    for problem in problems[:20]:
        print(f"    {problem}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for signum in (signal.SIGINT, signal.SIGTERM):  # SIGINT too: a background job starts with it ignored
        signal.signal(signum, raise_interrupt)
    started = datetime.now(timezone.utc)
    work = Path(tempfile.mkdtemp(prefix="exports-load-"))
    home, exports, logs = work / "dagster_home", work / "exports", work / "logs"
    for folder in (home, exports, logs):
        folder.mkdir()
    admin_url = with_database(args.server_url, "postgres")
    suffix = uuid.uuid4().hex[:10]
    source_db, storage_db = f"exports_load_source_{suffix}", f"exports_load_dagster_{suffix}"
    source_url = with_database(args.server_url, source_db)
    report: dict = {"status": "interrupted"}
    services: list[Service] = []
    created: list[str] = []
    try:
        config = instance_config(args.max_concurrent_runs, args.pool_limit)
        (home / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        pools = config["concurrency"]["pools"]
        from exports_pipeline.defs.assets import SOURCE_POOL

        report["settings"] = {"max_concurrent_runs": config["concurrency"]["runs"]["max_concurrent_runs"],
                              "pool": SOURCE_POOL, "pool_limit": pools["default_limit"],
                              "run_buffer": pools.get("op_granularity_run_buffer"),
                              "run_coordinator": config["run_coordinator"], "run_launcher": config.get("run_launcher")}
        create_databases(admin_url, [source_db, storage_db])
        created = [source_db, storage_db]
        contacts = args.campaigns * args.contacts_per_campaign
        print(f"seeding {source_db}: {args.campaigns:,} campaigns, {contacts:,} contacts", flush=True)
        seed_start = time.perf_counter()
        seeded = subprocess.run([BIN / "exports-pipeline", "seed", "--url", source_url, "--contacts", str(contacts),
                                 "--campaigns", str(args.campaigns), "--seed", str(args.seed)],
                                capture_output=True, text=True)
        if seeded.returncode != 0:  # not check=True: the error would show the URL, password included
            raise SystemExit(f"seeding failed:\n{redact_text(seeded.stderr[-3000:], source_url)}")
        campaign_ids = seeded.stdout.split()
        report.update(contacts=contacts, seed_s=round(time.perf_counter() - seed_start, 1))

        env = deployment_env(args.server_url, storage_db, source_url, home, exports)
        register_partitions(env, campaign_ids)
        location = yaml.safe_load(WORKSPACE.read_text())["load_from"][0]["python_module"]["location_name"]
        port = free_port()
        services += [Service("daemon", [BIN / "dagster-daemon", "run", "-w", WORKSPACE], env, home, logs),
                     Service("webserver", [BIN / "dagster-webserver", "-h", "127.0.0.1", "-p", str(port),
                                           "-w", WORKSPACE], env, home, logs)]
        graphql = GraphQL(f"http://127.0.0.1:{port}")
        print("starting dagster-daemon and dagster-webserver ...", flush=True)
        wait_for("the webserver", lambda: urllib.request.urlopen(f"{graphql.url}/server_info", timeout=10).status
                 == 200, STARTUP_TIMEOUT_S, services)
        report["daemons"] = wait_for("healthy daemons", lambda: daemons_healthy(graphql), STARTUP_TIMEOUT_S, services,
                                     interval=2.0)
        report["stopped_schedule"] = stop_nightly_schedule(graphql, location)

        sampler = Sampler(admin_url, source_db, services, args.sample_interval)
        sampler.start()
        launched = time.time()
        result = graphql(LAUNCH_BACKFILL, {"params": {"partitionNames": campaign_ids, "selector": {
            "partitionSetName": PARTITION_SET,
            "repositorySelector": {"repositoryLocationName": location, "repositoryName": REPOSITORY_NAME}}}},
            timeout=600)["launchPartitionBackfill"]
        if result["__typename"] != "LaunchBackfillSuccess":
            raise SystemExit(f"backfill not launched: {result}")
        backfill_id = result["backfillId"]
        print(f"backfill {backfill_id} of {len(campaign_ids):,} partitions launched "
              f"(GraphQL answered in {time.time() - launched:.1f} s)", flush=True)
        report.update(backfill_id=backfill_id, launched_at=launched)
        report["progress"] = watch_backfill(graphql, backfill_id, len(campaign_ids), launched, sampler, args.timeout,
                                            services)
        sampler.stop()
        report["backfill_completed_s"] = (report["progress"]["backfill_end"] or time.time()) - launched
        report["sampling"] = sampler.report()
        runs = fetch_runs(graphql, backfill_id)
        report["runs"] = summarize_runs(runs, launched)
        report["problems"] = verify_exports(exports, source_url, campaign_ids, runs)
        report["run_details"] = runs
        print_report(report, args)
        ok = not report["problems"] and report["runs"]["status"] == {"SUCCESS": len(campaign_ids)}
        report["status"] = "ok" if ok else "failed checks"
        return 0 if ok else 1
    except BaseException as exc:
        report["status"] = f"failed: {type(exc).__name__}: {redact_text(str(exc), args.server_url)[:2000]}"
        raise
    finally:
        for service in services:
            service.stop()
        if args.keep:
            server = urlsplit(args.server_url)
            print(f"\nkept: databases {', '.join(created)}; DAGSTER_HOME {home}; exports {exports}; logs {logs}\n"
                  f"  browse with: DAGSTER_HOME={home} DAGSTER_PG_HOST={server.hostname} "
                  f"DAGSTER_PG_PORT={server.port or 5432} DAGSTER_PG_USER={server.username or 'postgres'} "
                  f"DAGSTER_PG_PASSWORD=... DAGSTER_PG_DB={storage_db} EXPORTS_SOURCE_URL=... "
                  f"EXPORTS_DESTINATION={exports} {BIN / 'dagster-webserver'} -w {WORKSPACE}")
        else:
            if created:
                drop_databases(admin_url, created)
            shutil.rmtree(work, ignore_errors=True)
        args.results_dir.mkdir(parents=True, exist_ok=True)
        path = args.results_dir / f"load-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
        path.write_text(json.dumps({
            "started_at": started.isoformat(), "finished_at": datetime.now(timezone.utc).isoformat(),
            "git": git_revision(), "python": sys.version.split()[0], "loadavg_end": os.getloadavg(),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
            "args": {**{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                     "server_url": redact_url(args.server_url)}, **report},
            indent=1, default=str))
        print(f"\nraw results: {path}")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt as interrupt:
        print(f"interrupted ({interrupt}); databases and temporary folders removed unless --keep", file=sys.stderr)
        sys.exit(130)
