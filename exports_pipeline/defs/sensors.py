"""Sensors: a "campaigns" partition per source campaign, and an export of each campaign completion.

Both keep a small JSON cursor (a keyset watermark: timestamp and campaign id) and read the source
through the catalog's paginated queries, with caps per tick, so that a tick stays well inside
Dagster's sensor time limit (60 s by default) with tens of thousands of campaigns. Each tick also
re-reads a look-back window behind the watermark: PostgreSQL's now() is the start of a transaction,
so a row can commit minutes after rows with later timestamps that a previous tick already passed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from itertools import takewhile

import dagster as dg

from exports_pipeline.core.catalog import NIL_ID, CampaignRow, Position
from exports_pipeline.core.errors import ConfigurationError
from exports_pipeline.defs.jobs import export_campaign_job
from exports_pipeline.defs.partitions import campaigns_partitions
from exports_pipeline.defs.resources import SourceDatabase
from exports_pipeline.defs.run_requests import export_run_requests

INTERVAL_ENV = "EXPORTS_SENSOR_INTERVAL_SECONDS"
DEFAULT_SENSOR_INTERVAL_SECONDS = 30
LOOKBACK = timedelta(minutes=10)  # longer than any transaction that creates or completes a campaign
PAGE_SIZE = 1_000
WINDOW_ROWS = 10_000  # rows re-read behind the watermark per tick; a larger burst is left to the id scan
# The daemon checks every requested partition key on its own database connections (tens of ms per key
# on PostgreSQL), so a tick carries few keys: 50,000 campaigns register over about a hundred ticks.
ADDS_PER_TICK = 500
REMOVALS_PER_TICK = 500
SCAN_PER_TICK = 2_000  # campaign ids read by primary key per tick and compared with the registered partitions
RUNS_PER_TICK = 200  # completions read past the completion watermark per tick
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def sensor_interval_from_env(environ: Mapping[str, str]) -> int:
    """Dagster takes a sensor's interval when the definitions load, not from an EnvVar: 30 s unless
    EXPORTS_SENSOR_INTERVAL_SECONDS says otherwise (the tests use a few seconds)."""
    text = environ.get(INTERVAL_ENV, "").strip()
    if not text:
        return DEFAULT_SENSOR_INTERVAL_SECONDS
    if not text.isdigit() or int(text) < 1:
        raise ConfigurationError(f"{INTERVAL_ENV}={text!r} is not a positive whole number of seconds")
    return int(text)


def _encode(position: Position) -> list[str]:
    return [position[0].isoformat(), position[1]]


def _decode(value: list[str]) -> Position:
    return datetime.fromisoformat(value[0]), value[1]


def _walk(
    fetch: Callable[[Position, int], list[CampaignRow]],
    key: Callable[[CampaignRow], Position],
    start: Position,
    max_rows: int,
) -> Iterator[CampaignRow]:
    """Rows after start in keyset order, fetched a page at a time, at most max_rows of them."""
    position, remaining = start, max_rows
    while remaining > 0:
        size = min(PAGE_SIZE, remaining)
        page = fetch(position, size)
        yield from page
        if len(page) < size:
            return
        remaining -= size
        position = key(page[-1])


def _read_window_then_forward(
    fetch, key, watermark: Position, floor: datetime, forward_rows: int
) -> tuple[list[CampaignRow], Position]:
    """The rows of the look-back window (not before floor), then up to forward_rows rows past the
    watermark; returns them with the new watermark (the last row read, never behind the old one)."""
    window_start = (max(watermark[0] - LOOKBACK, floor), NIL_ID)
    rows = list(takewhile(lambda r: key(r) <= watermark, _walk(fetch, key, window_start, WINDOW_ROWS)))
    forward = list(_walk(fetch, key, watermark, forward_rows))
    return rows + forward, key(forward[-1]) if forward else watermark


def _reconcile(catalog, registered: set[str], room: int, scan_after: str | None):
    """One step of the scan by primary key: the campaigns of the next id range that are not registered
    (at most room), the registered keys of that range that the source lacks (at most REMOVALS_PER_TICK),
    and where the next step starts (None: from the first id again)."""
    ids = catalog.ids_after(scan_after, SCAN_PER_TICK)
    at_end = len(ids) < SCAN_PER_TICK
    missing = [cid for cid in ids if cid not in registered]
    if len(missing) > room:  # the range ends before the first campaign that does not fit
        ids, missing, at_end = ids[: ids.index(missing[room])], missing[:room], False
    if not ids and not at_end:
        return [], [], scan_after
    if scan_after is None and not ids:  # an empty campaigns table more likely means a wrong EXPORTS_SOURCE_URL
        return [], [], None
    upper = None if at_end else ids[-1]
    present = set(ids)
    removed = sorted(
        k for k in registered - present if (scan_after is None or k > scan_after) and (upper is None or k <= upper)
    )
    if len(removed) > REMOVALS_PER_TICK:
        removed, upper, at_end = removed[:REMOVALS_PER_TICK], removed[REMOVALS_PER_TICK - 1], False
    return missing, removed, None if at_end else upper


def _register_partitions(context: dg.SensorEvaluationContext, source: SourceDatabase) -> dg.SensorResult:
    """First tick: starts registering every existing campaign, ADDS_PER_TICK per tick.

    New campaigns come from the (created_at, id) watermark. A scan by primary key, SCAN_PER_TICK ids
    per tick and wrapping around, compares the source with the registered partitions: keys in the
    scanned id range that the source lacks are removed, campaigns missed by the watermark are added.
    """
    cursor = json.loads(context.cursor) if context.cursor else {}
    # Read before the source: a partition is only ever registered for a campaign already committed.
    registered = set(context.instance.get_dynamic_partitions(campaigns_partitions.name))
    with source.catalog() as catalog:
        watermark = _decode(cursor["created"]) if cursor.get("created") else (EPOCH, NIL_ID)
        rows, watermark = _read_window_then_forward(
            catalog.created_after, lambda r: r.created_position, watermark, EPOCH, ADDS_PER_TICK
        )
        added = [cid for cid in dict.fromkeys(r.id for r in rows) if cid not in registered][:ADDS_PER_TICK]
        missing, removed, scan = _reconcile(
            catalog, registered | set(added), ADDS_PER_TICK - len(added), cursor.get("scan")
        )
    added += missing
    requests = ([campaigns_partitions.build_add_request(added)] if added else []) + (
        [campaigns_partitions.build_delete_request(removed)] if removed else []
    )
    new_cursor = json.dumps({"created": _encode(watermark), "scan": scan})
    if not requests:
        return dg.SensorResult(skip_reason="partitions match the source campaigns", cursor=new_cursor)
    context.log.info(
        f"adding {len(added)} campaign partitions, removing {len(removed)} (campaigns deleted "
        f"from the source): {removed[:20]}"
    )
    return dg.SensorResult(dynamic_partitions_requests=requests, cursor=new_cursor)


def _export_completions(context: dg.SensorEvaluationContext, source: SourceDatabase) -> dg.SensorResult:
    """Exports each completion once, the completions of a tick together in runs of consecutive partitions
    (run_requests.py); completing again exports again.

    Completions are read by (updated_at, id), the time the status changed, not by completed_at,
    which an application may set to an earlier time (the last call). Each completion is known by
    "<campaign id>:<completed_at>"; the cursor remembers those of the look-back window, so that a
    completion read again there is not exported twice. First tick: the watermark starts at the
    database's current time and no run is requested, so that enabling the sensor does not launch
    thousands of runs for old completions (the nightly schedule exports never-exported campaigns,
    capped per night). The campaign_partitions_sensor registers every existing campaign.
    """
    with source.catalog() as catalog:
        if not context.cursor:
            now = catalog.now()
            return dg.SensorResult(
                skip_reason="first tick: completions from now on are exported",
                cursor=json.dumps({"since": now.isoformat(), "after": _encode((now, NIL_ID))}),
            )
        cursor = json.loads(context.cursor)
        rows, watermark = _read_window_then_forward(
            catalog.completed_after,
            lambda r: r.updated_position,
            _decode(cursor["after"]),
            datetime.fromisoformat(cursor["since"]),
            RUNS_PER_TICK,
        )
    seen = {
        key: at for key, at in cursor.get("seen", {}).items() if datetime.fromisoformat(at) >= watermark[0] - LOOKBACK
    }
    completions = {_completion(r): r for r in rows if _completion(r) not in seen}
    new_cursor = json.dumps(
        {
            "since": cursor["since"],
            "after": _encode(watermark),
            "seen": seen | {key: r.updated_at.isoformat() for key, r in completions.items()},
        }
    )
    if not completions:
        return dg.SensorResult(skip_reason="no campaign completed", cursor=new_cursor)
    # A campaign created and completed between two ticks of the partition sensor is registered here, last.
    order = context.instance.get_dynamic_partitions(campaigns_partitions.name)
    unregistered = sorted({r.id for r in completions.values()} - set(order))
    newest = max(r.updated_at for r in completions.values()).isoformat()
    return dg.SensorResult(
        run_requests=export_run_requests(
            [r.id for r in completions.values()],
            [*order, *unregistered],
            "sensor",
            f"completed:{newest}",
            {r.id: r.name for r in completions.values()},
        ),
        dynamic_partitions_requests=[campaigns_partitions.build_add_request(unregistered)] if unregistered else [],
        cursor=new_cursor,
    )


def _completion(row: CampaignRow) -> str:
    return f"{row.id}:{(row.completed_at or row.updated_at).isoformat()}"


def campaign_sensors(interval_seconds: int = DEFAULT_SENSOR_INTERVAL_SECONDS) -> list[dg.SensorDefinition]:
    """The partition and completion sensors, ticking every interval_seconds."""

    @dg.sensor(
        minimum_interval_seconds=interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Adds a 'campaigns' partition for every campaign of the source and removes the partitions "
        "of campaigns deleted from it.",
    )
    def campaign_partitions_sensor(context: dg.SensorEvaluationContext, source: SourceDatabase) -> dg.SensorResult:
        return _register_partitions(context, source)

    @dg.sensor(
        job=export_campaign_job,
        minimum_interval_seconds=interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Exports a campaign when its status becomes completed (a tick's completions together).",
    )
    def campaign_completed_sensor(context: dg.SensorEvaluationContext, source: SourceDatabase) -> dg.SensorResult:
        return _export_completions(context, source)

    return [campaign_partitions_sensor, campaign_completed_sensor]
