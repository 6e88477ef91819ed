"""An idle consumer, of either kind of subscriber, holds one fetch of all its partitions
IDLE_FETCH_WAIT_MS: it asks the broker every 5 s instead of twice a second, and a record on
any of its partitions still answers that fetch at once. (A backlog on one partition still
drains without waiting on a long fetch of the others:
tests/integration/test_batch_offset_commits.py.)"""

import itertools
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.protocol.fetch import FetchRequest
from faststream.kafka import KafkaBroker
from pydantic import BaseModel

from shared import consumers
from shared.topics import Topic
from tests.conftest import Stack
from tests.helpers import unique, wait_until
from tests.integration.conftest import NewTopicFn

pytestmark = pytest.mark.integration


class Note(BaseModel):
    text: str


def fetches_sent(consumer: AIOKafkaConsumer) -> list[float]:
    """When the consumer sends each of its fetches from now on (its client's `send`, which
    its fetcher calls)."""
    sent: list[float] = []
    client: Any = consumer._client
    send = client.send

    async def counting_send(node_id: int, request: Any, **kwargs: Any) -> Any:
        if isinstance(request, FetchRequest):
            sent.append(time.monotonic())
        return await send(node_id, request, **kwargs)

    client.send = counting_send
    return sent


@asynccontextmanager
async def idle_subscriber(
    stack: Stack, topic: str, kind: str, seen: list[str], producer: AIOKafkaProducer
) -> AsyncIterator[Any]:
    """A started subscriber of `topic` (the services' `subscribe` or `batch_subscriber`)
    that records each message's text in `seen`; yields it."""
    broker = KafkaBroker(stack.kafka_bootstrap)
    group = unique("idle-group")
    subscriber: Any
    if kind == "batch":
        subscriber = consumers.batch_subscriber(
            broker, topic, group_id=group, name=group, description="t", gather=True
        )

        async def on_batch(records: Any) -> None:
            seen.extend(Note.model_validate_json(r.value).text for r in records)

        subscriber(on_batch)
    else:

        async def handle(note: Note) -> None:
            seen.append(note.text)

        consumers.subscribe(
            broker,
            Topic(topic, 3, key="k", doc="t"),
            group_id=group,
            name=group,
            parse=Note.model_validate_json,
            handle=handle,
            producer_of=lambda: producer,
            max_retries=1,
        )
        [subscriber] = broker.subscribers
        assert isinstance(subscriber, consumers.LongPollingSubscriber)
    async with broker:
        await broker.start()
        yield subscriber


@pytest.mark.parametrize("kind", ["single", "batch"])
async def test_an_idle_consumer_asks_every_idle_fetch_wait_and_a_record_still_comes_at_once(
    stack: Stack, new_topic: NewTopicFn, kind: str
) -> None:
    topic = await new_topic(3)
    seen: list[str] = []
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
    await producer.start()

    def send(text: str, partition: int) -> Any:
        value = Note(text=text).model_dump_json().encode()
        return producer.send_and_wait(topic, value, partition=partition)

    try:
        async with idle_subscriber(stack, topic, kind, seen, producer) as subscriber:
            sent = fetches_sent(subscriber.consumer)
            await send("first", 0)
            await wait_until(lambda: seen == ["first"], timeout=30, message="assigned, polling")
            # Idle now: after at most one short fetch (one planned before the subscriber
            # waited again), every fetch asks for all three partitions and is held
            # IDLE_FETCH_WAIT_MS (it was 500 ms for all of them).
            idle_from = len(sent)
            await wait_until(lambda: len(sent) >= idle_from + 3, timeout=30, message="3 fetches")
            idle = sent[idle_from : idle_from + 3]
            held = [b - a for a, b in itertools.pairwise(idle)]
            assert max(held) >= 0.8 * consumers.IDLE_FETCH_WAIT_MS / 1000, held

            # A record on another partition answers the fetch being held.
            await send("lone", 2)
            sent_at = time.monotonic()
            await wait_until(lambda: seen == ["first", "lone"], timeout=30)
            assert time.monotonic() - sent_at < 0.8 * consumers.FETCH_WAIT_MS / 1000
    finally:
        await producer.stop()
