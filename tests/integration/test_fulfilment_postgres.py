"""Fulfilment's repositories on the real database: the contract the fakes keep, and what only
PostgreSQL can prove (one allocation round of a SKU at a time, scans that never take the
same backorder twice, a unit of work inside its caller's transaction).

The database is the running stack's, shared with the running fulfilment service: every test
uses SKUs of its own and deletes their rows when it ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from services.fulfilment.adapters.postgres import (
    PostgresBackorders,
    PostgresSupplierRequests,
    PostgresUnitOfWork,
)
from services.fulfilment.domain.model import BackorderState
from shared import db
from tests.conftest import Stack
from tests.fulfilment_contract import (
    EVERYTHING,
    NewSku,
    NewUow,
    RepositoryContract,
    backorder,
    moved,
    of,
)
from tests.helpers import unique

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def pool(stack: Stack) -> AsyncIterator[asyncpg.Pool]:
    pool = await db.create_pool(stack.fulfilment_db_url, 10)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
def new_uow(pool: asyncpg.Pool) -> NewUow:
    return lambda: PostgresUnitOfWork(pool)


@pytest.fixture
async def new_sku(pool: asyncpg.Pool) -> AsyncIterator[NewSku]:
    made: list[str] = []

    def make() -> str:
        made.append(unique("SKU-fulfilment-test"))
        return made[-1]

    yield make
    async with pool.acquire() as conn, conn.transaction():
        for table in ("backorders", "supplier_requests", "skus"):
            await conn.execute(f"DELETE FROM {table} WHERE sku = ANY($1::text[])", made)


class TestPostgresRepositories(RepositoryContract):
    @pytest.fixture
    def new_uow(self, pool: asyncpg.Pool) -> NewUow:
        return lambda: PostgresUnitOfWork(pool)

    @pytest.fixture
    async def new_sku(self, new_sku: NewSku) -> NewSku:
        return new_sku


async def test_one_allocation_round_of_a_sku_at_a_time(new_uow: NewUow, new_sku: NewSku) -> None:
    sku = new_sku()
    async with new_uow() as first, new_uow() as second:
        await first.skus.lock(sku)
        await first.skus.set_stock_hint(sku, 3)
        waiting = asyncio.create_task(second.skus.lock(sku))
        _, pending = await asyncio.wait({waiting}, timeout=0.3)
        assert pending == {waiting}, "the second round did not wait for the first"
        await first.commit()
        assert (await waiting).stock_hint == 3


async def test_concurrent_scans_never_take_the_same_backorder(
    new_uow: NewUow, new_sku: NewSku
) -> None:
    sku = new_sku()
    in_flight = [backorder(sku) for _ in range(4)]
    async with new_uow() as uow:
        for b in in_flight:
            await uow.backorders.add(b)
            await moved(uow, b, BackorderState.ALLOCATING)
        await uow.commit()
    async with new_uow() as first, new_uow() as second:
        taken = of([sku], await first.backorders.take_stale_in_flight(0, EVERYTHING))
        # the other scan does not wait for the first: it passes over what the first holds
        assert of([sku], await second.backorders.take_stale_in_flight(0, EVERYTHING)) == []
    assert len(taken) == 4


async def test_a_unit_inside_its_callers_transaction(pool: asyncpg.Pool, new_sku: NewSku) -> None:
    kept, undone = backorder(new_sku()), backorder(new_sku())
    async with pool.acquire() as conn, conn.transaction():
        async with PostgresUnitOfWork(conn=conn) as uow:
            await uow.backorders.add(kept)
            await uow.commit()
        async with PostgresUnitOfWork(conn=conn) as uow:
            await uow.backorders.add(undone)  # left without commit: undone, the caller's not
        assert conn.is_in_transaction()
    async with PostgresUnitOfWork(pool) as uow:
        assert await uow.backorders.get_for_update(kept.transaction_id) == kept
        assert await uow.backorders.get_for_update(undone.transaction_id) is None


async def test_a_unit_inside_a_transaction_that_fails_leaves_nothing(
    pool: asyncpg.Pool, new_sku: NewSku
) -> None:
    lost = backorder(new_sku())

    async def a_batch_that_fails_after_the_unit_committed() -> None:
        async with pool.acquire() as conn, conn.transaction():
            async with PostgresUnitOfWork(conn=conn) as uow:
                await uow.backorders.add(lost)
                await uow.commit()
            raise RuntimeError("a later message of the batch failed")

    with pytest.raises(RuntimeError):
        await a_batch_that_fails_after_the_unit_committed()
    async with PostgresUnitOfWork(pool) as uow:
        assert await uow.backorders.get_for_update(lost.transaction_id) is None


async def test_the_next_due_times_count_waiting_backorders_and_open_requests_only(
    pool: asyncpg.Pool, new_sku: NewSku
) -> None:
    """Exact, in a transaction that first hides every other row from itself (and is rolled
    back: the running service and the other tests see none of it)."""
    sku = new_sku()
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        try:
            await conn.execute("DELETE FROM supplier_requests")
            await conn.execute("DELETE FROM backorders")
            requests, backorders = PostgresSupplierRequests(conn), PostgresBackorders(conn)
            assert await requests.seconds_to_next_due() is None
            assert await backorders.seconds_to_next_deadline() is None

            assert await requests.open(sku, 10, 0)
            assert await requests.open(new_sku(), 10, 60)
            [due] = await requests.take_due(EVERYTHING)
            await requests.mark_delivered(due.id)  # delivered: no longer counted
            assert await requests.seconds_to_next_due() == pytest.approx(60, abs=5)

            offered, waiting = backorder(sku, due_in_s=-30), backorder(sku, due_in_s=90)
            for b in (offered, waiting):
                await backorders.add(b)
            offered.start_allocating()  # not waiting: not counted, though overdue
            await backorders.save([offered])
            assert await backorders.seconds_to_next_deadline() == pytest.approx(90, abs=5)
        finally:
            await tx.rollback()
