"""The repositories and unit of work over PostgreSQL, on one asyncpg connection per
transaction. The catalogue's statements are built from the tables (adapters/tables.py) and
compiled once; the decision path's (claim, decisions, levels) are hand-written, as measured
(docs/decisions/instant-path-batching.md)."""

from collections.abc import Iterable, Mapping, Sequence

import asyncpg
from sqlalchemy import bindparam, func, literal_column, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlmodel import col

from services.inventory.adapters.tables import Product as ProductRow
from services.inventory.domain.model import (
    ClaimedCode,
    CodeStatus,
    DecisionState,
    NewCode,
    OrderDecision,
    Refingerprinted,
    StockedCode,
    StockLevel,
    placed_at_utc,
    reserve_or_backorder,
)
from services.inventory.service_layer.unit_of_work import Decided, UnitOfWork
from shared import postgres_unit_of_work
from shared.contracts import DeliverStock, PlaceOrder, ProductSnapshot
from shared.crypto import FINGERPRINT_VERSION, Binding, SealedCode
from shared.db import Conn, compiled

# Namespaces of the per-SKU advisory locks and of the tasks run alone (two-int form: never
# clashes with one-key locks).
SKU_LOCK_SPACE = 0x1A7E
TASK_LOCK_SPACE = 0x1A7F

# The code claim: one statement for a whole batch. With a single order it is exactly
#   UPDATE codes SET status='SOLD', transaction_id=$tx, sold_at=now()
#   WHERE id = (SELECT id FROM codes WHERE sku=$sku AND status='AVAILABLE'
#               ORDER BY id FOR UPDATE SKIP LOCKED LIMIT 1) RETURNING ...
# and for n orders of a SKU it pairs its n oldest free codes with them, in order.
# Why the SKU is a range of one and the order (sku, id): given `codes.sku = demand.sku`, the
# planner treats the SKU as fixed, so the primary key's order serves ORDER BY id too; with a
# LIMIT it then reckons a walk of the primary key, skipping other SKUs' codes, cheaper than
# the SKU's own free codes in codes_available, as if those were spread evenly over the
# table. They are not: a SKU stocked after others walked all of theirs (80 ms a claim behind
# 250,000 older codes, measured). In (sku, id) order over a range, codes_available is the
# only index that serves the order (docs/benchmarks.md, "A claim that walked other SKUs'
# codes"; tests/integration/test_inventory_postgres.py proves the plan).
_PICK_FREE_CODES = """
demand AS (
    SELECT sku, count(*) AS k FROM wanted GROUP BY sku
), picked AS (
    SELECT free.id, free.sku, row_number() OVER (PARTITION BY free.sku ORDER BY free.id) AS n
    FROM demand CROSS JOIN LATERAL (
        SELECT id, sku FROM codes
        WHERE codes.sku >= demand.sku AND codes.sku <= demand.sku
          AND status = 'AVAILABLE' AND fingerprint_version = 2
        ORDER BY sku, id LIMIT demand.k
        FOR UPDATE SKIP LOCKED
    ) AS free
)"""
_SELL_PICKED_CODES = """
UPDATE codes
SET status = 'SOLD', transaction_id = wanted.transaction_id, sold_at = now()
FROM picked JOIN wanted USING (sku, n)
WHERE codes.id = picked.id AND codes.status = 'AVAILABLE'
RETURNING codes.id, codes.transaction_id, codes.key_id, codes.sealed, codes.binding
"""
CLAIM_CODES = f"""
WITH wanted AS (
    SELECT sku, transaction_id, row_number() OVER (PARTITION BY sku ORDER BY ord) AS n
    FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS w (sku, transaction_id, ord)
), {_PICK_FREE_CODES}{_SELL_PICKED_CODES}"""  # noqa: S608 - constant fragments

_DECISION_COLUMNS = (
    "transaction_id, account_id, sku, state, stock_id, reply_to, placed_at, cancel_reason"
)

