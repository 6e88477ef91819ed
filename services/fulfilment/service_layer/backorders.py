"""Use cases of fulfilment: one handler per event it follows, the deadline scan, the repair of
lost messages, and the allocation round that offers arrived stock to the oldest waiting
orders first. Each takes the unit of work it runs in."""

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from services.fulfilment import metrics
from services.fulfilment.domain.model import (
    Backorder,
    BackorderState,
    IllegalTransition,
    OpenBackorders,
    deadline,
    round_size,
    supplier_quantity,
)
from services.fulfilment.service_layer.unit_of_work import UnitOfWork
from shared.contracts import (
    AllocateBackorder,
    BackorderAllocated,
    BackorderCancelled,
    BackorderStillWaiting,
    CancelBackorder,
    CancelReason,
    InventoryEvent,
    OrderBackordered,
    OrderReserved,
    ProductSnapshot,
    StockArrived,
)
from shared.topics import INVENTORY_COMMANDS

log = logging.getLogger(__name__)


class Supplier(Protocol):
    async def request(self, uow: UnitOfWork, sku: str, quantity: int) -> None:
        """Ask for `quantity` more codes of `sku`, in the unit of work's transaction."""


@dataclass(frozen=True)
class Policy:
    """How this deployment runs backorders: the deadline of a product that sets none, and
    whom to ask for more codes, in batches of how many."""

    default_deadline_s: float
    supplier: Supplier
    supplier_batch: int


async def follow_inventory(
    events: Sequence[InventoryEvent], uow: UnitOfWork, policy: Policy
) -> None:
    """Applies a poll of events in order, in one transaction. OrderReserved is not among them
    (see entrypoints.consumers; only records written without an `x-type` header, before it
    existed, still bring one): the stock hint counts down only for backorders, so after
    instant sales it can be higher than the stock; a round that offers more codes than there
    are is answered BackorderStillWaiting, which sets it to 0."""
    async with uow:
        for event in events:
            await _on_inventory_event(event, uow, policy)
        await uow.commit()


async def _on_inventory_event(event: InventoryEvent, uow: UnitOfWork, policy: Policy) -> None:
    match event:
        case OrderBackordered():
            await _on_backordered(event, uow, policy)
        case StockArrived():
            await uow.skus.lock(event.sku)
            await uow.skus.set_stock_hint(event.sku, event.available)
            await allocation_round(event.sku, uow, policy)
        case OrderReserved():
            await uow.skus.lock(event.sku)
            await uow.skus.take_from_stock_hint(event.sku)
        case BackorderAllocated():
            await uow.skus.lock(event.sku)
            if await _answered(event.transaction_id, uow, Backorder.complete):
                metrics.COMPLETIONS.inc()
                await uow.skus.take_from_stock_hint(event.sku)
        case BackorderStillWaiting():
            knowledge = await uow.skus.lock(event.sku)
            await uow.skus.set_stock_hint(event.sku, 0)
            backorder = await uow.backorders.get_for_update(event.transaction_id)
            if backorder is not None and backorder.state is BackorderState.ALLOCATING:
                backorder.still_waiting()
                if not knowledge.active:
                    _ask_to_cancel(backorder, "PRODUCT_WITHDRAWN", uow)
                await uow.backorders.save([backorder])
            await allocation_round(event.sku, uow, policy)
        case BackorderCancelled():
            reason = event.reason
            if await _answered(event.transaction_id, uow, lambda b: b.cancel(reason)):
                metrics.CANCELLATIONS.labels(event.reason).inc()


async def _answered(
    transaction_id: str, uow: UnitOfWork, transition: Callable[[Backorder], None]
) -> bool:
    """Records inventory's final answer; False (a redelivery) if it was recorded already."""
    backorder = await uow.backorders.get_for_update(transaction_id)
    if backorder is not None:
        try:
            transition(backorder)
        except IllegalTransition:
            backorder = None
    if backorder is None:
        metrics.REDELIVERIES.inc()
        return False
    await uow.backorders.save([backorder])
    return True


async def _on_backordered(event: OrderBackordered, uow: UnitOfWork, policy: Policy) -> None:
    knowledge = await uow.skus.lock(event.sku)
    backorder = Backorder(
        transaction_id=event.transaction_id,
        account_id=event.account_id,
        sku=event.sku,
        placed_at=event.placed_at,
        deadline_at=deadline(event.placed_at, knowledge, policy.default_deadline_s),
    )
    if not await uow.backorders.add(backorder):
        metrics.REDELIVERIES.inc()
        return
    if not knowledge.active:
        _ask_to_cancel(backorder, "PRODUCT_WITHDRAWN", uow)
        await uow.backorders.save([backorder])
        return
    await allocation_round(event.sku, uow, policy)


