"""Sensors, the nightly schedule and the catalog, evaluated against a seeded PostgreSQL source and a
PostgreSQL-backed Dagster instance. Partition requests are applied to the instance as the daemon does."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import dagster as dg
import psycopg
import pytest

from exports_pipeline.core.catalog import open_catalog
from exports_pipeline.core.seed import create_source_schema, seed_source
from exports_pipeline.core.source import open_source
from exports_pipeline.defs import schedules, sensors
from exports_pipeline.defs.assets import DEFAULT_EXPORT_KEYS, campaign_export
from exports_pipeline.defs.resources import ExportDestination, SourceDatabase
from exports_pipeline.defs.run_requests import RANGE_END, RANGE_START, stretches
from exports_pipeline.defs.schedules import nightly_changed_campaigns
from exports_pipeline.defs.sensors import campaign_sensors
from exports_pipeline.run_tags import campaign_name_tag, missing_export_tags

campaign_partitions_sensor, campaign_completed_sensor = campaign_sensors()
SEED_NOW = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(days=30)
TAGS = {"formats": "csv,parquet"}


@pytest.fixture
def source_url(pg_url) -> str:
    seed_source(pg_url, contacts=120, campaigns=12, seed=7, now=SEED_NOW)
    return pg_url


def dagster_storage_url(database_url: str) -> str:
    """dagster-postgres needs psycopg2: SQLAlchemy 2.1 maps postgresql:// to psycopg 3, whose server-side
    parameters break dagster-postgres's `NOTIFY run_events, %(notify_id)s`."""
    return database_url.replace("postgresql://", "postgresql+psycopg2://", 1)


@pytest.fixture
def instance(make_pg_database, tmp_path):
    storage = {"postgres": {"postgres_url": dagster_storage_url(make_pg_database())}}
    with dg.instance_for_test(overrides={"storage": storage}, temp_dir=str(tmp_path)) as instance:
        yield instance


def sql(url: str, statement: str, params=()) -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


def insert_campaign(url: str, status: str, created_at: dt.datetime) -> str:
    cid = str(uuid.uuid4())
    sql(
        url,
        "INSERT INTO campaigns (id, name, owner_id, status, created_at, updated_at) VALUES (%s, 'x', %s, %s, %s, %s)",
        (cid, str(uuid.uuid4()), status, created_at, created_at),
    )
    return cid


def by_campaign(requests: list[dg.RunRequest], order: list[str]) -> dict[str, dg.RunRequest]:
    """Each campaign that the requests export (one partition, or a range of them), with its request."""
    found = {}
    for request in requests:
        if request.partition_key:
            found[request.partition_key] = request
        else:
            start, end = order.index(request.tags[RANGE_START]), order.index(request.tags[RANGE_END])
            found |= dict.fromkeys(order[start : end + 1], request)
    return found


def name_tag(url: str, cid: str) -> dict[str, str]:
    return campaign_name_tag(sql(url, "SELECT name FROM campaigns WHERE id = %s", (cid,))[0][0])


def evaluate(sensor, instance, cursor, url):
    """One tick: the sensor's result, with its partition requests applied as the daemon applies them."""
    with dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"source": SourceDatabase(url=url)}
    ) as context:
        result = sensor(context)
    for request in result.dynamic_partitions_requests:
        if isinstance(request, dg.AddDynamicPartitionsRequest):
            instance.add_dynamic_partitions(request.partitions_def_name, request.partition_keys)
        else:
            for key in request.partition_keys:
                instance.delete_dynamic_partition(request.partitions_def_name, key)
    return result


def partition_changes(result) -> tuple[set, set]:
    added = {
        k
        for r in result.dynamic_partitions_requests
        if isinstance(r, dg.AddDynamicPartitionsRequest)
        for k in r.partition_keys
    }
    removed = {
        k
        for r in result.dynamic_partitions_requests
        if isinstance(r, dg.DeleteDynamicPartitionsRequest)
        for k in r.partition_keys
    }
    return added, removed


@pytest.fixture
def small_pages(monkeypatch):
    """Pages and caps far below the campaign count, so that pagination and caps are exercised."""
    monkeypatch.setattr(sensors, "PAGE_SIZE", 3)
    monkeypatch.setattr(sensors, "ADDS_PER_TICK", 4)
    monkeypatch.setattr(sensors, "SCAN_PER_TICK", 3)


