"""What only the real database (and broker) can prove about inventory: a code is sold at most
once under concurrency and redelivery, decisions and their events commit together, no code is
stored in plaintext, and the subscriber acknowledges only what it decided."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import cast

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from cryptography.exceptions import InvalidTag
from fastapi import FastAPI
from faststream.kafka import KafkaBroker
from pydantic import SecretStr

from services.inventory.adapters.postgres import DECIDE_ORDERS, PostgresUnitOfWork
from services.inventory.domain.model import CodeStatus
from services.inventory.entrypoints import admin, commands
from services.inventory.service_layer import catalog
from services.inventory.service_layer.decisions import handle_commands
from services.inventory.service_layer.unit_of_work import UnitOfWork
from shared import db
from shared.contracts import (
    AllocateBackorder,
    CancelBackorder,
    PlaceOrder,
    ProductSnapshot,
    inventory_event,
)
from shared.crypto import Binding, Code, SealedCode
from shared.topics import INVENTORY_EVENTS
from shared.web import AdminGuard, install_common
from tests.conftest import Stack
from tests.helpers import unique, wait_until
from tests.inventory_contract import (
    VAULT,
    NewUow,
    OldCode,
    RepositoryContract,
    Row,
    StockRoom,
    product,
)
from tests.unit.test_inventory_consumer import FakeProducer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def pool(stack: Stack) -> AsyncIterator[asyncpg.Pool]:
    pool = await db.create_pool(stack.inventory_db_url, 30)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
def new_uow(pool: asyncpg.Pool) -> Callable[[], PostgresUnitOfWork]:
    return lambda: PostgresUnitOfWork(pool)


class PostgresStockRoom:
    """tests/inventory_contract.py StockRoom on the stack's inventory database."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self.stocked: list[int] = []

    async def stock_the_old_way(self, sku: str, codes: Sequence[OldCode]) -> list[int]:
        # As inventory did before 0005 and 0006: sealed to the SKU, a version 1 fingerprint (random
        # here: no code computes them any more, and only their uniqueness was ever used).
        rows = await self._pool.fetch(
            """
            INSERT INTO codes (sku, key_id, sealed, binding, fingerprint, fingerprint_version,
                               status, transaction_id, sold_at)
            SELECT $1, key_id, sealed, 1, fingerprint, 1,
                   CASE WHEN sold_to IS NULL THEN 'AVAILABLE' ELSE 'SOLD' END, sold_to,
                   CASE WHEN sold_to IS NULL THEN NULL ELSE now() END
            FROM unnest($2::text[], $3::bytea[], $4::bytea[], $5::text[])
                WITH ORDINALITY AS c (key_id, sealed, fingerprint, sold_to, n)
            ORDER BY n
            RETURNING id
            """,
            sku,
            *zip(
                *[
                    (s.key_id, s.blob, os.urandom(32), c.sold_to)
                    for c in codes
                    for s in [c.sealed_to(sku)]
                ],
                strict=True,
            ),
        )
        ids = sorted(row["id"] for row in rows)
        self.stocked += ids
        return ids

    async def rows(self, stock_ids: Sequence[int]) -> dict[int, Row]:
        rows = await self._pool.fetch(
            "SELECT id, status, key_id, sealed, binding, fingerprint_version, fingerprint "
            "FROM codes WHERE id = ANY($1::bigint[])",
            list(stock_ids),
        )
        by_id = {
            row["id"]: Row(
                row["id"],
                CodeStatus(row["status"]),
                SealedCode(row["key_id"], bytes(row["sealed"]), Binding(row["binding"])),
                row["fingerprint_version"],
                row["fingerprint"] is not None,
            )
            for row in rows
        }
        return {i: by_id[i] for i in stock_ids}

    async def clean_up(self) -> None:
        """Codes a failed test left with an old fingerprint would stop all stocking."""
        await self._pool.execute(
            "DELETE FROM codes WHERE id = ANY($1::bigint[]) AND fingerprint_version = 1",
            self.stocked,
        )


class TestPostgresRepositories(RepositoryContract):
    @pytest.fixture
    def new_uow(self, pool: asyncpg.Pool) -> NewUow:
        return lambda: PostgresUnitOfWork(pool)

    @pytest.fixture
    async def stock_room(self, pool: asyncpg.Pool) -> AsyncIterator[StockRoom]:
        room = PostgresStockRoom(pool)
        try:
            yield room
        finally:
            await room.clean_up()


