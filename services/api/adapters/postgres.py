"""The api's repositories and unit of work over PostgreSQL (asyncpg).

The admin and read paths build their statements from the tables (services/api/adapters/
tables.py), compiled once at import; the instant path's statements (acceptance, debit,
recording) are written by hand, as measured (docs/decisions/instant-path-batching.md)."""

import functools
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, get_args

import asyncpg
from asyncpg.exceptions import DeadlockDetectedError, LockNotAvailableError, SerializationError
from asyncpg.transaction import Transaction
from sqlalchemy import (
    ARRAY,
    Select,
    Table,
    Text,
    any_,
    bindparam,
    case,
    false,
    func,
    insert,
    literal_column,
    or_,
    select,
    true,
    union_all,
)
from sqlmodel import col

from services.api.adapters.tables import Account, AdminAuditEntry, LedgerEntry
from services.api.adapters.tables import BulkOrder as BulkOrderRow
from services.api.adapters.tables import Order as OrderRow
from services.api.adapters.tables import Product as ProductRow
from services.api.domain.model import (
    AccountInfo,
    BulkOrder,
    Credential,
    ExchangeRate,
    FxApplied,
    MoneyMove,
    OperatorCredit,
    Order,
    OrderHistory,
    PinFormat,
    Product,
    rebalanced,
    split_evenly,
    unit_number,
)
from services.api.service_layer.unit_of_work import (
    Allocation,
    LockTimeout,
    ProductChanged,
    TransactionConflict,
    UnitOfWork,
)
from shared import topics
from shared.audit import AdminAction
from shared.contracts import CancelReason, Message, OrderStatus
from shared.db import Conn, Query, compiled
from shared.outbox import add_all_to_outbox
from shared.postgres_unit_of_work import ConnectionSource, roll_back

# --- accounts and credentials ----------------------------------------------------------------


_INSERT_ACCOUNT = compiled(
    insert(Account).values(
        id=bindparam("id"),
        name=bindparam("name"),
        rate_limit_per_s=bindparam("rate_limit"),
        pin_format=bindparam("pin_format"),
    )
)


_ACCOUNT_EXISTS = compiled(select(literal_column("1")).where(col(Account.id) == bindparam("id")))


# --- wallets ---------------------------------------------------------------------------------


DEBIT_ONE_SLOT = """
UPDATE wallet_slots SET balance = balance - $3
WHERE (account_id, currency, slot) = (
    SELECT account_id, currency, slot FROM wallet_slots
    WHERE account_id = $1 AND currency = $2 AND balance >= $3
    ORDER BY random() LIMIT 1 FOR UPDATE {wait})
RETURNING slot
"""


def _changed_products(skus: str, versions: str) -> str:
    """The SKUs of (SKU, version) pairs whose version the read model no longer holds.

    Each SKU is looked up by the primary key (a subquery per pair): a join would be planned,
    generically, as a hash join reading the whole products table for catalogs of up to about
    a thousand products, in every acceptance batch."""
    return f"""
    SELECT v.sku FROM unnest({skus}::text[], {versions}::bigint[]) AS v (sku, version)
    WHERE (SELECT p.version FROM products AS p WHERE p.sku = v.sku) IS DISTINCT FROM v.version
"""  # noqa: S608 - parameter numbers only


CHANGED_PRODUCTS = _changed_products("$1", "$2")
# The products ($16 SKU, $17 version) the orders were priced and checked at whose version
# the read model no longer holds: when there is one, the statements below change nothing and
# return its SKU (ProductChanged). Without versions, it is empty.
STALE_PRODUCTS = f"stale AS ({_changed_products('$16', '$17')}),"

# Records accepted orders in one statement: each order's DEBIT ledger row (the ledger's unique
# index refuses a second debit of an order), its row, and its OrderAccepted event in the
# outbox, in order; a row per order recorded (`stale` false) or per product changed (true).
# `{paid_only}` narrows the orders to those whose wallet a CTE before paid.
RECORD_ORDERS = """
new_orders AS (
    SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[], $4::text[], $5::integer[],
                         $6::numeric[], $7::text[], $8::numeric[], $9::timestamptz[],
                         $10::text[], $11::numeric[], $12::numeric[], $13::timestamptz[],
                         $14::bytea[]) WITH ORDINALITY
        AS o (transaction_id, account_id, client_order_number, sku, quantity, unit_price,
              currency, grand_total, created_at, product_currency, unit_price_original,
              fx_rate, fx_as_of, event, n)
    WHERE NOT EXISTS (SELECT 1 FROM stale) {paid_only}
), ledger_rows AS (
    INSERT INTO ledger (transaction_id, account_id, currency, amount, kind)
    SELECT transaction_id, account_id, currency, -grand_total, 'DEBIT' FROM new_orders
), order_rows AS (
    INSERT INTO orders (transaction_id, account_id, client_order_number, sku, quantity,
                        unit_price, currency, grand_total, status, created_at,
                        product_currency, unit_price_original, fx_rate, fx_as_of)
    SELECT transaction_id, account_id, client_order_number, sku, quantity, unit_price,
           currency, grand_total, 'PROCESSING', created_at,
           product_currency, unit_price_original, fx_rate, fx_as_of
    FROM new_orders
), accepted AS (
    INSERT INTO outbox (topic, key, payload, headers)
    SELECT $15, transaction_id, event, jsonb_build_object('x-type', 'OrderAccepted')
    FROM new_orders ORDER BY n
    RETURNING key
)
SELECT key, false AS stale FROM accepted
UNION ALL
SELECT sku, true FROM stale
"""

