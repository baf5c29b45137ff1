"""Jobs and attempts.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Create ``jobs`` and ``attempts`` with the indexes the store's queries use."""
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("request", sa.Text, nullable=False),
        sa.Column("progress", sa.Integer, nullable=False),
        sa.Column("provider", sa.String(64)),
        sa.Column("outputs", sa.Text, nullable=False),
        sa.Column("cost_usd", sa.Double, nullable=False),
        sa.Column("error_code", sa.String(64)),
        sa.Column("error_message", sa.Text),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("updated_at", sa.Double, nullable=False),
        sa.Column("completed_at", sa.Double),
        sa.Column("deadline_at", sa.Double, nullable=False),
        sa.Column("metadata", sa.Text),
        sa.Column("idempotency_key", sa.String(255)),
        sa.Column("request_fingerprint", sa.String(128)),
        sa.Column("callback_url", sa.Text),
    )
    op.create_index(
        "ix_jobs_tenant_created",
        "jobs",
        ["tenant", sa.text("created_at DESC"), sa.text("id DESC")],
    )
    op.create_index("ix_jobs_status", "jobs", ["status"])
    op.create_index(
        "uq_jobs_tenant_idempotency_key",
        "jobs",
        ["tenant", "idempotency_key"],
        unique=True,
        sqlite_where=sa.text("idempotency_key IS NOT NULL"),
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )
    op.create_table(
        "attempts",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column(
            "job_id",
            sa.String(40),
            sa.ForeignKey("jobs.id", ondelete="CASCADE", name="fk_attempts_job_id"),
            nullable=False,
        ),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("upstream_id", sa.String(255)),
        sa.Column("error_kind", sa.String(32)),
        sa.Column("error_message", sa.Text),
        sa.Column("http_status", sa.Integer),
        sa.Column("started_at", sa.Double),
        sa.Column("ended_at", sa.Double),
        sa.Column("latency_s", sa.Double),
        sa.Column("cost_usd", sa.Double, nullable=False),
    )
    op.create_index("uq_attempts_job_seq", "attempts", ["job_id", "seq"], unique=True)
    op.create_index("ix_attempts_provider_upstream", "attempts", ["provider", "upstream_id"])


def downgrade() -> None:
    """Drop everything :func:`upgrade` made."""
    op.drop_table("attempts")
    op.drop_table("jobs")
