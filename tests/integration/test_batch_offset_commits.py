"""Batch subscribers' offset commits against the real broker: a steady flow of small batches
costs one commit per COMMIT_INTERVAL_S, not one per batch; what was applied is committed
even when nothing follows it, and when the subscriber stops."""

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from faststream.kafka import KafkaBroker

from shared.consumers import COMMIT_INTERVAL_S, LongPollingBatchSubscriber, batch_subscriber
from tests.conftest import Stack
from tests.helpers import unique, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
async def admin(stack: Stack) -> AsyncIterator[AIOKafkaAdminClient]:
    client = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    await client.start()
    try:
        yield client
    finally:
        await client.close()


async def committed(admin: AIOKafkaAdminClient, group: str, topic: str) -> int:
    offsets = await admin.list_consumer_group_offsets(group)
    meta = offsets.get(TopicPartition(topic, 0))
    return -1 if meta is None else int(meta.offset)


async def test_small_batches_share_a_commit_and_the_last_is_committed_without_a_next(
    stack: Stack, admin: AIOKafkaAdminClient
) -> None:
    topic, group = unique("commits"), unique("commits-group")
    await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    broker = KafkaBroker(stack.kafka_bootstrap)
    subscriber = batch_subscriber(
        broker, topic, group_id=group, name="test-commits", description="test"
    )
    batches: list[list[int]] = []

    async def on_batch(records: Any) -> None:
        batches.append([r.offset for r in records])

    subscriber(on_batch)
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        async with broker:
            await broker.start()
            started = time.monotonic()
            for i in range(30):  # one record, one batch, one ack at a time
                await producer.send_and_wait(topic, b"%d" % i)
                await wait_until(lambda n=i: sum(map(len, batches)) == n + 1, timeout=10)
            # Nothing follows the last batch: its offset is committed all the same.
            await wait_until(
                lambda: _equals(committed(admin, group, topic), 30),
                timeout=5,
                message="the offset past the last record committed",
            )
            elapsed = time.monotonic() - started
            assert isinstance(subscriber, LongPollingBatchSubscriber)
            commits = subscriber.commits.commits
        assert len(batches) == 30, batches
        # At most one commit per interval (and the first at once), not one per batch.
        assert commits <= elapsed / COMMIT_INTERVAL_S + 2, (commits, elapsed)
        assert commits < len(batches), commits
    finally:
        await producer.stop()
        await admin.delete_topics([topic])


async def _equals(value: Any, expected: int) -> bool:
    return bool(await value == expected)


async def test_stopping_commits_what_was_applied(stack: Stack, admin: AIOKafkaAdminClient) -> None:
    topic, group = unique("commits"), unique("commits-group")
    await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    broker = KafkaBroker(stack.kafka_bootstrap)
    subscriber = batch_subscriber(
        broker, topic, group_id=group, name="test-commits", description="test"
    )
    applied: list[int] = []

    async def on_batch(records: Any) -> None:
        applied.extend(r.offset for r in records)

    subscriber(on_batch)
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        async with broker:
            await broker.start()
            await producer.send_and_wait(topic, b"first")
            await wait_until(lambda: applied == [0], timeout=10)
            await wait_until(lambda: _equals(committed(admin, group, topic), 1), timeout=5)
            # The second batch's commit now waits for the interval; the stop does not.
            await producer.send_and_wait(topic, b"second")
            await wait_until(lambda: applied == [0, 1], timeout=10)
        assert await committed(admin, group, topic) == 2
    finally:
        await producer.stop()
        await admin.delete_topics([topic])
