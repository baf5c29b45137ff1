"""Job leases: which replica runs a non-final job, and until when (issue 8).

Revision ID: 0004
Revises: 0003
Create Date: 2025-01-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Add ``jobs.owner`` and ``jobs.lease_until`` (database-clock unix seconds).

    Existing rows get no owner, which makes them claimable by the first replica that
    looks: exactly what a job left by a process that predates leases needs.
    """
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("owner", sa.String(128)))
        batch.add_column(sa.Column("lease_until", sa.Double))


def downgrade() -> None:
    """Drop the lease columns."""
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("lease_until")
        batch.drop_column("owner")
