"""Batch subscribers against the real broker. Offset commits: a steady flow of small batches
costs one commit per COMMIT_INTERVAL_S, not one per batch; what was applied is committed
even when nothing follows it, when the subscriber stops, and before a rebalance takes its
partitions. A gathering subscriber (off the instant path) takes a steady flow in one batch
per GATHER_INTERVAL_S, every record once and in order, and a lone record at once; a backlog
on one partition drains without waiting on the idle ones."""

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
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


def member(
    stack: Stack,
    topic: str,
    group: str,
    record: Callable[[Sequence[Any]], None],
    *,
    gather: bool = False,
) -> tuple[KafkaBroker, LongPollingBatchSubscriber]:
    """A broker (not started) with a batch subscriber of `topic` in `group` that hands each
    batch's records to `record`."""
    broker = KafkaBroker(stack.kafka_bootstrap)
    subscriber = batch_subscriber(
        broker, topic, group_id=group, name=group, description="t", gather=gather
    )
    assert isinstance(subscriber, LongPollingBatchSubscriber)

    async def on_batch(records: Any) -> None:
        record(records)

    subscriber(on_batch)
    return broker, subscriber


@asynccontextmanager
async def subscribed(
    stack: Stack, new_topic: NewTopicFn, *, gather: bool = False
) -> AsyncIterator[Subscribed]:
    """A started batch subscriber of a new one-partition topic, recording each batch's
    offsets, and a producer to it. The subscriber stops when the block ends."""
    topic, group = await new_topic(1), unique("commits-group")
    batches: list[list[int]] = []
    broker, subscriber = member(
        stack,
        topic,
        group,
        lambda records: batches.append([r.offset for r in records]),
        gather=gather,
    )
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
    seen = Subscribed(topic, group, subscriber, producer, batches)
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
    applied_by: list[tuple[int, int]] = []

    def record(records: Sequence[Any]) -> None:
        applied_by.extend((r.partition, r.offset) for r in records)

    (first, first_subscriber), (second, second_subscriber) = (
        member(stack, topic, group, record) for _ in range(2)
    )

    def applied() -> list[tuple[int, int]]:
        return sorted(applied_by)

    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        async with first:
            await first.start()
            await producer.send_and_wait(topic, b"before", partition=0)
            await wait_until(lambda: first_subscriber.commits.commits == 1, timeout=30)
            # Applied after that first commit: its own commit waits for the (long) interval.
            await producer.send_and_wait(topic, b"before", partition=1)
            await wait_until(lambda: applied() == [(0, 0), (1, 0)], timeout=30)
            async with second:
                await second.start()

                def both_members_hold_a_partition() -> bool:
                    held = [
                        s.consumer.assignment() if s.consumer else set()
                        for s in (first_subscriber, second_subscriber)
                    ]
                    return all(len(h) == 1 for h in held)

                await wait_until(both_members_hold_a_partition, timeout=30)
                for partition in (0, 1):
                    await producer.send_and_wait(topic, b"after", partition=partition)
                # Partition order: a record redelivered by the rebalance would come before
                # the new one of its partition.
                await wait_until(lambda: {(0, 1), (1, 1)} <= set(applied()), timeout=30)
        assert applied() == [(0, 0), (0, 1), (1, 0), (1, 1)], applied_by
    finally:
        await producer.stop()


async def test_a_gathering_subscriber_takes_a_flow_in_few_batches_and_a_lone_record_at_once(
    stack: Stack, new_topic: NewTopicFn
) -> None:
    async with subscribed(stack, new_topic, gather=True) as seen:
        await seen.producer.send_and_wait(seen.topic, b"first")
        await wait_until(lambda: seen.applied == [0], timeout=30, message="assigned and polling")
        # A steady flow, about 400 records a second for 1.5 s: each fetch would otherwise
        # bring the record or two sent since the last one.
        started, sent = time.monotonic(), 1
        while time.monotonic() - started < 1.5:
            await seen.producer.send(seen.topic, b"%d" % sent)
            sent += 1
            await asyncio.sleep(0.0025)  # the generator's pace, not a synchronisation
        await seen.producer.flush()
        await wait_until(lambda: len(seen.applied) == sent, timeout=30, message="all applied")
        elapsed = time.monotonic() - started
        flow = len(seen.batches) - 1
        assert seen.applied == list(range(sent)), "every record once, in order"
        assert flow <= elapsed / consumers.GATHER_INTERVAL_S + 2, (flow, elapsed, sent)

        # Quiet now (long-polling): a lone record is taken at once, not after the fetch wait.
        await seen.producer.send_and_wait(seen.topic, b"lone")
        sent_at = time.monotonic()
        await wait_until(lambda: len(seen.applied) == sent + 1, timeout=30)
        assert time.monotonic() - sent_at < 0.8 * consumers.FETCH_WAIT_MS / 1000


async def test_a_backlog_on_one_partition_drains_without_waiting_on_the_idle_ones(
    stack: Stack, new_topic: NewTopicFn
) -> None:
    # aiokafka sends one fetch per broker at a time, and leaves out a partition whose records
    # are still buffered: with the others idle, the broker holds that fetch for the whole
    # fetch wait, and the busy partition's next fetch waits behind it.
    topic, group = await new_topic(3), unique("backlog-group")
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for i in range(4000):  # about 4 MiB: several fetches' worth of one partition
            await producer.send(topic, b"%d:" % i + b"x" * 1000, partition=0)
        await producer.flush()
    finally:
        await producer.stop()
    applied: list[int] = []
    broker = KafkaBroker(stack.kafka_bootstrap)
    subscriber = batch_subscriber(
        broker, topic, group_id=group, name=group, description="t", gather=True
    )

    async def on_batch(records: Any) -> None:
        await asyncio.sleep(0.03)  # a batch's transaction: the rest stays buffered meanwhile
        applied.extend(r.offset for r in records)

    subscriber(on_batch)
    async with broker:
        started = time.monotonic()
        await broker.start()
        await wait_until(lambda: len(applied) == 4000, timeout=60, message="the backlog drained")
        elapsed = time.monotonic() - started
    assert applied == list(range(4000))
    # 15.5 s with a 5 s fetch wait (a stall per MiB); under 2 s here with 500 ms.
    assert elapsed < 6.0, elapsed
