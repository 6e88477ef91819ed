"""Kafka subscribers of the api: inventory's outcomes and the product catalog."""

from collections.abc import Callable, Sequence

import asyncpg
from aiokafka import AIOKafkaProducer
from faststream.kafka import KafkaBroker

from services.api.adapters import repository as repo
from services.api.service_layer import orders
from shared import topics
from shared.consumers import subscribe, subscribe_batched
from shared.contracts import (
    BackorderAllocated,
    BackorderCancelled,
    InventoryEvent,
    OrderBackordered,
    OrderReserved,
    ProductSnapshot,
    inventory_event,
)
from shared.db import Conn
from shared.settings import ApiSettings

# What the api follows of inventory.events; stock and waiting notices are not decoded.
API_EVENT_TYPES = frozenset(
    {"OrderReserved", "BackorderAllocated", "OrderBackordered", "BackorderCancelled"}
)


def register(
    broker: KafkaBroker,
    pool_of: Callable[[], asyncpg.Pool],
    producer_of: Callable[[], AIOKafkaProducer],
    settings: ApiSettings,
) -> None:
    """`pool_of()` / `producer_of()` give the runtime's pool and producer once started."""

    async def apply_inventory_events(conn: Conn, events: Sequence[InventoryEvent]) -> None:
        # Allocations in a row are recorded in one statement; the events' order is kept.
        allocations: list[tuple[str, int, str]] = []
        for event in events:
            if isinstance(event, OrderReserved | BackorderAllocated):
                allocations.append((event.transaction_id, event.stock_id, event.sealed_code))
                continue
            await orders.record_allocations(conn, allocations)
            allocations = []
            await apply_inventory_event(conn, event)
        await orders.record_allocations(conn, allocations)

    async def apply_inventory_event(conn: Conn, event: InventoryEvent) -> None:
        match event:
            case OrderBackordered():
                await orders.record_backorder(conn, event.transaction_id)
            case BackorderCancelled():
                await orders.record_cancellation(
                    conn, event.transaction_id, event.reason, settings.wallet_slots
                )
            case _:
                pass  # stock and waiting notices are fulfilment's business (not delivered)

    async def apply_snapshot(snapshot: ProductSnapshot) -> None:
        record = snapshot.model_dump(mode="json", by_alias=True, exclude={"version"})
        async with pool_of().acquire() as conn:
            await repo.upsert_product(conn, record, snapshot.version)

    subscribe_batched(
        broker,
        topics.INVENTORY_EVENTS,
        group_id="api",
        name="api.inventory-events",
        parse=inventory_event.validate_json,
        apply=apply_inventory_events,
        types=API_EVENT_TYPES,
        pool_of=pool_of,
        producer_of=producer_of,
        max_retries=settings.consumer_max_retries,
    )
    subscribe(
        broker,
        topics.CATALOG_PRODUCTS,
        group_id="api-catalog",
        name="api.catalog",
        parse=ProductSnapshot.model_validate_json,
        handle=apply_snapshot,
        producer_of=producer_of,
        max_retries=settings.consumer_max_retries,
    )
