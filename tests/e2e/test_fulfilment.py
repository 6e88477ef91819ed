"""Backorders: completed as stock arrives (oldest first), cancelled and refunded when late or
withdrawn, followed by downstream consumers on the public order-events topic."""

import asyncio
import json
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from shared import topics
from shared.contracts import BackorderCancelled, Message
from tests.conftest import Stack
from tests.e2e.conftest import Client, NewClient, NewProduct, admin_client
from tests.helpers import unique, wait_until

pytestmark = pytest.mark.e2e
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "order_events_consumer.py"


async def add_stock(inventory_admin: httpx.AsyncClient, sku: str, n: int) -> None:
    response = await inventory_admin.post(f"/admin/products/{sku}/stock", json={"generate": n})
    assert response.status_code == 200, response.text
    assert response.json()["data"]["added"] == n


async def statuses(client: Client, ids: list[str]) -> list[str]:
    return [(await client.get_order(t))["status"] for t in ids]


async def place(client: Client, sku: str, n: int) -> list[str]:
    """n orders placed one after the other, so their order of arrival is known."""
    ids = []
    for _ in range(n):
        response = await client.order(sku)
        assert response.status_code == 200, response.text
        assert response.json()["data"]["status"] == "PROCESSING"
        ids.append(response.json()["data"]["transactionId"])
    return ids


async def test_backorder_completes_within_a_second_of_stock_arriving(
    new_client: NewClient,
    new_product: NewProduct,
    inventory_admin: httpx.AsyncClient,
    stack: Stack,
) -> None:
    sku = await new_product(price="3.00", stock=0)
    client = await new_client()
    [transaction_id] = await place(client, sku, 1)
    # The backorder waits in fulfilment first: what this measures is stock reaching a waiting
    # backorder. (Stock announced before fulfilment has heard of the backorder reaches it on
    # the stalled-backorder retry, FULFILMENT_RETRY_AFTER_S later.)
    async with admin_client(stack.fulfilment_url) as fulfilment:

        async def waiting() -> bool:
            seen = await fulfilment.get(f"/admin/backorders/{transaction_id}")
            return seen.status_code == 200 and seen.json()["data"]["state"] == "WAITING"

        await wait_until(waiting, timeout=10, message="fulfilment holds the backorder")

    await add_stock(inventory_admin, sku, 1)
    arrived = asyncio.get_running_loop().time()

    async def completed() -> bool:
        return (await client.get_order(transaction_id))["status"] == "COMPLETED"

    await wait_until(completed, timeout=5, interval=0.02)
    assert asyncio.get_running_loop().time() - arrived < 1.0
    [code] = await client.codes(transaction_id)
    assert code["status"] == "COMPLETED"
    assert code["redeemCode"]


async def test_stock_goes_to_the_oldest_backorders_first(
    new_client: NewClient, new_product: NewProduct, inventory_admin: httpx.AsyncClient
) -> None:
    sku = await new_product(price="1.00", stock=0)
    client = await new_client()
    ids = await place(client, sku, 10)

    await add_stock(inventory_admin, sku, 4)

    async def four_oldest_completed() -> bool:
        return await statuses(client, ids) == ["COMPLETED"] * 4 + ["PROCESSING"] * 6

    await wait_until(four_oldest_completed, timeout=10, message="the 4 oldest complete")

    # A new order arriving now waits behind the 6 still waiting, though it is instant.
    [late] = await place(client, sku, 1)
    await add_stock(inventory_admin, sku, 6)

    async def the_rest_completed() -> bool:
        return await statuses(client, ids) == ["COMPLETED"] * 10

    await wait_until(the_rest_completed, timeout=10, message="the other 6 complete")
    assert (await client.get_order(late))["status"] == "PROCESSING"
    stock_ids = [(await client.codes(t))[0]["stockId"] for t in ids]
    assert stock_ids == sorted(stock_ids), "codes were not handed out oldest order first"


async def test_late_backorder_is_cancelled_and_refunded_once(
    new_client: NewClient, new_product: NewProduct, stack: Stack
) -> None:
    sku = await new_product(price="7.50", stock=0, backorderDeadlineSeconds=1)
    client = await new_client(balance="50.00")
    [transaction_id] = await place(client, sku, 1)
    assert await client.balance() == Decimal("42.50")

    async def cancelled() -> bool:
        return (await client.get_order(transaction_id))["status"] == "CANCELLED"

    await wait_until(cancelled, timeout=15, message="late backorder cancelled")
    assert await client.balance() == Decimal("50.00")
    order = await client.get_order(transaction_id)
    assert order["products"][0]["status"] == "CANCELLED"
    assert (await client.codes(transaction_id))[0]["status"] == "CANCELLED"

    # The cancellation delivered twice more changes nothing.
    event = BackorderCancelled(
        transaction_id=transaction_id,
        account_id=client.account_id,
        sku=sku,
        reason="DEADLINE_PASSED",
    )
    await redeliver_to_api(stack, sku, [event, event])
    refunds = await refunds_of(stack, [transaction_id])
    assert refunds == 1
    assert await client.balance() == Decimal("50.00")
    assert (await client.get_order(transaction_id))["status"] == "CANCELLED"


