"""The `exports-pipeline` command: demo, export, campaigns, link, seed (SPEC section 5).

Exports run through Dagster (the export_campaign job, in process, on the instance in $DAGSTER_HOME,
./.dagster_home by default), so the command line and the UI share one run history. Output for a
person (a summary per campaign, reported checks, a progress bar on a terminal) goes to stderr; the
written locations go to stdout, one a line, for scripts. Dagster's event lines go to
$DAGSTER_HOME/exports-pipeline.log, and to stderr as well with --verbose.
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from exports_pipeline import __version__
from exports_pipeline.core.catalog import CAMPAIGN_STATUSES, SearchPage, open_catalog
from exports_pipeline.core.destinations import Destination, endpoint_variable, open_destination
from exports_pipeline.core.errors import CampaignNotFoundError, ExportError
from exports_pipeline.core.ids import parse_campaign_id
from exports_pipeline.core.options import CONTACT_STATES, DEFAULT_BATCH_SIZE, DEFAULT_FORMATS, FORMATS
from exports_pipeline.core.publish import read_latest, snapshot_folder
from exports_pipeline.core.source import open_source
from exports_pipeline.core.sourceurl import DEMO_DIR_ENV, Locations, demo_locations, resolve_locations, sqlite_path
from exports_pipeline.core.text import char_width, shorten, single_line
from exports_pipeline.terminal import ProgressBar, table

DEMO_CONTACTS = 600
DEMO_CAMPAIGNS = 4
EVENT_LOG = "exports-pipeline.log"  # in $DAGSTER_HOME
EVENT_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"  # Dagster's console format
NAME_COLUMNS = 40  # a campaign name's room in summaries and tables
LIST_LIMIT = 50
LATEST_READERS = 16  # latest.json reads in flight (an S3 round trip each)
EMBEDDED_INSTANCE = """\
# The embedded default instance: run history in this folder (SQLite).
concurrency:
  pools:
    default_limit: 2  # simultaneous reads of the source database (pool "source_database")
telemetry:
  enabled: false  # and no telemetry notice in the middle of the command's output
