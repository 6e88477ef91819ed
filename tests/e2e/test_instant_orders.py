"""The instant order through the real pipeline: HTTP → Kafka → inventory → answer."""

import asyncio
import time
from decimal import Decimal

import asyncpg
import pytest
from pydantic import BaseModel, ConfigDict

from tests.conftest import Stack
from tests.e2e.conftest import NewClient, NewProduct, debits_of
from tests.helpers import unique, wait_until

pytestmark = pytest.mark.e2e


async def test_in_stock_order_completes_and_its_code_is_readable_at_once(
    new_client: NewClient, new_product: NewProduct, stack: Stack
) -> None:
    sku = await new_product(
        price="9.75", codes=[{"redeemCode": unique("R"), "pinCode": "0042"}], pinKind="string"
    )
    client = await new_client(balance="100.00", pinFormat="string")

    response = await client.order(sku, clientOrderNumber="PO-1")

    assert response.status_code == 200, response.text
    body = response.json()
    order = body["data"]
    assert body["requestId"]
    assert order["status"] == "COMPLETED"
    assert order["clientOrderNumber"] == "PO-1"
    assert order["grandTotal"] == {"amount": "9.75", "currency": "USD"}
    assert order["createdAt"].endswith("Z")
    assert order["products"] == [
        {
            "sku": sku,
            "quantity": 1,
            "unitPrice": {"amount": "9.75", "currency": "USD"},
            "totalPrice": {"amount": "9.75", "currency": "USD"},
            "status": "COMPLETED",
        }
    ]
    codes = await client.codes(order["transactionId"])  # no polling: read-your-writes
    assert len(codes) == 1
    assert codes[0]["status"] == "COMPLETED"
    assert codes[0]["pinCode"] == "0042"  # a string: the leading zero survives
    assert codes[0]["redeemCode"].startswith("R-")
    assert isinstance(codes[0]["stockId"], int)
    assert await client.balance() == Decimal("90.25")
    assert await debits_of(stack, [order["transactionId"]]) == 1


async def test_out_of_stock_order_is_processing_and_paid(
    new_client: NewClient, new_product: NewProduct
) -> None:
    sku = await new_product(price="5.00", stock=0)
    client = await new_client(balance="20.00")

    response = await client.order(sku)

    assert response.status_code == 200, response.text
    order = response.json()["data"]
    assert order["status"] == "PROCESSING"
    assert order["clientOrderNumber"] == ""
    assert await client.balance() == Decimal("15.00")
    codes = await client.codes(order["transactionId"])
    assert codes == [{"stockId": None, "status": "PROCESSING", "redeemCode": None, "pinCode": None}]


async def test_twenty_concurrent_orders_for_five_codes(
    new_client: NewClient, new_product: NewProduct, stack: Stack
) -> None:
    sku = await new_product(price="1.00", stock=5)
    client = await new_client(balance="100.00")

    responses = await asyncio.gather(*(client.order(sku) for _ in range(20)))

    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    statuses = [r.json()["data"]["status"] for r in responses]
    assert statuses.count("COMPLETED") == 5
    assert statuses.count("PROCESSING") == 15
    completed = [
        r.json()["data"]["transactionId"]
        for r in responses
        if r.json()["data"]["status"] == "COMPLETED"
    ]
    codes = [(await client.codes(tx))[0] for tx in completed]
    assert len({c["redeemCode"] for c in codes}) == 5
    assert len({c["stockId"] for c in codes}) == 5
    assert await client.balance() == Decimal("80.00")
    inventory = await asyncpg.connect(stack.inventory_db_url)
    try:
        sold = await inventory.fetch(
            "SELECT transaction_id FROM codes WHERE sku = $1 AND status = 'SOLD'", sku
        )
    finally:
        await inventory.close()
    assert sorted(r["transaction_id"] for r in sold) == sorted(completed)


