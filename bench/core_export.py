"""Benchmark case (b): the export core's own work for one campaign, in a fresh Python process.

Run by bench.py (never imported by the package). It does what the Dagster asset does, without
Dagster: `stage_export` (one source snapshot, batches through the transform into local files, the
blocking checks) then `publish_export` to a LocalDestination (files, manifest.json, latest.json).

With --timings PATH it also records how long the process spent inside each phase of the core
(source queries and streams, transform, writers, checks, publication) and the RSS as each streamed
frame arrives, by wrapping the core's functions with timers at run time (microseconds per call).
The functions are found by what they are (public methods of PostgresSource, the core functions and
classes export.py uses, the writers), not by name, so a refactored core is still timed.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import os
import sys
import time
import types
import uuid
from collections import defaultdict
from pathlib import Path

T0 = time.perf_counter()
PAGE = os.sysconf("SC_PAGE_SIZE")

from exports_pipeline.core import export as export_mod  # noqa: E402
from exports_pipeline.core import publish as publish_mod  # noqa: E402
from exports_pipeline.core import source as source_mod  # noqa: E402
from exports_pipeline.core import writers as writers_mod  # noqa: E402
from exports_pipeline.core.destinations import LocalDestination  # noqa: E402
from exports_pipeline.core.options import ExportOptions  # noqa: E402

IMPORTED = time.perf_counter()
SECONDS: dict[str, float] = defaultdict(float)
CALLS: dict[str, int] = defaultdict(int)
BATCHES: list[dict] = []  # one entry per frame of a stream: when it arrived and the process RSS then


def _rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * PAGE / 2**20


class _TimedIterator:
    """Times the production of each item of an iterator the core returned (a stream of frames)."""

    def __init__(self, name: str, iterator):
        self.name, self.iterator = name, iterator

    def __iter__(self):
        return self

    def __next__(self):
        start = time.perf_counter()
        try:
            item = next(self.iterator)
        finally:
            SECONDS[self.name] += time.perf_counter() - start
        CALLS[self.name] += 1
        BATCHES.append(
            {
                "stream": self.name,
                "t": round(time.perf_counter() - T0, 3),
                "rows": getattr(item, "height", None),
                "rss_mib": round(_rss_mib(), 1),
            }
        )
        return item

    def close(self):
        close = getattr(self.iterator, "close", None)
        if close:
            close()


def _is_stream(value) -> bool:
    return isinstance(value, types.GeneratorType)  # not any iterator: a file object is one too


def _timed(name: str, func):
    """Time a call; when it returns a stream (generator or iterator), time the stream's items too."""
    if getattr(func, "__bench_timed__", False):
        return func

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            result = func(*args, **kwargs)
        finally:
            SECONDS[name] += time.perf_counter() - start
            CALLS[name] += 1
        return _TimedIterator(name + " (stream)", iter(result)) if _is_stream(result) else result

    wrapper.__bench_timed__ = True
    return wrapper


def _ours(obj) -> bool:
    return getattr(obj, "__module__", "").startswith("exports_pipeline.core")


def _wrap_class(cls, prefix: str, names=None, init: bool = False) -> None:
    for name, member in list(vars(cls).items()):
        if (
            inspect.isfunction(member)
            and ((init and name == "__init__") or not name.startswith("_"))
            and (names is None or name in names)
        ):
            setattr(cls, name, _timed(f"{prefix}{cls.__name__}.{name}", member))


def install_phase_timers() -> None:
    """Wrap the core's phases by what they are, not by name, so that a refactored core is still timed:
    every public method of the PostgreSQL source, every function and class method of exports_pipeline.core
    that export.py calls, the writers and the publication. Times nest (a wrapped helper calling another)
    and overlap when the core reads in threads: read them as time spent inside, not as a partition."""
    pg = getattr(source_mod, "PostgresSource", None)
    if pg is not None:
        _wrap_class(pg, "source: ", init=True)  # __init__: connect, export the snapshot, check the schema
        if hasattr(pg, "_rows"):
            pg._rows = _timed("source: PostgresSource._rows (psycopg queries)", pg._rows)
    for member in list(vars(writers_mod).values()):
        if inspect.isclass(member) and member.__module__ == writers_mod.__name__:
            _wrap_class(member, "write: ", {"write", "close"})
    _wrap_class(publish_mod.StagedFile, "publish: ", {"describe"})
    skip = {"stage_export", "publish_export", "parse_campaign_id", "export_columns", "open_source"}
    for name, member in list(vars(export_mod).items()):
        if name in skip or not _ours(member):
            continue
        if inspect.isfunction(member):
            setattr(export_mod, name, _timed(f"export: {name}", member))
        elif inspect.isclass(member) and not issubclass(member, BaseException) and member is not pg:
            _wrap_class(member, "export: ")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source-url", required=True)
    parser.add_argument("--campaign", required=True)
    parser.add_argument("--dest", required=True, help="LocalDestination folder")
    parser.add_argument("--format", action="append", dest="formats", help="csv and/or parquet (default both)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--timings", type=Path, help="write phase timings (JSON) here")
    args = parser.parse_args()

    if args.timings:
        install_phase_timers()
    options = {"formats": tuple(args.formats or ("csv", "parquet"))}
    if args.batch_size:
        options["batch_size"] = args.batch_size
    options = ExportOptions(**options)
    run_id = uuid.uuid4().hex
    start = time.perf_counter()
    with export_mod.stage_export(args.source_url, args.campaign, options, run_id) as staged:
        staged_at = time.perf_counter()
        published = export_mod.publish_export(staged, LocalDestination(args.dest))
        published_at = time.perf_counter()
        rows = staged.rows
        failed = [c.name for c in staged.failed_blocking_checks]
    end = time.perf_counter()
    if args.timings:
        args.timings.write_text(
            json.dumps(
                {
                    "rows": rows,
                    "imports_s": IMPORTED - T0,
                    "stage_s": staged_at - start,
                    "publish_s": published_at - staged_at,
                    "cleanup_s": end - published_at,
                    "phases": {k: {"seconds": round(v, 4), "calls": CALLS[k]} for k, v in sorted(SECONDS.items())},
                    "batches": BATCHES,
                    "end": {"t": round(time.perf_counter() - T0, 3), "rss_mib": round(_rss_mib(), 1)},
                },
                indent=2,
            )
        )
    print(json.dumps({"rows": rows, "snapshot": published.snapshot, "failed_checks": failed}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
