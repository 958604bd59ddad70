"""The production dagster.yaml and the deploy/ example, checked by Dagster itself: the instance is built
from the file on PostgreSQL, its pool holds its limit under simultaneous claims, and the ECS example is
validated against dagster-aws's own schema."""
from __future__ import annotations

import multiprocessing
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import dagster as dg
import yaml
from dagster._config import validate_config  # Dagster has no public API that validates instance config
from dagster._core.instance.config import dagster_instance_config
from dagster_aws.ecs import EcsRunLauncher

from exports_pipeline.event_log_storage import PoolSafePostgresEventLogStorage
from exports_pipeline.run_tags import ExportRunCoordinator
from exports_pipeline_tests.conftest import BIN, max_overlap

REPO = Path(__file__).resolve().parents[1]


def use_storage_database(monkeypatch, url: str) -> None:
    parts = urlsplit(url)
    for name, value in {"DAGSTER_PG_HOST": parts.hostname, "DAGSTER_PG_PORT": str(parts.port or 5432),
                        "DAGSTER_PG_USER": parts.username or "postgres", "DAGSTER_PG_PASSWORD": parts.password or "",
                        "DAGSTER_PG_DB": parts.path.lstrip("/")}.items():
        monkeypatch.setenv(name, value)


def test_the_production_instance_runs_on_postgresql_with_queue_pool_monitoring_and_retries(pg_url, tmp_path,
                                                                                           monkeypatch):
    shutil.copy(REPO / "dagster.yaml", tmp_path / "dagster.yaml")
    use_storage_database(monkeypatch, pg_url)
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        instance.add_dynamic_partitions("campaigns", ["c1000000-0000-4000-8000-000000000001"])  # a real write
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert isinstance(instance.event_log_storage, PoolSafePostgresEventLogStorage)
        assert isinstance(instance.run_coordinator, ExportRunCoordinator)
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 2
        assert instance.run_monitoring_enabled and instance.run_retries_max_retries > 0
        assert not instance.run_retries_retry_on_asset_or_op_failure  # the asset's RetryPolicy handles those
    assert [p.name for p in tmp_path.iterdir()] == ["dagster.yaml"]


POOL = "source_database"
WORKERS, CLAIMS_EACH, HOLD_SECONDS = 8, 15, 0.05


def hold_pool_slots(home: str, start_at: float, held: multiprocessing.Queue) -> None:
    """One run worker's part, in a process of its own: what Dagster's executor does for each export step
    (set the pool up on first sight, claim a slot, retry while blocked, free it when the step ends)."""
    with dg.DagsterInstance.from_config(home) as instance:
        storage, run_id = instance.event_log_storage, str(uuid.uuid4())
        time.sleep(max(0.0, start_at - time.time()))
        storage.initialize_concurrency_limit_to_default(POOL)
        for step in range(CLAIMS_EACH):
            while not storage.claim_concurrency_slot(POOL, run_id, f"step{step}").is_claimed:
                time.sleep(0.01)
            start = time.time()
            time.sleep(HOLD_SECONDS)
            held.put((start, time.time()))
            storage.free_concurrency_slot_for_step(run_id, f"step{step}")


def test_the_production_pool_never_hands_out_more_slots_than_its_limit(pg_url, tmp_path, monkeypatch):
    # Dagster's own PostgreSQL event log held 3 or 4 of 2 slots at once here, and 7 of 8 first claims of
    # a new pool failed (UniqueViolation, then InFailedSqlTransaction).
    shutil.copy(REPO / "dagster.yaml", tmp_path / "dagster.yaml")
    use_storage_database(monkeypatch, pg_url)
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:  # creates the tables before the workers
        limit = instance.get_concurrency_config().pool_config.default_pool_limit
        spawn = multiprocessing.get_context("spawn")
        held = spawn.Queue()
        start_at = time.time() + 5  # every worker imported and connected, then all claim at once
        workers = [spawn.Process(target=hold_pool_slots, args=(str(tmp_path), start_at, held))
                   for _ in range(WORKERS)]
        for worker in workers:
            worker.start()
        for worker in workers:  # their few records fit in the queue's pipe: each can exit before they are read
            worker.join(timeout=120)
        assert [w.exitcode for w in workers] == [0] * WORKERS
        intervals = [held.get(timeout=5) for _ in range(WORKERS * CLAIMS_EACH)]
        assert max_overlap(intervals) == limit == 2  # never more, and the pool was used to its limit
        info = instance.event_log_storage.get_concurrency_info(POOL)
        assert (info.slot_count, info.active_slot_count, info.pending_step_count) == (limit, 0, 0)


def test_a_new_default_limit_in_dagster_yaml_applies_to_a_running_deployment(pg_url, tmp_path, monkeypatch):
    # Dagster's own PostgreSQL event log failed every claim after the change (InFailedSqlTransaction).
    use_storage_database(monkeypatch, pg_url)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    production = (REPO / "dagster.yaml").read_text()
    assert production.count("default_limit: 2") == 1
    run_id = str(uuid.uuid4())

    def claims_with_default_limit(limit: int, steps: list[str], freed: list[str] = ()):
        """A run worker started after dagster.yaml said `default_limit: limit`: frees, then claims.
        Returns the claims' outcomes and the pool's (limit, from the default) afterwards."""
        (tmp_path / "dagster.yaml").write_text(production.replace("default_limit: 2", f"default_limit: {limit}"))
        with dg.DagsterInstance.get() as instance:
            storage = instance.event_log_storage
            storage.initialize_concurrency_limit_to_default(POOL)  # what a run's first claim of the pool does
            for step in freed:
                storage.free_concurrency_slot_for_step(run_id, step)
            claimed = [storage.claim_concurrency_slot(POOL, run_id, step).is_claimed for step in steps]
            (pool,) = storage.get_pool_limits()
            return claimed, (pool.limit, pool.from_default)

    assert claims_with_default_limit(2, ["a", "b", "c"]) == ([True, True, False], (2, True))
    assert claims_with_default_limit(3, ["c", "d"]) == ([True, False], (3, True))  # the waiting step gets the new slot
    assert claims_with_default_limit(1, ["d"]) == ([False], (1, True))  # three running steps, now over the limit
    assert claims_with_default_limit(1, ["d", "e"], freed=["a", "b", "c"]) == ([True, False], (1, True))

    # A limit an operator set by hand outlives default_limit changes.
    subprocess.run([BIN / "dagster", "instance", "concurrency", "set", POOL, "2"], check=True, capture_output=True)
    assert claims_with_default_limit(3, ["e", "f"]) == ([True, False], (2, False))


def test_the_ecs_example_is_a_valid_run_launcher_for_the_production_instance(monkeypatch):
    use_storage_database(monkeypatch, "postgresql://dagster:secret@db.internal:5432/dagster")
    example = yaml.safe_load((REPO / "deploy" / "ecs" / "run_launcher.yaml").read_text())
    config, _ = dagster_instance_config(str(REPO), overrides=example)
    launcher = config["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_aws.ecs", "EcsRunLauncher")
    result = validate_config(EcsRunLauncher.config_type(), launcher["config"])
    assert result.success, [e.message for e in result.errors]
