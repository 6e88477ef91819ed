"""Credentials an operator ends stop working within the auth cache's bound, on every api
process; an account disabled authenticates with nothing until it is enabled again."""

import asyncio

import httpx
import pytest

from tests.conftest import Stack
from tests.e2e.conftest import Client, NewClient
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e

# What a test allows on top of the bound the api states: one poll, and a loaded machine.
SLACK_S = 1.5


async def status_on_fresh_connections(
    stack: Stack, headers: dict[str, str], times: int = 6
) -> set[int]:
    """The status of GET /v2/balances, each time on a new connection: the kernel spreads new
    connections over the api processes (SO_REUSEPORT), so each process's cache is asked."""

    async def once() -> int:
        async with httpx.AsyncClient(base_url=str(stack.api_url), headers=headers) as http:
            return (await http.get("/v2/balances")).status_code

    return set(await asyncio.gather(*(once() for _ in range(times))))


def credentials(client: Client, token: str | None = None) -> dict[str, str]:
    return {
        "x-api-key": client.http.headers["x-api-key"],
        "Authorization": f"Bearer {token}" if token else client.http.headers["Authorization"],
    }


async def answered_within(
    stack: Stack, headers: dict[str, str], status: int, bound_s: float
) -> None:
    """Waits until these credentials get `status` from every process; fails past the bound."""

    async def everywhere() -> bool:
        seen = await status_on_fresh_connections(stack, headers)
        assert seen <= {200, 401}, seen
        return seen == {status}

    await wait_until(
        everywhere, timeout=bound_s + SLACK_S, interval=0.2, message=f"{status} everywhere"
    )


async def test_revoked_tokens_end_within_the_bound_and_the_key_takes_a_new_token(
    urls: Stack, new_client: NewClient, api_admin: httpx.AsyncClient
) -> None:
    client = await new_client()
    assert await status_on_fresh_connections(urls, credentials(client)) == {200}  # cached now

    revoked = await api_admin.post(f"/admin/accounts/{client.account_id}/revoke-token")

    assert revoked.status_code == 200, revoked.text
    data = revoked.json()["data"]
    assert data["tokensRevoked"] == 1
    bound = data["effectiveWithinSeconds"]
    assert 0 <= bound <= 5
    await answered_within(urls, credentials(client), 401, bound)
    again = await api_admin.post(f"/admin/accounts/{client.account_id}/revoke-token")
    assert again.json()["data"]["tokensRevoked"] == 0

    rotated = await api_admin.post(f"/admin/accounts/{client.account_id}/rotate-token")
    new_token = rotated.json()["data"]["accessToken"]
    # The same API key with the new token works at once (a pair never seen is not cached),
    # and the revoked token stays refused through the rotation's grace period.
    assert await status_on_fresh_connections(urls, credentials(client, new_token)) == {200}
    assert await status_on_fresh_connections(urls, credentials(client)) == {401}


async def test_a_disabled_account_authenticates_with_nothing_until_enabled(
    urls: Stack, new_client: NewClient, api_admin: httpx.AsyncClient
) -> None:
    client = await new_client()
    assert await status_on_fresh_connections(urls, credentials(client)) == {200}

    disabled = await api_admin.post(f"/admin/accounts/{client.account_id}/disable")

    assert disabled.status_code == 200, disabled.text
    bound = disabled.json()["data"]["effectiveWithinSeconds"]
    await answered_within(urls, credentials(client), 401, bound)
    shown = (await api_admin.get(f"/admin/accounts/{client.account_id}")).json()["data"]
    assert shown["disabledAt"] == disabled.json()["data"]["disabledAt"]
    # A token issued while disabled does not work either.
    rotated = await api_admin.post(f"/admin/accounts/{client.account_id}/rotate-token")
    new_token = rotated.json()["data"]["accessToken"]
    assert await status_on_fresh_connections(urls, credentials(client, new_token)) == {401}
    order = await client.http.post("/v2/orders/instant", json={"sku": "ANY"})
    assert order.status_code == 401

    enabled = await api_admin.post(f"/admin/accounts/{client.account_id}/enable")

    assert enabled.status_code == 200, enabled.text
    await answered_within(urls, credentials(client, new_token), 200, bound)
    shown = (await api_admin.get(f"/admin/accounts/{client.account_id}")).json()["data"]
    assert shown["disabledAt"] is None


@pytest.mark.parametrize("action", ["revoke-token", "disable", "enable"])
async def test_an_unknown_account_is_404(api_admin: httpx.AsyncClient, action: str) -> None:
    response = await api_admin.post(
        f"/admin/accounts/00000000-0000-0000-0000-000000000000/{action}"
    )
    assert response.status_code == 404
    assert response.json()["error"] == "ACCOUNT_NOT_FOUND"
