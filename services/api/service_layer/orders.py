"""Use cases of orders: place an instant order, and apply what inventory decided."""

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from typing import Any, cast
from uuid import UUID

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from asyncpg.exceptions import (
    DeadlockDetectedError,
    LockNotAvailableError,
    SerializationError,
)

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
from shared.outbox import add_all_to_outbox, add_to_outbox

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
        """Probes every second until the broker answers. Any error is a failed probe (one the
        probe did not expect is logged once, with its trace): the probe itself never dies,
        or the api would refuse orders until restarted."""
        logged: set[str] = set()
        while True:
            try:
                async with asyncio.timeout(2):
                    await self._producer.client.fetch_all_metadata()
                self._down_since = None
                log.info("Kafka answers again: accepting orders")
                return
            except (KafkaError, TimeoutError, OSError):
                pass
            except Exception as exc:
                if type(exc).__name__ not in logged:
                    logged.add(type(exc).__name__)
                    log.exception("unexpected error probing Kafka; probing on")
            await asyncio.sleep(1)

    async def stop(self) -> None:
        if self._probe:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe


def accepted_event(order: Order) -> OrderEvent:
    return order_event("OrderAccepted", order)


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
class OrderDesk:
    """The instant order: accept (group commit), publish, wait for inventory's decision within
    the window, record the reservation (group commit) so that Get Codes has it at once."""

    pool: asyncpg.Pool
    producer: AIOKafkaProducer
    replies: ReplyListener
    health: BrokerHealth
    decision_window_s: float
    max_in_flight: int = 256
    _in_flight: int = 0
    _accepting: GroupCommit[CreateInstantOrder, Any] = field(init=False)
    _recording: GroupCommit[tuple[Order, int, str], Order] = field(init=False)
    _publishing: set["asyncio.Task[bool]"] = field(default_factory=set)

    def __post_init__(self) -> None:
        # An order that cannot even start its acceptance this soon is refused (503, nothing
        # charged) rather than left to wait past the decision window.
        max_queue_s = min(ACCEPT_MAX_QUEUE_S, self.decision_window_s / 2)
        self._accepting = GroupCommit("accept", self._accept_batch, max_wait_s=max_queue_s)
        self._recording = GroupCommit("record", self._record_batch)

    async def place_instant(self, cmd: CreateInstantOrder) -> Order:
        """Accept, pay for and durably record one order, then wait (bounded) for inventory.

        The order row and the debit commit together, in one statement (or transaction) with
        the orders that arrived at the same time; the PlaceOrder command is then published at
        once. If that
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
        """Accepts a batch of orders: looks their products and wallets up, then pays for and
        records them in one statement (one round trip, one commit) when no dup check is asked
        and each wallet has a free slot holding its orders' sum; the rest take the general
        path, one transaction with the dup check and the slow debits."""
        results: list[Accepted | DomainError | object] = [AGAIN] * len(cmds)
        placed_at = utcnow()
        async with self.pool.acquire() as conn:
            products, wallets = await repo.products_and_wallets(
                conn, sorted({c.sku for c in cmds}), list({c.account_id for c in cmds})
            )
            orders: list[tuple[int, Order]] = []
            for i, cmd in enumerate(cmds):
                try:
                    product = check_orderable(products.get(cmd.sku))
                    currency = settlement_currency(
                        product, cmd.pay_with_currency, wallets.get(cmd.account_id, set())
                    )
                except DomainError as exc:
                    results[i] = exc
                    continue
                orders.append((i, new_order(cmd, product, currency, placed_at)))
            rest = orders
            if orders and not any(dup_checked(cmds[i]) for i, _ in orders):
                recorded = await repo.pay_and_record(
                    conn,
                    [o for _, o in orders],
                    [accepted_event(o).to_bytes() for _, o in orders],
                    topics.ORDER_EVENTS.name,
                )
                rest = [(i, o) for i, o in orders if o.transaction_id not in recorded]
                for i, o in orders:
                    if o.transaction_id in recorded:
                        results[i] = self._accepted(o)
            if rest:
                # Orders recorded above are committed: a failure here is only the rest's.
                try:
                    await self._accept_in_a_transaction(conn, cmds, rest, results)
                except LockNotAvailableError:
                    for i, _ in rest:
                        results[i] = Overloaded()  # wallet or dup-check lock busy too long
                except Exception as exc:
                    for i, _ in rest:
                        results[i] = exc
        return results

    def _accepted(self, order: Order) -> Accepted:
        return order, PlaceOrder(
            transaction_id=order.transaction_id,
            account_id=order.account_id,
            sku=order.sku,
            unit_price=order.unit_price,
            currency=order.currency,
            placed_at=order.created_at,
            reply_to=self.replies.topic,
        )

    async def _accept_in_a_transaction(
        self,
        conn: Conn,
        cmds: Sequence[CreateInstantOrder],
        orders: Sequence[tuple[int, Order]],
        results: list[Accepted | DomainError | object],
    ) -> None:
        for attempt in range(3):
            outcome: dict[int, Accepted | DomainError | object] = {}
            try:
                async with conn.transaction():
                    # A lock held elsewhere may not hold this batch past the decision window.
                    await conn.execute(
                        f"SET LOCAL lock_timeout = {int(self.decision_window_s * 1000)}"
                    )
                    kept = await self._not_duplicates(conn, cmds, orders, outcome)
                    paid = await self._debit(conn, kept, outcome)
                    if paid:
                        await repo.record_orders(
                            conn,
                            [o for _, o in paid],
                            [accepted_event(o).to_bytes() for _, o in paid],
                            topics.ORDER_EVENTS.name,
                        )
            except (DeadlockDetectedError, SerializationError):
                # Two batches locked the same wallet slots in opposite orders: nothing of this
                # one was committed, so it is simply tried again.
                if attempt == 2:
                    raise
                continue
            for i, order in paid:
                outcome[i] = self._accepted(order)
            for i, result in outcome.items():
                results[i] = result
            return

    async def _not_duplicates(
        self,
        conn: Conn,
        cmds: Sequence[CreateInstantOrder],
        orders: Sequence[tuple[int, Order]],
        outcome: dict[int, Accepted | DomainError | object],
    ) -> list[tuple[int, Order]]:
        """The dup check: refuses an order whose account already has one with this
        clientOrderNumber, under a lock per (account, number) held until commit, so that
        identical requests racing in other batches or processes wait for this one."""
        checked = {(o.account_id, o.client_order_number) for i, o in orders if dup_checked(cmds[i])}
        if not checked:
            return list(orders)
        await repo.lock_client_order_numbers(
            conn, [repo.client_number_key(a, n) for a, n in checked]
        )
        existing = await repo.find_by_client_order_numbers(conn, sorted(checked, key=str))
        in_batch: set[tuple[UUID, str]] = set()
        kept = []
        for i, order in orders:
            key = (order.account_id, order.client_order_number)
            if dup_checked(cmds[i]):
                if key in existing:
                    outcome[i] = DuplicateClientOrderNumber(key[1], existing[key])
                    continue
                if key in in_batch:
                    outcome[i] = AGAIN
                    continue
                in_batch.add(key)
            kept.append((i, order))
        return kept

    async def _debit(
        self,
        conn: Conn,
        orders: Sequence[tuple[int, Order]],
        outcome: dict[int, Accepted | DomainError | object],
    ) -> list[tuple[int, Order]]:
        """Pays for orders in this transaction: each wallet (account, currency) once for the
        sum of its orders when one slot holds it, else order by order, waiting for busy slots
        and drawing on all slots when no single one can pay. Wallets are taken in a fixed
        order, so that concurrent batches rarely deadlock on them."""
        by_wallet: dict[tuple[UUID, str], list[tuple[int, Order]]] = {}
        for entry in orders:
            by_wallet.setdefault((entry[1].account_id, entry[1].currency), []).append(entry)
        paid: list[tuple[int, Order]] = []
        for (account_id, currency), entries in sorted(by_wallet.items(), key=lambda w: str(w[0])):
            total = sum((o.grand_total for _, o in entries), Decimal(0))
            if await repo.take_from_one_slot(conn, account_id, currency, total):
                paid += entries
                continue
            for i, order in entries:
                amount = order.grand_total
                if await repo.take_from_one_slot(
                    conn, account_id, currency, amount
                ) or await repo.take_from_all_slots(conn, account_id, currency, amount):
                    paid.append((i, order))
                else:
                    outcome[i] = InsufficientBalance(currency)
        paid.sort(key=lambda entry: entry[0])
        return paid

    async def _record_batch(self, items: Sequence[tuple[Order, int, str]]) -> list[Order]:
        """Records reservations: one statement completes the orders and writes their
        OrderCompleted events; an order the event consumer completed first is read back."""
        completed = [
            replace(order, status="COMPLETED", stock_id=stock_id, sealed_code=sealed)
            for order, stock_id, sealed in items
        ]
        async with self.pool.acquire() as conn:
            done = await repo.complete_and_announce(
                conn,
                [
                    (
                        o.transaction_id,
                        stock_id,
                        sealed,
                        order_event("OrderCompleted", o).to_bytes(),
                    )
                    for o, (_, stock_id, sealed) in zip(completed, items, strict=True)
                ],
                topics.ORDER_EVENTS.name,
            )
            late = [o.transaction_id for o in completed if o.transaction_id not in done]
            found = {o.transaction_id: o for o in await repo.get_orders(conn, late)} if late else {}
        metrics.ORDER_TRANSITIONS.labels("COMPLETED").inc(len(done))
        return [
            o if o.transaction_id in done else found.get(o.transaction_id, order)
            for o, (order, _, _) in zip(completed, items, strict=True)
        ]

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


def dup_checked(cmd: CreateInstantOrder) -> bool:
    return cmd.dup_check and bool(cmd.client_order_number)


def new_order(
    cmd: CreateInstantOrder, product: Product, currency: str, placed_at: datetime
) -> Order:
    return Order(
        transaction_id=new_transaction_id(),
        account_id=cmd.account_id,
        client_order_number=cmd.client_order_number or "",
        sku=product.sku,
        quantity=1,
        unit_price=product.price,
        currency=currency,
        grand_total=product.price,
        status="PROCESSING",
        created_at=placed_at,
    )


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
        rows = await repo.take_undecided_orders(conn, older_than_s, again_after_s, limit)
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
