"""Export benchmark (issue 5): is a campaign export faster than `psql \\copy` of the same export, and
is its memory flat from 100k to 10M contacts?

Why this shape. A pipeline number on its own says little: the machine, the PostgreSQL settings and
the cache state move it by tens of percent. So every run compares, on the same database, in the same
run, alternating so that drift hits all three alike, these three processes:

  (a) `psql URL -c "\\copy (<reference query>) to FILE csv header"`: the one-query export a user would
      reach for (../shared/bench/reference_query.py, used unchanged);
  (b) the export core alone in a fresh Python process (bench/core_export.py: stage_export, then
      publish_export to a LocalDestination in a temp folder; CSV and Parquet);
  (c) the whole `exports-pipeline export CAMPAIGN_ID` command (Dagster, in process), with
      EXPORTS_SOURCE_URL and EXPORTS_DESTINATION set and DAGSTER_HOME unset: its embedded default
      instance (./.dagster_home of one folder kept for all its runs), as a user runs it.

With a small campaign (--small), it also times the floor under (c): bench/dagster_floor.py imports the
data libraries and Dagster and runs one trivial asset in process on a SQLite instance, which any
command exporting through Dagster pays before its own work.

Each size gets its own database, exports_bench_<N>, seeded with `exports-pipeline seed` (one campaign
holding the N contacts) and reused by later runs when its row count still matches (--reseed forces a
fresh one). After one warm-up of each case, the cases run --repeat times in the order a,b,c,a,b,c,...
Wall time is measured around the process; peak RSS is the highest sum of the RSS of the process and
all its descendants, sampled from /proc every --poll seconds. The database server's backends are
not descendants: their work shows in the wall time, not in the RSS column (see --explain).

Outputs: a table per size, a Markdown table for the README, and the raw results as JSON in
bench/results/. `--profile` runs (b) once at the largest size with phase timers and once under
cProfile, and (c) under cProfile at the small size (the command's fixed costs). `--explain` prints
EXPLAIN (ANALYZE, BUFFERS) of the export's source queries at the largest size; the SQL is captured
from exports_pipeline.core.source itself, so it follows the core's changes.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import inspect
import json
import os
import platform
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import types
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
CORE_SCRIPT = BENCH_DIR / "core_export.py"
FLOOR_SCRIPT = BENCH_DIR / "dagster_floor.py"
DEFAULT_REFERENCE = REPO.parent / "shared" / "bench" / "reference_query.py"
DEFAULT_SIZES = (100_000, 1_000_000)
PAGE = os.sysconf("SC_PAGE_SIZE")
MIB = 1024 * 1024
CASES = ("a", "b", "c")
CASE_NAMES = {
    "a": "psql \\copy (reference query)",
    "b": "export core (stage + publish)",
    "c": "exports-pipeline export (CLI, Dagster)",
}

# Targets of issue 5.
TARGET_SIZE_FOR_RATIO = 1_000_000
TARGET_RATIO = 1.0
TARGET_RSS_MIB = 1024
TARGET_PER_CONTACT_SPREAD = 0.20
TARGET_SMALL_SECONDS = 3.0


# --------------------------------------------------------------------------------------- measuring


def proc_stats():
    """(pid, stat fields) of every process visible in /proc; field n of proc(5) is fields[n - 3]."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue  # gone meanwhile
        yield int(entry.name), stat[stat.rfind(b")") + 2 :].split()  # comm may hold spaces and parentheses