async def redeliver_to_api(stack: Stack, sku: str, events: Sequence[Message]) -> None:
    """Publishes `events` on inventory.events again (keyed by `sku`, as inventory does) and
    waits until the api has consumed them."""
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap)
    await producer.start()
    try:
        sent = [
            await producer.send_and_wait(
                topics.INVENTORY_EVENTS.name, event.to_bytes(), key=sku.encode()
            )
            for event in events
        ]
    finally:
        await producer.stop()
    partition = TopicPartition(topics.INVENTORY_EVENTS.name, sent[-1].partition)

    async def api_consumed_them() -> bool:
        return await _committed(stack, "api", partition) > sent[-1].offset

    await wait_until(api_consumed_them, timeout=15, message="api consumed the redeliveries")


async def refunds_of(stack: Stack, transaction_ids: Sequence[str]) -> int:
    """How many REFUND ledger rows these orders have, from the api's database."""
    api_db = await asyncpg.connect(stack.api_db_url)
    try:
        count: int = await api_db.fetchval(
            "SELECT count(*) FROM ledger WHERE transaction_id = ANY($1) AND kind = 'REFUND'",
            list(transaction_ids),
        )
    finally:
        await api_db.close()
    return count


async def _committed(stack: Stack, group: str, partition: TopicPartition) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group, partitions=[partition])
    finally:
        await admin.close()
    return offsets[partition].offset if partition in offsets else -1


async def _balance_is(client: Client, amount: str) -> bool:
    return await client.balance() == Decimal(amount)


async def test_withdrawing_a_product_cancels_and_refunds_its_waiting_orders(
    new_client: NewClient, new_product: NewProduct, inventory_admin: httpx.AsyncClient
) -> None:
    sku = await new_product(price="4.00", stock=0)
    client = await new_client(balance="20.00")
    ids = await place(client, sku, 3)
    assert await client.balance() == Decimal("8.00")

    withdrawn = await inventory_admin.post(f"/admin/products/{sku}/withdraw")
    assert withdrawn.status_code == 200, withdrawn.text

    async def all_cancelled() -> bool:
        return await statuses(client, ids) == ["CANCELLED"] * 3

    await wait_until(all_cancelled, timeout=15, message="waiting orders of a withdrawn product")
    await wait_until(lambda: _balance_is(client, "20.00"), timeout=5)


async def test_kill_9_of_fulfilment_while_allocating(
    new_client: NewClient,
    new_product: NewProduct,
    inventory_admin: httpx.AsyncClient,
    stack: Stack,
    stackctl: Any,
) -> None:
    sku = await new_product(price="1.00", stock=0)
    client = await new_client()
    ids = list(await asyncio.gather(*(place(client, sku, 1) for _ in range(30))))
    ids = [t for batch in ids for t in batch]
    fulfilment_db = await asyncpg.connect(stack.fulfilment_db_url)
    try:

        async def all_recorded() -> bool:
            n = await fulfilment_db.fetchval("SELECT count(*) FROM backorders WHERE sku = $1", sku)
            return bool(n == 30)

        await wait_until(all_recorded, timeout=15, message="30 backorders recorded")
        await add_stock(inventory_admin, sku, 30)

        async def allocating() -> bool:
            n = await fulfilment_db.fetchval(
                "SELECT count(*) FROM backorders WHERE sku = $1 AND state <> 'WAITING'", sku
            )
            return bool(n >= 1)

        await wait_until(allocating, timeout=10, interval=0.002)
        await stackctl("kill", "fulfilment")
        await stackctl("start", "fulfilment")
    finally:
        await fulfilment_db.close()

    async def all_completed() -> bool:
        return await statuses(client, ids) == ["COMPLETED"] * 30

    await wait_until(all_completed, timeout=60, message="30 backorders completed after kill -9")
    inventory = await asyncpg.connect(stack.inventory_db_url)
    api = await asyncpg.connect(stack.api_db_url)
    try:
        sold = await inventory.fetch(
            "SELECT transaction_id FROM codes WHERE sku = $1 AND status = 'SOLD'", sku
        )
        completed_twice = await api.fetchval(
            "SELECT count(*) - count(DISTINCT transaction_id) FROM ledger "
            "WHERE transaction_id = ANY($1::text[])",
            ids,
        )
    finally:
        await inventory.close()
        await api.close()
    assert sorted(r["transaction_id"] for r in sold) == sorted(ids)
    assert completed_twice == 0


