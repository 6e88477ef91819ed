"""Use cases of orders: place an instant order, and apply what inventory decided."""

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from services.api import metrics
from services.api.adapters import repository as repo
from services.api.adapters.replies import ReplyListener
from services.api.domain.model import (
    CreateInstantOrder,
    DuplicateClientOrderNumber,
    InsufficientBalance,
    Order,
    PipelineUnavailable,
    check_orderable,
    settlement_currency,
)
from shared import topics
from shared.contracts import (
    CancelReason,
    Decision,
    MoneyOut,
    OrderEvent,
    OrderEventType,
    PlaceOrder,
    new_transaction_id,
    utcnow,
)
from shared.db import Conn
from shared.logs import transaction_id_var
from shared.messaging import PublishedMarker, add_to_outbox

log = logging.getLogger(__name__)

# Rows the request path publishes itself; the relay takes them over only after this long.
INLINE_RELAY_GRACE_S = 15.0
# How long a publish may take before the broker counts as unreachable (the decision window
# can be shorter: the answer is then PROCESSING, and the publish goes on).
PUBLISH_TIMEOUT_S = 10.0


class BrokerHealth:
    """Whether the order request can be published now. After a failed publish the ingress
    refuses new orders (503, nothing charged) until a metadata probe succeeds again."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self._producer = producer
        self._down_since: float | None = None
        self._probe: asyncio.Task[None] | None = None

    @property
    def accepting(self) -> bool:
        return self._down_since is None

    def failed(self) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning("publishing to Kafka failed: refusing new orders until it answers")
            self._probe = asyncio.create_task(self._probe_until_up())

    async def _probe_until_up(self) -> None:
        while True:
            try:
                async with asyncio.timeout(2):
                    await self._producer.client.fetch_all_metadata()
                self._down_since = None
                log.info("Kafka answers again: accepting orders")
                return
            except (KafkaError, TimeoutError, OSError):
                await asyncio.sleep(1)

    async def stop(self) -> None:
        if self._probe:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe


def order_event(
    kind: OrderEventType, order: Order, reason: CancelReason | None = None
) -> OrderEvent:
    return OrderEvent(
        type=kind,
        transaction_id=order.transaction_id,
        account_id=order.account_id,
        client_order_number=order.client_order_number,
        sku=order.sku,
        quantity=order.quantity,
        unit_price=MoneyOut.of(order.unit_price, order.currency),
        grand_total=MoneyOut.of(order.grand_total, order.currency),
        status=order.status,
        reason=reason,
    )


@dataclass
class Orders:
    pool: asyncpg.Pool
    producer: AIOKafkaProducer
    replies: ReplyListener
    marker: PublishedMarker
    health: BrokerHealth
    decision_window_s: float
    _publishing: set["asyncio.Task[bool]"] = field(default_factory=set)

    async def place_instant(self, cmd: CreateInstantOrder) -> Order:
        """Accept, pay for and durably record one order, then wait (bounded) for inventory.

        The order row, the debit and the PlaceOrder command commit together; the command is
        then published at once, and the outbox relay republishes it if that publish was lost.
        """
        started = time.monotonic()
        if not self.health.accepting:
            raise PipelineUnavailable()
        transaction_id = new_transaction_id()
        transaction_id_var.set(transaction_id)
        async with self.pool.acquire() as conn, conn.transaction():
            found, wallets = await repo.product_and_wallets(conn, cmd.sku, cmd.account_id)
            product = check_orderable(found)
            currency = settlement_currency(product, cmd.pay_with_currency, wallets)
            number = cmd.client_order_number or ""
            if cmd.dup_check and number:
                await repo.lock_client_order_number(conn, cmd.account_id, number)
                existing = await repo.find_by_client_order_number(conn, cmd.account_id, number)
                if existing is not None:
                    raise DuplicateClientOrderNumber(number, existing)
            if not await repo.debit(conn, cmd.account_id, currency, product.price, transaction_id):
                raise InsufficientBalance(currency)
            order = Order(
                transaction_id=transaction_id,
                account_id=cmd.account_id,
                client_order_number=number,
                sku=product.sku,
                quantity=1,
                unit_price=product.price,
                currency=currency,
                grand_total=product.price,
                status="PROCESSING",
                created_at=utcnow(),
            )
            await repo.insert_order(conn, order)
            command = PlaceOrder(
                transaction_id=transaction_id,
                account_id=cmd.account_id,
                sku=product.sku,
                unit_price=product.price,
                currency=currency,
                placed_at=order.created_at,
                reply_to=self.replies.topic,
            )
            command_row = await add_to_outbox(
                conn,
                topics.INVENTORY_COMMANDS.name,
                product.sku,
                command,
                relay_after_s=INLINE_RELAY_GRACE_S,
            )
            await add_to_outbox(
                conn, topics.ORDER_EVENTS.name, transaction_id, order_event("OrderAccepted", order)
            )

        # The order is committed and paid: from here on nothing may fail the request. What
        # cannot be done now is done by the inventory.events consumer.
        decision = await self._publish_and_wait(command, command_row, started)
        if decision is not None and decision.outcome == "RESERVED":
            assert decision.stock_id is not None
            assert decision.sealed_code is not None
            try:
                order = await self._record_reservation(
                    order, decision.stock_id, decision.sealed_code
                )
            except Exception as exc:
                log.warning(
                    "reservation not recorded at once (%s): answering PROCESSING",
                    type(exc).__name__,
                )
        metrics.ORDERS_ACCEPTED.labels(
            "completed" if order.status == "COMPLETED" else "processing"
        ).inc()
        return order

    async def _record_reservation(self, order: Order, stock_id: int, sealed_code: str) -> Order:
        async with self.pool.acquire() as conn, conn.transaction():
            completed = await record_allocation(conn, order.transaction_id, stock_id, sealed_code)
        if completed is not None:
            return completed
        async with self.pool.acquire() as conn:  # the event consumer got there first
            return await repo.get_order(conn, order.account_id, order.transaction_id) or order

    async def _publish_and_wait(
        self, command: PlaceOrder, command_row: int, started: float
    ) -> Decision | None:
        """Publish the committed command and wait for its decision, until the window closes.

        The publish has its own timeout and goes on after the window if it must: only a failed
        publish (not a slow one) marks the broker unhealthy, and a command sent late is still
        sent once, in order, rather than resent by the relay seconds later.
        """
        future = self.replies.expect(command.transaction_id)
        publish = asyncio.create_task(self._publish(command, command_row))
        self._publishing.add(publish)
        publish.add_done_callback(self._publishing.discard)
        try:
            remaining = self.decision_window_s - (time.monotonic() - started)
            async with asyncio.timeout(max(remaining, 0.001)):
                if not await asyncio.shield(publish):
                    return None
                published = time.monotonic()
                decision = await future
            metrics.DECISION_LATENCY.observe(time.monotonic() - published)
            return decision
        except TimeoutError:
            metrics.DECISION_TIMEOUTS.inc()
            return None
        finally:
            self.replies.forget(command.transaction_id)

    async def _publish(self, command: PlaceOrder, command_row: int) -> bool:
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                await self.producer.send_and_wait(
                    topics.INVENTORY_COMMANDS.name,
                    value=command.to_bytes(),
                    key=command.sku.encode(),
                )
        except Exception as exc:
            # The order is committed with its command in the outbox: the relay sends it.
            log.warning("order request not published (%s)", type(exc).__name__)
            if isinstance(exc, KafkaError | TimeoutError):
                self.health.failed()
            return False
        self.marker.mark(command_row)
        return True


# --- applying inventory's outcomes (from the reply or from inventory.events) ----------------


async def record_allocation(
    conn: Conn, transaction_id: str, stock_id: int, sealed_code: str
) -> Order | None:
    order = await repo.complete_order(conn, transaction_id, stock_id, sealed_code)
    if order is not None:
        await add_to_outbox(
            conn, topics.ORDER_EVENTS.name, transaction_id, order_event("OrderCompleted", order)
        )
        metrics.ORDER_TRANSITIONS.labels("COMPLETED").inc()
    return order


async def record_backorder(conn: Conn, transaction_id: str) -> None:
    order = await repo.mark_backordered(conn, transaction_id)
    if order is not None:
        await add_to_outbox(
            conn, topics.ORDER_EVENTS.name, transaction_id, order_event("OrderBackordered", order)
        )


async def record_cancellation(
    conn: Conn, transaction_id: str, reason: CancelReason, wallet_slots: int
) -> None:
    """PROCESSING → CANCELLED and the refund, in one transaction, exactly once."""
    order = await repo.cancel_order(conn, transaction_id, reason)
    if order is None:
        return
    refunded = await repo.credit(
        conn,
        order.account_id,
        order.currency,
        order.grand_total,
        wallet_slots,
        kind="REFUND",
        transaction_id=transaction_id,
    )
    if refunded:
        metrics.REFUNDS.labels(order.currency).inc()
    await add_to_outbox(
        conn,
        topics.ORDER_EVENTS.name,
        transaction_id,
        order_event("OrderCancelled", order, reason),
    )
    metrics.ORDER_TRANSITIONS.labels("CANCELLED").inc()


async def nudge_undecided(
    pool: asyncpg.Pool, older_than_s: float, again_after_s: float, limit: int = 200
) -> int:
    """Ask inventory again about orders still PROCESSING after `older_than_s`.

    Inventory answers a PlaceOrder it already decided by announcing the order's current
    state again, so an event lost on the way (dead-lettered, say) cannot leave an order
    PROCESSING forever; a command that never arrived is decided now. Every consumer is
    idempotent, so asking about an order that merely waits for stock costs one no-op.
    """
    async with pool.acquire() as conn, conn.transaction():
        rows = await repo.take_orders_to_nudge(conn, older_than_s, again_after_s, limit)
        for row in rows:
            command = PlaceOrder(
                transaction_id=row["transaction_id"],
                account_id=row["account_id"],
                sku=row["sku"],
                unit_price=row["unit_price"],
                currency=row["currency"].strip(),
                placed_at=row["created_at"],
            )
            await add_to_outbox(conn, topics.INVENTORY_COMMANDS.name, row["sku"], command)
    if rows:
        log.info("asked inventory again about %d orders still PROCESSING", len(rows))
    return len(rows)
