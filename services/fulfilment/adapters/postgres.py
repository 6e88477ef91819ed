"""The repositories and unit of work over PostgreSQL: hand-written SQL on one asyncpg
connection per transaction."""

from collections.abc import Sequence

import asyncpg

from services.fulfilment.domain.model import (
    Backorder,
    BackorderState,
    OpenBackorders,
    SkuKnowledge,
    SupplierRequest,
)
from services.fulfilment.service_layer.unit_of_work import UnitOfWork
from shared import postgres_unit_of_work
from shared.db import Conn

_BACKORDER_COLUMNS = "transaction_id, account_id, sku, placed_at, deadline_at, state, cancel_reason"


def _backorder(row: asyncpg.Record) -> Backorder:
    return Backorder(
        transaction_id=row["transaction_id"],
        account_id=row["account_id"],
        sku=row["sku"],
        placed_at=row["placed_at"],
        deadline_at=row["deadline_at"],
        state=BackorderState(row["state"]),
        cancel_reason=row["cancel_reason"],
    )


class PostgresSkus:
    def __init__(self, conn: Conn) -> None:
        self._conn = conn

    async def lock(self, sku: str) -> SkuKnowledge:
        await self._conn.execute("INSERT INTO skus (sku) VALUES ($1) ON CONFLICT DO NOTHING", sku)
        row = await self._conn.fetchrow("SELECT * FROM skus WHERE sku = $1 FOR UPDATE", sku)
        assert row is not None
        return SkuKnowledge(
            row["sku"], row["active"], row["deadline_seconds"], row["version"], row["stock_hint"]
        )

    async def apply_product(
        self, sku: str, active: bool, deadline_seconds: int | None, version: int
    ) -> bool:
        applied = await self._conn.fetchval(
            """
            INSERT INTO skus (sku, active, deadline_seconds, version) VALUES ($1, $2, $3, $4)
            ON CONFLICT (sku) DO UPDATE SET active = EXCLUDED.active,
                deadline_seconds = EXCLUDED.deadline_seconds, version = EXCLUDED.version
            WHERE skus.version < EXCLUDED.version
            RETURNING 1
            """,
            sku,
            active,
            deadline_seconds,
            version,
        )
        return applied is not None

    async def set_stock_hint(self, sku: str, available: int) -> None:
        await self._conn.execute(
            "UPDATE skus SET stock_hint = GREATEST($2, 0) WHERE sku = $1", sku, available
        )

    async def take_from_stock_hint(self, sku: str) -> None:
        await self._conn.execute(
            "UPDATE skus SET stock_hint = GREATEST(stock_hint - 1, 0) WHERE sku = $1", sku
        )


