"""The load test's measure of the export's own CPU: the export core of many campaigns in one process.

Run by load.py (never imported by the package). For each campaign id read from --ids (one a line) it does
what the export asset does, without Dagster: the campaigns taken as the runs of a backfill take them
(CAMPAIGNS_PER_RUN consecutive ones), the small ones of each read together from one source snapshot
(core/reading.py), then for each campaign `stage_export` (transform, local files, blocking checks) and
`publish_export` to a LocalDestination. It prints
one JSON object: the campaigns done, the process's CPU seconds spent on them (user + system, all threads;
the imports before the first campaign are left out, as a run worker pays them once per run) and the wall
time.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
import uuid
from pathlib import Path

from exports_pipeline.core.destinations import LocalDestination
from exports_pipeline.core.export import publish_export, stage_export
from exports_pipeline.core.options import DEFAULT_FORMATS, ExportOptions
from exports_pipeline.core.reading import campaigns_in_read_order
from exports_pipeline.defs.assets import CAMPAIGNS_PER_RUN


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source-url", required=True)
    parser.add_argument("--ids", type=Path, required=True, help="campaign ids, one a line")
    parser.add_argument("--dest", type=Path, required=True, help="LocalDestination folder")
    args = parser.parse_args()
    campaign_ids = args.ids.read_text().split()
    options, destination = ExportOptions(formats=tuple(DEFAULT_FORMATS)), LocalDestination(args.dest)
    run_id = uuid.uuid4().hex  # one run exporting them all, as a run worker does
    cpu, wall = cpu_seconds(), time.perf_counter()
    rows = 0
    for start in range(0, len(campaign_ids), CAMPAIGNS_PER_RUN):
        run = campaign_ids[start : start + CAMPAIGNS_PER_RUN]
        for campaign_id, shared_read in campaigns_in_read_order(args.source_url, run, options):
            with stage_export(args.source_url, campaign_id, options, run_id, shared_read=shared_read) as staged:
                publish_export(staged, destination)
                rows += staged.rows
    print(
        json.dumps(
            {
                "campaigns": len(campaign_ids),
                "rows": rows,
                "cpu_s": round(cpu_seconds() - cpu, 3),
                "wall_s": round(time.perf_counter() - wall, 3),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