# Deciding a batch of orders (UnitOfWork.decide_orders) in one round trip instead of five:
# the decisions stored already for any of them (with the codes sold to them); for the
# others, the claim (CLAIM_CODES), none for the orders of a SKU whose backorders wait
# (model.claims_to_attempt), and their decisions stored: RESERVED with the code claimed,
# else BACKORDERED, as model.reserve_or_backorder decides (the contract test holds the two
# to the same rows). A row returned is a known decision (`state` set, and its code if it was
# served) or a code claimed now (`state` NULL).
DECIDE_ORDERS = f"""
WITH batch AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::uuid[], $4::text[], $5::timestamptz[])
        WITH ORDINALITY AS b (sku, transaction_id, account_id, reply_to, placed_at, ord)
), known AS (
    SELECT {_DECISION_COLUMNS} FROM decisions WHERE transaction_id = ANY($2::text[])
), wanted AS (
    SELECT b.sku, b.transaction_id, row_number() OVER (PARTITION BY b.sku ORDER BY b.ord) AS n
    FROM batch AS b
    WHERE NOT EXISTS (SELECT 1 FROM known WHERE known.transaction_id = b.transaction_id)
      AND NOT EXISTS (
          SELECT 1 FROM decisions AS d WHERE d.sku = b.sku AND d.state = 'BACKORDERED'
      )
), {_PICK_FREE_CODES}, sold AS ({_SELL_PICKED_CODES}), decided AS (
    INSERT INTO decisions ({_DECISION_COLUMNS})
    SELECT b.transaction_id, b.account_id, b.sku,
           CASE WHEN sold.id IS NULL THEN 'BACKORDERED' ELSE 'RESERVED' END,
           sold.id, b.reply_to, b.placed_at, NULL
    FROM batch AS b LEFT JOIN sold ON sold.transaction_id = b.transaction_id
    WHERE NOT EXISTS (SELECT 1 FROM known WHERE known.transaction_id = b.transaction_id)
    ORDER BY b.ord
)
SELECT known.transaction_id, known.account_id, known.sku, known.state, known.stock_id,
       known.reply_to, known.placed_at, known.cancel_reason,
       code.id AS code_id, code.key_id, code.sealed, code.binding
FROM known
LEFT JOIN codes AS code
    ON known.stock_id IS NOT NULL AND code.transaction_id = known.transaction_id
UNION ALL
SELECT sold.transaction_id, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       sold.id, sold.key_id, sold.sealed, sold.binding
FROM sold
"""  # noqa: S608 - constant column list


def _sealed(row: asyncpg.Record) -> SealedCode:
    return SealedCode(row["key_id"], bytes(row["sealed"]), Binding(row["binding"]))


def _claimed(row: asyncpg.Record) -> ClaimedCode:
    return ClaimedCode(stock_id=row["id"], sealed=_sealed(row))


def _stocked(row: asyncpg.Record) -> StockedCode:
    return StockedCode(
        stock_id=row["id"], sku=row["sku"], status=CodeStatus(row["status"]), sealed=_sealed(row)
    )


def _rows_affected(status: str) -> int:
    return int(status.rsplit(" ", 1)[-1])


# The catalogue's statements, built from the table (admin paths: no hand-written SQL).
_PRODUCT_BY_SKU = select(col(ProductRow.record), col(ProductRow.version)).where(
    col(ProductRow.sku) == bindparam("sku")
)
_GET_PRODUCT = compiled(_PRODUCT_BY_SKU)
_GET_PRODUCT_FOR_UPDATE = compiled(_PRODUCT_BY_SKU.with_for_update())
_GET_PRODUCT_FOR_SHARE = compiled(_PRODUCT_BY_SKU.with_for_update(read=True))
_new_version = pg_insert(ProductRow).values(
    sku=bindparam("sku"),
    name=bindparam("name"),
    price=bindparam("price"),
    currency=bindparam("currency"),
    is_instant=bindparam("is_instant"),
    active=bindparam("active"),
    version=literal_column("1"),
    record=bindparam("record"),
)
_SAVE_PRODUCT = compiled(
    _new_version.on_conflict_do_update(
        index_elements=[col(ProductRow.sku)],
        set_={
            **{
                name: _new_version.excluded[name]
                for name in ("name", "price", "currency", "is_instant", "active", "record")
            },
            "version": col(ProductRow.version) + literal_column("1"),
            "updated_at": func.now(),
        },
    ).returning(col(ProductRow.version))
)
_COUNT_PRODUCTS = compiled(select(func.count()).select_from(ProductRow))
_PAGE_OF_PRODUCTS = compiled(
    select(col(ProductRow.record), col(ProductRow.version))
    .order_by(col(ProductRow.sku))
    .limit(bindparam("limit"))
    .offset(bindparam("offset"))
)