def _process_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, rss bytes) for every process visible in /proc."""
    return {pid: (int(fields[1]), int(fields[21]) * PAGE) for pid, fields in proc_stats()}


def tree_rss(root: int) -> int:
    """Sum of the RSS of root and all its descendants, in bytes."""
    table = _process_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        if pid in table:
            total += table[pid][1]
        stack.extend(children.get(pid, ()))
    return total


@dataclass
class Run:
    size: int
    case: str
    iteration: int  # 0 = warm-up
    wall_s: float
    peak_tree_rss_mib: float
    maxrss_single_mib: float  # getrusage of the waited child: its largest process, a cross-check
    cpu_s: float  # user + system CPU of the process tree (not the database server's), robust to other load
    exit_code: int
    samples: int
    loadavg_before: str
    output_bytes: dict = field(default_factory=dict)
    rows: int | None = None
    phases: dict | None = None


def run_measured(
    cmd: list[str], *, env: dict | None, cwd: Path, log_prefix: Path, poll: float
) -> tuple[float, int, int, int, int, float]:
    """Run cmd to completion: (wall s, peak tree RSS, max single RSS, exit code, samples, tree CPU s)."""
    with open(f"{log_prefix}.out", "wb") as out, open(f"{log_prefix}.err", "wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=err)
        peak, samples, done = [0], [0], threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], tree_rss(proc.pid))
                samples[0] += 1
                done.wait(poll)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        done.set()
        sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    single = usage.ru_maxrss * 1024
    # A process that ends between two samples is still counted through its own maximum.
    return wall, max(peak[0], single), single, proc.returncode, samples[0], usage.ru_utime + usage.ru_stime


def cli_environment(source_url: str, destination: Path) -> dict:
    """The command's environment as a user's: source and destination set, DAGSTER_HOME unset, so that it
    uses its embedded default instance (./.dagster_home, created with its own dagster.yaml on first use)."""
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    return env | {"EXPORTS_SOURCE_URL": source_url, "EXPORTS_DESTINATION": str(destination)}


# ------------------------------------------------------------------------------------ the databases


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


@dataclass
class BenchDatabase:
    size: int
    name: str
    url: str
    campaign_id: str
    question_count: int
    attempts: int
    answers: int
    seeded_now: bool
    seed_seconds: float | None


PRODUCTION_INDEXES = 8  # contacts 3, call_attempts 3, survey_responses 2 (primary keys included), SPEC section 2


def _describe_database(url: str) -> tuple[int, list[str]] | None:
    """(contacts, campaign ids) of a completely seeded bench database, else None.

    The seed builds the indexes and analyses the tables last, so an interrupted seed shows as missing
    indexes or statistics and is not reused."""
    with psycopg.connect(url, autocommit=True) as conn:
        if conn.execute(
            "SELECT to_regclass('contacts') IS NULL OR to_regclass('campaigns') IS NULL "
            "OR to_regclass('call_attempts') IS NULL OR to_regclass('survey_responses') IS NULL"
        ).fetchone()[0]:
            return None
        indexes = conn.execute(
            "SELECT count(*) FROM pg_indexes WHERE schemaname = current_schema() AND "
            "tablename IN ('contacts', 'call_attempts', 'survey_responses')"
        ).fetchone()[0]
        analysed = conn.execute(
            "SELECT coalesce(bool_and(last_analyze IS NOT NULL OR last_autoanalyze IS NOT NULL), "
            "false) FROM pg_stat_user_tables WHERE relname IN ('contacts', 'call_attempts')"
        ).fetchone()[0]
        if indexes < PRODUCTION_INDEXES or not analysed:
            return None
        contacts = conn.execute("SELECT count(*) FROM contacts").fetchone()[0]
        campaigns = [r[0] for r in conn.execute("SELECT id::text FROM campaigns ORDER BY created_at, id")]
    return contacts, campaigns


def ensure_database(server_url: str, size: int, prefix: str, reseed: bool, cli: Path) -> BenchDatabase:
    """The database exports_bench_<size>, seeded with one campaign of `size` contacts (reused if intact)."""
    name = f"{prefix}{size}"
    url = with_database(server_url, name)
    with psycopg.connect(with_database(server_url, "postgres"), autocommit=True) as admin:
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None
        usable = False
        if exists and not reseed:
            found = _describe_database(url)
            usable = found is not None and found[0] == size and len(found[1]) == 1
            if not usable:
                print(f"  {name}: exists but is not one campaign of {size:,} contacts ({found}); reseeding")
        if exists and not usable:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        if not usable:
            admin.execute(f'CREATE DATABASE "{name}"')
    seed_seconds = None
    if not usable:
        print(f"  {name}: seeding {size:,} contacts ...", flush=True)
        start = time.perf_counter()
        subprocess.run(
            [str(cli), "seed", "--url", url, "--contacts", str(size), "--campaigns", "1", "--seed", "0"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        seed_seconds = time.perf_counter() - start
        print(f"  {name}: seeded in {seed_seconds:.1f} s")
    found = _describe_database(url)
    if found is None or found[0] != size or len(found[1]) != 1:
        raise SystemExit(f"{name}: after seeding, expected one campaign of {size:,} contacts, found {found}")
    campaign_id = found[1][0]
    with psycopg.connect(url, autocommit=True) as conn:
        questions = conn.execute(
            "SELECT coalesce(max(position), 0) FROM survey_questions WHERE campaign_id = %s", (campaign_id,)
        ).fetchone()[0]
        attempts = conn.execute("SELECT count(*) FROM call_attempts").fetchone()[0]
        answers = conn.execute("SELECT count(*) FROM survey_responses").fetchone()[0]
    return BenchDatabase(size, name, url, campaign_id, int(questions), attempts, answers, not usable, seed_seconds)


def load_reference(path: Path):
    spec = importlib.util.spec_from_file_location("bench_reference_query", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load the reference query from {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.reference_query


# ----------------------------------------------------------------------------------------- the cases


class Cases:
    """Builds and runs the three measured processes for one database."""

    def __init__(
        self, args: argparse.Namespace, db: BenchDatabase, reference_sql: str, work: Path, cli_folder: Path, cli: Path
    ):
        self.args, self.db, self.work, self.cli_folder, self.cli = args, db, work, cli_folder, cli
        self.reference_sql = " ".join(reference_sql.split())  # \copy takes the rest of one line
        self.psql = shutil.which("psql") or "psql"

    def run(self, case: str, iteration: int) -> Run:
        folder = Path(tempfile.mkdtemp(prefix=f"{case}-", dir=self.work))
        try:
            cmd, env, timings = self._command(case, folder)
            load = Path("/proc/loadavg").read_text().split(" ")[:3]
            # (c) runs where its embedded instance (./.dagster_home) persists between runs, as a user's does.
            wall, peak, single, code, samples, cpu = run_measured(
                cmd,
                env=env,
                cwd=self.cli_folder if case == "c" else folder,
                log_prefix=folder / "log",
                poll=self.args.poll,
            )
            if code != 0:
                err = (folder / "log.err").read_text(errors="replace")[-3000:]
                raise SystemExit(f"case ({case}) at {self.db.size:,} failed with exit code {code}:\n{err}")
            run = Run(
                self.db.size,
                case,
                iteration,
                round(wall, 4),
                round(peak / MIB, 1),
                round(single / MIB, 1),
                round(cpu, 3),
                code,
                samples,
                " ".join(load),
            )
            self._inspect_output(run, folder, timings)
            if run.rows != self.db.size:
                raise SystemExit(f"case ({case}) at {self.db.size:,} wrote {run.rows} rows: not a valid measurement")
            return run
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _command(self, case: str, folder: Path) -> tuple[list[str], dict | None, Path | None]:
        batch = ["--batch-size", str(self.args.batch_size)] if self.args.batch_size else []
        if case == "a":
            target = folder / "reference.csv"
            return (
                [
                    self.psql,
                    self.db.url,
                    "-X",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-c",
                    f"\\copy ({self.reference_sql}) to '{target}' csv header",
                ],
                None,
                None,
            )
        if case == "b":
            timings = folder / "timings.json"
            return (
                [
                    sys.executable,
                    str(CORE_SCRIPT),
                    "--source-url",
                    self.db.url,
                    "--campaign",
                    self.db.campaign_id,
                    "--dest",
                    str(folder / "dest"),
                    "--timings",
                    str(timings),
                    *batch,
                ],
                None,
                timings,
            )
        return (
            [str(self.cli), "export", self.db.campaign_id, "--format", "csv", "--format", "parquet", *batch],
            cli_environment(self.db.url, folder / "dest"),
            None,
        )

    @staticmethod
    def _inspect_output(run: Run, folder: Path, timings: Path | None) -> None:
        """Sizes of what was written and the row count it claims: a cheap check that work was done."""
        if run.case == "a":
            out = (folder / "log.out").read_text()
            run.rows = int(out.split()[1]) if out.startswith("COPY ") else None
            run.output_bytes = {"csv": (folder / "reference.csv").stat().st_size}
        else:
            manifests = list((folder / "dest").glob("campaign_id=*/*/manifest.json"))
            if manifests:
                manifest = json.loads(manifests[0].read_text())
                run.output_bytes = {f["format"]: f["bytes"] for f in manifest["files"]}
                run.rows = manifest["files"][0]["rows"]
        if timings is not None and timings.exists():
            run.phases = json.loads(timings.read_text())


# ------------------------------------------------------------------------------------------ reports


def summarize(runs: list[Run], dbs: dict[int, BenchDatabase]) -> dict[int, dict]:
    summary: dict[int, dict] = {}
    for size in sorted({r.size for r in runs}):
        entry: dict = {
            "contacts": size,
            "attempts": dbs[size].attempts,
            "answers": dbs[size].answers,
            "load_1min_median": statistics.median(float(r.loadavg_before.split()[0]) for r in runs if r.size == size),
        }
        for case in CASES:
            measured = [r for r in runs if r.size == size and r.case == case and r.iteration > 0]
            if not measured:
                continue
            walls = [r.wall_s for r in measured]
            entry[case] = {
                "n": len(walls),
                "median_s": statistics.median(walls),
                "min_s": min(walls),
                "max_s": max(walls),
                "peak_rss_mib_max": max(r.peak_tree_rss_mib for r in measured),
                "peak_rss_mib_median": statistics.median(r.peak_tree_rss_mib for r in measured),
                "median_cpu_s": statistics.median(r.cpu_s for r in measured),
                "us_per_contact": statistics.median(walls) / size * 1e6 if size else None,
                "rows": measured[-1].rows,
                "output_bytes": measured[-1].output_bytes,
            }
        if "a" in entry:
            for case in ("b", "c"):
                if case in entry:
                    entry[f"{case}/a"] = entry[case]["median_s"] / entry["a"]["median_s"]
        phases = [r.phases for r in runs if r.size == size and r.case == "b" and r.iteration > 0 and r.phases]
        if phases:
            names = sorted({k for p in phases for k in p["phases"]})
            entry["b_phases_median_s"] = {
                **{k: statistics.median(p[k] for p in phases) for k in ("imports_s", "stage_s", "publish_s")},
                **{k: statistics.median(p["phases"].get(k, {}).get("seconds", 0.0) for p in phases) for k in names},
            }
        summary[size] = entry
    return summary


def print_size_table(entry: dict) -> None:
    size = entry["contacts"]
    print(
        f"\n{size:,} contacts ({entry['attempts']:,} attempts, {entry['answers']:,} answers; "
        f"median 1-min load average before a run {entry['load_1min_median']:.1f} on {os.cpu_count()} CPUs)"
    )
    print(
        f"  {'case':<42} {'median s':>9} {'min s':>8} {'max s':>8} {'CPU s':>7} {'peak RSS MiB':>13}"
        f" {'us/contact':>11} {'rows':>9} {'vs (a)':>7}"
    )
    for case in CASES:
        if case not in entry:
            continue
        e = entry[case]
        ratio = f"{entry[f'{case}/a']:.2f}" if f"{case}/a" in entry else "1.00"
        print(
            f"  ({case}) {CASE_NAMES[case]:<38} {e['median_s']:>9.2f} {e['min_s']:>8.2f} {e['max_s']:>8.2f}"
            f" {e['median_cpu_s']:>7.2f} {e['peak_rss_mib_max']:>13.0f} {e['us_per_contact']:>11.2f}"
            f" {e['rows'] or 0:>9,} {ratio:>7}"
        )
    if "b_phases_median_s" in entry:
        print("  (b) time inside each phase (median over the runs, seconds):")
        for name, seconds in sorted(entry["b_phases_median_s"].items(), key=lambda kv: -kv[1]):
            print(f"      {seconds:8.2f}  {name}")


def markdown_table(summary: dict[int, dict]) -> str:
    lines = [
        "| contacts | (a) psql \\copy | (b) core | (c) CLI | b/a | c/a | peak RSS a / b / c (MiB) "
        "| (b) µs/contact | (c) µs/contact |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size, e in summary.items():

        def cell(case: str, e: dict = e) -> str:
            return f"{e[case]['median_s']:.2f} s" if case in e else "–"

        def ratio(case: str, e: dict = e) -> str:
            return f"{e[f'{case}/a']:.2f}" if f"{case}/a" in e else "–"

        rss = " / ".join(f"{e[c]['peak_rss_mib_max']:.0f}" if c in e else "–" for c in CASES)
        per = [f"{e[c]['us_per_contact']:.1f}" if c in e else "–" for c in ("b", "c")]
        lines.append(
            f"| {size:,} | {cell('a')} | {cell('b')} | {cell('c')} | {ratio('b')} | {ratio('c')} "
            f"| {rss} | {per[0]} | {per[1]} |"
        )
    return "\n".join(lines)


def target_verdicts(summary: dict[int, dict], small: int) -> list[str]:
    out = []
    big = summary.get(TARGET_SIZE_FOR_RATIO)
    if big and "c/a" in big:
        ok = big["c/a"] < TARGET_RATIO
        out.append(
            f"{'PASS' if ok else 'FAIL'}  c/a at {TARGET_SIZE_FOR_RATIO:,} = {big['c/a']:.2f} (target < {TARGET_RATIO})"
        )
    for size, e in summary.items():
        if size >= TARGET_SIZE_FOR_RATIO:
            for case in ("b", "c"):
                if case in e:
                    rss = e[case]["peak_rss_mib_max"]
                    out.append(
                        f"{'PASS' if rss < TARGET_RSS_MIB else 'FAIL'}  peak RSS ({case}) at {size:,} = "
                        f"{rss:.0f} MiB (target < {TARGET_RSS_MIB} MiB)"
                    )
    large = [s for s in summary if s >= 100_000 and "c" in summary[s]]
    # The command's fixed cost (the small campaign's time) weighs on 100k far more than on 10M, so the
    # spread is also shown without it, and for (b).
    fixed = {
        case: summary[small][case]["median_s"] if small in summary and case in summary[small] else 0.0
        for case in ("b", "c")
    }
    if len(large) >= 2:
        low = min(large)
        for case, minus_fixed in (("c", False), ("c", True), ("b", True)):

            def per(size: int, case: str = case, minus_fixed: bool = minus_fixed) -> float:
                return (summary[size][case]["median_s"] - (fixed[case] if minus_fixed else 0.0)) / size * 1e6

            label = f"({case}) time{' minus the small campaign time' if minus_fixed and fixed[case] else ''}"
            for size in sorted(large)[1:]:
                spread = per(size) / per(low) - 1
                out.append(
                    f"{'PASS' if abs(spread) <= TARGET_PER_CONTACT_SPREAD else 'FAIL'}  {label}, per "
                    f"contact, at {size:,} vs {low:,}: {per(size):.1f} vs {per(low):.1f} µs ({spread:+.0%}; "
                    f"target within {TARGET_PER_CONTACT_SPREAD:.0%}; the 10M leg needs --contacts 10000000)"
                )
    if small in summary and "c" in summary[small]:
        t = summary[small]["c"]["median_s"]
        out.append(
            f"{'PASS' if t < TARGET_SMALL_SECONDS else 'FAIL'}  (c) {small:,}-contact campaign, whole "
            f"process = {t:.2f} s (target < {TARGET_SMALL_SECONDS} s)"
        )
    return out


# ------------------------------------------------------------------------------------- --profile

KEY_FUNCTIONS = (
    "stage_export",
    "publish_export",
    "contact_batches",
    "attempts_for",
    "answers_for",
    "build_batch",
    "write",
    "close",
    "_blocking_checks",
    "describe",
    "upload_snapshot",
    "count_contacts",
    "fingerprint",
    "misfiled_rows",
    "read_sql",
    "write_csv",
    "write_table",
    "from_arrow",
    "csv_frame",
    "parquet_table",
    "latest_attempts",
)


def profile_core(args: argparse.Namespace, db: BenchDatabase, work: Path) -> dict:
    """(b) once with phase timers (low overhead), once under cProfile (function-level, inflated)."""
    print(f"\n=== --profile: (b) at {db.size:,} contacts ===")
    cases = Cases(args, db, "", work, work / "unused", Path(args.cli))
    timed = cases.run("b", 1)
    print(f"phase timers: wall {timed.wall_s:.2f} s, peak RSS {timed.peak_tree_rss_mib:.0f} MiB")
    phases = timed.phases or {}
    for key in ("imports_s", "stage_s", "publish_s", "cleanup_s"):
        if key in phases:
            print(f"  {phases[key]:8.2f}  {key}")
    for name, value in sorted(phases.get("phases", {}).items(), key=lambda kv: -kv[1]["seconds"]):
        print(f"  {value['seconds']:8.2f}  {name}  ({value['calls']} calls)")
    if phases.get("batches"):
        print("streamed frames as they arrived (seconds since start, rows, process RSS MiB, stream):")
        for mark in phases["batches"] + [dict(phases["end"], rows="end", stream="")]:
            print(f"  {mark['t']:8.2f}  {mark['rows']!s:>7}  {mark['rss_mib']:7.0f}  {mark.get('stream', '')}")

    folder = Path(tempfile.mkdtemp(prefix="profile-", dir=work))
    prof = folder / "core.prof"
    batch = ["--batch-size", str(args.batch_size)] if args.batch_size else []
    cmd = [
        sys.executable,
        "-m",
        "cProfile",
        "-o",
        str(prof),
        str(CORE_SCRIPT),
        "--source-url",
        db.url,
        "--campaign",
        db.campaign_id,
        "--dest",
        str(folder / "dest"),
        *batch,
    ]
    wall, peak, _, code, _, _ = run_measured(cmd, env=None, cwd=folder, log_prefix=folder / "log", poll=args.poll)
    if code != 0:
        raise SystemExit((folder / "log.err").read_text()[-3000:])
    print(
        f"\ncProfile (main thread only; Rust/C work shows as the calling builtin): wall {wall:.2f} s, "
        f"peak RSS {peak / MIB:.0f} MiB"
    )
    stats = pstats.Stats(str(prof))
    stats.sort_stats("cumulative").print_stats(args.top)
    stats.sort_stats("tottime").print_stats(args.top)
    kept = BENCH_DIR / "results" / f"core-{db.size}.prof"
    kept.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(prof, kept)
    print(f"profile kept as {kept} (python -m pstats {kept})")
    key = {}
    for (filename, line, func), (_, ncalls, tottime, cumtime, _) in stats.stats.items():
        if func in KEY_FUNCTIONS and ("exports_pipeline" in filename or filename == "~"):
            key[f"{Path(filename).name}:{line}:{func}"] = {
                "calls": ncalls,
                "tottime": round(tottime, 3),
                "cumtime": round(cumtime, 3),
            }
    shutil.rmtree(folder, ignore_errors=True)
    return {
        "phase_timers": asdict(timed),
        "cprofile_wall_s": wall,
        "cprofile_peak_rss_mib": peak / MIB,
        "key_functions": key,
        "profile_file": str(kept),
    }


def profile_cli(args: argparse.Namespace, db: BenchDatabase, work: Path) -> dict:
    """(c) once under cProfile at the small size: where the fixed cost of the command goes."""
    print(f"\n=== --profile: (c) at {db.size:,} contacts (fixed costs of the command) ===")
    folder = Path(tempfile.mkdtemp(prefix="profile-cli-", dir=work))
    prof = folder / "cli.prof"
    env = cli_environment(db.url, folder / "dest")
    batch = ["--batch-size", str(args.batch_size)] if args.batch_size else []
    base = [sys.executable, "-m", "exports_pipeline.cli", "export", db.campaign_id, *batch]
    # The first run creates the instance's storage; the profiled one reuses it, as (c) does.
    warm = run_measured(base, env=env, cwd=folder, log_prefix=folder / "warm", poll=args.poll)
    # Through main(), not `-m exports_pipeline.cli`: the command's entry point ends with os._exit, which
    # would leave cProfile no chance to write its file.
    cmd = [
        sys.executable,
        "-c",
        "import cProfile, sys; from exports_pipeline.cli import main; "
        "cProfile.run('main(sys.argv[1:])', sys.argv.pop(1))",
        str(prof),
        *base[3:],
    ]
    wall, _peak, _, code, _, _ = run_measured(cmd, env=env, cwd=folder, log_prefix=folder / "log", poll=args.poll)
    if code != 0 or warm[3] != 0:
        raise SystemExit((folder / "log.err").read_text()[-3000:])
    print(f"unprofiled {warm[0]:.2f} s (first run, creates the instance); profiled {wall:.2f} s")
    stats = pstats.Stats(str(prof))
    stats.sort_stats("cumulative").print_stats(args.top)
    phases = command_phases(stats)
    print("where the command's time goes (cumulative seconds under cProfile, which inflates Python-heavy parts):")
    for name, seconds in phases.items():
        print(f"  {seconds:7.2f}  {name}")
    kept = BENCH_DIR / "results" / f"cli-{db.size}.prof"
    kept.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(prof, kept)
    print(f"profile kept as {kept}")
    shutil.rmtree(folder, ignore_errors=True)
    return {"first_run_s": warm[0], "cprofile_wall_s": wall, "phases": phases, "profile_file": str(kept)}


# The command's phases, each by the function that spans it: (file name, function name).
COMMAND_PHASES = {
    "the whole command (cli.main)": ("cli.py", "main"),
    "importing the definitions (Dagster, dagster-aws, the project)": ("definitions.py", "<module>"),
    "opening the instance (cli._instance)": ("cli.py", "_instance"),
    "the run (execute_in_process)": ("job_definition.py", "execute_in_process"),
    "  of which creating the run (snapshots, planned events)": ("run_methods.py", "create_run_for_job"),
    "  of which Dagster events written to the instance": ("event_methods.py", "handle_new_event"),
    "  of which the export: read, transform, write, check (stage_export)": ("export.py", "stage_export"),
    "  of which the export: publication (publish_export)": ("export.py", "publish_export"),
}


def command_phases(stats: pstats.Stats) -> dict[str, float]:
    cumulative = {(Path(filename).name, func): ct for (filename, _, func), (_, _, _, ct, _) in stats.stats.items()}
    return {name: round(cumulative.get(key, 0.0), 3) for name, key in COMMAND_PHASES.items()}


# ------------------------------------------------------------------------------------- --explain


class _Captured(BaseException):
    """Raised by the stubs below to carry a query out (BaseException: the core catches Exception)."""

    def __init__(self, sql: str, settings: list[str] | None = None):
        super().__init__(sql)
        self.sql, self.settings = sql, settings or []


SKIPPED_METHODS = {"close", "campaign_ids"}  # not part of one campaign's export
NOT_SUMMED_METHODS = {"fingerprint"}  # shown, but an export tallies its fingerprint from its streams instead


def _source_methods(source) -> list[tuple[str, object]]:
    """The public methods of the source object's class, in definition order (its export queries)."""
    return [
        (name, getattr(source, name))
        for name, member in vars(type(source)).items()
        if inspect.isfunction(member) and not name.startswith("_") and name not in SKIPPED_METHODS
    ]