async def test_order_events_rebuild_every_orders_status(
    new_client: NewClient,
    new_product: NewProduct,
    inventory_admin: httpx.AsyncClient,
    stack: Stack,
) -> None:
    sku = await new_product(price="1.00", stock=1)
    client = await new_client()
    ids = await place_any(client, sku, 3)  # one completes at once, two wait
    await add_stock(inventory_admin, sku, 1)  # one more completes

    async def two_completed() -> bool:
        return (await statuses(client, ids)).count("COMPLETED") == 2

    await wait_until(two_completed, timeout=15)
    withdrawn = await inventory_admin.post(f"/admin/products/{sku}/withdraw")
    assert withdrawn.status_code == 200  # the last one is cancelled

    async def settled() -> bool:
        return sorted(await statuses(client, ids)) == ["CANCELLED", "COMPLETED", "COMPLETED"]

    await wait_until(settled, timeout=15)

    async def rebuilt_matches() -> bool:
        rebuilt = await _rebuild_from_events(stack, client.account_id)
        truth = {t: (await client.get_order(t))["status"] for t in ids}
        return {t: rebuilt.get(t) for t in ids} == truth

    await wait_until(
        rebuilt_matches,
        timeout=15,
        interval=0.5,
        message="statuses rebuilt from orders.events match Get Orders",
    )


async def place_any(client: Client, sku: str, n: int) -> list[str]:
    ids = []
    for _ in range(n):
        response = await client.order(sku)
        assert response.status_code == 200, response.text
        ids.append(response.json()["data"]["transactionId"])
    return ids


# Records of orders.events older than this test session (less a minute for clocks) belong to
# no order of its tests: order_events starts after them, or on a machine that has run the
# benchmarks it reads millions of events for each call.
SESSION_STARTED_MS = int(time.time() * 1000) - 60_000


async def order_events(stack: Stack) -> list[tuple[bytes | None, dict[str, Any]]]:
    """orders.events as it stands, from this test session's first record on, (key, event) in
    each partition's order: what a downstream consumer reading the topic from the start sees
    of the session's orders."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=stack.kafka_bootstrap, group_id=None, enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = [
            TopicPartition(topics.ORDER_EVENTS.name, p)
            for p in range(topics.ORDER_EVENTS.partitions)
        ]
        consumer.assign(partitions)
        end = await consumer.end_offsets(partitions)
        since = await consumer.offsets_for_times(dict.fromkeys(partitions, SESSION_STARTED_MS))
        for tp in partitions:
            found_at = since[tp]
            consumer.seek(tp, end[tp] if found_at is None else found_at.offset)
        found = []
        while any([await consumer.position(tp) < end[tp] for tp in partitions]):
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                found += [(r.key, json.loads(r.value or b"{}")) for r in records]
        return found
    finally:
        await consumer.stop()


async def _rebuild_from_events(stack: Stack, account_id: str) -> dict[str, str]:
    """What a downstream consumer does: read the topic from the start, dedupe by eventId,
    keep the latest status per transactionId (the key keeps one order's events in order)."""
    seen: set[str] = set()
    status: dict[str, str] = {}
    for key, event in await order_events(stack):
        if event["eventId"] in seen or event["accountId"] != account_id:
            continue
        seen.add(event["eventId"])
        assert key == event["transactionId"].encode()
        assert "redeemCode" not in event
        assert "sealedCode" not in event
        status[event["transactionId"]] = event["status"]
    return status


async def test_simulated_supplier_completes_a_burst_of_backorders(
    new_client: NewClient,
    new_product: NewProduct,
    stackctl: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SUPPLIER_ENABLED", "true")
    monkeypatch.setenv("SUPPLIER_DELAY_S", "0.5")
    monkeypatch.setenv("SUPPLIER_BATCH", "5")
    await stackctl("restart", "fulfilment")
    try:
        sku = await new_product(price="1.00", stock=0)
        client = await new_client()
        ids = list(await asyncio.gather(*(place(client, sku, 1) for _ in range(12))))
        ids = [t for batch in ids for t in batch]

        async def all_completed() -> bool:
            return await statuses(client, ids) == ["COMPLETED"] * 12

        await wait_until(all_completed, timeout=30, message="the supplier served the burst")
        codes = {(await client.codes(t))[0]["redeemCode"] for t in ids}
        assert len(codes) == 12
    finally:
        monkeypatch.undo()
        await stackctl("restart", "fulfilment")


async def test_the_example_consumer_follows_an_order(
    new_client: NewClient, new_product: NewProduct, stack: Stack
) -> None:
    sku = await new_product(price="1.00", stock=1)
    client = await new_client()
    [transaction_id] = await place_any(client, sku, 1)

    async def example_prints_it_completed() -> bool:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(EXAMPLE),
            "--bootstrap",
            stack.kafka_bootstrap,
            "--group",
            unique("example"),
            # this session's events, not every one the topic holds (millions on a machine
            # that ran the benchmarks)
            "--since",
            datetime.fromtimestamp(SESSION_STARTED_MS / 1000, UTC).isoformat(),
            "--exit-at-end",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        lines = [json.loads(line) for line in out.decode().splitlines()]
        mine = [line["status"] for line in lines if line["transactionId"] == transaction_id]
        return mine[-1:] == ["COMPLETED"]

    await wait_until(example_prints_it_completed, timeout=30, interval=1)
