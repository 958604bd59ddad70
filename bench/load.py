"""Many-campaign load test (issue 14, items 6 and 7): thousands of campaigns through the production instance,
against a `psql \\copy` per campaign, in the same run.

    make load                                      # 1,000 campaigns
    make load LOAD_ARGS="--campaigns 5000"         # or 10000
    make load LOAD_ARGS="--campaigns 30"           # a quick look
    python bench/load.py --campaigns 1000 --keep   # keep databases and folders to look around in the UI
    make load LOAD_ARGS="--code HEAD"              # measure a commit, whatever the tree holds meanwhile
    make load LOAD_ARGS="--storage-pooler pgbouncer"   # Dagster's storage through PgBouncer (session mode)

What it does, end to end, with real processes only (not part of the test suite or CI):

  1. seeds a source database with N campaigns of heavy-tailed sizes (`exports-pipeline seed --size-mix
     90:1-40,9:100-400,1:2000-4000`: 90 % with 1-40 contacts, 9 % with 100-400, 1 % with 2,000-4,000,
     shuffled among the campaigns) and creates a Dagster storage database on the same server;
  2. (a) runs, one after the other, one `psql \\copy (<reference query>) to FILE csv header` process per
     campaign (../shared/bench/reference_query.py, as `make bench` does), timed in all; once before the
     Dagster phases and (unless --no-psql-again) once after them, the ratios taking the mean of each
     campaign's two times (the machine's load moves between the phases);
  3. writes a temporary DAGSTER_HOME holding the repository's dagster.yaml (PostgreSQL storage, Dagster's
     QueuedRunCoordinator, the default run launcher, the pool source_database with run granularity, run
     monitoring and retries; --max-concurrent-runs / --pool-limit replace its limits when given),
     registers the N partitions, starts `dagster-daemon run` and `dagster-webserver` (each with its code
     server, from workspace.yaml; with --storage-pooler pgbouncer, their instance storage goes through a
     private PgBouncer in session mode, the source database stays direct) and stops the nightly schedule
     (so that 02:00 UTC cannot fire it; the sensors keep running, as in production);
  4. (c) launches ONE asset backfill of all N partitions of the default export assets (campaign_results_csv,
     campaign_results_parquet, campaign_stats) through GraphQL, the call the UI's "Materialize" dialog
     makes (launchPartitionBackfill with an asset selection), and times it until the backfill completes;
  5. (d) changes every campaign (contacts.updated_at = now(), which changes each one's source
     fingerprint), evaluates the nightly schedule through GraphQL as the UI's "Test schedule" does
     (scheduleDryRun: the schedule's own code in the code server: fingerprints, manifests, run requests)
     and launches its run requests as that dialog's "Launch all" does (launchMultipleRuns, through the
     run queue), timed from the evaluation until its runs finish;
  6. after (c) and after (d), checks that every campaign's latest.json names a complete snapshot written
     by a run of that phase: files as listed in the manifest (bytes, sha256) and a CSV with one row per
     contact of the campaign (the contact ids read back from the CSV equal the source's);
  7. (b) runs the export core alone over the campaigns (bench/core_loop.py: stage and publish each
     campaign in one process, no Dagster; every k-th campaign when N > --core-sample) to split the run
     workers' CPU between the export and Dagster;
  8. while Dagster runs, samples the source database's pg_stat_activity every --sample-interval seconds
     and, every second, the RSS and CPU of the daemon's and the webserver's process groups (code servers
     and run workers included); prints c/a, d/a, campaigns per minute, CPU per campaign (export, Dagster
     inside the run workers, Dagster outside them), events per campaign, peak RSS and peak source
     connections against the bound documented in docs/operations.md;
  9. stops its processes, drops its databases and removes its folders (also on Ctrl-C or SIGTERM; --keep
     leaves them), and writes the raw results to bench/results/load-<N>-<UTC time>.json.

Exit code 0 only when every campaign's export checks out after both phases.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import yaml

from bench import DEFAULT_REFERENCE, MIB, PAGE, git_revision, load_reference, proc_stats, with_database

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
BIN = Path(sys.executable).parent
WORKSPACE = REPO / "workspace.yaml"
CORE_LOOP = BENCH_DIR / "core_loop.py"
REPOSITORY_NAME = "__repository__"  # the name Dagster gives the repository of a dg.Definitions
SIZE_MIX = "90:1-40,9:100-400,1:2000-4000"
DEFAULT_ASSETS = ("campaign_results_csv", "campaign_results_parquet", "campaign_stats")  # SPEC section 4
BACKFILL_TAG = "dagster/backfill"
FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}
BACKFILL_DONE = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}
# docs/operations.md: an export run holds at most 4 source sessions at once; the sensors (4 evaluated at once)
# and the nightly schedule one each: 4 x pool limit + 5 (13 with the default limit of 2).
SESSIONS_PER_EXPORT_RUN, INSTIGATOR_SESSIONS = 4, 5
# docs/operations.md: deployments set it for the daemon, the webserver, the code servers and the run workers.
EVENT_BATCH_SIZE = "200"
TARGET_RSS_MIB = 2048
# --storage-pooler pgbouncer: session mode, as docs/operations.md recommends; room for every Dagster process's
# connections at once (the clients beyond the pool size wait for a server connection, they are not refused).
PGBOUNCER = {"pool_mode": "session", "default_pool_size": 20, "max_client_conn": 500}
PROGRESS_EVERY_S = 30.0
STARTUP_TIMEOUT_S = 300.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------------------------- GraphQL

DAEMON_HEALTH = """query { instance { daemonHealth { allDaemonStatuses { daemonType required healthy } } } }"""

SCHEDULE_STATE = """query State($selector: ScheduleSelector!) { scheduleOrError(scheduleSelector: $selector) {
  __typename ... on Schedule { scheduleState { id status } } ... on PythonError { message } } }"""

STOP_SCHEDULE = """mutation Stop($id: String!) { stopRunningSchedule(id: $id) {
  __typename ... on ScheduleStateResult { scheduleState { status } } ... on PythonError { message } } }"""

LAUNCH_BACKFILL = """mutation Backfill($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
  __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message }
  ... on Error { message } } }"""

BACKFILL_STATUS = """query Status($id: String!) { partitionBackfillOrError(backfillId: $id) {
  ... on PartitionBackfill { status endTimestamp } } }"""

# What the UI's "Test schedule" dialog sends and reads (ui-core/src/ticks/EvaluateScheduleDialog.tsx).
SCHEDULE_DRY_RUN = """mutation DryRun($selector: ScheduleSelector!, $timestamp: Float) {
  scheduleDryRun(selectorData: $selector, timestamp: $timestamp) {
    __typename
    ... on DryRunInstigationTick { evaluationResult {
        runRequests { runConfigYaml tags { key value } runKey jobName assetSelection { path } }
        skipReason error { message } } }
    ... on PythonError { message } } }"""

LAUNCH_RUNS = """mutation Launch($params: [ExecutionParams!]!) { launchMultipleRuns(executionParamsList: $params) {
  __typename
  ... on LaunchMultipleRunsResult { launchMultipleRunsResult {
      __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } ... on Error { message } } }
  ... on PythonError { message } } }"""

RUNS = """query Runs($filter: RunsFilter!, $cursor: String, $limit: Int!) {
  runsOrError(filter: $filter, cursor: $cursor, limit: $limit) {
    __typename
    ... on Runs { results { runId status creationTime startTime endTime tags { key value } } }
    ... on PythonError { message } } }"""


class GraphQL:
    def __init__(self, url: str):
        self.url = url

    def __call__(self, query: str, variables: dict | None = None, timeout: float = 600) -> dict:
        request = urllib.request.Request(
            f"{self.url}/graphql",
            json.dumps({"query": query, "variables": variables or {}}).encode(),
            {"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = json.load(response)
        if body.get("errors"):
            raise RuntimeError(f"GraphQL errors: {json.dumps(body['errors'])[:2000]}")
        return body["data"]

    def runs(self, runs_filter: dict, page: int = 500) -> list[dict]:
        found, cursor = [], None
        while True:
            data = self(RUNS, {"filter": runs_filter, "cursor": cursor, "limit": page})["runsOrError"]
            if data["__typename"] != "Runs":
                raise SystemExit(f"cannot list runs: {data}")
            found += data["results"]
            if len(data["results"]) < page:
                return found
            cursor = data["results"][-1]["runId"]


# ------------------------------------------------------------------------------------------ processes


class Service:
    """A Dagster process leading its own process group, which its code server and run workers join."""

    def __init__(self, name: str, command: list, env: dict, cwd: Path, logs: Path):
        self.name, self.log = name, logs / f"{name}.log"
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def tail(self, chars: int = 3000) -> str:
        return f"--- {self.log.name}\n{self.log.read_text(errors='replace')[-chars:]}"

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM to the process, so that it stops its code server; then whatever is left of its group goes."""
        if self.process.poll() is None:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # the group this process leads (start_new_session)
        self.process.wait()


