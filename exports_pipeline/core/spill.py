"""Buckets of contacts in export order, spilled to local disk, so memory does not grow with the campaign.

The source streams each table once, in any order (a plain scan is what PostgreSQL serves fastest).
Every row is routed by its contact's export-order key (created_at, id) to the bucket whose key range
holds it; buckets are then read back one at a time, in order. The boundaries only bound the size of a
bucket: whatever they are, the concatenation of the sorted buckets is the export order, so the output
never depends on them (nor on the batch size).
"""

from __future__ import annotations

import math
import os
import pickle
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.ipc as ipc

from exports_pipeline.core.errors import ExportError
from exports_pipeline.core.fingerprint import STREAMS
from exports_pipeline.core.sourceurl import redact_text

_SIGN_BIT = 1 << 63  # flipped on the bits of epoch microseconds, it makes unsigned (and text) order time order
SAMPLES_PER_BUCKET = 20


def order_key(created_at: str, contact_id: str) -> pl.Expr:
    """(created_at, id) as one string that sorts in export order."""
    unsigned = pl.col(created_at).dt.epoch("us").reinterpret(signed=False) ^ pl.lit(_SIGN_BIT, dtype=pl.UInt64)
    micros = unsigned.cast(pl.String).str.zfill(20)
    return (micros + pl.col(contact_id)).alias("order_key")


def sample_fraction(contacts: int, batch_size: int) -> float:
    """Share of contacts to sample so that each bucket gets about SAMPLES_PER_BUCKET samples."""
    buckets = math.ceil(contacts / batch_size)
    return 1.0 if buckets <= 1 else min(1.0, SAMPLES_PER_BUCKET * buckets / contacts)


def bucket_boundaries(sample: pl.DataFrame, contacts: int, batch_size: int) -> pl.Series:
    """The first key of every bucket but the first, from a sample of (created_at, id)."""
    buckets = math.ceil(contacts / batch_size)
    keys = sample.select(order_key("created_at", "id")).to_series().sort()
    if buckets <= 1 or keys.is_empty():
        return pl.Series("order_key", [], dtype=pl.String)
    picks = sorted({round(i * keys.len() / buckets) for i in range(1, buckets)} - {0, keys.len()})
    return keys.gather(picks).unique(maintain_order=True)


class BucketSpill:
    """Per table, one Arrow IPC file of pieces (one record batch per bucket and frame) and an index of
    which pieces hold which bucket.

    Each frame that arrives is converted to Arrow once, sorted by bucket, and each bucket's range is
    written as a slice of it (converting one small part per bucket and frame cost ten times the
    routing at 200 buckets, and made readers fall behind their stream, whose unread frames then piled
    up in memory). Reading a bucket reads just its pieces through the file's footer, with plain reads:
    a memory map of the file counted every page near a piece in the process's memory.
    One thread (or process) per table adds rows; the index is written when the spill is closed.
    """

    def __init__(self, folder: Path, boundaries: pl.Series):
        self.folder, self.boundaries = folder, boundaries
        self.count = boundaries.len() + 1
        self._writers: dict[str, _PieceWriter] = {}
        self._pieces: dict[str, dict[int, list[int]]] = {}
        self._lock = threading.Lock()

    def _path(self, table: str, suffix: str = "pieces") -> Path:
        return self.folder / f"{table}.{suffix}.arrow"

    def add(self, table: str, rows: pl.DataFrame, created_at: str, contact_id: str) -> None:
        if rows.is_empty():
            return
        if self.count == 1:  # one bucket: nothing to sort
            run, starts = rows, [0, rows.height]
        else:
            buckets = self.boundaries.search_sorted(
                rows.select(order_key(created_at, contact_id)).to_series(), side="right"
            ).alias("bucket")
            run = rows.with_columns(buckets).sort("bucket", maintain_order=True)
            starts = (
                run["bucket"].search_sorted(pl.Series(range(self.count + 1), dtype=pl.UInt32), side="left").to_list()
            )
            run = run.drop("bucket")
        with self._lock:
            writer = self._writers.get(table)
            if writer is None:
                writer = self._writers[table] = _PieceWriter(self._path(table), self._path(table, "index"))
        writer.write(run, starts)

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()

    def _bucket_pieces(self, table: str) -> dict[int, list[int]]:
        """bucket -> numbers of the record batches holding its rows, from the index its writer left."""
        if table not in self._pieces:
            path = self._path(table, "index")
            pieces: dict[int, list[int]] = {}
            if path.exists():
                with pa.OSFile(str(path)) as source:
                    index = pl.from_arrow(ipc.open_file(source).read_all())
                for bucket, batch in index.iter_rows():
                    pieces.setdefault(bucket, []).append(batch)
            self._pieces[table] = pieces
        return self._pieces[table]

    def read(self, table: str, bucket: int, schema: dict) -> pl.DataFrame:
        numbers = self._bucket_pieces(table).get(bucket)
        if not numbers:
            return pl.DataFrame(schema=schema)
        with pa.OSFile(str(self._path(table))) as source:
            reader = ipc.open_file(source)
            rows = pa.Table.from_batches([reader.get_batch(n) for n in numbers]).combine_chunks()
        return pl.from_arrow(rows).cast(schema)


