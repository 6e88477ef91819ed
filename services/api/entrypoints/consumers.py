"""Kafka subscribers of the api: inventory's outcomes and the product catalog."""

from typing import Any

from aiokafka import AIOKafkaProducer
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage

from services.api.adapters import repository as repo
from services.api.service_layer import orders
from shared import topics
from shared.contracts import (
    BackorderAllocated,
    BackorderCancelled,
    OrderBackordered,
    OrderReserved,
    ProductSnapshot,
    inventory_event,
)
from shared.messaging import SUBSCRIBER_ACK_POLICY, consume_resiliently
from shared.settings import ApiSettings

InventoryEvent = Any


def register(broker: KafkaBroker, pool_of: Any, producer_of: Any, settings: ApiSettings) -> None:
    """`pool_of()` / `producer_of()` give the runtime's pool and producer once started."""

    async def apply_inventory_event(event: InventoryEvent) -> None:
        async with pool_of().acquire() as conn, conn.transaction():
            match event:
                case OrderReserved() | BackorderAllocated():
                    await orders.record_allocation(
                        conn, event.transaction_id, event.stock_id, event.sealed_code
                    )
                case OrderBackordered():
                    await orders.record_backorder(conn, event.transaction_id)
                case BackorderCancelled():
                    await orders.record_cancellation(
                        conn, event.transaction_id, event.reason, settings.wallet_slots
                    )
                case _:
                    pass  # stock and waiting notices are fulfilment's business

    @broker.subscriber(
        topics.INVENTORY_EVENTS.name,
        group_id="api",
        ack_policy=SUBSCRIBER_ACK_POLICY,
        auto_offset_reset="earliest",
        title="api.inventory-events",
    )
    async def on_inventory_event(msg: KafkaMessage) -> None:
        await _consume(
            msg,
            inventory_event.validate_json,
            apply_inventory_event,
            topics.INVENTORY_EVENTS,
            "api.inventory-events",
        )

    async def apply_snapshot(snapshot: ProductSnapshot) -> None:
        record = snapshot.model_dump(mode="json", by_alias=True, exclude={"version"})
        async with pool_of().acquire() as conn:
            await repo.upsert_product(conn, record, snapshot.version)

    @broker.subscriber(
        topics.CATALOG_PRODUCTS.name,
        group_id="api-catalog",
        ack_policy=SUBSCRIBER_ACK_POLICY,
        auto_offset_reset="earliest",
        title="api.catalog",
    )
    async def on_product(msg: KafkaMessage) -> None:
        await _consume(
            msg,
            ProductSnapshot.model_validate_json,
            apply_snapshot,
            topics.CATALOG_PRODUCTS,
            "api.catalog",
        )

    async def _consume(msg: Any, parse: Any, handle: Any, topic: topics.Topic, name: str) -> None:
        producer: AIOKafkaProducer = producer_of()
        await consume_resiliently(
            raw=msg.body,
            parse=parse,
            handle=handle,
            producer=producer,
            topic=topic.name,
            dead_letter_topic=topic.dead_letter,
            key=msg.raw_message.key,
            consumer=name,
            max_retries=settings.consumer_max_retries,
        )
