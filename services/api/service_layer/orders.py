"""Use cases of orders: place an instant order, and apply what inventory decided."""

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol, cast
from uuid import UUID

from services.api import metrics
from services.api.domain.model import (
    BulkOrder,
    CreateBulkOrder,
    CreateInstantOrder,
    DomainError,
    DuplicateClientOrderNumber,
    ExchangeRate,
    IllegalTransition,
    InsufficientBalance,
    Order,
    OrderHistory,
    OrderNotFound,
    Overloaded,
    PipelineUnavailable,
    Priced,
    Product,
    bulk_currency,
    check_bulk_lines,
    check_orderable,
    new_bulk_order,
    one_code_order,
    price_in,
    settlement_currency,
)
from services.api.service_layer.catalog_cache import CatalogCache, Found
from services.api.service_layer.fx import RateSource
from services.api.service_layer.unit_of_work import (
    Allocation,
    LockTimeout,
    ProductChanged,
    TransactionConflict,
    UnitOfWork,
)
from shared import topics
from shared.batching import GroupCommit, QueueWaitExceeded
from shared.contracts import (
    BackorderAllocated,
    BackorderCancelled,
    CancelBackorder,
    CancelReason,
    Decision,
    FxOut,
    InventoryEvent,
    MoneyOut,
    OrderBackordered,
    OrderEvent,
    OrderEventType,
    OrderReserved,
    PlaceOrder,
    new_transaction_id,
    rate_out,
    utcnow,
)
from shared.logs import transaction_id_var

log = logging.getLogger(__name__)

# The longest an order may wait for its acceptance batch to start before it is refused.
ACCEPT_MAX_QUEUE_S = 0.2
# How long a publish may take before the broker counts as unreachable (the decision window
# can be shorter: the answer is then PROCESSING, and the publish goes on).
PUBLISH_TIMEOUT_S = 10.0
# How long after the decision window closes a reserved order may still wait for its
# reservation to be recorded before it is answered PROCESSING (the recording goes on, and the
# order completes a moment later): what bounds an answer under overload to the window and a
# little more, when recordings queue behind each other.
RECORD_GRACE_S = 0.1


# --- the ports to Kafka (adapters/kafka.py) ----------------------------------------------------


class BrokerUnavailable(Exception):
    """The broker did not take a message: unreachable, or it refused it."""


class Publisher(Protocol):
    async def send(self, topic: str, key: bytes, value: bytes) -> None:
        """Publishes durably (acks=all, idempotent); BrokerUnavailable if not taken."""
        ...


class Replies(Protocol):
    """Inventory's decisions, answered to this instance's reply address (`topic`)."""

    @property
    def topic(self) -> str: ...

    @property
    def partition(self) -> int | None:
        """The partition of `topic` this instance reads; None: all of them."""
        ...

    def expect(self, transaction_id: str) -> "asyncio.Future[Decision]": ...

    def forget(self, transaction_id: str) -> None: ...


class BrokerHealth(Protocol):
    """Whether an order request can be published now (after a failed publish, not until the
    broker answers again)."""

    @property
    def accepting(self) -> bool: ...

    def failed(self) -> None: ...


def accepted_event(order: Order) -> OrderEvent:
    return order_event("OrderAccepted", order)


def order_event(
    kind: OrderEventType, order: Order, reason: CancelReason | None = None
) -> OrderEvent:
    fx = order.fx
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
        fx=None
        if fx is None
        else FxOut(
            pair=fx.pair(order.currency),
            rate=rate_out(fx.rate),
            as_of=fx.as_of,
            unit_price_original=MoneyOut.of(fx.unit_price_original, fx.product_currency),
        ),
        bulk_transaction_id=order.bulk_id,
    )


def event_key(order: Order) -> str:
    """orders.events' key: the order's transactionId, the bulk order's for one of its units
    (so that one bulk order's events stay in order)."""
    return order.bulk_id or order.transaction_id


# Identical dup-checked requests in one batch: the later ones are accepted in the next batch,
# where the first one's order (if it was accepted) is visible to the dup check.
AGAIN = object()
Accepted = tuple[Order, PlaceOrder]