def test_partition_sensor_registers_every_campaign_a_capped_tick_at_a_time(source_url, instance, small_pages):
    campaigns = {r[0] for r in sql(source_url, "SELECT id::text FROM campaigns")}
    cursor, ticks = None, []
    while True:
        result = evaluate(campaign_partitions_sensor, instance, cursor, source_url)
        cursor = result.cursor
        if result.skip_reason:
            break
        added, removed = partition_changes(result)
        assert len(added) <= 4 and not removed
        ticks.append(added)
    assert len(ticks) >= 2 and set(instance.get_dynamic_partitions("campaigns")) == campaigns
    latest_created = sql(
        source_url, "SELECT created_at, id::text FROM campaigns ORDER BY created_at DESC, id DESC LIMIT 1"
    )[0]
    state = json.loads(cursor)  # a small JSON watermark that the next tick reads back
    assert set(state) == {"created", "scan"}
    assert state["created"] == [latest_created[0].astimezone(dt.UTC).isoformat(), latest_created[1]]


def test_partition_sensor_late_commits_new_and_deleted_campaigns(source_url, instance, monkeypatch):
    cursor = None
    for _ in range(3):
        cursor = evaluate(campaign_partitions_sensor, instance, cursor, source_url).cursor
    watermark = dt.datetime.fromisoformat(json.loads(cursor)["created"][0])
    late = insert_campaign(source_url, "draft", watermark - dt.timedelta(minutes=5))  # committed after the tick
    too_late = {insert_campaign(source_url, "draft", watermark - dt.timedelta(days=d)) for d in (2, 3)}
    fresh = insert_campaign(source_url, "draft", watermark + dt.timedelta(seconds=1))
    deleted = {
        r[0]
        for r in sql(
            source_url,
            "DELETE FROM campaigns WHERE id IN (SELECT id FROM campaigns "
            "WHERE id <> ALL(%s::uuid[]) LIMIT 2) RETURNING id::text",
            ([late, *too_late, fresh],),
        )
    }

    monkeypatch.setattr(sensors, "SCAN_PER_TICK", 0)  # the watermark and its look-back window alone
    added, removed = partition_changes(evaluate(campaign_partitions_sensor, instance, cursor, source_url))
    assert added == {late, fresh} and not removed

    # The id scan finds deletions and what the window missed, within the caps.
    monkeypatch.setattr(sensors, "SCAN_PER_TICK", 5)
    monkeypatch.setattr(sensors, "ADDS_PER_TICK", 1)
    monkeypatch.setattr(sensors, "REMOVALS_PER_TICK", 1)
    for _ in range(8):  # 14 campaigns, 5 ids per tick: two cycles, or one with the changes a tick apart
        result = evaluate(campaign_partitions_sensor, instance, cursor, source_url)
        cursor = result.cursor
        added, removed = partition_changes(result)
        assert added <= too_late and removed <= deleted and len(added) <= 1 and len(removed) <= 1
    assert set(instance.get_dynamic_partitions("campaigns")) == {
        r[0] for r in sql(source_url, "SELECT id::text FROM campaigns")
    }


def test_partition_sensor_never_empties_everything_on_an_empty_source(pg_url, instance):
    create_source_schema(pg_url)
    instance.add_dynamic_partitions("campaigns", [str(uuid.uuid4())])
    result = evaluate(campaign_partitions_sensor, instance, None, pg_url)
    assert result.skip_reason and len(instance.get_dynamic_partitions("campaigns")) == 1


