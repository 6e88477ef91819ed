"""The services' asyncpg pool against the real PostgreSQL server: an exhausted pool gives up
after its acquire timeout (then the request answers 503) instead of queueing forever."""

import asyncio
import time

import pytest

from shared.db import PlanCacheMode, create_pool, database_unavailable
from tests.conftest import Stack

pytestmark = pytest.mark.integration


async def test_an_exhausted_pool_gives_up_after_its_acquire_timeout(stack: Stack) -> None:
    pool = await create_pool(stack.api_db_url, 1, acquire_timeout_s=0.3)
    try:
        async with pool.acquire() as held:
            assert await held.fetchval("SELECT 1") == 1
            started = time.monotonic()
            with pytest.raises(TimeoutError) as gave_up:
                await pool.fetchval("SELECT 2")  # needs a second connection
            waited = time.monotonic() - started
        assert 0.25 <= waited < 2.0, waited
        assert database_unavailable(gave_up.value)
        # Released, the connection serves the next request at once.
        assert await asyncio.wait_for(pool.fetchval("SELECT 3"), 1.0) == 3
    finally:
        await pool.close()


@pytest.mark.parametrize(
    ("mode", "planned_per_execution"), [("force_generic_plan", False), ("auto", True)]
)
async def test_the_pool_plans_its_prepared_statements_as_configured(
    stack: Stack, mode: PlanCacheMode, planned_per_execution: bool
) -> None:
    """The services' statements are planned once per connection by default: PostgreSQL's own
    default (`auto`) plans a statement with an `= ANY($1)` array again on every execution."""
    pool = await create_pool(stack.api_db_url, 1, plan_cache_mode=mode)
    statement = "SELECT count(*) FROM pg_class WHERE relname = ANY($1::text[])"
    try:
        for _ in range(8):  # across releases: the pool's reset keeps the session setting
            async with pool.acquire() as conn:
                assert await conn.fetchval("SHOW plan_cache_mode") == mode
                assert await conn.fetchval(statement, ["pg_class", "pg_type"]) == 2
        async with pool.acquire() as conn:
            generic, custom = await conn.fetchrow(
                "SELECT generic_plans, custom_plans FROM pg_prepared_statements"
                " WHERE statement = $1",
                statement,
            )
    finally:
        await pool.close()
    assert generic + custom == 8
    if planned_per_execution:
        assert custom >= 5, (generic, custom)
    else:
        assert (generic, custom) == (8, 0)
