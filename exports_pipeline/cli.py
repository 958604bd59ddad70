"""The `exports-pipeline` command: demo, export, seed (SPEC section 5).

Exports run through Dagster (the export_campaign job, in process, on the instance in $DAGSTER_HOME,
./.dagster_home by default), so the command line and the UI share one run history.
"""
from __future__ import annotations

import argparse
import fcntl
import os
import sys
from contextlib import contextmanager
from pathlib import Path

from exports_pipeline.core.errors import CampaignNotFoundError, ExportError
from exports_pipeline.core.ids import parse_campaign_id
from exports_pipeline.core.options import CONTACT_STATES, DEFAULT_BATCH_SIZE, DEFAULT_FORMATS, FORMATS
from exports_pipeline.core.source import open_source
from exports_pipeline.core.sourceurl import (
    DESTINATION_ENV,
    SOURCE_ENV,
    Locations,
    demo_locations,
    resolve_locations,
    sqlite_path,
)

DEMO_CONTACTS = 600
DEMO_CAMPAIGNS = 4


@contextmanager
def _instance_setup_lock():
    """Commands started at once on a new $DAGSTER_HOME would all create its SQLite tables; one at a time
    sets the instance up and registers its partition (the runs themselves go side by side)."""
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(Path(".dagster_home").resolve())))
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".exports-pipeline.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _instance():
    """The instance in $DAGSTER_HOME. Unset: the embedded default ./.dagster_home, whose dagster.yaml is
    written here (the top-level dagster.yaml is the production instance, in PostgreSQL)."""
    import dagster as dg

    home = Path(os.environ["DAGSTER_HOME"])
    config = home / "dagster.yaml"
    if home == Path(".dagster_home").resolve() and not config.exists():
        config.write_text(
            "# The embedded default instance: run history in this folder (SQLite).\n"
            "run_coordinator:  # Dagster's run queue, adding the export tags to runs launched from the UI\n"
            "  module: exports_pipeline.run_tags\n"
            "  class: ExportRunCoordinator\n"
            "concurrency:\n"
            "  pools:\n"
            "    default_limit: 2  # simultaneous reads of the source database (pool \"source_database\")\n")
    return dg.DagsterInstance.get()


def _use_locations(locations: Locations) -> None:
    """The Dagster resources read these variables (dg.EnvVar) when the run starts."""
    os.environ[SOURCE_ENV] = locations.source_url
    os.environ[DESTINATION_ENV] = locations.destination


def run_config_for(args: argparse.Namespace) -> dict:
    config = {"formats": args.format or list(DEFAULT_FORMATS), "bom": not args.no_bom,
              "formula_guard": not args.no_formula_guard, "batch_size": args.batch_size}
    if args.states:
        config["states"] = args.states
    if args.updated_from:
        config["updated_from"] = args.updated_from
    if args.updated_to:
        config["updated_to"] = args.updated_to
    if args.columns:
        config["columns"] = args.columns
    return config


def export_through_dagster(locations: Locations, campaign_id: str, config: dict, trigger: str) -> list[str]:
    """Validate the id, register its partition, run the export job; return the written locations."""
    from exports_pipeline.definitions import defs
    from exports_pipeline.defs.config import ExportRunConfig
    from exports_pipeline.defs.partitions import campaigns_partitions
    from exports_pipeline.run_tags import export_run_tags

    cid = parse_campaign_id(campaign_id)
    ExportRunConfig(**config).to_options()  # bad options fail here, before any work
    with open_source(locations.source_url) as source:
        campaign = source.campaign(cid)
    if campaign is None:
        raise CampaignNotFoundError(f"campaign {cid} is not in the source")
    _use_locations(locations)
    with _instance_setup_lock():
        instance = _instance()
        if not instance.has_dynamic_partition(campaigns_partitions.name, cid):
            instance.add_dynamic_partitions(campaigns_partitions.name, [cid])
    result = defs.resolve_job_def("export_campaign").execute_in_process(
        run_config={"ops": {"campaign_export": {"config": config}}}, instance=instance, partition_key=cid,
        tags=export_run_tags(cid, trigger, config["formats"], campaign.name),
        raise_on_error=False)
    if not result.success:
        failure = result.failure_data_for_node("campaign_export")
        error = failure.error if failure else None
        while error is not None and error.cause is not None:  # retries ran out: what the export raised last
            error = error.cause
        if error is None:
            raise ExportError("the run failed")
        kind, _, text = error.message.strip().partition(": ")
        raise ExportError(text if kind.endswith(error.cls_name) else error.message.strip())
    return [str(m.metadata["location"].value) for m in result.asset_materializations_for_node("campaign_export")]