async def test_fifty_identical_requests_with_dup_check_make_one_order(
    new_client: NewClient, new_product: NewProduct
) -> None:
    sku = await new_product(price="2.00", stock=1)
    client = await new_client(balance="100.00")
    number = unique("PO")

    responses = await asyncio.gather(
        *(
            client.order(sku, clientOrderNumber=number, enableClientOrderNumberDupCheck=True)
            for _ in range(50)
        )
    )

    accepted = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 409]
    assert len(accepted) == 1, [r.text for r in responses if r.status_code not in (200, 409)]
    assert len(refused) == 49
    first = accepted[0].json()["data"]["transactionId"]
    for r in refused:
        body = r.json()
        assert body["error"] == "CLIENT_ORDER_NUMBER_DUPLICATE"
        assert body["clientOrderNumber"] == number
        assert body["transactionId"] == first
    assert await client.balance() == Decimal("98.00")
    listed = await client.http.get("/v2/orders", params={"clientOrderNumber": number})
    assert listed.json()["data"]["total"] == 1


async def test_without_dup_check_duplicates_are_accepted(
    new_client: NewClient, new_product: NewProduct
) -> None:
    sku = await new_product(price="1.00", stock=0)
    client = await new_client()
    first = await client.order(sku, clientOrderNumber="SAME")
    second = await client.order(sku, clientOrderNumber="SAME")
    assert (first.status_code, second.status_code) == (200, 200)
    refused = await client.order(
        sku, clientOrderNumber="SAME", enableClientOrderNumberDupCheck=True
    )
    assert refused.status_code == 409
    assert refused.json()["transactionId"] == first.json()["data"]["transactionId"]


async def test_get_orders_lists_newest_first_with_filters_and_pages(
    new_client: NewClient, new_product: NewProduct
) -> None:
    sku = await new_product(price="1.00", stock=2)
    client = await new_client()
    ids = []
    for i in range(3):
        response = await client.order(sku, clientOrderNumber=f"N-{i}")
        ids.append(response.json()["data"]["transactionId"])

    page1 = (await client.http.get("/v2/orders", params={"limit": 2})).json()["data"]
    page2 = (await client.http.get("/v2/orders", params={"limit": 2, "page": 2})).json()["data"]

    assert (page1["total"], page1["page"], page1["pageSize"], page1["totalPage"]) == (3, 1, 2, 2)
    assert [o["transactionId"] for o in page1["items"] + page2["items"]] == ids[::-1]
    by_status = (await client.http.get("/v2/orders", params={"status": "PROCESSING"})).json()
    assert [o["transactionId"] for o in by_status["data"]["items"]] == [ids[2]]
    by_number = (await client.http.get("/v2/orders", params={"clientOrderNumber": "N-1"})).json()
    assert [o["transactionId"] for o in by_number["data"]["items"]] == [ids[1]]
    by_id = (await client.http.get("/v2/orders", params={"transactionId": ids[0]})).json()
    assert by_id["data"]["total"] == 1
    nothing = (await client.http.get("/v2/orders", params={"clientOrderNumber": "none"})).json()
    assert nothing["data"]["items"] == []
    assert (await client.get_order(ids[0]))["status"] == "COMPLETED"


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 101}, {"page": 0}, {"limit": "x"}])
async def test_bad_paging_is_400(new_client: NewClient, params: dict[str, object]) -> None:
    client = await new_client()
    response = await client.http.get("/v2/orders", params=params)
    assert response.status_code == 400
    assert response.json()["error"] == "INVALID_REQUEST"


async def test_get_products_and_balances(new_client: NewClient, new_product: NewProduct) -> None:
    sku = await new_product(price="12.50", stock=0)
    client = await new_client(balance="30.00")
    data = (await client.http.get("/v2/products", params={"sku": sku})).json()["data"]
    assert data["total"] == 1
    item = data["items"][0]
    assert item["sku"] == sku
    assert item["prices"] == [{"price": "12.50", "fromQuantity": 1, "toQuantity": 1}]
    assert item["isInstantDeliverySupported"] is True
    balances = (await client.http.get("/v2/balances")).json()["data"]
    assert balances == [{"balance": "30.00", "currency": "USD"}]
    assert (await client.http.get("/v2/balances", params={"currency": "EUR"})).json()["data"] == []


class StrictProduct(BaseModel):
    """The non-nullable fields of EZ v2's ProductResponse, as a strictly typed client reads
    them: a null anywhere here fails the whole list."""

    model_config = ConfigDict(strict=True)
    sku: str
    name: str
    brand: str
    types: list[str]
    format: str
    currency: str
    faceValue: str
    percentageOffFaceValue: str
    isInstantDeliverySupported: bool
    descriptions: list[str]
    instructions: list[str]
    termConditions: list[str]