class _PieceWriter:
    """Writes one table's pieces and, on close, their index (bucket, record batch number)."""

    def __init__(self, path: Path, index_path: Path):
        self.path, self.index_path = path, index_path
        self._sink: pa.BufferedOutputStream | None = None
        self._writer: ipc.RecordBatchFileWriter | None = None
        self._buckets: list[int] = []  # of each record batch written, in order

    def write(self, run: pl.DataFrame, starts: list[int]) -> None:
        """run: rows sorted by bucket; starts: the first row of each bucket in it, then its length."""
        table = run.to_arrow().combine_chunks()
        if self._writer is None:
            # Buffered: unbuffered, every buffer of every small piece would be a system call of its own.
            self._sink = pa.BufferedOutputStream(pa.OSFile(str(self.path), "wb"), buffer_size=1 << 20)
            self._writer = ipc.new_file(self._sink, table.schema)
        rows = table.to_batches()[0]  # one batch: the run is one chunk, and never empty
        for bucket in range(len(starts) - 1):
            if starts[bucket + 1] > starts[bucket]:
                self._writer.write_batch(rows.slice(starts[bucket], starts[bucket + 1] - starts[bucket]))
                self._buckets.append(bucket)

    def close(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        self._sink.close()
        self._writer = self._sink = None
        index = pl.DataFrame(
            {"bucket": self._buckets, "batch": range(len(self._buckets))},
            schema={"bucket": pl.UInt32, "batch": pl.UInt32},
        ).to_arrow()
        with ipc.new_file(str(self.index_path), index.schema) as writer:
            writer.write_table(index)


# Per table: its contact's order key columns (the instant the fingerprint takes the max of: fingerprint.STREAMS).
TABLE_KEYS = {
    "contacts": ("created_at", "id"),
    "attempts": ("contact_created_at", "contact_id"),
    "answers": ("contact_created_at", "contact_id"),
}


@dataclass
class StreamTally:
    """What one table's stream says on the way: its part of the fingerprint, and rows set aside."""

    rows: int = 0
    latest: int | None = None  # microseconds since 1970 (instants.py: Python's datetime does not hold them all)
    misfiled: int = 0


def spill_table(frames: Iterator[pl.DataFrame], spill: BucketSpill, table: str) -> StreamTally:
    """Route a table's rows to their buckets; rows whose contact is not the campaign's are only counted."""
    created_at, contact_id = TABLE_KEYS[table]
    instant = STREAMS[table].activity_expr()
    tally = StreamTally()
    for frame in frames:
        tally.rows += frame.height
        latest = frame.select(instant.max().dt.epoch("us")).item()
        if latest is not None and (tally.latest is None or latest > tally.latest):
            tally.latest = latest
        own = frame.filter(pl.col(created_at).is_not_null())
        tally.misfiled += frame.height - own.height
        spill.add(table, own, created_at, contact_id)
    return tally


def spill_table_in_process(query, batch_size: int, spill: BucketSpill, table: str) -> StreamTally:
    """spill_table in a child process (python -m exports_pipeline.core.spill), for one SnapshotQuery.
    The child writes its table's bucket files and dies with its parent."""
    job = {
        "query": query,
        "batch_size": batch_size,
        "folder": str(spill.folder),
        "table": table,
        "boundaries": spill.boundaries.to_list(),
        "parent": os.getpid(),
    }
    done = subprocess.run(
        [sys.executable, "-m", "exports_pipeline.core.spill"], input=pickle.dumps(job), capture_output=True, check=False
    )
    if done.returncode != 0 or not done.stdout:
        detail = redact_text(done.stderr.decode(errors="replace").strip()[-2000:], query.source_url)
        raise ExportError(f"the reader of {table} stopped (exit status {done.returncode}): {detail}")
    kind, value = pickle.loads(done.stdout)
    if kind == "error":
        raise value
    return StreamTally(**value)


def _run_child() -> None:
    """The child side of spill_table_in_process: a pickled job on stdin, the pickled outcome on stdout."""
    try:  # Linux: killed with the parent, so that a killed export leaves no reader behind
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    job = pickle.loads(sys.stdin.buffer.read())
    if os.getppid() != job["parent"]:
        sys.exit(1)  # the parent died before the death signal was armed
    spill = BucketSpill(Path(job["folder"]), pl.Series("order_key", job["boundaries"], dtype=pl.String))
    try:
        outcome = ("tally", asdict(spill_table(job["query"].frames(job["batch_size"]), spill, job["table"])))
    except ExportError as exc:
        outcome = ("error", exc)
    finally:
        spill.close()
    sys.stdout.buffer.write(pickle.dumps(outcome))


if __name__ == "__main__":
    _run_child()