"""


def _dagster_home() -> Path:
    """$DAGSTER_HOME, set to ./.dagster_home (absolute) when unset: the command's one write to its
    environment, because DagsterInstance.get(), Dagster's public way to open an instance from a folder,
    reads the folder from that variable only."""
    return Path(os.environ.setdefault("DAGSTER_HOME", str(Path(".dagster_home").resolve())))


@contextmanager
def _instance_setup_lock():
    """Commands started at once on a new $DAGSTER_HOME would all create its SQLite tables; one at a time
    sets the instance up and registers its partition (the runs themselves go side by side)."""
    home = _dagster_home()
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".exports-pipeline.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _instance():
    """The instance in $DAGSTER_HOME. Unset: the embedded default ./.dagster_home, whose dagster.yaml is
    written here (the top-level dagster.yaml is the production instance, in PostgreSQL)."""
    import dagster as dg

    home = _dagster_home()
    config = home / "dagster.yaml"
    if home == Path(".dagster_home").resolve() and not config.exists():
        config.write_text(EMBEDDED_INSTANCE)
    return dg.DagsterInstance.get()


def run_resources(locations: Locations) -> dict:
    """The export runs' resources. In production, those of the code location, from the variables the
    command was started with (dg.EnvVar: the source URL's password stays out of the run history); for
    the embedded demo, its SQLite file and folder, which hold no secret, given as they are."""
    from exports_pipeline.defs.resources import ExportDestination, SourceDatabase, resources_from_env

    resources = resources_from_env(os.environ)
    if locations.is_demo:
        resources |= {
            "source": SourceDatabase(url=locations.source_url),
            "destination": ExportDestination(url=locations.destination),
        }
    return resources


def command_destination(locations: Locations) -> Destination:
    """The destination for the command's own reads (listings, links), at the S3-compatible endpoint the
    AWS variables name, as the runs' resources do."""
    endpoint = endpoint_variable(os.environ)
    return open_destination(locations.destination, endpoint_url=os.environ[endpoint].strip() if endpoint else None)


def run_config_for(args: argparse.Namespace) -> dict:
    config = {"bom": not args.no_bom, "formula_guard": not args.no_formula_guard, "batch_size": args.batch_size}
    if args.states:
        config["states"] = args.states
    if args.updated_from:
        config["updated_from"] = args.updated_from
    if args.updated_to:
        config["updated_to"] = args.updated_to
    if args.columns:
        config["columns"] = args.columns
    return config


@dataclass(frozen=True)
class ExportSummary:
    """What a person reads about one exported campaign."""

    name: str
    rows: int | None
    locations: list[str]
    seconds: float
    notes: list[str]  # reported checks that did not pass, one line each

    def lines(self) -> list[str]:
        rows = f"{self.rows:,} rows, " if self.rows is not None else ""
        files = f"{len(self.locations)} file{'' if len(self.locations) == 1 else 's'}"
        head = f"{shorten(single_line(self.name), NAME_COLUMNS, char_width)}: {rows}{files}, {self.seconds:.1f} s"
        return [head, *(f"  {note}" for note in self.notes)]


class RunOutput:
    """Where a command's export runs report: Dagster's event lines to $DAGSTER_HOME/exports-pipeline.log
    (and stderr with --verbose), a progress bar while a campaign exports when stderr is a terminal, then
    one summary per campaign. Use as a context manager: on exit it says where the event lines are."""

    def __init__(self, verbose: bool):
        self.verbose = verbose
        self.log_path = _dagster_home() / EVENT_LOG
        self.progress: ProgressBar | None = None
        self._handlers: list[logging.Handler] = [logging.FileHandler(self.log_path, encoding="utf-8", delay=True)]
        if verbose:
            self._handlers.append(logging.StreamHandler(sys.stderr))
        elif sys.stderr.isatty():
            # A copy of the terminal: while a step runs, Dagster captures stderr into its compute log. Closed on exit.
            terminal = open(os.dup(sys.stderr.fileno()), "w", encoding="utf-8", errors="replace")  # noqa: SIM115
            self.progress = ProgressBar(terminal)
            self._handlers.append(self.progress)
        for handler in self._handlers:
            handler.setFormatter(logging.Formatter(EVENT_FORMAT, "%Y-%m-%d %H:%M:%S %z"))
        self._definitions = None

    def __enter__(self) -> RunOutput:
        return self

    def __exit__(self, *exc) -> None:
        for handler in self._handlers:
            handler.close()
        if self.progress:
            self.progress.stream.close()
        if not self.verbose and self.log_path.exists():
            print(f"Dagster's event lines: {self.log_path} (--verbose shows them here)", file=sys.stderr)

    def job(self, formats: tuple[str, ...], locations: Locations):
        """The job that writes these files and the assets it selects (None: the job's own), with Dagster's
        console logger replaced by the command's (the definitions are made once, when needed)."""
        if self._definitions is None:
            self._definitions = _definitions(self._handlers, run_resources(locations))
        return _export_job(self._definitions, formats)

    def showing(self, name: str):
        return self.progress.showing(single_line(name)) if self.progress else nullcontext()

    @staticmethod
    def report(summary: ExportSummary) -> None:
        print("\n".join(summary.lines()), file=sys.stderr, flush=True)
        print("\n".join(summary.locations), flush=True)


def _definitions(handlers: list[logging.Handler], resources: dict):
    """The project's definitions with these resources and a "console" logger that sends Dagster's event lines
    to these handlers. Runs name it in their config as `console`, which Dagster's own console logger also
    accepts: a command-line run re-executed from the UI logs as any other run."""
    import dagster as dg

    from exports_pipeline.definitions import project_definitions

    @dg.logger(description="The command line's event lines: its log file, --verbose, the progress bar.")
    def command_line_events(_context) -> logging.Logger:
        events = logging.Logger("dagster", logging.DEBUG)
        for handler in handlers:
            events.addHandler(handler)
        return events

    return dg.Definitions.merge(
        project_definitions(resources), dg.Definitions(loggers={"console": command_line_events})
    )


def _export_job(definitions, formats: tuple[str, ...]):
    """The export job for the default files; for others, Dagster's job of every asset with the formats'
    assets selected: --format maps to assets exactly as a selection in the UI does."""
    from exports_pipeline.defs.assets import DEFAULT_EXPORT_KEYS, FORMAT_KEYS, STATS_KEY
    from exports_pipeline.run_tags import EXPORT_JOB

    selection = [FORMAT_KEYS[f] for f in formats] + [STATS_KEY]
    if set(selection) == set(DEFAULT_EXPORT_KEYS):
        return definitions.resolve_job_def(EXPORT_JOB), None
    return definitions.resolve_implicit_global_asset_job_def(), selection


def _export_node() -> str:
    """The export multi_asset's op: the node a run's failure, materializations and config belong to."""
    from exports_pipeline.defs.assets import campaign_export

    return campaign_export.op.name


def _failure_message(result) -> str:
    """What the export raised last (after its retries), without Dagster's wrapping."""
    failure = result.failure_data_for_node(_export_node())
    error = failure.error if failure else None
    while error is not None and error.cause is not None:
        error = error.cause
    if error is None:
        return "the run failed"
    kind, _, text = error.message.strip().partition(": ")
    return text if kind.endswith(error.cls_name) else error.message.strip()


def _summary(name: str, result, seconds: float) -> ExportSummary:
    materializations = result.asset_materializations_for_node(_export_node())
    rows = [m.metadata["dagster/row_count"].value for m in materializations if "dagster/row_count" in m.metadata]
    notes = [e.description for e in result.get_asset_check_evaluations() if not e.passed and e.description]
    return ExportSummary(
        name, max(rows, default=None), [str(m.metadata["location"].value) for m in materializations], seconds, notes
    )


def export_through_dagster(
    locations: Locations,
    campaign_id: str,
    config: dict,
    trigger: str,
    output: RunOutput,
    formats: tuple[str, ...] = DEFAULT_FORMATS,
) -> ExportSummary:
    """Validate the id, register its partition, run the export job; return what it wrote."""
    from exports_pipeline.defs.config import ExportRunConfig
    from exports_pipeline.defs.partitions import campaigns_partitions
    from exports_pipeline.run_tags import export_run_tags

    cid = parse_campaign_id(campaign_id)
    ExportRunConfig(**config).to_options(formats)  # bad options fail here, before any work
    with open_source(locations.source_url) as source:
        campaign = source.campaign(cid)
    if campaign is None:
        raise CampaignNotFoundError(f"campaign {cid} is not in the source")
    with _instance_setup_lock():
        instance = _instance()
        if not instance.has_dynamic_partition(campaigns_partitions.name, cid):
            instance.add_dynamic_partitions(campaigns_partitions.name, [cid])
    (job, selection), started = output.job(formats, locations), time.monotonic()  # the run's time, not the imports'
    with output.showing(campaign.name):
        result = job.execute_in_process(
            run_config={"ops": {_export_node(): {"config": config}}, "loggers": {"console": {}}},
            instance=instance,
            partition_key=cid,
            tags=export_run_tags(cid, trigger, formats, campaign.name),
            asset_selection=selection,
            raise_on_error=False,
        )
    if not result.success:
        raise ExportError(_failure_message(result))
    return _summary(campaign.name, result, time.monotonic() - started)


def cmd_export(args: argparse.Namespace) -> int:
    locations = resolve_locations(os.environ)
    with RunOutput(args.verbose) as output:
        formats = tuple(f for f in FORMATS if f in (args.format or DEFAULT_FORMATS))
        output.report(
            export_through_dagster(locations, args.campaign_id, run_config_for(args), "manual", output, formats)
        )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from exports_pipeline.core.seed import seed_source

    locations = demo_locations(args.dir)
    source_path = sqlite_path(locations.source_url)
    if not source_path.exists():
        print(f"creating the demo source {source_path}", file=sys.stderr)
        seed_source(locations.source_url, contacts=DEMO_CONTACTS, campaigns=DEMO_CAMPAIGNS, seed=1)
    with open_source(locations.source_url) as source:
        campaign_ids = source.campaign_ids()
    with RunOutput(args.verbose) as output:
        for cid in campaign_ids:
            output.report(export_through_dagster(locations, cid, {}, "manual", output))
        print(f"exported {len(campaign_ids)} demo campaigns to {locations.destination}")
    return 0


def _latest_snapshots(destination: Destination, campaign_ids: list[str]) -> list[dict | None]:
    """latest.json of each campaign (None: never exported), read side by side."""
    with ThreadPoolExecutor(LATEST_READERS) as pool:
        return list(pool.map(lambda cid: read_latest(destination, cid), campaign_ids))


def campaign_lines(page: SearchPage, latest: list[dict | None], destination: Destination) -> list[str]:
    """The listing as a table, then how many campaigns match."""
    rows = [
        [
            c.id,
            shorten(single_line(c.name), NAME_COLUMNS, char_width),
            c.status,
            f"{c.contacts:,}",
            pointer["snapshot"] if pointer else "-",
            destination.location(snapshot_folder(c.id, pointer["snapshot"])) if pointer else "-",
        ]
        for c, pointer in zip(page.campaigns, latest, strict=True)
    ]
    shown, total = len(rows), page.total
    if not total:
        return ["no campaign matches"]
    footer = (
        f"{total:,} campaign{'' if total == 1 else 's'}"
        if shown == total
        else f"{shown:,} of {total:,} campaigns shown: narrow with --search or --status, or raise --limit"
    )
    return [*table(["ID", "NAME", "STATUS", "CONTACTS", "LATEST SNAPSHOT", "LOCATION"], rows, frozenset({3})), footer]


def cmd_campaigns(args: argparse.Namespace) -> int:
    """Read here, not in a Dagster run: a page of the source's campaigns and their latest.json."""
    locations = resolve_locations(os.environ)
    with open_catalog(locations.source_url) as catalog:
        page = catalog.search(args.search, args.status, args.limit)
    destination = command_destination(locations)
    latest = _latest_snapshots(destination, [c.id for c in page.campaigns])
    print("\n".join(campaign_lines(page, latest, destination)))
    return 0


def cmd_link(args: argparse.Namespace) -> int:
    """Made here, not in a Dagster run: a link is a read of latest.json plus a local signature."""
    from exports_pipeline.core.links import DEFAULT_LINK_EXPIRY_SECONDS, LINK_EXPIRY_ENV, latest_link, whole_seconds

    expiry = os.environ.get(LINK_EXPIRY_ENV, "").strip()
    seconds = whole_seconds(expiry, LINK_EXPIRY_ENV) if expiry else DEFAULT_LINK_EXPIRY_SECONDS
    print(latest_link(command_destination(resolve_locations(os.environ)), args.campaign_id, args.format, seconds))
    return 0


def cmd_seed(args: argparse.Namespace) -> int:
    from exports_pipeline.core.seed import mixed_sizes, seed_source

    if (args.contacts is None) == (args.size_mix is None):
        raise SystemExit("exports-pipeline seed: give --contacts or --size-mix, one of them")
    try:
        sizes = mixed_sizes(args.campaigns, args.size_mix, args.seed) if args.size_mix else None
    except ValueError as exc:
        raise SystemExit(f"exports-pipeline seed: --size-mix: {exc}") from None
    contacts = sum(sizes) if sizes else args.contacts
    for cid in seed_source(args.url, contacts=contacts, campaigns=args.campaigns, seed=args.seed, sizes=sizes):
        print(cid)
    return 0


def _size_mix(text: str) -> list[tuple[float, int, int]]:
    """'90:1-40,9:100-400,1:2000-4000' -> [(90.0, 1, 40), (9.0, 100, 400), (1.0, 2000, 4000)]."""
    try:
        bands = [band.split(":") for band in text.split(",")]
        mix = [(float(share), *map(int, sizes.split("-"))) for share, sizes in bands]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected PERCENT:FEWEST-MOST,... such as 90:1-40,10:100-400"
        ) from None
    if any(len(band) != 3 for band in mix):
        raise argparse.ArgumentTypeError(f"{text!r}: each band is PERCENT:FEWEST-MOST")
    return mix


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive whole number")
    return value