@dataclass
class OrderDesk:
    """The instant order: accept (group commit), publish, wait for inventory's decision within
    the window, record the reservation (group commit) so that Get Codes has it at once."""

    new_uow: Callable[[], UnitOfWork]
    publisher: Publisher
    replies: Replies
    health: BrokerHealth
    decision_window_s: float
    rates: RateSource
    max_in_flight: int = 256
    # How long a group commit waits for more orders before a flush (0: flushes at once).
    linger_s: float = 0.0
    catalog: CatalogCache = field(default_factory=CatalogCache)
    _in_flight: int = 0
    _accepting: GroupCommit[CreateInstantOrder, Any] = field(init=False)
    _recording: GroupCommit[tuple[Order, int, str], Order] = field(init=False)
    _publishing: set["asyncio.Task[bool]"] = field(default_factory=set)
    _recordings: set["asyncio.Future[Order]"] = field(default_factory=set)

    def __post_init__(self) -> None:
        # An order that cannot even start its acceptance this soon is refused (503, nothing
        # charged) rather than left to wait past the decision window.
        max_queue_s = min(ACCEPT_MAX_QUEUE_S, self.decision_window_s / 2)
        self._accepting = GroupCommit(
            "accept", self._accept_batch, max_wait_s=max_queue_s, linger_s=self.linger_s
        )
        self._recording = GroupCommit("record", self._record_batch, linger_s=self.linger_s)

    @property
    def full(self) -> bool:
        """Whether an order would be refused now for want of room in flight: the route asks
        before it parses and authenticates a request, so that under overload a refusal costs
        as little as it can (`place_instant` checks again, and decides)."""
        return self._in_flight >= self.max_in_flight

    async def place_instant(self, cmd: CreateInstantOrder, received: float | None = None) -> Order:
        """Accept, pay for and durably record one order, then wait (bounded) for inventory.

        The order row and the debit commit together, in one statement (or transaction) with
        the orders that arrived at the same time; the PlaceOrder command is then published at
        once. If that publish is lost (the process dies), the order row itself is what the
        api asks inventory about again (`ask_again_about_undecided`).

        The decision window counts from `received` (`time.monotonic()` when the request
        came in; now if not given), so that time spent before this call counts too, and the
        answer comes at most RECORD_GRACE_S after the window closes.
        """
        started = time.monotonic() if received is None else received
        if not self.health.accepting:
            raise PipelineUnavailable()
        if self.full:
            metrics.ORDERS_SHED.labels("in_flight").inc()
            raise Overloaded()
        self._in_flight += 1
        slot_given_back_later = False
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
                recording = self._start_recording(order, decision.stock_id, decision.sealed_code)
                slot_given_back_later = True  # when the recording ends (_recording_ended)
                order = await self._recorded_in_time(recording, order, started)
        finally:
            if not slot_given_back_later:
                self._in_flight -= 1
        metrics.ORDERS_ACCEPTED.labels(
            "completed" if order.status == "COMPLETED" else "processing"
        ).inc()
        return order

    def _start_recording(self, order: Order, stock_id: int, sealed: str) -> "asyncio.Future[Order]":
        """Records the reservation, so that the answer can be COMPLETED and Get Codes has the
        code at once. The order keeps its place in flight until the recording ends, even if
        its request is given up meanwhile, so that a backlog of recordings stays bounded."""
        recording = self._recording.enqueue((order, stock_id, sealed))
        self._recordings.add(recording)
        recording.add_done_callback(self._recording_ended)
        return recording

    async def _recorded_in_time(
        self, recording: "asyncio.Future[Order]", order: Order, started: float
    ) -> Order:
        """The order as recorded, if that is done by RECORD_GRACE_S after the window closes;
        else, or if it failed, the order as it is (PROCESSING): the recording goes on, and the
        inventory.events consumer records the reservation if it fails."""
        deadline = started + self.decision_window_s + RECORD_GRACE_S
        done, _ = await asyncio.wait({recording}, timeout=max(deadline - time.monotonic(), 0))
        if not done:
            metrics.RECORDINGS_LATE.inc()
            recording.add_done_callback(self._log_failed_late)
            return order
        if recording.cancelled() or (failure := recording.exception()) is not None:
            log.warning(
                "reservation not recorded at once (%s): answering PROCESSING",
                "cancelled" if recording.cancelled() else type(failure).__name__,
            )
            return order
        return recording.result()

    def _recording_ended(self, recording: "asyncio.Future[Order]") -> None:
        self._recordings.discard(recording)
        self._in_flight -= 1
        if not recording.cancelled():
            recording.exception()  # retrieved: _recorded_in_time or _log_failed_late reports it

    @staticmethod
    def _log_failed_late(recording: "asyncio.Future[Order]") -> None:
        if not recording.cancelled() and (failure := recording.exception()) is not None:
            log.warning(
                "reservation not recorded (%s): the order completes from inventory's event",
                type(failure).__name__,
            )

    async def finish_recordings(self, timeout_s: float) -> None:
        """At shutdown, before the pool closes: lets recordings still going on end."""
        if self._recordings:
            await asyncio.wait(set(self._recordings), timeout=timeout_s)

    async def _accept_batch(
        self, cmds: Sequence[CreateInstantOrder]
    ) -> list[Accepted | DomainError | object]:
        """Accepts a batch of orders: checks them against their products and wallets (as the
        catalog cache remembers them, or read now), then pays for and records them in one
        statement (one round trip, one commit) when no dup check is asked and each wallet has
        a free slot holding its orders' sum; the rest take the general path, one transaction
        with the dup check and the slow debits. If a product changed since it was remembered,
        nothing of the batch not yet recorded is, and its orders are tried again."""
        results: list[Accepted | DomainError | object] = [AGAIN] * len(cmds)
        placed_at = utcnow()
        async with self.new_uow() as uow:
            settled, found = await self._settle(uow, cmds, results)
            rates = await self._rates_for(settled, results)
            tried_again: set[int] = set()

            def refuse(i: int, sku: str, exc: BaseException) -> None:
                # A refusal that rests on a product remembered, not read now (its price, its
                # currency): the product is read afresh and the order tried again.
                if sku in found.fresh_skus:
                    results[i] = exc
                else:
                    self.catalog.forget([sku])
                    tried_again.add(i)
                    results[i] = AGAIN

            for i, product, _ in settled:
                failure = results[i]
                if isinstance(failure, BaseException):  # the rates it needed were unreadable
                    refuse(i, product.sku, failure)
            settled = [s for s in settled if results[s[0]] is AGAIN and s[0] not in tried_again]
            orders: list[tuple[int, Order]] = []
            versions: dict[str, int] = {}
            for i, product, currency in settled:
                try:
                    priced = price_in(product.price, product.currency, currency, rates)
                except DomainError as exc:
                    refuse(i, product.sku, exc)
                    continue
                orders.append((i, new_order(cmds[i], product, currency, priced, placed_at)))
                if product.version:  # 0: not known, so never remembered and not checked
                    # Two versions of a product in one batch (read again for a doubtful
                    # order): the older one is checked, and so fails, and all are tried again.
                    versions[product.sku] = min(
                        versions.get(product.sku, product.version), product.version
                    )
            rest = orders
            try:
                if orders and not any(dup_checked(cmds[i]) for i, _ in orders):
                    recorded = await uow.orders.pay_and_record(
                        [o for _, o in orders],
                        [accepted_event(o).to_bytes() for _, o in orders],
                        versions,
                    )
                    rest = [(i, o) for i, o in orders if o.transaction_id not in recorded]
                    for i, o in orders:
                        if o.transaction_id in recorded:
                            results[i] = self._accepted(o)
                if rest:
                    # Orders recorded above are committed: a failure here is only the rest's.
                    try:
                        await self._accept_in_a_transaction(
                            uow,
                            cmds,
                            rest,
                            results,
                            {o.sku: versions[o.sku] for _, o in rest if o.sku in versions},
                            found.fresh_skus,
                        )
                    except ProductChanged:
                        raise
                    except LockTimeout:
                        for i, _ in rest:
                            results[i] = Overloaded()  # wallet or dup-check lock busy too long
                    except Exception as exc:
                        for i, _ in rest:
                            results[i] = exc
            except ProductChanged as exc:
                self.catalog.forget(exc.skus)
                metrics.PRODUCTS_CHANGED_AT_ACCEPTANCE.inc()
                for i, _ in rest:
                    results[i] = AGAIN
        return results

    async def _settle(
        self,
        uow: UnitOfWork,
        cmds: Sequence[CreateInstantOrder],
        results: list[Accepted | DomainError | object],
    ) -> tuple[list[tuple[int, Product, str]], Found]:
        """Each order's product and the currency it is paid in, checked (refusals go to
        `results`), and what they were checked against. An order refused on what the catalog
        cache remembered is checked again on its product and wallets read now, before it is
        refused."""
        found = await self.catalog.look_up(
            uow, sorted({c.sku for c in cmds}), list({c.account_id for c in cmds})
        )
        settled: list[tuple[int, Product, str]] = []
        pending = list(range(len(cmds)))
        while pending:
            doubtful = []
            for i in pending:
                cmd = cmds[i]
                try:
                    product = check_orderable(
                        found.products.get(cmd.sku), pin_format=cmd.pin_format
                    )
                    currency = settlement_currency(
                        product, cmd.pay_with_currency, found.wallets.get(cmd.account_id, set())
                    )
                except DomainError as exc:
                    if found.remembered(cmd.sku, cmd.account_id):
                        doubtful.append(i)
                    else:
                        results[i] = exc
                    continue
                settled.append((i, product, currency))
            if doubtful:
                found = await self.catalog.look_up(
                    uow,
                    sorted({cmds[i].sku for i in doubtful}),
                    list({cmds[i].account_id for i in doubtful}),
                    found=found,
                    afresh=True,
                )
            pending = doubtful
        settled.sort(key=lambda s: s[0])
        return settled, found

    async def _rates_for(
        self,
        settled: Sequence[tuple[int, Product, str]],
        results: list[Accepted | DomainError | object],
    ) -> dict[str, ExchangeRate]:
        """The rates (cached), read only when an order of the batch is paid in another
        currency than its product's. When they cannot be read, those orders fail with that
        error and the others of the batch go on without rates."""
        converted = [i for i, product, currency in settled if product.currency != currency]
        if not converted:
            return {}
        try:
            return await self.rates.rates()
        except Exception as exc:
            log.warning(
                "exchange rates unreadable (%s): orders paid in another currency refused",
                type(exc).__name__,
            )
            for i in converted:
                results[i] = exc
            return {}

    def _accepted(self, order: Order) -> Accepted:
        return order, place_order(order, self.replies.topic, self.replies.partition)

    async def _accept_in_a_transaction(
        self,
        uow: UnitOfWork,
        cmds: Sequence[CreateInstantOrder],
        orders: Sequence[tuple[int, Order]],
        results: list[Accepted | DomainError | object],
        versions: dict[str, int],
        read_now: set[str],
    ) -> None:
        """The general path. `versions`: the products' versions the orders were priced at;
        those not `read_now` (remembered) are checked before anything is decided, and all of
        them again by the statement that records the orders (ProductChanged)."""
        remembered = {sku: v for sku, v in versions.items() if sku not in read_now}
        for attempt in range(3):
            outcome: dict[int, Accepted | DomainError | object] = {}
            try:
                # A lock held elsewhere may not hold this batch past the decision window.
                async with uow.transaction(lock_timeout_s=self.decision_window_s):
                    # Checked, refused, priced and paid on the products as they are now.
                    if remembered and (changed := await uow.products.changed(remembered)):
                        raise ProductChanged(changed)
                    kept = await self._not_duplicates(uow, cmds, orders, outcome)
                    paid = await self._debit(uow, kept, outcome)
                    if paid:
                        await uow.orders.record(
                            [o for _, o in paid],
                            [accepted_event(o).to_bytes() for _, o in paid],
                            versions,
                        )
                    await uow.commit()
            except TransactionConflict:
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
        uow: UnitOfWork,
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
        wanted = sorted(checked, key=str)
        await uow.orders.lock_client_order_numbers(wanted)
        existing = await uow.orders.find_by_client_order_numbers(wanted)
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
        uow: UnitOfWork,
        orders: Sequence[tuple[int, Order]],
        outcome: dict[int, Accepted | DomainError | object],
    ) -> list[tuple[int, Order]]:
        """Pays for orders in this transaction (the slot rule: domain.model.Wallet): each
        wallet (account, currency) once for the sum of its orders when one slot holds it,
        else order by order, waiting for busy slots and drawing on all slots when no single
        one can pay. Wallets are taken in a fixed order, so that concurrent batches rarely
        deadlock on them."""
        by_wallet: dict[tuple[UUID, str], list[tuple[int, Order]]] = {}
        for entry in orders:
            by_wallet.setdefault((entry[1].account_id, entry[1].currency), []).append(entry)
        paid: list[tuple[int, Order]] = []
        for (account_id, currency), entries in sorted(by_wallet.items(), key=lambda w: str(w[0])):
            total = sum((o.grand_total for _, o in entries), Decimal(0))
            if await uow.wallets.take_from_one_slot(account_id, currency, total):
                paid += entries
                continue
            for i, order in entries:
                amount = order.grand_total
                if await uow.wallets.take_from_one_slot(
                    account_id, currency, amount
                ) or await uow.wallets.take_from_all_slots(account_id, currency, amount):
                    paid.append((i, order))
                else:
                    outcome[i] = InsufficientBalance(currency)
        paid.sort(key=lambda entry: entry[0])
        return paid

    async def _record_batch(self, items: Sequence[tuple[Order, int, str]]) -> list[Order]:
        """Records reservations: one statement completes the orders and writes their
        OrderCompleted events; an order the event consumer completed first is read back."""
        completed = [order.complete(stock_id, sealed) for order, stock_id, sealed in items]
        async with self.new_uow() as uow:
            done = await uow.orders.complete_and_announce(
                [
                    (
                        o.transaction_id,
                        stock_id,
                        sealed,
                        order_event("OrderCompleted", o).to_bytes(),
                    )
                    for o, (_, stock_id, sealed) in zip(completed, items, strict=True)
                ]
            )
            late = [o.transaction_id for o in completed if o.transaction_id not in done]
            found = {o.transaction_id: o for o in await uow.orders.get_many(late)} if late else {}
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
                await self.publisher.send(
                    topics.INVENTORY_COMMANDS.name, command.sku.encode(), command.to_bytes()
                )
        except Exception as exc:
            # The order is committed: the api asks inventory about it again after a while.
            log.warning("order request not published (%s)", type(exc.__cause__ or exc).__name__)
            if isinstance(exc, BrokerUnavailable | TimeoutError):
                self.health.failed()
            return False
        return True


