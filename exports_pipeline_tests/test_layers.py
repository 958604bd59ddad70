"""The rule that puts each test in one layer (conftest.layer_of; README, "Tests"), on stand-in items."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from exports_pipeline_tests.conftest import layer_of


@dataclass
class StandIn:
    """What layer_of reads of a collected test: its marks (own and inherited) and its fixtures."""

    marks: list[str] = field(default_factory=list)
    fixturenames: list[str] = field(default_factory=list)
    nodeid: str = "test_x.py::test_x"

    def iter_markers(self):
        return (getattr(pytest.mark, name).mark for name in self.marks)


@pytest.mark.parametrize(
    "marks, fixtures, layer",
    [
        ([], [], "unit"),
        ([], ["tmp_path", "sqlite_url"], "unit"),
        (["parametrize", "dagster"], ["tmp_path"], "dagster"),
        (["integration"], [], "integration"),  # starts a server itself
        ([], ["pg_url", "make_pg_database"], "integration"),  # pg_url brings make_pg_database
        ([], ["s3_bucket", "s3_endpoint"], "integration"),
        ([], ["smtp_server"], "integration"),
        (["dagster"], ["make_pg_database"], "integration"),  # dg.materialize on PostgreSQL
        (["dagster", "integration"], [], "integration"),  # a parameter's mark outranks its function's
    ],
)
def test_the_heaviest_of_marks_and_fixtures_decides(marks, fixtures, layer):
    assert layer_of(StandIn(marks, fixtures)) == layer


@pytest.mark.parametrize("marks, fixtures", [(["unit"], ["make_pg_database"]), (["unit", "dagster"], [])])
def test_a_unit_mark_on_a_test_that_needs_more_is_refused(marks, fixtures):
    with pytest.raises(pytest.UsageError, match="is marked unit but uses"):
        layer_of(StandIn(marks, fixtures))