def _command(commands, name: str, summary: str, func, parents=(), details: str = "") -> argparse.ArgumentParser:
    """A subcommand whose one-line summary shows in `exports-pipeline --help` and heads its own --help."""
    command = commands.add_parser(name, help=summary, description=f"{summary} {details}".strip(), parents=list(parents))
    command.set_defaults(func=func)
    return command


def _add_export(commands, runs: argparse.ArgumentParser) -> None:
    """`export` and its options, the run options of docs/contract.md (section 3, "Run options")."""
    export = _command(
        commands, "export", "Export one campaign through Dagster; print the files written.", cmd_export, [runs]
    )
    export.add_argument("campaign_id", help="The campaign's UUID.")
    export.add_argument(
        "--format",
        action="append",
        choices=FORMATS,
        help="A file format to write; repeat for several (default: csv and parquet).",
    )
    export.add_argument(
        "--states",
        nargs="+",
        metavar="STATE",
        help=f"Only contacts in these states ({', '.join(CONTACT_STATES)}, or 'terminal').",
    )
    export.add_argument("--updated-from", help="Only contacts updated at or after this ISO 8601 time.")
    export.add_argument("--updated-to", help="Only contacts updated before this ISO 8601 time.")
    export.add_argument("--columns", nargs="+", metavar="COLUMN", help="Only these columns (standard order kept).")
    export.add_argument("--no-bom", action="store_true", help="Write the CSV without a UTF-8 byte-order mark.")
    export.add_argument(
        "--no-formula-guard",
        action="store_true",
        help="Do not prefix cells starting with = + - @ TAB CR LF with an apostrophe.",
    )
    export.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help=f"Contacts per batch (default {DEFAULT_BATCH_SIZE}); never changes the output.",
    )


