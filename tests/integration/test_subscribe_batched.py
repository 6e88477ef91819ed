"""`subscribe_batched` on the real broker and database: `committed` is called after each of its
transactions commits, never for one rolled back; a batch given back after an infrastructure
failure comes again at once, not after the 5 s fetch an idle consumer holds. Both subscribers
dead-letter a value the database refuses at once and go on with the messages behind it."""

import asyncio
import time
from collections.abc import Sequence

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
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


class Count(BaseModel):
    n: int


POISON = 2**70  # more than a bigint holds


@pytest.mark.parametrize("batched", [True, False], ids=["subscribe_batched", "subscribe"])
async def test_a_value_the_database_refuses_is_dead_lettered_on_its_first_attempt(
    stack: Stack, new_topic: NewTopicFn, admin: AIOKafkaAdminClient, batched: bool
) -> None:
    """asyncpg refuses an integer out of a bigint's range (a DataError, SQLSTATE class 22, as
    PostgreSQL refuses a number out of its column's range): refused again on every attempt.
    It is dead-lettered on its first attempt alone, not after the retries and their backoff
    that would hold its partition, and the message behind it is handled."""
    topic = Topic(await new_topic(1), 1, key="k", doc="t")
    await admin.create_topics([NewTopic(topic.dead_letter, 1, 1)])
    pool = await db.create_pool(stack.fulfilment_db_url, 2)
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
    await producer.start()
    dead = AIOKafkaConsumer(
        topic.dead_letter, bootstrap_servers=stack.kafka_bootstrap, auto_offset_reset="earliest"
    )
    applied: list[int] = []
    poison_alone = [0]  # attempts at the poison message on its own

    async def apply(conn: Conn, counts: Sequence[Count]) -> None:
        numbers = [c.n for c in counts]
        poison_alone[0] += numbers == [POISON]
        await conn.fetchval("SELECT count(*) FROM unnest($1::bigint[])", numbers)
        applied.extend(numbers)

    async def handle(count: Count) -> None:
        poison_alone[0] += count.n == POISON
        await pool.fetchval("SELECT $1::bigint", count.n)
        applied.append(count.n)

    broker = KafkaBroker(stack.kafka_bootstrap)
    group = unique("refused-value-group")
    if batched:
        consumers.subscribe_batched(
            broker,
            topic,
            group_id=group,
            name=group,
            parse=Count.model_validate_json,
            apply=apply,
            pool_of=lambda: pool,
            producer_of=lambda: producer,
            max_retries=3,
        )
    else:
        consumers.subscribe(
            broker,
            topic,
            group_id=group,
            name=group,
            parse=Count.model_validate_json,
            handle=handle,
            producer_of=lambda: producer,
            max_retries=3,
        )
    poison = Count(n=POISON).model_dump_json().encode()
    try:
        await dead.start()
        async with broker:
            await broker.start()
            for n in (1, POISON, 3):
                await producer.send_and_wait(topic.name, Count(n=n).model_dump_json().encode())
            await wait_until(lambda: 3 in applied, timeout=30, message="the message behind it")
            assert applied == [1, 3]
            letters = await dead.getmany(timeout_ms=10_000)
            assert [r.value for rs in letters.values() for r in rs] == [poison]
            assert poison_alone == [1]
    finally:
        await dead.stop()
        await producer.stop()
        await asyncio.wait_for(pool.close(), 10)
        await admin.delete_topics([topic.dead_letter])
