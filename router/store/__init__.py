"""Where jobs and attempts are kept (DESIGN §6): SQLite by default, PostgreSQL for replicas."""

from router.store.protocol import DuplicateIdempotencyKey, JobStore, StoreError
from router.store.records import (
    AssetRecord,
    AttemptRecord,
    EventRecord,
    IdempotencyRecord,
    JobRecord,
    format_timestamp,
    new_attempt_id,
    new_job_id,
    new_request_id,
    to_api_attempt,
    to_api_job,
)
from router.store.sql import InvalidCursor, LeaseLost, SqlJobStore, UnknownJob, open_store

__all__ = [
    "AssetRecord",
    "AttemptRecord",
    "DuplicateIdempotencyKey",
    "EventRecord",
    "IdempotencyRecord",
    "InvalidCursor",
    "JobRecord",
    "JobStore",
    "LeaseLost",
    "SqlJobStore",
    "StoreError",
    "UnknownJob",
    "format_timestamp",
    "new_attempt_id",
    "new_job_id",
    "new_request_id",
    "open_store",
    "to_api_attempt",
    "to_api_job",
]
