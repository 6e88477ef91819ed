"""The outbox relay's NOTIFY listener against the real PostgreSQL server: when its connection
dies (a database restart, an operator's pg_terminate_backend), the relay is woken, listens
again on a new connection, and later inserts wake it as before (instead of it falling back
to its poll for good)."""

import asyncio

import pytest
from aiokafka import AIOKafkaProducer

from shared.db import create_pool
from shared.outbox import OutboxRelay
from tests.conftest import Stack

pytestmark = pytest.mark.integration


async def test_the_relay_listens_again_after_its_connection_dies(stack: Stack) -> None:
    pool = await create_pool(stack.api_db_url, 4)
    relay = OutboxRelay(pool, AIOKafkaProducer(), "test", poll_interval_s=60)
    try:
        await relay._listen()
        assert relay._listener is not None
        first = relay._listener.get_server_pid()
        relay._wake.clear()
        async with pool.acquire() as conn:
            await conn.execute("SELECT pg_terminate_backend($1)", first)
        await asyncio.wait_for(relay._wake.wait(), 5)  # its death wakes the relay

        await relay._listen()
        assert relay._listener.get_server_pid() != first
        relay._wake.clear()
        async with pool.acquire() as conn:
            await conn.execute("NOTIFY outbox")
        await asyncio.wait_for(relay._wake.wait(), 5)
    finally:
        await relay.stop()
        await pool.close()