def _arguments(method, db: BenchDatabase, options, contact_ids: list[str] | None) -> dict | None:
    """Arguments for a source method, chosen by parameter name; None when one cannot be guessed."""
    values = {
        "campaign_id": db.campaign_id,
        "options": options,
        "batch_size": options.batch_size,
        "fraction": 0.01,
        "contact_ids": contact_ids,
        "ids": contact_ids,
    }
    kwargs = {}
    for name, parameter in inspect.signature(method).parameters.items():
        if name in values and values[name] is not None:
            kwargs[name] = values[name]
        elif parameter.default is inspect.Parameter.empty:
            return None
    return kwargs


def capture_source_queries(db: BenchDatabase) -> tuple[dict[str, dict], int]:
    """The SQL each public method of the core's source sends, captured from the core itself.

    Each method is called with stubs in place of connectorx.read_sql and of the psycopg helper, which
    raise the first query they are given. So the SQL follows the core's changes; a method that sends
    several queries shows its first one. Methods that take contact ids get the first batch's ids."""
    from exports_pipeline.core import source as source_mod
    from exports_pipeline.core.options import ExportOptions

    options = ExportOptions()
    queries: dict[str, dict] = {}
    with source_mod.open_source(db.url) as source:
        methods = _source_methods(source)
        contact_ids = None
        for name, method in methods:  # real first batch of the contacts stream, for *_for(ids) methods
            kwargs = _arguments(method, db, options, None)
            if "contact" in name and kwargs is not None and "campaign_id" in kwargs:
                result = method(**kwargs)
                if isinstance(result, types.GeneratorType):
                    first = next(result, None)
                    result.close()
                    if first is not None and "id" in getattr(first, "columns", ()):
                        contact_ids = first["id"].to_list()
                        break

        def stub(conn, query, *rest, pre_execution_query=None, **kw):
            # The session settings the export's reads run with (not its snapshot import).
            settings = [
                q
                for q in pre_execution_query or []
                if q.upper().startswith("SET ") and not q.upper().startswith("SET TRANSACTION")
            ]
            raise _Captured(query if isinstance(query, str) else ";\n".join(query), settings)

        def rows_stub(sql, *rest, **kw):
            raise _Captured(sql)

        real_read_sql = source_mod.cx.read_sql
        source._rows = rows_stub  # instance attribute: the psycopg-side queries
        source_mod.cx.read_sql = stub  # the connectorx-side bulk reads
        try:
            for name, method in methods:
                kwargs = _arguments(method, db, options, contact_ids)
                if kwargs is None:
                    print(f"  ({name}: no query captured, cannot guess its arguments)")
                    continue
                try:
                    result = method(**kwargs)
                    if isinstance(result, types.GeneratorType):
                        next(result)
                except _Captured as captured:
                    takes_ids = "contact_ids" in kwargs or "ids" in kwargs
                    label = f"{name} (first batch, {len(contact_ids):,} ids)" if takes_ids else name
                    queries[label] = {
                        "method": name,
                        "sql": captured.sql,
                        "per_batch": takes_ids,
                        "settings": captured.settings,
                    }
                else:
                    print(f"  ({name}: sent no query through connectorx or PostgresSource._rows)")
        finally:
            source_mod.cx.read_sql = real_read_sql
    return queries, options.batch_size


