"""The production dagster.yaml and the deploy/ example, checked by Dagster itself: the instance is built
from the file on PostgreSQL with Dagster's own classes only, and the ECS example is validated against
dagster-aws's own schema."""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import urlsplit

import dagster as dg
import pytest
import yaml
from dagster_aws.ecs import EcsRunLauncher

REPO = Path(__file__).resolve().parents[1]


def use_storage_database(monkeypatch, url: str) -> None:
    parts = urlsplit(url)
    for name, value in {
        "DAGSTER_PG_HOST": parts.hostname,
        "DAGSTER_PG_PORT": str(parts.port or 5432),
        "DAGSTER_PG_USER": parts.username or "postgres",
        "DAGSTER_PG_PASSWORD": parts.password or "",
        "DAGSTER_PG_DB": parts.path.lstrip("/"),
    }.items():
        monkeypatch.setenv(name, value)


def test_the_production_instance_runs_on_postgresql_with_queue_pool_monitoring_and_retries(
    pg_url, tmp_path, monkeypatch
):
    shutil.copy(REPO / "dagster.yaml", tmp_path / "dagster.yaml")
    use_storage_database(monkeypatch, pg_url)
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        instance.add_dynamic_partitions("campaigns", ["c1000000-0000-4000-8000-000000000001"])  # a real write
        assert [
            type(s).__name__ for s in (instance.run_storage, instance.event_log_storage, instance.schedule_storage)
        ] == ["PostgresRunStorage", "PostgresEventLogStorage", "PostgresScheduleStorage"]
        assert type(instance.run_coordinator) is dg.QueuedRunCoordinator
        assert type(instance.run_launcher) is dg.DefaultRunLauncher
        pools = instance.get_concurrency_config().pool_config
        assert (pools.default_pool_limit, pools.pool_granularity.value) == (2, "run")
        assert instance.run_monitoring_enabled and instance.run_retries_max_retries > 0
        assert not instance.run_retries_retry_on_asset_or_op_failure  # the export retries transient errors itself
    assert [p.name for p in tmp_path.iterdir()] == ["dagster.yaml"]


def test_dagster_yaml_names_only_dagsters_own_classes():
    """No patched storage, coordinator or launcher: every module the instance loads is Dagster's."""
    config = yaml.safe_load((REPO / "dagster.yaml").read_text())
    modules = [value["module"] for value in config.values() if isinstance(value, dict) and "module" in value]
    assert all(m.split(".")[0] in ("dagster", "dagster_postgres", "dagster_aws") for m in modules), modules


def test_the_ecs_example_is_a_valid_run_launcher_for_the_production_instance(pg_url, tmp_path, monkeypatch):
    """Merged into dagster.yaml as its comment says, the example builds Dagster's ECS launcher (Dagster
    checks the block against dagster-aws's schema when it builds the launcher; nothing is called on AWS)."""
    use_storage_database(monkeypatch, pg_url)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    config = yaml.safe_load((REPO / "dagster.yaml").read_text())
    config |= yaml.safe_load((REPO / "deploy" / "ecs" / "run_launcher.yaml").read_text())
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(config))
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        launcher = instance.run_launcher
        assert type(launcher) is EcsRunLauncher
        assert launcher.use_current_ecs_task_config and launcher.container_name == "run"
        assert launcher.run_resources == {"cpu": "1024", "memory": "4096", "ephemeral_storage": 50}


def test_a_misspelt_ecs_setting_is_refused_by_dagster(pg_url, tmp_path, monkeypatch):
    use_storage_database(monkeypatch, pg_url)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    config = yaml.safe_load((REPO / "dagster.yaml").read_text())
    config |= yaml.safe_load((REPO / "deploy" / "ecs" / "run_launcher.yaml").read_text())
    config["run_launcher"]["config"]["include_sidecar"] = False  # Dagster spells it include_sidecars
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(config))
    with (
        dg.DagsterInstance.from_config(str(tmp_path)) as instance,
        pytest.raises(dg.DagsterInvalidConfigError, match="include_sidecar"),
    ):
        instance.run_launcher  # noqa: B018 - building the launcher is what is tested
