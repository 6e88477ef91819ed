"""The AsyncAPI document of the public topic, generated from the event contracts.

The public `orders.events` topic is published by the api's outbox relay, not by a FastStream
publisher, so this module declares it on a broker used only to describe it; FastStream turns
the declaration and the pydantic schema into AsyncAPI 3.0. `docs/asyncapi.yaml` is this
module's output (`python -m shared.asyncapi > docs/asyncapi.yaml`); a test keeps them equal.
"""

import sys

from faststream.kafka import KafkaBroker
from faststream.specification import AsyncAPI

from shared import topics
from shared.contracts import OrderEvent

VERSION = "1.1.0"


def public_spec() -> AsyncAPI:
    broker = KafkaBroker(
        "kafka:9092",
        description="The instant-orders broker, as seen by downstream consumers.",
    )
    broker.publisher(
        topics.ORDER_EVENTS.name,
        title="orders.events",
        description=(
            f"{topics.ORDER_EVENTS.doc} Key: the transactionId, so one order's events are in "
            "order on one partition. At-least-once: deduplicate by eventId. Types: "
            "OrderAccepted, OrderBackordered, OrderCompleted, OrderCancelled; status is the "
            "order's status after the event. A bulk order's events are its units' (one code "
            "each): transactionId is the unit's, bulkTransactionId, clientOrderNumber and "
            "the key the bulk order's, status the unit's."
        ),
        schema=OrderEvent,
    )
    return AsyncAPI(
        broker,
        title="instant-orders public events",
        version=VERSION,
        description="Every state change of every order, for systems that follow orders.",
        schema_version="3.0.0",
    )


def render() -> str:
    return public_spec().to_specification().to_yaml()


if __name__ == "__main__":
    sys.stdout.write(render())