def cmd_export(args: argparse.Namespace) -> int:
    locations = resolve_locations()
    for location in export_through_dagster(locations, args.campaign_id, run_config_for(args), "manual"):
        print(location)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from exports_pipeline.core.seed import seed_source

    locations = demo_locations(args.dir)
    source_path = sqlite_path(locations.source_url)
    if not source_path.exists():
        print(f"creating the demo source {source_path}")
        seed_source(locations.source_url, contacts=DEMO_CONTACTS, campaigns=DEMO_CAMPAIGNS, seed=1)
    with open_source(locations.source_url) as source:
        campaign_ids = source.campaign_ids()
    config = {"formats": list(DEFAULT_FORMATS)}
    for cid in campaign_ids:
        for location in export_through_dagster(locations, cid, config, "manual"):
            print(location)
    print(f"exported {len(campaign_ids)} demo campaigns to {locations.destination}")
    return 0


def cmd_link(args: argparse.Namespace) -> int:
    """Made here, not in a Dagster run: a link is a read of latest.json plus a local signature."""
    from exports_pipeline.core.destinations import open_destination
    from exports_pipeline.core.links import latest_link

    print(latest_link(open_destination(resolve_locations().destination), args.campaign_id, args.format))
    return 0


def cmd_seed(args: argparse.Namespace) -> int:
    from exports_pipeline.core.seed import seed_source

    for cid in seed_source(args.url, contacts=args.contacts, campaigns=args.campaigns, seed=args.seed):
        print(cid)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="exports-pipeline", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="Create the embedded demo source and export every demo campaign.")
    demo.add_argument("--dir", default=os.environ.get("EXPORTS_DEMO_DIR", "demo"),
                      help="Folder of the demo source and exports (default ./demo).")
    demo.set_defaults(func=cmd_demo)

    export = commands.add_parser("export", help="Export one campaign through Dagster and print the files written.")
    export.add_argument("campaign_id", help="The campaign's UUID.")
    export.add_argument("--format", action="append", choices=FORMATS,
                        help="A file format to write; repeat for several (default: csv and parquet).")
    export.add_argument("--states", nargs="+", metavar="STATE",
                        help=f"Only contacts in these states ({', '.join(CONTACT_STATES)}, or 'terminal').")
    export.add_argument("--updated-from", help="Only contacts updated at or after this ISO 8601 time.")
    export.add_argument("--updated-to", help="Only contacts updated before this ISO 8601 time.")
    export.add_argument("--columns", nargs="+", metavar="COLUMN", help="Only these columns (standard order kept).")
    export.add_argument("--no-bom", action="store_true", help="Write the CSV without a UTF-8 byte-order mark.")
    export.add_argument("--no-formula-guard", action="store_true",
                        help="Do not prefix cells starting with = + - @ TAB CR LF with an apostrophe.")
    export.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                        help=f"Contacts per batch (default {DEFAULT_BATCH_SIZE}); never changes the output.")
    export.set_defaults(func=cmd_export)

    link = commands.add_parser("link", help="Print a download link to the latest export of a campaign "
                                            "(presigned S3 URL, or the file path for a local destination).")
    link.add_argument("campaign_id", help="The campaign's UUID.")
    link.add_argument("--format", choices=FORMATS, default="csv", help="Which file of the snapshot (default csv).")
    link.set_defaults(func=cmd_link)

    seed = commands.add_parser("seed", help="Generate a synthetic source database (PostgreSQL or SQLite).")
    seed.add_argument("--url", required=True, help="postgresql://... or sqlite:///path")
    seed.add_argument("--contacts", type=int, required=True, help="Contacts in total.")
    seed.add_argument("--campaigns", type=int, default=1, help="Campaigns (default 1).")
    seed.add_argument("--seed", type=int, default=0, help="Random seed (default 0).")
    seed.set_defaults(func=cmd_seed)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ExportError as exc:
        campaign = getattr(args, "campaign_id", None)
        prefix = "exports-pipeline: " + (f"campaign {campaign}: " if campaign and campaign not in str(exc) else "")
        print(prefix + str(exc), file=sys.stderr)
        return 1


def entry_point() -> None:
    """The installed command. Everything is written, closed and flushed when main returns; exiting
    without the interpreter's teardown (freeing Dagster's and polars' modules one object at a time)
    saves about a second of every command."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry_point()
