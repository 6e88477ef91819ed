"""How an account receives PINs (docs/api.md, "PIN format"), and ezOrderNumber."""

from decimal import Decimal

import httpx
import pytest

from tests.e2e.conftest import NewClient, NewProduct
from tests.helpers import unique, wait_until

pytestmark = pytest.mark.e2e


async def test_a_default_account_gets_an_int32_pin_and_a_stable_ez_order_number(
    new_client: NewClient, new_product: NewProduct
) -> None:
    sku = await new_product(codes=[{"redeemCode": unique("R"), "pinCode": "4711"}])
    client = await new_client()
    created = (await client.order(sku)).json()["data"]
    assert created["status"] == "COMPLETED"

    [code] = await client.codes(created["transactionId"])
    assert code["pinCode"] == 4711
    number = created["ezOrderNumber"]
    # A string of digits: the public EZ v2 descriptions type ezOrderNumber as a string, so a
    # client generated from them rejects a JSON number there.
    assert isinstance(number, str)
    assert number.isdigit()
    assert 1 <= int(number) <= 2**31 - 1
    assert (await client.get_order(created["transactionId"]))["ezOrderNumber"] == number
    listed = await client.http.get("/v2/orders", params={"transactionId": created["transactionId"]})
    assert listed.json()["data"]["items"][0]["ezOrderNumber"] == number


async def test_an_integer_account_cannot_buy_a_product_of_string_pins_and_pays_nothing(
    new_client: NewClient, new_product: NewProduct
) -> None:
    codes = [{"redeemCode": unique("R"), "pinCode": "0042"}]
    sku = await new_product(price="1.00", codes=codes, pinKind="string")
    client = await new_client(balance="10.00")

    instant = await client.order(sku)
    bulk = await client.http.post("/v2/orders", json={"products": [{"sku": sku, "quantity": 1}]})

    for refused in (instant, bulk):
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"] == "PRODUCT_PIN_NOT_INTEGER"
        assert refused.json()["sku"] == sku
    assert await client.balance() == Decimal("10.00")
    listed = await client.http.get("/v2/products", params={"sku": sku})
    assert listed.json()["data"]["items"][0]["pinKind"] == "string"


async def test_an_integer_product_refuses_at_intake_a_pin_an_integer_cannot_carry(
    new_product: NewProduct, inventory_admin: httpx.AsyncClient
) -> None:
    sku = await new_product()  # pinKind integer: the default
    codes = [
        {"redeemCode": unique("R"), "pinCode": "4711"},
        {"redeemCode": unique("R"), "pinCode": "0042"},
        {"redeemCode": unique("R"), "pinCode": "AB12"},
        {"redeemCode": unique("R"), "pinCode": "2147483648"},
        {"redeemCode": unique("R")},
    ]
    refused = await inventory_admin.post(f"/admin/products/{sku}/stock", json={"codes": codes})
    assert refused.status_code == 400, refused.text
    body = refused.json()
    assert [d["field"] for d in body["details"]] == ["codes.1", "codes.2", "codes.3"]
    for pin in ("0042", "AB12", "2147483648"):
        assert pin not in refused.text
    shown = (await inventory_admin.get(f"/admin/products/{sku}")).json()["data"]
    assert shown["stock"]["available"] == 0  # nothing stocked
    assert shown["pinKind"] == "integer"

    fits = [codes[0], codes[4]]
    added = await inventory_admin.post(f"/admin/products/{sku}/stock", json={"codes": fits})
    assert added.json()["data"]["added"] == 2, added.text


