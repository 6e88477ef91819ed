"""Kafka subscribers of fulfilment: inventory's events and the product catalog."""

from collections.abc import Callable

import asyncpg
from aiokafka import AIOKafkaProducer
from faststream.kafka import KafkaBroker

from services.fulfilment.service_layer.backorders import Backorders
from shared import topics
from shared.consumers import subscribe, subscribe_batched
from shared.contracts import ProductSnapshot, inventory_event
from shared.settings import FulfilmentSettings

# Every instant order in stock makes an OrderReserved, which fulfilment has no use for: it is
# passed over undecoded (see Backorders.on_inventory_events).
FULFILMENT_EVENT_TYPES = frozenset(
    {
        "OrderBackordered",
        "StockArrived",
        "BackorderAllocated",
        "BackorderStillWaiting",
        "BackorderCancelled",
    }
)


def register(
    broker: KafkaBroker,
    pool_of: Callable[[], asyncpg.Pool],
    producer_of: Callable[[], AIOKafkaProducer],
    backorders: Backorders,
    settings: FulfilmentSettings,
) -> None:
    async def apply_product(product: ProductSnapshot) -> None:
        async with pool_of().acquire() as conn, conn.transaction():
            await backorders.on_product(conn, product)

    subscribe_batched(
        broker,
        topics.INVENTORY_EVENTS,
        group_id="fulfilment",
        name="fulfilment.inventory-events",
        parse=inventory_event.validate_json,
        apply=backorders.on_inventory_events,
        types=FULFILMENT_EVENT_TYPES,
        pool_of=pool_of,
        producer_of=producer_of,
        max_retries=settings.consumer_max_retries,
    )
    subscribe(
        broker,
        topics.CATALOG_PRODUCTS,
        group_id="fulfilment-catalog",
        name="fulfilment.catalog",
        parse=ProductSnapshot.model_validate_json,
        handle=apply_product,
        producer_of=producer_of,
        max_retries=settings.consumer_max_retries,
    )