class PostgresBackorders:
    def __init__(self, conn: Conn) -> None:
        self._conn = conn

    async def add(self, backorder: Backorder) -> bool:
        inserted = await self._conn.fetchval(
            """
            INSERT INTO backorders (transaction_id, account_id, sku, placed_at, deadline_at)
            VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING 1
            """,
            backorder.transaction_id,
            backorder.account_id,
            backorder.sku,
            backorder.placed_at,
            backorder.deadline_at,
        )
        return inserted is not None

    async def get(self, transaction_id: str) -> Backorder | None:
        return await self._get(transaction_id, "")

    async def get_for_update(self, transaction_id: str) -> Backorder | None:
        return await self._get(transaction_id, " FOR UPDATE")

    async def _get(self, transaction_id: str, lock: str) -> Backorder | None:
        row = await self._conn.fetchrow(
            f"SELECT {_BACKORDER_COLUMNS} FROM backorders "  # noqa: S608 - constant columns
            f"WHERE transaction_id = $1{lock}",
            transaction_id,
        )
        return None if row is None else _backorder(row)

    async def save(self, backorders: Sequence[Backorder]) -> None:
        if not backorders:
            return
        await self._conn.execute(
            """
            UPDATE backorders b SET state = s.state, cancel_reason = s.cancel_reason,
                updated_at = now()
            FROM unnest($1::text[], $2::text[], $3::text[]) AS s (transaction_id, state,
                                                                 cancel_reason)
            WHERE b.transaction_id = s.transaction_id
            """,
            [b.transaction_id for b in backorders],
            [b.state.value for b in backorders],
            [b.cancel_reason for b in backorders],
        )

    async def count(self, sku: str, state: BackorderState) -> int:
        n: int = await self._conn.fetchval(
            "SELECT count(*) FROM backorders WHERE sku = $1 AND state = $2", sku, state.value
        )
        return n

    async def oldest_waiting(self, sku: str, limit: int | None = None) -> list[Backorder]:
        rows = await self._conn.fetch(
            f"""
            SELECT {_BACKORDER_COLUMNS} FROM backorders WHERE sku = $1 AND state = 'WAITING'
            ORDER BY placed_at, transaction_id LIMIT $2 FOR UPDATE
            """,  # noqa: S608 - constant columns
            sku,
            limit,
        )
        return [_backorder(row) for row in rows]

    async def overdue(self, limit: int) -> list[Backorder]:
        rows = await self._conn.fetch(
            f"""
            SELECT {_BACKORDER_COLUMNS} FROM backorders
            WHERE state = 'WAITING' AND deadline_at <= now()
            ORDER BY deadline_at LIMIT $1 FOR UPDATE SKIP LOCKED
            """,  # noqa: S608 - constant columns
            limit,
        )
        return [_backorder(row) for row in rows]

    async def seconds_to_next_deadline(self) -> float | None:
        due = await self._conn.fetchval(  # the backorders_deadline index's first entry
            "SELECT extract(epoch FROM min(deadline_at) - now()) FROM backorders "
            "WHERE state = 'WAITING'"
        )
        return None if due is None else float(due)

    async def take_stale_in_flight(self, older_than_s: float, limit: int) -> list[Backorder]:
        rows = await self._conn.fetch(
            f"""
            UPDATE backorders SET updated_at = now()
            WHERE transaction_id IN (
                SELECT transaction_id FROM backorders
                WHERE state IN ('ALLOCATING', 'CANCELLING')
                  AND updated_at < now() - make_interval(secs => $1)
                ORDER BY updated_at LIMIT $2 FOR UPDATE SKIP LOCKED)
            RETURNING {_BACKORDER_COLUMNS}
            """,  # noqa: S608 - constant columns
            older_than_s,
            limit,
        )
        return [_backorder(row) for row in rows]

    async def skus_waiting_unoffered(self, older_than_s: float, limit: int) -> list[str]:
        rows = await self._conn.fetch(
            """
            SELECT sku FROM backorders b
            WHERE state = 'WAITING' AND updated_at < now() - make_interval(secs => $1)
              AND NOT EXISTS (SELECT 1 FROM backorders a
                              WHERE a.sku = b.sku AND a.state = 'ALLOCATING')
            GROUP BY sku LIMIT $2
            """,
            older_than_s,
            limit,
        )
        return [r["sku"] for r in rows]

    async def open_per_sku(self) -> list[OpenBackorders]:
        rows = await self._conn.fetch(
            """
            SELECT sku, count(*) AS waiting, extract(epoch FROM now() - min(placed_at)) AS oldest
            FROM backorders WHERE state IN ('WAITING', 'ALLOCATING', 'CANCELLING') GROUP BY sku
            """
        )
        return [OpenBackorders(r["sku"], r["waiting"], float(r["oldest"])) for r in rows]

    async def listing(
        self, sku: str | None, state: BackorderState | None, limit: int
    ) -> list[Backorder]:
        # Only the filters given, the state as a literal (a member of BackorderState): with
        # the pool's generic plans, `$1 IS NULL OR sku = $1` would scan the whole table.
        where = ["sku = $2"] if sku is not None else []
        if state is not None:
            where.append(f"state = '{BackorderState(state).value}'")
        rows = await self._conn.fetch(
            f"""
            SELECT {_BACKORDER_COLUMNS} FROM backorders
            {"WHERE " + " AND ".join(where) if where else ""}
            ORDER BY placed_at, transaction_id LIMIT $1
            """,  # noqa: S608 - constant columns, an enum member's value
            limit,
            *([sku] if sku is not None else []),
        )
        return [_backorder(row) for row in rows]


class PostgresSupplierRequests:
    def __init__(self, conn: Conn) -> None:
        self._conn = conn

    async def open(self, sku: str, quantity: int, delay_s: float) -> bool:
        opened = await self._conn.fetchval(
            """
            INSERT INTO supplier_requests (sku, quantity, due_at)
            VALUES ($1, $2, now() + make_interval(secs => $3))
            ON CONFLICT (sku) WHERE delivered_at IS NULL DO NOTHING RETURNING 1
            """,
            sku,
            quantity,
            delay_s,
        )
        return opened is not None

    async def take_due(self, limit: int) -> list[SupplierRequest]:
        rows = await self._conn.fetch(
            """
            SELECT id, sku, quantity FROM supplier_requests
            WHERE delivered_at IS NULL AND due_at <= now()
            ORDER BY due_at LIMIT $1 FOR UPDATE SKIP LOCKED
            """,
            limit,
        )
        return [SupplierRequest(r["id"], r["sku"], r["quantity"]) for r in rows]

    async def seconds_to_next_due(self) -> float | None:
        due = await self._conn.fetchval(  # the open ones are the supplier_requests_open index
            "SELECT extract(epoch FROM min(due_at) - now()) FROM supplier_requests "
            "WHERE delivered_at IS NULL"
        )
        return None if due is None else float(due)

    async def mark_delivered(self, request_id: int) -> None:
        await self._conn.execute(
            "UPDATE supplier_requests SET delivered_at = now() WHERE id = $1", request_id
        )


class PostgresUnitOfWork(postgres_unit_of_work.PostgresUnitOfWork, UnitOfWork):
    def _bind(self, conn: Conn) -> None:
        self.skus = PostgresSkus(conn)
        self.backorders = PostgresBackorders(conn)
        self.supplier_requests = PostgresSupplierRequests(conn)
