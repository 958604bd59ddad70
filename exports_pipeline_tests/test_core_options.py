"""Run options and columns (core/options.py, SPEC section 3): validated and normalised before any work.
Plain functions, no server."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from exports_pipeline.core.errors import InvalidInputError
from exports_pipeline.core.options import (
    BASE_COLUMNS,
    CONTACT_STATES,
    DEFAULT_BATCH_SIZE,
    ExportOptions,
    export_columns,
)


@pytest.mark.parametrize(
    "given, kept",
    [
        (("terminal",), ("completed", "refused", "not_reached", "excluded")),
        (("excluded", "pending"), ("pending", "excluded")),  # spec order, whatever the order given
        (("completed", "completed", "terminal"), ("completed", "refused", "not_reached", "excluded")),
        (("pending", "terminal"), ("pending", "completed", "refused", "not_reached", "excluded")),
        (CONTACT_STATES, CONTACT_STATES),
    ],
)
def test_states_expand_the_preset_and_keep_spec_order_once_each(given, kept):
    assert ExportOptions(states=given).states == kept


@pytest.mark.parametrize(
    "states, named",
    [
        ((), "empty list"),
        (("done",), "done"),
        (("Completed",), "Completed"),  # states are case-sensitive, as in the source
        (("completed", "pending ", "x,y"), "pending , x,y"),
    ],
)
def test_unknown_states_are_refused_naming_them_and_the_allowed_ones(states, named):
    with pytest.raises(InvalidInputError, match="option states") as error:
        ExportOptions(states=states)
    assert named in str(error.value) and "terminal" in str(error.value)


def test_times_become_utc_and_a_time_without_zone_is_refused():
    tokyo = timezone(timedelta(hours=9))
    options = ExportOptions(
        updated_from=datetime(2026, 1, 1, 9, tzinfo=tokyo), updated_to=datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC)
    )
    assert options.updated_from == datetime(2026, 1, 1, tzinfo=UTC) and options.updated_from.tzinfo == UTC
    with pytest.raises(InvalidInputError, match="option updated_to: 2026-01-01T00:00:00 has no time zone"):
        ExportOptions(updated_to=datetime(2026, 1, 1))


@pytest.mark.parametrize(
    "start, end",
    [
        (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC)),  # an empty window
        (
            datetime(2026, 1, 1, 1, tzinfo=timezone(timedelta(hours=1))),
            datetime(2026, 1, 1, tzinfo=UTC),
        ),  # same instant
        (datetime(2026, 1, 2, tzinfo=UTC), datetime(1969, 12, 31, tzinfo=UTC)),
    ],
)
def test_a_window_that_does_not_run_forward_is_refused(start, end):
    with pytest.raises(InvalidInputError, match="updated_from must be earlier than updated_to"):
        ExportOptions(updated_from=start, updated_to=end)


def test_one_sided_windows_and_far_dates_are_accepted():
    assert ExportOptions(updated_from=datetime(1, 1, 1, tzinfo=UTC)).updated_to is None
    assert ExportOptions(updated_to=datetime(9999, 12, 31, tzinfo=UTC)).updated_from is None


@pytest.mark.parametrize(
    "columns, named",
    [
        ((), "an empty selection exports nothing"),
        (("phone",), "phone"),
        (("q0_answer",), "q0_answer"),  # questions count from 1
        (("q01_answer",), "q01_answer"),
        (("Q1_answer",), "Q1_answer"),
        (("name", "name,phone_number"), "name,phone_number"),
    ],
)
def test_unknown_columns_are_refused_naming_them(columns, named):
    with pytest.raises(InvalidInputError, match="option columns") as error:
        ExportOptions(columns=columns)
    assert named in str(error.value)


def test_columns_keep_the_first_of_each_duplicate_and_accept_any_question():
    assert ExportOptions(columns=("name", "q12_answer", "name", "contact_id")).columns == (
        "name",
        "q12_answer",
        "contact_id",
    )


@pytest.mark.parametrize(
    "formats, kept",
    [
        (("parquet", "csv"), ("csv", "parquet")),
        (("pdf", "csv.gz", "xlsx", "jsonl", "xlsx"), ("jsonl", "xlsx", "csv.gz", "pdf")),
    ],
)
def test_formats_keep_one_order_and_drop_duplicates(formats, kept):
    assert ExportOptions(formats=formats).formats == kept


@pytest.mark.parametrize("formats", [("docx",), ("CSV",), ("csv", "gz")])
def test_unknown_formats_are_refused(formats):
    with pytest.raises(InvalidInputError, match="option formats"):
        ExportOptions(formats=formats)


@pytest.mark.parametrize("batch_size", [0, -1, 1.5, "100", None])
def test_batch_size_must_be_a_positive_integer(batch_size):
    with pytest.raises(InvalidInputError, match="option batch_size"):
        ExportOptions(batch_size=batch_size)


@pytest.mark.parametrize(
    "options, moves",
    [
        (ExportOptions(), True),
        (ExportOptions(formats=("csv", "parquet", "xlsx", "pdf")), True),
        (ExportOptions(formats=("xlsx",)), False),  # an XLSX alone must not hide the latest CSV and Parquet
        (ExportOptions(formats=("csv",)), False),
        (ExportOptions(states=CONTACT_STATES), False),  # a filter, even one that keeps everything
        (ExportOptions(columns=BASE_COLUMNS), False),
        (ExportOptions(updated_from=datetime(1970, 1, 1, tzinfo=UTC)), False),
        (ExportOptions(bom=False, formula_guard=False, batch_size=1), True),  # how, not what: still the default export
    ],
)
def test_only_the_default_selection_with_the_default_files_moves_latest(options, moves):
    assert options.moves_latest is moves


def test_describe_is_what_the_manifest_records():
    options = ExportOptions(
        states=("terminal",),
        updated_from=datetime(2026, 3, 1, 12, tzinfo=UTC),
        columns=("contact_id",),
        formats=("csv",),
        bom=False,
    )
    described = options.describe()
    assert json.loads(json.dumps(described)) == described
    assert described == {
        "states": ["completed", "refused", "not_reached", "excluded"],
        "updated_from": "2026-03-01T12:00:00+00:00",
        "updated_to": None,
        "columns": ["contact_id"],
        "formats": ["csv"],
        "bom": False,
        "formula_guard": True,
        "batch_size": DEFAULT_BATCH_SIZE,
    }


def test_export_columns_are_the_spec_header_then_one_per_question():
    assert export_columns(0) == list(BASE_COLUMNS)
    assert export_columns(3)[-4:] == ["transcript_summary", "q1_answer", "q2_answer", "q3_answer"]
    assert export_columns(12, ("q12_answer", "name", "campaign_id")) == ["campaign_id", "name", "q12_answer"]


def test_export_columns_refuse_a_question_the_campaign_does_not_have():
    with pytest.raises(InvalidInputError, match=r"unknown column.*q3_answer.*allowed: .*q2_answer$"):
        export_columns(2, ("q1_answer", "q3_answer"))
