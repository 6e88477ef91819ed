"""Batch subscribers' offset commits against the real broker: a steady flow of small batches
costs one commit per COMMIT_INTERVAL_S, not one per batch; what was applied is committed
even when nothing follows it, and when the subscriber stops."""

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from faststream.kafka import KafkaBroker

from shared.consumers import COMMIT_INTERVAL_S, LongPollingBatchSubscriber, batch_subscriber
from tests.conftest import Stack
from tests.helpers import unique, wait_until
from tests.integration.conftest import NewTopicFn

pytestmark = pytest.mark.integration


@dataclass
class Subscribed:
    topic: str
    group: str
    subscriber: LongPollingBatchSubscriber
    producer: AIOKafkaProducer
    batches: list[list[int]] = field(default_factory=list)

    @property
    def applied(self) -> list[int]:
        return [offset for batch in self.batches for offset in batch]


@asynccontextmanager
async def subscribed(stack: Stack, new_topic: NewTopicFn) -> AsyncIterator[Subscribed]:
    """A started batch subscriber of a new one-partition topic, recording each batch's
    offsets, and a producer to it. The subscriber stops when the block ends."""
    topic, group = await new_topic(1), unique("commits-group")
    broker = KafkaBroker(stack.kafka_bootstrap)
    subscriber = batch_subscriber(
        broker, topic, group_id=group, name="test-commits", description="test"
    )
    assert isinstance(subscriber, LongPollingBatchSubscriber)
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
    seen = Subscribed(topic, group, subscriber, producer)

    async def on_batch(records: Any) -> None:
        seen.batches.append([r.offset for r in records])

    subscriber(on_batch)
    await producer.start()
    try:
        async with broker:
            await broker.start()
            yield seen
    finally:
        await producer.stop()


async def committed(admin: AIOKafkaAdminClient, seen: Subscribed) -> int:
    offsets = await admin.list_consumer_group_offsets(seen.group)
    meta = offsets.get(TopicPartition(seen.topic, 0))
    return -1 if meta is None else int(meta.offset)


async def test_small_batches_share_a_commit_and_the_last_is_committed_without_a_next(
    stack: Stack, admin: AIOKafkaAdminClient, new_topic: NewTopicFn
) -> None:
    async with subscribed(stack, new_topic) as seen:
        started = time.monotonic()
        for i in range(30):  # one record, one batch, one ack at a time
            await seen.producer.send_and_wait(seen.topic, b"%d" % i)
            await wait_until(lambda n=i: len(seen.applied) == n + 1, timeout=10)

        async def all_committed() -> bool:
            return await committed(admin, seen) == 30

        # Nothing follows the last batch: its offset is committed all the same.
        await wait_until(all_committed, timeout=5, message="the offset past the last record")
        elapsed = time.monotonic() - started
        commits = seen.subscriber.commits.commits
    assert len(seen.batches) == 30, seen.batches
    # At most one commit per interval (and the first at once), not one per batch.
    assert commits <= elapsed / COMMIT_INTERVAL_S + 2, (commits, elapsed)
    assert commits < len(seen.batches), commits


async def test_stopping_commits_what_was_applied(
    stack: Stack, admin: AIOKafkaAdminClient, new_topic: NewTopicFn
) -> None:
    async with subscribed(stack, new_topic) as seen:
        await seen.producer.send_and_wait(seen.topic, b"first")
        await wait_until(lambda: seen.applied == [0], timeout=10)

        async def first_committed() -> bool:
            return await committed(admin, seen) == 1

        await wait_until(first_committed, timeout=5)
        # The second batch's commit now waits for the interval; the stop does not.
        await seen.producer.send_and_wait(seen.topic, b"second")
        await wait_until(lambda: seen.applied == [0, 1], timeout=10)
    assert await committed(admin, seen) == 2