def process_kind(pid: int, group: int) -> str:
    """What a process of a service's group is, from its command line."""
    if pid == group:
        return "service"
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "other"
    if b"spawn_main" in command:
        return "run worker"  # the default launcher: the code server starts each run in a spawned process
    return "code server" if b"grpc" in command else "other"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_pgbouncer(server_url: str, folder: Path, logs: Path) -> tuple[Service, int]:
    """A private PgBouncer on a free loopback port in front of the PostgreSQL server, for Dagster's instance
    storage only: dagster-postgres opens new connections for each stored event (NullPool in the daemon and
    the run workers), which the pooler serves from the server connections it keeps open. Trust on loopback;
    the auth file holds the login's password for the server side."""
    server, port = urlsplit(server_url), free_port()
    folder.mkdir()
    user, password = server.username or "postgres", server.password or ""
    (folder / "userlist.txt").write_text(f'"{user}" "{password}"\n')
    settings = "\n".join(f"{key} = {value}" for key, value in PGBOUNCER.items())
    (folder / "pgbouncer.ini").write_text(
        f"[databases]\n* = host={server.hostname or '127.0.0.1'} port={server.port or 5432}\n\n[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\nauth_type = trust\n"
        f"auth_file = {folder / 'userlist.txt'}\n{settings}\nlog_connections = 0\nlog_disconnections = 0\n"
    )
    binary = shutil.which("pgbouncer", path=f"{os.environ.get('PATH', '')}{os.pathsep}/usr/sbin") or "pgbouncer"
    as_user = ["-u", "nobody"] if os.geteuid() == 0 else []  # it refuses to run as root
    pooler = Service("pgbouncer", [binary, *as_user, folder / "pgbouncer.ini"], dict(os.environ), folder, logs)
    wait_for(
        "pgbouncer",
        lambda: socket.create_connection(("127.0.0.1", port), timeout=1).close() or True,
        30,
        [pooler],
        interval=0.2,
    )
    return pooler, port


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
    process groups. A process's CPU is its last sample's: a lower bound, short of at most its last second.
    Peaks are kept per phase (begin_phase); CPU totals are read at the phases' edges (cpu_totals)."""

    def __init__(self, admin_url: str, source_db: str, services: list[Service], interval: float):
        super().__init__(daemon=True)
        self.admin_url, self.source_db, self.services, self.interval = admin_url, source_db, services, interval
        self.phase, self.peaks = "idle", {}
        self.processes: dict[tuple[int, int], tuple[str, str, float]] = {}  # (pid, start) -> (service, kind, CPU)
        self.schedstat: dict[tuple[int, int], tuple[float, float]] = {}  # run workers' (on a CPU, waiting for one)
        self.lock = threading.Lock()
        self.error: str | None = None
        self._done = threading.Event()

    def begin_phase(self, name: str) -> None:
        with self.lock:
            self.phase = name
            self.peaks[name] = {
                "source_connections": 0,
                "active_source_connections": 0,
                "samples": 0,
                "rss_mib": {s.name: 0.0 for s in self.services},
                "total_rss_mib": 0.0,
            }

    def stop(self) -> None:
        self._done.set()
        self.join(timeout=10)

    def run(self) -> None:
        last_rss = 0.0
        try:
            with psycopg.connect(self.admin_url, autocommit=True, application_name="exports-load-sampler") as conn:
                while not self._done.is_set():
                    total, active = conn.execute(
                        "SELECT count(*), count(*) FILTER (WHERE state = 'active') FROM pg_stat_activity "
                        "WHERE datname = %s",
                        (self.source_db,),
                    ).fetchone()
                    rss = None
                    if time.monotonic() - last_rss >= 1.0:
                        rss, last_rss = self._sample_processes(), time.monotonic()
                    self._record(total, active, rss)
                    self._done.wait(self.interval)
        except Exception as exc:  # reported with the results rather than killing the load
            self.error = f"{type(exc).__name__}: {exc}"

    def _record(self, total: int, active: int, rss: dict[str, int] | None) -> None:
        with self.lock:
            peak = self.peaks.get(self.phase)
            if peak is None:
                return
            peak["samples"] += 1
            peak["source_connections"] = max(peak["source_connections"], total)
            peak["active_source_connections"] = max(peak["active_source_connections"], active)
            if rss is not None:
                for name, value in rss.items():
                    peak["rss_mib"][name] = round(max(peak["rss_mib"][name], value / MIB), 1)
                peak["total_rss_mib"] = round(max(peak["total_rss_mib"], sum(rss.values()) / MIB), 1)

    def _sample_processes(self) -> dict[str, int]:
        """RSS per service group now; records every process's CPU so far."""
        groups = {s.process.pid: s.name for s in self.services}
        rss: Counter[str] = Counter()
        for pid, fields in proc_stats():
            group = int(fields[2])
            if group not in groups:
                continue
            key = (pid, int(fields[19]))
            with self.lock:
                known = self.processes.get(key)
                kind = known[1] if known else process_kind(pid, group)
                self.processes[key] = (groups[group], kind, (int(fields[11]) + int(fields[12])) / CLOCK_TICKS)
            if kind == "run worker":
                self._sample_schedstat(key)
            rss[groups[group]] += int(fields[21]) * PAGE
        return rss

    def _sample_schedstat(self, key: tuple[int, int]) -> None:
        """The main thread's seconds on a CPU and waiting in the run queue for one (proc(5) schedstat): what is
        left of its lifetime it spent blocked (I/O, database round trips)."""
        try:
            on_cpu, waiting = map(int, Path(f"/proc/{key[0]}/schedstat").read_text().split()[:2])
        except (OSError, ValueError):
            return
        with self.lock:
            self.schedstat[key] = (on_cpu / 1e9, waiting / 1e9)

    def run_worker_schedstat(self) -> tuple[float, float]:
        with self.lock:
            return (sum(v[0] for v in self.schedstat.values()), sum(v[1] for v in self.schedstat.values()))

    def cpu_totals(self) -> dict[str, float]:
        """CPU seconds so far per 'service/kind', processes that ended included."""
        self._sample_processes()
        totals: Counter[str] = Counter()
        with self.lock:
            for service, kind, cpu in self.processes.values():
                totals[f"{service}/{kind}"] += cpu
        return dict(totals)