def place(sku: str, transaction_id: str | None = None) -> PlaceOrder:
    return PlaceOrder(
        transaction_id=transaction_id or unique("tx"),
        account_id=uuid.uuid4(),
        sku=sku,
        unit_price=Decimal("1.00"),
        currency="USD",
        placed_at=datetime.now(UTC),
        reply_to="orders.replies",
    )


async def product_with_codes(new_uow: NewUow, count: int) -> tuple[str, list[str]]:
    sku = unique("SKU")
    await catalog.put_product(
        ProductSnapshot(sku=sku, name=f"Card {sku}", currency="USD", price=Decimal("1.00")),
        new_uow(),
        VAULT,
    )
    redeem = [unique("CODE") for _ in range(count)]
    if count:
        await catalog.add_stock(sku, [Code(r, "0123") for r in redeem], new_uow(), VAULT)
    return sku, redeem


async def sold(pool: asyncpg.Pool, sku: str) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT id, transaction_id FROM codes WHERE sku = $1 AND status = 'SOLD' ORDER BY id", sku
    )


@pytest.fixture(scope="module")
async def events_from(stack: Stack) -> dict[TopicPartition, int]:
    """Where inventory.events ended when this module started: its tests' events come after."""
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.kafka_bootstrap, group_id=None)
    await consumer.start()
    try:
        partitions = [TopicPartition(INVENTORY_EVENTS.name, p) for p in range(6)]
        ends: dict[TopicPartition, int] = await consumer.end_offsets(partitions)
        return ends
    finally:
        await consumer.stop()


async def events_of(
    stack: Stack, start: dict[TopicPartition, int], sku: str, at_least: int
) -> list[object]:
    """The SKU's events as relayed to inventory.events (the relay deletes outbox rows the
    broker acknowledged): waits for `at_least`, then reads to the end, so that an extra one
    written with them shows too."""
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.kafka_bootstrap, group_id=None)
    await consumer.start()
    found: list[object] = []
    try:
        consumer.assign(list(start))
        for tp, offset in start.items():
            consumer.seek(tp, offset)

        async def read_to_end() -> bool:
            ends = await consumer.end_offsets(list(start))
            while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    found.extend(
                        inventory_event.validate_json(r.value or b"")
                        for r in records
                        if r.key == sku.encode()
                    )
            return len(found) >= at_least

        await wait_until(read_to_end, timeout=20, message=f"{at_least} events of {sku}")
        await read_to_end()
    finally:
        await consumer.stop()
    return found


async def test_two_transactions_race_for_one_code_and_exactly_one_wins(
    pool: asyncpg.Pool, new_uow: NewUow
) -> None:
    sku, _ = await product_with_codes(new_uow, 1)
    first, second = new_uow(), new_uow()
    async with first, second:
        won = await asyncio.gather(
            first.codes.claim({sku: [unique("tx")]}), second.codes.claim({sku: [unique("tx")]})
        )
        # The loser did not wait for the winner's commit (SKIP LOCKED): both answered.
        assert sorted(len(claimed) for claimed in won) == [0, 1]
        await first.commit()
        await second.commit()
    assert len(await sold(pool, sku)) == 1


async def test_an_uncommitted_claim_is_skipped_then_freed_by_rollback(
    pool: asyncpg.Pool, new_uow: NewUow
) -> None:
    sku, _ = await product_with_codes(new_uow, 1)
    async with new_uow() as holder:
        assert await holder.codes.claim({sku: [unique("tx")]})
        async with new_uow() as other:
            assert await other.codes.claim({sku: [unique("tx")]}) == {}
    async with new_uow() as later:
        assert await later.codes.claim({sku: [unique("tx")]})
        await later.commit()
    assert len(await sold(pool, sku)) == 1


async def test_the_database_refuses_a_second_code_for_an_order(
    pool: asyncpg.Pool, new_uow: NewUow
) -> None:
    sku, _ = await product_with_codes(new_uow, 3)
    tx = unique("tx")
    async with new_uow() as uow:
        await uow.codes.claim({sku: [tx]})
        await uow.commit()
    with pytest.raises(asyncpg.UniqueViolationError):
        async with new_uow() as uow:
            await uow.codes.claim({sku: [tx]})
    with pytest.raises(asyncpg.CheckViolationError):
        await pool.execute(
            "UPDATE codes SET status = 'SOLD', sold_at = now() "
            "WHERE id = (SELECT min(id) FROM codes WHERE sku = $1 AND status = 'AVAILABLE')",
            sku,
        )
    assert len(await sold(pool, sku)) == 1