class PostgresProducts:
    def __init__(self, conn: Conn) -> None:
        self._conn = conn

    async def get(
        self, sku: str, *, for_update: bool = False, for_share: bool = False
    ) -> ProductSnapshot | None:
        query = (
            _GET_PRODUCT_FOR_UPDATE
            if for_update
            else _GET_PRODUCT_FOR_SHARE
            if for_share
            else _GET_PRODUCT
        )
        row = await self._conn.fetchrow(query.sql, *query.args(sku=sku))
        return None if row is None else _product(row)

    async def save(self, product: ProductSnapshot) -> ProductSnapshot:
        record = product.model_dump(mode="json", by_alias=True, exclude={"version"})
        version = await self._conn.fetchval(
            _SAVE_PRODUCT.sql,
            *_SAVE_PRODUCT.args(
                sku=product.sku,
                name=product.name,
                price=product.price,
                currency=product.currency,
                is_instant=product.is_instant_delivery_supported,
                active=product.active,
                record=record,
            ),
        )
        return product.model_copy(update={"version": version})

    async def page(self, limit: int, offset: int) -> tuple[int, list[ProductSnapshot]]:
        total = await self._conn.fetchval(_COUNT_PRODUCTS.sql)
        rows = await self._conn.fetch(
            _PAGE_OF_PRODUCTS.sql, *_PAGE_OF_PRODUCTS.args(limit=limit, offset=offset)
        )
        return total, [_product(row) for row in rows]


def _product(row: asyncpg.Record) -> ProductSnapshot:
    return ProductSnapshot.model_validate({**row["record"], "version": row["version"]})


