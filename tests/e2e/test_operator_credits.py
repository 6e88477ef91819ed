"""An operator's credit is applied once per idempotency key, over HTTP against the running
api: retried (one after the other, or all at once) it adds nothing more; the key reused for
another credit is refused with 409 and says what it was used for."""

import asyncio
from decimal import Decimal
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import NewClient
from tests.e2e.test_api_errors import assert_error
from tests.helpers import unique

pytestmark = pytest.mark.e2e


async def credit(
    api_admin: httpx.AsyncClient, account_id: str, key: str | None, **body: Any
) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key is not None else {}
    return await api_admin.post(
        f"/admin/accounts/{account_id}/credit",
        json={"amount": "10.00", "currency": "USD", **body},
        headers=headers,
    )


async def test_a_retried_credit_is_applied_once(
    new_client: NewClient, api_admin: httpx.AsyncClient
) -> None:
    client = await new_client(balance="1.00")
    key = unique("op")

    first = await credit(api_admin, client.account_id, key)
    again = await credit(api_admin, client.account_id, key, amount="10")

    assert first.status_code == again.status_code == 200, (first.text, again.text)
    assert (first.json()["data"]["replayed"], again.json()["data"]["replayed"]) == (False, True)
    assert again.json()["data"]["idempotencyKey"] == key
    assert again.json()["data"]["balances"] == [{"balance": "11.00", "currency": "USD"}]
    assert await client.balance() == Decimal("11.00")


async def test_retries_sent_at_once_apply_the_credit_once(
    new_client: NewClient, api_admin: httpx.AsyncClient
) -> None:
    client = await new_client(balance="1.00")
    key = unique("op")

    answers = await asyncio.gather(*(credit(api_admin, client.account_id, key) for _ in range(8)))

    assert {a.status_code for a in answers} == {200}
    assert sorted(a.json()["data"]["replayed"] for a in answers) == [False] + [True] * 7
    assert await client.balance() == Decimal("11.00")


@pytest.mark.parametrize("changed", [{"amount": "10.01"}, {"currency": "EUR"}])
async def test_a_key_reused_for_another_credit_is_409(
    new_client: NewClient, api_admin: httpx.AsyncClient, changed: dict[str, str]
) -> None:
    client = await new_client(balance="1.00")
    key = unique("op")
    assert (await credit(api_admin, client.account_id, key)).status_code == 200

    reused = await credit(api_admin, client.account_id, key, **changed)

    body = assert_error(reused, 409, "IDEMPOTENCY_KEY_REUSED")
    assert "10.00 USD" in str(body["message"])
    assert "new key" in str(body["message"])
    assert body["earlier"] == {
        "accountId": client.account_id,
        "amount": "10.00",
        "currency": "USD",
        "at": body["earlier"]["at"],  # type: ignore[index]
    }
    assert await client.balance() == Decimal("11.00")


async def test_a_credit_without_a_key_is_refused_and_says_how_to_send_one(
    new_client: NewClient, api_admin: httpx.AsyncClient
) -> None:
    client = await new_client(balance="1.00")

    refused = await credit(api_admin, client.account_id, None)

    body = assert_error(refused, 400, "IDEMPOTENCY_KEY_MISSING")
    assert "Idempotency-Key" in str(body["message"])
    spaced = await credit(api_admin, client.account_id, "two words")
    assert_error(spaced, 400, "INVALID_REQUEST")
    assert await client.balance() == Decimal("1.00")
