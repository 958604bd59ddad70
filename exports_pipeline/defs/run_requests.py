"""Run requests for many campaigns: one run per stretch of consecutive campaign partitions.

A Dagster run covers one partition or one range of partitions (dynamic partitions are ordered by when
they were added); it cannot cover an arbitrary subset (dagster-io/dagster#32335, #15667). So the
schedule and the completion sensor, like Dagster's own asset backfills, group the campaigns they
export into stretches without gaps, at most CAMPAIGNS_PER_RUN each. A campaign between two others that
needs no export splits them into two runs, which keeps every partition's status in the UI exact.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import dagster as dg

from exports_pipeline.defs.assets import CAMPAIGNS_PER_RUN
from exports_pipeline.run_tags import export_run_tags, run_tags

RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


def stretches(campaign_ids: Sequence[str], order: Sequence[str], size: int = CAMPAIGNS_PER_RUN) -> list[list[str]]:
    """The campaigns (those in order) in partition order, cut wherever a partition between them is left
    out, and into pieces of at most size."""
    position = {key: i for i, key in enumerate(order)}
    runs: list[list[str]] = []
    for key in sorted({k for k in campaign_ids if k in position}, key=position.__getitem__):
        if runs and position[key] == position[runs[-1][-1]] + 1 and len(runs[-1]) < size:
            runs[-1].append(key)
        else:
            runs.append([key])
    return runs


def export_run_requests(
    campaign_ids: Sequence[str], order: Sequence[str], trigger: str, run_key: str, names: Mapping[str, str] = {}
) -> list[dg.RunRequest]:
    """One request per stretch: a single campaign with its campaign_id and name tags, several as a range.
    run_key is added to each run's first and last campaign ids, so that a request is never launched twice."""
    requests = []
    for run in stretches(campaign_ids, order):
        first, last = run[0], run[-1]
        if len(run) == 1:
            requests.append(
                dg.RunRequest(
                    run_key=f"{first}:{run_key}",
                    partition_key=first,
                    tags=export_run_tags(first, trigger, name=names.get(first)),
                )
            )
        else:
            requests.append(
                dg.RunRequest(
                    run_key=f"{first}..{last}:{run_key}",
                    tags={RANGE_START: first, RANGE_END: last, **run_tags(trigger)},
                )
            )
    return requests
