"""Every error row of the Create Instant Order contract, with its status, code and body."""

from decimal import Decimal

import httpx
import pytest

from tests.conftest import Stack
from tests.e2e.conftest import Client, NewClient, NewProduct
from tests.helpers import unique, wait_until

pytestmark = pytest.mark.e2e


def assert_error(response: httpx.Response, status: int, error: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    body: dict[str, object] = response.json()
    assert body["error"] == error
    assert isinstance(body["requestId"], str)
    assert body["requestId"]
    assert isinstance(body["message"], str)
    assert body["message"]
    assert "Traceback" not in response.text
    return body


@pytest.mark.parametrize(
    ("content", "field"),
    [
        (b"{not json", "body"),
        (b"[]", "body"),
        (b"{}", "sku"),
        (b'{"sku": ""}', "sku"),
        (b'{"sku": "' + b"x" * 65 + b'"}', "sku"),
        (b'{"sku": 42}', "sku"),
        (b'{"sku": "A", "clientOrderNumber": "' + b"n" * 101 + b'"}', "clientOrderNumber"),
        (b'{"sku": "A", "clientOrderNumber": ""}', "clientOrderNumber"),
        (
            b'{"sku": "A", "enableClientOrderNumberDupCheck": "yes"}',
            "enableClientOrderNumberDupCheck",
        ),
        (b'{"sku": "A", "payWithCurrency": "usd"}', "payWithCurrency"),
    ],
)
async def test_invalid_bodies_are_400_naming_the_field(
    new_client: NewClient, content: bytes, field: str
) -> None:
    client = await new_client()
    response = await client.http.post(
        "/v2/orders/instant", content=content, headers={"content-type": "application/json"}
    )
    body = assert_error(response, 400, "INVALID_REQUEST")
    details = body["details"]
    assert isinstance(details, list)
    assert field in [d["field"] for d in details]


async def test_unknown_fields_are_ignored(new_client: NewClient, new_product: NewProduct) -> None:
    sku = await new_product(stock=0)
    client = await new_client()
    response = await client.order(sku, somethingNew={"x": 1})
    assert response.status_code == 200, response.text


async def test_a_huge_body_is_refused_before_it_is_read(new_client: NewClient) -> None:
    client = await new_client()
    response = await client.http.post(
        "/v2/orders/instant",
        content=b'{"sku": "' + b"x" * 100_000 + b'"}',
        headers={"content-type": "application/json"},
    )
    assert_error(response, 413, "PAYLOAD_TOO_LARGE")


async def test_unknown_sku_is_product_not_found(new_client: NewClient) -> None:
    client = await new_client()
    assert_error(await client.order(unique("NOPE")), 400, "PRODUCT_NOT_FOUND")


async def test_withdrawn_product_is_product_not_found(
    new_client: NewClient,
    new_product: NewProduct,
    api_admin: httpx.AsyncClient,
    inventory_admin: httpx.AsyncClient,
) -> None:
    sku = await new_product(stock=1)
    client = await new_client()
    withdrawn = await inventory_admin.post(f"/admin/products/{sku}/withdraw")
    assert withdrawn.status_code == 200, withdrawn.text
    version = withdrawn.json()["data"]["version"]

    async def api_sees_withdrawal() -> bool:
        seen = await api_admin.get(f"/admin/products/{sku}")
        return bool(seen.json()["data"]["version"] >= version)

    await wait_until(api_sees_withdrawal, timeout=10)
    assert_error(await client.order(sku), 400, "PRODUCT_NOT_FOUND")
    listed = await client.http.get("/v2/products", params={"sku": sku})
    assert listed.json()["data"]["items"] == []


async def test_product_without_instant_delivery(
    new_client: NewClient, new_product: NewProduct
) -> None:
    sku = await new_product(stock=1, instant=False)
    client = await new_client()
    assert_error(await client.order(sku), 400, "PRODUCT_NOT_INSTANT")


async def test_insufficient_balance_charges_nothing(
    new_client: NewClient, new_product: NewProduct
) -> None:
    sku = await new_product(price="9.75", stock=1)
    client = await new_client(balance="9.74")
    assert_error(await client.order(sku), 400, "INSUFFICIENT_BALANCE")
    assert await client.balance() == Decimal("9.74")
    assert (await client.http.get("/v2/orders")).json()["data"]["total"] == 0


async def test_balance_spread_over_slots_is_spent_to_the_last_cent(
    new_client: NewClient, new_product: NewProduct
) -> None:
    # 1.00 in 16 slots is 0.06 or 0.07 each: no single slot can pay 0.50, the sum can.
    sku = await new_product(price="0.50", stock=0)
    client = await new_client(balance="1.00")
    assert (await client.order(sku)).status_code == 200
    assert (await client.order(sku)).status_code == 200
    assert_error(await client.order(sku), 400, "INSUFFICIENT_BALANCE")
    assert await client.balance() == Decimal("0.00")


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"x-api-key": "ak_x"},
        {"Authorization": "Bearer tk_x"},
        {"x-api-key": "ak_unknown", "Authorization": "Bearer tk_unknown"},
        {"x-api-key": "ak_x", "Authorization": "Basic dXNlcjpwYXNz"},
        {"x-api-key": "ak_x", "Authorization": "Bearer"},
    ],
)
async def test_missing_or_unknown_credentials_are_401(
    stack: Stack, headers: dict[str, str]
) -> None:
    async with httpx.AsyncClient(base_url=str(stack.api_url)) as http:
        for method, path in (
            ("POST", "/v2/orders/instant"),
            ("GET", "/v2/orders"),
            ("GET", "/v2/balances"),
            ("GET", "/v2/products"),
        ):
            response = await http.request(method, path, headers=headers, json={"sku": "A"})
            assert_error(response, 401, "UNAUTHORIZED")