class PostgresCodes:
    def __init__(self, conn: Conn) -> None:
        self._conn = conn

    async def claim(self, wanted: Mapping[str, Sequence[str]]) -> dict[str, ClaimedCode]:
        pairs = [(sku, tx) for sku, transaction_ids in wanted.items() for tx in transaction_ids]
        if not pairs:
            return {}
        rows = await self._conn.fetch(
            CLAIM_CODES, [sku for sku, _ in pairs], [tx for _, tx in pairs]
        )
        return {row["transaction_id"]: _claimed(row) for row in rows}

    async def sold_to(self, transaction_ids: Sequence[str]) -> dict[str, ClaimedCode]:
        rows = await self._conn.fetch(
            "SELECT id, transaction_id, key_id, sealed, binding FROM codes "
            "WHERE transaction_id = ANY($1::text[])",
            list(transaction_ids),
        )
        return {row["transaction_id"]: _claimed(row) for row in rows}

    async def for_sale(self, sku: str) -> list[StockedCode]:
        rows = await self._conn.fetch(
            "SELECT id, sku, status, key_id, sealed, binding FROM codes "
            "WHERE sku = $1 AND status IN ('AVAILABLE', 'UNREADABLE') ORDER BY id",
            sku,
        )
        return [_stocked(row) for row in rows]

    async def new_ids(self, count: int) -> list[int]:
        rows = await self._conn.fetch(
            "SELECT nextval(pg_get_serial_sequence('codes', 'id')) AS id "
            "FROM generate_series(1, $1)",
            count,
        )
        return sorted(row["id"] for row in rows)

    async def add(self, sku: str, codes: Sequence[NewCode]) -> int:
        ordered = sorted(codes, key=lambda c: c.stock_id)
        status = await self._conn.execute(
            """
            INSERT INTO codes (id, sku, key_id, sealed, binding, fingerprint, fingerprint_version)
            SELECT id, $1, key_id, sealed, binding, fingerprint, $7
            FROM unnest($2::bigint[], $3::text[], $4::bytea[], $5::smallint[], $6::bytea[])
                AS c (id, key_id, sealed, binding, fingerprint)
            ORDER BY id
            ON CONFLICT (fingerprint) DO NOTHING
            """,
            sku,
            [c.stock_id for c in ordered],
            [c.sealed.key_id for c in ordered],
            [c.sealed.blob for c in ordered],
            [c.sealed.binding.value for c in ordered],
            [c.fingerprint for c in ordered],
            FINGERPRINT_VERSION,
        )
        return _rows_affected(status)

    # Re-fingerprinting: the statements name version 1 and order as the partial index
    # codes_old_fingerprints does (sold codes first).
    async def any_old_fingerprints(self) -> bool:
        found: bool = await self._conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM codes WHERE fingerprint_version = 1)"
        )
        return found

    async def old_key_ids(self) -> set[str]:
        rows = await self._conn.fetch(
            "SELECT DISTINCT key_id FROM codes WHERE fingerprint_version = 1"
        )
        return {row["key_id"] for row in rows}

    async def skus_with_old_fingerprints(self, limit: int) -> set[str]:
        rows = await self._conn.fetch(
            "SELECT DISTINCT sku FROM (SELECT sku FROM codes WHERE fingerprint_version = 1 "
            "ORDER BY (status <> 'SOLD'), id LIMIT $1) AS first",
            limit,
        )
        return {row["sku"] for row in rows}

    async def with_old_fingerprints(self, skus: Iterable[str], limit: int) -> list[StockedCode]:
        rows = await self._conn.fetch(
            "SELECT id, sku, status, key_id, sealed, binding FROM codes "
            "WHERE fingerprint_version = 1 AND sku = ANY($1::text[]) "
            "ORDER BY (status <> 'SOLD'), id LIMIT $2 FOR UPDATE",
            list(skus),
            limit,
        )
        return [_stocked(row) for row in rows]

    async def holding(self, fingerprints: Sequence[bytes]) -> dict[bytes, StockedCode]:
        rows = await self._conn.fetch(
            "SELECT id, sku, status, key_id, sealed, binding, fingerprint FROM codes "
            "WHERE fingerprint = ANY($1::bytea[]) ORDER BY id FOR UPDATE",
            list(fingerprints),
        )
        return {bytes(row["fingerprint"]): _stocked(row) for row in rows}

    async def set_aside(self, stock_ids: Sequence[int], status: CodeStatus) -> None:
        if not stock_ids:
            return
        await self._conn.execute(
            """
            UPDATE codes SET fingerprint = NULL, fingerprint_version = $2,
                status = CASE status WHEN 'SOLD' THEN 'SOLD' ELSE $3 END
            WHERE id = ANY($1::bigint[])
            """,
            list(stock_ids),
            FINGERPRINT_VERSION,
            status.value,
        )

    async def refingerprint(self, codes: Sequence[Refingerprinted]) -> None:
        await self._conn.execute(
            """
            UPDATE codes SET fingerprint = c.fingerprint, fingerprint_version = $6,
                key_id = c.key_id, sealed = c.sealed, binding = c.binding,
                status = CASE codes.status WHEN 'UNREADABLE' THEN 'AVAILABLE' ELSE codes.status END
            FROM unnest($1::bigint[], $2::bytea[], $3::text[], $4::bytea[], $5::smallint[])
                AS c (id, fingerprint, key_id, sealed, binding)
            WHERE codes.id = c.id
            """,
            [c.code.stock_id for c in codes],
            [c.fingerprint for c in codes],
            [c.sealed.key_id for c in codes],
            [c.sealed.blob for c in codes],
            [c.sealed.binding.value for c in codes],
            FINGERPRINT_VERSION,
        )

    async def available(self, sku: str) -> int:
        count: int = await self._conn.fetchval(
            "SELECT count(*) FROM codes "
            "WHERE sku = $1 AND status = 'AVAILABLE' AND fingerprint_version = 2",
            sku,
        )
        return count

    async def levels(self, skus: Sequence[str]) -> dict[str, StockLevel]:
        rows = await self._conn.fetch(
            """
            SELECT sku,
                   count(*) FILTER (
                       WHERE status = 'AVAILABLE' AND fingerprint_version = 2
                   ) AS available,
                   count(*) FILTER (WHERE status = 'SOLD') AS sold
            FROM codes WHERE sku = ANY($1::text[]) GROUP BY sku
            """,
            list(skus),
        )
        return {row["sku"]: StockLevel(row["available"], row["sold"]) for row in rows}

    async def available_per_product(self) -> dict[str, int]:
        # Every code for sale less those still waiting for their version 2 fingerprint
        # (fingerprint_version is 1 or 2): the first count can be read from an index alone
        # (codes_sku_status) where the table's pages are all-visible, the second from
        # codes_old_fingerprints, mostly empty. Counting `fingerprint_version = 2` directly
        # read every row of the table, sold codes included (docs/benchmarks.md, "Idle").
        rows = await self._conn.fetch(
            """
            SELECT p.sku, coalesce(a.n, 0) - coalesce(v1.n, 0) AS available
            FROM products p
            LEFT JOIN (SELECT sku, count(*) AS n FROM codes
                       WHERE status = 'AVAILABLE' GROUP BY sku) a ON a.sku = p.sku
            LEFT JOIN (SELECT sku, count(*) AS n FROM codes
                       WHERE status = 'AVAILABLE' AND fingerprint_version = 1
                       GROUP BY sku) v1 ON v1.sku = p.sku
            """
        )
        return {row["sku"]: row["available"] for row in rows}


