"""The running inventory service, driven over Kafka as the api and fulfilment drive it."""

import json
import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from shared.contracts import (
    AllocateBackorder,
    Decision,
    DeliverStock,
    PlaceOrder,
    inventory_event,
)
from shared.crypto import CodeVault, SealedCode
from shared.topics import INVENTORY_COMMANDS, INVENTORY_EVENTS, ORDER_REPLIES, Topic
from tests.conftest import Stack
from tests.helpers import unique, wait_until

pytestmark = pytest.mark.e2e


class Tail:
    """Records of some topics from the moment it starts (no consumer group)."""

    def __init__(self, bootstrap: str, *topics: Topic) -> None:
        self._consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        self._topics = topics
        self.records: list[tuple[str, bytes | None, bytes]] = []
        self.headers: list[dict[str, bytes]] = []  # of each record, in the same order

    async def start(self) -> None:
        await self._consumer.start()
        partitions = [
            TopicPartition(topic.name, p) for topic in self._topics for p in range(topic.partitions)
        ]
        self._consumer.assign(partitions)
        await self._consumer.seek_to_end(*partitions)
        for partition in partitions:  # resolve the positions now, before anything is sent
            await self._consumer.position(partition)

    async def poll(self) -> None:
        batches = await self._consumer.getmany(timeout_ms=100)
        for records in batches.values():
            self.records.extend((r.topic, r.key, r.value or b"") for r in records)
            self.headers.extend(dict(r.headers) for r in records)

    async def stop(self) -> None:
        await self._consumer.stop()


@pytest.fixture
async def tail(urls: Stack) -> AsyncIterator[Tail]:
    tail = Tail(
        urls.kafka_bootstrap,
        ORDER_REPLIES,
        INVENTORY_EVENTS,
        Topic(INVENTORY_COMMANDS.dead_letter, 1, key="sku", doc="dead letters"),
    )
    await tail.start()
    try:
        yield tail
    finally:
        await tail.stop()


@pytest.fixture
async def producer(urls: Stack) -> AsyncIterator[AIOKafkaProducer]:
    producer = AIOKafkaProducer(
        bootstrap_servers=urls.kafka_bootstrap, acks="all", enable_idempotence=True
    )
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


async def product(inventory_admin: httpx.AsyncClient, codes: list[str]) -> str:
    sku = unique("SKU")
    response = await inventory_admin.put(
        f"/admin/products/{sku}",
        json={"name": f"Card {sku}", "currency": "USD", "price": "1.00", "pinKind": "string"},
    )
    assert response.status_code == 200, response.text
    if codes:
        response = await inventory_admin.post(
            f"/admin/products/{sku}/stock",
            json={"codes": [{"redeemCode": c, "pinCode": "0042"} for c in codes]},
        )
        assert response.status_code == 200, response.text
    return sku


def place(sku: str) -> PlaceOrder:
    return PlaceOrder(
        transaction_id=unique("tx"),
        account_id=uuid.uuid4(),
        sku=sku,
        unit_price=Decimal("1.00"),
        currency="USD",
        placed_at=datetime.now(UTC),
        reply_to=ORDER_REPLIES.name,
    )


async def seen(tail: Tail, topic: str, transaction_id: str) -> list[dict[str, Any]]:
    await tail.poll()
    found = []
    for record_topic, _, value in tail.records:
        if record_topic == topic and transaction_id.encode() in value:
            found.append(json.loads(value))
    return found


