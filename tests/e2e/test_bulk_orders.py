"""Bulk orders (POST /v2/orders) on the real stack: paid in full at once, delivered unit by unit
as stock allows (FIFO per SKU with instant orders), the rest cancelled at the deadline and
refunded once, the dup check shared, and no code sold twice."""

import asyncio
from decimal import Decimal
from typing import Any

import asyncpg
import httpx
import pytest

from shared.contracts import BackorderCancelled
from tests.conftest import Stack
from tests.e2e.conftest import Client, NewClient, NewProduct
from tests.e2e.test_cli import cli
from tests.e2e.test_fulfilment import add_stock, order_events, redeliver_to_api, refunds_of
from tests.helpers import unique, wait_until

pytestmark = pytest.mark.e2e


async def bulk(client: Client, lines: list[tuple[str, int]], **fields: Any) -> httpx.Response:
    return await client.http.post(
        "/v2/orders",
        json={"products": [{"sku": s, "quantity": q} for s, q in lines], **fields},
    )


async def placed(client: Client, lines: list[tuple[str, int]], **fields: Any) -> dict[str, Any]:
    response = await bulk(client, lines, **fields)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


async def all_codes(client: Client, transaction_id: str) -> list[dict[str, Any]]:
    response = await client.http.get(f"/v2/orders/{transaction_id}/codes")
    assert response.status_code == 200, response.text
    return [code for line in response.json()["data"] for code in line["codes"]]