async def test_a_product_becomes_integer_only_when_every_code_for_sale_has_an_integer_pin(
    new_product: NewProduct, inventory_admin: httpx.AsyncClient
) -> None:
    odd = [{"redeemCode": unique("R"), "pinCode": "0042"}]
    sku = await new_product(codes=odd, pinKind="string")
    record = {"name": f"Card {sku}", "currency": "USD", "price": "9.75", "pinKind": "integer"}

    refused = await inventory_admin.put(f"/admin/products/{sku}", json=record)

    assert refused.status_code == 409, refused.text
    assert refused.json()["error"] == "PINS_NOT_INTEGER"
    [stock_id] = refused.json()["stockIds"]
    assert "0042" not in refused.text
    shown = (await inventory_admin.get(f"/admin/products/{sku}")).json()["data"]
    assert shown["pinKind"] == "string"

    other = await new_product(
        codes=[{"redeemCode": unique("R"), "pinCode": "42"}], pinKind="string"
    )
    record["name"] = f"Card {other}"
    made = await inventory_admin.put(f"/admin/products/{other}", json=record)
    assert made.status_code == 200, made.text
    assert made.json()["data"]["pinKind"] == "integer"
    assert isinstance(stock_id, int)


async def test_a_pin_sold_before_the_account_turned_integer_is_refused_never_altered(
    new_client: NewClient, new_product: NewProduct, api_admin: httpx.AsyncClient
) -> None:
    codes = [{"redeemCode": unique("R"), "pinCode": "0042"}]
    sku = await new_product(codes=codes, pinKind="string")
    client = await new_client(pinFormat="string")
    order = (await client.order(sku)).json()["data"]
    assert order["status"] == "COMPLETED"

    async def set_format(pin_format: str) -> None:
        changed = await api_admin.put(
            f"/admin/accounts/{client.account_id}/pin-format", json={"pinFormat": pin_format}
        )
        assert changed.status_code == 200, changed.text
        shown = await api_admin.get(f"/admin/accounts/{client.account_id}")
        assert shown.json()["data"]["pinFormat"] == pin_format

    await set_format("integer")

    async def refused() -> bool:
        got = await client.http.get(f"/v2/orders/{order['transactionId']}/codes")
        assert "0042" not in got.text
        return got.status_code == 409 and got.json()["error"] == "PIN_NOT_INTEGER"

    await wait_until(refused, timeout=15, message="Get Codes refuses the PIN, unaltered")

    await set_format("string")

    async def exact_pin() -> bool:
        got = await client.http.get(f"/v2/orders/{order['transactionId']}/codes")
        return got.status_code == 200 and got.json()["data"][0]["codes"][0]["pinCode"] == "0042"

    await wait_until(exact_pin, timeout=15, message="the PIN arrives exactly, as a string")


async def test_a_string_account_gets_digits_as_a_string(
    new_client: NewClient, new_product: NewProduct
) -> None:
    sku = await new_product(codes=[{"redeemCode": unique("R"), "pinCode": "4711"}])
    client = await new_client(pinFormat="string")
    order = (await client.order(sku)).json()["data"]
    [code] = await client.codes(order["transactionId"])
    assert code["pinCode"] == "4711"


async def test_an_integer_product_with_a_backorder_waiting_cannot_become_string(
    new_client: NewClient, new_product: NewProduct, inventory_admin: httpx.AsyncClient
) -> None:
    sku = await new_product(price="1.00")  # integer, no stock
    client = await new_client(balance="10.00")
    order = (await client.order(sku)).json()["data"]
    assert order["status"] == "PROCESSING"

    async def backordered() -> bool:
        seen = await inventory_admin.get(f"/admin/decisions/{order['transactionId']}")
        return seen.status_code == 200 and seen.json()["data"]["state"] == "BACKORDERED"

    await wait_until(backordered, timeout=15, message="inventory backorders the order")
    record = {"name": f"Card {sku}", "currency": "USD", "price": "1.00", "pinKind": "string"}
    refused = await inventory_admin.put(f"/admin/products/{sku}", json=record)

    assert refused.status_code == 409, refused.text
    assert refused.json()["error"] == "BACKORDERS_WAITING"
    shown = (await inventory_admin.get(f"/admin/products/{sku}")).json()["data"]
    assert shown["pinKind"] == "integer"