@pytest.mark.parametrize(
    ("fields", "face", "off"),
    [({}, "12.50", "0.00"), ({"faceValue": "20.00"}, "20.00", "37.50")],
    ids=["no-face-value", "face-value"],
)
async def test_get_products_has_no_null_where_ez_has_a_string(
    new_client: NewClient,
    new_product: NewProduct,
    fields: dict[str, str],
    face: str,
    off: str,
) -> None:
    sku = await new_product(price="12.50", **fields)
    client = await new_client()
    [item] = (await client.http.get("/v2/products", params={"sku": sku})).json()["data"]["items"]
    product = StrictProduct.model_validate(item)
    assert (product.faceValue, product.percentageOffFaceValue) == (face, off)


async def test_another_accounts_order_is_not_found_everywhere(
    new_client: NewClient, new_product: NewProduct
) -> None:
    sku = await new_product(price="1.00", stock=1)
    owner, stranger = await new_client(), await new_client()
    transaction_id = (await owner.order(sku)).json()["data"]["transactionId"]

    for path in (
        f"/v2/orders/{transaction_id}",
        f"/v2/orders/{transaction_id}/codes",
        "/v2/orders/01NOSUCHORDER000000000000",
    ):
        response = await stranger.http.get(path)
        assert response.status_code == 404, path
        assert response.json()["error"] == "ORDER_NOT_FOUND"
    listed = await stranger.http.get("/v2/orders", params={"transactionId": transaction_id})
    assert listed.json()["data"]["total"] == 0


async def test_inventory_down_answers_processing_in_the_window_then_decides(
    new_client: NewClient, new_product: NewProduct, stack: Stack, stackctl
) -> None:
    sku = await new_product(price="1.00", stock=3)
    client = await new_client()
    await stackctl("stop", "inventory")
    try:
        started = time.monotonic()
        responses = [await client.order(sku) for _ in range(3)]
        elapsed = (time.monotonic() - started) / 3
    finally:
        await stackctl("start", "inventory")
    assert [r.json()["data"]["status"] for r in responses] == ["PROCESSING"] * 3
    assert elapsed < 1.5, f"an order took {elapsed:.2f}s on average with inventory down"
    ids = [r.json()["data"]["transactionId"] for r in responses]

    async def all_completed() -> bool:
        return all([(await client.get_order(t))["status"] == "COMPLETED" for t in ids])

    await wait_until(all_completed, timeout=30, message="orders decided after inventory restart")
    codes = [(await client.codes(t))[0]["redeemCode"] for t in ids]
    assert len(set(codes)) == 3


async def test_kill_9_of_inventory_mid_burst_loses_nothing_and_claims_nothing_twice(
    new_client: NewClient, new_product: NewProduct, stack: Stack, stackctl
) -> None:
    sku = await new_product(price="1.00", stock=10)
    client = await new_client()

    async def burst() -> list[str]:
        responses = await asyncio.gather(*(client.order(sku) for _ in range(30)))
        assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
        return [r.json()["data"]["transactionId"] for r in responses]

    inventory = await asyncpg.connect(stack.inventory_db_url)
    try:
        orders = asyncio.create_task(burst())

        async def burst_under_way() -> bool:
            n = await inventory.fetchval("SELECT count(*) FROM decisions WHERE sku = $1", sku)
            return bool(n >= 2)

        await wait_until(burst_under_way, timeout=15, interval=0.005)
        await stackctl("kill", "inventory")
        await stackctl("start", "inventory")
        ids = await orders

        async def every_order_decided() -> bool:
            decided = await inventory.fetchval(
                "SELECT count(*) FROM decisions WHERE transaction_id = ANY($1::text[])", ids
            )
            return bool(decided == 30)

        await wait_until(every_order_decided, timeout=60, message="30 decisions after kill -9")
        sold = await inventory.fetch(
            "SELECT transaction_id, id FROM codes WHERE sku = $1 AND status = 'SOLD'", sku
        )
    finally:
        await inventory.close()
    assert len(sold) == 10
    assert len({r["transaction_id"] for r in sold}) == 10

    async def read_model_caught_up() -> bool:
        listed = await client.http.get("/v2/orders", params={"status": "COMPLETED", "limit": 100})
        return bool(listed.json()["data"]["total"] == 10)

    await wait_until(read_model_caught_up, timeout=30, message="10 orders COMPLETED in the api")