# ------------------------------------------------------------------------------------------ the setup


def create_databases(admin_url: str, names: list[str]) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        for name in names:
            conn.execute(f'CREATE DATABASE "{name}"')


def drop_databases(admin_url: str, names: list[str]) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        for name in names:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def seed(source_url: str, campaigns: int, random_seed: int) -> list[str]:
    """The campaign ids, in creation order (the order their partitions are registered in)."""
    seeded = subprocess.run(
        [
            BIN / "exports-pipeline",
            "seed",
            "--url",
            source_url,
            "--campaigns",
            str(campaigns),
            "--size-mix",
            SIZE_MIX,
            "--seed",
            str(random_seed),
        ],
        capture_output=True,
        text=True,
    )
    if seeded.returncode != 0:  # not check=True: the error would show the URL, password included
        from exports_pipeline.core.sourceurl import redact_text

        raise SystemExit(f"seeding failed:\n{redact_text(seeded.stderr[-3000:], source_url)}")
    return seeded.stdout.split()


def source_contacts(source_url: str) -> dict[str, set[str]]:
    """Contact ids per campaign, as the source holds them now."""
    contacts: dict[str, set[str]] = {}
    with psycopg.connect(source_url, autocommit=True) as conn:
        for campaign_id, contact_id in conn.execute("SELECT campaign_id::text, id::text FROM contacts"):
            contacts.setdefault(campaign_id, set()).add(contact_id)
    return contacts


def instance_config(max_concurrent_runs: int | None, pool_limit: int | None) -> dict:
    """The repository's dagster.yaml with the two limits under test replaced when given."""
    config = yaml.safe_load((REPO / "dagster.yaml").read_text())
    if max_concurrent_runs is not None:
        config["concurrency"]["runs"]["max_concurrent_runs"] = max_concurrent_runs
    if pool_limit is not None:
        config["concurrency"]["pools"]["default_limit"] = pool_limit
    return config