# Pays each wallet ($18 account, $19 currency, $20 amount) from one slot that holds the amount
# and is not locked by another transaction; a wallet with no such slot is not paid.
PAY_FROM_FREE_SLOTS = """
wanted AS (
    SELECT * FROM unnest($18::uuid[], $19::text[], $20::numeric[])
        AS w (account_id, currency, amount)
), picked AS (
    SELECT w.account_id, w.currency, w.amount, free.slot
    FROM wanted w CROSS JOIN LATERAL (
        SELECT slot FROM wallet_slots
        WHERE account_id = w.account_id AND currency = w.currency AND balance >= w.amount
        ORDER BY random() LIMIT 1 FOR UPDATE SKIP LOCKED
    ) AS free
    WHERE NOT EXISTS (SELECT 1 FROM stale)
), paid AS (
    UPDATE wallet_slots s SET balance = s.balance - p.amount
    FROM picked p
    WHERE s.account_id = p.account_id AND s.currency = p.currency AND s.slot = p.slot
    RETURNING s.account_id, s.currency
),
"""


PAY_AND_RECORD = (
    "WITH "  # noqa: S608 - constant fragments
    + STALE_PRODUCTS
    + PAY_FROM_FREE_SLOTS
    + RECORD_ORDERS.format(
        paid_only="AND (o.account_id, o.currency) IN (SELECT account_id, currency FROM paid)"
    )
)
RECORD_PAID = "WITH " + STALE_PRODUCTS + RECORD_ORDERS.format(paid_only="")


def _versions(versions: Mapping[str, int] | None) -> list[list[Any]]:
    pairs = sorted((versions or {}).items())
    return [[sku for sku, _ in pairs], [version for _, version in pairs]]


def _recorded(rows: Sequence[asyncpg.Record]) -> set[str]:
    """The transaction ids a RECORD_ORDERS statement recorded; ProductChanged if it recorded
    nothing because a product's version moved on."""
    stale = {row["key"] for row in rows if row["stale"]}
    if stale:
        raise ProductChanged(stale)
    return {row["key"] for row in rows}


def _order_arrays(orders: Sequence[Order], events: Sequence[bytes]) -> list[Any]:
    return [
        [o.transaction_id for o in orders],
        [o.account_id for o in orders],
        [o.client_order_number for o in orders],
        [o.sku for o in orders],
        [o.quantity for o in orders],
        [o.unit_price for o in orders],
        [o.currency for o in orders],
        [o.grand_total for o in orders],
        [o.created_at for o in orders],
        [o.fx.product_currency if o.fx else None for o in orders],
        [o.fx.unit_price_original if o.fx else None for o in orders],
        [o.fx.rate if o.fx else None for o in orders],
        [o.fx.as_of if o.fx else None for o in orders],
        list(events),
    ]


# --- products (read model of catalog.products) -------------------------------------------------


def _product(row: asyncpg.Record | None) -> Product | None:
    if row is None:
        return None
    return Product(
        row["sku"],
        row["currency"].strip(),
        row["price"],
        row["is_instant"],
        row["active"],
        row["pin_kind"],
        row["version"],
    )


def _listed_products(statement: Select[Any]) -> Select[Any]:
    """Active products only, by SKU; a `skus` value (not NULL) narrows the list."""
    skus = bindparam("skus", type_=ARRAY(Text))
    return statement.where(
        col(ProductRow.active), or_(skus.is_(None), col(ProductRow.sku) == any_(skus))
    )


_COUNT_PRODUCTS = compiled(_listed_products(select(func.count()).select_from(ProductRow)))


_PAGE_OF_PRODUCTS = compiled(
    _listed_products(select(col(ProductRow.record)))
    .order_by(col(ProductRow.sku))
    .limit(bindparam("limit"))
    .offset(bindparam("offset"))
)


# --- orders --------------------------------------------------------------------------------


# What an Order (the domain object) is read from.


_ORDERS: Table = OrderRow.__table__  # type: ignore[attr-defined]
_BULK_ORDERS: Table = BulkOrderRow.__table__  # type: ignore[attr-defined]


_ORDER_FIELDS = [
    _ORDERS.c[name]
    for name in (
        "transaction_id",
        "account_id",
        "client_order_number",
        "sku",
        "quantity",
        "unit_price",
        "currency",
        "grand_total",
        "status",
        "created_at",
        "stock_id",
        "sealed_code",
        "backordered_at",
        "cancel_reason",
        "product_currency",
        "unit_price_original",
        "fx_rate",
        "fx_as_of",
        "bulk_id",
    )
]


ORDER_COLUMNS = ", ".join(field.name for field in _ORDER_FIELDS)


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
        backordered_at=row["backordered_at"],
        cancel_reason=row["cancel_reason"],
        fx=None
        if row["product_currency"] is None
        else FxApplied(
            product_currency=row["product_currency"].strip(),
            unit_price_original=row["unit_price_original"],
            rate=row["fx_rate"],
            as_of=row["fx_as_of"],
        ),
        bulk_id=row["bulk_id"],
    )