async def test_twenty_concurrent_orders_for_five_codes(pool: asyncpg.Pool, new_uow: NewUow) -> None:
    sku, _ = await product_with_codes(new_uow, 5)
    orders = [place(sku) for _ in range(20)]

    replies = await asyncio.gather(*(handle_commands([order], new_uow()) for order in orders))

    decisions = [reply.decision for [reply] in replies]
    reserved = [d for d in decisions if d.outcome == "RESERVED"]
    assert len(reserved) == 5
    assert len({d.stock_id for d in reserved}) == 5
    assert sum(d.outcome == "BACKORDERED" for d in decisions) == 15
    rows = await sold(pool, sku)
    assert {(r["id"], r["transaction_id"]) for r in rows} == {
        (d.stock_id, d.transaction_id) for d in reserved
    }
    codes = {
        VAULT.open(SealedCode.from_wire(str(d.sealed_code)), sku, d.stock_id) for d in reserved
    }
    assert len({c.redeem_code for c in codes}) == 5


async def test_a_ciphertext_copied_onto_another_code_of_its_sku_does_not_open(
    pool: asyncpg.Pool, new_uow: NewUow
) -> None:
    sku, redeem = await product_with_codes(new_uow, 2)
    first, second = [
        r["id"] for r in await pool.fetch("SELECT id FROM codes WHERE sku = $1 ORDER BY id", sku)
    ]
    await pool.execute(
        "UPDATE codes SET key_id = c.key_id, sealed = c.sealed, binding = c.binding "
        "FROM codes c WHERE c.id = $1 AND codes.id = $2",
        first,
        second,
    )

    replies = await handle_commands([place(sku), place(sku)], new_uow())

    sold = {r.decision.stock_id: SealedCode.from_wire(str(r.decision.sealed_code)) for r in replies}
    assert sold[first] == sold[second]
    assert VAULT.open(sold[first], sku, first).redeem_code == redeem[0]
    with pytest.raises(InvalidTag):
        VAULT.open(sold[second], sku, second)


async def test_a_batch_serves_its_orders_in_order(pool: asyncpg.Pool, new_uow: NewUow) -> None:
    sku, _ = await product_with_codes(new_uow, 3)
    other, _ = await product_with_codes(new_uow, 1)
    orders = [place(sku if i % 3 else other) for i in range(12)]

    replies = await handle_commands(orders, new_uow())

    outcomes = [(r.decision.sku, r.decision.outcome) for r in replies]
    assert outcomes == [
        (other, "RESERVED"),
        (sku, "RESERVED"),
        (sku, "RESERVED"),
        (other, "BACKORDERED"),
        (sku, "RESERVED"),
        *[(o.sku, "BACKORDERED") for o in orders[5:]],
    ]
    stock_ids = [int(r.decision.stock_id or 0) for r in replies if r.decision.sku == sku][:3]
    assert stock_ids == sorted(stock_ids)  # oldest code first, first order first


async def test_a_redelivered_order_returns_its_decision_and_claims_nothing(
    pool: asyncpg.Pool,
    new_uow: NewUow,
    stack: Stack,
    events_from: dict[TopicPartition, int],
) -> None:
    sku, _ = await product_with_codes(new_uow, 3)
    order = place(sku)
    [first] = await handle_commands([order], new_uow())
    [again] = await handle_commands([order], new_uow())
    [in_batch, twice] = await handle_commands([order, order], new_uow())

    assert first.decision.outcome == "RESERVED"
    assert again.decision == first.decision == in_batch.decision == twice.decision
    assert len(await sold(pool, sku)) == 1
    # Each redelivery announces the same reservation again (a lost event is repaired), and
    # a batch holding the order twice announces it once.
    reserved = [
        e
        # its stock's arrival and three reservations
        for e in await events_of(stack, events_from, sku, 4)
        if type(e).__name__ == "OrderReserved"
    ]
    assert len(reserved) == 3
    assert len({(e.transaction_id, e.stock_id, e.sealed_code) for e in reserved}) == 1