def test_completion_sensor_first_tick_exact_requests_and_late_commits(source_url, instance):
    first = evaluate(campaign_completed_sensor, instance, None, source_url)
    assert first.skip_reason and not first.run_requests  # old completions are not exported by the sensor
    since = dt.datetime.fromisoformat(json.loads(first.cursor)["since"])
    assert abs(since - sql(source_url, "SELECT now()")[0][0]) < dt.timedelta(minutes=1)

    running = [r[0] for r in sql(source_url, "SELECT id::text FROM campaigns WHERE status = 'running' ORDER BY id")]
    ((completed_at,),) = sql(
        source_url,
        "UPDATE campaigns SET status = 'completed', completed_at = now(), "
        "updated_at = now() WHERE id = %s RETURNING completed_at",
        (running[0],),
    )
    second = evaluate(campaign_completed_sensor, instance, first.cursor, source_url)
    newest = completed_at.astimezone(dt.UTC).isoformat()
    assert [(r.run_key, r.partition_key, r.tags) for r in second.run_requests] == [
        (
            f"{running[0]}:completed:{newest}",
            running[0],
            {"campaign_id": running[0], **name_tag(source_url, running[0]), "trigger": "sensor", **TAGS},
        )
    ]
    assert second.run_requests[0].tags["campaign_name"]
    assert partition_changes(second)[0] == {running[0]}  # not registered yet: the same tick registers it

    # Committed after the second tick, with an earlier updated_at (behind the watermark, after the first
    # tick): the look-back window finds it; the first completion, read again there, is not exported again.
    after = dt.datetime.fromisoformat(json.loads(second.cursor)["after"][0])
    late_time = since + (after - since) / 2
    sql(
        source_url,
        "UPDATE campaigns SET status = 'completed', completed_at = %s, updated_at = %s WHERE id = %s",
        (late_time, late_time, running[1]),
    )
    third = evaluate(campaign_completed_sensor, instance, second.cursor, source_url)
    assert [r.partition_key for r in third.run_requests] == [running[1]]
    assert json.loads(third.cursor)["after"] == json.loads(second.cursor)["after"]
    assert evaluate(campaign_completed_sensor, instance, third.cursor, source_url).skip_reason  # nothing new

    # Several completions in one tick: one run per stretch of consecutive partitions.
    now = sql(source_url, "SELECT now()")[0][0]
    rest = running[2:]
    for cid in rest:
        sql(
            source_url,
            "UPDATE campaigns SET status = 'completed', completed_at = %s, updated_at = %s WHERE id = %s",
            (now, now, cid),
        )
    fourth = evaluate(campaign_completed_sensor, instance, third.cursor, source_url)
    order = instance.get_dynamic_partitions("campaigns")
    assert set(by_campaign(fourth.run_requests, order)) == set(rest)
    assert len(fourth.run_requests) == len(stretches(rest, order))


def test_catalog_fingerprints_equal_the_source_readers(source_url):
    empty = insert_campaign(source_url, "draft", SEED_NOW)
    ids = [r[0] for r in sql(source_url, "SELECT id::text FROM campaigns")]
    with open_catalog(source_url) as catalog:
        found = catalog.fingerprints([*ids, str(uuid.uuid4()), "not-a-uuid"])
    with open_source(source_url) as source:
        assert found == {cid: source.fingerprint(cid) for cid in ids}
    assert found[empty]["contacts_count"] == 0 and found[empty]["contacts_max_updated_at"] is None


def test_sqlite_catalog_lists_campaigns_in_keyset_order(sqlite_url):
    seeded = seed_source(sqlite_url, contacts=30, campaigns=5, seed=2, now=SEED_NOW)
    with open_catalog(sqlite_url) as catalog:
        rows = catalog.created_after((dt.datetime(1970, 1, 1, tzinfo=dt.UTC), sensors.NIL_ID), 10)
        assert sorted(r.id for r in rows) == sorted(seeded)
        assert [r.created_position for r in rows] == sorted(r.created_position for r in rows)
        assert catalog.created_after(rows[1].created_position, 2) == rows[2:4]
        assert catalog.ids_after(sorted(seeded)[2], 10) == sorted(seeded)[3:]
        with open_source(sqlite_url) as source:
            assert catalog.fingerprints(seeded[:2]) == {cid: source.fingerprint(cid) for cid in seeded[:2]}


