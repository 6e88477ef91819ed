"""The services' asyncpg pool against the real PostgreSQL server: an exhausted pool gives up
after its acquire timeout (then the request answers 503) instead of queueing forever."""

import asyncio
import time

import pytest

from shared.db import create_pool, database_unavailable
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
