"""Dagster's PostgreSQL event log storage, with the claims of a pool's slots taken one at a time.

The pool "source_database" keeps the source database at N simultaneous exports only if a slot goes to
one step at a time. In dagster-postgres 0.29.27 it does not: every statement of a claim runs in
autocommit, so a claim selects a free slot row `FOR UPDATE SKIP LOCKED` (the lock ends with that
statement) and then writes its step into the row by id alone. Two run workers claiming at the same
moment can both pick the same free row and both be told CLAIMED, which leaves the pool's other slot
free for a third step. Measured here: 8 processes claiming a 2-slot pool 20 times each held 3 or 4
slots at once in every try, and a 20-campaign backfill ran 3 export steps at once.

This storage takes a PostgreSQL advisory lock per pool around each claim, so that claims of a pool
run one after the other in every process (webserver, daemon, run workers, the command line); each
claim then sees the rows the previous one wrote. Freeing a slot needs no lock: it only gives slots
back. A pool's default limit is also set up under the lock: Dagster's own code inserts the limit and,
when the row is there already, updates it in the transaction that the failed insert aborted on
PostgreSQL (dagster-io/dagster#33552). So the first claims of a new pool, made together, failed (7 of 8
here), and so did every claim after `default_limit` was changed in dagster.yaml. Here the limit is
inserted once and changed by an update of its own. Everything else is Dagster's own code.
"""
from __future__ import annotations

import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import sqlalchemy as db
from dagster._core.storage.event_log.schema import ConcurrencyLimitsTable  # the pool limits' table
from dagster_postgres import PostgresEventLogStorage
from dagster_postgres.utils import get_token_provider_from_config, pg_url_from_config

ADVISORY_LOCK_NAMESPACE = "dagster-pool:"  # keeps the lock ids apart from any other advisory lock user


class PoolSafePostgresEventLogStorage(PostgresEventLogStorage):
    """PostgresEventLogStorage whose pool slot claims are serialised per pool (see the module)."""

    @classmethod
    def from_config_value(cls, inst_data, config_value: Mapping[str, Any]) -> PoolSafePostgresEventLogStorage:
        # The parent's from_config_value builds a PostgresEventLogStorage by name, not cls.
        return cls(inst_data=inst_data, postgres_url=pg_url_from_config(config_value),
                   should_autocreate_tables=config_value.get("should_autocreate_tables", True),
                   token_provider=get_token_provider_from_config(config_value))

    @contextmanager
    def _pool_lock(self, pool: str) -> Iterator[None]:
        """Held on a connection of its own for the duration (the claim's statements use others)."""
        key = zlib.crc32((ADVISORY_LOCK_NAMESPACE + pool).encode())
        with self.index_connection() as conn:
            conn.execute(db.text("SELECT pg_advisory_lock(:key)"), {"key": key})
            try:
                yield
            finally:
                conn.execute(db.text("SELECT pg_advisory_unlock(:key)"), {"key": key})

    def claim_concurrency_slot(self, concurrency_key: str, run_id: str, step_key: str, priority: int | None = None):
        with self._pool_lock(concurrency_key):
            return super().claim_concurrency_slot(concurrency_key, run_id, step_key, priority)

    def initialize_concurrency_limit_to_default(self, concurrency_key: str) -> bool:
        """Called by every first claim of a pool in a run, and when dagster.yaml's default_limit changed."""
        with self._pool_lock(concurrency_key):
            default_limit = self._instance.global_op_concurrency_default_limit
            pool = next((p for p in self.get_pool_limits() if p.name == concurrency_key), None)
            if pool is not None and not pool.from_default:
                return True  # set with `dagster instance concurrency set`: not the default's to change
            if pool is None or default_limit is None:  # a new pool's insert, or a default that was removed
                return super().initialize_concurrency_limit_to_default(concurrency_key)
            if pool.limit != default_limit:
                # Dagster's own code runs this update after a failed INSERT, in an aborted transaction.
                with self.index_transaction() as conn:
                    conn.execute(ConcurrencyLimitsTable.update()
                                 .where(ConcurrencyLimitsTable.c.concurrency_key == concurrency_key)
                                 .values(limit=default_limit))
                    added = self._allocate_concurrency_slots(conn, concurrency_key, default_limit)
                self.assign_pending_steps(added)  # steps waiting for a slot get the new ones
            return True
