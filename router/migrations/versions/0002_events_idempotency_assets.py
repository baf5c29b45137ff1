"""Job events (SSE), idempotency keys, assets, duplicate and callback bookkeeping.

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Add the event log, the idempotency keys, the asset index and two job columns."""
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(
            sa.Column("duplicate_submissions", sa.Integer, nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("callback_state", sa.String(16)))
    op.create_index("ix_jobs_callback_state", "jobs", ["callback_state"])
    op.create_table(
        "job_events",
        sa.Column(
            "job_id",
            sa.String(40),
            sa.ForeignKey("jobs.id", ondelete="CASCADE", name="fk_job_events_job_id"),
            primary_key=True,
        ),
        sa.Column("seq", sa.Integer, primary_key=True),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("data", sa.Text, nullable=False),
        sa.Column("at", sa.Double, nullable=False),
    )
    op.create_table(
        "idempotency_keys",
        sa.Column("tenant", sa.String(128), primary_key=True),
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("job_id", sa.String(40)),
        sa.Column("status_code", sa.Integer),
        sa.Column("response", sa.Text),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("expires_at", sa.Double, nullable=False),
    )
    op.create_index("ix_idempotency_keys_expires", "idempotency_keys", ["expires_at"])
    op.create_table(
        "assets",
        sa.Column("tenant", sa.String(128), primary_key=True),
        sa.Column("id", sa.String(80), primary_key=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("job_id", sa.String(40)),
        sa.Column("content_type", sa.String(64), nullable=False),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.Column("width", sa.Integer),
        sa.Column("height", sa.Integer),
        sa.Column("duration_s", sa.Double),
        sa.Column("created_at", sa.Double, nullable=False),
    )


def downgrade() -> None:
    """Drop everything :func:`upgrade` made."""
    op.drop_table("assets")
    op.drop_table("idempotency_keys")
    op.drop_table("job_events")
    op.drop_index("ix_jobs_callback_state", "jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("callback_state")
        batch.drop_column("duplicate_submissions")
