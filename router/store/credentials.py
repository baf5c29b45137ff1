"""Tenant credentials and usage in the job store's database (DESIGN §6).

Three tables (created by revision 0003):

- ``tenant_credentials``: a tenant's own key for a provider, sealed by
  :class:`router.crypto.KeyRing` (key id + base64 ``nonce || ciphertext``), whether it
  is known valid, and when it changed. The plaintext never reaches the database.
- ``tenant_usage``: per tenant and month (``YYYY-MM``, UTC), what was spent, what is
  reserved by admitted jobs, and how many jobs ended.
- ``tenant_inflight`` / ``usage_reservations``: one reservation per admitted job (its
  estimated cost and month), and the tenant's count of them.

Admission (:meth:`TenantStore.reserve`) is one transaction of *conditional* updates:
``inflight = inflight + 1 WHERE inflight < max`` and ``reserved = reserved + est WHERE
spent + reserved + est <= budget``. A conditional ``UPDATE`` is atomic on both
databases (PostgreSQL re-checks the ``WHERE`` on the locked row; SQLite has one
writer), so concurrent submissions, on one replica or several, are admitted only while
the budget holds: the overspend is bounded by the gap between one job's estimate and
its real cost. Settlement deletes the reservation (the delete is the claim, so a job
is settled at most once), releases it and adds the real cost.

The store runs its operations on the job store's own connection runner (the same
single SQLite connection, or the same PostgreSQL pool), so there is one database
handle per process and ``:memory:`` databases work.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Concatenate, Final, ParamSpec, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

__all__ = [
    "BudgetExceeded",
    "CredentialRow",
    "InflightExceeded",
    "Reservation",
    "TenantStore",
    "UsageRow",
    "credential_tables",
]

_P = ParamSpec("_P")
_T = TypeVar("_T")

credential_tables = sa.MetaData()

tenant_credentials = sa.Table(
    "tenant_credentials",
    credential_tables,
    sa.Column("tenant", sa.String(128), primary_key=True),
    sa.Column("provider", sa.String(64), primary_key=True),
    sa.Column("kid", sa.String(64), nullable=False),
    sa.Column("ciphertext", sa.Text, nullable=False),
    sa.Column("is_valid", sa.Boolean),
    sa.Column("updated_at", sa.Double, nullable=False),
    sa.Column("tested_at", sa.Double),
)

tenant_usage = sa.Table(
    "tenant_usage",
    credential_tables,
    sa.Column("tenant", sa.String(128), primary_key=True),
    sa.Column("period", sa.String(7), primary_key=True),
    sa.Column("spent_usd", sa.Double, nullable=False, server_default="0"),
    sa.Column("reserved_usd", sa.Double, nullable=False, server_default="0"),
    sa.Column("jobs", sa.Integer, nullable=False, server_default="0"),
)

tenant_inflight = sa.Table(
    "tenant_inflight",
    credential_tables,
    sa.Column("tenant", sa.String(128), primary_key=True),
    sa.Column("inflight", sa.Integer, nullable=False, server_default="0"),
)

usage_reservations = sa.Table(
    "usage_reservations",
    credential_tables,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("tenant", sa.String(128), nullable=False),
    sa.Column("period", sa.String(7), nullable=False),
    sa.Column("amount_usd", sa.Double, nullable=False),
    sa.Column("job_id", sa.String(40)),
    sa.Column("created_at", sa.Double, nullable=False),
)
sa.Index("ix_usage_reservations_job", usage_reservations.c.job_id)

#: Slack for float sums: a budget is not "exceeded" by rounding noise.
_EPSILON: Final = 1e-9


class Runner(Protocol):
    """Runs ``fn(conn, *args)`` in one transaction (the job store's runner)."""

    async def run(
        self,
        write: bool,
        fn: Callable[Concatenate[Connection, _P], _T],
        *args: _P.args,
        **kwargs: _P.kwargs,
    ) -> _T: ...


class InflightExceeded(Exception):
    """Admission refused: the tenant is at ``max_inflight``."""


class BudgetExceeded(Exception):
    """Admission refused: the estimate does not fit in what is left of the budget."""

    def __init__(self, left_usd: float) -> None:
        super().__init__(f"{left_usd:.4f} USD left")
        self.left_usd = left_usd


@dataclass(frozen=True, slots=True)
class CredentialRow:
    """A stored credential, still sealed."""

    tenant: str
    provider: str
    kid: str
    ciphertext: str
    is_valid: bool | None
    updated_at: float
    tested_at: float | None


@dataclass(frozen=True, slots=True)
class UsageRow:
    """A tenant's month: spend, reservations, ended jobs; and its in-flight count."""

    spent_usd: float
    reserved_usd: float
    jobs: int
    inflight: int


@dataclass(frozen=True, slots=True)
class Reservation:
    """An admitted job's hold on the budget and on an in-flight slot."""

    id: str
    tenant: str
    period: str
    amount_usd: float


def _insert_ignore(dialect: str, table: sa.Table) -> sa.Executable:
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return sqlite.insert(table).on_conflict_do_nothing()


def _upsert_credential(dialect: str) -> sa.Executable:
    t = tenant_credentials
    changed = {"kid", "ciphertext", "is_valid", "updated_at", "tested_at"}
    if dialect == "postgresql":
        pg = postgresql.insert(t)
        return pg.on_conflict_do_update(
            index_elements=[t.c.tenant, t.c.provider],
            set_={k: pg.excluded[k] for k in changed},
        )
    lite = sqlite.insert(t)
    return lite.on_conflict_do_update(
        index_elements=[t.c.tenant, t.c.provider],
        set_={k: lite.excluded[k] for k in changed},
    )


_U, _I, _R, _C = tenant_usage, tenant_inflight, usage_reservations, tenant_credentials
_INC_INFLIGHT: Final = (
    _I.update().where(_I.c.tenant == sa.bindparam("t")).values(inflight=_I.c.inflight + 1)
)
_INC_INFLIGHT_BOUNDED: Final = _INC_INFLIGHT.where(_I.c.inflight < sa.bindparam("max_inflight"))
_RESERVE: Final = (
    _U.update()
    .where(_U.c.tenant == sa.bindparam("t"), _U.c.period == sa.bindparam("p"))
    .values(reserved_usd=_U.c.reserved_usd + sa.bindparam("amount"))
)
_RESERVE_BOUNDED: Final = _RESERVE.where(
    _U.c.spent_usd + _U.c.reserved_usd + sa.bindparam("amount2") <= sa.bindparam("budget")
)
_SELECT_USAGE: Final = sa.select(_U.c.spent_usd, _U.c.reserved_usd, _U.c.jobs).where(
    _U.c.tenant == sa.bindparam("t"), _U.c.period == sa.bindparam("p")
)
_SELECT_INFLIGHT: Final = sa.select(_I.c.inflight).where(_I.c.tenant == sa.bindparam("t"))
_JOBS: Final = sa.table("jobs", sa.column("tenant"), sa.column("status"))
#: Jobs not yet final: the in-flight count of tenants whose admission reserves nothing.
_SELECT_NONFINAL_JOBS: Final = (
    sa.select(sa.func.count())
    .select_from(_JOBS)
    .where(_JOBS.c.tenant == sa.bindparam("t"), _JOBS.c.status.in_(("queued", "running")))
)
_SELECT_CREDS: Final = sa.select(_C).where(_C.c.tenant == sa.bindparam("t"))
_SELECT_CRED: Final = _SELECT_CREDS.where(_C.c.provider == sa.bindparam("p"))


def _ensure_rows(conn: Connection, tenant: str, period: str) -> None:
    dialect = conn.dialect.name
    conn.execute(
        _insert_ignore(dialect, _U),
        {"tenant": tenant, "period": period, "spent_usd": 0.0, "reserved_usd": 0.0, "jobs": 0},
    )
    conn.execute(_insert_ignore(dialect, _I), {"tenant": tenant, "inflight": 0})


def _reserve(
    conn: Connection,
    res: dict[str, Any],
    max_inflight: int | None,
    budget_usd: float | None,
) -> None:
    tenant, period, amount = res["tenant"], res["period"], res["amount_usd"]
    _ensure_rows(conn, tenant, period)
    if max_inflight is None:
        conn.execute(_INC_INFLIGHT, {"t": tenant})
    elif conn.execute(_INC_INFLIGHT_BOUNDED, {"t": tenant, "max_inflight": max_inflight}).rowcount:
        pass
    else:
        raise InflightExceeded
    if budget_usd is None:
        conn.execute(_RESERVE, {"t": tenant, "p": period, "amount": amount})
    else:
        params = {
            "t": tenant,
            "p": period,
            "amount": amount,
            "amount2": amount,
            "budget": budget_usd + _EPSILON,
        }
        if conn.execute(_RESERVE_BOUNDED, params).rowcount == 0:
            spent, reserved, _ = conn.execute(_SELECT_USAGE, {"t": tenant, "p": period}).one()
            raise BudgetExceeded(max(budget_usd - spent - reserved, 0.0))
    conn.execute(_R.insert(), res)


def _release(conn: Connection, row: Sequence[Any]) -> None:
    """Give back a reservation's slot and amount (its row is already deleted)."""
    tenant, period, amount = row[1], row[2], row[3]
    conn.execute(
        _I.update()
        .where(_I.c.tenant == tenant)
        .values(inflight=sa.case((_I.c.inflight > 0, _I.c.inflight - 1), else_=0))
    )
    conn.execute(
        _U.update()
        .where(_U.c.tenant == tenant, _U.c.period == period)
        .values(
            reserved_usd=sa.case(
                (_U.c.reserved_usd > amount, _U.c.reserved_usd - amount), else_=0.0
            )
        )
    )


def _claim(conn: Connection, where: sa.ColumnElement[bool]) -> Sequence[Any] | None:
    """Delete one reservation and return its row; ``None`` when another settler won."""
    row = conn.execute(
        sa.select(_R.c.id, _R.c.tenant, _R.c.period, _R.c.amount_usd).where(where).limit(1)
    ).first()
    if row is None:
        return None
    if conn.execute(_R.delete().where(_R.c.id == row[0])).rowcount != 1:
        return None
    return tuple(row)


def _settle(
    conn: Connection, reservation_id: str | None, job_id: str, cost: float, period: str
) -> bool:
    where = _R.c.id == reservation_id if reservation_id else _R.c.job_id == job_id
    row = _claim(conn, where)
    if row is None:
        return False
    _release(conn, row)
    tenant = row[1]
    _ensure_rows(conn, tenant, period)
    conn.execute(
        _U.update()
        .where(_U.c.tenant == tenant, _U.c.period == period)
        .values(spent_usd=_U.c.spent_usd + cost, jobs=_U.c.jobs + 1)
    )
    return True


def _add_spend(conn: Connection, items: list[tuple[str, str, float, int]]) -> None:
    for tenant, period, cost, jobs in items:
        _ensure_rows(conn, tenant, period)
        conn.execute(
            _U.update()
            .where(_U.c.tenant == tenant, _U.c.period == period)
            .values(spent_usd=_U.c.spent_usd + cost, jobs=_U.c.jobs + jobs)
        )


def _cancel(conn: Connection, reservation_id: str) -> bool:
    row = _claim(conn, _R.c.id == reservation_id)
    if row is None:
        return False
    _release(conn, row)
    return True


def _usage(conn: Connection, tenant: str, period: str) -> UsageRow:
    row = conn.execute(_SELECT_USAGE, {"t": tenant, "p": period}).first()
    reserved_slots = conn.execute(_SELECT_INFLIGHT, {"t": tenant}).scalar() or 0
    running_jobs = conn.execute(_SELECT_NONFINAL_JOBS, {"t": tenant}).scalar() or 0
    inflight = max(int(reserved_slots), int(running_jobs))
    if row is None:
        return UsageRow(0.0, 0.0, 0, int(inflight))
    return UsageRow(float(row[0]), float(row[1]), int(row[2]), int(inflight))


def _link(conn: Connection, reservation_id: str, job_id: str) -> None:
    conn.execute(_R.update().where(_R.c.id == reservation_id).values(job_id=job_id))


def _stale(conn: Connection, before: float) -> list[tuple[str, str | None, str | None, float]]:
    """Reservations older than ``before``: id, job id, that job's status and cost."""
    jobs = sa.table("jobs", sa.column("id"), sa.column("status"), sa.column("cost_usd"))
    stmt = (
        sa.select(_R.c.id, _R.c.job_id, jobs.c.status, jobs.c.cost_usd)
        .select_from(_R.outerjoin(jobs, jobs.c.id == _R.c.job_id))
        .where(_R.c.created_at < before)
    )
    return [(r[0], r[1], r[2], float(r[3] or 0.0)) for r in conn.execute(stmt)]


def _cred_from_row(row: Sequence[Any]) -> CredentialRow:
    tenant, provider, kid, ct, valid, updated, tested = row
    return CredentialRow(tenant, provider, kid, ct, valid, updated, tested)


def _select_creds(conn: Connection, stmt: sa.Executable, params: dict[str, Any]) -> list[Any]:
    return [_cred_from_row(r) for r in conn.execute(stmt, params)]


def _put_cred(conn: Connection, params: dict[str, Any]) -> None:
    conn.execute(_upsert_credential(conn.dialect.name), params)


def _delete_cred(conn: Connection, tenant: str, provider: str) -> bool:
    stmt = _C.delete().where(_C.c.tenant == tenant, _C.c.provider == provider)
    return bool(conn.execute(stmt).rowcount)


def _mark(conn: Connection, tenant: str, provider: str, kid: str, valid: bool, at: float) -> bool:
    # Only the credential that was used is marked: a replacement written meanwhile is not.
    stmt = (
        _C.update()
        .where(_C.c.tenant == tenant, _C.c.provider == provider, _C.c.kid == kid)
        .values(is_valid=valid, tested_at=at)
    )
    return bool(conn.execute(stmt).rowcount)


def _all_creds(conn: Connection) -> list[CredentialRow]:
    return [_cred_from_row(r) for r in conn.execute(sa.select(_C))]


def _replace_sealed(conn: Connection, rows: list[dict[str, Any]]) -> int:
    done = 0
    for r in rows:
        stmt = (
            _C.update()
            .where(
                _C.c.tenant == r["tenant"],
                _C.c.provider == r["provider"],
                _C.c.kid == r["old_kid"],
                _C.c.ciphertext == r["old_ct"],
            )
            .values(kid=r["kid"], ciphertext=r["ciphertext"])
        )
        done += conn.execute(stmt).rowcount
    return done


class TenantStore:
    """Credentials and usage on the job store's database."""

    __slots__ = ("_runner",)

    def __init__(self, runner: Runner) -> None:
        self._runner = runner

    @classmethod
    def for_job_store(cls, store: object) -> TenantStore:
        """Share a :class:`~router.store.SqlJobStore`'s connection runner."""
        runner = getattr(store, "_runner", None)
        if runner is None:
            raise TypeError(f"{type(store).__name__} has no SQL runner to share")
        return cls(runner)

    # -- credentials ---------------------------------------------------------------------

    async def put_credential(
        self, tenant: str, provider: str, kid: str, ciphertext: str, now: float
    ) -> None:
        """Store (or replace) a sealed credential; its validity is unknown until used."""
        params = {
            "tenant": tenant,
            "provider": provider,
            "kid": kid,
            "ciphertext": ciphertext,
            "is_valid": None,
            "updated_at": now,
            "tested_at": None,
        }
        await self._runner.run(True, _put_cred, params)

    async def credentials(self, tenant: str) -> list[CredentialRow]:
        """A tenant's credentials, sealed, ordered by provider."""
        rows: list[CredentialRow] = await self._runner.run(
            False, _select_creds, _SELECT_CREDS, {"t": tenant}
        )
        return sorted(rows, key=lambda r: r.provider)

    async def credential(self, tenant: str, provider: str) -> CredentialRow | None:
        """One of a tenant's credentials, sealed."""
        rows = await self._runner.run(
            False, _select_creds, _SELECT_CRED, {"t": tenant, "p": provider}
        )
        return rows[0] if rows else None

    async def delete_credential(self, tenant: str, provider: str) -> bool:
        """Forget a credential; ``False`` when there was none."""
        return await self._runner.run(True, _delete_cred, tenant, provider)

    async def mark_credential(
        self, tenant: str, provider: str, kid: str, valid: bool, now: float
    ) -> bool:
        """Record a test's or an upstream answer's verdict on the credential sealed by ``kid``."""
        return await self._runner.run(True, _mark, tenant, provider, kid, valid, now)

    async def all_credentials(self) -> list[CredentialRow]:
        """Every stored credential (for key rotation)."""
        return await self._runner.run(False, _all_creds)

    async def replace_sealed(self, rows: list[dict[str, Any]]) -> int:
        """Swap ciphertexts (rotation); a row changed meanwhile is left alone."""
        return await self._runner.run(True, _replace_sealed, rows)

    # -- usage -----------------------------------------------------------------------------

    async def reserve(
        self,
        tenant: str,
        period: str,
        amount_usd: float,
        now: float,
        *,
        max_inflight: int | None,
        budget_usd: float | None,
    ) -> Reservation:
        """Admit one job: take an in-flight slot and reserve its estimate, atomically.

        Raises :class:`InflightExceeded` or :class:`BudgetExceeded` (nothing changed).
        """
        res = Reservation("rsv_" + os.urandom(12).hex(), tenant, period, amount_usd)
        params = {
            "id": res.id,
            "tenant": tenant,
            "period": period,
            "amount_usd": amount_usd,
            "job_id": None,
            "created_at": now,
        }
        await self._runner.run(True, _reserve, params, max_inflight, budget_usd)
        return res

    async def link(self, reservation_id: str, job_id: str) -> None:
        """Record which job holds a reservation (so a restarted process can settle it)."""
        await self._runner.run(True, _link, reservation_id, job_id)

    async def settle(
        self, reservation_id: str | None, job_id: str, cost_usd: float, period: str
    ) -> bool:
        """Release a job's reservation and add its real cost; ``False`` if already settled."""
        return await self._runner.run(True, _settle, reservation_id, job_id, cost_usd, period)

    async def add_spend(self, items: list[tuple[str, str, float, int]]) -> None:
        """Add ``(tenant, period, cost_usd, jobs)`` totals, in one transaction.

        For tenants that reserve nothing at admission (no budget, no in-flight cap).
        """
        if items:
            await self._runner.run(True, _add_spend, items)

    async def cancel(self, reservation_id: str) -> bool:
        """Release a reservation whose job was never created."""
        return await self._runner.run(True, _cancel, reservation_id)

    async def usage(self, tenant: str, period: str) -> UsageRow:
        """A tenant's month and in-flight count."""
        return await self._runner.run(False, _usage, tenant, period)

    async def stale_reservations(
        self, before: float
    ) -> list[tuple[str, str | None, str | None, float]]:
        """Reservations made before ``before`` with their job's status and cost, if any."""
        return await self._runner.run(False, _stale, before)
