"""Credentials an operator ends stop working within the auth cache's bound, on every api
process; an account disabled authenticates with nothing until it is enabled again."""

import asyncio
import importlib
import os
import random
import secrets

import asyncpg
import httpx
import pytest

from tests.conftest import Stack
from tests.e2e.conftest import Client, NewClient, NewProduct
from tests.e2e.test_api_errors import assert_error
from tests.e2e.test_observability import scrape
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
        async with from_address(stack) as http:
            return (await http.get("/v2/balances", headers=headers)).status_code

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


# --- under attack ------------------------------------------------------------------------


BURST = int(os.environ.get("API_AUTH_FAILURE_BURST", "20"))
MAX_LOOKUPS = int(os.environ.get("API_AUTH_MAX_LOOKUPS", "4"))


def api_processes() -> int:
    """How many api processes the local stack runs (each has its own cache and counts)."""
    from_env = os.environ.get("API_PROCESSES")
    if from_env:
        return int(from_env)
    environment = importlib.import_module("deploy.local.devstack.environment")
    return int(environment.default_api_processes())


def from_address(stack: Stack, address: str | None = None) -> httpx.AsyncClient:
    """A client whose connections come from their own loopback address (127.x.y.z), which
    no other test uses: the api throttles failures per client address."""
    address = address or ".".join(["127", *(str(random.randint(1, 254)) for _ in range(3))])
    return httpx.AsyncClient(
        base_url=str(stack.api_url),
        transport=httpx.AsyncHTTPTransport(local_address=address),
        timeout=30,
    )


def guess(prefix: str | None = None) -> dict[str, str]:
    """Credentials nobody was issued; `prefix`: the first 11 characters of the key."""
    key = (prefix or f"ak_{secrets.token_hex(4)}") + secrets.token_hex(16)
    return {"x-api-key": key, "Authorization": f"Bearer tk_{secrets.token_hex(16)}"}


async def test_failed_logins_from_one_address_are_throttled_with_retry_after(
    urls: Stack, new_client: NewClient
) -> None:
    client = await new_client()
    async with from_address(urls) as http, from_address(urls) as elsewhere:
        # One connection: one api process, whose cache and counts this test sees.
        assert (await http.get("/v2/balances", headers=credentials(client))).status_code == 200
        for _ in range(BURST):
            refused = await http.get("/v2/balances", headers=guess())
            assert refused.status_code == 401, refused.text

        throttled = await http.get("/v2/balances", headers=guess())

        body = assert_error(throttled, 429, "RATE_LIMITED")
        assert "retry after" in str(body["message"])
        assert int(throttled.headers["retry-after"]) >= 1
        # A client whose credentials were checked already is not slowed down...
        assert (await http.get("/v2/balances", headers=credentials(client))).status_code == 200
        # ...nor are other addresses.
        assert (await elsewhere.get("/v2/balances", headers=guess())).status_code == 401


async def test_an_api_key_failing_from_many_addresses_is_throttled(urls: Stack) -> None:
    prefix = f"ak_{secrets.token_hex(4)}"
    before = await scrape(str(urls.api_admin_url))
    statuses: list[int] = []
    # Each address stays below its own allowance; the key's prefix goes past its allowance
    # in every api process.
    per_address = BURST // 2
    for _ in range(2 * api_processes() + 2):
        async with from_address(urls) as http:
            for _ in range(per_address):
                statuses.append((await http.get("/v2/balances", headers=guess(prefix))).status_code)

    assert set(statuses) == {401, 429}
    after = await scrape(str(urls.api_admin_url))
    throttled = "auth_throttled_total"
    assert after.value(throttled, by="key_prefix") > before.value(throttled, by="key_prefix")


async def test_an_unknown_key_is_looked_up_once_whatever_its_tokens(urls: Stack) -> None:
    key = guess()["x-api-key"]
    before = await scrape(str(urls.api_admin_url))
    async with from_address(urls) as http:
        for n in range(5):
            headers = {"x-api-key": key, "Authorization": f"Bearer tk_{n}"}
            assert (await http.get("/v2/balances", headers=headers)).status_code == 401

    after = await scrape(str(urls.api_admin_url))

    def more(answer: str) -> float:
        return after.value("auth_lookups_total", answer=answer) - before.value(
            "auth_lookups_total", answer=answer
        )

    assert (more("database"), more("refused_cache")) == (1, 4)
    failures = "auth_failures_total"
    assert after.value(failures, reason="invalid") - before.value(failures, reason="invalid") == 5


# Read on a connection of its own: within a transaction, pg_stat_activity is a snapshot.
LOOKUPS_WAITING = """
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND wait_event_type = 'Lock'
  AND query LIKE '%FROM credentials c JOIN accounts%'
"""


async def test_lookups_held_up_leave_the_pool_to_orders(
    urls: Stack, new_client: NewClient, new_product: NewProduct
) -> None:
    sku = await new_product(stock=5)
    buyer = await new_client()
    assert (await buyer.http.get("/v2/balances")).status_code == 200  # its process knows it
    blocker = await asyncpg.connect(urls.api_db_url)
    observer = await asyncpg.connect(urls.api_db_url)
    try:
        held = blocker.transaction()
        await held.start()
        # Every credential lookup now waits on this lock, holding the connection it runs on.
        await blocker.execute("LOCK TABLE credentials IN ACCESS EXCLUSIVE MODE")
        async with from_address(urls) as attacker:
            flood = [
                asyncio.create_task(attacker.get("/v2/balances", headers=guess()))
                for _ in range(12 * api_processes() * MAX_LOOKUPS)
            ]
            try:

                async def lookups_waiting() -> int:
                    return int(await observer.fetchval(LOOKUPS_WAITING))

                async def saturated() -> bool:  # a process's slots for new credentials
                    return await lookups_waiting() >= MAX_LOOKUPS - MAX_LOOKUPS // 2

                await wait_until(saturated, message="lookups waiting on the lock")
                for _ in range(5):
                    order = buyer.http.post("/v2/orders/instant", json={"sku": sku})
                    placed = await asyncio.wait_for(order, 2.0)
                    assert placed.status_code == 200, placed.text
                    assert placed.json()["data"]["status"] == "COMPLETED"
                assert await lookups_waiting() <= MAX_LOOKUPS * api_processes()
                # The checks that found every lookup slot busy give up (503) after a second.
                await wait_until(lambda: any(t.done() for t in flood), message="one gave up")
            finally:
                await held.rollback()
            answers = await asyncio.gather(*flood)
    finally:
        await blocker.close()
        await observer.close()
    assert {a.status_code for a in answers} <= {401, 503}
    assert 503 in {a.status_code for a in answers}  # those that could not start a lookup