async def test_cancel_after_allocation_changes_nothing_and_announces_the_allocation(
    pool: asyncpg.Pool,
    new_uow: NewUow,
    stack: Stack,
    events_from: dict[TopicPartition, int],
) -> None:
    sku, _ = await product_with_codes(new_uow, 0)
    order = place(sku)
    [backordered] = await handle_commands([order], new_uow())
    assert backordered.decision.outcome == "BACKORDERED"
    await catalog.add_stock(sku, [Code(unique("CODE"), None)], new_uow(), VAULT)

    await handle_commands(
        [AllocateBackorder(transaction_id=order.transaction_id, sku=sku)], new_uow()
    )
    await handle_commands(
        [CancelBackorder(transaction_id=order.transaction_id, sku=sku, reason="DEADLINE_PASSED")],
        new_uow(),
    )

    state = await pool.fetchval(
        "SELECT state FROM decisions WHERE transaction_id = $1", order.transaction_id
    )
    assert state == "ALLOCATED"
    kinds = [type(e).__name__ for e in await events_of(stack, events_from, sku, 4)]
    assert kinds[:3] == ["OrderBackordered", "StockArrived", "BackorderAllocated"]
    # the cancel is answered with the allocation that won (and so is the running fulfilment's
    # own AllocateBackorder for this order, if it sent one in time): nothing else
    assert len(kinds) >= 4
    assert set(kinds[3:]) == {"BackorderAllocated"}
    assert [r["transaction_id"] for r in await sold(pool, sku)] == [order.transaction_id]


async def test_stock_add_skips_duplicates(
    pool: asyncpg.Pool,
    new_uow: NewUow,
    stack: Stack,
    events_from: dict[TopicPartition, int],
) -> None:
    sku, redeem = await product_with_codes(new_uow, 2)
    fresh = unique("CODE")
    codes = [Code(redeem[0], None), Code(fresh, None), Code(fresh, "9")]

    added = await catalog.add_stock(sku, codes, new_uow(), VAULT)

    assert (added.added, added.skipped, added.available) == (1, 2, 3)
    events = await events_of(stack, events_from, sku, 2)
    arrivals = [e for e in events if type(e).__name__ == "StockArrived"]
    assert [(e.added, e.available) for e in arrivals] == [(2, 2), (1, 3)]  # type: ignore[attr-defined]


async def test_codes_are_never_stored_in_plaintext(
    pool: asyncpg.Pool,
    new_uow: NewUow,
    stack: Stack,
    events_from: dict[TopicPartition, int],
) -> None:
    app = FastAPI()
    app.state.admin = admin.AdminContext(new_uow, VAULT)
    app.state.admin_guard = AdminGuard("inventory-test", SecretStr("token-for-this-test"))
    install_common(app, "inventory-test", {}, max_body_bytes=admin.MAX_BODY_BYTES)
    app.include_router(admin.router)
    sku, given = await product_with_codes(new_uow, 20)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://inventory",
        headers={"Authorization": "Bearer token-for-this-test"},
    ) as http:
        response = await http.post(f"/admin/products/{sku}/stock", json={"generate": 30})
    assert response.json()["data"]["added"] == 30
    await handle_commands([place(sku) for _ in range(25)], new_uow())

    rows = await pool.fetch(
        "SELECT c::text AS text, id, key_id, sealed, binding FROM codes c WHERE sku = $1", sku
    )
    plaintexts = {
        VAULT.open(
            SealedCode(r["key_id"], bytes(r["sealed"]), Binding(r["binding"])), sku, r["id"]
        ).redeem_code
        for r in rows
    }
    assert set(given) <= plaintexts
    assert len(plaintexts) == 50
    stored = "\n".join(r["text"] for r in rows).encode() + b"".join(
        bytes(r["sealed"]) for r in rows
    )
    outbox = str(await events_of(stack, events_from, sku, 26)).encode()  # 1 arrival, 25 orders
    decisions = str(await pool.fetch("SELECT * FROM decisions WHERE sku = $1", sku)).encode()
    for code in plaintexts:
        for where in (stored, outbox, decisions):
            assert code.encode() not in where


async def test_the_subscriber_acknowledges_only_what_it_decided(
    stack: Stack, pool: asyncpg.Pool, new_uow: NewUow
) -> None:
    """Against the real broker: a batch that met a database outage is not committed and comes
    again; once decided, the group's offset moves past it."""
    sku, _ = await product_with_codes(new_uow, 1)
    topic, group = unique("test-inventory-commands"), unique("test-inventory")
    kafka_admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    await kafka_admin.start()
    await kafka_admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    outages = 2

    def flaky_uow() -> UnitOfWork:
        nonlocal outages
        if outages:
            outages -= 1
            raise ConnectionRefusedError("database down for this test")
        return new_uow()

    broker = KafkaBroker(stack.kafka_bootstrap)
    consumer = commands.CommandConsumer(
        flaky_uow,
        lambda: cast(AIOKafkaProducer, FakeProducer()),
        max_retries=1,
        infrastructure_pause_s=0,
    )
    commands.subscribe(broker, consumer, topic=topic, group_id=group)
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
    await producer.start()
    order = place(sku)
    try:
        await producer.send_and_wait(topic, order.to_bytes(), key=sku.encode())
        async with broker:
            await broker.start()

            async def decided() -> bool:
                state = await pool.fetchval(
                    "SELECT state FROM decisions WHERE transaction_id = $1", order.transaction_id
                )
                return bool(state == "RESERVED")

            await wait_until(decided, timeout=30, message="the order decided after the outage")

            async def committed() -> bool:
                offsets = await kafka_admin.list_consumer_group_offsets(group)
                meta = offsets.get(TopicPartition(topic, 0))
                return meta is not None and int(meta.offset) == 1

            await wait_until(committed, timeout=15, message="offset committed past the order")
        assert outages == 0
    finally:
        await producer.stop()
        await kafka_admin.delete_topics([topic])
        await kafka_admin.close()
    assert len(await sold(pool, sku)) == 1


