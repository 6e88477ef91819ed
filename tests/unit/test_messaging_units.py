"""Kafka plumbing without a broker: the x-type header, the long-polling batch subscriber and
the batch path shared by every batch consumer."""

import asyncio
import functools
import time
import uuid
from collections.abc import Sequence
from decimal import Decimal
from types import SimpleNamespace
from typing import Any, cast

from aiokafka import AIOKafkaProducer, ConsumerRecord, TopicPartition
from faststream.kafka import KafkaBroker

from shared.consumers import (
    BATCH_IDLE_WAIT_MS,
    BATCH_MAX_RECORDS,
    GATHER_INTERVAL_S,
    SUBSCRIBER_ACK_POLICY,
    LongPollingBatchSubscriber,
    ThrottledCommits,
    batch_subscriber,
    consume_batch,
    consume_resiliently,
)
from shared.contracts import Decision, PlaceOrder, utcnow
from shared.outbox import header_type, type_header
from shared.topics import INVENTORY_EVENTS
from tests.helpers import wait_until


def record(offset: int, partition: int = 0, headers: Any = ()) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        "inventory.events", partition, offset, 0, 0, b"SKU-1", b"{}", None, 5, 2, headers
    )


class FakeConsumer:
    """`getmany` as aiokafka's: records by partition, {} when the wait ended with none; the
    partitions of `batches` are its assignment, which it pauses and resumes as aiokafka's."""

    def __init__(self, batches: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> None:
        self.batches = batches
        self.calls: list[dict[str, Any]] = []
        self.paused_partitions: set[TopicPartition] = set()
        self.resumed_at: list[float] = []

    async def getmany(self, **kwargs: Any) -> dict[TopicPartition, list[Any]]:
        self.calls.append(kwargs)
        return self.batches

    def assignment(self) -> set[TopicPartition]:
        return set(self.batches)

    def pause(self, *partitions: TopicPartition) -> None:
        self.paused_partitions.update(partitions)

    def paused(self) -> set[TopicPartition]:
        return set(self.paused_partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        if partitions:
            self.resumed_at.append(time.monotonic())
        self.paused_partitions.difference_update(partitions)


def long_polling_subscriber(*, gather: bool = False) -> Any:
    broker = KafkaBroker("localhost:9092")  # constructing it does not connect
    return batch_subscriber(
        broker,
        "inventory.events",
        group_id="api-test",
        name="api.inventory-events",
        description="test",
        gather=gather,
    )


def test_a_message_with_a_type_carries_it_as_the_x_type_header() -> None:
    command = PlaceOrder(
        transaction_id="01J0000000000000000000000A",
        account_id=uuid.uuid4(),
        sku="SKU-1",
        unit_price=Decimal("2.50"),
        currency="USD",
        placed_at=utcnow(),
    )
    decision = Decision(
        transaction_id="01J0000000000000000000000A", sku="SKU-1", outcome="BACKORDERED"
    )

    assert type_header(command) == {"x-type": "PlaceOrder"}
    assert type_header(decision) == {}


def test_header_type_reads_the_x_type_header_of_a_record() -> None:
    typed = record(0, headers=[("traceparent", b"00-ab"), ("x-type", b"OrderReserved")])

    assert header_type(typed) == "OrderReserved"
    assert header_type(SimpleNamespace(headers=(("x-type", bytearray(b"OrderReleased")),))) == (
        "OrderReleased"
    )
    assert header_type(record(1, headers=[("traceparent", b"00-ab")])) is None
    assert header_type(record(2, headers=[])) is None
    assert header_type(SimpleNamespace(headers=None)) is None
    assert header_type(object()) is None


def test_batch_subscriber_is_the_long_polling_one_with_the_explicit_ack_policy() -> None:
    subscriber = long_polling_subscriber()

    assert type(subscriber) is LongPollingBatchSubscriber
    assert subscriber.ack_policy is SUBSCRIBER_ACK_POLICY
    assert subscriber.max_records == BATCH_MAX_RECORDS


async def test_an_idle_poll_returns_nothing_without_sleeping_after_the_wait() -> None:
    subscriber = long_polling_subscriber()
    consumer = FakeConsumer({})
    loop = asyncio.get_running_loop()

    started = loop.time()
    records = await asyncio.wait_for(subscriber.get_msg(consumer), 5.0)
    elapsed = loop.time() - started

    assert records == ()
    # FastStream's own get_msg sleeps batch_timeout_ms (here BATCH_IDLE_WAIT_MS) after it.
    assert elapsed < BATCH_IDLE_WAIT_MS / 1000 / 2, elapsed
    assert consumer.calls == [{"timeout_ms": BATCH_IDLE_WAIT_MS, "max_records": BATCH_MAX_RECORDS}]


async def test_a_poll_hands_over_the_records_of_every_partition_in_partition_order() -> None:
    subscriber = long_polling_subscriber(gather=True)
    first, second, third = record(7, 0), record(8, 0), record(3, 1)
    consumer = FakeConsumer(
        {
            TopicPartition("inventory.events", 0): [first, second],
            TopicPartition("inventory.events", 1): [third],
        }
    )

    records = await asyncio.wait_for(subscriber.get_msg(consumer), 5.0)

    assert records == (first, second, third)
    assert all(a is b for a, b in zip(records, (first, second, third), strict=True))


async def test_a_gathering_poll_pauses_its_partitions_until_the_interval_has_passed() -> None:
    subscriber = long_polling_subscriber(gather=True)
    partitions = {TopicPartition("inventory.events", p): [record(p, p)] for p in (0, 1)}
    consumer = FakeConsumer(partitions)

    polled_at = time.monotonic()
    await subscriber.get_msg(consumer)
    assert consumer.paused() == set(partitions)  # no fetch until the next poll
    await subscriber.get_msg(consumer)
    [resumed] = consumer.resumed_at
    assert resumed - polled_at >= GATHER_INTERVAL_S


async def test_a_full_poll_or_one_on_the_instant_path_does_not_pause() -> None:
    full = FakeConsumer(
        {TopicPartition("inventory.events", 0): [record(i, 0) for i in range(BATCH_MAX_RECORDS)]}
    )
    await long_polling_subscriber(gather=True).get_msg(full)
    one = FakeConsumer({TopicPartition("inventory.commands", 0): [record(1, 0)]})
    await long_polling_subscriber().get_msg(one)
    assert full.paused() == set()
    assert one.paused() == set()


class Sent:
    """The dead-letter side of a producer: what `consume_resiliently` sends and waits for."""

    def __init__(self) -> None:
        self.dead: list[bytes] = []

    async def send_and_wait(self, topic: str, value: bytes, **_: Any) -> None:
        self.dead.append(value)


async def test_a_batch_is_applied_at_once_and_a_poison_message_alone() -> None:
    applied: list[list[str]] = []

    async def apply(messages: Sequence[Decision]) -> None:
        if any(m.transaction_id == "poison" for m in messages):
            raise RuntimeError("a bug this message triggers")
        applied.append([m.transaction_id for m in messages])

    def raw(transaction_id: str) -> SimpleNamespace:
        decision = Decision(transaction_id=transaction_id, sku="SKU-1", outcome="BACKORDERED")
        return SimpleNamespace(key=b"SKU-1", value=decision.to_bytes())

    producer = Sent()
    consume = functools.partial(
        consume_batch,
        parse=Decision.model_validate_json,
        apply=apply,
        producer=cast(AIOKafkaProducer, producer),
        topic=INVENTORY_EVENTS,
        consumer="test",
        max_retries=0,
        infrastructure_pause_s=0,
    )

    unreadable = SimpleNamespace(key=None, value=b"{not json")
    await consume([raw("a"), unreadable, raw("b")])
    assert (applied, producer.dead) == ([["a", "b"]], [b"{not json"])

    applied.clear()
    await consume([raw("c"), raw("poison"), raw("d")])
    assert applied == [["c"], ["d"]]
    assert len(producer.dead) == 2


async def test_a_message_whose_data_is_refused_is_dead_lettered_without_retries() -> None:
    """Refused data (a ValueError) is refused again: it is dead-lettered on its first
    attempt, without the backoff that would hold its partition; another error is retried."""
    attempts: dict[str, int] = {}

    async def handle(message: Decision) -> None:
        attempts[message.transaction_id] = attempts.get(message.transaction_id, 0) + 1
        if message.transaction_id == "refused":
            raise ValueError("a delivery for unknown SKU")
        raise RuntimeError("a bug")

    producer = Sent()
    for transaction_id in ("refused", "failing"):
        await consume_resiliently(
            raw=Decision(transaction_id=transaction_id, sku="S", outcome="BACKORDERED").to_bytes(),
            parse=Decision.model_validate_json,
            handle=handle,
            producer=cast(AIOKafkaProducer, producer),
            topic=INVENTORY_EVENTS.name,
            dead_letter_topic=INVENTORY_EVENTS.dead_letter,
            key=b"S",
            consumer="test",
            max_retries=3,
            base_backoff_s=0,
        )

    assert attempts == {"refused": 1, "failing": 4}
    assert len(producer.dead) == 2


class CommittingConsumer:
    """What ThrottledCommits uses of aiokafka's consumer: assignment, commit, seek."""

    def __init__(self, assigned: set[TopicPartition]) -> None:
        self.assigned = assigned
        self.committed: list[dict[TopicPartition, int]] = []
        self.seeks: list[tuple[TopicPartition, int]] = []

    def assignment(self) -> set[TopicPartition]:
        return self.assigned

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.committed.append(dict(offsets))

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self.seeks.append((partition, offset))


async def test_a_failed_batch_and_a_revoked_partition_are_not_committed() -> None:
    p0, p1 = TopicPartition("inventory.events", 0), TopicPartition("inventory.events", 1)
    consumer = CommittingConsumer({p0, p1})
    commits = ThrottledCommits(cast(Any, consumer), "test", interval_s=3600)

    commits.taken([record(4, 0), record(9, 1)])
    await commits.commit()  # applied: the first commit goes at once
    await wait_until(lambda: consumer.committed, timeout=5)
    assert consumer.committed == [{p0: 5, p1: 10}]

    commits.taken([record(5, 0)])
    commits.seek(p0, 5)  # the batch failed (nack): it comes again, it is not applied
    await commits.commit()
    commits.taken([record(10, 1)])
    await commits.commit()
    consumer.assigned = {p0}  # partition 1 moved to another consumer meanwhile
    await commits.close()  # the stop does not wait for the interval

    assert consumer.seeks == [(p0, 5)]
    assert consumer.committed == [{p0: 5, p1: 10}]  # nothing new of p0, p1 no longer ours
