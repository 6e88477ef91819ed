"""Orders that arrive together are accepted in one statement or transaction (group commit):
money, dup checks and codes stay exact whatever a batch mixes; every event on a topic names
its type in the `x-type` header, so consumers pass over types they do not use."""

import asyncio
from decimal import Decimal

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from shared.contracts import new_transaction_id
from shared.topics import INVENTORY_EVENTS, ORDER_EVENTS
from tests.conftest import Stack
from tests.e2e.conftest import NewClient, NewProduct, debits_of
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e


async def test_concurrent_orders_of_several_accounts_are_each_charged_once(
    new_client: NewClient, new_product: NewProduct, stack: Stack
) -> None:
    sku = await new_product(price="2.50", stock=30)
    clients = [await new_client(balance="100.00") for _ in range(3)]

    responses = await asyncio.gather(*(c.order(sku) for c in clients for _ in range(10)))

    assert [r.status_code for r in responses] == [200] * 30, [r.text for r in responses]
    assert {r.json()["data"]["status"] for r in responses} == {"COMPLETED"}
    for client in clients:
        assert await client.balance() == Decimal("75.00")
    assert await debits_of(stack, [r.json()["data"]["transactionId"] for r in responses]) == 30


async def test_a_balance_spread_thin_pays_exactly_the_orders_it_covers(
    new_client: NewClient, new_product: NewProduct
) -> None:
    # 3.00 over 16 wallet slots: no slot holds 1.00, so every debit takes the path that pays
    # from the sum of the slots.
    sku = await new_product(price="1.00", stock=10)
    client = await new_client(balance="3.00")

    responses = await asyncio.gather(*(client.order(sku) for _ in range(5)))

    paid = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 400]
    assert len(paid) == 3, [r.text for r in responses]
    assert [r.json()["error"] for r in refused] == ["INSUFFICIENT_BALANCE"] * 2
    assert await client.balance() == Decimal("0.00")


async def test_every_event_carries_its_type_in_a_header(
    new_client: NewClient, new_product: NewProduct, stack: Stack
) -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.kafka_bootstrap, group_id=None)
    await consumer.start()
    try:
        partitions = [
            TopicPartition(topic.name, p)
            for topic in (INVENTORY_EVENTS, ORDER_EVENTS)
            for p in range(topic.partitions)
        ]
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        for tp in partitions:
            await consumer.position(tp)
        sku = await new_product(price="1.00", stock=1)
        client = await new_client()
        response = await client.order(sku, clientOrderNumber=new_transaction_id())
        assert response.json()["data"]["status"] == "COMPLETED", response.text
        transaction_id = response.json()["data"]["transactionId"]
        seen: dict[tuple[str, str], str | None] = {}

        async def all_three_seen() -> bool:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for record in records:
                    if transaction_id.encode() not in (record.value or b""):
                        continue
                    body = record.value or b""
                    kind = next(
                        (
                            k
                            for k in ("OrderReserved", "OrderAccepted", "OrderCompleted")
                            if f'"type":"{k}"'.encode() in body
                        ),
                        "?",
                    )
                    headers = dict(record.headers or ())
                    seen[record.topic, kind] = (
                        headers["x-type"].decode() if "x-type" in headers else None
                    )
            return len(seen) >= 3

        await wait_until(all_three_seen, timeout=20, message="the order's three events")
    finally:
        await consumer.stop()
    assert seen == {
        (INVENTORY_EVENTS.name, "OrderReserved"): "OrderReserved",
        (ORDER_EVENTS.name, "OrderAccepted"): "OrderAccepted",
        (ORDER_EVENTS.name, "OrderCompleted"): "OrderCompleted",
    }


async def test_a_nul_in_one_order_is_refused_without_harming_the_orders_beside_it(
    new_client: NewClient, new_product: NewProduct
) -> None:
    sku = await new_product(price="1.00", stock=5)
    client = await new_client()

    bad, *good = await asyncio.gather(
        client.order(sku + "\x00"), *(client.order(sku) for _ in range(5))
    )

    assert bad.status_code == 400, bad.text
    assert bad.json()["error"] == "INVALID_REQUEST"
    assert [d["field"] for d in bad.json()["details"]] == ["sku"]
    assert [r.json()["data"]["status"] for r in good] == ["COMPLETED"] * 5
