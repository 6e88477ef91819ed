"""SQL of the api database. Every function takes the caller's connection, so the service
layer decides the transaction boundaries."""

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg

from services.api.domain.model import Order, Product, split_evenly
from shared.db import Conn

# --- accounts and credentials ----------------------------------------------------------------


async def create_account(conn: Conn, name: str, rate_limit_per_s: Decimal | None) -> uuid.UUID:
    account_id = uuid.uuid4()
    await conn.execute(
        "INSERT INTO accounts (id, name, rate_limit_per_s) VALUES ($1, $2, $3)",
        account_id,
        name,
        rate_limit_per_s,
    )
    return account_id


async def account_exists(conn: Conn, account_id: uuid.UUID) -> bool:
    return bool(await conn.fetchval("SELECT 1 FROM accounts WHERE id = $1", account_id))


async def add_credential(
    conn: Conn, account_id: uuid.UUID, kind: str, secret_hash: bytes, expires_at: datetime | None
) -> None:
    await conn.execute(
        "INSERT INTO credentials (account_id, kind, secret_hash, expires_at) VALUES ($1,$2,$3,$4)",
        account_id,
        kind,
        secret_hash,
        expires_at,
    )


async def expire_tokens(conn: Conn, account_id: uuid.UUID, at: datetime) -> None:
    await conn.execute(
        """
        UPDATE credentials SET expires_at = LEAST(COALESCE(expires_at, $2), $2)
        WHERE account_id = $1 AND kind = 'TOKEN' AND revoked_at IS NULL
        """,
        account_id,
        at,
    )


async def find_live_credentials(
    conn: Conn, api_key_hash: bytes, token_hash: bytes
) -> list[asyncpg.Record]:
    return await conn.fetch(
        """
        SELECT c.account_id, c.kind, c.secret_hash, a.rate_limit_per_s
        FROM credentials c JOIN accounts a ON a.id = c.account_id
        WHERE c.secret_hash = ANY($1::bytea[]) AND c.revoked_at IS NULL
          AND (c.expires_at IS NULL OR c.expires_at > now())
        """,
        [api_key_hash, token_hash],
    )


# --- wallets ---------------------------------------------------------------------------------


async def balances(conn: Conn, account_id: uuid.UUID) -> list[tuple[str, Decimal]]:
    rows = await conn.fetch(
        """
        SELECT currency, sum(balance) AS balance FROM wallet_slots
        WHERE account_id = $1 GROUP BY currency ORDER BY currency
        """,
        account_id,
    )
    return [(r["currency"], r["balance"]) for r in rows]


async def credit(
    conn: Conn,
    account_id: uuid.UUID,
    currency: str,
    amount: Decimal,
    slots: int,
    kind: str = "CREDIT",
    transaction_id: str | None = None,
) -> bool:
    """Add money spread evenly over the wallet's slots. False if this refund already happened."""
    if transaction_id is not None:
        inserted = await conn.fetchval(
            """
            INSERT INTO ledger (account_id, currency, amount, kind, transaction_id)
            VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING id
            """,
            account_id,
            currency,
            amount,
            kind,
            transaction_id,
        )
        if inserted is None:
            return False
    else:
        await conn.execute(
            "INSERT INTO ledger (account_id, currency, amount, kind) VALUES ($1, $2, $3, $4)",
            account_id,
            currency,
            amount,
            kind,
        )
    await conn.executemany(
        """
        INSERT INTO wallet_slots (account_id, currency, slot, balance) VALUES ($1, $2, $3, $4)
        ON CONFLICT (account_id, currency, slot)
        DO UPDATE SET balance = wallet_slots.balance + EXCLUDED.balance
        """,
        [(account_id, currency, i, share) for i, share in enumerate(split_evenly(amount, slots))],
    )
    return True


DEBIT_ONE_SLOT = """
UPDATE wallet_slots SET balance = balance - $3
WHERE (account_id, currency, slot) = (
    SELECT account_id, currency, slot FROM wallet_slots
    WHERE account_id = $1 AND currency = $2 AND balance >= $3
    ORDER BY random() LIMIT 1 FOR UPDATE {wait})
RETURNING slot
"""


