"""Per small campaign inside a run (issue 14, item 4): the export's work, before and after reading a run's
small campaigns together, side by side with a psql \\copy process per campaign, in the same run.

    python bench/batch.py                         # 300 heavy-tailed campaigns, 3 rounds, Dagster in the first
    python bench/batch.py --campaigns 1000 --rounds 1 --dagster-rounds 0

It seeds (once, kept) a PostgreSQL source of N campaigns with issue 14's heavy-tailed sizes (about 90%
with 1-40 contacts, 9% with 100-400, 1% with 2,000-4,000), then alternates, round after round:
  (a) `psql URL -c "\\copy (<reference query>) to FILE csv header"` per campaign, one psql process each
      (../shared/bench/reference_query.py, unchanged);
  (b) before: each campaign exported by the export core from its own snapshot (stage_export, then
      publish_export to a local folder), all in one warm process, as a run of many campaigns did;
  (c) after: the same campaigns the way a run now exports them: small ones from a snapshot shared a chunk
      at a time (core/reading.py), each staged and published;
  (d) the Dagster path in process: the export asset materialized over ranges of 100 campaign partitions
      (what a backfill's run does, without its process start) on a PostgreSQL instance, with
      DAGSTER_EVENT_BATCH_SIZE unset and set; its events' share is the run's time less the export core's.
It prints milliseconds per campaign (wall and CPU), the after-case split into read, route, transform, write,
check and publish, and the ratios to (a). Raw results go to bench/results/batch-<UTC time>.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from bench import DEFAULT_REFERENCE, load_reference, with_database  # bench/bench.py

BENCH_DIR = Path(__file__).resolve().parent
SERVER_URL = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/")
SIZES = ((0.90, 1, 40), (0.09, 100, 400), (0.01, 2_000, 4_000))  # share of campaigns, contacts from, to
CAMPAIGNS_PER_RUN = 100
EVENT_BATCH_SIZE = "200"  # what docs/operations.md sets for the deployment


def heavy_tailed_sizes(campaigns: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    sizes = []
    for share, low, high in SIZES:
        sizes += [rng.randint(low, high) for _ in range(max(1, round(campaigns * share)))]
    rng.shuffle(sizes)
    return sizes[:campaigns]


def source_database(campaigns: int, seed: int) -> tuple[str, list[str]]:
    """The source of this many campaigns, seeded once and kept: its URL and campaign ids in creation order."""
    from exports_pipeline.core.seed import seed_source

    name = f"exports_batch_{campaigns}_{seed}"
    url = with_database(SERVER_URL, name)
    with psycopg.connect(SERVER_URL, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')
    if exists:
        with psycopg.connect(url) as conn:
            ids = [r[0] for r in conn.execute("SELECT id::text FROM campaigns ORDER BY created_at, id")]
        if len(ids) == campaigns:
            return url, ids
        raise SystemExit(f"database {name} holds {len(ids)} campaigns, not {campaigns}: drop it")
    print(f"seeding {campaigns} campaigns into {name} ...", flush=True)
    ids = []
    for index, size in enumerate(heavy_tailed_sizes(campaigns, seed)):
        ids += seed_source(url, contacts=size, campaigns=1, seed=seed * 1_000_003 + index)
    return url, ids


class Clock:
    """Wall and CPU time (this process and its children) of a block."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), self._cpu()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, self._cpu() - self.cpu

    @staticmethod
    def _cpu() -> float:
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def case_psql(url: str, references: dict[str, str], folder: Path) -> None:
    for campaign_id, sql in references.items():
        subprocess.run(
            ["psql", url, "-q", "-c", f"\\copy ({sql}) to '{folder / campaign_id}.csv' csv header"], check=True
        )


def case_before(url: str, campaign_ids: list[str], folder: Path) -> None:
    from exports_pipeline.core.destinations import LocalDestination
    from exports_pipeline.core.export import publish_export, stage_export
    from exports_pipeline.core.options import ExportOptions

    run_id, target = uuid.uuid4().hex, LocalDestination(str(folder))
    for campaign_id in campaign_ids:
        with stage_export(url, campaign_id, ExportOptions(), run_id) as staged:
            publish_export(staged, target)


def case_after(url: str, campaign_ids: list[str], folder: Path, phases: dict[str, float]) -> None:
    from exports_pipeline.core.destinations import LocalDestination
    from exports_pipeline.core.export import publish_export, stage_export
    from exports_pipeline.core.options import ExportOptions
    from exports_pipeline.core.reading import campaigns_in_read_order

    run_id, target, options = uuid.uuid4().hex, LocalDestination(str(folder)), ExportOptions()
    for start in range(0, len(campaign_ids), CAMPAIGNS_PER_RUN):
        reads = campaigns_in_read_order(url, campaign_ids[start : start + CAMPAIGNS_PER_RUN], options)
        while True:
            began = time.perf_counter()
            item = next(reads, None)
            phases["read (shared snapshot, all tables)"] += time.perf_counter() - began
            if item is None:
                break
            with stage_export(url, item[0], options, run_id, shared_read=item[1]) as staged:
                publish_export(staged, target)