class PostgresDeliveries:
    def __init__(self, conn: Conn) -> None:
        self._conn = conn

    async def park(self, delivery: DeliverStock) -> bool:
        status = await self._conn.execute(
            "INSERT INTO pending_deliveries (delivery_id, sku, command) VALUES ($1, $2, $3) "
            "ON CONFLICT (delivery_id) DO NOTHING",
            delivery.delivery_id,
            delivery.sku,
            delivery.model_dump(mode="json"),
        )
        return _rows_affected(status) == 1

    async def oldest(self, exclude: Iterable[str] = ()) -> DeliverStock | None:
        command = await self._conn.fetchval(
            "SELECT command FROM pending_deliveries WHERE delivery_id <> ALL($1::text[]) "
            "ORDER BY received_at, delivery_id LIMIT 1",
            list(exclude),
        )
        return None if command is None else DeliverStock.model_validate(command)

    async def take(self, delivery_id: str) -> bool:
        status = await self._conn.execute(
            "DELETE FROM pending_deliveries WHERE delivery_id = $1", delivery_id
        )
        return _rows_affected(status) == 1


def _decision(row: asyncpg.Record) -> OrderDecision:
    return OrderDecision(
        transaction_id=row["transaction_id"],
        account_id=row["account_id"],
        sku=row["sku"],
        placed_at=row["placed_at"],
        reply_to=row["reply_to"],
        state=DecisionState(row["state"]),
        stock_id=row["stock_id"],
        cancel_reason=row.get("cancel_reason"),
    )


