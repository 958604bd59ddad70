"""The one line that explains a reported check that did not pass, in the UI and on the command line."""

from __future__ import annotations

import dagster as dg
import pytest

from exports_pipeline.core.export import CheckOutcome
from exports_pipeline.defs.checks import CSV_KEY, check_evaluations, explain


@pytest.mark.parametrize(
    "outcome, line",
    [
        (
            CheckOutcome("phone_numbers_e164", False, False, "", {"not_e164": 3, "share_percent": 2.5}),
            "3 phone numbers are not E.164, 2.5% of rows (reported, not blocking)",
        ),
        (
            CheckOutcome("phone_numbers_e164", False, False, "", {"not_e164": 1, "share_percent": 100.0}),
            "1 phone number is not E.164, 100.0% of rows (reported, not blocking)",
        ),
        (
            CheckOutcome(
                "no_row_anomalies",
                False,
                False,
                "",
                {
                    "answers_out_of_range": 2,
                    "transcript_invalid_json": 0,
                    "transcript_not_object": 1,
                    "some_new_kind": 4,
                },
            ),
            "row anomalies: 2 answers to no question, 1 transcript not a JSON object, 4 some new kind "
            "(reported, not blocking)",
        ),
        (
            CheckOutcome("a_new_check", False, False, "Something worth a look.", {}),
            "a_new_check: Something worth a look. (reported, not blocking)",
        ),
        (CheckOutcome("phone_numbers_e164", True, False, "", {"not_e164": 0}), None),  # passed: nothing to explain
        (CheckOutcome("row_count_matches_source", False, True, "", {}), None),  # blocking: the run fails with its own
    ],
)
def test_a_reported_check_that_did_not_pass_is_explained_in_one_line(outcome, line):
    assert explain(outcome) == line
    (evaluation,) = check_evaluations([outcome], "c1", {dg.AssetCheckKey(CSV_KEY, outcome.name)})
    assert evaluation.description == line and evaluation.partition == "c1"  # what the UI shows with the check
