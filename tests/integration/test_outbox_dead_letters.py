"""An outbox row the broker can never take (larger than it accepts) is never marked sent:
the relay moves it whole to outbox_dead_letters with the reason, counts it in the
`outbox_dead_letters` gauge the OutboxDeadLetters alert watches, and sends the rows behind it.
Against the real PostgreSQL server and Kafka broker."""

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from shared import metrics
from shared.db import create_pool
from shared.outbox import OutboxRelay
from shared.producers import durable_producer
from tests.conftest import Stack
from tests.helpers import wait_until
from tests.integration.conftest import NewTopicFn

pytestmark = pytest.mark.integration


# Refused by the producer itself (over its max_request_size of 1 MiB), or by the broker (over
# the topic's max.message.bytes), which fails the whole record batch the row was sent in.
REFUSALS = {"by the producer": (2 * 1024 * 1024, None), "by the broker": (20_000, "4000")}


@pytest.fixture(params=sorted(REFUSALS))
async def topic(new_topic: NewTopicFn, request: pytest.FixtureRequest) -> tuple[str, int]:
    size, topic_limit = REFUSALS[request.param]
    configs = {"max.message.bytes": topic_limit} if topic_limit else {}
    return await new_topic(1, **configs), size


async def test_a_row_the_broker_never_takes_goes_to_the_dead_letter_table(
    stack: Stack, topic: tuple[str, int]
) -> None:
    topic_name, too_large = topic
    pool = await create_pool(stack.fulfilment_db_url, 4)
    producer = durable_producer(stack.kafka_bootstrap, "test-dead-letters")
    await producer.start()
    relay = OutboxRelay(pool, producer, "test-dead-letters", poll_interval_s=0.2)
    big_id = small_id = None
    try:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO outbox (topic, key, payload) VALUES ($1, 'big', $2)",
                topic_name,
                b"x" * too_large,
            )
            big_id = await conn.fetchval("SELECT max(id) FROM outbox WHERE topic = $1", topic_name)
            await conn.execute(
                "INSERT INTO outbox (topic, key, payload) VALUES ($1, 'small', 'after it')",
                topic_name,
            )
            small_id = await conn.fetchval(
                "SELECT max(id) FROM outbox WHERE topic = $1", topic_name
            )
        await relay.start()

        async def settled() -> asyncpg.Record | None:
            # Whichever relay of this database took the rows (the running fulfilment's too).
            left = await pool.fetchval(
                "SELECT count(*) FROM outbox WHERE id = ANY($1::bigint[])", [big_id, small_id]
            )
            dead = await pool.fetchrow(
                "SELECT id, topic, key, length(payload) AS size, reason, dead_at "
                "FROM outbox_dead_letters WHERE id = $1",
                big_id,
            )
            return dead if left == 0 and dead is not None else None

        dead = await wait_until(settled, timeout=15, message="big row dead-lettered, small sent")
        assert dead["topic"] == topic_name
        assert dead["key"] == "big"
        assert dead["size"] == too_large  # kept whole, for an operator to re-send
        assert dead["reason"] == "MessageSizeTooLargeError"
        assert (
            await pool.fetchval("SELECT count(*) FROM outbox_dead_letters WHERE id = $1", small_id)
            == 0
        )

        consumer = AIOKafkaConsumer(bootstrap_servers=stack.kafka_bootstrap, group_id=None)
        await consumer.start()
        try:
            consumer.assign([TopicPartition(topic_name, 0)])
            await consumer.seek_to_beginning()
            records = await consumer.getmany(timeout_ms=5000)
            keys = [r.key for batch in records.values() for r in batch]
        finally:
            await consumer.stop()
        assert keys == [b"small"]  # sent; the big one never was

        async def gauge_counts_it() -> bool:
            relay._next_gauges = 0.0
            await relay.relay_once()  # refreshes the gauges when it gets the relay lock
            value = metrics.OUTBOX_DEAD_LETTERS.labels("test-dead-letters")._value.get()
            return value >= 1

        await wait_until(gauge_counts_it, timeout=10, message="outbox_dead_letters gauge >= 1")
    finally:
        await relay.stop()
        await producer.stop()
        if big_id is not None:
            await pool.execute("DELETE FROM outbox_dead_letters WHERE id = $1", big_id)
        await pool.execute("DELETE FROM outbox WHERE topic = $1", topic_name)
        await pool.close()
