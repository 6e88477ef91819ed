"""Kafka subscribers of fulfilment: inventory's events and the product catalog."""

from collections.abc import Callable, Sequence

import asyncpg
from aiokafka import AIOKafkaProducer
from faststream.kafka import KafkaBroker

from services.fulfilment.service_layer import backorders
from services.fulfilment.service_layer.unit_of_work import UnitOfWork
from shared import topics
from shared.consumers import subscribe, subscribe_batched
from shared.contracts import InventoryEvent, ProductSnapshot, inventory_event
from shared.db import Conn
from shared.settings import FulfilmentSettings

# Every instant order in stock makes an OrderReserved, which fulfilment has no use for: it is
# passed over undecoded (see backorders.follow_inventory).
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
    new_uow: Callable[[], UnitOfWork],
    uow_on: Callable[[Conn], UnitOfWork],
    policy: backorders.Policy,
    settings: FulfilmentSettings,
    committed: Callable[[], None],
) -> None:
    """`uow_on`: a unit of work inside the transaction the batch subscriber holds open.
    `committed`: called after each transaction of these handlers commits."""

    async def follow_inventory(conn: Conn, events: Sequence[InventoryEvent]) -> None:
        await backorders.follow_inventory(events, uow_on(conn), policy)

    async def apply_product(product: ProductSnapshot) -> None:
        await backorders.apply_product(product, new_uow(), policy)
        committed()

    subscribe_batched(
        broker,
        topics.INVENTORY_EVENTS,
        group_id="fulfilment",
        name="fulfilment.inventory-events",
        parse=inventory_event.validate_json,
        apply=follow_inventory,
        types=FULFILMENT_EVENT_TYPES,
        pool_of=pool_of,
        producer_of=producer_of,
        max_retries=settings.consumer_max_retries,
        committed=committed,
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
