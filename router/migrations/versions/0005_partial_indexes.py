"""Partial indexes where most rows hold NULL, so a job's writes touch fewer pages.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-08

``jobs.callback_state`` is NULL for a job without a callback and ``attempts.upstream_id``
is NULL until the upstream names its job; every query on either column asks for a
value (``callback_state = 'pending'``, ``upstream_id = :id``), which implies NOT NULL, so
both databases still use the indexes. Indexing only the rows that have a value spares
each job create one index page per index, and the final save the callback index's (on
SQLite one WAL frame each: 25 → ~21 frames a job).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None

_PARTIAL = (
    ("ix_jobs_callback_state", "jobs", ["callback_state"], "callback_state IS NOT NULL"),
    (
        "ix_attempts_provider_upstream",
        "attempts",
        ["provider", "upstream_id"],
        "upstream_id IS NOT NULL",
    ),
)


def upgrade() -> None:
    """Rebuild both indexes over the rows that have a value."""
    for name, table, columns, where in _PARTIAL:
        op.drop_index(name, table)
        op.create_index(
            name,
            table,
            columns,
            sqlite_where=sa.text(where),
            postgresql_where=sa.text(where),
        )


def downgrade() -> None:
    """Back to indexes over every row."""
    for name, table, columns, _ in _PARTIAL:
        op.drop_index(name, table)
        op.create_index(name, table, columns)
