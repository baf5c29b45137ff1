"""The schema as SQLAlchemy Core tables.

Alembic migrations (``router/migrations``) create and evolve the real schema; these
tables are what the store's statements are built from and must match the newest
revision.

JSON-ish columns (``outputs``, ``metadata``, ``request``) are text holding msgspec JSON:
msgspec encodes and decodes several times faster than the stdlib ``json`` that
``sqlalchemy.JSON`` uses, and text reads the same on SQLite and PostgreSQL. Times are
unix seconds in double precision, so a cursor's ``created_at`` compares exactly.
"""

from __future__ import annotations

import sqlalchemy as sa

__all__ = ["assets", "attempts", "idempotency_keys", "job_events", "jobs", "metadata"]

metadata = sa.MetaData()

jobs = sa.Table(
    "jobs",
    metadata,
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
    # Revision 0002: upstream submissions found to duplicate an attempt (crash recovery),
    # and where the caller's callback stands (pending | delivered | failed).
    sa.Column("duplicate_submissions", sa.Integer, nullable=False, server_default="0"),
    sa.Column("callback_state", sa.String(16)),
    # Revision 0004: the replica running a non-final job and when its lease ends, in
    # unix seconds of the database's clock (see ``router.store.sql``, leases).
    sa.Column("owner", sa.String(128)),
    sa.Column("lease_until", sa.Double),
)
sa.Index("ix_jobs_tenant_created", jobs.c.tenant, jobs.c.created_at.desc(), jobs.c.id.desc())
sa.Index("ix_jobs_status", jobs.c.status)
sa.Index(
    "uq_jobs_tenant_idempotency_key",
    jobs.c.tenant,
    jobs.c.idempotency_key,
    unique=True,
    sqlite_where=jobs.c.idempotency_key.is_not(None),
    postgresql_where=jobs.c.idempotency_key.is_not(None),
)

attempts = sa.Table(
    "attempts",
    metadata,
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
# Unique (job_id, seq) doubles as the job_id index and returns attempts already in order.
sa.Index("uq_attempts_job_seq", attempts.c.job_id, attempts.c.seq, unique=True)
# Revision 0005: both only over rows with a value (most hold NULL), which every query on
# them asks for; see that migration.
sa.Index(
    "ix_attempts_provider_upstream",
    attempts.c.provider,
    attempts.c.upstream_id,
    sqlite_where=attempts.c.upstream_id.is_not(None),
    postgresql_where=attempts.c.upstream_id.is_not(None),
)
sa.Index(
    "ix_jobs_callback_state",
    jobs.c.callback_state,
    sqlite_where=jobs.c.callback_state.is_not(None),
    postgresql_where=jobs.c.callback_state.is_not(None),
)

# Revision 0002 ---------------------------------------------------------------------------

job_events = sa.Table(
    "job_events",
    metadata,
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

idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("tenant", sa.String(128), primary_key=True),
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("job_id", sa.String(40)),
    sa.Column("status_code", sa.Integer),
    sa.Column("response", sa.Text),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("expires_at", sa.Double, nullable=False),
)
sa.Index("ix_idempotency_keys_expires", idempotency_keys.c.expires_at)

assets = sa.Table(
    "assets",
    metadata,
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