async def debit(
    conn: Conn, account_id: uuid.UUID, currency: str, amount: Decimal, transaction_id: str
) -> bool:
    """Take `amount` from the wallet in this transaction. False if the balance is too low.

    Fast path: one statement takes a random unlocked slot that can pay. If every such slot
    is busy, wait for one of them (the row is re-checked once the lock is ours). Only when no
    single slot can pay (balances spread thin) lock them all, pay from the sum and spread what
    is left evenly again.
    """
    slot = None
    for wait in ("SKIP LOCKED", ""):
        slot = await conn.fetchval(DEBIT_ONE_SLOT.format(wait=wait), account_id, currency, amount)
        if slot is not None:
            break
    if slot is None:
        rows = await conn.fetch(
            """
            SELECT slot, balance FROM wallet_slots WHERE account_id = $1 AND currency = $2
            ORDER BY slot FOR UPDATE
            """,
            account_id,
            currency,
        )
        total = sum((r["balance"] for r in rows), Decimal(0))
        if total < amount:
            return False
        shares = split_evenly(total - amount, len(rows))
        await conn.executemany(
            "UPDATE wallet_slots SET balance = $4 WHERE account_id = $1 AND currency = $2 "
            "AND slot = $3",
            [
                (account_id, currency, r["slot"], share)
                for r, share in zip(rows, shares, strict=True)
            ],
        )
    await conn.execute(
        "INSERT INTO ledger (account_id, currency, amount, kind, transaction_id) "
        "VALUES ($1, $2, $3, 'DEBIT', $4)",
        account_id,
        currency,
        -amount,
        transaction_id,
    )
    return True


# --- products (read model of catalog.products) -------------------------------------------------


def _product(row: asyncpg.Record | None) -> Product | None:
    if row is None:
        return None
    return Product(
        row["sku"], row["currency"].strip(), row["price"], row["is_instant"], row["active"]
    )


async def product_and_wallets(
    conn: Conn, sku: str, account_id: uuid.UUID
) -> tuple[Product | None, set[str]]:
    """The product (None if unknown) and the account's wallet currencies: one round trip,
    on the instant path."""
    row = await conn.fetchrow(
        """
        SELECT p.sku, p.currency, p.price, p.is_instant, p.active,
               ARRAY(SELECT DISTINCT currency FROM wallet_slots WHERE account_id = $2) AS wallets
        FROM (SELECT 1) AS one LEFT JOIN products p ON p.sku = $1
        """,
        sku,
        account_id,
    )
    assert row is not None
    wallets = {currency.strip() for currency in row["wallets"]}
    return (_product(row) if row["sku"] is not None else None), wallets


async def get_product_record(conn: Conn, sku: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT record, version FROM products WHERE sku = $1", sku)


async def upsert_product(conn: Conn, record: dict[str, Any], version: int) -> bool:
    """Apply a snapshot unless a newer one is already stored (redelivery, reordering)."""
    result = await conn.fetchval(
        """
        INSERT INTO products (sku, record, currency, price, is_instant, active, version)
        VALUES ($1, $2, $3, $4, $5, $6, $7)
        ON CONFLICT (sku) DO UPDATE SET record = EXCLUDED.record, currency = EXCLUDED.currency,
            price = EXCLUDED.price, is_instant = EXCLUDED.is_instant, active = EXCLUDED.active,
            version = EXCLUDED.version, updated_at = now()
        WHERE products.version < EXCLUDED.version
        RETURNING 1
        """,
        record["sku"],
        record,
        record["currency"],
        Decimal(record["price"]),
        record["isInstantDeliverySupported"],
        record["active"],
        version,
    )
    return result is not None


async def list_products(
    conn: Conn, skus: list[str] | None, limit: int, offset: int
) -> tuple[int, list[dict[str, Any]]]:
    """Active products only, by SKU; `skus` narrows the list."""
    total = await conn.fetchval(
        "SELECT count(*) FROM products WHERE active AND ($1::text[] IS NULL OR sku = ANY($1))",
        skus,
    )
    rows = await conn.fetch(
        """
        SELECT record FROM products WHERE active AND ($1::text[] IS NULL OR sku = ANY($1))
        ORDER BY sku LIMIT $2 OFFSET $3
        """,
        skus,
        limit,
        offset,
    )
    return int(total), [r["record"] for r in rows]


# --- orders --------------------------------------------------------------------------------

ORDER_COLUMNS = (
    "transaction_id, account_id, client_order_number, sku, quantity, unit_price, currency, "
    "grand_total, status, created_at, stock_id, sealed_code"
)


def _order(row: asyncpg.Record) -> Order:
    return Order(
        transaction_id=row["transaction_id"],
        account_id=row["account_id"],
        client_order_number=row["client_order_number"],
        sku=row["sku"],
        quantity=row["quantity"],
        unit_price=row["unit_price"],
        currency=row["currency"].strip(),
        grand_total=row["grand_total"],
        status=row["status"],
        created_at=row["created_at"],
        stock_id=row["stock_id"],
        sealed_code=row["sealed_code"],
    )


async def lock_client_order_number(conn: Conn, account_id: uuid.UUID, number: str) -> None:
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 7))", f"{account_id}|{number}"
    )


async def find_by_client_order_number(conn: Conn, account_id: uuid.UUID, number: str) -> str | None:
    value: str | None = await conn.fetchval(
        """
        SELECT transaction_id FROM orders WHERE account_id = $1 AND client_order_number = $2
        ORDER BY transaction_id LIMIT 1
        """,
        account_id,
        number,
    )
    return value


