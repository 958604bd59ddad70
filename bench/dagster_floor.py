"""The floor under case (c): what any command that exports through Dagster in process pays before its
own work, measured without the project.

It imports the data libraries an export needs (polars, pyarrow, connectorx, psycopg, boto3) and
Dagster, opens a SQLite instance in DAGSTER_HOME, and materializes one trivial asset in process,
then exits the way the command does (no interpreter teardown). Run by bench.py (never imported).
"""

import os
import sys

import boto3  # noqa: F401
import connectorx  # noqa: F401
import dagster as dg
import polars  # noqa: F401
import psycopg  # noqa: F401
import pyarrow  # noqa: F401


@dg.asset
def trivial() -> int:
    return 1


if __name__ == "__main__":
    result = dg.materialize([trivial], instance=dg.DagsterInstance.get())
    sys.stdout.flush()
    os._exit(0 if result.success else 1)
