"""Lost messages are repaired: no order stays PROCESSING because one message went missing."""

from datetime import timedelta
from decimal import Decimal

import asyncpg
import httpx
import pytest

from tests.conftest import Stack
from tests.e2e.conftest import NewClient, NewProduct, record_undecided_order
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e


async def test_an_order_whose_command_never_reached_kafka_is_decided(
    new_client: NewClient, new_product: NewProduct, stack: Stack
) -> None:
    sku = await new_product(price="2.00", stock=1)
    client = await new_client()
    # An order as the api commits it, but whose command (and outbox row) is gone.
    transaction_id = await record_undecided_order(
        stack, client.account_id, sku, timedelta(minutes=1)
    )

    async def completed() -> bool:
        return (await client.get_order(transaction_id))["status"] == "COMPLETED"

    await wait_until(completed, timeout=30, message="the api asked inventory again")
    assert (await client.codes(transaction_id))[0]["redeemCode"]


async def test_a_backorder_whose_allocation_was_lost_completes(
    new_client: NewClient,
    new_product: NewProduct,
    inventory_admin: httpx.AsyncClient,
    stack: Stack,
) -> None:
    sku = await new_product(price="1.00", stock=0)
    client = await new_client()
    response = await client.order(sku)
    transaction_id = response.json()["data"]["transactionId"]
    fulfilment = await asyncpg.connect(stack.fulfilment_db_url)
    try:

        async def recorded() -> bool:
            n = await fulfilment.fetchval(
                "SELECT count(*) FROM backorders WHERE transaction_id = $1", transaction_id
            )
            return bool(n)

        await wait_until(recorded, timeout=10)
        # As if an AllocateBackorder had been sent and lost: offered, never answered.
        await fulfilment.execute(
            "UPDATE backorders SET state = 'ALLOCATING', updated_at = now() - interval '1 hour' "
            "WHERE transaction_id = $1",
            transaction_id,
        )
    finally:
        await fulfilment.close()
    added = await inventory_admin.post(f"/admin/products/{sku}/stock", json={"generate": 1})
    assert added.status_code == 200

    async def completed() -> bool:
        return (await client.get_order(transaction_id))["status"] == "COMPLETED"

    await wait_until(completed, timeout=30, message="fulfilment resent the allocation")
    assert await client.balance() == Decimal("999.00")