async def count_by_status(client: Client, transaction_id: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for code in await all_codes(client, transaction_id):
        counts[code["status"]] = counts.get(code["status"], 0) + 1
    return counts


async def public_events_of(stack: Stack, bulk_id: str) -> list[dict[str, Any]]:
    """The events on orders.events (all of it, as it stands) of the units of one bulk order."""
    return [e for _, e in await order_events(stack) if e.get("bulkTransactionId") == bulk_id]


async def test_a_bulk_order_is_delivered_as_stock_allows_then_oldest_first(
    new_client: NewClient,
    new_product: NewProduct,
    inventory_admin: httpx.AsyncClient,
    stack: Stack,
) -> None:
    a = await new_product(price="1.00", stock=5)
    b = await new_product(price="2.00", stock=2, instant=False)
    c = await new_product(price="3.00", stock=0)
    client = await new_client(balance="100.00")

    number = unique("PO")
    order = await placed(client, [(a, 5), (b, 5), (c, 5)], clientOrderNumber=number)

    assert order["status"] == "PROCESSING"
    assert order["grandTotal"] == {"amount": "30.00", "currency": "USD"}
    assert [(p["sku"], p["quantity"]) for p in order["products"]] == [(a, 5), (b, 5), (c, 5)]
    assert await client.balance() == Decimal("70.00")
    tx = order["transactionId"]

    async def seven_delivered() -> bool:
        return await count_by_status(client, tx) == {"COMPLETED": 7, "PROCESSING": 8}

    await wait_until(seven_delivered, timeout=20, message="7 units delivered, 8 waiting")
    for code in await all_codes(client, tx):
        assert (code["redeemCode"] is None) == (code["status"] == "PROCESSING")
    shown = await client.get_order(tx)
    assert [p["status"] for p in shown["products"]] == ["COMPLETED", "PROCESSING", "PROCESSING"]
    completed = await client.http.get(
        f"/v2/orders/{tx}/codes", params={"sku": a, "status": "COMPLETED"}
    )
    assert [len(line["codes"]) for line in completed.json()["data"]] == [5]

    async def seven_announced() -> bool:
        kinds = [e["type"] for e in await public_events_of(stack, tx)]
        return kinds.count("OrderCompleted") == 7

    await wait_until(seven_announced, timeout=20, message="7 units' OrderCompleted published")
    events = await public_events_of(stack, tx)
    assert {e["clientOrderNumber"] for e in events} == {number}  # every unit names the bulk's
    assert [e["type"] for e in events].count("OrderAccepted") == 15

    async def eight_backordered() -> bool:
        return len(await _units(stack, tx, "PROCESSING", backordered=True)) == 8

    await wait_until(eight_backordered, timeout=20, message="8 units backordered")
    # An instant order of c placed after the bulk order waits behind its 5 units.
    later = await client.order(c)
    assert later.status_code == 200, later.text
    later_id = later.json()["data"]["transactionId"]
    await add_stock(inventory_admin, c, 5)
    await add_stock(inventory_admin, b, 3)

    async def all_delivered() -> bool:
        return (await client.get_order(tx))["status"] == "COMPLETED"

    await wait_until(all_delivered, timeout=20, message="the bulk order completed")
    assert await count_by_status(client, tx) == {"COMPLETED": 15}
    assert (await client.get_order(later_id))["status"] == "PROCESSING"
    stock_ids = [code["stockId"] for code in await all_codes(client, tx)]
    assert len(set(stock_ids)) == 15
    assert (await client.get_order(tx))["refundedTotal"]["amount"] == "0.00"


async def test_undelivered_units_are_cancelled_at_the_deadline_and_refunded_once(
    new_client: NewClient, new_product: NewProduct, stack: Stack
) -> None:
    a = await new_product(price="1.00", stock=3)
    late = await new_product(price="2.50", stock=2, backorderDeadlineSeconds=1)
    client = await new_client(balance="100.00")
    order = await placed(client, [(a, 3), (late, 5)])
    tx = order["transactionId"]
    assert await client.balance() == Decimal("84.50")

    async def settled() -> bool:
        return (await client.get_order(tx))["status"] != "PROCESSING"

    await wait_until(settled, timeout=20, message="bulk order settled")
    shown = await client.get_order(tx)
    assert shown["status"] == "COMPLETED"  # at least one unit delivered
    assert [p["status"] for p in shown["products"]] == ["COMPLETED", "COMPLETED"]
    assert shown["grandTotal"]["amount"] == "15.50"
    assert shown["refundedTotal"]["amount"] == "7.50"
    assert await count_by_status(client, tx) == {"COMPLETED": 5, "CANCELLED": 3}
    assert await client.balance() == Decimal("92.00")

    # The cancellations delivered again change nothing.
    cancelled_units = await _units(stack, tx, "CANCELLED")
    assert len(cancelled_units) == 3
    cancellations = [
        BackorderCancelled(
            transaction_id=unit,
            account_id=client.account_id,
            sku=late,
            reason="DEADLINE_PASSED",
        )
        for unit in cancelled_units
    ]
    await redeliver_to_api(stack, late, cancellations)
    refunds = await refunds_of(stack, cancelled_units)
    assert refunds == 3
    assert await client.balance() == Decimal("92.00")


async def _units(stack: Stack, bulk_id: str, status: str, backordered: bool = False) -> list[str]:
    """The bulk order's units in this status (and backordered, if asked), from the api's db."""
    api_db = await asyncpg.connect(stack.api_db_url)
    try:
        rows = await api_db.fetch(
            "SELECT transaction_id FROM orders WHERE bulk_id = $1 AND status = $2 "
            "AND (NOT $3 OR backordered_at IS NOT NULL)",
            bulk_id,
            status,
            backordered,
        )
    finally:
        await api_db.close()
    return [r["transaction_id"] for r in rows]


async def test_identical_dup_checked_bulk_requests_make_one_order(
    new_client: NewClient, new_product: NewProduct
) -> None:
    sku = await new_product(price="1.00", stock=0)
    client = await new_client(balance="1000.00")
    number = unique("PO")

    responses = await asyncio.gather(
        *(
            bulk(client, [(sku, 3)], clientOrderNumber=number, enableClientOrderNumberDupCheck=True)
            for _ in range(50)
        )
    )

    assert sorted(r.status_code for r in responses) == [200] + [409] * 49
    [winner] = [r.json()["data"]["transactionId"] for r in responses if r.status_code == 200]
    assert {r.json()["transactionId"] for r in responses if r.status_code == 409} == {winner}
    assert await client.balance() == Decimal("997.00")
    # The namespace is shared with instant orders.
    instant = await client.order(
        sku, clientOrderNumber=number, enableClientOrderNumberDupCheck=True
    )
    assert instant.status_code == 409, instant.text


async def test_no_code_is_sold_twice_across_concurrent_bulk_and_instant_orders(
    new_client: NewClient, new_product: NewProduct, stack: Stack
) -> None:
    sku = await new_product(price="1.00", stock=20)
    client = await new_client(balance="1000.00")

    results = await asyncio.gather(
        *(placed(client, [(sku, 8)]) for _ in range(3)),
        *(client.order(sku) for _ in range(10)),
    )
    bulk_ids = [r["transactionId"] for r in results[:3] if isinstance(r, dict)]
    assert len(bulk_ids) == 3

    async def stock_gone() -> bool:
        delivered = 0
        for tx in bulk_ids:
            delivered += (await count_by_status(client, tx)).get("COMPLETED", 0)
        api_db = await asyncpg.connect(stack.api_db_url)
        try:
            sold = await api_db.fetchval(
                "SELECT count(*) FROM orders WHERE sku = $1 AND status = 'COMPLETED'", sku
            )
        finally:
            await api_db.close()
        return delivered > 0 and sold == 20

    await wait_until(stock_gone, timeout=30, message="all 20 codes sold")
    api_db = await asyncpg.connect(stack.api_db_url)
    try:
        stock_ids = await api_db.fetch(
            "SELECT stock_id FROM orders WHERE sku = $1 AND stock_id IS NOT NULL", sku
        )
    finally:
        await api_db.close()
    assert len({r["stock_id"] for r in stock_ids}) == len(stock_ids) == 20


async def test_get_orders_lists_bulk_orders_with_instant_ones_newest_first(
    new_client: NewClient, new_product: NewProduct
) -> None:
    sku = await new_product(price="1.00", stock=2)
    client = await new_client(balance="100.00")
    number = unique("PO")
    first = (await client.order(sku)).json()["data"]
    order = await placed(client, [(sku, 3)], clientOrderNumber=number)  # 2 in stock: 1 waits
    tx = order["transactionId"]

    async def listed(**params: str) -> dict[str, Any]:
        response = await client.http.get("/v2/orders", params=params)
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()["data"]
        return data

    page = await listed()
    # the bulk order once (not its units), newest first, before the instant order
    assert [i["transactionId"] for i in page["items"]] == [tx, first["transactionId"]]
    assert page["total"] == 2
    item = page["items"][0]
    assert [(p["sku"], p["quantity"]) for p in item["products"]] == [(sku, 3)]
    assert item["grandTotal"] == {"amount": "3.00", "currency": "USD"}
    assert [i["transactionId"] for i in (await listed(clientOrderNumber=number))["items"]] == [tx]
    assert [i["transactionId"] for i in (await listed(transactionId=tx))["items"]] == [tx]

    async def bulk_waits() -> bool:
        return await count_by_status(client, tx) == {"COMPLETED": 1, "PROCESSING": 2} or (
            await count_by_status(client, tx) == {"COMPLETED": 2, "PROCESSING": 1}
        )

    await wait_until(bulk_waits, timeout=20, message="the bulk order partly delivered")
    assert [i["transactionId"] for i in (await listed(status="PROCESSING"))["items"]] == [tx]
    completed = [i["transactionId"] for i in (await listed(status="COMPLETED"))["items"]]
    assert tx not in completed


async def test_an_operator_cancels_the_waiting_units_of_a_bulk_order_by_its_id(
    new_client: NewClient, new_product: NewProduct
) -> None:
    sku = await new_product(price="2.00", stock=1)
    client = await new_client(balance="100.00")
    tx = (await placed(client, [(sku, 3)]))["transactionId"]

    async def one_delivered() -> bool:
        return await count_by_status(client, tx) == {"COMPLETED": 1, "PROCESSING": 2}

    await wait_until(one_delivered, timeout=20, message="one unit delivered, two waiting")
    asked, said = await cli("orders", "cancel", tx)
    assert (asked["transactionId"], asked["bulk"], asked["units"]) == (tx, True, 2)
    assert "2 unit(s)" in said

    async def cancelled_and_refunded() -> bool:
        return await count_by_status(client, tx) == {"COMPLETED": 1, "CANCELLED": 2} and (
            await client.balance() == Decimal("98.00")  # 6.00 paid, 4.00 given back once
        )

    await wait_until(cancelled_and_refunded, timeout=20, message="two units cancelled, refunded")
    shown = await client.get_order(tx)
    assert (shown["status"], shown["refundedTotal"]) == (
        "COMPLETED",
        {"amount": "4.00", "currency": "USD"},
    )
    _, said = await cli("orders", "cancel", tx, expect_ok=False)  # nothing left to cancel
    assert "COMPLETED" in said

    operator_view, hint = await cli("orders", "show", tx)
    assert operator_view["bulk"] is True
    assert (operator_view["status"], operator_view["refundedTotal"]) == ("COMPLETED", "4.00")
    [line] = operator_view["lines"]
    assert line["units"] == {"COMPLETED": 1, "PROCESSING": 0, "CANCELLED": 2}
    assert line["firstUnit"] == f"{tx}-00001"
    unit, _ = await cli("orders", "show", line["firstUnit"])  # a unit: an order's history
    assert unit["order"]["transactionId"] == f"{tx}-00001"
    assert f"orders show {tx}-00001" in hint
