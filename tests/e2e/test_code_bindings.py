"""Get Codes opens each code as the stock item it was sold as: a code reaches the api sealed
to its stock item, a ciphertext copied onto another order of the SKU does not open there, and
a code sealed to its SKU before stock-item seals (what the api stored until then) still does."""

import os

import asyncpg
import httpx
import pytest

from shared.crypto import Binding, Code, CodeVault, SealedCode
from tests.conftest import Stack
from tests.e2e.conftest import Client, NewClient, NewProduct, log_dir
from tests.helpers import unique, wait_until

pytestmark = pytest.mark.e2e


async def completed_orders(
    new_client: NewClient, new_product: NewProduct, count: int
) -> tuple[Client, str, list[str]]:
    codes = [{"redeemCode": unique("BIND"), "pinCode": "0042"} for _ in range(count)]
    sku = await new_product(price="1.00", codes=codes, pinKind="string")
    client = await new_client(balance="10.00", pinFormat="string")
    transaction_ids = []
    for _ in codes:
        response = await client.order(sku)
        assert response.json()["data"]["status"] == "COMPLETED", response.text
        transaction_ids.append(response.json()["data"]["transactionId"])
    return client, sku, transaction_ids


async def sealed_code(stack: Stack, transaction_id: str, replace_with: str | None = None) -> str:
    """The order's sealed code in the api database, replaced with `replace_with` if given."""
    conn = await asyncpg.connect(stack.api_db_url)
    try:
        found: str = await conn.fetchval(
            "UPDATE orders SET sealed_code = coalesce($2, sealed_code) WHERE transaction_id = $1 "
            "RETURNING sealed_code",
            transaction_id,
            replace_with,
        )
    finally:
        await conn.close()
    return found


async def test_a_ciphertext_copied_onto_another_order_of_the_sku_does_not_open(
    new_client: NewClient, new_product: NewProduct, stack: Stack
) -> None:
    client, _, (first, second) = await completed_orders(new_client, new_product, 2)
    [code_of_first] = await client.codes(first)
    sealed_first = await sealed_code(stack, first)
    assert SealedCode.from_wire(sealed_first).binding is Binding.STOCK_ITEM

    await sealed_code(stack, second, replace_with=sealed_first)
    response = await client.http.get(f"/v2/orders/{second}/codes")

    # Review finding 11: a named error, a log line naming the order and stock id, a metric.
    assert response.status_code == 503
    assert response.json()["error"] == "CODE_UNAVAILABLE"
    assert "try again later" in response.json()["message"]
    assert code_of_first["redeemCode"] not in response.text
    log = log_dir() / "api.log"
    line = await wait_until(
        lambda: next((x for x in log.read_text().splitlines() if second in x), None)
    )
    assert "cannot be opened (unreadable, InvalidTag)" in line
    assert code_of_first["redeemCode"] not in log.read_text()
    assert stack.api_admin_url is not None
    async with httpx.AsyncClient(base_url=stack.api_admin_url) as admin_port:
        metrics = (await admin_port.get("/metrics")).text
    assert 'orders_codes_unavailable_total{reason="unreadable"}' in metrics


async def test_a_code_sealed_to_its_stock_item_and_sold_by_an_older_inventory_opens(
    new_client: NewClient, new_product: NewProduct, stack: Stack
) -> None:
    # Review finding 3: an inventory older than 0005 on the migrated schema sells a binding
    # 2 row in the old wire form 'kid:base64'.
    client, _, [order] = await completed_orders(new_client, new_product, 1)
    [code] = await client.codes(order)
    sealed = await sealed_code(stack, order)
    await sealed_code(stack, order, replace_with=sealed.removeprefix("v2:"))

    assert await client.codes(order) == [code]


async def test_a_code_sealed_to_its_sku_before_stock_item_seals_still_opens(
    new_client: NewClient, new_product: NewProduct, stack: Stack
) -> None:
    client, sku, [order] = await completed_orders(new_client, new_product, 1)
    vault = CodeVault(os.environ["CODE_ENCRYPTION_KEYS"])
    # As inventory sealed every code until then: to its SKU only, wire form 'kid:base64'.
    legacy = vault.seal_to_sku(Code("LEGACY-CODE-0001", "0099"), sku).to_wire()
    assert legacy.count(":") == 1

    await sealed_code(stack, order, replace_with=legacy)

    [code] = await client.codes(order)
    assert (code["redeemCode"], code["pinCode"]) == ("LEGACY-CODE-0001", "0099")