def test_nightly_schedule_requests_exactly_the_changed_campaigns(source_url, instance, tmp_path, monkeypatch):
    monkeypatch.setattr(schedules, "FINGERPRINT_PAGE", 5)

    def resources() -> dict:
        return {"source": SourceDatabase(url=source_url), "destination": ExportDestination(url=str(tmp_path / "out"))}

    ids = [r[0] for r in sql(source_url, "SELECT id::text FROM campaigns ORDER BY id")]
    instance.add_dynamic_partitions("campaigns", ids)
    running, completed = (
        sql(source_url, "SELECT id::text FROM campaigns WHERE status = %s LIMIT 1", (s,))[0][0]
        for s in ("running", "completed")
    )
    for cid in (running, completed):
        assert dg.materialize(
            [campaign_export],
            selection=DEFAULT_EXPORT_KEYS,
            instance=instance,
            partition_key=cid,
            resources=resources(),
        ).success

    def nightly() -> dict[str, dg.RunRequest]:
        with dg.build_schedule_context(
            instance=instance,
            resources=resources(),
            scheduled_execution_time=dt.datetime(2026, 11, 22, 2, tzinfo=dt.UTC),
        ) as context:
            result = nightly_changed_campaigns(context)
        return {} if isinstance(result, dg.SkipReason) else by_campaign(result, ids)

    requests = nightly()
    assert set(requests) == set(ids) - {running, completed}  # never exported: changed; exported: unchanged
    # Batched in runs of consecutive partitions, split where an unchanged campaign lies between them.
    runs = list({id(r): r for r in requests.values()}.values())
    assert len(runs) == len(stretches(set(ids) - {running, completed}, ids)) < len(requests)
    for request in runs:
        if request.partition_key:
            cid = request.partition_key
            assert request.run_key == f"{cid}:nightly:2026-11-22"
            assert request.tags == {"campaign_id": cid, **name_tag(source_url, cid), "trigger": "schedule", **TAGS}
        else:
            first, last = request.tags[RANGE_START], request.tags[RANGE_END]
            assert request.run_key == f"{first}..{last}:nightly:2026-11-22"
            assert request.tags == {RANGE_START: first, RANGE_END: last, "trigger": "schedule", **TAGS}

    sql(
        source_url,
        "UPDATE contacts SET updated_at = now() WHERE id = (SELECT id FROM contacts WHERE campaign_id = %s LIMIT 1)",
        (running,),
    )
    sql(
        source_url,
        "DELETE FROM call_attempts WHERE id = (SELECT id FROM call_attempts WHERE campaign_id = %s "
        "ORDER BY coalesce(ended_at, started_at) LIMIT 1)",
        (completed,),
    )  # a count, not a time, changes
    assert set(nightly()) == set(ids)
    assert len({id(r) for r in nightly().values()}) == 1  # one range run: nothing lies between them now
    monkeypatch.setattr(schedules, "MAX_CAMPAIGNS_PER_NIGHT", 1)
    assert set(nightly()) == {running}  # the most recently active first

    assert dg.materialize(
        [campaign_export],
        selection=DEFAULT_EXPORT_KEYS,
        instance=instance,
        partition_key=running,
        resources=resources(),
    ).success
    monkeypatch.setattr(schedules, "MAX_CAMPAIGNS_PER_NIGHT", 100)
    assert set(nightly()) == set(ids) - {running}


def test_runs_that_dagster_creates_get_the_missing_export_tags():
    cid = "c1000000-0000-4000-8000-000000000001"

    def missing(tags: dict, formats=("csv", "parquet"), name=None) -> dict:
        return missing_export_tags(dg.DagsterRun(job_name="export_campaign", tags=tags), formats, name)

    launchpad = missing({"dagster/partition": cid}, ("csv", "xlsx"), name="Q3")
    assert launchpad == {"campaign_id": cid, "campaign_name": "Q3", "trigger": "manual", "formats": "csv,xlsx"}
    asset_backfill = missing({"dagster/partition": cid, "dagster/backfill": "abcdefgh"})
    assert asset_backfill == {"campaign_id": cid, "trigger": "backfill", **TAGS}  # no name known: no name tag
    range_run = missing(
        {
            "dagster/asset_partition_range_start": cid,
            "dagster/asset_partition_range_end": cid[:-1] + "9",
            "dagster/backfill": "abcdefgh",
        },
        name="Q3",
    )
    assert range_run == {"trigger": "backfill", **TAGS}  # many campaigns: no campaign_id, no name
    assert (
        missing(
            {
                "dagster/partition": cid,
                "dagster/schedule_name": "n",
                "trigger": "schedule",
                "campaign_id": cid,
                "campaign_name": "Q3",
            },
            name="other",
        )
        == TAGS
    )