def place_order(
    order: Order, reply_to: str | None, reply_partition: int | None = None
) -> PlaceOrder:
    """The command asking inventory to decide the order (answered to `reply_to`, if any, on
    `reply_partition` of it, if given)."""
    return PlaceOrder(
        transaction_id=order.transaction_id,
        account_id=order.account_id,
        sku=order.sku,
        unit_price=order.unit_price,
        currency=order.currency,
        placed_at=order.created_at,
        reply_to=reply_to,
        reply_partition=reply_partition,
    )


def dup_checked(cmd: CreateInstantOrder) -> bool:
    return cmd.dup_check and bool(cmd.client_order_number)


def new_order(
    cmd: CreateInstantOrder, product: Product, currency: str, priced: Priced, placed_at: datetime
) -> Order:
    """One unit of `product`, charged `priced.unit_price` in `currency` (`price_in`)."""
    return one_code_order(
        new_transaction_id(),
        cmd.account_id,
        cmd.client_order_number or "",
        product.sku,
        currency,
        priced,
        placed_at,
    )


# --- the bulk order ---------------------------------------------------------------------------


async def place_bulk(
    uow: UnitOfWork, cmd: CreateBulkOrder, lock_timeout_s: float, rates: RateSource
) -> BulkOrder:
    """Accepts a bulk order: checks it, pays its grand total and records it with one unit per
    code asked for, in one transaction. Each unit is an order of its own that inventory
    decides as it does an instant one (a PlaceOrder through the outbox, with the bulk order's
    placed_at, so FIFO per SKU holds across instant and bulk orders); the api follows each
    unit's outcome with the instant orders' code (`follow_inventory`), and so the nudges,
    deadlines and the refund once per cancelled unit apply to units unchanged."""
    check_bulk_lines(cmd.lines)
    placed_at = utcnow()
    async with uow:
        skus = [line.sku for line in cmd.lines]
        products, wallets = await uow.products.for_orders(sorted(skus), [cmd.account_id])
        ordered = {
            sku: check_orderable(products.get(sku), instant=False, pin_format=cmd.pin_format)
            for sku in skus
        }
        first = ordered[skus[0]]
        bulk_currency(list(ordered.values()))
        # The instant path's rules: the wallet paid from, and one conversion (price_in).
        currency = settlement_currency(
            first, cmd.pay_with_currency, wallets.get(cmd.account_id, set())
        )
        known = await rates.rates() if currency != first.currency else {}
        priced = {
            sku: price_in(product.price, product.currency, currency, known)
            for sku, product in ordered.items()
        }
        bulk = new_bulk_order(cmd, new_transaction_id(), currency, priced, placed_at)
        dup_key = (cmd.account_id, bulk.client_order_number)
        async with uow.transaction(lock_timeout_s=lock_timeout_s):
            if cmd.dup_check and bulk.client_order_number:
                await uow.orders.lock_client_order_numbers([dup_key])
                existing = await uow.orders.find_by_client_order_numbers([dup_key])
                if dup_key in existing:
                    raise DuplicateClientOrderNumber(dup_key[1], existing[dup_key])
            total = bulk.grand_total
            if not (
                await uow.wallets.take_from_one_slot(cmd.account_id, currency, total)
                or await uow.wallets.take_from_all_slots(cmd.account_id, currency, total)
            ):
                raise InsufficientBalance(currency)
            await uow.orders.record_bulk(bulk, [accepted_event(u).to_bytes() for u in bulk.units])
            for unit in bulk.units:
                uow.publish(topics.INVENTORY_COMMANDS.name, unit.sku, place_order(unit, None))
            await uow.commit()
    metrics.ORDERS_ACCEPTED.labels("processing").inc()
    return bulk


