"""The api's repositories keep their contract on PostgreSQL (the stack's api database)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import asyncpg
import pytest

from services.api.adapters.postgres import CHANGED_PRODUCTS, PostgresUnitOfWork
from services.api.domain.model import CreateInstantOrder, OperatorCredit
from services.api.service_layer import accounts, orders
from services.api.service_layer.fx import OperatorRates
from services.api.service_layer.orders import OrderDesk
from shared import db
from shared.contracts import Decision
from tests.api_contract import SLOTS, NewUow, RepositoryContract, product_record
from tests.api_fakes import reserved
from tests.conftest import Stack
from tests.helpers import unique, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def pool(stack: Stack) -> AsyncIterator[asyncpg.Pool]:
    pool = await db.create_pool(stack.api_db_url, 10)
    try:
        yield pool
    finally:
        await pool.close()


class TestPostgresRepositories(RepositoryContract):
    @pytest.fixture
    async def new_uow(self, pool: asyncpg.Pool) -> AsyncIterator[NewUow]:
        """The contract on the stack's api database. What a test made is removed afterwards:
        its orders, left PROCESSING for SKUs nobody sells, would otherwise be asked about
        again and again by the running api (and reach inventory and fulfilment)."""
        began = await pool.fetchval("SELECT now()")
        yield lambda: PostgresUnitOfWork(pool)
        async with pool.acquire() as conn, conn.transaction():
            made = "SELECT id FROM accounts WHERE created_at >= $1"
            for table in ("ledger", "orders", "wallet_slots", "credentials", "operator_credits"):
                await conn.execute(f"DELETE FROM {table} WHERE account_id IN ({made})", began)
            await conn.execute("DELETE FROM accounts WHERE created_at >= $1", began)

    async def test_concurrent_retries_of_one_credit_apply_it_once(
        self, new_uow: NewUow, pool: asyncpg.Pool
    ) -> None:
        """Ten requests with one idempotency key at once (a client retrying on a timeout
        while the first is still running): the key's primary key lets one transaction apply
        the credit; the others wait for it, then answer that it was applied."""
        account_id = await self.account(new_uow)
        credit = OperatorCredit(unique("key"), account_id, "USD", Decimal("5.00"))

        done = await asyncio.gather(
            *(accounts.credit_account(new_uow(), credit, SLOTS) for _ in range(10))
        )

        assert sorted(d.replayed for d in done) == [False] + [True] * 9
        assert {tuple(d.balances) for d in done} == {(("USD", Decimal("5.00")),)}
        credits = await pool.fetchval(
            "SELECT count(*) FROM ledger WHERE account_id = $1 AND kind = 'CREDIT'", account_id
        )
        assert credits == 1

    async def test_a_claim_waits_for_the_transaction_holding_the_key(
        self, new_uow: NewUow, pool: asyncpg.Pool
    ) -> None:
        account_id = await self.account(new_uow)
        credit = OperatorCredit(unique("key"), account_id, "USD", Decimal("1.00"))

        async def hold(claimed: asyncio.Event, release: asyncio.Event, commit: bool) -> None:
            async with new_uow() as first, first.transaction():
                assert await first.credits.claim(credit) is None
                claimed.set()
                await release.wait()
                if commit:
                    await first.commit()

        async def claim_again() -> OperatorCredit | None:
            async with new_uow() as second, second.transaction():
                return await second.credits.claim(credit)  # never committed

        async def second_waits_on_the_first() -> bool:
            return bool(
                await pool.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query LIKE '%INSERT INTO operator_credits%'"
                )
            )

        for first_commits in (False, True):
            claimed, release = asyncio.Event(), asyncio.Event()
            holder = asyncio.create_task(hold(claimed, release, first_commits))
            await claimed.wait()
            second = asyncio.create_task(claim_again())
            await wait_until(second_waits_on_the_first, message="the second claim waits")
            release.set()
            await holder
            outcome = await asyncio.wait_for(second, 5)
            # Rolled back, the key was free for the second; committed, it is the first's.
            assert (outcome is None) is not first_commits

    async def test_a_reservation_recorded_past_the_window_completes_after_its_answer(
        self, new_uow: NewUow, pool: asyncpg.Pool
    ) -> None:
        """The instant path's bound on PostgreSQL: inventory reserves the code in time, but
        the reservation's UPDATE waits on a lock (as behind a backlog of recordings). The
        answer is PROCESSING within the window and RECORD_GRACE_S; the order is paid once
        and completes, with its code, when the lock goes; until then it holds its place in
        flight."""
        account_id = await self.account(new_uow, "10.00")
        sku = unique("SKU")
        async with new_uow() as uow:
            assert await uow.products.apply(product_record(sku, price="2.00"), 1)
        replies = HeldReplies()
        desk = OrderDesk(
            new_uow=new_uow,
            publisher=SentCommands(),
            replies=replies,
            health=SimpleNamespace(accepting=True, failed=lambda: None),  # type: ignore[arg-type]
            decision_window_s=1.0,
            rates=OperatorRates(new_uow),
        )
        began = time.monotonic()
        answer = asyncio.create_task(
            desk.place_instant(CreateInstantOrder(account_id, sku, None, False, None))
        )
        transaction_id = await wait_until(lambda: replies.waiting, timeout=5)
        async with pool.acquire() as holder, holder.transaction():
            await holder.execute(
                "SELECT 1 FROM orders WHERE transaction_id = $1 FOR UPDATE", transaction_id
            )
            replies.decide(transaction_id)

            order = await asyncio.wait_for(answer, 5)

            answered_after = time.monotonic() - began
            assert order.status == "PROCESSING"
            assert answered_after < 1.0 + orders.RECORD_GRACE_S + 0.5, answered_after
            assert desk._in_flight == 1, "the recording, waiting on the lock, holds its place"
        # The lock is gone (its transaction ended): the recording goes through.

        async def completed() -> asyncpg.Record | None:
            row = await pool.fetchrow(
                "SELECT status, stock_id FROM orders WHERE transaction_id = $1", transaction_id
            )
            return row if row["status"] == "COMPLETED" and not desk._in_flight else None

        row = await wait_until(completed, timeout=5, message="the order completes")
        assert row["stock_id"] == 7
        debits = await pool.fetchval(
            "SELECT count(*) FROM ledger WHERE account_id = $1 AND kind = 'DEBIT'", account_id
        )
        assert debits == 1

    async def test_the_catalog_cache_charges_a_changed_product_at_its_new_price(
        self, new_uow: NewUow, pool: asyncpg.Pool
    ) -> None:
        """The acceptance remembers the product between batches; once the read model holds a
        new version, the next order (on the one-statement path, then on the dup-checked
        general path) is charged the new price, once, on PostgreSQL."""
        account_id = await self.account(new_uow, "10.00")
        sku = unique("SKU")
        async with new_uow() as uow:
            assert await uow.products.apply(product_record(sku, price="2.00"), 1)
        desk = OrderDesk(
            new_uow=new_uow,
            publisher=SentCommands(),
            replies=HeldReplies(),  # never decides: each order is answered PROCESSING
            health=SimpleNamespace(accepting=True, failed=lambda: None),  # type: ignore[arg-type]
            decision_window_s=0.05,
            rates=OperatorRates(new_uow),
        )

        async def order(number: str | None = None, version: int = 0, price: str = "") -> str:
            if version:
                async with new_uow() as uow:
                    assert await uow.products.apply(product_record(sku, price=price), version)
            placed = await desk.place_instant(
                CreateInstantOrder(account_id, sku, number, number is not None, None)
            )
            return str(placed.transaction_id)

        placed = [await order(), await order(version=2, price="3.00")]
        placed.append(await order("n-1", version=3, price="1.50"))
        charged = await pool.fetch(
            "SELECT transaction_id, amount FROM ledger WHERE transaction_id = ANY($1::text[]) "
            "AND kind = 'DEBIT'",
            placed,
        )
        assert {r["transaction_id"]: r["amount"] for r in charged} == dict(
            zip(placed, [Decimal("-2.00"), Decimal("-3.00"), Decimal("-1.50")], strict=True)
        )
        async with new_uow() as uow:
            assert await uow.wallets.balances(account_id) == [("USD", Decimal("3.50"))]


class SentCommands:
    """The order requests the desk publishes (none reaches a broker: inventory is
    `HeldReplies`)."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def send(self, topic: str, key: bytes, value: bytes) -> None:
        self.sent.append(value)


