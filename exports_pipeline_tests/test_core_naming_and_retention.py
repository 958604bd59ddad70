"""Snapshot names and which snapshots retention removes (core/publish.py, core/retention.py, SPEC section 4),
on a local folder; URLs made safe to show (core/sourceurl.py). Plain functions, no server."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from exports_pipeline.core.destinations import LocalDestination
from exports_pipeline.core.errors import ConfigurationError
from exports_pipeline.core.publish import campaign_prefix, latest_key, move_latest, read_latest, snapshot_name
from exports_pipeline.core.retention import apply_retention, plan_retention, snapshot_time
from exports_pipeline.core.sourceurl import redact_text, redact_url, sqlite_path

C1 = "c1000000-0000-4000-8000-000000000001"
RUN = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"


@pytest.mark.parametrize(
    "taken, name",
    [
        (datetime(2026, 1, 5, tzinfo=UTC), "20260105T000000.000000Z-0f1e2d3c"),
        (datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC), "19691231T235959.999999Z-0f1e2d3c"),
        (datetime(2024, 2, 29, 12, 0, 0, 1, tzinfo=UTC), "20240229T120000.000001Z-0f1e2d3c"),
        (datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC), "99991231T235959.000000Z-0f1e2d3c"),
    ],
)
def test_a_snapshot_is_named_after_its_source_time_and_run_and_read_back(taken, name):
    assert snapshot_name(taken, RUN) == name
    assert snapshot_time(name) == taken


def test_snapshot_names_sort_as_their_times():
    times = [datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=n) for n in (-1, 0, 1, 10**6, 10**12)]
    times += [datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC), datetime(2000, 1, 1, tzinfo=UTC)]
    names = [snapshot_name(t, f"{i:08d}") for i, t in enumerate(times)]
    assert sorted(names) == [snapshot_name(t, f"{i:08d}") for i, t in sorted(enumerate(times), key=lambda p: p[1])]


@pytest.mark.parametrize(
    "name",
    [
        "latest.json",
        "manifest.json",
        "not-a-snapshot",
        "",
        "20230229T000000.000000Z-x",
        "20260105T000000Z-0f1e2d3c",
        "2026-01-05T00:00:00Z",
    ],
)
def test_other_folder_names_have_no_snapshot_time(name):
    assert snapshot_time(name) is None


def test_keys_follow_the_layout():
    assert campaign_prefix(C1) == f"campaign_id={C1}"
    assert latest_key(C1) == f"campaign_id={C1}/latest.json"


def put(destination: LocalDestination, key: str, age: timedelta = timedelta(0)) -> str:
    destination.put_bytes(key, b"x", "text/plain")
    when = (datetime.now(UTC) - age).timestamp()
    os.utime(destination.base / key, (when, when))
    return key


@pytest.fixture
def history(tmp_path):
    """Snapshots of one campaign around the 30-day limit, with latest.json on an old one."""
    destination = LocalDestination(tmp_path)
    now = datetime.now(UTC)
    names = {age: snapshot_name(now - timedelta(days=age), f"run{age:05d}") for age in (45, 31, 29, 1)}
    for name in names.values():
        put(destination, f"campaign_id={C1}/{name}/campaign_results.csv")
        put(destination, f"campaign_id={C1}/{name}/manifest.json")
    assert move_latest(destination, C1, names[45], f"campaign_id={C1}/{names[45]}/manifest.json")
    return destination, names


def test_retention_removes_complete_snapshots_past_the_limit_except_the_latest(history):
    destination, names = history
    planned = plan_retention(destination, 30)
    assert [(r.path, r.reason) for r in planned] == [(f"campaign_id={C1}/{names[31]}", "expired")]
    assert sorted(planned[0].keys) == [
        f"campaign_id={C1}/{names[31]}/campaign_results.csv",
        f"campaign_id={C1}/{names[31]}/manifest.json",
    ]
    assert [r.path for r in plan_retention(destination, 2)] == [
        f"campaign_id={C1}/{names[31]}",
        f"campaign_id={C1}/{names[29]}",
    ]  # sorted by name
    assert plan_retention(destination, 60) == []


def test_leftovers_go_after_the_grace_and_keys_outside_the_layout_stay(history):
    destination, names = history
    young = put(destination, f"campaign_id={C1}/{snapshot_name(datetime.now(UTC), 'young000')}/campaign_results.csv")
    stale = put(
        destination,
        f"campaign_id={C1}/{snapshot_name(datetime(2026, 1, 1, tzinfo=UTC), 'stale000')}/a.csv",
        timedelta(days=2),
    )
    partial = put(destination, f"campaign_id={C1}/{names[1]}/.partial-campaign_results.csv", timedelta(hours=25))
    outside = [
        put(destination, "notes/readme.txt", timedelta(days=400)),
        put(destination, f"campaign_id={C1}/odd-folder/file.csv", timedelta(days=400)),
        put(destination, "campaign_id=other/20000101T000000.000000Z-aaaaaaaa/file.csv", timedelta(days=400)),
    ]
    removed = apply_retention(destination, 30)
    reasons = {r.path: r.reason for r in removed}
    assert reasons == {
        f"campaign_id={C1}/{names[31]}": "expired",
        stale.rsplit("/", 1)[0]: "incomplete",
        partial: "partial",
        "campaign_id=other/20000101T000000.000000Z-aaaaaaaa": "incomplete",
    }  # it has no manifest
    left = {o.key for o in destination.list("")}
    assert young in left and stale not in left and partial not in left
    assert set(outside[:2]) <= left and outside[2] not in left  # no latest.json protects that one
    assert read_latest(destination, C1)["snapshot"] == names[45]


@pytest.mark.parametrize("days", [0, -1])
def test_retention_keeps_at_least_a_day(tmp_path, days):
    with pytest.raises(ConfigurationError, match="at least 1 day"):
        plan_retention(LocalDestination(tmp_path), days)


@pytest.mark.parametrize(
    "url, shown",
    [
        ("postgresql://exports:s3cr%40t@db.internal:5432/app", "postgresql://exports:***@db.internal:5432/app"),
        ("postgresql://exports:p@ss:word@db/app", "postgresql://exports:***@db/app"),  # '@' and ':' in the password
        ("postgresql://:only-password@db/app", "postgresql://:***@db/app"),
        ("postgresql://exports@db/app", "postgresql://exports@db/app"),
        ("sqlite:////var/data/source.sqlite", "sqlite:////var/data/source.sqlite"),
    ],
)
def test_redact_url_hides_the_password_only(url, shown):
    assert redact_url(url) == shown


def test_redact_text_removes_the_password_as_typed_and_decoded():
    url = "postgresql://exports:s3cr%40t@db/app"
    message = "connection to postgresql://exports:s3cr%40t@db failed: password s3cr@t rejected"
    assert redact_text(message, url) == "connection to postgresql://exports:***@db failed: password *** rejected"
    assert redact_text(message, "postgresql://exports@db/app") == message


@pytest.mark.parametrize(
    "url, path",
    [
        ("sqlite:///demo/source.sqlite", Path("demo/source.sqlite")),
        ("sqlite:////var/data/source.sqlite", Path("/var/data/source.sqlite")),
        ("sqlite:///my%20folder/caf%C3%A9.sqlite", Path("my folder/café.sqlite")),
    ],
)
def test_sqlite_urls_give_relative_or_absolute_paths(url, path):
    assert sqlite_path(url) == path
