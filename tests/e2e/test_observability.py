"""What an SRE sees: orders driven through the running stack move each service's /metrics
(read with the official Prometheus parser) by the right amounts, and Prometheus itself (the
local stack runs one) sees the services up, and sees a stopped inventory as down, with the
inventory group's lag and the orders waiting for a decision growing, then falling back."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from shared import topics
from shared.contracts import OrderBackordered, PlaceOrder
from tests.conftest import Stack, StackCtl
from tests.e2e.conftest import Client, NewClient, NewProduct, pipeline_idle
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e

SERVICES = ("api", "inventory", "fulfilment")


@dataclass(frozen=True)
class Scrape:
    """One reading of a service's /metrics."""

    samples: tuple[tuple[str, Mapping[str, str], float], ...]

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples called `name` whose labels include `labels` (0 if none)."""
        return sum(
            v
            for n, have, v in self.samples
            if n == name and all(have.get(k) == w for k, w in labels.items())
        )

    def has(self, name: str, **labels: str) -> bool:
        return any(
            n == name and all(have.get(k) == w for k, w in labels.items())
            for n, have, _ in self.samples
        )

    def label_values(self, name: str, label: str, **labels: str) -> set[str]:
        return {
            have[label]
            for n, have, _ in self.samples
            if n == name and label in have and all(have.get(k) == w for k, w in labels.items())
        }


async def scrape(url: str) -> Scrape:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(f"{url}/metrics")
    assert response.status_code == 200, response.text
    samples = tuple(
        (s.name, dict(s.labels), s.value)
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    )
    return Scrape(samples)


async def scrape_all(stack: Stack) -> dict[str, Scrape]:
    urls = {
        "api": stack.api_admin_url,
        "inventory": stack.inventory_url,
        "fulfilment": stack.fulfilment_url,
    }
    return {name: await scrape(str(url)) for name, url in urls.items()}


async def order(client: Client, sku: str, status: str) -> str:
    response = await client.order(sku)
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert data["status"] == status, data
    transaction_id: str = data["transactionId"]
    return transaction_id


async def test_orders_move_every_services_counters(
    urls: Stack,
    new_client: NewClient,
    new_product: NewProduct,
    inventory_admin: httpx.AsyncClient,
) -> None:
    sku = await new_product(price="2.00", stock=3)
    client = await new_client(balance="20.00")
    poor = await new_client(balance="1.00")
    await wait_until(lambda: pipeline_idle(urls), timeout=30, message="the pipeline is idle")
    before = await scrape_all(urls)

    served = [await order(client, sku, "COMPLETED") for _ in range(3)]
    waiting = await order(client, sku, "PROCESSING")  # out of stock: backordered
    refused = await poor.order(sku)
    assert refused.status_code == 400
    assert refused.json()["error"] == "INSUFFICIENT_BALANCE"

    async def fulfilment_sees_it_waiting() -> bool:
        return (await scrape(str(urls.fulfilment_url))).value(
            "fulfilment_backorders_waiting", sku=sku
        ) == 1

    await wait_until(fulfilment_sees_it_waiting, timeout=15, message="backorders_waiting{sku} 1")
    added = await inventory_admin.post(f"/admin/products/{sku}/stock", json={"generate": 1})
    assert added.status_code == 200, added.text

    async def backorder_completed() -> bool:
        return (await client.get_order(waiting))["status"] == "COMPLETED"

    await wait_until(backorder_completed, timeout=15, message="the backorder completes")
    assert len(served) == 3

    async def settled() -> dict[str, Scrape]:
        """Once the read model, fulfilment and the gauges have caught up."""
        now = await scrape_all(urls)
        api, inventory, fulfilment = (now[s] for s in SERVICES)
        done = (
            api.value("orders_transitions_total", to="COMPLETED")
            - before["api"].value("orders_transitions_total", to="COMPLETED")
            >= 4
            and fulfilment.value("fulfilment_backorders_completed_total")
            > before["fulfilment"].value("fulfilment_backorders_completed_total")
            and fulfilment.value("fulfilment_backorders_waiting", sku=sku) == 0
            and inventory.value("inventory_codes_available", sku=sku) == 0
        )
        return now if done else {}

    after = await wait_until(settled, timeout=20, message="metrics settle")

    def delta(service: str, name: str, /, **labels: str) -> float:
        return after[service].value(name, **labels) - before[service].value(name, **labels)

    # api: the answers given, the refusal, the decision latency, HTTP, the read model.
    assert delta("api", "orders_accepted_total", outcome="completed") == 3
    assert delta("api", "orders_accepted_total", outcome="processing") == 1
    assert delta("api", "orders_rejected_total", error="INSUFFICIENT_BALANCE") == 1
    decided = delta("api", "orders_instant_decision_seconds_count")
    timeouts = delta("api", "orders_decision_window_timeouts_total")
    assert decided + timeouts == 4
    assert decided >= 3  # the three served at once had their decision in the window
    assert delta("api", "orders_instant_decision_seconds_bucket", le="+Inf") == decided
    assert delta("api", "orders_instant_decision_seconds_sum") > 0
    route = {"route": "/v2/orders/instant", "method": "POST"}
    assert delta("api", "http_requests_total", status="200", **route) == 4
    assert delta("api", "http_requests_total", status="400", **route) == 1
    assert delta("api", "http_request_duration_seconds_count", **route) == 5
    assert delta("api", "orders_transitions_total", to="COMPLETED") == 4
    assert delta("api", "outbox_published_total", service="api") >= 9  # accepted 4, done 4, ...
    assert delta("api", "faststream_received_processed_messages_total") > 0
    assert after["api"].label_values("orders_processing", "stage") == {
        "awaiting_decision",
        "backordered",
    }

    # inventory: codes sold at once and to the backorder, the backorder, the stock.
    assert delta("inventory", "inventory_code_claims_total", outcome="reserved") == 3
    assert delta("inventory", "inventory_code_claims_total", outcome="allocated") == 1
    assert delta("inventory", "inventory_backorders_created_total") == 1
    commands = delta("inventory", "inventory_decision_seconds_count")
    assert commands >= 5  # 4 orders, 1 allocation
    # Every command decided was in one batch, and a batch holds at least one.
    assert delta("inventory", "inventory_decision_batch_size_sum") == commands
    assert 1 <= delta("inventory", "inventory_decision_batch_size_count") <= commands
    assert after["inventory"].value("inventory_codes_available", sku=sku) == 0

    # fulfilment: the backorder waited, was allocated and completed.
    assert delta("fulfilment", "fulfilment_backorders_completed_total") == 1
    assert delta("fulfilment", "fulfilment_allocation_requests_total") >= 1
    assert delta("fulfilment", "faststream_received_processed_messages_total") > 0

    # Every service reports the lag of its groups and of the groups it feeds.
    partitions = {str(p) for p in range(topics.INVENTORY_COMMANDS.partitions)}
    for service in ("api", "fulfilment"):
        found = after[service].label_values(
            "kafka_consumer_lag_messages", "partition", group="inventory"
        )
        assert found == partitions, service
    groups = after["inventory"].label_values("kafka_consumer_lag_messages", "group")
    assert groups == {"inventory", "api", "api-catalog", "fulfilment", "fulfilment-catalog"}
    for service in SERVICES:
        assert after[service].value("kafka_consumer_lag_last_refresh_timestamp_seconds") > 0


async def test_every_service_froze_its_start_and_times_its_collections(urls: Stack) -> None:
    """The start's objects are out of the collector's reach (a full collection of the api
    took about 100 ms without it at 300 orders/s), and each pause is timed by generation:
    the full collection just before the freeze is one of them."""
    for service, now in (await scrape_all(urls)).items():
        assert now.value("python_gc_frozen_objects", service=service) > 10_000, service
        assert now.value("python_gc_pause_seconds_count", service=service, generation="2") >= 1
        assert now.value("python_gc_pause_seconds_count", service=service, generation="0") > 0


async def test_redelivered_messages_are_counted_and_change_nothing(
    urls: Stack, stack: Stack, new_client: NewClient, new_product: NewProduct
) -> None:
    sku = await new_product(price="1.00", stock=1)
    client = await new_client()
    served = await order(client, sku, "COMPLETED")
    waiting = await order(client, sku, "PROCESSING")
    account = uuid.UUID(client.account_id)
    before = await scrape_all(urls)

    # The order request and the backorder announcement, delivered once more.
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap)
    await producer.start()
    try:
        again = PlaceOrder(
            transaction_id=served,
            account_id=account,
            sku=sku,
            unit_price=Decimal("1.00"),
            currency="USD",
            placed_at=datetime.now(UTC),
        )
        await producer.send_and_wait(
            topics.INVENTORY_COMMANDS.name, again.to_bytes(), key=sku.encode()
        )
        announced = OrderBackordered(
            transaction_id=waiting,
            account_id=account,
            sku=sku,
            placed_at=datetime.now(UTC),
        )
        await producer.send_and_wait(
            topics.INVENTORY_EVENTS.name, announced.to_bytes(), key=sku.encode()
        )
    finally:
        await producer.stop()

    def delta(now: Mapping[str, Scrape], service: str, name: str, /, **labels: str) -> float:
        return now[service].value(name, **labels) - before[service].value(name, **labels)

    async def both_counted() -> dict[str, Scrape]:
        now = await scrape_all(urls)
        ok = (
            delta(now, "inventory", "consumer_redeliveries_total", consumer="inventory-commands")
            == 1
            and delta(
                now,
                "fulfilment",
                "consumer_redeliveries_total",
                consumer="fulfilment.inventory-events",
            )
            == 1
        )
        return now if ok else {}

    await wait_until(both_counted, timeout=15, message="both redeliveries counted")
    # Nothing happened twice: no second code for the served order (per-SKU series, so that
    # other activity on the stack does not blur it), no second backorder.
    assert (await scrape(str(urls.inventory_url))).value("inventory_codes_available", sku=sku) == 0
    assert [c["status"] for c in await client.codes(served)] == ["COMPLETED"]
    assert (await client.get_order(waiting))["status"] == "PROCESSING"


# --- Prometheus ------------------------------------------------------------------------------


@dataclass
class Prometheus:
    http: httpx.AsyncClient

    async def query(self, promql: str) -> list[dict[str, Any]]:
        response = await self.http.get("/api/v1/query", params={"query": promql})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    async def value(self, promql: str) -> float | None:
        """The value of a query that yields one series; None when it yields none."""
        result = await self.query(promql)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    async def up(self) -> dict[str, float]:
        return {
            r["metric"]["service"]: float(r["value"][1])
            for r in await self.query('up{job="instant-orders"}')
        }


@pytest.fixture
async def prometheus(stack: Stack) -> AsyncIterator[Prometheus]:
    if not stack.local:
        pytest.skip("Prometheus runs with the local stack: run `make test`")
    url = os.environ.get("PROMETHEUS_URL") or (
        f"http://127.0.0.1:{os.environ.get('PROMETHEUS_PORT', '9090')}"
    )
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        try:
            ready = (await http.get("/-/ready")).status_code
        except httpx.TransportError:
            ready = None
        if ready != 200:
            pytest.fail(
                f"Prometheus does not answer at {url} (GET /-/ready: {ready}): start it with "
                "`python3 deploy/local/stack.py start prometheus` (`make up` starts it too).",
                pytrace=False,
            )
        yield Prometheus(http)


async def test_prometheus_sees_the_three_services_up(prometheus: Prometheus) -> None:
    async def all_up() -> bool:
        return await prometheus.up() == dict.fromkeys(SERVICES, 1.0)

    await wait_until(all_up, timeout=30, interval=0.5, message="up == 1 for the three services")


LAG = 'sum(max by (group, topic, partition) (kafka_consumer_lag_messages{group="inventory"}))'
AWAITING = 'max(orders_processing{stage="awaiting_decision"})'


async def test_a_stopped_inventory_is_down_with_its_lag_and_waiting_orders_growing(
    stack: Stack,
    prometheus: Prometheus,
    stackctl: StackCtl,
    new_client: NewClient,
    new_product: NewProduct,
) -> None:
    sku = await new_product(price="1.00", stock=5)
    client = await new_client()

    async def all_up() -> bool:
        return await prometheus.up() == dict.fromkeys(SERVICES, 1.0)

    await wait_until(all_up, timeout=30, interval=0.5, message="the three services up")
    # A baseline taken while an earlier test's burst drains would be stale (readings are a
    # few seconds old): start from an idle pipeline whose lag Prometheus already reads as 0.
    await wait_until(lambda: pipeline_idle(stack), timeout=30, message="the pipeline is idle")

    async def lag_reads_zero() -> bool:
        return (await prometheus.value(LAG) or 0.0) == 0.0

    await wait_until(lag_reads_zero, timeout=30, interval=0.5, message="lag reads 0")
    lag_before = 0.0
    # From the database, not Prometheus: a reading can still count an order decided a
    # moment ago, and the growth asked for below would then be short by it.
    api = await asyncpg.connect(stack.api_db_url)
    try:
        awaiting_before = float(
            await api.fetchval(
                "SELECT count(*) FROM orders WHERE status = 'PROCESSING' AND backordered_at IS NULL"
            )
        )
    finally:
        await api.close()
    n = 4

    await stackctl("stop", "inventory")
    try:

        async def inventory_down() -> bool:
            return (await prometheus.up()).get("inventory") == 0

        await wait_until(inventory_down, timeout=20, interval=0.5, message="up{inventory} == 0")
        ids = [await order(client, sku, "PROCESSING") for _ in range(n)]

        async def grown() -> bool:
            lag = await prometheus.value(LAG) or 0.0
            awaiting = await prometheus.value(AWAITING) or 0.0
            # an AssertionError means "not yet"; the last one says what was read
            assert lag >= lag_before + n, f"lag {lag}, from {lag_before}"
            assert awaiting >= awaiting_before + n, f"awaiting {awaiting}, from {awaiting_before}"
            return True

        await wait_until(grown, timeout=20, interval=0.5, message="lag and awaiting orders grow")
    finally:
        await stackctl("start", "inventory")

    await wait_until(all_up, timeout=30, interval=0.5, message="inventory up again")

    async def fallen_back() -> bool:
        lag = await prometheus.value(LAG) or 0.0
        awaiting = await prometheus.value(AWAITING) or 0.0
        return lag <= lag_before and awaiting <= awaiting_before

    await wait_until(fallen_back, timeout=30, interval=0.5, message="lag and awaiting fall back")
    assert [(await client.get_order(t))["status"] for t in ids] == ["COMPLETED"] * n
