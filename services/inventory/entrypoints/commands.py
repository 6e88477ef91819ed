"""The subscriber of inventory.commands.

Commands come in batches (one consumer poll, up to BATCH_MAX_RECORDS records, partition order
kept) and a batch is decided in ONE transaction: one commit per batch instead of one per
order is what lets one consumer decide about a thousand orders a second. Replies go out after
the commit; the offsets are committed after that, every 250 ms at most (at-least-once: a
redelivered batch finds its decisions stored and changes nothing).

If the batch transaction fails for a reason other than infrastructure (a poison message), the
batch is decided again one command at a time (`shared.consumers.consume_batch`, the retry
path every batch consumer shares), so only the poison message ends on the dead-letter topic.
"""

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from faststream.kafka import KafkaBroker

from services.inventory import metrics
from services.inventory.service_layer.decisions import Reply, handle_commands
from services.inventory.service_layer.unit_of_work import UnitOfWork
from shared.consumers import Record, batch_subscriber, consume_batch
from shared.contracts import InventoryCommand, inventory_command
from shared.crypto import CodeVault
from shared.logs import transaction_id_var
from shared.topics import INVENTORY_COMMANDS

log = logging.getLogger(__name__)

CONSUMER_GROUP = "inventory"
CONSUMER_NAME = "inventory-commands"
# A reply that cannot be handed to the producer within this (no metadata for its topic, full
# buffer) is dropped: the ingress stopped waiting long ago and learns the outcome from
# inventory.events.
REPLY_TIMEOUT_S = 1.0


class CommandConsumer:
    def __init__(
        self,
        new_uow: Callable[[], UnitOfWork],
        producer: Callable[[], AIOKafkaProducer],
        max_retries: int,
        infrastructure_pause_s: float = 0.5,
        vault: CodeVault | None = None,
    ) -> None:
        self._vault = vault
        self._new_uow = new_uow
        self._producer = producer
        self._max_retries = max_retries
        self._pause_s = infrastructure_pause_s

    async def handle_batch(self, records: Sequence[Record]) -> None:
        await consume_batch(
            records,
            parse=inventory_command.validate_json,
            apply=self._decide_and_reply,
            producer=self._producer(),
            topic=INVENTORY_COMMANDS,
            consumer=CONSUMER_NAME,
            max_retries=self._max_retries,
            infrastructure_pause_s=self._pause_s,
        )

    async def _decide_and_reply(self, commands: Sequence[InventoryCommand]) -> None:
        started = time.perf_counter()
        alone = getattr(commands[0], "transaction_id", None) if len(commands) == 1 else None
        token = transaction_id_var.set(alone)
        try:
            uow = self._new_uow()
            replies = await handle_commands(commands, uow, self._vault)
        finally:
            transaction_id_var.reset(token)
        metrics.count_already_decided(CONSUMER_NAME, uow.already_decided)
        elapsed = time.perf_counter() - started
        for _ in commands:
            metrics.DECISION_SECONDS.observe(elapsed)
        metrics.DECISION_BATCH_SIZE.observe(len(commands))
        await self._send(replies)

    async def _send(self, replies: Sequence[Reply]) -> None:
        """Hands the replies to the producer; their delivery is not waited for.

        A reply that cannot be sent is logged and dropped: the ingress answers PROCESSING and
        learns the outcome from inventory.events.
        """
        producer = self._producer()
        for reply in replies:
            decision = reply.decision
            try:
                async with asyncio.timeout(REPLY_TIMEOUT_S):
                    delivery = await producer.send(
                        reply.topic,
                        value=decision.to_bytes(),
                        key=decision.transaction_id.encode(),
                        partition=reply.partition,
                    )
            except Exception as exc:
                _reply_lost(decision.transaction_id, reply.topic, exc)
                continue
            delivery.add_done_callback(
                functools.partial(_on_delivery, decision.transaction_id, reply.topic)
            )


def _on_delivery(transaction_id: str, topic: str, delivery: "asyncio.Future[Any]") -> None:
    if delivery.cancelled():
        _reply_lost(transaction_id, topic, asyncio.CancelledError())
    elif (exc := delivery.exception()) is not None:
        _reply_lost(transaction_id, topic, exc)


def _reply_lost(transaction_id: str, topic: str, exc: BaseException) -> None:
    log.warning(
        "could not send the decision on %s to %s: %s", transaction_id, topic, type(exc).__name__
    )


def subscribe(
    broker: KafkaBroker,
    consumer: CommandConsumer,
    topic: str = INVENTORY_COMMANDS.name,
    group_id: str = CONSUMER_GROUP,
) -> None:
    @batch_subscriber(
        broker,
        topic,
        group_id=group_id,
        name="inventory.commands",
        description="PlaceOrder, AllocateBackorder, CancelBackorder and DeliverStock, decided "
        "in batches.",
    )
    async def on_inventory_commands(records: Any) -> None:
        await consumer.handle_batch(records)
