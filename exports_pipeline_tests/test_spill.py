"""The spill of phase 1 (plain functions, no database): rows routed to buckets come back whole, each in
the bucket whose key range holds it, whatever the frames and their order."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import polars as pl
import pyarrow as pa
import pyarrow.ipc as ipc

from exports_pipeline.core.source import (
    READ_WORK_MEM_BYTES,
    PostgresSource,
    join_hash_mem_multiplier,
)
from exports_pipeline.core.spill import BucketSpill, bucket_boundaries, order_key
from exports_pipeline_tests import awkward

SCHEMA = {"contact_created_at": pl.Datetime("us", "UTC"), "contact_id": pl.String, "answer": pl.String}


def _rows(count: int, seed: int) -> pl.DataFrame:
    """Attempts-like rows whose contacts span pre-1970 to far future, many sharing a created_at."""
    rng = random.Random(seed)
    base = datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC)
    instants = [
        base + timedelta(days=rng.choice([0, 0, 1, 20_000, 2_900_000]), microseconds=rng.randrange(3))
        for _ in range(count)
    ]
    ids = [f"{rng.getrandbits(128):032x}" for _ in range(count)]
    ids = [f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}" for h in ids]
    answers = [rng.choice(["", None, "=1+1", 'é,"\r\n', "🙂 日本"]) for _ in range(count)]
    return pl.DataFrame({"contact_created_at": instants, "contact_id": ids, "answer": answers}, schema=SCHEMA)


def test_every_row_comes_back_once_in_the_bucket_whose_range_holds_it(tmp_path):
    rows = _rows(3_000, seed=1)
    sample = rows.select(pl.col("contact_created_at").alias("created_at"), pl.col("contact_id").alias("id"))
    boundaries = bucket_boundaries(sample.sample(fraction=0.3, seed=2), rows.height, 100)
    assert boundaries.len() >= 5
    spill = BucketSpill(tmp_path, boundaries)
    for frame in rows.sample(fraction=1.0, shuffle=True, seed=3).iter_slices(700):  # frames in any order
        spill.add("answers", frame, "contact_created_at", "contact_id")
    spill.close()

    keyed = rows.with_columns(order_key("contact_created_at", "contact_id"))
    read_back = []
    for bucket in range(spill.count):
        part = BucketSpill(tmp_path, boundaries).read("answers", bucket, SCHEMA)  # as another process would
        keys = part.select(order_key("contact_created_at", "contact_id")).to_series()
        if bucket > 0 and keys.len():
            assert keys.min() >= boundaries[bucket - 1]
        if bucket < boundaries.len() and keys.len():
            assert keys.max() < boundaries[bucket]
        read_back.append(part)
    together = pl.concat(read_back)
    assert together.schema == pl.Schema(SCHEMA)
    assert together.sort(pl.all()).equals(rows.sort(pl.all()))  # nulls and empty strings kept apart
    assert keyed.height == together.height


def test_each_frame_writes_one_piece_per_bucket_it_touches(tmp_path):
    rows = _rows(1_000, seed=4)
    sample = rows.select(pl.col("contact_created_at").alias("created_at"), pl.col("contact_id").alias("id"))
    spill = BucketSpill(tmp_path, bucket_boundaries(sample, rows.height, 100))
    frames = list(rows.iter_slices(400))
    for frame in frames:
        spill.add("answers", frame, "contact_created_at", "contact_id")
    spill.close()
    touched = sum(
        spill.boundaries.search_sorted(
            frame.select(order_key("contact_created_at", "contact_id")).to_series(), side="right"
        ).n_unique()
        for frame in frames
    )
    with pa.OSFile(str(tmp_path / "answers.pieces.arrow")) as source:
        assert ipc.open_file(source).num_record_batches == touched


def test_a_table_without_rows_reads_as_empty_frames_with_its_schema(tmp_path):
    spill = BucketSpill(tmp_path, pl.Series("order_key", ["5", "9"], dtype=pl.String))
    spill.add("answers", pl.DataFrame(schema=SCHEMA), "contact_created_at", "contact_id")
    spill.close()
    for bucket in range(spill.count):
        empty = spill.read("answers", bucket, SCHEMA)
        assert empty.is_empty() and empty.schema == pl.Schema(SCHEMA)


def test_the_join_hash_gets_the_memory_a_large_campaign_needs(pg_url):
    assert join_hash_mem_multiplier(0) == 2.0 and join_hash_mem_multiplier(1_000_000) == 2.0
    # 834 MB measured for the hash of 10M contacts: the limit must be above it.
    assert READ_WORK_MEM_BYTES * join_hash_mem_multiplier(10_000_000) > 834 * 2**20
    assert abs(join_hash_mem_multiplier(20_000_000) - 2 * join_hash_mem_multiplier(10_000_000)) <= 0.1
    awkward.load(pg_url)
    with PostgresSource(pg_url, 60_000) as source:
        queries = source.snapshot_queries(awkward.C1, 10_000_000)
        for table in ("attempts", "answers"):  # what the reading session itself runs with
            probe = replace(
                queries[table],
                rejects_nan_costs=False,
                schema={"m": pl.String, "w": pl.String},
                sql="SELECT current_setting('hash_mem_multiplier') AS m, current_setting('work_mem') AS w",
            )
            settings = pl.concat(list(probe.frames(10)))
            assert settings.row(0) == (str(join_hash_mem_multiplier(10_000_000)), "256MB")