class PostgresDecisions:
    def __init__(self, conn: Conn) -> None:
        self._conn = conn

    async def get_many(self, transaction_ids: Sequence[str]) -> dict[str, OrderDecision]:
        rows = await self._conn.fetch(
            f"SELECT {_DECISION_COLUMNS} FROM decisions "  # noqa: S608 - constant
            "WHERE transaction_id = ANY($1::text[])",
            list(transaction_ids),
        )
        return {row["transaction_id"]: _decision(row) for row in rows}

    async def get_for_update(self, transaction_id: str) -> OrderDecision | None:
        row = await self._conn.fetchrow(
            f"SELECT {_DECISION_COLUMNS} FROM decisions "  # noqa: S608 - constant
            "WHERE transaction_id = $1 FOR UPDATE",
            transaction_id,
        )
        return None if row is None else _decision(row)

    async def skus_with_waiting_backorders(self, skus: Iterable[str]) -> set[str]:
        rows = await self._conn.fetch(
            """
            SELECT s.sku FROM unnest($1::text[]) AS s (sku)
            WHERE EXISTS (
                SELECT 1 FROM decisions d WHERE d.sku = s.sku AND d.state = 'BACKORDERED'
            )
            """,
            list(skus),
        )
        return {row["sku"] for row in rows}

    async def add_all(self, decisions: Sequence[OrderDecision]) -> None:
        await self._conn.execute(
            f"""
            INSERT INTO decisions ({_DECISION_COLUMNS})
            SELECT * FROM unnest(
                $1::text[], $2::uuid[], $3::text[], $4::text[], $5::bigint[], $6::text[],
                $7::timestamptz[], $8::text[]
            )
            """,  # noqa: S608 - constant column list
            [d.transaction_id for d in decisions],
            [d.account_id for d in decisions],
            [d.sku for d in decisions],
            [d.state.value for d in decisions],
            [d.stock_id for d in decisions],
            [d.reply_to for d in decisions],
            [d.placed_at for d in decisions],
            [d.cancel_reason for d in decisions],
        )

    async def update(self, decision: OrderDecision) -> None:
        await self._conn.execute(
            "UPDATE decisions SET state = $2, stock_id = $3, cancel_reason = $4, "
            "updated_at = now() WHERE transaction_id = $1",
            decision.transaction_id,
            decision.state.value,
            decision.stock_id,
            decision.cancel_reason,
        )


class PostgresUnitOfWork(postgres_unit_of_work.PostgresUnitOfWork, UnitOfWork):
    CONFLICTS = (asyncpg.UniqueViolationError, asyncpg.DeadlockDetectedError)
    # What decide_orders runs (benchmarks/inventory_decide.py compares another).
    DECIDE_STATEMENT = DECIDE_ORDERS

    def _bind(self, conn: Conn) -> None:
        self.products = PostgresProducts(conn)
        self.codes = PostgresCodes(conn)
        self.deliveries = PostgresDeliveries(conn)
        self.decisions = PostgresDecisions(conn)

    async def decide_orders(self, orders: Sequence[PlaceOrder]) -> Decided:
        if not orders:
            return Decided({}, [], {})
        rows = await self.connection.fetch(
            self.DECIDE_STATEMENT,
            [o.sku for o in orders],
            [o.transaction_id for o in orders],
            [o.account_id for o in orders],
            [o.reply_to for o in orders],
            [placed_at_utc(o) for o in orders],
        )
        known: dict[str, OrderDecision] = {}
        codes: dict[str, ClaimedCode] = {}
        for row in rows:
            if row["state"] is not None:
                known[row["transaction_id"]] = _decision(row)
            if row["code_id"] is not None:
                codes[row["transaction_id"]] = ClaimedCode(row["code_id"], _sealed(row))
        new = [
            reserve_or_backorder(o, codes.get(o.transaction_id))
            for o in orders
            if o.transaction_id not in known
        ]
        return Decided(known, new, codes)

    async def serialize_skus(self, skus: Iterable[str]) -> None:
        # Taken in one statement, in hash order: two batches never wait for each other in a
        # cycle, and every row lock of a SKU's decisions is taken under its lock.
        await self.connection.execute(
            """
            SELECT pg_advisory_xact_lock($1, h)
            FROM (SELECT DISTINCT hashtext(s) AS h FROM unnest($2::text[]) AS s ORDER BY 1) AS l
            ORDER BY h
            """,
            SKU_LOCK_SPACE,
            sorted(set(skus)),
        )

    async def run_alone(self, task: str) -> bool:
        alone: bool = await self.connection.fetchval(
            "SELECT pg_try_advisory_xact_lock($1, hashtext($2))", TASK_LOCK_SPACE, task
        )
        return alone
