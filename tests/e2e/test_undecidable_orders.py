"""An order inventory never decides does not stay PROCESSING for ever: at its deadline, or when
an operator says so, inventory records it cancelled and the api refunds it once."""

from datetime import timedelta
from decimal import Decimal

import asyncpg
import httpx
import pytest

from shared.contracts import new_transaction_id
from tests.conftest import Stack
from tests.e2e.conftest import Client, NewClient, NewProduct, record_undecided_order
from tests.e2e.test_cli import cli
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e


async def status_of(client: Client, transaction_id: str) -> str:
    status: str = (await client.get_order(transaction_id))["status"]
    return status


async def refunds_of(stack: Stack, transaction_id: str) -> int:
    api = await asyncpg.connect(stack.api_db_url)
    try:
        count: int = await api.fetchval(
            "SELECT count(*) FROM ledger WHERE transaction_id = $1 AND kind = 'REFUND'",
            transaction_id,
        )
        return count
    finally:
        await api.close()


async def test_an_order_undecided_at_its_deadline_is_cancelled_refunded_once_and_sells_nothing(
    new_client: NewClient,
    new_product: NewProduct,
    inventory_admin: httpx.AsyncClient,
    stack: Stack,
) -> None:
    sku = await new_product(price="2.00", stock=1)  # in stock: a late decision would sell it
    client = await new_client(balance="10.00")
    # older than the deadline (ORDERS_BACKORDER_DEADLINE_S, 24 h): the api's next round of
    # asking about undecided orders asks inventory to cancel it instead
    transaction_id = await record_undecided_order(
        stack, client.account_id, sku, timedelta(hours=25)
    )

    async def cancelled() -> bool:
        return await status_of(client, transaction_id) == "CANCELLED"

    await wait_until(cancelled, timeout=30, message="the api had the undecided order cancelled")
    order = await client.get_order(transaction_id)
    assert order["status"] == "CANCELLED"
    assert await client.balance() == Decimal("12.00")  # its 2.00 back, once
    assert await refunds_of(stack, transaction_id) == 1

    decision = await inventory_admin.get(f"/admin/decisions/{transaction_id}")
    assert decision.status_code == 200, decision.text
    assert (decision.json()["data"]["state"], decision.json()["data"]["cancelReason"]) == (
        "CANCELLED",
        "DEADLINE_PASSED",
    )
    product = await inventory_admin.get(f"/admin/products/{sku}")
    assert product.json()["data"]["stock"]["available"] == 1  # the code was not sold to it


async def test_an_operator_cancels_a_stuck_order_and_sees_its_whole_history(
    new_client: NewClient, new_product: NewProduct, stack: Stack
) -> None:
    if stack.api_url is None:
        pytest.skip("needs the running services: run `make test`")
    sku = await new_product(price="2.00", stock=0)
    client = await new_client(balance="10.00")
    # The api may ask inventory about it (a PlaceOrder: no stock, backordered) before the
    # operator's cancellation arrives, or not: either way the cancellation ends it.
    transaction_id = await record_undecided_order(
        stack, client.account_id, sku, timedelta(seconds=1)
    )

    before, _ = await cli("orders", "show", transaction_id)
    assert before["order"]["status"] == "PROCESSING"
    assert [m["kind"] for m in before["order"]["money"]] == ["DEBIT"]
    assert "sealedCode" not in before["order"]

    ended, err = await cli("orders", "cancel", transaction_id, "--wait-seconds", "30")
    assert (ended["status"], ended["cancelReason"]) == ("CANCELLED", "CANCELLED_BY_OPERATOR")
    assert "refunded" in err
    assert await client.balance() == Decimal("12.00")

    shown, _ = await cli("orders", "show", transaction_id)
    assert [m["kind"] for m in shown["order"]["money"]] == ["DEBIT", "REFUND"]
    assert shown["inventory"]["state"] == "CANCELLED"
    steps = [step["what"] for step in shown["history"] if step["by"] == "api"]
    assert steps[0] == "accepted PROCESSING"
    assert "CANCELLED (CANCELLED_BY_OPERATOR)" in steps

    _, refused = await cli("orders", "cancel", transaction_id, expect_ok=False)
    assert "409 ORDER_FINAL" in refused
    assert "CANCELLED already" in refused
    _, unknown = await cli("orders", "show", new_transaction_id(), expect_ok=False)
    assert "No order has transactionId" in unknown
