"""Use cases of orders: place an instant order, and apply what inventory decided."""

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, cast
from uuid import UUID

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from asyncpg.exceptions import DeadlockDetectedError, SerializationError

from services.api import metrics
from services.api.adapters import repository as repo
from services.api.adapters.replies import ReplyListener
from services.api.domain.model import (
    CreateInstantOrder,
    DomainError,
    DuplicateClientOrderNumber,
    InsufficientBalance,
    Order,
    Overloaded,
    PipelineUnavailable,
    Product,
    check_orderable,
    settlement_currency,
)
from shared import topics
from shared.batching import GroupCommit, QueueWaitExceeded
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
from shared.messaging import add_all_to_outbox, add_to_outbox

log = logging.getLogger(__name__)

# The longest an order may wait for its acceptance batch to start before it is refused.
ACCEPT_MAX_QUEUE_S = 0.2
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


# Identical dup-checked requests in one batch: the later ones are accepted in the next batch,
# where the first one's order (if it was accepted) is visible to the dup check.
AGAIN = object()
Accepted = tuple[Order, PlaceOrder]


@dataclass
class Orders:
    """The instant order: accept (group commit), publish, wait for inventory's decision within
    the window, record the reservation (group commit) so that Get Codes has it at once."""

    pool: asyncpg.Pool
    producer: AIOKafkaProducer
    replies: ReplyListener
    health: BrokerHealth
    decision_window_s: float
    max_in_flight: int = 512
    _in_flight: int = 0
    _accepting: GroupCommit[CreateInstantOrder, Any] = field(init=False)
    _recording: GroupCommit[tuple[Order, int, str], Order] = field(init=False)
    _publishing: set["asyncio.Task[bool]"] = field(default_factory=set)

    def __post_init__(self) -> None:
        # An order that cannot even start its acceptance this soon is refused (503, nothing
        # charged) rather than left to wait past the decision window.
        max_queue_s = min(ACCEPT_MAX_QUEUE_S, self.decision_window_s / 2)
        self._accepting = GroupCommit(self._accept_batch, max_wait_s=max_queue_s)
        self._recording = GroupCommit(self._record_batch)

    async def place_instant(self, cmd: CreateInstantOrder) -> Order:
        """Accept, pay for and durably record one order, then wait (bounded) for inventory.

        The order row and the debit commit together, in one transaction with the orders that
        arrived at the same time; the PlaceOrder command is then published at once. If that
        publish is lost (the process dies), the order row itself is what the api asks
        inventory about again (`ask_again_about_undecided`).
        """
        started = time.monotonic()
        if not self.health.accepting:
            raise PipelineUnavailable()
        if self._in_flight >= self.max_in_flight:
            metrics.ORDERS_SHED.labels("in_flight").inc()
            raise Overloaded()
        self._in_flight += 1
        try:
            try:
                accepted = await self._accepting.submit(cmd)
                while accepted is AGAIN:
                    accepted = await self._accepting.submit(cmd)
            except QueueWaitExceeded:
                metrics.ORDERS_SHED.labels("queue_wait").inc()
                raise Overloaded() from None
            order, command = cast(Accepted, accepted)
            transaction_id_var.set(order.transaction_id)
            # The order is committed and paid: from here on nothing may fail the request. What
            # cannot be done now is done by the inventory.events consumer.
            decision = await self._publish_and_wait(command, started)
            if decision is not None and decision.outcome == "RESERVED":
                assert decision.stock_id is not None
                assert decision.sealed_code is not None
                try:
                    order = await self._recording.submit(
                        (order, decision.stock_id, decision.sealed_code)
                    )
                except Exception as exc:
                    log.warning(
                        "reservation not recorded at once (%s): answering PROCESSING",
                        type(exc).__name__,
                    )
        finally:
            self._in_flight -= 1
        metrics.ORDERS_ACCEPTED.labels(
            "completed" if order.status == "COMPLETED" else "processing"
        ).inc()
        return order

    async def _accept_batch(
        self, cmds: Sequence[CreateInstantOrder]
    ) -> list[Accepted | DomainError | object]:
        for attempt in range(3):
            try:
                return await self._accept_in_one_transaction(cmds)
            except (DeadlockDetectedError, SerializationError):
                # Two batches locked the same wallet slots in opposite orders: nothing of this
                # one was committed, so it is simply tried again.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _accept_in_one_transaction(
        self, cmds: Sequence[CreateInstantOrder]
    ) -> list[Accepted | DomainError | object]:
        results: list[Accepted | DomainError | object | None] = [None] * len(cmds)
        transaction_ids = [new_transaction_id() for _ in cmds]
        placed_at = utcnow()
        async with self.pool.acquire() as conn, conn.transaction():
            products, wallets = await repo.products_and_wallets(
                conn, sorted({c.sku for c in cmds}), list({c.account_id for c in cmds})
            )
            priced: list[tuple[int, Product, str]] = []
            for i, cmd in enumerate(cmds):
                try:
                    product = check_orderable(products.get(cmd.sku))
                    wallet = wallets.get(cmd.account_id, set())
                    priced.append(
                        (i, product, settlement_currency(product, cmd.pay_with_currency, wallet))
                    )
                except DomainError as exc:
                    results[i] = exc
            priced = await self._not_duplicates(conn, cmds, transaction_ids, priced, results)
            paid = await self._debit(conn, cmds, transaction_ids, priced, results)
            orders = [
                Order(
                    transaction_id=transaction_ids[i],
                    account_id=cmds[i].account_id,
                    client_order_number=cmds[i].client_order_number or "",
                    sku=product.sku,
                    quantity=1,
                    unit_price=product.price,
                    currency=currency,
                    grand_total=product.price,
                    status="PROCESSING",
                    created_at=placed_at,
                )
                for i, product, currency in paid
            ]
            if orders:
                await repo.insert_orders(conn, orders)
                await add_all_to_outbox(
                    conn,
                    [
                        (
                            topics.ORDER_EVENTS.name,
                            o.transaction_id,
                            order_event("OrderAccepted", o),
                        )
                        for o in orders
                    ],
                )
        for (i, _, _), order in zip(paid, orders, strict=True):
            results[i] = (
                order,
                PlaceOrder(
                    transaction_id=order.transaction_id,
                    account_id=order.account_id,
                    sku=order.sku,
                    unit_price=order.unit_price,
                    currency=order.currency,
                    placed_at=order.created_at,
                    reply_to=self.replies.topic,
                ),
            )
        assert all(r is not None for r in results)
        return results

    async def _not_duplicates(
        self,
        conn: Conn,
        cmds: Sequence[CreateInstantOrder],
        transaction_ids: Sequence[str],
        priced: list[tuple[int, Product, str]],
        results: list[Any],
    ) -> list[tuple[int, Product, str]]:
        """The dup check: refuses an order whose account already has one with this
        clientOrderNumber, under a lock per (account, number) held until commit, so that
        identical requests racing in other batches or processes wait for this one."""
        checked = {
            (cmds[i].account_id, cmds[i].client_order_number or "")
            for i, _, _ in priced
            if cmds[i].dup_check and cmds[i].client_order_number
        }
        if not checked:
            return priced
        await repo.lock_client_order_numbers(
            conn, [repo.client_number_key(a, n) for a, n in checked]
        )
        existing = await repo.find_by_client_order_numbers(conn, sorted(checked, key=str))
        in_batch: set[tuple[UUID, str]] = set()
        kept = []
        for i, product, currency in priced:
            key = (cmds[i].account_id, cmds[i].client_order_number or "")
            if key in checked:
                if key in existing:
                    results[i] = DuplicateClientOrderNumber(key[1], existing[key])
                    continue
                if key in in_batch:
                    results[i] = AGAIN
                    continue
                in_batch.add(key)
            kept.append((i, product, currency))
        return kept

    async def _debit(
        self,
        conn: Conn,
        cmds: Sequence[CreateInstantOrder],
        transaction_ids: Sequence[str],
        priced: list[tuple[int, Product, str]],
        results: list[Any],
    ) -> list[tuple[int, Product, str]]:
        """Pays for the orders of a batch: each wallet (account, currency) once for the sum of
        its orders when one slot holds it, else order by order. Wallets are taken in a fixed
        order, so concurrent batches do not deadlock on them."""
        by_wallet: dict[tuple[UUID, str], list[tuple[int, Product, str]]] = {}
        for entry in priced:
            by_wallet.setdefault((cmds[entry[0]].account_id, entry[2]), []).append(entry)
        paid: list[tuple[int, Product, str]] = []
        for (account_id, currency), entries in sorted(by_wallet.items(), key=lambda w: str(w[0])):
            amounts = [product.price for _, product, _ in entries]
            if await repo.take_from_one_slot(conn, account_id, currency, wallet_sum(amounts)):
                paid += entries
                continue
            for entry, amount in zip(entries, amounts, strict=True):
                if await repo.take_from_one_slot(
                    conn, account_id, currency, amount
                ) or await repo.take_from_all_slots(conn, account_id, currency, amount):
                    paid.append(entry)
                else:
                    results[entry[0]] = InsufficientBalance(currency)
        paid.sort(key=lambda entry: entry[0])
        await repo.add_debits(
            conn,
            [
                (transaction_ids[i], cmds[i].account_id, currency, product.price)
                for i, product, currency in paid
            ],
        )
        return paid

    async def _record_batch(self, items: Sequence[tuple[Order, int, str]]) -> list[Order]:
        async with self.pool.acquire() as conn, conn.transaction():
            done = {
                o.transaction_id: o
                for o in await record_allocations(
                    conn, [(order.transaction_id, stock, sealed) for order, stock, sealed in items]
                )
            }
            missing = [
                order.transaction_id for order, _, _ in items if order.transaction_id not in done
            ]
            if missing:  # the event consumer got there first
                done |= {o.transaction_id: o for o in await repo.get_orders(conn, missing)}
        return [done.get(order.transaction_id, order) for order, _, _ in items]

    async def _publish_and_wait(self, command: PlaceOrder, started: float) -> Decision | None:
        """Publish the committed command and wait for its decision, until the window closes.

        The publish has its own timeout and goes on after the window if it must: only a failed
        publish (not a slow one) marks the broker unhealthy.
        """
        future = self.replies.expect(command.transaction_id)
        publish = asyncio.create_task(self._publish(command))
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

    async def _publish(self, command: PlaceOrder) -> bool:
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                await self.producer.send_and_wait(
                    topics.INVENTORY_COMMANDS.name,
                    value=command.to_bytes(),
                    key=command.sku.encode(),
                )
        except Exception as exc:
            # The order is committed: the api asks inventory about it again after a while.
            log.warning("order request not published (%s)", type(exc).__name__)
            if isinstance(exc, KafkaError | TimeoutError):
                self.health.failed()
            return False
        return True


def wallet_sum(amounts: Sequence[Decimal]) -> Decimal:
    return sum(amounts, Decimal(0))


# --- applying inventory's outcomes (from the reply or from inventory.events) ----------------


async def record_allocations(
    conn: Conn, allocations: Sequence[tuple[str, int, str]]
) -> list[Order]:
    """(transaction id, stock id, sealed code) → COMPLETED orders with their OrderCompleted
    events, in one statement each; orders completed already are left as they are."""
    if not allocations:
        return []
    completed = await repo.complete_orders(conn, allocations)
    await add_all_to_outbox(
        conn,
        [
            (topics.ORDER_EVENTS.name, o.transaction_id, order_event("OrderCompleted", o))
            for o in completed
        ],
    )
    metrics.ORDER_TRANSITIONS.labels("COMPLETED").inc(len(completed))
    return completed


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


async def ask_again_about_undecided(
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
