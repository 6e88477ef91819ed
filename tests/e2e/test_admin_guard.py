"""Failed admin authentications on the running api: each is logged with who, method and path
(never the token presented) and counted; an address that keeps failing is answered 429
RATE_LIMITED, even with the right token, while other addresses are not."""

import json
import os
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared.settings import CommonSettings
from tests.conftest import Stack
from tests.e2e.conftest import log_dir
from tests.helpers import loopback_address_of_its_own, unique, wait_until

pytestmark = pytest.mark.e2e


def max_failures() -> int:
    configured = os.environ.get("ADMIN_AUTH_MAX_FAILURES")
    default = CommonSettings.model_fields["admin_auth_max_failures"].default
    return int(configured) if configured else int(default)


async def failures_counted(api_admin: httpx.AsyncClient, reason: str) -> float:
    text = (await api_admin.get("/metrics")).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "admin_auth_failures_total" and s.labels.get("reason") == reason
    )


def api_log_since(start: dict[Path, int]) -> list[dict[str, str]]:
    path = log_dir() / "api.log"
    with path.open("rb") as log:
        log.seek(start.get(path, 0))
        lines = log.read().decode(errors="replace").splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


async def test_failed_admin_authentications_are_logged_without_the_token_and_throttled(
    urls: Stack, api_admin: httpx.AsyncClient, log_sizes_at_start: dict[Path, int]
) -> None:
    address, wrong = loopback_address_of_its_own(), unique("not-the-admin-token")
    limit = max_failures()
    invalid_before = await failures_counted(api_admin, "invalid")
    # One connection: one api process, which counts the failures it sees.
    async with httpx.AsyncClient(
        transport=httpx.AsyncHTTPTransport(local_address=address),
        base_url=str(urls.api_admin_url),
        timeout=10,
    ) as http:

        async def create(token: str) -> httpx.Response:
            return await http.post(
                "/admin/accounts",
                json={"name": "never"},
                headers={"Authorization": f"Bearer {token}"},
            )

        statuses = [(await create(wrong)).status_code for _ in range(limit)]
        assert statuses == [401] * limit
        throttled = await create(os.environ["ADMIN_TOKEN"])  # not even compared now

    assert throttled.status_code == 429, throttled.text
    body = throttled.json()
    assert set(body) >= {"requestId", "error", "message"}
    assert body["error"] == "RATE_LIMITED"
    assert 1 <= int(throttled.headers["retry-after"]) <= 3600
    # The operators on 127.0.0.1 go on.
    assert (await api_admin.get("/admin/accounts/00000000-0000-0000-0000-000000000000")).json()[
        "error"
    ] == "ACCOUNT_NOT_FOUND"
    assert await failures_counted(api_admin, "invalid") >= invalid_before + limit

    def logged() -> list[str]:
        mine = [e["msg"] for e in api_log_since(log_sizes_at_start) if address in e["msg"]]
        return mine if len(mine) >= limit + 1 else []

    lines = await wait_until(logged, message=f"the api logged the failures from {address}")
    failed = [line for line in lines if line.startswith("admin authentication failed")]
    assert len(failed) == limit
    assert all(f"(invalid credential) for POST /admin/accounts from {address}" in f for f in failed)
    assert any(line.startswith(f"admin requests from {address} refused for") for line in lines)
    everything = json.dumps(api_log_since(log_sizes_at_start))
    assert wrong not in everything
    assert os.environ["ADMIN_TOKEN"] not in everything