def install_phase_timers(current: dict) -> None:
    """Time the export core's steps by wrapping them, into current["phases"] (time spent inside; the writers
    run in threads)."""
    from exports_pipeline.core import export

    def timed(name: str, func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            began = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                current["phases"][name] += time.perf_counter() - began

        return wrapper

    for name, label in (
        ("_read", "read (own snapshot: description, counts)"),
        ("_route", "route (own snapshot)"),
        ("_route_in_memory", "route (in memory)"),
        ("_write", "transform and write (step 3)"),
        ("_batch", "  of which transform"),
        ("_files", "stats file, PDF"),
        ("_checks", "check"),
        ("publish_export", "publish"),
    ):
        setattr(export, name, timed(label, getattr(export, name)))


def dagster_case(url: str, campaign_ids: list[str], batch_size: str | None) -> dict:
    """Case (d) in a child process (the environment variable is read by Dagster as it runs)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(BENCH_DIR.parent), os.environ.get("PYTHONPATH", "")])}
    env.pop("DAGSTER_EVENT_BATCH_SIZE", None)
    if batch_size:
        env["DAGSTER_EVENT_BATCH_SIZE"] = batch_size
    job = json.dumps({"url": url, "campaign_ids": campaign_ids})
    done = subprocess.run(
        [sys.executable, __file__, "--dagster-child"], input=job, capture_output=True, text=True, env=env, check=False
    )
    if done.returncode:
        raise SystemExit(f"dagster case failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _time_core(assets, core: dict) -> None:
    """Count the export core's time inside the asset: the shared reads, staging and publication."""
    real_stage, real_publish, real_reads = assets.stage_export, assets.publish, assets.campaigns_in_read_order

    @contextmanager
    def stage(*args, **kwargs):
        began = time.perf_counter()
        with real_stage(*args, **kwargs) as staged:
            core["seconds"] += time.perf_counter() - began
            yield staged

    def publish(*args, **kwargs):
        began = time.perf_counter()
        try:
            return real_publish(*args, **kwargs)
        finally:
            core["seconds"] += time.perf_counter() - began

    def reads(*args, **kwargs):
        iterator = real_reads(*args, **kwargs)
        while True:
            began = time.perf_counter()
            item = next(iterator, None)
            core["seconds"] += time.perf_counter() - began
            if item is None:
                return
            yield item

    assets.stage_export, assets.publish, assets.campaigns_in_read_order = stage, publish, reads


def dagster_child() -> None:
    """The child of dagster_case: range runs of the export asset on a PostgreSQL instance of its own."""
    import dagster as dg

    import exports_pipeline.defs.assets as assets
    from exports_pipeline.defs.resources import ExportDestination, SourceDatabase

    job = json.loads(sys.stdin.read())
    storage = f"exports_batch_instance_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(SERVER_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{storage}"')
    core = {"seconds": 0.0}
    _time_core(assets, core)
    out = Path(tempfile.mkdtemp(prefix="exports-batch-dagster-"))
    try:
        # psycopg2, as in dagster.yaml: with psycopg 3, dagster-postgres fails to store run events.
        instance_url = with_database(SERVER_URL, storage).replace("postgresql://", "postgresql+psycopg2://", 1)
        overrides = {"storage": {"postgres": {"postgres_url": instance_url}}}
        with dg.instance_for_test(overrides=overrides) as instance:
            ids = job["campaign_ids"]
            instance.add_dynamic_partitions("campaigns", ids)
            resources = {"source": SourceDatabase(url=job["url"]), "destination": ExportDestination(url=str(out))}
            with Clock() as clock:
                for start in range(0, len(ids), CAMPAIGNS_PER_RUN):
                    chunk = ids[start : start + CAMPAIGNS_PER_RUN]
                    result = dg.materialize(
                        [assets.campaign_export],
                        selection=assets.DEFAULT_EXPORT_KEYS,
                        instance=instance,
                        resources=resources,
                        tags={
                            "dagster/asset_partition_range_start": chunk[0],
                            "dagster/asset_partition_range_end": chunk[-1],
                        },
                    )
                    assert result.success
    finally:
        shutil.rmtree(out, ignore_errors=True)
        with psycopg.connect(SERVER_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{storage}" WITH (FORCE)')
    print(json.dumps({"wall": clock.wall, "cpu": clock.cpu, "core": core["seconds"]}))


def references(url: str, campaign_ids: list[str], reference: Path) -> dict[str, str]:
    """The reference query of each campaign, on one line (\\copy takes the rest of its line)."""
    reference_query = load_reference(reference)
    with psycopg.connect(url) as conn:
        counts = dict(conn.execute("SELECT campaign_id::text, max(position) FROM survey_questions GROUP BY 1"))
    return {cid: " ".join(reference_query(cid, counts.get(cid) or 0).split()) for cid in campaign_ids}


def measure(args: argparse.Namespace, url: str, ids: list[str]) -> dict:
    """The cases alternating, round after round: seconds (wall, CPU) per case and round, and the phases."""
    sql = references(url, ids, args.reference)
    rounds: dict[str, list] = defaultdict(list)
    phases: dict[str, dict[str, float]] = {"b": defaultdict(float), "c": defaultdict(float)}
    current = {"phases": defaultdict(float)}
    install_phase_timers(current)
    for number in range(1, args.rounds + 1):
        for case, run in (
            ("a", lambda f: case_psql(url, sql, f)),
            ("b", lambda f: case_before(url, ids, f)),
            ("c", lambda f: case_after(url, ids, f, phases["c"])),
        ):
            current["phases"] = phases.get(case, defaultdict(float))
            folder = Path(tempfile.mkdtemp(prefix=f"exports-batch-{case}-"))
            try:
                with Clock() as clock:
                    run(folder)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            rounds[case].append({"wall": clock.wall, "cpu": clock.cpu})
            print(f"  round {number} ({case}) {clock.wall:8.2f} s  CPU {clock.cpu:7.2f} s", flush=True)
        if number <= args.dagster_rounds:
            for case, size in (("d", None), ("e", EVENT_BATCH_SIZE)):
                rounds[case].append(dagster_case(url, ids, size))
                last = rounds[case][-1]
                print(f"  round {number} ({case}) {last['wall']:8.2f} s  CPU {last['cpu']:7.2f} s", flush=True)
    return {
        "rounds": dict(rounds),
        "phases": {case: {k: v / args.rounds for k, v in steps.items()} for case, steps in phases.items()},
    }


CASES = {
    "a": "psql \\copy per campaign (one process each)",
    "b": "export core, before: own snapshot each",
    "c": "export core, after: small campaigns read together",
    "d": "Dagster range runs (in process), events unbatched",
    "e": f"Dagster range runs (in process), DAGSTER_EVENT_BATCH_SIZE={EVENT_BATCH_SIZE}",
}


def report(result: dict, campaigns: int) -> None:
    per = {
        case: {k: statistics.median([r[k] for r in runs]) * 1000 / campaigns for k in runs[0]}
        for case, runs in result["rounds"].items()
    }
    a = per["a"]["wall"]
    print(f"\nper campaign, medians of the rounds, {campaigns} campaigns:")
    print("| case | wall ms | CPU ms | wall / (a) |\n|---|---:|---:|---:|")
    for case, figures in per.items():
        print(f"| ({case}) {CASES[case]} | {figures['wall']:.1f} | {figures['cpu']:.1f} | {figures['wall'] / a:.2f} |")
    for case in ("d", "e"):
        if case in per:
            print(
                f"({case}) of which the export core {per[case]['core']:.1f} ms, Dagster (events, run) "
                f"{per[case]['wall'] - per[case]['core']:.1f} ms"
            )
    print("\nper campaign, time inside each step (ms; the writers run in threads), (b) before and (c) after:")
    steps = result["phases"]
    for name in sorted(set(steps["b"]) | set(steps["c"])):
        b_ms, c_ms = (steps[case].get(name, 0) * 1000 / campaigns for case in ("b", "c"))
        print(f"  {name:42s} {b_ms:7.2f} {c_ms:7.2f}")


def main() -> int:
    if "--dagster-child" in sys.argv:
        dagster_child()
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--campaigns", type=int, default=300)
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE)
    parser.add_argument(
        "--dagster-rounds",
        type=int,
        default=1,
        help="rounds that run cases (d) and (e) too (each takes seconds per campaign); 0 leaves them out",
    )
    args = parser.parse_args()
    url, ids = source_database(args.campaigns, args.seed)
    print(
        f"{len(ids)} campaigns in {url.rsplit('/', 1)[-1]}; rounds of (a) (b) (c)"
        + (f", (d) (e) in {args.dagster_rounds}" if args.dagster_rounds else ""),
        flush=True,
    )
    result = measure(args, url, ids)
    report(result, len(ids))
    results = BENCH_DIR / "results"
    results.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (results / f"batch-{stamp}.json").write_text(json.dumps({"campaigns": len(ids), **result}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