async def bulk_order(uow: UnitOfWork, account_id: UUID, transaction_id: str) -> BulkOrder | None:
    """The account's bulk order with its units; another account's is None."""
    async with uow:
        return await uow.orders.get_bulk(account_id, transaction_id)


# --- applying inventory's outcomes (from the reply or from inventory.events) ----------------


async def follow_inventory(
    uow: UnitOfWork, events: Sequence[InventoryEvent], wallet_slots: int
) -> None:
    """Applies a batch of inventory's outcomes in one transaction, in their order; allocations
    in a row are recorded in one statement. An outcome applied already changes nothing."""
    async with uow, uow.transaction():
        allocations: list[Allocation] = []
        for event in events:
            if isinstance(event, OrderReserved | BackorderAllocated):
                allocations.append((event.transaction_id, event.stock_id, event.sealed_code))
                continue
            await record_allocations(uow, allocations)
            allocations = []
            match event:
                case OrderBackordered():
                    await record_backorder(uow, event.transaction_id)
                case BackorderCancelled():
                    await record_cancellation(uow, event.transaction_id, event.reason, wallet_slots)
                case _:
                    pass  # stock and waiting notices are fulfilment's business
        await record_allocations(uow, allocations)
        await uow.commit()


async def record_allocations(uow: UnitOfWork, allocations: Sequence[Allocation]) -> list[Order]:
    """(transaction id, stock id, sealed code) → Order.complete, with its OrderCompleted
    event; orders completed already are left as they are."""
    if not allocations:
        return []
    completed = await uow.orders.complete(allocations)
    for order in completed:
        uow.publish(
            topics.ORDER_EVENTS.name, event_key(order), order_event("OrderCompleted", order)
        )
    metrics.ORDER_TRANSITIONS.labels("COMPLETED").inc(len(completed))
    return completed


