"""PostgreSQL down or restarting: every endpoint answers `503 SERVICE_UNAVAILABLE` with
Retry-After (never 500), nothing is charged, and the api serves again once it is back."""

from decimal import Decimal

import httpx

from tests.conftest import StackCtl
from tests.e2e.conftest import NewClient, NewProduct
from tests.helpers import wait_until


async def test_a_postgresql_restart_answers_503_and_charges_nothing(
    new_client: NewClient, new_product: NewProduct, stackctl: StackCtl
) -> None:
    sku = await new_product(price="1.00", stock=10)
    client = await new_client(balance="100.00")
    first = await client.order(sku)
    assert first.json()["data"]["status"] == "COMPLETED"
    transaction_id = first.json()["data"]["transactionId"]

    await stackctl("stop", "postgres")
    answers: list[httpx.Response] = []
    try:
        for _ in range(3):
            answers.append(await client.http.post("/v2/orders/instant", json={"sku": sku}))
            answers.append(await client.http.get("/v2/orders", params={"limit": 5}))
            answers.append(await client.http.get(f"/v2/orders/{transaction_id}/codes"))
            answers.append(await client.http.get("/v2/balances"))
            answers.append(await client.http.get("/v2/products", params={"sku": sku}))
    finally:
        await stackctl("start", "postgres")

    assert [a.status_code for a in answers] == [503] * len(answers), [a.text for a in answers]
    for answer in answers:
        assert answer.headers["retry-after"] == "1"
        assert answer.json()["error"] == "SERVICE_UNAVAILABLE"
        assert answer.json()["requestId"] == answer.headers["x-request-id"]

    async def serving_again() -> bool:
        response = await client.order(sku)
        return response.status_code == 200 and response.json()["data"]["status"] == "COMPLETED"

    await wait_until(serving_again, timeout=60, interval=0.5, message="orders COMPLETED again")

    # The first order and the one that found the api serving again; nothing in between.
    async def balance_settled() -> bool:
        return await client.balance() == Decimal("98.00")

    await wait_until(balance_settled, timeout=10, message="balance 98.00")
    listed = await client.http.get("/v2/orders", params={"limit": 100})
    assert listed.json()["data"]["total"] == 2