def deployment_env(server_url: str, storage_db: str, source_url: str, home: Path, exports: Path) -> dict:
    """This process's environment without EXPORTS_* settings (no mail, no S3 endpoint) plus the deployment's,
    events written in batches as deployments do (DAGSTER_EVENT_BATCH_SIZE, unless set already)."""
    server = urlsplit(server_url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPORTS_")}
    env.setdefault("DAGSTER_EVENT_BATCH_SIZE", EVENT_BATCH_SIZE)
    env.update(
        DAGSTER_HOME=str(home),
        DAGSTER_PG_HOST=server.hostname or "127.0.0.1",
        DAGSTER_PG_PORT=str(server.port or 5432),
        DAGSTER_PG_USER=server.username or "postgres",
        DAGSTER_PG_PASSWORD=server.password or "",
        DAGSTER_PG_DB=storage_db,
        EXPORTS_SOURCE_URL=source_url,
        EXPORTS_DESTINATION=str(exports),
    )
    return env


def register_partitions(env: dict, campaign_ids: list[str]) -> None:
    """Also creates the storage tables, before the daemon and the webserver could race to."""
    import dagster as dg

    from exports_pipeline.defs.partitions import campaigns_partitions

    os.environ.update(env)  # DagsterInstance.get() reads DAGSTER_HOME and dagster.yaml's env references
    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions(campaigns_partitions.name, campaign_ids)


def start_services(env: dict, home: Path, logs: Path) -> tuple[list[Service], GraphQL]:
    port = free_port()
    services = [
        Service("daemon", [BIN / "dagster-daemon", "run", "-w", WORKSPACE], env, home, logs),
        Service(
            "webserver",
            [BIN / "dagster-webserver", "-h", "127.0.0.1", "-p", str(port), "-w", WORKSPACE],
            env,
            home,
            logs,
        ),
    ]
    graphql = GraphQL(f"http://127.0.0.1:{port}")
    print("starting dagster-daemon and dagster-webserver ...", flush=True)
    wait_for(
        "the webserver",
        lambda: urllib.request.urlopen(f"{graphql.url}/server_info", timeout=10).status == 200,
        STARTUP_TIMEOUT_S,
        services,
    )
    wait_for("healthy daemons", lambda: daemons_healthy(graphql), STARTUP_TIMEOUT_S, services, interval=2.0)
    return services, graphql


def daemons_healthy(graphql: GraphQL) -> list[str] | None:
    statuses = graphql(DAEMON_HEALTH)["instance"]["daemonHealth"]["allDaemonStatuses"]
    required = [s for s in statuses if s["required"]]
    return [s["daemonType"] for s in required] if required and all(s["healthy"] for s in required) else None


def location_name() -> str:
    return yaml.safe_load(WORKSPACE.read_text())["load_from"][0]["python_module"]["location_name"]


def schedule_selector() -> dict:
    from exports_pipeline.defs.schedules import nightly_changed_campaigns

    return {
        "repositoryLocationName": location_name(),
        "repositoryName": REPOSITORY_NAME,
        "scheduleName": nightly_changed_campaigns.name,
    }


def stop_nightly_schedule(graphql: GraphQL) -> None:
    selector = schedule_selector()
    state = graphql(SCHEDULE_STATE, {"selector": selector})["scheduleOrError"]
    if state["__typename"] != "Schedule":
        raise SystemExit(f"schedule {selector['scheduleName']}: {state}")
    stopped = graphql(STOP_SCHEDULE, {"id": state["scheduleState"]["id"]})["stopRunningSchedule"]
    if stopped["__typename"] != "ScheduleStateResult" or stopped["scheduleState"]["status"] != "STOPPED":
        raise SystemExit(f"could not stop schedule {selector['scheduleName']}: {stopped}")


# ----------------------------------------------------------------------------------- (a) psql \copy


def question_counts(source_url: str) -> dict[str, int]:
    with psycopg.connect(source_url, autocommit=True) as conn:
        return dict(conn.execute("SELECT campaign_id::text, max(position) FROM survey_questions GROUP BY 1"))


def psql_per_campaign(
    source_url: str, campaign_ids: list[str], contacts: dict[str, set[str]], reference: Path, work: Path
) -> dict:
    """(a): one `psql \\copy` process per campaign, one after the other; each one's row count checked."""
    reference_query = load_reference(reference)
    questions = question_counts(source_url)
    psql, target = shutil.which("psql") or "psql", work / "reference.csv"
    seconds, wrong = {}, []
    cpu, start = children_cpu(), time.perf_counter()
    for cid in campaign_ids:
        sql = " ".join(reference_query(cid, questions.get(cid, 0)).split())  # \copy takes the rest of one line
        began = time.perf_counter()
        done = subprocess.run(
            [psql, source_url, "-X", "-v", "ON_ERROR_STOP=1", "-c", f"\\copy ({sql}) to '{target}' csv header"],
            capture_output=True,
            text=True,
        )
        seconds[cid] = time.perf_counter() - began
        if len(seconds) % 500 == 0:
            print(f"  [{time.perf_counter() - start:6.0f} s] {len(seconds):,} campaigns", flush=True)
        if done.returncode != 0 or done.stdout.split()[-1:] != [str(len(contacts.get(cid, ())))]:
            wrong.append(f"{cid}: psql exited {done.returncode}, printed {done.stdout.strip()[-80:]!r}")
    wall = time.perf_counter() - start
    target.unlink(missing_ok=True)
    return {
        "wall_s": round(wall, 2),
        "psql_cpu_s": round(children_cpu() - cpu, 2),
        "per_campaign_s": {k: round(v, 4) for k, v in seconds.items()},
        "problems": wrong,
    }


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# ------------------------------------------------------------------------------- (c) and (d) in Dagster


def launch_backfill(graphql: GraphQL, campaign_ids: list[str]) -> str:
    """One asset backfill of every partition of the default export assets, as the UI launches it."""
    result = graphql(
        LAUNCH_BACKFILL,
        {
            "params": {
                "partitionNames": campaign_ids,
                "fromFailure": False,
                "tags": [],
                "assetSelection": [{"path": [name]} for name in DEFAULT_ASSETS],
            }
        },
    )["launchPartitionBackfill"]
    if result["__typename"] != "LaunchBackfillSuccess":
        raise SystemExit(f"backfill not launched: {result}")
    return result["backfillId"]


def wait_for_backfill(
    graphql: GraphQL, backfill_id: str, started: float, timeout: float, services: list[Service]
) -> tuple[float, str]:
    """Seconds from the launch to the backfill's completion (its end timestamp), and its final status."""
    next_print = 0.0
    while True:
        backfill = graphql(BACKFILL_STATUS, {"id": backfill_id})["partitionBackfillOrError"] or {}
        status = backfill.get("status")
        if status in BACKFILL_DONE:
            runs = graphql.runs({"tags": [{"key": BACKFILL_TAG, "value": backfill_id}]})
            if all(r["status"] in FINISHED for r in runs):
                return (backfill.get("endTimestamp") or time.time()) - started, status
        next_print = report_progress(
            "backfill", status, started, next_print, graphql, {"tags": [{"key": BACKFILL_TAG, "value": backfill_id}]}
        )
        check_deadline(started, timeout, services)
        time.sleep(2.0)


def report_progress(
    what: str, status: str | None, started: float, next_print: float, graphql: GraphQL, runs_filter: dict
) -> float:
    """Prints the runs' progress every PROGRESS_EVERY_S; returns when to print next."""
    if time.monotonic() < next_print:
        return next_print
    counts = Counter(r["status"] for r in graphql.runs(runs_filter))
    print(
        f"  [{time.time() - started:6.0f} s] {what} {status or ''}: runs {dict(sorted(counts.items()))}; "
        f"load {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    return time.monotonic() + PROGRESS_EVERY_S


def check_deadline(started: float, timeout: float, services: list[Service]) -> None:
    if time.time() - started > timeout:
        tails = "\n".join(s.tail() for s in services)
        raise SystemExit(f"--timeout: still running after {timeout:.0f} s\n{tails}")


def change_every_campaign(source_url: str) -> None:
    """Every contact touched, as a day of calls does: each campaign's source fingerprint (its contacts' latest
    updated_at) changes, so all need a new export. Not campaigns.updated_at, which would also make the
    completion sensor export the completed campaigns again, in runs of its own."""
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute("UPDATE contacts SET updated_at = now()")


def evaluate_schedule(graphql: GraphQL) -> list[dict]:
    """The nightly schedule's run requests for now, as the UI's "Test schedule" dialog evaluates them."""
    result = graphql(SCHEDULE_DRY_RUN, {"selector": schedule_selector(), "timestamp": time.time()})["scheduleDryRun"]
    if result["__typename"] != "DryRunInstigationTick":
        raise SystemExit(f"schedule evaluation failed: {result}")
    evaluation = result["evaluationResult"]
    if evaluation["error"] or not evaluation["runRequests"]:
        raise SystemExit(f"the schedule requested no run: {evaluation['error'] or evaluation['skipReason']}")
    return evaluation["runRequests"]


def launch_run_requests(graphql: GraphQL, requests: list[dict], job_name: str) -> list[str]:
    """The run requests launched as the dialog's "Launch all" does (ui-core buildExecutionParamsListSchedule)."""
    selector = schedule_selector()
    params = [
        {
            "runConfigData": request["runConfigYaml"] or "{}",
            "mode": "default",
            "selector": {
                "jobName": request["jobName"] or job_name,
                "repositoryName": REPOSITORY_NAME,
                "repositoryLocationName": selector["repositoryLocationName"],
                "assetSelection": request["assetSelection"] or [],
            },
            "executionMetadata": {"tags": request["tags"]},
        }
        for request in requests
    ]
    result = graphql(LAUNCH_RUNS, {"params": params})["launchMultipleRuns"]
    if result["__typename"] != "LaunchMultipleRunsResult":
        raise SystemExit(f"runs not launched: {result}")
    launched = result["launchMultipleRunsResult"]
    failed = [r for r in launched if r["__typename"] != "LaunchRunSuccess"]
    if failed:
        raise SystemExit(f"{len(failed)} of {len(launched)} runs not launched: {failed[:3]}")
    return [r["run"]["runId"] for r in launched]


def wait_for_runs(
    graphql: GraphQL, run_ids: list[str], started: float, timeout: float, services: list[Service]
) -> float:
    """Seconds from `started` to the end of the last of these runs."""
    next_print = 0.0
    while True:
        runs = graphql.runs({"runIds": run_ids})
        if len(runs) == len(run_ids) and all(r["status"] in FINISHED for r in runs):
            return max(r["endTime"] for r in runs) - started
        next_print = report_progress("nightly", None, started, next_print, graphql, {"runIds": run_ids})
        check_deadline(started, timeout, services)
        time.sleep(2.0)


def requested_campaigns(requests: list[dict], order: list[str]) -> list[str]:
    """The campaigns the run requests cover: a partition key, or a range of partitions (in partition order)."""
    from exports_pipeline.defs.run_requests import RANGE_END, RANGE_START

    position = {key: i for i, key in enumerate(order)}
    covered = []
    for request in requests:
        tags = {t["key"]: t["value"] for t in request["tags"]}
        if RANGE_START in tags:
            covered += order[position[tags[RANGE_START]] : position[tags[RANGE_END]] + 1]
        else:
            covered.append(tags["dagster/partition"])
    return covered


# ----------------------------------------------------------------------------------------- the checks


def csv_contact_ids(path: Path) -> list[str]:
    with open(path, encoding="utf-8-sig", newline="") as handle:
        rows = csv.reader(handle)
        column = next(rows).index("contact_id")
        return [row[column] for row in rows]


def check_campaign(exports: Path, cid: str, contact_ids: set[str], run_ids: set[str]) -> list[str]:
    """Problems of one campaign: latest.json must name a complete snapshot written by one of run_ids, whose
    CSV holds one row per contact of the source."""
    from exports_pipeline.core.destinations import LocalDestination
    from exports_pipeline.core.publish import StagedFile, campaign_prefix, read_latest, read_manifest

    destination = LocalDestination(exports)
    latest, manifest = read_latest(destination, cid), read_manifest(destination, cid)
    if latest is None or manifest is None:
        return [f"{cid}: latest.json {'missing' if latest is None else 'names no manifest'}"]
    problems = (
        []
        if manifest.get("run_id") in run_ids
        else [f"{cid}: manifest of run {manifest.get('run_id')}, not of this phase"]
    )
    folder = exports / campaign_prefix(cid) / latest["snapshot"]
    formats = {record["format"]: folder / record["name"] for record in manifest["files"]}
    for record in manifest["files"]:
        path = folder / record["name"]
        if not path.is_file():
            problems.append(f"{cid}: {record['name']} listed in the manifest is missing")
            continue
        written = StagedFile(record["name"], record["format"], path, record["rows"]).describe()
        if any(written[k] != record.get(k) for k in ("bytes", "sha256")):
            problems.append(f"{cid}: {record['name']} differs from its manifest entry")
    if "csv" not in formats or not formats["csv"].is_file():
        return [*problems, f"{cid}: no CSV in the snapshot"]
    rows = csv_contact_ids(formats["csv"])
    if len(rows) != len(contact_ids) or set(rows) != contact_ids:
        problems.append(
            f"{cid}: the CSV has {len(rows)} rows ({len(set(rows))} contacts), the source {len(contact_ids)} contacts"
        )
    return problems


def check_exports(exports: Path, campaign_ids: list[str], contacts: dict[str, set[str]], runs_of) -> list[str]:
    """Every campaign's problems; runs_of(campaign id) is the set of runs that may have written its snapshot."""
    return [
        problem
        for cid in campaign_ids
        for problem in check_campaign(exports, cid, contacts.get(cid, set()), runs_of(cid))
    ]


def database_activity(admin_url: str, databases: dict[str, str]) -> dict[str, dict[str, float]]:
    """Sessions opened so far and seconds spent running statements, per database (pg_stat_database, which
    counts what the PostgreSQL server does for each, connection set-ups included: the storage database's
    figures are the cost of Dagster's events and run bookkeeping on the server)."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT datname, sessions, active_time FROM pg_stat_database WHERE datname = ANY(%s)",
            (list(databases.values()),),
        ).fetchall()
    names = {db: role for role, db in databases.items()}
    return {names[db]: {"sessions": sessions, "active_s": active_ms / 1000} for db, sessions, active_ms in rows}


def event_counts(storage_url: str, run_ids: list[str]) -> dict[str, int]:
    """Events the runs wrote to the event log, by type (read from Dagster's PostgreSQL storage)."""
    with psycopg.connect(storage_url, autocommit=True) as conn:
        return dict(
            conn.execute(
                "SELECT coalesce(dagster_event_type, 'LOG'), count(*) FROM event_logs "
                "WHERE run_id = ANY(%s) GROUP BY 1 ORDER BY 2 DESC",
                (run_ids,),
            )
        )


# ------------------------------------------------------------------------------------- (b) core loop


def core_loop(source_url: str, campaign_ids: list[str], sample: int, work: Path) -> dict:
    """The export core's CPU per campaign, without Dagster, over every k-th campaign (k = N / sample, rounded
    up: the systematic sample keeps the size mix)."""
    step = -(-len(campaign_ids) // sample)
    chosen = campaign_ids[::step]
    ids = work / "core-loop-ids.txt"
    ids.write_text("\n".join(chosen))
    done = subprocess.run(
        [sys.executable, CORE_LOOP, "--source-url", source_url, "--ids", ids, "--dest", work / "core-loop"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    shutil.rmtree(work / "core-loop", ignore_errors=True)
    if done.returncode != 0:
        from exports_pipeline.core.sourceurl import redact_text

        raise SystemExit(f"core loop failed:\n{redact_text(done.stderr[-3000:], source_url)}")
    result = json.loads(done.stdout.splitlines()[-1])
    return {**result, "step": step, "cpu_per_campaign_s": result["cpu_s"] / result["campaigns"]}


# ------------------------------------------------------------------------------------------- phases


class Load:
    """What the phases share: the running deployment, its sampler and the expected data."""

    def __init__(
        self,
        graphql: GraphQL,
        services: list[Service],
        sampler: Sampler,
        args: argparse.Namespace,
        exports: Path,
        urls: tuple[str, str],
        campaign_ids: list[str],
        contacts: dict[str, set[str]],
    ):
        self.graphql, self.services, self.sampler, self.args = graphql, services, sampler, args
        self.exports, self.campaign_ids, self.contacts = exports, campaign_ids, contacts
        self.source_url, self.storage_url = urls
        self.admin_url = with_database(args.server_url, "postgres")
        self.databases = {
            role: urlsplit(url).path.lstrip("/") for role, url in zip(("source", "storage"), urls, strict=True)
        }
        self.earlier_runs: set[str] = set()

    def measured(self, name: str, body) -> dict:
        """Runs body() -> (seconds, runs, details) as phase `name`: its CPU, peaks, events and checks."""
        self.sampler.begin_phase(name)
        before = self._counters()
        seconds, runs, details = body()
        time.sleep(2.0)  # the run workers' last CPU seconds, before they are reaped; the server's statistics
        usage = self._usage_since(before, runs)
        run_ids = [r["runId"] for r in runs]
        print(
            f"  {name}: {seconds:.1f} s, {len(runs)} runs {dict(Counter(r['status'] for r in runs))}; "
            "checking every campaign's latest.json ...",
            flush=True,
        )
        phase_runs, earlier = set(run_ids), self.earlier_runs
        exported = set(details.get("exported", self.campaign_ids))  # the others keep an earlier phase's snapshot
        problems = check_exports(
            self.exports, self.campaign_ids, self.contacts, lambda cid: phase_runs if cid in exported else earlier
        )
        self.earlier_runs = earlier | phase_runs
        return {
            **details,
            **usage,
            "seconds": round(seconds, 2),
            "runs": len(runs),
            "run_status": dict(Counter(r["status"] for r in runs)),
            "events": event_counts(self.storage_url, run_ids),
            "peaks": self.sampler.peaks[name],
            "problems": problems,
            "run_details": runs,
        }

    def _counters(self) -> tuple:
        return (
            self.sampler.cpu_totals(),
            database_activity(self.admin_url, self.databases),
            self.sampler.run_worker_schedstat(),
        )

    def _usage_since(self, before: tuple, runs: list[dict]) -> dict:
        """CPU per process kind, the server's work per database and how the run workers spent their time."""
        cpu, server, sched = self._counters()
        on_cpu, waiting = (after - earlier for after, earlier in zip(sched, before[2], strict=True))
        lifetime = sum(r["endTime"] - r["startTime"] for r in runs if r["startTime"] and r["endTime"])
        return {
            "cpu_s": {k: round(v - before[0].get(k, 0.0), 1) for k, v in cpu.items()},
            "postgres": {
                role: {k: round(v - before[1][role][k], 2) for k, v in figures.items()}
                for role, figures in server.items()
            },
            "run_worker_time": {
                "lifetime_s": round(lifetime, 1),
                "on_cpu_s": round(on_cpu, 1),
                "waiting_for_cpu_s": round(waiting, 1),
                "blocked_s": round(lifetime - on_cpu - waiting, 1),
            },
        }

    def backfill(self) -> tuple[float, list[dict], dict]:
        """(c): one asset backfill of all partitions, launched through GraphQL, until it completes."""
        started = time.time()
        backfill_id = launch_backfill(self.graphql, self.campaign_ids)
        print(
            f"(c) backfill {backfill_id} of {len(self.campaign_ids):,} partitions launched "
            f"(GraphQL answered in {time.time() - started:.1f} s)",
            flush=True,
        )
        seconds, status = wait_for_backfill(self.graphql, backfill_id, started, self.args.timeout, self.services)
        runs = self.graphql.runs({"tags": [{"key": BACKFILL_TAG, "value": backfill_id}]})
        return (
            seconds,
            runs,
            {"backfill_id": backfill_id, "backfill_status": status, "campaigns": len(self.campaign_ids)},
        )

    def nightly(self) -> tuple[float, list[dict], dict]:
        """(d): every campaign changed, the schedule evaluated and its run requests launched, until they end."""
        from exports_pipeline.defs.jobs import export_campaign_job

        change_every_campaign(self.source_url)
        started = time.time()
        requests = evaluate_schedule(self.graphql)
        evaluated = time.time() - started
        covered = requested_campaigns(requests, self.campaign_ids)
        print(
            f"(d) the nightly schedule requested {len(requests)} runs of {len(covered):,} campaigns "
            f"(evaluated in {evaluated:.1f} s); launching them ...",
            flush=True,
        )
        run_ids = launch_run_requests(self.graphql, requests, export_campaign_job.name)
        seconds = wait_for_runs(self.graphql, run_ids, started, self.args.timeout, self.services)
        return (
            seconds,
            self.graphql.runs({"runIds": run_ids}),
            {"evaluation_s": round(evaluated, 2), "campaigns": len(covered), "exported": covered},
        )


# ------------------------------------------------------------------------------------------ the report


def cpu_split(phase: dict, export_cpu_per_campaign: float) -> dict:
    """CPU seconds per campaign of a phase: the export (the core loop's figure), Dagster inside the run
    workers (their CPU less the export's: process start, imports, events, storage calls), Dagster outside
    them (daemon, webserver, code servers) and the storage pooler (pgbouncer, 0 without)."""
    campaigns = phase["campaigns"]
    workers = sum(v for k, v in phase["cpu_s"].items() if k.endswith("/run worker"))
    pooler = sum(v for k, v in phase["cpu_s"].items() if k.startswith("pgbouncer/"))
    outside = sum(v for k, v in phase["cpu_s"].items() if not k.endswith("/run worker")) - pooler
    return {
        "run_workers": round(workers / campaigns, 4),
        "export": round(export_cpu_per_campaign, 4),
        "dagster_in_run_workers": round(workers / campaigns - export_cpu_per_campaign, 4),
        "dagster_outside_run_workers": round(outside / campaigns, 4),
        "storage_pooler": round(pooler / campaigns, 4),
        "dagster_events_per_campaign": round(sum(phase["events"].values()) / campaigns, 1),
        **{
            f"postgres_{role}_{k}": round(v / campaigns, 4)
            for role, figures in phase["postgres"].items()
            for k, v in figures.items()
        },
    }


def summarize(report: dict) -> dict:
    """The figures the issue asks for, from the raw results."""
    export_cpu = report["b"]["cpu_per_campaign_s"]
    runs = [report[phase] for phase in ("a", "a_again") if phase in report]
    psql = {cid: sum(a["per_campaign_s"][cid] for a in runs) / len(runs) for cid in report["campaign_ids"]}
    summary = {
        "a_s": round(sum(psql.values()), 2),
        "a_runs_s": [a["wall_s"] for a in runs],
        "pool_limit": report["settings"]["pool_limit"],
    }
    summary["source_connection_bound"] = summary["pool_limit"] * SESSIONS_PER_EXPORT_RUN + INSTIGATOR_SESSIONS
    for name in ("c", "d"):
        phase = report[name]
        psql_s = sum(psql[cid] for cid in phase.get("exported", report["campaign_ids"]))
        summary[name] = {
            "seconds": phase["seconds"],
            "campaigns": phase["campaigns"],
            "psql_s": round(psql_s, 2),
            "ratio": round(phase["seconds"] / psql_s, 3),
            "campaigns_per_min": round(phase["campaigns"] / phase["seconds"] * 60, 1),
            "cpu_per_campaign_s": cpu_split(phase, export_cpu),
            "peak_rss_mib": phase["peaks"]["rss_mib"],
            "peak_total_rss_mib": phase["peaks"]["total_rss_mib"],
            "peak_source_connections": phase["peaks"]["source_connections"],
            "runs": phase["runs"],
            "problems": len(phase["problems"]),
            "run_worker_time": phase["run_worker_time"],
        }
    return summary


def pooler_label(pooler: dict | None) -> str:
    if not pooler:
        return "direct (no pooler)"
    return f"through {pooler['name']} ({pooler['pool_mode']} mode, pool size {pooler['default_pool_size']})"


def print_summary(report: dict, summary: dict) -> None:
    print("\n" + "=" * 100)
    print(
        f"{len(report['campaign_ids']):,} campaigns, {report['contacts']:,} contacts (size mix {SIZE_MIX}); "
        f"max_concurrent_runs {report['settings']['max_concurrent_runs']}, pool {report['settings']['pool']} "
        f"limit {summary['pool_limit']}; Dagster's storage {pooler_label(report['settings']['storage_pooler'])}; "
        f"{os.cpu_count()} CPUs; code {report['git']}"
    )
    print(
        f"  (a) psql \\copy per campaign: {summary['a_s']:.1f} s ("
        + (
            f"mean of {summary['a_runs_s'][0]:.1f} s before and {summary['a_runs_s'][1]:.1f} s after Dagster's phases"
            if len(summary["a_runs_s"]) == 2
            else "before Dagster's phases"
        )
        + "); (b) export core alone: "
        f"{report['b']['cpu_per_campaign_s'] * 1000:.0f} ms CPU per campaign ({report['b']['campaigns']} campaigns)"
    )
    for name, label in (("c", "asset backfill"), ("d", "nightly schedule")):
        s, cpu = summary[name], summary[name]["cpu_per_campaign_s"]
        print(
            f"  ({name}) {label}: {s['campaigns']:,} campaigns in {s['seconds']:.1f} s, {s['runs']} runs; "
            f"{name}/a = {s['ratio']:.2f} (psql of the same campaigns {s['psql_s']:.1f} s); "
            f"{s['campaigns_per_min']:.0f} campaigns/min"
        )
        print(
            f"      CPU per campaign: run workers {cpu['run_workers'] * 1000:.0f} ms = export "
            f"{cpu['export'] * 1000:.0f} ms + Dagster in the run {cpu['dagster_in_run_workers'] * 1000:.0f} ms "
            f"({cpu['dagster_events_per_campaign']:.0f} events per campaign); Dagster outside the runs "
            f"{cpu['dagster_outside_run_workers'] * 1000:.0f} ms"
            + (f"; pgbouncer {cpu['storage_pooler'] * 1000:.0f} ms" if report["settings"]["storage_pooler"] else "")
        )
        time_of = summary[name]["run_worker_time"]
        print(
            f"      run workers' time ({time_of['lifetime_s']:.0f} s in all): "
            + ", ".join(
                f"{label} {time_of[k] / time_of['lifetime_s']:.0%}"
                for k, label in (
                    ("on_cpu_s", "on a CPU"),
                    ("waiting_for_cpu_s", "waiting for a CPU"),
                    ("blocked_s", "blocked (I/O, database round trips)"),
                )
            )
            + " (main threads)"
        )
        print(
            f"      PostgreSQL per campaign: storage {cpu['postgres_storage_sessions']:.1f} sessions opened, "
            f"{cpu['postgres_storage_active_s'] * 1000:.0f} ms running statements; source "
            f"{cpu['postgres_source_sessions']:.2f} sessions, {cpu['postgres_source_active_s'] * 1000:.0f} ms"
        )
        print(
            "      peak RSS: "
            + ", ".join(f"{k} tree {v:.0f} MiB" for k, v in s["peak_rss_mib"].items())
            + f", together {s['peak_total_rss_mib']:.0f} MiB (target < {TARGET_RSS_MIB} MiB); peak source "
            f"connections {s['peak_source_connections']} (documented bound {summary['source_connection_bound']})"
        )
    problems = [p for phase in ("a", "c", "d", "a_again") for p in report.get(phase, {}).get("problems", [])]
    if not problems:
        print(
            "  exports: after (c) and after (d), every campaign's latest.json names a complete snapshot of "
            "that phase with one CSV row per contact"
        )
        return
    print(f"  {len(problems)} problems (run again with --keep to look at the runs in the UI):")
    for problem in problems[:20]:
        print(f"    {problem}")


# ------------------------------------------------------------------------------------------------ main


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The docstring's layout kept in the epilog, and the defaults shown."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1], formatter_class=HelpFormatter
    )
    parser.add_argument("--campaigns", type=int, default=1000, help="campaigns (partitions): 1000, 5000, 10000...")
    parser.add_argument(
        "--max-concurrent-runs",
        type=int,
        default=None,
        help="concurrency.runs.max_concurrent_runs (default: dagster.yaml's)",
    )
    parser.add_argument(
        "--pool-limit",
        type=int,
        default=None,
        help="concurrency.pools.default_limit, the source_database pool (default: dagster.yaml's)",
    )
    parser.add_argument(
        "--storage-pooler",
        choices=("none", "pgbouncer"),
        default="none",
        help="pgbouncer: Dagster's instance storage through a private PgBouncer in session mode "
        "(/usr/sbin/pgbouncer), the source database direct",
    )
    parser.add_argument(
        "--core-sample",
        type=int,
        default=1000,
        help="campaigns the export core alone (b) exports at most (every k-th campaign)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the databases, DAGSTER_HOME and exports (printed at the end), not removed",
    )
    parser.add_argument(
        "--server-url",
        default=os.environ.get("LOAD_PG_URL", "postgresql://postgres@127.0.0.1:5432/"),
        help="PostgreSQL server for both databases (env LOAD_PG_URL)",
    )
    parser.add_argument(
        "--psql-again",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="(a) once more after the Dagster phases (--no-psql-again saves its time at 5,000+)",
    )
    parser.add_argument(
        "--reference",
        type=Path,
        default=DEFAULT_REFERENCE,
        help="file defining reference_query(campaign_id, question_count), as for make bench",
    )
    parser.add_argument("--sample-interval", type=float, default=0.2, help="pg_stat_activity sampling interval (s)")
    parser.add_argument("--timeout", type=float, default=4 * 3600, help="give up on a phase running longer (s)")
    parser.add_argument("--seed", type=int, default=0, help="the seed generator's random seed")
    parser.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results", help="raw JSON results go here")
    parser.add_argument(
        "--code",
        metavar="REVISION",
        help="measure this git revision (e.g. HEAD), copied out, whatever the tree holds meanwhile",
    )
    args = parser.parse_args(argv)
    if args.campaigns < 1 or args.core_sample < 1:
        parser.error("--campaigns and --core-sample must be >= 1")
    return args


def raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def settings(config: dict, storage_pooler: str) -> dict:
    from exports_pipeline.defs.assets import SOURCE_POOL

    return {
        "max_concurrent_runs": config["concurrency"]["runs"]["max_concurrent_runs"],
        "pool": SOURCE_POOL,
        "pool_limit": config["concurrency"]["pools"]["default_limit"],
        "granularity": config["concurrency"]["pools"].get("granularity"),
        "DAGSTER_EVENT_BATCH_SIZE": os.environ.get("DAGSTER_EVENT_BATCH_SIZE", EVENT_BATCH_SIZE),
        "run_coordinator": config["run_coordinator"],
        "run_launcher": config.get("run_launcher", "default"),
        "storage_pooler": {"name": storage_pooler, **PGBOUNCER} if storage_pooler == "pgbouncer" else None,
    }


def run_dagster_phases(
    args: argparse.Namespace,
    work: Path,
    urls: tuple[str, str],
    campaign_ids: list[str],
    contacts: dict[str, set[str]],
    report: dict,
    services: list[Service],
) -> None:
    """(c) and (d) on a deployment started for them; the services are added to `services` to be stopped."""
    source_url, storage_url = urls
    env = deployment_env(
        args.server_url, urlsplit(storage_url).path.lstrip("/"), source_url, work / "dagster_home", work / "exports"
    )
    if args.storage_pooler == "pgbouncer":  # the instance storage only: the source's sessions stay measured as such
        pooler, port = start_pgbouncer(args.server_url, work / "pgbouncer", work / "logs")
        services.append(pooler)
        env.update(DAGSTER_PG_HOST="127.0.0.1", DAGSTER_PG_PORT=str(port))
    register_partitions(env, campaign_ids)
    started, graphql = start_services(env, work / "dagster_home", work / "logs")
    services += started
    stop_nightly_schedule(graphql)
    sampler = Sampler(
        with_database(args.server_url, "postgres"),
        urlsplit(source_url).path.lstrip("/"),
        services,
        args.sample_interval,
    )
    sampler.start()
    try:
        load = Load(graphql, services, sampler, args, work / "exports", urls, campaign_ids, contacts)
        report["c"] = load.measured("c", load.backfill)
        report["d"] = load.measured("d", load.nightly)
    finally:
        sampler.stop()
        report["sampler_error"] = sampler.error
    for service in reversed(services):  # before the core loop, which then has the machine to itself; pooler last
        service.stop()


def write_results(args: argparse.Namespace, started: datetime, report: dict) -> Path:
    from exports_pipeline.core.sourceurl import redact_url

    args.results_dir.mkdir(parents=True, exist_ok=True)
    path = args.results_dir / f"load-{args.campaigns}-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(
        json.dumps(
            {
                "started_at": started.isoformat(),
                "finished_at": datetime.now(UTC).isoformat(),
                "python": sys.version.split()[0],
                "loadavg_end": os.getloadavg(),
                "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                "args": {
                    **{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                    "server_url": redact_url(args.server_url),
                },
                **report,
            },
            indent=1,
            default=str,
        )
    )
    return path


def measure(args: argparse.Namespace, work: Path, urls: tuple[str, str], report: dict, services: list[Service]) -> int:
    source_url = urls[0]
    print(f"seeding {args.campaigns:,} campaigns (size mix {SIZE_MIX}) ...", flush=True)
    campaign_ids = seed(source_url, args.campaigns, args.seed)
    contacts = source_contacts(source_url)
    report.update(campaign_ids=campaign_ids, contacts=sum(map(len, contacts.values())))
    print(
        f"(a) psql \\copy of the reference query, one process per campaign, for {len(campaign_ids):,} "
        f"campaigns ({report['contacts']:,} contacts) ...",
        flush=True,
    )
    report["a"] = psql_per_campaign(source_url, campaign_ids, contacts, args.reference, work)
    print(f"  (a): {report['a']['wall_s']:.1f} s", flush=True)
    run_dagster_phases(args, work, urls, campaign_ids, contacts, report, services)
    print(f"(b) the export core alone over at most {args.core_sample:,} of the campaigns ...", flush=True)
    report["b"] = core_loop(source_url, campaign_ids, args.core_sample, work)
    if args.psql_again:
        print("(a) again, as the machine's load may have changed meanwhile ...", flush=True)
        report["a_again"] = psql_per_campaign(source_url, campaign_ids, contacts, args.reference, work)
        print(f"  (a) again: {report['a_again']['wall_s']:.1f} s", flush=True)
    report["summary"] = summarize(report)
    print_summary(report, report["summary"])
    ok = not any(report.get(phase, {}).get("problems") for phase in ("a", "c", "d", "a_again"))
    report["status"] = "ok" if ok else "failed checks"
    return 0 if ok else 1


def run_from_revision(revision: str, argv: list[str], args: argparse.Namespace) -> int:
    """Runs this load test from a copy of `revision` (git archive of the whole tree), so that the checkout can
    change while it runs; the copy is removed afterwards."""
    rev = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", revision], capture_output=True, text=True, check=True
    ).stdout.strip()
    root = Path(tempfile.mkdtemp(prefix=f"exports-load-code-{rev}-"))
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
    rest = [a for i, a in enumerate(argv) if not (a.startswith("--code") or (i and argv[i - 1] == "--code"))]
    env = os.environ | {"LOAD_CODE_REVISION": rev}
    print(f"measuring {rev}, copied to {root}", flush=True)
    child = subprocess.Popen(
        [
            sys.executable,
            str(root / "bench" / "load.py"),
            *rest,
            "--results-dir",
            str(args.results_dir.resolve()),
            "--reference",
            str(args.reference.resolve()),
        ],
        env=env,
        cwd=root,
        start_new_session=True,
    )  # signals reach it once, from here
    try:
        return child.wait()
    except KeyboardInterrupt:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)  # a second signal would cut the child's clean-up short
        child.terminate()  # it stops its processes, drops its databases and writes its results
        return child.wait()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for signum in (signal.SIGINT, signal.SIGTERM):  # SIGINT too: a background job starts with it ignored
        signal.signal(signum, raise_interrupt)
    if args.code:
        return run_from_revision(args.code, sys.argv[1:] if argv is None else argv, args)
    # This checkout's package in every process started (the virtualenv's editable install may name another).
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    started = datetime.now(UTC)
    work = Path(tempfile.mkdtemp(prefix="exports-load-"))
    for folder in ("dagster_home", "exports", "logs"):
        (work / folder).mkdir()
    admin_url, suffix = with_database(args.server_url, "postgres"), uuid.uuid4().hex[:10]
    databases = [f"exports_load_source_{suffix}", f"exports_load_dagster_{suffix}"]
    urls = (with_database(args.server_url, databases[0]), with_database(args.server_url, databases[1]))
    config = instance_config(args.max_concurrent_runs, args.pool_limit)
    (work / "dagster_home" / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    report: dict = {
        "status": "interrupted",
        "git": os.environ.get("LOAD_CODE_REVISION") or git_revision(),
        "settings": settings(config, args.storage_pooler),
    }
    services: list[Service] = []
    try:
        create_databases(admin_url, databases)
        return measure(args, work, urls, report, services)
    except BaseException as exc:
        from exports_pipeline.core.sourceurl import redact_text

        report["status"] = f"failed: {type(exc).__name__}: {redact_text(str(exc), args.server_url)[:2000]}"
        raise
    finally:
        for service in reversed(services):
            service.stop()
        if args.keep:
            print(
                f"\nkept: databases {', '.join(databases)}; folders in {work} (DAGSTER_HOME dagster_home, "
                "exports, logs)"
            )
        else:
            drop_databases(admin_url, databases)
            shutil.rmtree(work, ignore_errors=True)
        print(f"\nraw results: {write_results(args, started, report)}")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt as interrupt:
        print(f"interrupted ({interrupt}); databases and temporary folders removed unless --keep", file=sys.stderr)
        sys.exit(130)
