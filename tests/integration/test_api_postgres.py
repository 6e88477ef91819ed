"""The api's repositories keep their contract on PostgreSQL (the stack's api database)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from services.api.adapters.postgres import PostgresUnitOfWork
from shared import db
from tests.api_contract import NewUow, RepositoryContract
from tests.conftest import Stack

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
            for table in ("ledger", "orders", "wallet_slots", "credentials"):
                await conn.execute(f"DELETE FROM {table} WHERE account_id IN ({made})", began)
            await conn.execute("DELETE FROM accounts WHERE created_at >= $1", began)
