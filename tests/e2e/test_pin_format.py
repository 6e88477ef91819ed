"""How an account receives PINs (docs/api.md, "PIN format"), and ezOrderNumber."""

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


async def test_a_pin_an_integer_cannot_carry_is_refused_never_altered_until_string_is_set(
    new_client: NewClient, new_product: NewProduct, api_admin: httpx.AsyncClient
) -> None:
    sku = await new_product(codes=[{"redeemCode": unique("R"), "pinCode": "0042"}])
    client = await new_client()
    order = (await client.order(sku)).json()["data"]
    assert order["status"] == "COMPLETED"

    refused = await client.http.get(f"/v2/orders/{order['transactionId']}/codes")
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"] == "PIN_NOT_INTEGER"
    assert "0042" not in refused.text

    changed = await api_admin.put(
        f"/admin/accounts/{client.account_id}/pin-format", json={"pinFormat": "string"}
    )
    assert changed.status_code == 200, changed.text
    shown = await api_admin.get(f"/admin/accounts/{client.account_id}")
    assert shown.json()["data"]["pinFormat"] == "string"

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