async def test_key_and_token_of_different_accounts_are_401(new_client: NewClient) -> None:
    a, b = await new_client(), await new_client()
    mixed = {
        "x-api-key": a.http.headers["x-api-key"],
        "Authorization": b.http.headers["Authorization"],
    }
    response = await a.http.get("/v2/orders", headers=mixed)
    body = assert_error(response, 401, "UNAUTHORIZED")
    assert "key" not in str(body["message"]).split(":")[0].lower()  # does not say which was wrong


async def test_rotated_token_stops_working_and_the_new_one_works(
    new_client: NewClient, api_admin: httpx.AsyncClient
) -> None:
    client = await new_client()
    assert (await client.http.get("/v2/balances")).status_code == 200
    rotated = await api_admin.post(
        f"/admin/accounts/{client.account_id}/rotate-token", json={"graceSeconds": 0}
    )
    assert rotated.status_code == 200, rotated.text
    new_token = rotated.json()["data"]["accessToken"]

    async def old_token_refused() -> bool:
        return (await client.http.get("/v2/balances")).status_code == 401

    await wait_until(old_token_refused, timeout=15, interval=0.5)
    fresh = await client.http.get("/v2/balances", headers={"Authorization": f"Bearer {new_token}"})
    assert fresh.status_code == 200


async def test_dup_check_conflict_is_409_with_the_existing_order(
    new_client: NewClient, new_product: NewProduct
) -> None:
    sku = await new_product(stock=0)
    client = await new_client()
    first = await client.order(sku, clientOrderNumber="X-1", enableClientOrderNumberDupCheck=True)
    second = await client.order(sku, clientOrderNumber="X-1", enableClientOrderNumberDupCheck=True)
    body = assert_error(second, 409, "CLIENT_ORDER_NUMBER_DUPLICATE")
    assert body["clientOrderNumber"] == "X-1"
    assert body["transactionId"] == first.json()["data"]["transactionId"]


async def test_currency_the_account_does_not_hold_is_422(
    new_client: NewClient, new_product: NewProduct
) -> None:
    usd_sku = await new_product(stock=0)
    eur_sku = await new_product(stock=0, currency="EUR")
    client = await new_client(currency="USD")
    assert_error(await client.order(usd_sku, payWithCurrency="EUR"), 422, "UNSUPPORTED_CURRENCY")
    assert_error(await client.order(eur_sku), 422, "UNSUPPORTED_CURRENCY")
    assert await client.balance() == Decimal("1000.00")


async def test_over_the_accounts_rate_limit_is_429_with_retry_after(
    new_client: NewClient,
) -> None:
    client: Client = await new_client(rateLimitPerSecond="1")
    statuses = [(await client.http.get("/v2/balances")) for _ in range(3)]
    limited = [r for r in statuses if r.status_code == 429]
    assert limited, [r.status_code for r in statuses]
    assert_error(limited[0], 429, "RATE_LIMITED")
    assert int(limited[0].headers["Retry-After"]) >= 1


async def test_unknown_path_is_a_json_404(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=str(stack.api_url)) as http:
        assert_error(await http.get("/v2/nothing-here"), 404, "NOT_FOUND")
