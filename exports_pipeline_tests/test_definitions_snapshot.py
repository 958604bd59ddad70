"""A snapshot of the code location's definitions (asset and check keys, jobs, schedules, sensors, resources
and their defaults), so that a change to any of them is seen and meant. After a deliberate change, rewrite
the snapshot with EXPORTS_UPDATE_SNAPSHOTS=1 and commit it with the change."""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path

import dagster as dg
import pytest

from exports_pipeline.definitions import defs

SNAPSHOT = Path(__file__).resolve().parent / "snapshots" / "definitions.json"
UPDATE_ENV = "EXPORTS_UPDATE_SNAPSHOTS"
REPO = Path(__file__).resolve().parents[1]


def _partitions(definition) -> str | None:
    return getattr(definition.partitions_def, "name", None) if definition.partitions_def else None


def _field_value(value):
    """A resource field as configured: an environment variable by its name, anything else as JSON."""
    if isinstance(value, dg.EnvVar):
        return f"EnvVar({value.env_var_name})"
    return value if value is None or isinstance(value, (bool, int, float, str)) else repr(value)


def _resources() -> dict:
    return {
        key: {
            "class": type(resource).__name__,
            "config": {name: _field_value(getattr(resource, name)) for name in type(resource).model_fields},
        }
        for key, resource in sorted(defs.resources.items())
    }


def _assets() -> dict:
    graph = defs.resolve_asset_graph()
    return {
        "assets": {
            spec.key.to_user_string(): {
                "group": spec.group_name,
                "kinds": sorted(spec.kinds),
                "partitions": _partitions(spec),
            }
            for spec in sorted(defs.resolve_all_asset_specs(), key=lambda s: s.key.to_user_string())
        },
        "checks": sorted(
            f"{key.asset_key.to_user_string()}:{key.name}{' (blocking)' if graph.get_check_spec(key).blocking else ''}"
            for key in graph.asset_check_keys
        ),
    }


def definitions_snapshot() -> dict:
    """What the snapshot records: names and defaults a user or an operator relies on."""
    return {
        **_assets(),
        "jobs": {
            job.name: {"partitions": _partitions(job)}
            for job in sorted(defs.resolve_all_job_defs(), key=lambda j: j.name)
            if not job.name.startswith("__")
        },  # Dagster's implicit asset job
        "schedules": {
            s.name: {
                "cron": s.cron_schedule,
                "timezone": s.execution_timezone,
                "job": s.job_name,
                "default_status": s.default_status.value,
            }
            for s in sorted(defs.schedules, key=lambda s: s.name)
        },
        "sensors": {
            s.name: {
                "kind": type(s).__name__,
                "minimum_interval_seconds": s.minimum_interval_seconds,
                "default_status": s.default_status.value,
            }
            for s in sorted(defs.sensors, key=lambda s: s.name)
        },
        "resources": _resources(),
    }


@pytest.mark.dagster
def test_the_definitions_match_the_checked_in_snapshot():
    current = json.dumps(definitions_snapshot(), indent=2, sort_keys=True) + "\n"
    if os.environ.get(UPDATE_ENV) == "1":
        SNAPSHOT.write_text(current)
    recorded = SNAPSHOT.read_text() if SNAPSHOT.exists() else ""
    diff = "".join(
        difflib.unified_diff(
            recorded.splitlines(True),
            current.splitlines(True),
            f"{SNAPSHOT.name} (checked in)",
            f"{SNAPSHOT.name} (the code now)",
        )
    )
    if diff:
        pytest.fail(
            f"The definitions differ from {SNAPSHOT.relative_to(REPO)}:\n{diff}\nIf the change is meant, "
            f"rewrite the snapshot and commit it with the change:\n"
            f"  {UPDATE_ENV}=1 pytest {Path(__file__).relative_to(REPO)}",
            pytrace=False,
        )
