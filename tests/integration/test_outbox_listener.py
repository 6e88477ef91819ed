"""The outbox relay's NOTIFY listener against the real PostgreSQL server: when its connection
dies (a database restart, an operator's pg_terminate_backend), the relay is woken, listens
again on a new connection, and later inserts wake it as before (instead of it falling back
to its poll for good); and a NOTIFY during a round is not lost."""

import asyncio

import pytest
from aiokafka import AIOKafkaProducer

from shared.db import create_pool
from shared.outbox import OutboxRelay
from tests.conftest import Stack
from tests.helpers import wait_until

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


async def test_a_row_committed_while_a_round_runs_wakes_the_next_round(stack: Stack) -> None:
    """A NOTIFY that arrives during a round (a row committed after its SELECT) is not lost to
    the poll: the next round follows at once, not `poll_interval_s` later."""
    pool = await create_pool(stack.api_db_url, 4)

    class DuringARound(OutboxRelay):
        rounds = 0

        async def relay_once(self) -> int:
            self.rounds += 1
            if self.rounds == 1:
                self._wake.clear()  # the start's own wake-up has been taken by now
                async with pool.acquire() as conn:
                    await conn.execute("NOTIFY outbox")
                await asyncio.wait_for(self._wake.wait(), 5)  # it arrived during the round
            return 0

    relay = DuringARound(pool, AIOKafkaProducer(), "test", poll_interval_s=60)
    try:
        await relay.start()
        await wait_until(lambda: relay.rounds >= 2, timeout=5, message="a second round")
    finally:
        await relay.stop()
        await pool.close()
