"""The api's reply listener against the real broker: a record it cannot read (a key that is
not UTF-8, a value that is not a Decision) is skipped without killing it or giving up on the
request, and the replies after it still reach their requests; and its long poll (the broker
holds an empty fetch REPLY_FETCH_WAIT_MS) delays no reply."""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaProducer

from services.api.adapters.kafka import REPLY_FETCH_WAIT_MS, ReplyListener
from shared import topics
from shared.contracts import Decision
from shared.producers import durable_producer
from shared.runtime import Background
from tests.conftest import Stack
from tests.helpers import unique

pytestmark = pytest.mark.integration


@contextlib.asynccontextmanager
async def listening(
    stack: Stack,
) -> AsyncIterator[tuple[AIOKafkaProducer, Background, ReplyListener]]:
    producer = durable_producer(stack.kafka_bootstrap, unique("test-replies"))
    await producer.start()
    background = Background("test")
    listener = ReplyListener(stack.kafka_bootstrap, topics.ORDER_REPLIES.name)
    try:
        await listener.start(producer, background)
        yield producer, background, listener
    finally:
        await background.stop()
        await listener.stop()
        await producer.stop()


async def reply(
    producer: AIOKafkaProducer, listener: ReplyListener, key: str, value: bytes
) -> None:
    await producer.send_and_wait(
        topics.ORDER_REPLIES.name, value, key=key.encode(), partition=listener.partition
    )


async def test_an_unreadable_reply_is_skipped_and_the_next_one_arrives(stack: Stack) -> None:
    async with listening(stack) as (producer, background, listener):
        transaction_id = unique("txn")
        waiting = listener.expect(transaction_id)
        # The broken key goes to every partition, so it comes before the reply on whichever
        # partition the reply lands on.
        for partition in await producer.partitions_for(topics.ORDER_REPLIES.name):
            await producer.send_and_wait(
                topics.ORDER_REPLIES.name, b"{}", key=b"\xff\xfe-not-utf-8", partition=partition
            )
        await reply(producer, listener, transaction_id, b"not json")
        decision = Decision(transaction_id=transaction_id, sku="SKU-1", outcome="BACKORDERED")
        await reply(producer, listener, transaction_id, decision.model_dump_json().encode())
        assert await asyncio.wait_for(waiting, 15) == decision
        assert background.down == {}


async def test_each_reply_arrives_at_once_whatever_the_long_poll(stack: Stack) -> None:
    """Each reply is sent once the one before it has arrived, so the listener has just sent a
    new fetch, which the broker holds until a record comes: it must answer with the reply at
    once, not at the end of the wait."""
    took = []
    async with listening(stack) as (producer, _, listener):
        for _ in range(5):
            transaction_id = unique("txn")
            waiting = listener.expect(transaction_id)
            decision = Decision(transaction_id=transaction_id, sku="SKU-1", outcome="BACKORDERED")
            sent = time.monotonic()
            await reply(producer, listener, transaction_id, decision.model_dump_json().encode())
            assert await asyncio.wait_for(waiting, 15) == decision
            took.append(time.monotonic() - sent)
    assert max(took) < REPLY_FETCH_WAIT_MS / 1000 / 5, took
