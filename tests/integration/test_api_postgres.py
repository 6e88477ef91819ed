"""The api's repositories keep their contract on PostgreSQL (the stack's api database)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal

import asyncpg
import pytest

from services.api.adapters.postgres import PostgresUnitOfWork
from services.api.domain.model import OperatorCredit
from services.api.service_layer import accounts
from shared import db
from tests.api_contract import SLOTS, NewUow, RepositoryContract
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
