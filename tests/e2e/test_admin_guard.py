"""Failed admin authentications on the running services: each is logged with who, method and
path (never the token presented) and counted; an address that keeps failing is answered 429
RATE_LIMITED, even with the right token, while other addresses are not."""

import json
import os
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared.settings import CommonSettings
from tests.conftest import Stack
from tests.e2e.conftest import admin_client, log_dir
from tests.helpers import loopback_address_of_its_own, unique, wait_until

pytestmark = pytest.mark.e2e


def max_failures() -> int:
    configured = os.environ.get("ADMIN_AUTH_MAX_FAILURES")
    default = CommonSettings.model_fields["admin_auth_max_failures"].default
    return int(configured) if configured else int(default)


async def failures_counted(admin_url: str, reason: str) -> float:
    async with httpx.AsyncClient(timeout=10) as http:
        text = (await http.get(f"{admin_url}/metrics")).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "admin_auth_failures_total" and s.labels.get("reason") == reason
    )


def log_since(service: str, start: dict[Path, int]) -> list[dict[str, str]]:
    path = log_dir() / f"{service}.log"
    with path.open("rb") as log:
        log.seek(start.get(path, 0))
        lines = log.read().decode(errors="replace").splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


# Each service's admin address and an admin request of it; a read is refused the same way.
ADMIN_REQUESTS = {
    "api": ("api_admin_url", "POST", "/admin/accounts"),
    "inventory": ("inventory_url", "POST", "/admin/products/NEVER-1/withdraw"),
    "fulfilment": ("fulfilment_url", "GET", "/admin/backorders"),
}


@pytest.mark.parametrize("service", list(ADMIN_REQUESTS))
async def test_failed_admin_authentications_are_logged_without_the_token_and_throttled(
    urls: Stack, service: str, log_sizes_at_start: dict[Path, int]
) -> None:
    attribute, method, path = ADMIN_REQUESTS[service]
    admin_url = str(getattr(urls, attribute))
    address, wrong = loopback_address_of_its_own(), unique("not-the-admin-token")
    limit = max_failures()
    invalid_before = await failures_counted(admin_url, "invalid")
    # One connection: one process of the service, which counts the failures it sees.
    async with httpx.AsyncClient(
        transport=httpx.AsyncHTTPTransport(local_address=address), base_url=admin_url, timeout=10
    ) as http:

        async def send(token: str) -> httpx.Response:
            return await http.request(method, path, headers={"Authorization": f"Bearer {token}"})

        statuses = [(await send(wrong)).status_code for _ in range(limit)]
        assert statuses == [401] * limit
        throttled = await send(os.environ["ADMIN_TOKEN"])  # not even compared now

    assert throttled.status_code == 429, throttled.text
    body = throttled.json()
    assert set(body) >= {"requestId", "error", "message"}
    assert body["error"] == "RATE_LIMITED"
    assert 1 <= int(throttled.headers["retry-after"]) <= 3600
    # The operators on 127.0.0.1 go on.
    async with admin_client(admin_url) as operator:
        assert (await operator.request(method, path)).status_code not in (401, 429)
    assert await failures_counted(admin_url, "invalid") >= invalid_before + limit

    def logged() -> list[str]:
        mine = [e["msg"] for e in log_since(service, log_sizes_at_start) if address in e["msg"]]
        return mine if len(mine) >= limit + 1 else []

    lines = await wait_until(logged, message=f"{service} logged the failures from {address}")
    failed = [line for line in lines if line.startswith("admin authentication failed")]
    assert len(failed) == limit
    assert all(f"(invalid credential) for {method} {path} from {address}" in f for f in failed)
    assert any(line.startswith(f"admin requests from {address} refused for") for line in lines)
    everything = json.dumps(log_since(service, log_sizes_at_start))
    assert wrong not in everything
    assert os.environ["ADMIN_TOKEN"] not in everything
