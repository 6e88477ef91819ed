"""Use cases of fulfilment: one handler per event it follows, the deadline scan, and the
allocation round that offers arrived stock to the oldest waiting orders first."""

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from services.fulfilment import metrics
from services.fulfilment.adapters import repository as repo
from services.fulfilment.adapters.supplier import Supplier
from services.fulfilment.domain.model import OPEN_STATES, deadline, round_size, supplier_quantity
from shared import topics
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
from shared.db import Conn
from shared.outbox import add_to_outbox

log = logging.getLogger(__name__)


@dataclass
class Backorders:
    default_deadline_s: float
    supplier: Supplier
    supplier_batch: int

    async def on_inventory_events(self, conn: Conn, events: Sequence[InventoryEvent]) -> None:
        """Applies a poll of events in order. OrderReserved is not among them (see
        entrypoints.consumers; only records written without an `x-type` header, before it
        existed, still bring one): the stock hint counts down only for backorders, so after
        instant sales it can be higher than the stock; a round that offers more codes than
        there are is answered BackorderStillWaiting, which sets it to 0."""
        for event in events:
            await self.on_inventory_event(conn, event)

    async def on_inventory_event(self, conn: Conn, event: InventoryEvent) -> None:
        match event:
            case OrderBackordered():
                await self._on_backordered(conn, event)
            case StockArrived():
                await repo.lock_sku(conn, event.sku)
                await repo.set_stock_hint(conn, event.sku, event.available)
                await self.allocation_round(conn, event.sku)
            case OrderReserved():
                await repo.lock_sku(conn, event.sku)
                await repo.take_from_stock_hint(conn, event.sku)
            case BackorderAllocated():
                await repo.lock_sku(conn, event.sku)
                if await repo.transition(conn, event.transaction_id, "COMPLETED", OPEN_STATES):
                    metrics.COMPLETIONS.inc()
                    await repo.take_from_stock_hint(conn, event.sku)
                else:
                    metrics.REDELIVERIES.inc()
            case BackorderStillWaiting():
                knowledge = await repo.lock_sku(conn, event.sku)
                await repo.set_stock_hint(conn, event.sku, 0)
                moved = await repo.transition(
                    conn, event.transaction_id, "WAITING", ("ALLOCATING",)
                )
                if moved and not knowledge.active:
                    await self._cancel(conn, event.sku, [event.transaction_id], "PRODUCT_WITHDRAWN")
                await self.allocation_round(conn, event.sku)
            case BackorderCancelled():
                if await repo.transition(
                    conn, event.transaction_id, "CANCELLED", OPEN_STATES, event.reason
                ):
                    metrics.CANCELLATIONS.labels(event.reason).inc()
                else:
                    metrics.REDELIVERIES.inc()

    async def _on_backordered(self, conn: Conn, event: OrderBackordered) -> None:
        knowledge = await repo.lock_sku(conn, event.sku)
        inserted = await repo.insert_backorder(
            conn,
            event.transaction_id,
            event.account_id,
            event.sku,
            event.placed_at,
            deadline(event.placed_at, knowledge, self.default_deadline_s),
        )
        if not inserted:
            metrics.REDELIVERIES.inc()
            return
        if not knowledge.active:
            await self._cancel(conn, event.sku, [event.transaction_id], "PRODUCT_WITHDRAWN")
            return
        await self.allocation_round(conn, event.sku)

    async def on_product(self, conn: Conn, product: ProductSnapshot) -> None:
        await repo.lock_sku(conn, product.sku)
        applied = await repo.apply_product(
            conn, product.sku, product.active, product.backorder_deadline_seconds, product.version
        )
        if not applied:
            return
        if product.active:
            await self.allocation_round(conn, product.sku)
        else:
            waiting = await repo.waiting_of_sku(conn, product.sku)
            await self._cancel(conn, product.sku, waiting, "PRODUCT_WITHDRAWN")

    async def allocation_round(self, conn: Conn, sku: str) -> None:
        """Offer the stock inventory reported to the oldest waiting orders, in order.

        The caller holds the SKU's row lock. AllocateBackorder commands go through the outbox
        to the SKU-keyed command topic, so inventory decides them in the order sent.
        """
        knowledge = await repo.lock_sku(conn, sku)
        if not knowledge.active:
            return
        allocating = await repo.count_in_state(conn, sku, "ALLOCATING")
        n = round_size(knowledge.stock_hint, allocating)
        for transaction_id in await repo.start_allocating_oldest(conn, sku, n) if n else []:
            await add_to_outbox(
                conn,
                topics.INVENTORY_COMMANDS.name,
                sku,
                AllocateBackorder(transaction_id=transaction_id, sku=sku),
            )
            metrics.ALLOCATION_REQUESTS.inc()
        open_orders = await repo.count_in_state(conn, sku, "WAITING") + allocating + n
        quantity = supplier_quantity(open_orders, knowledge.stock_hint, self.supplier_batch)
        if quantity:
            await self.supplier.request(conn, sku, quantity)

    async def _cancel(
        self, conn: Conn, sku: str, transaction_ids: list[str], reason: CancelReason
    ) -> None:
        for transaction_id in transaction_ids:
            if await repo.transition(conn, transaction_id, "CANCELLING", ("WAITING",), reason):
                await add_to_outbox(
                    conn,
                    topics.INVENTORY_COMMANDS.name,
                    sku,
                    CancelBackorder(transaction_id=transaction_id, sku=sku, reason=reason),
                )

    async def cancel_overdue(self, pool: asyncpg.Pool, batch: int = 500) -> int:
        """Ask inventory to cancel every waiting backorder past its deadline."""
        async with pool.acquire() as conn, conn.transaction():
            rows = await repo.overdue(conn, batch)
            for row in rows:
                await self._cancel(conn, row["sku"], [row["transaction_id"]], "DEADLINE_PASSED")
        if rows:
            log.info("asked inventory to cancel %d overdue backorders", len(rows))
        return len(rows)

    async def retry_stalled(self, pool: asyncpg.Pool, older_than_s: float) -> int:
        """Repair what a lost message left undone; every step is idempotent at inventory.

        - A command with no answer for `older_than_s` is sent again.
        - A SKU whose orders wait with none being offered a code (a stock notice may have been
          lost, or overtaken) offers one to its oldest order: inventory answers with the code
          or "still waiting", and the round goes on from there.
        """
        async with pool.acquire() as conn, conn.transaction():
            stale = await repo.take_stale_in_flight(conn, older_than_s, 500)
            for row in stale:
                command: AllocateBackorder | CancelBackorder = (
                    AllocateBackorder(transaction_id=row["transaction_id"], sku=row["sku"])
                    if row["state"] == "ALLOCATING"
                    else CancelBackorder(
                        transaction_id=row["transaction_id"],
                        sku=row["sku"],
                        reason=row["cancel_reason"] or "DEADLINE_PASSED",
                    )
                )
                await add_to_outbox(conn, topics.INVENTORY_COMMANDS.name, row["sku"], command)
            skus = await repo.skus_waiting_unoffered(conn, older_than_s, 100)
        for sku in skus:  # one transaction per SKU: its lock before its rows, as everywhere
            async with pool.acquire() as conn, conn.transaction():
                knowledge = await repo.lock_sku(conn, sku)
                if not knowledge.active:
                    continue
                for transaction_id in await repo.start_allocating_oldest(conn, sku, 1):
                    await add_to_outbox(
                        conn,
                        topics.INVENTORY_COMMANDS.name,
                        sku,
                        AllocateBackorder(transaction_id=transaction_id, sku=sku),
                    )
        if stale or skus:
            log.info("resent %d commands, offered stock again for %d SKUs", len(stale), len(skus))
        return len(stale) + len(skus)
