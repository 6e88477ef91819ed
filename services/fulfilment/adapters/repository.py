"""SQL of the fulfilment database; every function runs on the caller's connection."""

import uuid
from datetime import datetime

import asyncpg

from services.fulfilment.domain.model import SkuKnowledge
from shared.db import Conn


def _sku(row: asyncpg.Record | None) -> SkuKnowledge | None:
    if row is None:
        return None
    return SkuKnowledge(
        row["sku"], row["active"], row["deadline_seconds"], row["version"], row["stock_hint"]
    )


async def lock_sku(conn: Conn, sku: str) -> SkuKnowledge:
    """The SKU's row, created if new, locked for this transaction: one round at a time."""
    await conn.execute("INSERT INTO skus (sku) VALUES ($1) ON CONFLICT DO NOTHING", sku)
    found = _sku(await conn.fetchrow("SELECT * FROM skus WHERE sku = $1 FOR UPDATE", sku))
    assert found is not None
    return found


async def get_sku(conn: Conn, sku: str) -> SkuKnowledge | None:
    return _sku(await conn.fetchrow("SELECT * FROM skus WHERE sku = $1", sku))


async def apply_product(
    conn: Conn, sku: str, active: bool, deadline_seconds: int | None, version: int
) -> bool:
    """Record a product snapshot unless a newer one is known. True if it was applied."""
    applied = await conn.fetchval(
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


async def set_stock_hint(conn: Conn, sku: str, value: int) -> None:
    await conn.execute("UPDATE skus SET stock_hint = GREATEST($2, 0) WHERE sku = $1", sku, value)


async def take_from_stock_hint(conn: Conn, sku: str) -> None:
    await conn.execute(
        "UPDATE skus SET stock_hint = GREATEST(stock_hint - 1, 0) WHERE sku = $1", sku
    )


async def insert_backorder(
    conn: Conn,
    transaction_id: str,
    account_id: uuid.UUID,
    sku: str,
    placed_at: datetime,
    deadline_at: datetime,
) -> bool:
    inserted = await conn.fetchval(
        """
        INSERT INTO backorders (transaction_id, account_id, sku, placed_at, deadline_at)
        VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING 1
        """,
        transaction_id,
        account_id,
        sku,
        placed_at,
        deadline_at,
    )
    return inserted is not None


async def count_in_state(conn: Conn, sku: str, state: str) -> int:
    n: int = await conn.fetchval(
        "SELECT count(*) FROM backorders WHERE sku = $1 AND state = $2", sku, state
    )
    return n


async def start_allocating_oldest(conn: Conn, sku: str, n: int) -> list[str]:
    """Move the `n` oldest waiting backorders of the SKU to ALLOCATING, oldest first."""
    rows = await conn.fetch(
        """
        UPDATE backorders SET state = 'ALLOCATING', updated_at = now()
        WHERE transaction_id IN (
            SELECT transaction_id FROM backorders WHERE sku = $1 AND state = 'WAITING'
            ORDER BY placed_at, transaction_id LIMIT $2 FOR UPDATE)
        RETURNING transaction_id, placed_at
        """,
        sku,
        n,
    )
    return [
        r["transaction_id"]
        for r in sorted(rows, key=lambda r: (r["placed_at"], r["transaction_id"]))
    ]


async def transition(
    conn: Conn,
    transaction_id: str,
    to: str,
    from_states: tuple[str, ...],
    reason: str | None = None,
) -> bool:
    moved = await conn.fetchval(
        """
        UPDATE backorders SET state = $2, cancel_reason = COALESCE($4, cancel_reason),
            updated_at = now()
        WHERE transaction_id = $1 AND state = ANY($3::text[]) RETURNING 1
        """,
        transaction_id,
        to,
        list(from_states),
        reason,
    )
    return moved is not None


async def waiting_of_sku(conn: Conn, sku: str) -> list[str]:
    rows = await conn.fetch(
        """
        SELECT transaction_id FROM backorders WHERE sku = $1 AND state = 'WAITING'
        ORDER BY placed_at, transaction_id FOR UPDATE
        """,
        sku,
    )
    return [r["transaction_id"] for r in rows]


async def overdue(conn: Conn, limit: int) -> list[asyncpg.Record]:
    return await conn.fetch(
        """
        SELECT transaction_id, sku FROM backorders
        WHERE state = 'WAITING' AND deadline_at <= now()
        ORDER BY deadline_at LIMIT $1 FOR UPDATE SKIP LOCKED
        """,
        limit,
    )


async def open_supplier_request(conn: Conn, sku: str, quantity: int, delay_s: float) -> bool:
    opened = await conn.fetchval(
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


async def due_supplier_requests(conn: Conn, limit: int) -> list[asyncpg.Record]:
    return await conn.fetch(
        """
        SELECT id, sku, quantity FROM supplier_requests
        WHERE delivered_at IS NULL AND due_at <= now()
        ORDER BY due_at LIMIT $1 FOR UPDATE SKIP LOCKED
        """,
        limit,
    )


async def mark_delivered(conn: Conn, request_id: int) -> None:
    await conn.execute(
        "UPDATE supplier_requests SET delivered_at = now() WHERE id = $1", request_id
    )


async def waiting_by_sku(conn: Conn) -> list[asyncpg.Record]:
    return await conn.fetch(
        """
        SELECT sku, count(*) AS waiting, extract(epoch FROM now() - min(placed_at)) AS oldest
        FROM backorders WHERE state IN ('WAITING', 'ALLOCATING', 'CANCELLING') GROUP BY sku
        """
    )


async def take_stale_in_flight(conn: Conn, older_than_s: float, limit: int) -> list[asyncpg.Record]:
    """Backorders whose command got no answer for `older_than_s`; touched so they are taken
    once per period."""
    return await conn.fetch(
        """
        UPDATE backorders SET updated_at = now()
        WHERE transaction_id IN (
            SELECT transaction_id FROM backorders
            WHERE state IN ('ALLOCATING', 'CANCELLING')
              AND updated_at < now() - make_interval(secs => $1)
            ORDER BY updated_at LIMIT $2 FOR UPDATE SKIP LOCKED)
        RETURNING transaction_id, sku, state, cancel_reason
        """,
        older_than_s,
        limit,
    )


async def skus_waiting_unoffered(conn: Conn, older_than_s: float, limit: int) -> list[str]:
    """SKUs with orders waiting for `older_than_s` and none being offered a code."""
    rows = await conn.fetch(
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