def time_core_reads(db: BenchDatabase, queries: dict[str, dict]) -> dict[str, float]:
    """Client-side wall time of the streamed reads through the core (connectorx + polars), whole campaign."""
    from exports_pipeline.core.options import ExportOptions
    from exports_pipeline.core.source import open_source

    out = {}
    options = ExportOptions()
    with open_source(db.url) as source:
        for name, method in _source_methods(source):
            kwargs = _arguments(method, db, options, None)
            if kwargs is None:
                continue
            start = time.perf_counter()
            result = method(**kwargs)
            if not isinstance(result, types.GeneratorType):
                continue
            rows = sum(getattr(frame, "height", 0) for frame in result)
            out[f"{name}: {rows:,} rows streamed"] = time.perf_counter() - start
    return out


def explain(args: argparse.Namespace, db: BenchDatabase, reference_sql: str) -> dict:
    print(f"\n=== --explain: source queries at {db.size:,} contacts ===")
    queries, batch_size = capture_source_queries(db)
    queries["reference query (a)"] = {"method": None, "sql": reference_sql, "per_batch": False, "settings": []}
    batches = -(-db.size // batch_size)
    results = {}
    with psycopg.connect(db.url, autocommit=True) as conn:
        for name, query in queries.items():
            sql = query["sql"]
            shown = sql if len(sql) < 1500 else sql[:700] + f" ... [{len(sql):,} characters] ... " + sql[-300:]
            print(f"\n--- {name}\n{shown}\n")
            conn.execute("RESET ALL")  # the reference query runs with the server's defaults, as psql's does
            for setting in query.get("settings", []):
                print(setting)
                conn.execute(setting)
            start = time.perf_counter()
            plan = [r[0] for r in conn.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}")]
            wall = time.perf_counter() - start
            print("\n".join(line if len(line) < 400 else line[:400] + " ..." for line in plan))
            execution = next(
                (float(line.split(":")[1].split()[0]) / 1000 for line in plan if line.startswith("Execution Time")),
                None,
            )
            results[name] = {
                **query,
                "sql_chars": len(sql),
                "execution_s": execution,
                "explain_wall_s": wall,
                "plan": plan,
            }
    core_reads = time_core_reads(db, queries)
    print(f"\nsummary at {db.size:,} contacts (batch size {batch_size:,}: {batches} batches):")
    total = 0.0
    for name, r in results.items():
        per_export = r["execution_s"] * (batches if r["per_batch"] else 1)
        if r["method"] is not None and r["method"] not in NOT_SUMMED_METHODS:
            total += per_export
        extra = f"  x {batches} batches = {per_export:.2f} s" if r["per_batch"] else ""
        print(f"  server execution {r['execution_s']:8.3f} s  {name}{extra}")
    print(f"  sum of the export's source queries (server side, run one after another): {total:.2f} s")
    print("  (EXPLAIN ANALYZE does not send the rows: transfer and client conversion come on top)")
    for name, seconds in core_reads.items():
        print(f"  client wall through the core {seconds:8.3f} s  {name}")
    return {"queries": results, "batches": batches, "core_reads_s": core_reads, "server_total_s": total}


# ------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark the campaign export against psql \\copy of the reference query (issue 5).",
        epilog="Examples: make bench; make bench BENCH_ARGS='--contacts 10000000'; "
        "python bench/bench.py --sizes 1000000 --profile --explain",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--server-url",
        default=os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/"),
        help="PostgreSQL server; the database name is replaced per size (env BENCH_PG_URL)",
    )
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=list(DEFAULT_SIZES),
        help="contact counts to benchmark (one database and one campaign each)",
    )
    parser.add_argument(
        "--contacts",
        type=int,
        action="append",
        default=[],
        help="add a size to --sizes, e.g. --contacts 10000000 (opt-in 10M)",
    )
    parser.add_argument(
        "--small",
        type=int,
        default=100,
        help="the small campaign for the fixed-cost target (whole process < 3 s); 0 skips it",
    )
    parser.add_argument("--repeat", type=int, default=3, help="measured runs of each case per size, after a warm-up")
    parser.add_argument("--reseed", action="store_true", help="drop and seed the bench databases again")
    parser.add_argument("--db-prefix", default="exports_bench_", help="bench database name prefix")
    parser.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE, help="reference_query.py to use")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="pass --batch-size N to (b) and (c); unset: the core's default"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where the runs write their files; unset: a temp folder, removed at the end",
    )
    parser.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results", help="raw JSON results go here")
    parser.add_argument("--poll", type=float, default=0.05, help="RSS sampling interval in seconds")
    parser.add_argument("--profile", action="store_true", help="profile (b) once at the largest size")
    parser.add_argument(
        "--explain",
        action="store_true",
        help="EXPLAIN (ANALYZE, BUFFERS) the export's source queries at the largest size",
    )
    parser.add_argument(
        "--timing", action="store_true", help="also run the timed comparison when --profile or --explain is given"
    )
    parser.add_argument("--top", type=int, default=30, help="functions shown by --profile")
    parser.add_argument(
        "--code",
        default="worktree",
        help="which exports_pipeline to measure: 'worktree' (the files as they are now) or a git "
        "revision (e.g. HEAD), extracted with git archive and put first on PYTHONPATH, so that "
        "edits made to the tree during a long run do not change what is measured",
    )
    parser.add_argument(
        "--cli",
        default=str(Path(sys.executable).with_name("exports-pipeline")),
        help="the exports-pipeline command of the environment under test",
    )
    args = parser.parse_args(argv)
    args.sizes = sorted(set(args.sizes) | set(args.contacts))
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def git_revision() -> str | None:
    with contextlib.suppress(Exception):
        rev = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "exports_pipeline"], capture_output=True, text=True
        ).stdout.strip()
        return rev + ("+dirty(exports_pipeline)" if dirty else "")
    return None