@pytest.mark.parametrize(
    "name, tag",
    [
        ("Spring survey", "Spring survey"),
        ('Spring, "promo"\r\nline\t\x1b[31m', 'Spring, "promo" line [31m'),  # one line, no terminal escapes
        ("  \n ", None),  # no name, no tag
        ("x" * 63, "x" * 63),
        ("x" * 64, "x" * 62 + "…"),
        ("é" * 70, "é" * 62 + "…"),  # code points, not bytes
        ("x" * 61 + "e\u0301", "x" * 61 + "e\u0301"),  # 63 code points: kept whole
        ("x" * 61 + "e\u0301" + "y", "x" * 61 + "…"),  # the accent is never cut from its letter
        ("x" * 61 + "👍\U0001f3fd" + "y", "x" * 61 + "…"),  # nor a skin tone from its emoji
        ("x" * 58 + "👨\u200d👩\u200d👧" + "y", "x" * 58 + "…"),  # nor a family emoji taken apart
    ],
)
def test_the_name_tag_is_the_name_on_one_line_cut_whole_at_63_characters(name, tag):
    assert campaign_name_tag(name) == ({"campaign_name": tag} if tag else {})


def test_catalogs_give_the_names_of_existing_campaigns(source_url, sqlite_url):
    seed_source(sqlite_url, contacts=30, campaigns=3, seed=2, now=SEED_NOW)
    for url in (source_url, sqlite_url):
        with open_catalog(url) as catalog:
            ids = catalog.ids_after(None, 100)
            names = catalog.names([*ids[:2], str(uuid.uuid4()), "not-a-uuid"])
        with open_source(url) as source:
            assert names == {cid: source.campaign(cid).name for cid in ids[:2]}


def test_a_run_dagster_creates_tags_itself_with_the_campaigns_name(pg_url, tmp_path, monkeypatch):
    """A run launched with Dagster's tags only (as the launchpad does) adds ours when it runs."""
    from exports_pipeline.definitions import defs
    from exports_pipeline_tests import awkward

    awkward.load(pg_url)
    monkeypatch.setenv("EXPORTS_SOURCE_URL", pg_url)
    monkeypatch.setenv("EXPORTS_DESTINATION", str(tmp_path / "out"))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("campaigns", [awkward.C1])
        result = defs.resolve_job_def("export_campaign").execute_in_process(partition_key=awkward.C1, instance=instance)
        tags = instance.get_run_by_id(result.run_id).tags
    assert tags["campaign_name"] == 'Spring, "promo" line'
    assert (tags["trigger"], tags["campaign_id"], tags["formats"]) == ("manual", awkward.C1, "csv,parquet")


def test_run_history_retention_keeps_each_campaigns_latest_export(source_url, instance, tmp_path):
    from exports_pipeline.definitions import defs

    resources = {"source": SourceDatabase(url=source_url), "destination": ExportDestination(url=str(tmp_path / "out"))}
    cid = sql(source_url, "SELECT id::text FROM campaigns LIMIT 1")[0][0]
    unknown = str(uuid.uuid4())
    instance.add_dynamic_partitions("campaigns", [cid, unknown])
    runs = [
        dg.materialize(
            [campaign_export],
            selection=DEFAULT_EXPORT_KEYS,
            instance=instance,
            partition_key=key,
            resources=resources,
            raise_on_error=False,
        )
        for key in (cid, cid, unknown)
    ]
    assert [r.success for r in runs] == [True, True, False]

    purge = defs.resolve_job_def("run_history_retention").execute_in_process(
        instance=instance, run_config={"ops": {"purge_run_history": {"config": {"keep_days": 0}}}}
    )
    assert purge.output_for_node("purge_run_history") == 2
    remaining = {r.run_id for r in instance.get_runs()}
    assert runs[1].run_id in remaining and not remaining & {runs[0].run_id, runs[2].run_id}
    assert cid in instance.get_materialized_partitions(dg.AssetKey("campaign_results_csv"))