async def record_backorder(uow: UnitOfWork, transaction_id: str) -> None:
    order = await uow.orders.backorder(transaction_id)
    if order is not None:
        uow.publish(
            topics.ORDER_EVENTS.name, event_key(order), order_event("OrderBackordered", order)
        )


async def record_cancellation(
    uow: UnitOfWork, transaction_id: str, reason: CancelReason, wallet_slots: int
) -> None:
    """Order.cancel and the refund of its grand total, in one transaction, exactly once: the
    amount and currency charged at acceptance (stored on the order), whatever the exchange
    rates are by now."""
    order = await uow.orders.cancel(transaction_id, reason)
    if order is None:
        return
    refunded = await uow.wallets.credit(
        order.account_id,
        order.currency,
        order.grand_total,
        wallet_slots,
        kind="REFUND",
        transaction_id=transaction_id,
    )
    if refunded:
        metrics.REFUNDS.labels(order.currency).inc()
    uow.publish(
        topics.ORDER_EVENTS.name, event_key(order), order_event("OrderCancelled", order, reason)
    )
    metrics.ORDER_TRANSITIONS.labels("CANCELLED").inc()


async def ask_again_about_undecided(
    uow: UnitOfWork,
    older_than_s: float,
    again_after_s: float,
    deadline_s: float,
    limit: int = 200,
) -> int:
    """Ask inventory again about orders still PROCESSING after `older_than_s`.

    Inventory answers a PlaceOrder it already decided by announcing the order's current
    state again, so an event lost on the way (dead-lettered, say) cannot leave an order
    PROCESSING forever; a command that never arrived is decided now. Every consumer is
    idempotent, so asking about an order that merely waits for stock costs one no-op.

    An order still undecided at its deadline (`deadline_s` after acceptance: its PlaceOrder
    dead-lettered on every delivery, say) is asked to be cancelled instead: inventory
    records it cancelled (so a PlaceOrder of it arriving later sells nothing) and announces
    it, and the cancellation and refund are applied like any other (`record_cancellation`).
    """
    now = utcnow()
    deadline = timedelta(seconds=deadline_s)
    async with uow, uow.transaction():
        # Those past their deadline first, from their own index: however many backorders
        # the round below cycles through, an order's end is not put off behind them.
        overdue = await uow.orders.take_past_deadline(deadline_s, again_after_s, limit)
        undecided = await uow.orders.take_undecided(older_than_s, again_after_s, limit)
        ended = [*overdue, *(o for o in undecided if o.undecided_past(deadline, now))]
        for order in ended:
            uow.publish(
                topics.INVENTORY_COMMANDS.name,
                order.sku,
                cancel_undecided(order, "DEADLINE_PASSED"),
            )
        for order in undecided:
            if not order.undecided_past(deadline, now):
                uow.publish(topics.INVENTORY_COMMANDS.name, order.sku, place_order(order, None))
        await uow.commit()
    if undecided:
        log.info("asked inventory again about %d orders still PROCESSING", len(undecided))
    if ended:
        log.warning(
            "asked inventory to cancel %d orders undecided at their deadline (%.0f s)",
            len(ended),
            deadline_s,
        )
    return len(overdue) + len(undecided)


