"""`subscribe_batched` on the real broker and database: `committed` is called after each of its
transactions commits, never for one rolled back; a batch given back after an infrastructure
failure comes again at once, not after the 5 s fetch an idle consumer holds."""

import asyncio
import time
from collections.abc import Sequence

import pytest
from aiokafka import AIOKafkaProducer
from faststream.kafka import KafkaBroker
from pydantic import BaseModel

from shared import consumers, db
from shared.db import Conn
from shared.topics import Topic
from tests.conftest import Stack
from tests.helpers import unique, wait_until
from tests.integration.conftest import NewTopicFn

pytestmark = pytest.mark.integration


class Note(BaseModel):
    text: str


async def test_committed_follows_each_commit_and_a_failed_batch_comes_again_at_once(
    stack: Stack, new_topic: NewTopicFn
) -> None:
    topic = await new_topic(3)
    pool = await db.create_pool(stack.fulfilment_db_url, 2)
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
    await producer.start()
    attempts: list[tuple[int, float]] = []  # (transaction id, when applied)
    committed: list[int] = []

    async def apply(conn: Conn, notes: Sequence[Note]) -> None:
        xid = int(await conn.fetchval("SELECT txid_current()"))
        attempts.append((xid, time.monotonic()))
        if len(attempts) == 1:
            raise OSError("the database went away")  # infrastructure: rolled back, given back

    def on_committed() -> None:
        committed.append(attempts[-1][0])

    async def status_of(xid: int) -> str:
        return str(await pool.fetchval("SELECT txid_status($1)", xid))

    broker = KafkaBroker(stack.kafka_bootstrap)
    group = unique("batched-group")
    consumers.subscribe_batched(
        broker,
        Topic(topic, 3, key="k", doc="t"),
        group_id=group,
        name=group,
        parse=Note.model_validate_json,
        apply=apply,
        pool_of=lambda: pool,
        producer_of=lambda: producer,
        max_retries=1,
        committed=on_committed,
    )
    try:
        async with broker:
            await broker.start()
            await producer.send_and_wait(topic, Note(text="one").model_dump_json().encode())
            await wait_until(lambda: len(attempts) == 2, timeout=30, message="applied again")
            [(failed, failed_at), (applied, applied_at)] = attempts
            # consume_batch pauses 0.5 s after an infrastructure failure; then the batch comes
            # again on a fetch of 500 ms at most, not behind one held 5 s.
            assert applied_at - failed_at < 0.5 + consumers.FETCH_WAIT_MS / 1000 + 1.0
            assert committed == [applied]
            assert [await status_of(failed), await status_of(applied)] == ["aborted", "committed"]
            # nothing more is called for that one record
            await producer.send_and_wait(topic, Note(text="two").model_dump_json().encode())
            await wait_until(lambda: len(committed) == 2, timeout=30)
            assert len(attempts) == 3
    finally:
        await producer.stop()
        await asyncio.wait_for(pool.close(), 10)
