"""Fixtures that drive the running stack over HTTP, as a client and as an operator would."""

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from shared import topics
from shared.contracts import new_transaction_id
from tests import contract_recording
from tests.conftest import Stack
from tests.helpers import unique, wait_until


def _admin_token() -> str:
    token = os.environ.get("ADMIN_TOKEN")
    if not token:
        pytest.fail("ADMIN_TOKEN is not set: run the tests with `make test`.", pytrace=False)
    return token


@pytest.fixture(scope="session")
def urls(stack: Stack) -> Stack:
    if stack.api_url is None or stack.api_admin_url is None or stack.inventory_url is None:
        message = "these tests drive the running services: run them with `make test`"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return stack


@pytest.fixture(scope="session", autouse=True)
def record_v2_exchanges(stack: Stack) -> Iterator[None]:
    """Every /v2 answer of the session, for the strict-client and OpenAPI checks."""
    if stack.api_url is None or stack.api_admin_url is None:
        yield
        return
    with contract_recording.recording(stack.api_url, stack.api_admin_url):
        yield


@pytest.fixture(scope="session", autouse=True)
def session_started_at(transactions_at_start: dict[str, int]) -> datetime:
    # After the transaction ids: a row stocked since this moment has a newer xmin.
    return datetime.now(UTC)


@pytest.fixture(scope="session", autouse=True)
def log_sizes_at_start() -> dict[Path, int]:
    """How long each service log was when this session began: scans read what came after."""
    return {log: log.stat().st_size for log in log_dir().glob("*.log")}


@pytest.fixture(scope="session", autouse=True)
async def transactions_at_start(stack: Stack) -> dict[str, int]:
    """The current transaction id of each service's database when this session began (as
    `pg_current_xact_id`, with its epoch): a row inserted or updated since has a newer xmin."""
    started: dict[str, int] = {}
    for name in ("api", "inventory", "fulfilment"):
        conn = await asyncpg.connect(stack.db_url(name))
        try:
            started[name] = int(await conn.fetchval("SELECT pg_current_xact_id()::text"))
        finally:
            await conn.close()
    return started


def log_dir() -> Path:
    return Path(os.environ.get("IO_RUN_DIR", ".run")) / "logs"


@pytest.fixture(scope="session", autouse=True)
async def offsets_at_start(stack: Stack) -> dict[TopicPartition, int]:
    """Where every topic ended when this test session began: scans read from there."""
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.kafka_bootstrap, group_id=None)
    await consumer.start()
    try:
        partitions = [TopicPartition(t.name, p) for t in topics.ALL for p in range(t.partitions)]
        ends: dict[TopicPartition, int] = await consumer.end_offsets(partitions)
        return ends
    finally:
        await consumer.stop()


def admin_client(base_url: str | None) -> httpx.AsyncClient:
    """An operator's client of one service's admin API."""
    return httpx.AsyncClient(
        base_url=str(base_url), headers={"Authorization": f"Bearer {_admin_token()}"}, timeout=30
    )


@pytest.fixture(scope="session")
async def api_admin(urls: Stack) -> AsyncIterator[httpx.AsyncClient]:
    """The api's operators' endpoints, on its admin listener."""
    async with admin_client(urls.api_admin_url) as client:
        yield client