async def test_an_order_is_answered_on_its_reply_topic_and_announced(
    inventory_admin: httpx.AsyncClient, tail: Tail, producer: AIOKafkaProducer
) -> None:
    codes = [unique("E2E-CODE") for _ in range(2)]
    sku = await product(inventory_admin, codes)
    order = place(sku)

    await producer.send_and_wait(INVENTORY_COMMANDS.name, order.to_bytes(), key=sku.encode())

    async def replied() -> list[dict[str, Any]]:
        return await seen(tail, ORDER_REPLIES.name, order.transaction_id)

    [reply] = await wait_until(replied, timeout=15, message="the decision on orders.replies")
    decision = Decision.model_validate(reply)
    assert decision.outcome == "RESERVED"
    vault = CodeVault(os.environ["CODE_ENCRYPTION_KEYS"])
    assert decision.sealed_code is not None
    code = vault.open(SealedCode.from_wire(decision.sealed_code), sku, decision.stock_id)
    assert (code.redeem_code, code.pin_code) == (codes[0], "0042")

    async def announced() -> list[dict[str, Any]]:
        return await seen(tail, INVENTORY_EVENTS.name, order.transaction_id)

    [event] = await wait_until(announced, timeout=15, message="OrderReserved on inventory.events")
    reserved = inventory_event.validate_python(event)
    assert reserved.type == "OrderReserved"
    assert [k for t, k, v in tail.records if t == INVENTORY_EVENTS.name and b"OrderRes" in v][
        -1
    ] == sku.encode()

    shown = (await inventory_admin.get(f"/admin/products/{sku}")).json()["data"]
    assert shown["stock"] == {"available": 1, "sold": 1}
    metrics = (await inventory_admin.get("/metrics")).text
    assert f'inventory_codes_available{{sku="{sku}"}} 1.0' in metrics
    assert 'inventory_code_claims_total{outcome="reserved"}' in metrics


async def test_a_delivery_inventory_refuses_is_dead_lettered_without_retries(
    inventory_admin: httpx.AsyncClient, tail: Tail, producer: AIOKafkaProducer
) -> None:
    """A DeliverStock for a SKU inventory does not know is refused for its data (ValueError):
    retrying cannot change that, so it goes to the dead-letter topic on its first attempt
    instead of holding its partition through the retries' backoff, and the order behind it
    on the same partition is decided."""
    sku = await product(inventory_admin, [])
    delivery = DeliverStock(delivery_id=unique("delivery"), sku=unique("UNKNOWN"), sealed_codes=[])
    order = place(sku)
    for value in (delivery.to_bytes(), order.to_bytes()):  # one key: one partition, in order
        await producer.send_and_wait(INVENTORY_COMMANDS.name, value, key=sku.encode())

    async def dead_lettered() -> list[dict[str, bytes]]:
        await tail.poll()
        return [
            headers
            for (topic, _, value), headers in zip(tail.records, tail.headers, strict=True)
            if topic == INVENTORY_COMMANDS.dead_letter and delivery.delivery_id.encode() in value
        ]

    [headers] = await wait_until(dead_lettered, timeout=15, message="the delivery dead-lettered")
    assert (headers["x-error"], headers["x-attempts"]) == (b"ValueError", b"1")
    await wait_until(
        lambda: seen(tail, ORDER_REPLIES.name, order.transaction_id),
        timeout=15,
        message="the order behind it decided",
    )


async def test_a_poison_command_is_dead_lettered_and_the_partition_moves_on(
    inventory_admin: httpx.AsyncClient, tail: Tail, producer: AIOKafkaProducer
) -> None:
    sku = await product(inventory_admin, [])
    marker = unique("poison")
    poison = json.dumps({"type": "PlaceOrder", "transactionId": marker, "sku": sku}).encode()
    waiting, after = place(sku), place(sku)

    for value in (waiting.to_bytes(), poison, after.to_bytes()):
        await producer.send_and_wait(INVENTORY_COMMANDS.name, value, key=sku.encode())

    async def dead_lettered() -> list[dict[str, Any]]:
        return await seen(tail, INVENTORY_COMMANDS.dead_letter, marker)

    await wait_until(dead_lettered, timeout=15, message="the poison on the dead-letter topic")

    async def both_answered() -> bool:
        return bool(
            await seen(tail, ORDER_REPLIES.name, waiting.transaction_id)
            and await seen(tail, ORDER_REPLIES.name, after.transaction_id)
        )

    await wait_until(both_answered, timeout=15, message="the orders around the poison decided")

    await inventory_admin.post(f"/admin/products/{sku}/stock", json={"generate": 1})
    allocate = AllocateBackorder(transaction_id=waiting.transaction_id, sku=sku)
    await producer.send_and_wait(INVENTORY_COMMANDS.name, allocate.to_bytes(), key=sku.encode())

    async def allocated() -> bool:
        events = await seen(tail, INVENTORY_EVENTS.name, waiting.transaction_id)
        return any(e["type"] == "BackorderAllocated" for e in events)

    await wait_until(allocated, timeout=15, message="BackorderAllocated for the oldest backorder")
