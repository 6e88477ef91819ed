"""Batch subscribers' offset commits against the real broker: a steady flow of small batches
costs one commit per COMMIT_INTERVAL_S, not one per batch; what was applied is committed
even when nothing follows it, when the subscriber stops, and before a rebalance takes its
partitions."""

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from faststream.kafka import KafkaBroker

from shared import consumers
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


async def test_a_rebalance_commits_what_was_applied_before_it_takes_the_partitions(
    stack: Stack, new_topic: NewTopicFn, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Commits that would otherwise wait a minute: only the revocation can have made them.
    monkeypatch.setattr(consumers, "COMMIT_INTERVAL_S", 60.0)
    topic, group = await new_topic(2), unique("commits-group")
    seen: dict[str, list[tuple[int, int]]] = {"first": [], "second": []}

    subscribers: dict[str, LongPollingBatchSubscriber] = {}

    def member(name: str) -> KafkaBroker:
        broker = KafkaBroker(stack.kafka_bootstrap)

        async def on_batch(records: Any) -> None:
            seen[name].extend((r.partition, r.offset) for r in records)

        subscriber = batch_subscriber(broker, topic, group_id=group, name=name, description="t")
        assert isinstance(subscriber, LongPollingBatchSubscriber)
        subscriber(on_batch)
        subscribers[name] = subscriber
        return broker

    def applied() -> list[tuple[int, int]]:
        return sorted(seen["first"] + seen["second"])

    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        async with member("first") as first:
            await first.start()
            for partition in (0, 1):
                await producer.send_and_wait(topic, b"before", partition=partition)
            await wait_until(lambda: applied() == [(0, 0), (1, 0)], timeout=30)
            # The first commit goes at once, the second waits for the (long) interval.
            async with member("second") as second:
                await second.start()

                def both_members_hold_a_partition() -> bool:
                    held = [
                        s.consumer.assignment() if s.consumer else set()
                        for s in subscribers.values()
                    ]
                    return all(len(h) == 1 for h in held)

                await wait_until(both_members_hold_a_partition, timeout=30)
                for partition in (0, 1):
                    await producer.send_and_wait(topic, b"after", partition=partition)
                # Partition order: a record redelivered by the rebalance would come before
                # the new one of its partition.
                await wait_until(lambda: {(0, 1), (1, 1)} <= set(applied()), timeout=30)
        assert applied() == [(0, 0), (0, 1), (1, 0), (1, 1)], seen
    finally:
        await producer.stop()
