"""Shared fixtures: every test run makes its own PostgreSQL databases and drops them; a running
production deployment (dagster-daemon on the top-level dagster.yaml) for the daemon tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import dagster as dg
import psycopg
import pytest
import yaml

from exports_pipeline.defs.assets import DEFAULT_EXPORT_KEYS, campaign_export

ADMIN_URL = os.environ.get("EXPORTS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _server_url(database: str) -> str:
    return ADMIN_URL.rsplit("/", 1)[0] + "/" + database


def create_database() -> str:
    """A new, empty PostgreSQL database; returns its name."""
    name = f"exports_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def drop_databases(names: list[str]) -> None:
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        for name in names:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def make_pg_database():
    """Factory: a new, empty PostgreSQL database per call, dropped when the test ends."""
    created: list[str] = []

    def make() -> str:
        created.append(create_database())
        return _server_url(created[-1])

    yield make
    drop_databases(created)


@pytest.fixture
def pg_url(make_pg_database) -> str:
    return make_pg_database()


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'source.sqlite'}"


FAKE_AWS_SECRET = "moto-secret-key-never-shown"  # tests assert it appears in no log, metadata or error


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3 API server over HTTP on loopback for the session, with fake credentials in the environment."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as env:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
            env.delenv(name, raising=False)
        env.setenv("AWS_CONFIG_FILE", os.devnull)
        env.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        env.setenv("AWS_ACCESS_KEY_ID", "moto-access-key")
        env.setenv("AWS_SECRET_ACCESS_KEY", FAKE_AWS_SECRET)
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        env.setenv("AWS_ENDPOINT_URL", endpoint)
        yield endpoint
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint) -> str:
    """A new, empty bucket on the moto server."""
    import boto3

    name = f"exports-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


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


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most (start, end) intervals open at one instant."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = peak = 0
    for _, change in edges:  # at equal times the end (-1) sorts first
        running += change
        peak = max(peak, running)
    return peak


def _merge(base: dict, overrides: dict) -> dict:
    return {**base, **{k: _merge(base.get(k, {}), v) if isinstance(v, dict) else v for k, v in overrides.items()}}


@contextmanager
def running_deployment(
    home: Path, *, contacts: int, campaigns: int, seed: int, now, settings: dict | None = None, env: dict | None = None
) -> Iterator[Deployment]:
    """`dagster-daemon run` (and nothing else) with the top-level dagster.yaml (its sections merged with
    settings) in DAGSTER_HOME=home, the repository's workspace.yaml, a seeded PostgreSQL source, storage in
    a PostgreSQL database of its own and a local destination; stopped and dropped on exit."""
    from exports_pipeline.core.seed import seed_source

    config = yaml.safe_load((REPO / "dagster.yaml").read_text())
    (home / "dagster.yaml").write_text(yaml.safe_dump(_merge(config, settings or {})))
    server = urlsplit(ADMIN_URL)
    storage_db, source_db = create_database(), create_database()
    source_url = _server_url(source_db)
    env = {
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_HOST": server.hostname,
        "DAGSTER_PG_PORT": str(server.port or 5432),
        "DAGSTER_PG_USER": server.username or "postgres",
        "DAGSTER_PG_PASSWORD": server.password or "",
        "DAGSTER_PG_DB": storage_db,
        "EXPORTS_SOURCE_URL": source_url,
        "EXPORTS_DESTINATION": str(home / "exports"),
        "EXPORTS_SENSOR_INTERVAL_SECONDS": "5",
        **(env or {}),
    }
    daemon = None
    try:
        seeded = seed_source(source_url, contacts=contacts, campaigns=campaigns, seed=seed, now=now)
        with pytest.MonkeyPatch.context() as patch, ExitStack() as stack:
            for key, value in env.items():
                patch.setenv(key, value)
            # The test process creates the storage tables first, so that the daemon and it never race to.
            instance = stack.enter_context(dg.DagsterInstance.from_config(str(home)))
            log = home / "daemon.log"
            with open(log, "wb") as out:
                daemon = subprocess.Popen(
                    [BIN / "dagster-daemon", "run", "-w", REPO / "workspace.yaml"],
                    cwd=home,
                    env={**os.environ, **env},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            yield Deployment(home, {**os.environ, **env}, instance, source_url, home / "exports", seeded, log)
    finally:
        if daemon is not None:  # the daemon, its code server and run workers share its process group
            stop_process_group(daemon)
        drop_databases([storage_db, source_db])


def stop_process_group(leader: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM to the group, then SIGKILL to whatever is left of it once the leader has ended or the timeout
    passed: a code server that outlives its daemon waits for runs that a test killed, and would run forever."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(leader.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        leader.wait(timeout=timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(leader.pid, signal.SIGKILL)
    leader.wait()


# Test layers (README, "Tests"): unit = plain functions, no server and no Dagster run; dagster =
# dg.materialize, Definitions and sensor/schedule evaluation on local folders and SQLite; integration =
# PostgreSQL, the S3 API server, SMTP, the daemon or the browser. A test's fixtures put it in the
# integration layer; a test that runs Dagster without them says so with @pytest.mark.dagster, and one
# that starts a server itself with @pytest.mark.integration (a parameter's mark outranks its function's).
# Everything else is a unit test. Each test ends with exactly one layer mark, so `-m` never runs it twice.
LAYERS = ("unit", "dagster", "integration")
SERVER_FIXTURES = {
    "make_pg_database": "PostgreSQL",
    "s3_endpoint": "the S3 API server",
    "strict_s3": "the S3 API server",
    "smtp_server": "the SMTP server",
    "deployment": "the daemon",
    "stack": "the webserver and the browser",
}


def layer_of(item: pytest.Item) -> str:
    """The heaviest layer a test's marks and fixtures give it; a unit mark on a test that needs more is an error."""
    marked = {mark.name for mark in item.iter_markers() if mark.name in LAYERS}
    servers = sorted(SERVER_FIXTURES[name] for name in SERVER_FIXTURES.keys() & set(item.fixturenames))
    if "unit" in marked and (servers or len(marked) > 1):
        raise pytest.UsageError(f"{item.nodeid} is marked unit but uses {', '.join(servers) or 'Dagster'}")
    return "integration" if servers else max(marked | {"unit"}, key=LAYERS.index)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        layer = layer_of(item)
        item.own_markers = [m for m in item.own_markers if m.name not in LAYERS or m.name == layer]
        if item.get_closest_marker(layer) is None:
            item.add_marker(layer)
        others = {m.name for m in item.iter_markers() if m.name in LAYERS} - {layer}
        if others:  # set on a module or class, which every test there shares
            raise pytest.UsageError(
                f"{item.nodeid} is a {layer} test but its module or class marks it "
                f"{' and '.join(sorted(others))}: mark its tests one by one"
            )


def materialize(
    resources, instance, partition: str, config: dict | None = None, selection=DEFAULT_EXPORT_KEYS, tags=None
):
    """One campaign partition of the export asset in process, its errors kept in the result."""
    instance.add_dynamic_partitions("campaigns", [partition])
    return dg.materialize(
        [campaign_export],
        selection=selection,
        instance=instance,
        partition_key=partition,
        resources=resources,
        run_config={"ops": {"campaign_export": {"config": config or {}}}},
        tags=tags,
        raise_on_error=False,
    )
