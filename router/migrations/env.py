"""Alembic environment for Switchman's job store.

The service migrates itself at start (:func:`router.store.migrate.upgrade`) and passes
its own connection in ``config.attributes["connection"]``. Run by hand, with
``alembic -c router/migrations/alembic.ini -x url=sqlite+aiosqlite:///switchman.db upgrade
head``, it opens an async engine on the ``url`` given (or ``sqlalchemy.url``).
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from router.store.tables import metadata


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or context.config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise RuntimeError("give a database url: alembic -x url=... or sqlalchemy.url")
    return url


async def _run_with_own_engine() -> None:
    engine = create_async_engine(_url())
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_run)
    finally:
        await engine.dispose()


def main() -> None:
    """Run the migrations on the service's connection, on a new engine, or as SQL text."""
    if context.is_offline_mode():
        context.configure(url=_url(), target_metadata=metadata, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
    else:
        asyncio.run(_run_with_own_engine())


main()
