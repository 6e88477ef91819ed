"""Deciding orders: reserve a code or backorder, allocate or cancel a waiting backorder.

Every handler is idempotent: a redelivered command finds the decision already stored and
changes nothing (a PlaceOrder gets its stored outcome as reply again). `handle_commands` runs
a whole batch of commands, in the order they were consumed, in one transaction.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from services.inventory.domain import model
from services.inventory.domain.model import ClaimedCode, DecisionState, OrderDecision
from services.inventory.service_layer import catalog
from services.inventory.service_layer.unit_of_work import UnitOfWork
from shared.contracts import (
    AllocateBackorder,
    BackorderAllocated,
    BackorderCancelled,
    BackorderStillWaiting,
    CancelBackorder,
    Decision,
    DeliverStock,
    InventoryCommand,
    Message,
    OrderBackordered,
    OrderReserved,
    PlaceOrder,
)
from shared.crypto import CodeVault
from shared.topics import INVENTORY_EVENTS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reply:
    """A decision to send to the ingress instance waiting for it, after commit."""

    topic: str
    decision: Decision
    partition: int | None = None


async def handle_commands(
    commands: Sequence[InventoryCommand], uow: UnitOfWork, vault: CodeVault | None = None
) -> list[Reply]:
    """Decides the commands in order, in one transaction; returns the replies to send.

    `vault` is needed only for DeliverStock (a supplier's sealed codes are opened to
    fingerprint them, so a code delivered twice is stocked once)."""
    replies: list[Reply] = []
    async with uow:
        await uow.serialize_skus({command.sku for command in commands})
        orders: list[PlaceOrder] = []
        for command in commands:
            if isinstance(command, PlaceOrder):
                orders.append(command)
                continue
            # Orders consumed before this command are decided before it: per-SKU order holds.
            replies += await place_orders(orders, uow)
            orders = []
            if isinstance(command, AllocateBackorder):
                await allocate_backorder(command, uow)
            elif isinstance(command, CancelBackorder):
                await cancel_backorder(command, uow)
            else:
                if vault is None:
                    raise ValueError("DeliverStock needs the code vault to fingerprint codes")
                await receive_delivery(command, uow, vault)
        replies += await place_orders(orders, uow)
        await uow.commit()
    return replies


async def place_orders(orders: Sequence[PlaceOrder], uow: UnitOfWork) -> list[Reply]:
    if not orders:
        return []
    decided = await uow.decide_orders(model.first_of_each_order(orders))
    known, decisions, claimed = decided.known, decided.new, decided.codes
    uow.already_decided += len(orders) - len(decisions)
    for decision in decisions:
        _publish_placed(decision, claimed.get(decision.transaction_id), uow)
    for decision in known.values():
        _announce_again(decision, claimed.get(decision.transaction_id), uow)
    outcomes = {d.transaction_id: d for d in [*known.values(), *decisions]}
    return [
        Reply(
            order.reply_to, _reply(outcomes[order.transaction_id], claimed), order.reply_partition
        )
        for order in orders
        if order.reply_to
    ]


async def allocate_backorder(command: AllocateBackorder, uow: UnitOfWork) -> None:
    decision = await uow.decisions.get_for_update(command.transaction_id)
    if decision is None:
        log.warning("AllocateBackorder for unknown order %s ignored", command.transaction_id)
        return
    if not decision.waiting:
        await announce_current_state(decision, uow)
        return
    claimed = await uow.codes.claim({decision.sku: [decision.transaction_id]})
    code = claimed.get(decision.transaction_id)
    if code is None:
        uow.publish(
            INVENTORY_EVENTS.name,
            decision.sku,
            BackorderStillWaiting(transaction_id=decision.transaction_id, sku=decision.sku),
        )
        return
    decision.allocate(code)
    await uow.decisions.update(decision)
    uow.publish(
        INVENTORY_EVENTS.name,
        decision.sku,
        _allocated(decision, code),
    )


async def cancel_backorder(command: CancelBackorder, uow: UnitOfWork) -> None:
    decision = await uow.decisions.get_for_update(command.transaction_id)
    if decision is None:
        decision = model.cancelled_undecided(command)
        if decision is None:
            log.warning("CancelBackorder for unknown order %s ignored", command.transaction_id)
            return
        log.info("order %s was never decided: cancelled", command.transaction_id)
        await uow.decisions.add_all([decision])
    elif not decision.waiting:
        # already served (the sale wins) or already cancelled
        await announce_current_state(decision, uow)
        return
    else:
        decision.cancel(command.reason)
        await uow.decisions.update(decision)
    uow.publish(
        INVENTORY_EVENTS.name,
        decision.sku,
        BackorderCancelled(
            transaction_id=decision.transaction_id,
            account_id=decision.account_id,
            sku=decision.sku,
            reason=command.reason,
        ),
    )


async def receive_delivery(command: DeliverStock, uow: UnitOfWork, vault: CodeVault) -> None:
    """Stock a supplier's delivery (catalog.stock_delivery). While codes stocked earlier
    still have version 1 fingerprints, a code's duplicate could go unseen: the delivery waits
    (parked in this transaction, stocked when re-fingerprinting ends) and the batch it came
    in goes on."""
    if await uow.products.get(command.sku) is None:
        raise ValueError(f"a delivery for unknown SKU {command.sku!r}")
    if await uow.codes.any_old_fingerprints():
        if await uow.deliveries.park(command):
            log.info(
                "delivery %s waits until codes stocked earlier are re-fingerprinted",
                command.delivery_id,
            )
        return
    await catalog.stock_delivery(command, uow, vault)


async def decision_of(transaction_id: str, uow: UnitOfWork) -> OrderDecision | None:
    """What inventory decided about an order (for operators); None if it never did."""
    async with uow:
        return (await uow.decisions.get_many([transaction_id])).get(transaction_id)


async def announce_current_state(decision: OrderDecision, uow: UnitOfWork) -> None:
    """A command about an order decided already (redelivered, or re-sent by a sender that
    never saw the answer): announce the order's state again, so the sender's missing event
    is repaired rather than its order left waiting for one."""
    code = None
    if decision.stock_id is not None:
        code = (await uow.codes.sold_to([decision.transaction_id])).get(decision.transaction_id)
    _announce_again(decision, code, uow)


def _announce_again(decision: OrderDecision, code: ClaimedCode | None, uow: UnitOfWork) -> None:
    """A PlaceOrder delivered again (after a crash, or the api asking after an order it heard
    nothing of): announce the order's current state again. Every consumer applies events
    idempotently, so this only repairs what a lost event left undone; being a repeat, it is
    not counted as a new claim or backorder."""
    event: Message
    match decision.state:
        case DecisionState.RESERVED | DecisionState.BACKORDERED:
            reserved = decision.state is DecisionState.RESERVED
            _publish_placed(decision, code if reserved else None, uow, repeat=True)
            return
        case DecisionState.ALLOCATED:
            assert code is not None
            event = _allocated(decision, code)
        case DecisionState.CANCELLED:
            event = BackorderCancelled(
                transaction_id=decision.transaction_id,
                account_id=decision.account_id,
                sku=decision.sku,
                reason=decision.cancel_reason or "DEADLINE_PASSED",
            )
    uow.publish(INVENTORY_EVENTS.name, decision.sku, event, repeat=True)


def _allocated(decision: OrderDecision, code: ClaimedCode) -> BackorderAllocated:
    return BackorderAllocated(
        transaction_id=decision.transaction_id,
        account_id=decision.account_id,
        sku=decision.sku,
        stock_id=code.stock_id,
        sealed_code=code.sealed.to_wire(),
    )


def _publish_placed(
    decision: OrderDecision, code: ClaimedCode | None, uow: UnitOfWork, *, repeat: bool = False
) -> None:
    event: Message
    if code is not None:
        event = OrderReserved(
            transaction_id=decision.transaction_id,
            account_id=decision.account_id,
            sku=decision.sku,
            stock_id=code.stock_id,
            sealed_code=code.sealed.to_wire(),
        )
    else:
        event = OrderBackordered(
            transaction_id=decision.transaction_id,
            account_id=decision.account_id,
            sku=decision.sku,
            placed_at=decision.placed_at,
        )
    uow.publish(INVENTORY_EVENTS.name, decision.sku, event, repeat=repeat)


def _reply(decision: OrderDecision, claimed: dict[str, ClaimedCode]) -> Decision:
    if decision.instant_outcome == "RESERVED":
        code = claimed[decision.transaction_id]
        return Decision(
            transaction_id=decision.transaction_id,
            sku=decision.sku,
            outcome="RESERVED",
            stock_id=code.stock_id,
            sealed_code=code.sealed.to_wire(),
        )
    return Decision(transaction_id=decision.transaction_id, sku=decision.sku, outcome="BACKORDERED")
