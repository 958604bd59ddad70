"""Campaign ids (core/ids.py), run tags (run_tags.py) and how runs are grouped (defs/run_requests.stretches):
plain functions, no server, no Dagster run."""

from __future__ import annotations

import pytest

from exports_pipeline.core.errors import InvalidInputError
from exports_pipeline.core.ids import parse_campaign_id
from exports_pipeline.defs.run_requests import stretches
from exports_pipeline.run_tags import campaign_name_tag, export_run_tags, run_tags, trigger_of

CID = "c1000000-0000-4000-8000-000000000001"


@pytest.mark.parametrize("raw", [CID, CID.upper(), f"  {CID}\n", CID.replace("-", ""), CID.replace("-", "").upper()])
def test_plain_uuid_forms_give_the_canonical_lowercase_id(raw):
    assert parse_campaign_id(raw) == CID


@pytest.mark.parametrize(
    "raw",
    [
        "{" + CID + "}",  # braces, urn: and other spellings uuid.UUID accepts are not ids
        "urn:uuid:" + CID,
        CID + "0",
        CID[:-1],
        CID.replace("c", "g", 1),
        "",
        "   ",
        "'; DROP TABLE campaigns; --",
        "../" + CID,
        "c1000000-0000-4000-8000-00000000000１",  # a fullwidth digit
    ],
)
def test_anything_else_is_refused_naming_the_value(raw):
    with pytest.raises(InvalidInputError) as error:
        parse_campaign_id(raw)
    assert repr(raw) in str(error.value)


def test_run_tags_join_formats_in_the_order_given():
    assert run_tags("schedule") == {"trigger": "schedule", "formats": "csv,parquet"}
    assert run_tags("manual", ("xlsx",)) == {"trigger": "manual", "formats": "xlsx"}


def test_export_run_tags_name_the_campaign_on_one_line():
    tags = export_run_tags(CID, "sensor", ("csv",), name='Été\r\n2026, "promo" 🎉')
    assert tags == {"campaign_id": CID, "campaign_name": 'Été 2026, "promo" 🎉', "trigger": "sensor", "formats": "csv"}
    assert "campaign_name" not in export_run_tags(CID, "sensor", name=None)
    assert "campaign_name" not in export_run_tags(CID, "sensor", name="\t \n")


def test_a_name_tag_never_exceeds_the_limit_dagster_means_for_tags():
    for name in ["x" * 500, "東" * 100, "🎉" * 80, "a\u0301" * 60]:
        assert len(campaign_name_tag(name)["campaign_name"]) <= 63


@pytest.mark.parametrize(
    "tags, trigger",
    [
        ({}, "manual"),
        ({"dagster/partition": CID}, "manual"),
        ({"dagster/schedule_name": "nightly"}, "schedule"),
        ({"dagster/sensor_name": "campaign_completed_sensor"}, "sensor"),
        ({"dagster/backfill": "abc", "dagster/sensor_name": "s"}, "backfill"),  # a backfill whoever started it
        ({"dagster/schedule_name": "n", "dagster/sensor_name": "s"}, "schedule"),
    ],
)
def test_trigger_of_reads_dagsters_own_tags(tags, trigger):
    assert trigger_of(tags) == trigger


ORDER = [f"k{i:02d}" for i in range(10)]


@pytest.mark.parametrize(
    "wanted, size, runs",
    [
        ([], 100, []),
        (["k03"], 100, [["k03"]]),
        (["k01", "k02", "k03"], 100, [["k01", "k02", "k03"]]),
        (["k03", "k01", "k02"], 100, [["k01", "k02", "k03"]]),  # partition order, not the order asked
        (["k01", "k02", "k04", "k05"], 100, [["k01", "k02"], ["k04", "k05"]]),  # k03 needs no export: cut there
        (["k00", "k01", "k02", "k03", "k04"], 2, [["k00", "k01"], ["k02", "k03"], ["k04"]]),
        (["k01", "k01", "k02"], 100, [["k01", "k02"]]),  # asked twice, exported once
        (["gone", "k05"], 100, [["k05"]]),  # a campaign no longer among the partitions is left out
        (["gone"], 100, []),
    ],
)
def test_stretches_are_runs_of_consecutive_partitions_at_most_size_long(wanted, size, runs):
    assert stretches(wanted, ORDER, size) == runs


def test_every_wanted_campaign_is_in_exactly_one_stretch():
    wanted = ORDER[::3] + ORDER[1:4]
    runs = stretches(wanted, ORDER, 2)
    flat = [key for run in runs for key in run]
    assert sorted(flat) == sorted(set(wanted)) and all(1 <= len(run) <= 2 for run in runs)