def cancel_undecided(order: Order, reason: CancelReason) -> CancelBackorder:
    """The command that ends an order: cancelled by inventory unless it was served (the sale
    wins). It says whose order it is, so inventory can record one it never decided."""
    return CancelBackorder(
        transaction_id=order.transaction_id,
        sku=order.sku,
        reason=reason,
        account_id=order.account_id,
        placed_at=order.created_at,
    )


# --- operators: one order's history, and cancelling it ---------------------------------------


async def order_history(uow: UnitOfWork, transaction_id: str) -> OrderHistory:
    async with uow:
        history = await uow.orders.history(transaction_id)
    if history is None:
        raise OrderNotFound()
    return history


async def bulk_for_operator(uow: UnitOfWork, transaction_id: str) -> BulkOrder:
    """A bulk order with its units, whoever's it is (for operators); OrderNotFound if none
    has this id."""
    async with uow:
        bulk = await _any_accounts_bulk(uow, transaction_id)
    if bulk is None:
        raise OrderNotFound()
    return bulk


async def _any_accounts_bulk(uow: UnitOfWork, transaction_id: str) -> BulkOrder | None:
    account_id = await uow.orders.bulk_account(transaction_id)
    return None if account_id is None else await uow.orders.get_bulk(account_id, transaction_id)


async def cancel_by_operator(uow: UnitOfWork, transaction_id: str) -> list[Order]:
    """Asks inventory to cancel an order still PROCESSING (refused for a final one), or every
    unit of a bulk order still PROCESSING; returns the orders (units) asked about. The
    cancellation and its refund follow through inventory's answer, as at a deadline; an
    order or unit inventory has served meanwhile stays COMPLETED."""
    async with uow, uow.transaction():
        found = await uow.orders.get_many([transaction_id])
        if found:
            [order] = found
            waiting = [order] if order.status == "PROCESSING" else []
            status = order.status
        else:
            bulk = await _any_accounts_bulk(uow, transaction_id)
            if bulk is None:
                raise OrderNotFound()
            waiting = [u for u in bulk.units if u.status == "PROCESSING"]
            status = bulk.status
        if not waiting:
            raise IllegalTransition(transaction_id, status, "CANCELLED")
        for order in waiting:
            uow.publish(
                topics.INVENTORY_COMMANDS.name,
                order.sku,
                cancel_undecided(order, "CANCELLED_BY_OPERATOR"),
            )
        await uow.commit()
    log.warning(
        "an operator asked inventory to cancel order %s (%d unit(s))", transaction_id, len(waiting)
    )
    return waiting