# The bulk order ($5 id, $6 account, $7 client order number, $8 currency, $9 grand total,
# $10 placed at) and its units ($1 ids, $2 SKUs, $3 prices, $4 OrderAccepted events; topic
# $11): one DEBIT ledger row per unit (so "debited once, refunded once" holds per unit, and
# the units' debits sum to the grand total), the unit rows, their events.
RECORD_BULK = """
WITH bulk_row AS (
    INSERT INTO bulk_orders (transaction_id, account_id, client_order_number, currency,
                             grand_total, created_at)
    VALUES ($5, $6, $7, $8, $9, $10)
), units AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::numeric[], $4::bytea[], $12::text[],
                         $13::numeric[], $14::numeric[], $15::timestamptz[]) WITH ORDINALITY
        AS u (transaction_id, sku, price, event, product_currency, unit_price_original,
              fx_rate, fx_as_of, n)
), ledger_rows AS (
    INSERT INTO ledger (transaction_id, account_id, currency, amount, kind)
    SELECT transaction_id, $6, $8, -price, 'DEBIT' FROM units
), order_rows AS (
    INSERT INTO orders (transaction_id, account_id, client_order_number, sku, quantity,
                        unit_price, currency, grand_total, status, created_at, bulk_id,
                        product_currency, unit_price_original, fx_rate, fx_as_of)
    SELECT transaction_id, $6, $7, sku, 1, price, $8, price, 'PROCESSING', $10, $5,
           product_currency, unit_price_original, fx_rate, fx_as_of
    FROM units
)
INSERT INTO outbox (topic, key, payload, headers)
SELECT $11, $5, event, jsonb_build_object('x-type', 'OrderAccepted') FROM units ORDER BY n
"""


def client_number_key(account_id: uuid.UUID, number: str) -> str:
    return f"{account_id}|{number}"


_ORDER_OF_ACCOUNT = compiled(
    select(*_ORDER_FIELDS).where(
        col(OrderRow.transaction_id) == bindparam("transaction_id"),
        col(OrderRow.account_id) == bindparam("account_id"),
    )
)


_UNITS_OF_BULK = compiled(
    select(*_ORDER_FIELDS).where(col(OrderRow.bulk_id) == bindparam("bulk_id"))
)


_ORDERS_BY_ID = compiled(
    select(*_ORDER_FIELDS).where(
        col(OrderRow.transaction_id) == any_(bindparam("ids", type_=ARRAY(Text)))
    )
)


_ORDER_HISTORY = compiled(
    select(*_ORDER_FIELDS, col(OrderRow.updated_at), col(OrderRow.nudged_at)).where(
        col(OrderRow.transaction_id) == bindparam("transaction_id")
    )
)

_MONEY_OF_ORDER = compiled(
    select(
        col(LedgerEntry.kind),
        col(LedgerEntry.amount),
        col(LedgerEntry.currency),
        col(LedgerEntry.created_at),
    )
    .where(col(LedgerEntry.transaction_id) == bindparam("transaction_id"))
    .order_by(col(LedgerEntry.id))
)

# Orders PROCESSING with no decision heard of, oldest first (the partial index on created_at).
_OLDEST_STUCK = compiled(
    select(
        col(OrderRow.transaction_id),
        func.extract("epoch", func.now() - col(OrderRow.created_at)).label("age"),
    )
    .where(
        # a literal, so that the plan can use the partial index orders_processing
        col(OrderRow.status) == literal_column("'PROCESSING'"),
        col(OrderRow.backordered_at).is_(None),
        col(OrderRow.created_at) < bindparam("before"),
    )
    .order_by(col(OrderRow.created_at))
    .limit(bindparam("one"))
)


def _taking(where: str, order_by: str) -> str:
    """PROCESSING orders older than $1 s not taken in the last $2 s, `where` too, at most $3,
    marked taken now (nudged_at); rows other transactions hold are passed over."""
    return f"""
        UPDATE orders SET nudged_at = now()
        WHERE transaction_id IN (
            SELECT transaction_id FROM orders
            WHERE status = 'PROCESSING' {where}
              AND created_at < now() - make_interval(secs => $1)
              AND (nudged_at IS NULL OR nudged_at < now() - make_interval(secs => $2))
            ORDER BY {order_by} LIMIT $3 FOR UPDATE SKIP LOCKED)
        RETURNING {ORDER_COLUMNS}
        """  # noqa: S608 - constant fragments


# Never asked first: a lost command is not starved by backorders asked before.
_TAKE_UNDECIDED = _taking("", "nudged_at NULLS FIRST, created_at")
# Literal predicates, so that the partial index orders_awaiting_decision serves it: however
# many backorders wait, this reads only the orders no decision was heard of.
_TAKE_PAST_DEADLINE = _taking("AND backordered_at IS NULL", "created_at")


_ORDER_FILTERS = ("transaction_id", "client_order_number")


_ORDER_STATUSES = frozenset(get_args(OrderStatus))


@functools.cache
def _order_listing(filters: tuple[str, ...], status: str | None = None) -> tuple[Query, Query]:
    """Count and page of one account's orders, instant and bulk, newest first, narrowed by
    equality on the `filters` given (one compiled pair per combination), and by `status`, a
    literal (one pair per status: the pool's generic plans could not see that PROCESSING is
    rare, and the partial index orders_processing serves it). A page is a list of
    (transactionId, is a bulk order): the two index scans merge in transactionId order."""
    if status is not None and status not in _ORDER_STATUSES:
        raise ValueError(f"not an order status: {status!r}")
    # A bulk order's units are not orders of their own in the listing: the bulk order is.
    instant = [_ORDERS.c.account_id == bindparam("account_id"), _ORDERS.c.bulk_id.is_(None)]
    instant += [_ORDERS.c[name] == bindparam(name) for name in filters]
    bulk = [_BULK_ORDERS.c.account_id == bindparam("account_id")]
    bulk += [_BULK_ORDERS.c[name] == bindparam(name) for name in filters]
    if status is not None:
        wanted: Any = literal_column(f"'{status}'")
        instant.append(_ORDERS.c.status == wanted)
        bulk.append(_bulk_status() == wanted)
    entries = union_all(
        select(_ORDERS.c.transaction_id, false().label("bulk")).where(*instant),
        select(_BULK_ORDERS.c.transaction_id, true().label("bulk")).where(*bulk),
    ).subquery("entries")
    count = select(func.count()).select_from(entries)
    page = (
        select(entries.c.transaction_id, entries.c.bulk)
        .order_by(entries.c.transaction_id.desc())
        .limit(bindparam("limit"))
        .offset(bindparam("offset"))
    )
    return compiled(count), compiled(page)