def source_digest(root: Path) -> str:
    """Hash of the package's Python files: which code was measured, when the tree is being edited."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted((root / "exports_pipeline").rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def use_code(revision: str, work: Path) -> tuple[Path, str]:
    """Make every measured process (and this one) import exports_pipeline from `revision`.

    'worktree' leaves the editable install alone. A git revision is extracted (git archive, read-only)
    into the work folder, which goes first on PYTHONPATH; the console script then imports it too.
    """
    if revision == "worktree":
        return REPO, "worktree"
    rev = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", revision], capture_output=True, text=True, check=True
    ).stdout.strip()
    root = work / f"code-{rev}"
    root.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev, "exports_pipeline"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    sys.path.insert(0, str(root))
    return root, rev


def run_timing(
    args: argparse.Namespace,
    dbs: dict[int, BenchDatabase],
    references: dict[int, str],
    sizes: list[int],
    work: Path,
    cli: Path,
    runs: list[Run],
    report: dict,
) -> None:
    """The alternating a,b,c runs of every size, then the tables."""
    cli_folder = Path(tempfile.mkdtemp(prefix="cli-", dir=work))  # one embedded instance for all (c) runs
    for size in sizes:
        cases = Cases(args, dbs[size], references[size], work, cli_folder, cli)
        order = [(case, 0) for case in CASES] + [(c, i) for i in range(1, args.repeat + 1) for c in CASES]
        print(f"\n{size:,} contacts: warm-up then {args.repeat} x (a, b, c)", flush=True)
        for case, iteration in order:
            run = cases.run(case, iteration)
            runs.append(run)
            label = "warm-up" if iteration == 0 else f"run {iteration}"
            print(
                f"  ({case}) {label:<8} {run.wall_s:8.2f} s  CPU {run.cpu_s:7.2f} s  "
                f"peak RSS {run.peak_tree_rss_mib:7.0f} MiB  rows {run.rows or 0:,}  load {run.loadavg_before}",
                flush=True,
            )
    if args.small:
        report["dagster_floor"] = measure_dagster_floor(args, work)
    summary = summarize(runs, dbs)
    print("\n" + "=" * 100)
    print(f"medians of {args.repeat} runs after a warm-up; peak RSS = highest process-tree sum over the runs")
    for entry in summary.values():
        print_size_table(entry)
    verdicts = target_verdicts(summary, args.small)
    print("\nissue 5 targets:")
    for line in verdicts:
        print("  " + line)
    table = markdown_table(summary)
    print("\nMarkdown (README):\n")
    print(table)
    report.update(summary={str(k): v for k, v in summary.items()}, targets=verdicts, markdown=table)


def measure_dagster_floor(args: argparse.Namespace, work: Path) -> dict:
    """bench/dagster_floor.py --repeat times after a warm-up, on one SQLite instance: the part of (c) at
    the small size that no export code can remove (Dagster's start and run, the data libraries' imports)."""
    folder = Path(tempfile.mkdtemp(prefix="floor-", dir=work))
    env = dict(os.environ, DAGSTER_HOME=str(folder))
    walls, cpus = [], []
    for iteration in range(args.repeat + 1):
        wall, _, _, code, _, cpu = run_measured(
            [sys.executable, str(FLOOR_SCRIPT)],
            env=env,
            cwd=folder,
            log_prefix=folder / f"log{iteration}",
            poll=args.poll,
        )
        if code != 0:
            raise SystemExit((folder / f"log{iteration}.err").read_text()[-3000:])
        if iteration:
            walls.append(wall)
            cpus.append(cpu)
    floor = {"median_s": statistics.median(walls), "median_cpu_s": statistics.median(cpus), "walls": walls}
    print(
        f"\nfloor under (c): imports of the data libraries and Dagster, a SQLite instance and one trivial "
        f"in-process run (bench/dagster_floor.py): median {floor['median_s']:.2f} s, CPU {floor['median_cpu_s']:.2f} s "
        f"({', '.join(f'{w:.2f}' for w in walls)})",
        flush=True,
    )
    return floor


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    timing = args.timing or not (args.profile or args.explain)
    reference_query = load_reference(args.reference)
    cli = Path(args.cli)
    if not cli.exists():
        raise SystemExit(f"{cli} not found: install the package (make setup) or pass --cli")
    started = datetime.now(UTC)
    own_work = args.workdir is None
    work = Path(tempfile.mkdtemp(prefix="exports-bench-")) if own_work else args.workdir
    work.mkdir(parents=True, exist_ok=True)
    runs: list[Run] = []
    report: dict = {"status": "interrupted"}
    dbs: dict[int, BenchDatabase] = {}
    code_rev = digest = None
    try:
        code_root, code_rev = use_code(args.code, work)
        digest = source_digest(code_root)
        print(f"measuring exports_pipeline from {code_rev} ({code_root}), package digest {digest}")
        sizes = sorted(set(args.sizes) | ({args.small} if args.small and (timing or args.profile) else set()))
        print(f"bench databases on {args.server_url} (sizes {', '.join(f'{s:,}' for s in sizes)}):")
        for size in sizes:
            dbs[size] = ensure_database(args.server_url, size, args.db_prefix, args.reseed, cli)
            db = dbs[size]
            print(
                f"  {db.name}: campaign {db.campaign_id}, {db.size:,} contacts, {db.attempts:,} attempts, "
                f"{db.answers:,} answers, {db.question_count} questions"
            )
        references = {size: reference_query(db.campaign_id, db.question_count) for size, db in dbs.items()}
        if timing:
            run_timing(args, dbs, references, sizes, work, cli, runs, report)
        largest = dbs[max(args.sizes)]
        if args.profile:
            report["profile"] = profile_core(args, largest, work)
            if args.small:
                report["profile_cli"] = profile_cli(args, dbs[args.small], work)
        if args.explain:
            report["explain"] = explain(args, largest, references[largest.size])
        report["status"] = "ok"
    except BaseException as exc:
        report["status"] = f"failed: {type(exc).__name__}: {str(exc)[:2000]}"
        raise
    finally:
        if own_work:
            shutil.rmtree(work, ignore_errors=True)
        args.results_dir.mkdir(parents=True, exist_ok=True)
        path = args.results_dir / f"bench-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
        path.write_text(
            json.dumps(
                {
                    "started_at": started.isoformat(),
                    "finished_at": datetime.now(UTC).isoformat(),
                    "git": git_revision(),
                    "code": code_rev,
                    "package_digest": digest,
                    "python": sys.version.split()[0],
                    "machine": {
                        "cpus": os.cpu_count(),
                        "platform": platform.platform(),
                        "mem_total": Path("/proc/meminfo").read_text().splitlines()[0],
                    },
                    "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                    "databases": {str(k): asdict(v) for k, v in dbs.items()},
                    "runs": [asdict(r) for r in runs],
                    **report,
                },
                indent=2,
                default=str,
            )
        )
        print(f"\nraw results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
