"""Kafka subscribers of the api: inventory's outcomes and the product catalog."""

from collections.abc import Callable, Sequence

import asyncpg
from aiokafka import AIOKafkaProducer
from faststream.kafka import KafkaBroker

from services.api.service_layer import orders, read_model
from services.api.service_layer.unit_of_work import UnitOfWork
from shared import topics
from shared.consumers import subscribe, subscribe_batched
from shared.contracts import InventoryEvent, ProductSnapshot, inventory_event
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
    new_uow: Callable[[], UnitOfWork],
    uow_on: Callable[[Conn], UnitOfWork],
    settings: ApiSettings,
) -> None:
    """`pool_of()` / `producer_of()` give the runtime's pool and producer once started;
    `uow_on`: a unit of work inside the transaction the batch subscriber holds open."""

    async def follow_inventory(conn: Conn, events: Sequence[InventoryEvent]) -> None:
        await orders.follow_inventory(uow_on(conn), events, settings.wallet_slots)

    async def apply_product(snapshot: ProductSnapshot) -> None:
        await read_model.apply_product(new_uow(), snapshot)

    subscribe_batched(
        broker,
        topics.INVENTORY_EVENTS,
        group_id="api",
        name="api.inventory-events",
        parse=inventory_event.validate_json,
        apply=follow_inventory,
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
        handle=apply_product,
        producer_of=producer_of,
        max_retries=settings.consumer_max_retries,
    )