def _bulk_status() -> Any:
    """A bulk order's status rolled up from its units (domain.model.rolled_up): PROCESSING
    while any is, else COMPLETED if any unit was delivered, else CANCELLED."""
    unit = _ORDERS.alias("unit")
    processing: Any = literal_column("'PROCESSING'")
    completed: Any = literal_column("'COMPLETED'")
    cancelled: Any = literal_column("'CANCELLED'")
    return (
        select(
            case(
                (func.bool_or(unit.c.status == processing), processing),
                (func.bool_or(unit.c.status == completed), completed),
                else_=cancelled,
            )
        )
        .where(unit.c.bulk_id == _BULK_ORDERS.c.transaction_id)
        .scalar_subquery()
    )


class PostgresAccounts:
    def __init__(self, conn: Conn) -> None:
        self._conn = conn

    async def add(
        self, name: str, rate_limit_per_s: Decimal | None, pin_format: PinFormat = "integer"
    ) -> uuid.UUID:
        account_id = uuid.uuid4()
        await self._conn.execute(
            _INSERT_ACCOUNT.sql,
            *_INSERT_ACCOUNT.args(
                id=account_id, name=name, rate_limit=rate_limit_per_s, pin_format=pin_format
            ),
        )
        return account_id

    async def set_pin_format(self, account_id: uuid.UUID, pin_format: PinFormat) -> bool:
        found = await self._conn.fetchval(
            "UPDATE accounts SET pin_format = $2 WHERE id = $1 RETURNING 1", account_id, pin_format
        )
        return found is not None

    async def exists(self, account_id: uuid.UUID) -> bool:
        return bool(
            await self._conn.fetchval(_ACCOUNT_EXISTS.sql, *_ACCOUNT_EXISTS.args(id=account_id))
        )

    async def get(self, account_id: uuid.UUID) -> AccountInfo | None:
        row = await self._conn.fetchrow(
            "SELECT name, created_at, disabled_at, pin_format FROM accounts WHERE id = $1",
            account_id,
        )
        if row is None:
            return None
        return AccountInfo(
            account_id, row["name"], row["created_at"], row["disabled_at"], row["pin_format"]
        )

    async def disable(self, account_id: uuid.UUID) -> datetime | None:
        disabled_at: datetime | None = await self._conn.fetchval(
            "UPDATE accounts SET disabled_at = COALESCE(disabled_at, now()) WHERE id = $1 "
            "RETURNING disabled_at",
            account_id,
        )
        return disabled_at

    async def enable(self, account_id: uuid.UUID) -> bool:
        found = await self._conn.fetchval(
            "UPDATE accounts SET disabled_at = NULL WHERE id = $1 RETURNING 1", account_id
        )
        return found is not None


class PostgresCredentials:
    def __init__(self, conn: Conn) -> None:
        self._conn = conn

    async def add(
        self, account_id: uuid.UUID, kind: str, secret_hash: bytes, expires_at: datetime | None
    ) -> None:
        await self._conn.execute(
            "INSERT INTO credentials (account_id, kind, secret_hash, expires_at) "
            "VALUES ($1,$2,$3,$4)",
            account_id,
            kind,
            secret_hash,
            expires_at,
        )

    async def expire_tokens(self, account_id: uuid.UUID, at: datetime) -> None:
        await self._conn.execute(
            """
            UPDATE credentials SET expires_at = LEAST(COALESCE(expires_at, $2), $2)
            WHERE account_id = $1 AND kind = 'TOKEN'
            """,
            account_id,
            at,
        )

    async def revoke_tokens(self, account_id: uuid.UUID) -> int:
        ended: int = await self._conn.fetchval(
            """
            WITH ended AS (
                UPDATE credentials SET expires_at = now()
                WHERE account_id = $1 AND kind = 'TOKEN'
                  AND (expires_at IS NULL OR expires_at > now())
                RETURNING 1
            )
            SELECT count(*) FROM ended
            """,
            account_id,
        )
        return ended

    async def live(self, api_key_hash: bytes, token_hash: bytes) -> list[Credential]:
        rows = await self._conn.fetch(
            """
            SELECT c.account_id, c.kind, c.secret_hash, a.rate_limit_per_s, a.pin_format
            FROM credentials c JOIN accounts a ON a.id = c.account_id
            WHERE c.secret_hash = ANY($1::bytea[])
              AND (c.expires_at IS NULL OR c.expires_at > now())
              AND a.disabled_at IS NULL
            """,
            [api_key_hash, token_hash],
        )
        return [
            Credential(
                r["account_id"], r["kind"], r["secret_hash"], r["rate_limit_per_s"], r["pin_format"]
            )
            for r in rows
        ]


class PostgresOperatorCredits:
    def __init__(self, conn: Conn) -> None:
        self._conn = conn

    async def claim(self, credit: OperatorCredit) -> OperatorCredit | None:
        claimed = await self._conn.fetchval(
            """
            INSERT INTO operator_credits (idempotency_key, account_id, currency, amount)
            VALUES ($1, $2, $3, $4) ON CONFLICT (idempotency_key) DO NOTHING RETURNING 1
            """,
            credit.idempotency_key,
            credit.account_id,
            credit.currency,
            credit.amount,
        )
        if claimed is not None:
            return None
        # Taken: by a committed credit (a concurrent claim waited for its transaction to end).
        row = await self._conn.fetchrow(
            "SELECT account_id, currency, amount, created_at FROM operator_credits "
            "WHERE idempotency_key = $1",
            credit.idempotency_key,
        )
        assert row is not None, "a key that conflicted is there"
        return OperatorCredit(
            credit.idempotency_key,
            row["account_id"],
            row["currency"].strip(),
            row["amount"],
            row["created_at"],
        )