async def insert_order(conn: Conn, order: Order) -> None:
    await conn.execute(
        """
        INSERT INTO orders (transaction_id, account_id, client_order_number, sku, quantity,
                            unit_price, currency, grand_total, status, created_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
        """,
        order.transaction_id,
        order.account_id,
        order.client_order_number,
        order.sku,
        order.quantity,
        order.unit_price,
        order.currency,
        order.grand_total,
        order.status,
        order.created_at,
    )


async def complete_order(
    conn: Conn, transaction_id: str, stock_id: int, sealed_code: str
) -> Order | None:
    """PROCESSING → COMPLETED; None if the order was already completed (a redelivery)."""
    row = await conn.fetchrow(
        f"""
        UPDATE orders SET status = 'COMPLETED', stock_id = $2, sealed_code = $3, updated_at = now()
        WHERE transaction_id = $1 AND status = 'PROCESSING'
        RETURNING {ORDER_COLUMNS}
        """,  # noqa: S608
        transaction_id,
        stock_id,
        sealed_code,
    )
    return _order(row) if row else None


async def mark_backordered(conn: Conn, transaction_id: str) -> Order | None:
    row = await conn.fetchrow(
        f"""
        UPDATE orders SET backordered_at = now(), updated_at = now()
        WHERE transaction_id = $1 AND status = 'PROCESSING' AND backordered_at IS NULL
        RETURNING {ORDER_COLUMNS}
        """,  # noqa: S608
        transaction_id,
    )
    return _order(row) if row else None


async def cancel_order(conn: Conn, transaction_id: str, reason: str) -> Order | None:
    row = await conn.fetchrow(
        f"""
        UPDATE orders SET status = 'CANCELLED', cancel_reason = $2, updated_at = now()
        WHERE transaction_id = $1 AND status = 'PROCESSING'
        RETURNING {ORDER_COLUMNS}
        """,  # noqa: S608
        transaction_id,
        reason,
    )
    return _order(row) if row else None


async def processing_summary(conn: Conn) -> list[tuple[str, int, float]]:
    """(stage, count, age of the oldest in seconds) of the orders in PROCESSING, for metrics:
    stage `awaiting_decision` (no decision from inventory yet) or `backordered`."""
    rows = await conn.fetch(
        """
        SELECT CASE WHEN backordered_at IS NULL THEN 'awaiting_decision' ELSE 'backordered' END
                   AS stage,
               count(*) AS n,
               extract(epoch FROM now() - min(created_at)) AS oldest
        FROM orders WHERE status = 'PROCESSING' GROUP BY 1
        """
    )
    return [(r["stage"], int(r["n"]), float(r["oldest"])) for r in rows]


async def get_order(conn: Conn, account_id: uuid.UUID, transaction_id: str) -> Order | None:
    row = await conn.fetchrow(
        f"SELECT {ORDER_COLUMNS} FROM orders WHERE transaction_id = $1 AND account_id = $2",  # noqa: S608
        transaction_id,
        account_id,
    )
    return _order(row) if row else None


async def list_orders(
    conn: Conn,
    account_id: uuid.UUID,
    *,
    transaction_id: str | None,
    client_order_number: str | None,
    status: str | None,
    limit: int,
    offset: int,
) -> tuple[int, list[Order]]:
    conditions, args = ["account_id = $1"], [account_id]
    for column, value in (
        ("transaction_id", transaction_id),
        ("client_order_number", client_order_number),
        ("status", status),
    ):
        if value is not None:
            args.append(value)  # type: ignore[arg-type]
            conditions.append(f"{column} = ${len(args)}")
    where = " AND ".join(conditions)
    total = await conn.fetchval(f"SELECT count(*) FROM orders WHERE {where}", *args)  # noqa: S608
    rows = await conn.fetch(
        f"SELECT {ORDER_COLUMNS} FROM orders WHERE {where} "  # noqa: S608
        f"ORDER BY transaction_id DESC LIMIT ${len(args) + 1} OFFSET ${len(args) + 2}",
        *args,
        limit,
        offset,
    )
    return int(total), [_order(r) for r in rows]


async def take_orders_to_nudge(
    conn: Conn, older_than_s: float, again_after_s: float, limit: int
) -> list[asyncpg.Record]:
    """PROCESSING orders older than `older_than_s`, not nudged in the last `again_after_s`;
    marks them nudged now."""
    return await conn.fetch(
        """
        UPDATE orders SET nudged_at = now()
        WHERE transaction_id IN (
            SELECT transaction_id FROM orders
            WHERE status = 'PROCESSING' AND created_at < now() - make_interval(secs => $1)
              AND (nudged_at IS NULL OR nudged_at < now() - make_interval(secs => $2))
            ORDER BY created_at LIMIT $3 FOR UPDATE SKIP LOCKED)
        RETURNING transaction_id, account_id, sku, unit_price, currency, created_at
        """,
        older_than_s,
        again_after_s,
        limit,
    )
