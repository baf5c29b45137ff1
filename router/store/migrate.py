"""Schema migrations, run by the service itself at start.

Alembic is driven programmatically on the store's own connection, so no ``alembic.ini``
or second engine is involved and SQLite ``:memory:`` databases migrate too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = [
    "MIGRATIONS_DIR",
    "alembic_config",
    "current_revision",
    "head_revision",
    "upgrade",
    "upgrade_connection",
]

#: Where ``env.py`` and ``versions/`` live (shipped as package data).
MIGRATIONS_DIR: Final = Path(__file__).resolve().parent.parent / "migrations"

# Replicas starting together on one PostgreSQL database take turns migrating.
_PG_LOCK_KEY: Final = 0x5357_4D41_4E00  # "SWMAN"


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config pointing at Switchman's migrations, bound to ``connection``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str | None:
    """The newest revision the code knows."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(connection: Connection) -> str | None:
    """The revision the database is at, or ``None`` before the first migration."""
    return MigrationContext.configure(connection).get_current_revision()


def upgrade_connection(connection: Connection) -> None:
    """Migrate to the newest revision on ``connection``, inside the caller's transaction."""
    if connection.dialect.name == "postgresql":
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
    if current_revision(connection) == head_revision():
        return  # the common case at start: nothing to do, skip loading every revision
    command.upgrade(alembic_config(connection), "head")


async def upgrade(engine: AsyncEngine) -> None:
    """Migrate the database behind ``engine`` to the newest revision; a no-op when it is."""
    async with engine.begin() as conn:
        await conn.run_sync(upgrade_connection)