@pytest.fixture(scope="session")
async def inventory_admin(urls: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with admin_client(urls.inventory_url) as client:
        yield client


async def order_retrying_503(
    http: httpx.AsyncClient, body: dict[str, Any], patience_s: float = 30.0
) -> httpx.Response:
    deadline = asyncio.get_running_loop().time() + patience_s
    while True:
        response = await http.post("/v2/orders/instant", json=body)
        delay = float(response.headers.get("retry-after", "1"))
        if response.status_code != 503 or asyncio.get_running_loop().time() + delay > deadline:
            return response
        await asyncio.sleep(delay)  # the server's own back-off, not a synchronisation


@dataclass
class Client:
    """One account's view of the public API."""

    account_id: str
    http: httpx.AsyncClient

    async def order(self, sku: str, **fields: Any) -> httpx.Response:
        """Places an instant order as a well-behaved client does: a 503 (the api shed load or
        cannot reach its pipeline; nothing was charged) is retried after its Retry-After, for
        up to 30 s. A test that wants the 503 itself posts with `http`."""
        return await order_retrying_503(self.http, {"sku": sku, **fields})

    async def balance(self, currency: str = "USD") -> Decimal:
        response = await self.http.get("/v2/balances", params={"currency": currency})
        assert response.status_code == 200, response.text
        return Decimal(response.json()["data"][0]["balance"])

    async def get_order(self, transaction_id: str) -> dict[str, Any]:
        response = await self.http.get(f"/v2/orders/{transaction_id}")
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()["data"]
        return data

    async def codes(self, transaction_id: str) -> list[dict[str, Any]]:
        response = await self.http.get(f"/v2/orders/{transaction_id}/codes")
        assert response.status_code == 200, response.text
        codes: list[dict[str, Any]] = response.json()["data"][0]["codes"]
        return codes


NewClient = Callable[..., Awaitable[Client]]


@pytest.fixture
async def new_client(urls: Stack, api_admin: httpx.AsyncClient) -> AsyncIterator[NewClient]:
    opened: list[httpx.AsyncClient] = []

    async def make(balance: str = "1000.00", currency: str = "USD", **extra: Any) -> Client:
        response = await api_admin.post(
            "/admin/accounts",
            json={
                "name": unique("acct"),
                "balances": [{"currency": currency, "amount": balance}],
                **extra,
            },
        )
        assert response.status_code == 200, response.text
        data = response.json()["data"]
        http = httpx.AsyncClient(
            base_url=str(urls.api_url),
            headers={"x-api-key": data["apiKey"], "Authorization": f"Bearer {data['accessToken']}"},
            timeout=30,
        )
        opened.append(http)
        return Client(data["accountId"], http)

    yield make
    for http in opened:
        await http.aclose()


NewProduct = Callable[..., Awaitable[str]]


@pytest.fixture
def new_product(api_admin: httpx.AsyncClient, inventory_admin: httpx.AsyncClient) -> NewProduct:
    """Create a product with `stock` generated codes; returns once the api can sell it."""

    async def make(
        price: str = "9.75",
        stock: int = 0,
        currency: str = "USD",
        instant: bool = True,
        codes: list[dict[str, Any]] | None = None,
        **fields: Any,
    ) -> str:
        sku = unique("SKU")
        response = await inventory_admin.put(
            f"/admin/products/{sku}",
            json={
                "name": f"Card {sku}",
                "currency": currency,
                "price": price,
                "isInstantDeliverySupported": instant,
                **fields,
            },
        )
        assert response.status_code == 200, response.text
        version = response.json()["data"]["version"]
        if stock or codes:
            body: dict[str, Any] = {"codes": codes} if codes else {"generate": stock}
            added = await inventory_admin.post(f"/admin/products/{sku}/stock", json=body)
            assert added.status_code == 200, added.text

        async def api_sees_it() -> bool:
            seen = await api_admin.get(f"/admin/products/{sku}")
            return seen.status_code == 200 and seen.json()["data"]["version"] >= version

        await wait_until(api_sees_it, timeout=10, message=f"api sees product {sku}")
        return sku

    return make


@pytest.fixture(scope="session", autouse=True)
async def warm_pipeline(
    urls: Stack, api_admin: httpx.AsyncClient, inventory_admin: httpx.AsyncClient
) -> None:
    """Order until one order comes back COMPLETED within the decision window, so that tests
    asserting on instant answers do not measure a cold start (first connections, first
    fetches of every consumer)."""
    sku = unique("WARMUP")
    put = await inventory_admin.put(
        f"/admin/products/{sku}", json={"name": "warm-up", "currency": "USD", "price": "0.01"}
    )
    assert put.status_code == 200, put.text
    stocked = await inventory_admin.post(f"/admin/products/{sku}/stock", json={"generate": 50})
    assert stocked.status_code == 200, stocked.text
    account = await api_admin.post(
        "/admin/accounts",
        json={"name": "warm-up", "balances": [{"currency": "USD", "amount": "1.00"}]},
    )
    data = account.json()["data"]
    headers = {"x-api-key": data["apiKey"], "Authorization": f"Bearer {data['accessToken']}"}
    async with httpx.AsyncClient(base_url=str(urls.api_url), headers=headers) as client:

        async def an_instant_completion() -> bool:
            response = await client.post("/v2/orders/instant", json={"sku": sku})
            return response.status_code == 200 and response.json()["data"]["status"] == "COMPLETED"

        await wait_until(
            an_instant_completion,
            timeout=60,
            interval=0.2,
            message="a first order completed within the decision window",
        )


CONSUMER_GROUPS = ("inventory", "api", "api-catalog", "fulfilment", "fulfilment-catalog")


async def debits_of(stack: Stack, transaction_ids: list[str]) -> int:
    """DEBIT ledger rows of these orders, read from the api's database."""
    conn = await asyncpg.connect(stack.api_db_url)
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM ledger WHERE kind = 'DEBIT' AND transaction_id = ANY($1)",
            transaction_ids,
        )
    finally:
        await conn.close()
    return count


async def pipeline_idle(stack: Stack) -> bool:
    """True when every consumer group of the services has consumed every message: tests that
    compare process-wide counters start from there, so no earlier test's tail moves them."""
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.kafka_bootstrap)
    await admin.start()
    await consumer.start()
    try:
        for group in CONSUMER_GROUPS:
            committed = await admin.list_consumer_group_offsets(group)
            ends = await consumer.end_offsets(list(committed))
            if any(ends[tp] > meta.offset for tp, meta in committed.items()):
                return False
        return True
    finally:
        await consumer.stop()
        await admin.close()


async def record_undecided_order(
    stack: Stack, account_id: str, sku: str, age: timedelta, total: str = "2.00"
) -> str:
    """An order as the api records one (paid: its DEBIT is in the ledger), `age` old, whose
    PlaceOrder inventory never applied: lost on the way, or dead-lettered on every delivery."""
    transaction_id = new_transaction_id()
    api = await asyncpg.connect(stack.api_db_url)
    try:
        async with api.transaction():
            await api.execute(
                """
                INSERT INTO orders (transaction_id, account_id, sku, unit_price, currency,
                                    grand_total, status, created_at)
                VALUES ($1, $2, $3, $4, 'USD', $4, 'PROCESSING', $5)
                """,
                transaction_id,
                uuid.UUID(account_id),
                sku,
                Decimal(total),
                datetime.now(UTC) - age,
            )
            await api.execute(
                "INSERT INTO ledger (account_id, currency, amount, kind, transaction_id) "
                "VALUES ($1, 'USD', $2, 'DEBIT', $3)",
                uuid.UUID(account_id),
                -Decimal(total),
                transaction_id,
            )
    finally:
        await api.close()
    return transaction_id
