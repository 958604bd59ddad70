"""Small campaigns read together from one source snapshot (core/reading.py): each campaign's files are the
bytes of its export read on its own, and what the shared read cannot serve is left to the campaign's own read."""

from __future__ import annotations

import sqlite3

import psycopg
import pytest

import exports_pipeline.core.reading as reading
from exports_pipeline.core.errors import SourceUnavailableError
from exports_pipeline.core.export import stage_export
from exports_pipeline.core.options import ExportOptions
from exports_pipeline.core.reading import campaigns_in_read_order
from exports_pipeline.core.sourceurl import sqlite_path
from exports_pipeline_tests import awkward
from exports_pipeline_tests.awkward import C1, C2, EMPTY
from exports_pipeline_tests.test_edge_values import EDGE, _load_edge

CAMPAIGNS = [C1, C2, EMPTY, EDGE]
ROW_FORMATS = ("csv", "parquet", "jsonl", "xlsx", "csv.gz")
OPTIONS = ExportOptions(formats=ROW_FORMATS)
# Figures that follow the snapshot's time (its name, the hours and days counted back from it).
SNAPSHOT_TIME_FIGURES = {"snapshot", "snapshot_time", "attempts_per_hour", "attempts_per_day"}


@pytest.fixture(params=["postgresql", "sqlite"])
def corpus(request, make_pg_database, tmp_path) -> str:
    """The awkward corpus (misfiled rows, transcripts of every kind, text as users type it) and the edge
    instants (infinity, far years), in PostgreSQL or SQLite."""
    url = make_pg_database() if request.param == "postgresql" else f"sqlite:///{tmp_path / 'edge.sqlite'}"
    _load_edge(url)
    return url


def _execute(url: str, sql: str) -> None:
    with sqlite3.connect(sqlite_path(url)) if url.startswith("sqlite") else psycopg.connect(url) as conn:
        conn.execute(sql)


def _outcome(url: str, campaign_id: str, options: ExportOptions, shared_read=None) -> dict:
    """What an export staged: each row file's bytes, and what it counted and checked."""
    with stage_export(url, campaign_id, options, "run00001", shared_read=shared_read) as staged:
        return {
            "files": {f.format: f.path.read_bytes() for f in staged.files if f.format in ROW_FORMATS},
            "rows": staged.rows,
            "anomalies": staged.anomalies,
            "fingerprint": staged.fingerprint,
            "checks": [(c.name, c.passed, c.metadata) for c in staged.checks],
            "preview": staged.preview.rows(),
            "figures": {k: v for k, v in staged.stats.items() if k not in SNAPSHOT_TIME_FIGURES},
        }


def _shared(url: str, options: ExportOptions = OPTIONS) -> dict:
    return dict(campaigns_in_read_order(url, CAMPAIGNS, options))


@pytest.mark.parametrize("options", [OPTIONS, ExportOptions(formats=ROW_FORMATS, states=("completed",), bom=False)])
def test_each_campaign_read_together_is_written_as_when_read_alone(corpus, options):
    shared = _shared(corpus, options)
    assert all(shared[cid] is not None for cid in CAMPAIGNS) and len(shared) == len(CAMPAIGNS)
    assert len({read.snapshot_time for read in shared.values()}) == 1  # one snapshot for all
    for campaign_id in CAMPAIGNS:
        assert _outcome(corpus, campaign_id, options, shared[campaign_id]) == _outcome(corpus, campaign_id, options)


def test_chunks_and_large_campaigns_change_nothing_written(corpus, monkeypatch):
    monkeypatch.setattr(reading, "CAMPAIGNS_PER_CHUNK", 1)
    monkeypatch.setattr(reading, "SMALL_CAMPAIGN_MAX_CONTACTS", 1)  # C2 (1 contact) and EMPTY; C1 and EDGE have 4
    order = list(campaigns_in_read_order(corpus, CAMPAIGNS, OPTIONS))
    assert [(cid, read is None) for cid, read in order] == [(C2, False), (EMPTY, False), (C1, True), (EDGE, True)]
    for campaign_id, read in order:
        assert _outcome(corpus, campaign_id, OPTIONS, read) == _outcome(corpus, campaign_id, OPTIONS)


def test_a_campaign_the_shared_read_cannot_serve_is_left_to_its_own_read(corpus):
    nan = "b0000000-0000-4000-8000-0000000000ff"
    _execute(
        corpus,
        "INSERT INTO call_attempts (id, campaign_id, contact_id, attempt_number, status, cost_usd) "
        f"VALUES ('{nan}', '{C2}', '{awkward.K5}', 9, 'failed', 'NaN')",
    )
    missing = "d0000000-0000-4000-8000-000000000000"
    order = list(campaigns_in_read_order(corpus, [missing, *CAMPAIGNS], OPTIONS))
    assert sorted(cid for cid, read in order if read is None) == sorted([missing, C2])
    assert [cid for cid, _ in order][-2:] == [missing, C2]  # after the others, once the shared snapshot is closed


def test_a_read_that_fails_leaves_its_chunk_to_their_own_reads(make_pg_database):
    url = make_pg_database()
    _load_edge(url)
    _execute(url, f"UPDATE contacts SET last_attempt_at = '270000-01-01 00:00:00+00' WHERE campaign_id = '{EDGE}'")
    order = dict(campaigns_in_read_order(url, CAMPAIGNS, OPTIONS))
    assert set(order) == set(CAMPAIGNS) and all(read is None for read in order.values())


def test_an_error_a_retry_can_mend_is_the_cause_of_the_campaigns_not_served(tmp_path):
    url = "postgresql://postgres@127.0.0.1:1/none"  # refused: the source is down, for now
    order = list(campaigns_in_read_order(url, CAMPAIGNS, OPTIONS))
    assert [cid for cid, _ in order] == CAMPAIGNS
    assert all(isinstance(cause, SourceUnavailableError) for _, cause in order)


def test_a_run_of_one_campaign_reads_it_on_its_own(corpus):
    assert list(campaigns_in_read_order(corpus, [C1], OPTIONS)) == [(C1, None)]