async def apply_product(product: ProductSnapshot, uow: UnitOfWork, policy: Policy) -> None:
    """A product snapshot from the catalog: a withdrawn product's waiting backorders are
    cancelled, a product back on sale offers its stock."""
    async with uow:
        await uow.skus.lock(product.sku)
        applied = await uow.skus.apply_product(
            product.sku, product.active, product.backorder_deadline_seconds, product.version
        )
        if applied and product.active:
            await allocation_round(product.sku, uow, policy)
        elif applied:
            withdrawn = await uow.backorders.oldest_waiting(product.sku)
            for backorder in withdrawn:
                _ask_to_cancel(backorder, "PRODUCT_WITHDRAWN", uow)
            await uow.backorders.save(withdrawn)
        await uow.commit()  # a SKU seen for the first time is recorded even if not applied


async def allocation_round(sku: str, uow: UnitOfWork, policy: Policy) -> None:
    """Offer the stock inventory reported to the oldest waiting orders, in order.

    The caller holds the SKU's lock. AllocateBackorder commands go through the outbox to the
    SKU-keyed command topic, so inventory decides them in the order sent.
    """
    knowledge = await uow.skus.lock(sku)
    if not knowledge.active:
        return
    allocating = await uow.backorders.count(sku, BackorderState.ALLOCATING)
    n = round_size(knowledge.stock_hint, allocating)
    if n:
        metrics.ALLOCATION_REQUESTS.inc(await _offer_oldest(sku, n, uow))
    waiting = await uow.backorders.count(sku, BackorderState.WAITING)
    quantity = supplier_quantity(
        waiting + allocating + n, knowledge.stock_hint, policy.supplier_batch
    )
    if quantity:
        await policy.supplier.request(uow, sku, quantity)


async def _offer_oldest(sku: str, n: int, uow: UnitOfWork) -> int:
    offered = await uow.backorders.oldest_waiting(sku, n)
    for backorder in offered:
        _send(uow, backorder.start_allocating())
    await uow.backorders.save(offered)
    return len(offered)


def _ask_to_cancel(backorder: Backorder, reason: CancelReason, uow: UnitOfWork) -> None:
    _send(uow, backorder.start_cancelling(reason))


def _send(uow: UnitOfWork, command: AllocateBackorder | CancelBackorder) -> None:
    uow.publish(INVENTORY_COMMANDS.name, command.sku, command)


async def cancel_overdue(uow: UnitOfWork, batch: int = 500) -> int:
    """Ask inventory to cancel every waiting backorder past its deadline."""
    async with uow:
        overdue = await uow.backorders.overdue(batch)
        for backorder in overdue:
            _ask_to_cancel(backorder, "DEADLINE_PASSED", uow)
        await uow.backorders.save(overdue)
        await uow.commit()
    if overdue:
        log.info("asked inventory to cancel %d overdue backorders", len(overdue))
    return len(overdue)


async def scan_deadlines(new_uow: Callable[[], UnitOfWork], batch: int = 500) -> float | None:
    """A round of the deadline scan (`runtime.when_due`): cancels what is overdue, and returns
    the seconds until the next waiting backorder's deadline (0 after a full batch)."""
    if await cancel_overdue(new_uow(), batch) >= batch:
        return 0.0
    async with new_uow() as uow:
        return await uow.backorders.seconds_to_next_deadline()


async def retry_stalled(new_uow: Callable[[], UnitOfWork], older_than_s: float) -> int:
    """Repair what a lost message left undone; every step is idempotent at inventory.

    - A command with no answer for `older_than_s` is sent again.
    - A SKU whose orders wait with none being offered a code (a stock notice may have been
      lost, or overtaken) offers one to its oldest order: inventory answers with the code
      or "still waiting", and the round goes on from there.
    """
    async with new_uow() as uow:
        stale = await uow.backorders.take_stale_in_flight(older_than_s, 500)
        for backorder in stale:
            _send(uow, backorder.resend())
        skus = await uow.backorders.skus_waiting_unoffered(older_than_s, 100)
        await uow.commit()
    for sku in skus:  # one transaction per SKU: its lock before its rows, as everywhere
        async with new_uow() as uow:
            if (await uow.skus.lock(sku)).active:
                await _offer_oldest(sku, 1, uow)
            await uow.commit()
    if stale or skus:
        log.info("resent %d commands, offered stock again for %d SKUs", len(stale), len(skus))
    return len(stale) + len(skus)


async def open_backorders(uow: UnitOfWork) -> list[OpenBackorders]:
    async with uow:
        return await uow.backorders.open_per_sku()