class HeldReplies:
    """Inventory's reply path, held by the test: `waiting` is the order awaiting a decision;
    `decide` answers it RESERVED (stock id 7)."""

    topic = "api.replies.test"
    partition = 0

    def __init__(self) -> None:
        self._futures: dict[str, asyncio.Future[Decision]] = {}

    @property
    def waiting(self) -> str | None:
        return next(iter(self._futures), None)

    def expect(self, transaction_id: str) -> asyncio.Future[Decision]:
        future = self._futures[transaction_id] = asyncio.get_running_loop().create_future()
        return future

    def decide(self, transaction_id: str) -> None:
        self._futures[transaction_id].set_result(reserved(transaction_id))

    def forget(self, transaction_id: str) -> None:
        self._futures.pop(transaction_id, None)


def _scans(node: dict[str, Any]) -> list[tuple[str, str]]:
    """(node type, relation) of every node of an EXPLAIN (FORMAT JSON) plan that reads one."""
    found = [(node["Node Type"], node["Relation Name"])] if "Relation Name" in node else []
    for child in node.get("Plans", []):
        found += _scans(child)
    return found


async def test_a_remembered_products_version_is_checked_by_its_key(pool: asyncpg.Pool) -> None:
    """Every acceptance batch on remembered products checks their versions (CHANGED_PRODUCTS,
    and the same check in the pay-and-record statement): it must look each SKU up by the
    primary key, not read the whole products table. Written as a join on unnest(), the check
    was planned (generically) as a hash join reading every product, on a catalog of a few
    hundred, and as a nested loop of key lookups on a larger one: which, the table's
    statistics decide. Nested loops are turned off here, so that the planner takes the hash
    join wherever a join lets it; a lookup per SKU has no join to choose."""
    async with pool.acquire() as conn:
        tx, prepared = conn.transaction(), False
        await tx.start()
        try:
            await conn.execute(
                """
                INSERT INTO products (sku, record, currency, price, is_instant, active, version)
                SELECT 'PLAN-' || n, '{}', 'USD', 1.00, true, true, 1
                FROM generate_series(1, 300) AS n
                """
            )
            await conn.execute("ANALYZE products")
            await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            await conn.execute("SET LOCAL enable_nestloop = off")
            await conn.execute("PREPARE changed_probe(text[], bigint[]) AS " + CHANGED_PRODUCTS)
            prepared = True
            [plan] = json.loads(
                await conn.fetchval(
                    "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE "
                    "changed_probe(ARRAY['PLAN-7', 'PLAN-8', 'PLAN-NONE'], ARRAY[1, 2, 1])"
                )
            )
            changed = await conn.fetch(
                "EXECUTE changed_probe(ARRAY['PLAN-7', 'PLAN-8', 'PLAN-NONE'], ARRAY[1, 2, 1])"
            )
        finally:
            await tx.rollback()
            if prepared:  # a prepared statement outlives the transaction
                await conn.execute("DEALLOCATE changed_probe")
    assert sorted(r["sku"] for r in changed) == ["PLAN-8", "PLAN-NONE"]
    scans = _scans(plan["Plan"])
    assert ("Seq Scan", "products") not in scans, scans
    assert plan["Plan"]["Shared Hit Blocks"] + plan["Plan"].get("Shared Read Blocks", 0) < 30