async def test_the_running_inventory_re_fingerprints_codes_that_appear_later(
    pool: asyncpg.Pool,
) -> None:
    # Review finding 6: a version 1 row stocked after start (a restore, an older inventory)
    # is found by the stack's inventory, not only at its start.
    sku = unique("SKU")
    await catalog.put_product(product(sku), PostgresUnitOfWork(pool), VAULT)
    room = PostgresStockRoom(pool)
    try:
        [late] = await room.stock_the_old_way(sku, [OldCode(unique("LATE"))])

        async def refingerprinted() -> bool:
            return (await room.rows([late]))[late].fingerprint_version == 2

        await wait_until(refingerprinted, timeout=30, interval=0.2)
    finally:
        await room.clean_up()


async def test_a_claim_reads_only_its_skus_free_codes_behind_other_skus_older_ones(
    pool: asyncpg.Pool, new_uow: NewUow
) -> None:
    """A SKU stocked after others: the claim's generic plan (the pool's plan_cache_mode) must
    find its free codes through codes_available, not walk the primary key past every older
    code of other SKUs (which it once did, 80 ms a claim behind 250,000 codes). Inside one
    rolled-back transaction: 20,000 older codes of two SKUs, stocked interleaved, then the
    newest SKU's three; the table analyzed, so that the planner sees them (the statistics
    outlive the rollback until autovacuum renews them)."""
    (old_a, _), (old_b, _) = [await product_with_codes(new_uow, 0) for _ in range(2)]
    newest, _ = await product_with_codes(new_uow, 0)
    async with pool.acquire() as conn:
        tx, prepared = conn.transaction(), False
        await tx.start()
        try:
            await conn.execute(
                """
                INSERT INTO codes (sku, key_id, sealed, binding, fingerprint, fingerprint_version,
                                   status)
                SELECT CASE WHEN n > 20000 THEN $3 WHEN n % 2 = 0 THEN $1 ELSE $2 END,
                       'k1', '\\x00', 2, sha256(($4 || n)::bytea), 2, 'AVAILABLE'
                FROM generate_series(1, 20003) AS n
                ORDER BY n
                """,
                old_a,
                old_b,
                newest,
                unique("fp"),
            )
            await conn.execute("ANALYZE codes")
            await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            await conn.execute(
                "PREPARE claim_probe(text[], text[], uuid[], text[], timestamptz[]) AS "
                + DECIDE_ORDERS
            )
            prepared = True
            tx_id = unique("tx")
            [plan] = json.loads(
                await conn.fetchval(
                    "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE claim_probe("
                    f"ARRAY['{newest}'], ARRAY['{tx_id}'], ARRAY['{uuid.uuid4()}'::uuid], "
                    "ARRAY[NULL::text], ARRAY[now()])"
                )
            )
            claimed = await conn.fetch("SELECT sku FROM codes WHERE transaction_id = $1", tx_id)
            decided = await conn.fetchval(
                "SELECT state FROM decisions WHERE transaction_id = $1", tx_id
            )
        finally:
            await tx.rollback()
            if prepared:  # a session's, not the transaction's: the rollback keeps it
                await conn.execute("DEALLOCATE claim_probe")
    assert [row["sku"] for row in claimed] == [newest]
    assert decided == "RESERVED"
    pages = plan["Plan"]["Shared Hit Blocks"] + plan["Plan"]["Shared Read Blocks"]
    # The claim's own work is a few dozen page reads (the top node's count: the decision's
    # insert, a CTE nothing reads, runs after it and is checked above); walking the older
    # codes (`sku = ...` and ORDER BY id, the generic plan's primary key walk) was about
    # 18,000.
    assert pages < 150, f"the claim read {pages} pages: {json.dumps(plan)[:2000]}"