def _add_seed(commands) -> None:
    """`seed`: synthetic sources for the demo, the tests and the benchmarks."""
    seed = _command(commands, "seed", "Generate a synthetic source database (PostgreSQL or SQLite).", cmd_seed)
    seed.add_argument("--url", required=True, help="postgresql://... or sqlite:///path")
    seed.add_argument("--contacts", type=int, help="Contacts in total (the first campaign holds most).")
    seed.add_argument("--campaigns", type=int, default=1, help="Campaigns (default 1).")
    seed.add_argument(
        "--size-mix",
        type=_size_mix,
        metavar="PERCENT:FEWEST-MOST,...",
        help="Contacts per campaign by bands instead of --contacts, e.g. 90:1-40,9:100-400,1:2000-4000 "
        "(90%% of the campaigns with 1 to 40 contacts...).",
    )
    seed.add_argument("--seed", type=int, default=0, help="Random seed (default 0).")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="exports-pipeline",
        description="Export call and survey campaign results through Dagster.",
        epilog="`exports-pipeline COMMAND --help` shows a command's options.",
        formatter_class=lambda prog: argparse.HelpFormatter(prog, max_help_position=20),
    )
    parser.add_argument("-V", "--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    runs = argparse.ArgumentParser(add_help=False)
    runs.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help=f"Also print Dagster's event lines here (always written to $DAGSTER_HOME/{EVENT_LOG}).",
    )

    demo = _command(commands, "demo", "Create the demo source and export every demo campaign.", cmd_demo, [runs])
    demo.add_argument(
        "--dir",
        default=os.environ.get(DEMO_DIR_ENV, "demo"),
        help="Folder of the demo source and exports (default ./demo).",
    )

    _add_export(commands, runs)

    campaigns = _command(commands, "campaigns", "List campaigns: status, contacts, latest export.", cmd_campaigns)
    campaigns.add_argument("--search", metavar="TEXT", help="Only campaigns whose name or id contains TEXT (any case).")
    campaigns.add_argument("--status", choices=CAMPAIGN_STATUSES, help="Only campaigns in this status.")
    campaigns.add_argument(
        "--limit", type=_positive, default=LIST_LIMIT, help=f"Campaigns listed at most, by name (default {LIST_LIMIT})."
    )

    link = _command(
        commands,
        "link",
        "Print a download link to a campaign's latest export.",
        cmd_link,
        details="A presigned S3 URL, or the file's path for a local destination.",
    )
    link.add_argument("campaign_id", help="The campaign's UUID.")
    link.add_argument("--format", choices=FORMATS, default="csv", help="Which file of the snapshot (default csv).")

    _add_seed(commands)
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