class PostgresWallets:
    def __init__(self, conn: Conn) -> None:
        self._conn = conn

    async def balances(self, account_id: uuid.UUID) -> list[tuple[str, Decimal]]:
        rows = await self._conn.fetch(
            """
            SELECT currency, sum(balance) AS balance FROM wallet_slots
            WHERE account_id = $1 GROUP BY currency ORDER BY currency
            """,
            account_id,
        )
        return [(r["currency"], r["balance"]) for r in rows]

    async def credit(
        self,
        account_id: uuid.UUID,
        currency: str,
        amount: Decimal,
        slots: int,
        kind: str = "CREDIT",
        transaction_id: str | None = None,
    ) -> bool:
        if transaction_id is not None:
            inserted = await self._conn.fetchval(
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
            await self._conn.execute(
                "INSERT INTO ledger (account_id, currency, amount, kind) VALUES ($1, $2, $3, $4)",
                account_id,
                currency,
                amount,
                kind,
            )
        await self._conn.executemany(
            """
            INSERT INTO wallet_slots (account_id, currency, slot, balance) VALUES ($1, $2, $3, $4)
            ON CONFLICT (account_id, currency, slot)
            DO UPDATE SET balance = wallet_slots.balance + EXCLUDED.balance
            """,
            [
                (account_id, currency, i, share)
                for i, share in enumerate(split_evenly(amount, slots, currency))
            ],
        )
        return True

    async def take_from_one_slot(
        self, account_id: uuid.UUID, currency: str, amount: Decimal
    ) -> bool:
        # One statement takes a random unlocked slot that can pay; if every such slot is busy,
        # the second waits for one of them (the row is re-checked once the lock is ours).
        for wait in ("SKIP LOCKED", ""):
            slot = await self._conn.fetchval(
                DEBIT_ONE_SLOT.format(wait=wait), account_id, currency, amount
            )
            if slot is not None:  # slot 0 is a slot
                return True
        return False

    async def take_from_all_slots(
        self, account_id: uuid.UUID, currency: str, amount: Decimal
    ) -> bool:
        rows = await self._conn.fetch(
            """
            SELECT slot, balance FROM wallet_slots WHERE account_id = $1 AND currency = $2
            ORDER BY slot FOR UPDATE
            """,
            account_id,
            currency,
        )
        shares = rebalanced([r["balance"] for r in rows], amount, currency)
        if shares is None:
            return False
        await self._conn.executemany(
            "UPDATE wallet_slots SET balance = $4 WHERE account_id = $1 AND currency = $2 "
            "AND slot = $3",
            [
                (account_id, currency, r["slot"], share)
                for r, share in zip(rows, shares, strict=True)
            ],
        )
        return True


class PostgresProducts:
    def __init__(self, conn: Conn) -> None:
        self._conn = conn

    async def for_orders(
        self, skus: Sequence[str], account_ids: Sequence[uuid.UUID]
    ) -> tuple[dict[str, Product], dict[uuid.UUID, set[str]]]:
        """The products of `skus` that exist and each account's wallet currencies: one round
        trip for a whole batch of instant orders."""
        rows = await self._conn.fetch(
            """
            SELECT sku, currency, price, is_instant, active, pin_kind, version,
                   NULL::uuid AS account_id
            FROM products WHERE sku = ANY($1::text[])
            UNION ALL
            SELECT DISTINCT NULL::text, currency, NULL::numeric, NULL::boolean, NULL::boolean,
                   NULL::text, NULL::bigint, account_id
            FROM wallet_slots WHERE account_id = ANY($2::uuid[])
            """,
            list(skus),
            list(account_ids),
        )
        products: dict[str, Product] = {}
        wallets: dict[uuid.UUID, set[str]] = {}
        for row in rows:
            if row["account_id"] is None:
                product = _product(row)
                assert product is not None
                products[product.sku] = product
            else:
                wallets.setdefault(row["account_id"], set()).add(row["currency"].strip())
        return products, wallets

    async def get_record(self, sku: str) -> tuple[dict[str, Any], int] | None:
        row = await self._conn.fetchrow("SELECT record, version FROM products WHERE sku = $1", sku)
        return None if row is None else (row["record"], row["version"])

    async def changed(self, versions: Mapping[str, int]) -> set[str]:
        rows = await self._conn.fetch(CHANGED_PRODUCTS, *_versions(versions))
        return {row["sku"] for row in rows}

    async def apply(self, record: dict[str, Any], version: int) -> bool:
        result = await self._conn.fetchval(
            """
            INSERT INTO products (sku, record, currency, price, is_instant, active, version,
                                  pin_kind)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
            ON CONFLICT (sku) DO UPDATE SET record = EXCLUDED.record, currency = EXCLUDED.currency,
                price = EXCLUDED.price, is_instant = EXCLUDED.is_instant, active = EXCLUDED.active,
                version = EXCLUDED.version, pin_kind = EXCLUDED.pin_kind, updated_at = now()
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
            record.get("pinKind", "string"),  # absent from snapshots before it existed
        )
        return result is not None

    async def listing(
        self, skus: list[str] | None, limit: int, offset: int
    ) -> tuple[int, list[dict[str, Any]]]:
        total = await self._conn.fetchval(_COUNT_PRODUCTS.sql, *_COUNT_PRODUCTS.args(skus=skus))
        rows = await self._conn.fetch(
            _PAGE_OF_PRODUCTS.sql, *_PAGE_OF_PRODUCTS.args(skus=skus, limit=limit, offset=offset)
        )
        return int(total), [r["record"] for r in rows]

    async def currencies(self) -> list[str]:
        rows = await self._conn.fetch("SELECT DISTINCT currency FROM products WHERE active")
        return [r["currency"].strip() for r in rows]


def _rate(row: asyncpg.Record) -> ExchangeRate:
    return ExchangeRate(row["base"].strip(), row["quote"].strip(), row["rate"], row["updated_at"])


class PostgresExchangeRates:
    def __init__(self, conn: Conn) -> None:
        self._conn = conn

    async def all(self) -> list[ExchangeRate]:
        return [_rate(r) for r in await self._conn.fetch("SELECT * FROM fx_rates")]

    async def put(self, base: str, quote: str, rate: Decimal) -> ExchangeRate:
        row = await self._conn.fetchrow(
            """
            INSERT INTO fx_rates (base, quote, rate) VALUES ($1, $2, $3)
            ON CONFLICT (base, quote) DO UPDATE SET rate = EXCLUDED.rate, updated_at = now()
            RETURNING *
            """,
            base,
            quote,
            rate,
        )
        assert row is not None
        return _rate(row)


class PostgresOrders:
    def __init__(self, conn: Conn) -> None:
        self._conn = conn

    async def record(
        self,
        orders: Sequence[Order],
        accepted_events: Sequence[bytes],
        versions: Mapping[str, int] | None = None,
    ) -> None:
        rows = await self._conn.fetch(
            RECORD_PAID,
            *_order_arrays(orders, accepted_events),
            topics.ORDER_EVENTS.name,
            *_versions(versions),
        )
        _recorded(rows)

    async def pay_and_record(
        self,
        orders: Sequence[Order],
        accepted_events: Sequence[bytes],
        versions: Mapping[str, int] | None = None,
    ) -> set[str]:
        # ONE statement, and so one commit when the connection is not in a transaction.
        totals: dict[tuple[uuid.UUID, str], Decimal] = {}
        for o in orders:
            totals[o.account_id, o.currency] = (
                totals.get((o.account_id, o.currency), 0) + o.grand_total
            )
        rows = await self._conn.fetch(
            PAY_AND_RECORD,
            *_order_arrays(orders, accepted_events),
            topics.ORDER_EVENTS.name,
            *_versions(versions),
            [a for a, _ in totals],
            [c for _, c in totals],
            list(totals.values()),
        )
        return _recorded(rows)

    async def record_bulk(self, bulk: BulkOrder, accepted_events: Sequence[bytes]) -> None:
        await self._conn.execute(
            RECORD_BULK,
            [u.transaction_id for u in bulk.units],
            [u.sku for u in bulk.units],
            [u.unit_price for u in bulk.units],
            list(accepted_events),
            bulk.transaction_id,
            bulk.account_id,
            bulk.client_order_number,
            bulk.currency,
            bulk.grand_total,
            bulk.created_at,
            topics.ORDER_EVENTS.name,
            # what a unit paid in another currency than its product's was converted from
            [u.fx.product_currency if u.fx else None for u in bulk.units],
            [u.fx.unit_price_original if u.fx else None for u in bulk.units],
            [u.fx.rate if u.fx else None for u in bulk.units],
            [u.fx.as_of if u.fx else None for u in bulk.units],
        )

    async def bulk_account(self, transaction_id: str) -> uuid.UUID | None:
        account_id: uuid.UUID | None = await self._conn.fetchval(
            "SELECT account_id FROM bulk_orders WHERE transaction_id = $1", transaction_id
        )
        return account_id

    async def get_bulk(self, account_id: uuid.UUID, transaction_id: str) -> BulkOrder | None:
        row = await self._conn.fetchrow(
            "SELECT transaction_id, account_id, client_order_number, currency, grand_total, "
            "created_at FROM bulk_orders WHERE transaction_id = $1 AND account_id = $2",
            transaction_id,
            account_id,
        )
        if row is None:
            return None
        units = await self._conn.fetch(
            _UNITS_OF_BULK.sql, *_UNITS_OF_BULK.args(bulk_id=transaction_id)
        )
        return BulkOrder(
            transaction_id=row["transaction_id"],
            account_id=row["account_id"],
            client_order_number=row["client_order_number"],
            currency=row["currency"].strip(),
            grand_total=row["grand_total"],
            created_at=row["created_at"],
            units=tuple(sorted((_order(u) for u in units), key=unit_number)),
        )

    async def lock_client_order_numbers(self, wanted: Sequence[tuple[uuid.UUID, str]]) -> None:
        # Taken in hash order in one statement: two batches never wait for each other in a cycle.
        await self._conn.execute(
            """
            SELECT pg_advisory_xact_lock(h)
            FROM (SELECT DISTINCT hashtextextended(k, 7) AS h FROM unnest($1::text[]) AS k
                  ORDER BY 1) AS l
            ORDER BY h
            """,
            sorted({client_number_key(a, n) for a, n in wanted}),
        )

    async def find_by_client_order_numbers(
        self, wanted: Sequence[tuple[uuid.UUID, str]]
    ) -> dict[tuple[uuid.UUID, str], str]:
        rows = await self._conn.fetch(
            """
            SELECT DISTINCT ON (o.account_id, o.client_order_number)
                   o.account_id, o.client_order_number, o.transaction_id
            FROM unnest($1::uuid[], $2::text[]) AS w (account_id, number)
            JOIN (SELECT account_id, client_order_number, transaction_id FROM orders
                  WHERE bulk_id IS NULL  -- a unit carries its bulk order's number
                  UNION ALL
                  SELECT account_id, client_order_number, transaction_id FROM bulk_orders) o
              ON o.account_id = w.account_id AND o.client_order_number = w.number
             AND o.client_order_number <> ''  -- the partial indexes' predicate
            ORDER BY o.account_id, o.client_order_number, o.transaction_id
            """,
            [a for a, _ in wanted],
            [n for _, n in wanted],
        )
        return {(r["account_id"], r["client_order_number"]): r["transaction_id"] for r in rows}

    async def complete(self, allocations: Sequence[Allocation]) -> list[Order]:
        # One statement; an order completed already (a redelivery, or the reply and the event
        # both applied) is not returned. In transactionId order, as complete_and_announce:
        # the reply path and the inventory.events consumer (in two api processes, say) may
        # complete the same orders at once, and rows taken in two orders can deadlock.
        allocations = sorted(allocations, key=lambda a: a[0])
        rows = await self._conn.fetch(
            f"""
            UPDATE orders SET status = 'COMPLETED', stock_id = a.stock_id, sealed_code = a.sealed,
                              updated_at = now()
            FROM unnest($1::text[], $2::bigint[], $3::text[])
                AS a (transaction_id, stock_id, sealed)
            WHERE orders.transaction_id = a.transaction_id AND orders.status = 'PROCESSING'
              AND orders.transaction_id = ANY($1::text[])  -- by primary key, whatever the plan
            RETURNING {", ".join("orders." + c for c in ORDER_COLUMNS.split(", "))}
            """,  # noqa: S608
            [a[0] for a in allocations],
            [a[1] for a in allocations],
            [a[2] for a in allocations],
        )
        return [_order(row) for row in rows]

    async def complete_and_announce(
        self, allocations: Sequence[tuple[str, int, str, bytes]]
    ) -> set[str]:
        allocations = sorted(allocations, key=lambda a: a[0])  # the lock order: see complete
        rows = await self._conn.fetch(
            """
            WITH a AS (
                SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::bytea[])
                    WITH ORDINALITY AS a (transaction_id, stock_id, sealed, event, n)
            ), done AS (
                UPDATE orders SET status = 'COMPLETED', stock_id = a.stock_id,
                                  sealed_code = a.sealed, updated_at = now()
                FROM a
                WHERE orders.transaction_id = a.transaction_id AND orders.status = 'PROCESSING'
                  AND orders.transaction_id = ANY($1::text[])  -- by primary key, whatever the plan
                RETURNING orders.transaction_id
            )
            INSERT INTO outbox (topic, key, payload, headers)
            SELECT $5, a.transaction_id, a.event, jsonb_build_object('x-type', 'OrderCompleted')
            FROM a JOIN done USING (transaction_id) ORDER BY a.n
            RETURNING key
            """,
            [a[0] for a in allocations],
            [a[1] for a in allocations],
            [a[2] for a in allocations],
            [a[3] for a in allocations],
            topics.ORDER_EVENTS.name,
        )
        return {row["key"] for row in rows}

    async def backorder(self, transaction_id: str) -> Order | None:
        row = await self._conn.fetchrow(
            f"""
            UPDATE orders SET backordered_at = now(), updated_at = now()
            WHERE transaction_id = $1 AND status = 'PROCESSING' AND backordered_at IS NULL
            RETURNING {ORDER_COLUMNS}
            """,  # noqa: S608
            transaction_id,
        )
        return _order(row) if row else None

    async def cancel(self, transaction_id: str, reason: CancelReason) -> Order | None:
        row = await self._conn.fetchrow(
            f"""
            UPDATE orders SET status = 'CANCELLED', cancel_reason = $2, updated_at = now()
            WHERE transaction_id = $1 AND status = 'PROCESSING'
            RETURNING {ORDER_COLUMNS}
            """,  # noqa: S608
            transaction_id,
            reason,
        )
        return _order(row) if row else None

    async def processing_summary(self) -> list[tuple[str, int, float]]:
        rows = await self._conn.fetch(
            """
            SELECT CASE WHEN backordered_at IS NULL THEN 'awaiting_decision' ELSE 'backordered' END
                       AS stage,
                   count(*) AS n,
                   extract(epoch FROM now() - min(created_at)) AS oldest
            FROM orders WHERE status = 'PROCESSING' GROUP BY 1
            """
        )
        return [(r["stage"], int(r["n"]), float(r["oldest"])) for r in rows]

    async def get(self, account_id: uuid.UUID, transaction_id: str) -> Order | None:
        row = await self._conn.fetchrow(
            _ORDER_OF_ACCOUNT.sql,
            *_ORDER_OF_ACCOUNT.args(transaction_id=transaction_id, account_id=account_id),
        )
        return _order(row) if row else None

    async def get_many(self, transaction_ids: Sequence[str]) -> list[Order]:
        rows = await self._conn.fetch(
            _ORDERS_BY_ID.sql, *_ORDERS_BY_ID.args(ids=list(transaction_ids))
        )
        return [_order(row) for row in rows]

    async def listing(
        self,
        account_id: uuid.UUID,
        *,
        transaction_id: str | None,
        client_order_number: str | None,
        status: str | None,
        limit: int,
        offset: int,
    ) -> tuple[int, list[Order | BulkOrder]]:
        given = {
            name: value
            for name, value in zip(
                _ORDER_FILTERS, (transaction_id, client_order_number), strict=True
            )
            if value is not None
        }
        count, page = _order_listing(tuple(given), status)
        total = await self._conn.fetchval(count.sql, *count.args(account_id=account_id, **given))
        rows = await self._conn.fetch(
            page.sql, *page.args(account_id=account_id, limit=limit, offset=offset, **given)
        )
        instant = {
            o.transaction_id: o
            for o in await self.get_many([r["transaction_id"] for r in rows if not r["bulk"]])
        }
        listed: list[Order | BulkOrder] = []
        for row in rows:
            tx = row["transaction_id"]
            found = await self.get_bulk(account_id, tx) if row["bulk"] else instant.get(tx)
            if found is not None:
                listed.append(found)
        return int(total), listed

    async def take_undecided(
        self, older_than_s: float, again_after_s: float, limit: int
    ) -> list[Order]:
        return await self._take(_TAKE_UNDECIDED, older_than_s, again_after_s, limit)

    async def take_past_deadline(
        self, deadline_s: float, again_after_s: float, limit: int
    ) -> list[Order]:
        return await self._take(_TAKE_PAST_DEADLINE, deadline_s, again_after_s, limit)

    async def _take(
        self, sql: str, older_than_s: float, again_after_s: float, limit: int
    ) -> list[Order]:
        rows = await self._conn.fetch(sql, older_than_s, again_after_s, limit)
        return [_order(row) for row in rows]

    async def oldest_stuck(self, older_than_s: float) -> tuple[str, float] | None:
        before = datetime.now(UTC) - timedelta(seconds=older_than_s)
        row = await self._conn.fetchrow(
            _OLDEST_STUCK.sql,
            *_OLDEST_STUCK.args(before=before, one=1),
        )
        return (row["transaction_id"], float(row["age"])) if row else None

    async def history(self, transaction_id: str) -> OrderHistory | None:
        row = await self._conn.fetchrow(
            _ORDER_HISTORY.sql, *_ORDER_HISTORY.args(transaction_id=transaction_id)
        )
        if row is None:
            return None
        moves = await self._conn.fetch(
            _MONEY_OF_ORDER.sql, *_MONEY_OF_ORDER.args(transaction_id=transaction_id)
        )
        return OrderHistory(
            order=_order(row),
            updated_at=row["updated_at"],
            asked_again_at=row["nudged_at"],
            money=[
                MoneyMove(m["kind"], m["amount"], m["currency"].strip(), m["created_at"])
                for m in moves
            ],
        )


_AUDIT: Table = AdminAuditEntry.__table__  # type: ignore[attr-defined]
_AUDIT_FIELDS = ("at", "operator", "client", "method", "route", "ids", "status", "request_id")
_RECORD_ADMIN_ACTION = compiled(insert(_AUDIT).values({f: bindparam(f) for f in _AUDIT_FIELDS}))
_LATEST_ADMIN_ACTIONS = compiled(
    select(*(_AUDIT.c[f] for f in _AUDIT_FIELDS))
    .order_by(col(AdminAuditEntry.id).desc())
    .limit(bindparam("limit"))
)


class PostgresAdminAudit:
    def __init__(self, conn: Conn) -> None:
        self._conn = conn

    async def record(self, action: AdminAction) -> None:
        fields = {f: getattr(action, f) for f in _AUDIT_FIELDS}
        await self._conn.execute(_RECORD_ADMIN_ACTION.sql, *_RECORD_ADMIN_ACTION.args(**fields))

    async def latest(self, limit: int) -> list[AdminAction]:
        rows = await self._conn.fetch(
            _LATEST_ADMIN_ACTIONS.sql, *_LATEST_ADMIN_ACTIONS.args(limit=limit)
        )
        return [AdminAction(**dict(row)) for row in rows]


class PostgresUnitOfWork(UnitOfWork):
    """Work on a connection of `pool`. Given `conn` instead, the unit works inside the
    transaction its caller holds open on it (a batch consumer's): `transaction()` then adds
    no round trip (no savepoint), `commit()` only writes the outbox, the caller commits or
    rolls back, and database errors reach the caller as they are (shared.consumers tells
    the transient ones)."""

    def __init__(self, pool: asyncpg.Pool | None = None, *, conn: Conn | None = None) -> None:
        super().__init__()
        self._source = ConnectionSource(pool, conn)
        self._conn: Conn | None = None
        self._tx: Transaction | None = None

    async def _open(self) -> None:
        conn = await self._source.take()
        self._conn = conn
        self.accounts = PostgresAccounts(conn)
        self.credentials = PostgresCredentials(conn)
        self.wallets = PostgresWallets(conn)
        self.credits = PostgresOperatorCredits(conn)
        self.products = PostgresProducts(conn)
        self.orders = PostgresOrders(conn)
        self.admin_audit = PostgresAdminAudit(conn)
        self.fx_rates = PostgresExchangeRates(conn)

    async def _begin(self, lock_timeout_s: float | None) -> None:
        if self._source.given is not None:
            return
        assert self._conn is not None, "use the unit of work inside `async with`"
        self._tx = self._conn.transaction()
        await self._tx.start()
        if lock_timeout_s is not None:
            await self._conn.execute(f"SET LOCAL lock_timeout = {int(lock_timeout_s * 1000)}")

    async def _commit(self, events: Sequence[tuple[str, str, Message]]) -> None:
        assert self._conn is not None
        await add_all_to_outbox(self._conn, events)
        if self._tx is not None:
            await self._tx.commit()
            self._tx = None

    async def _rollback(self) -> None:
        tx, self._tx = self._tx, None
        if tx is not None and self._conn is not None:
            await roll_back(self._conn, tx)

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._source.give_back(conn)

    def _translate(self, exc: Exception) -> Exception | None:
        if self._source.given is not None:
            return None
        if isinstance(exc, LockNotAvailableError):
            return LockTimeout(str(exc))
        if isinstance(exc, DeadlockDetectedError | SerializationError):
            return TransactionConflict(str(exc))
        return None
