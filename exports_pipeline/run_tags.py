"""Export run tags (campaign_id, campaign_name, trigger, formats) on every export run, whoever launched it.

Sensors, the schedule and the command line tag their runs themselves. Runs that Dagster creates
(launchpad, job and asset backfills) carry only Dagster's own tags (dagster/partition,
dagster/backfill...): Dagster 1.13 has no run-tag policy, and a job's tags are not applied to asset
backfill runs. So the export adds the tags its run lacks when it starts (and the campaign's name once
it has read the campaign), through the instance's public add_run_tags: the Runs page filters on them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import dagster as dg

from exports_pipeline.core.options import DEFAULT_FORMATS
from exports_pipeline.core.text import shorten, single_line

EXPORT_JOB = "export_campaign"
NAME_TAG = "campaign_name"
# Run tags accept any string, but Dagster means tags as short labels (its strict tags stop at 63
# characters) and indexes (key, value) in its run storage, where PostgreSQL refuses entries over 2.7 kB.
NAME_TAG_MAX_CHARS = 63


def campaign_name_tag(name: str | None) -> dict[str, str]:
    """The name on one line, cut to NAME_TAG_MAX_CHARS with an ellipsis; no tag for an empty name."""
    value = shorten(single_line(name or ""), NAME_TAG_MAX_CHARS)
    return {NAME_TAG: value} if value else {}


def run_tags(trigger: str, formats: Sequence[str] = DEFAULT_FORMATS) -> dict[str, str]:
    """The tags every export run carries, also a run of many campaigns (filter on them)."""
    return {"trigger": trigger, "formats": ",".join(formats)}


def export_run_tags(
    campaign_id: str, trigger: str, formats: Sequence[str] = DEFAULT_FORMATS, name: str | None = None
) -> dict[str, str]:
    """The tags of a run of one campaign, so that run history is the campaign's export history."""
    return {"campaign_id": campaign_id, **campaign_name_tag(name), **run_tags(trigger, formats)}


def trigger_of(tags: Mapping[str, str]) -> str:
    """What launched a run, from the tags Dagster sets: a backfill, a schedule, a sensor, else a person."""
    if "dagster/backfill" in tags:
        return "backfill"
    if "dagster/schedule_name" in tags:
        return "schedule"
    return "sensor" if "dagster/sensor_name" in tags else "manual"


def missing_export_tags(run: dg.DagsterRun, formats: Sequence[str], name: str | None = None) -> dict[str, str]:
    """The export tags this run lacks: trigger and formats on every export run; campaign_id, and
    campaign_name when the name is known, on a run of one campaign (a range run has no single one)."""
    partition, trigger = run.tags.get("dagster/partition"), trigger_of(run.tags)
    tags = run_tags(trigger, formats)
    if partition:
        tags = export_run_tags(partition, trigger, formats, name if NAME_TAG not in run.tags else None)
    return {k: v for k, v in tags.items() if k not in run.tags}
