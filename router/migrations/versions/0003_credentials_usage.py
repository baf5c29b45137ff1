"""Tenant credentials (sealed) and usage: spend per month, reservations, in-flight counts.

Revision ID: 0003
Revises: 0002
Create Date: 2025-01-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Create the tables of :mod:`router.store.credentials`."""
    op.create_table(
        "tenant_credentials",
        sa.Column("tenant", sa.String(128), primary_key=True),
        sa.Column("provider", sa.String(64), primary_key=True),
        sa.Column("kid", sa.String(64), nullable=False),
        sa.Column("ciphertext", sa.Text, nullable=False),
        sa.Column("is_valid", sa.Boolean),
        sa.Column("updated_at", sa.Double, nullable=False),
        sa.Column("tested_at", sa.Double),
    )
    op.create_table(
        "tenant_usage",
        sa.Column("tenant", sa.String(128), primary_key=True),
        sa.Column("period", sa.String(7), primary_key=True),
        sa.Column("spent_usd", sa.Double, nullable=False, server_default="0"),
        sa.Column("reserved_usd", sa.Double, nullable=False, server_default="0"),
        sa.Column("jobs", sa.Integer, nullable=False, server_default="0"),
    )
    op.create_table(
        "tenant_inflight",
        sa.Column("tenant", sa.String(128), primary_key=True),
        sa.Column("inflight", sa.Integer, nullable=False, server_default="0"),
    )
    op.create_table(
        "usage_reservations",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("period", sa.String(7), nullable=False),
        sa.Column("amount_usd", sa.Double, nullable=False),
        sa.Column("job_id", sa.String(40)),
        sa.Column("created_at", sa.Double, nullable=False),
    )
    op.create_index("ix_usage_reservations_job", "usage_reservations", ["job_id"])


def downgrade() -> None:
    """Drop everything :func:`upgrade` made."""
    op.drop_index("ix_usage_reservations_job", "usage_reservations")
    op.drop_table("usage_reservations")
    op.drop_table("tenant_inflight")
    op.drop_table("tenant_usage")
    op.drop_table("tenant_credentials")
