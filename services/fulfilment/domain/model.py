"""The life of a backorder. No I/O here.

A backorder waits for stock. Fulfilment never allocates or cancels by itself: it asks
inventory (the only writer of allocations), oldest order first, and records what inventory
answers. So an allocation and a cancellation can never both win.

    WAITING ──start_allocating──► ALLOCATING ──still_waiting──► WAITING
    WAITING ──start_cancelling──► CANCELLING
    WAITING | ALLOCATING | CANCELLING ──complete──► COMPLETED   (inventory allocated a code)
    WAITING | ALLOCATING | CANCELLING ──cancel────► CANCELLED   (inventory cancelled it)

An allocation answered after a cancellation was asked for still completes the order: at
inventory, the allocation wins. A command with no answer is sent again (`resend`).
"""

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from shared.contracts import AllocateBackorder, CancelBackorder, CancelReason


class BackorderState(StrEnum):
    WAITING = "WAITING"
    ALLOCATING = "ALLOCATING"
    CANCELLING = "CANCELLING"
    COMPLETED = "COMPLETED"
    CANCELLED = "CANCELLED"


OPEN_STATES = frozenset(
    {BackorderState.WAITING, BackorderState.ALLOCATING, BackorderState.CANCELLING}
)
IN_FLIGHT = frozenset({BackorderState.ALLOCATING, BackorderState.CANCELLING})


class IllegalTransition(Exception):
    """A backorder was asked to move where its state does not lead."""


@dataclass(frozen=True)
class SkuKnowledge:
    sku: str
    active: bool
    deadline_seconds: int | None
    version: int
    stock_hint: int


@dataclass
class Backorder:
    transaction_id: str
    account_id: uuid.UUID
    sku: str
    placed_at: datetime
    deadline_at: datetime
    state: BackorderState = BackorderState.WAITING
    cancel_reason: CancelReason | None = None

    @property
    def is_open(self) -> bool:
        return self.state in OPEN_STATES

    def start_allocating(self) -> AllocateBackorder:
        """Stock is there: ask inventory for a code."""
        self._leave({BackorderState.WAITING}, "ask inventory for a code")
        self.state = BackorderState.ALLOCATING
        return AllocateBackorder(transaction_id=self.transaction_id, sku=self.sku)

    def still_waiting(self) -> None:
        """Inventory had no code for it after all."""
        self._leave({BackorderState.ALLOCATING}, "go back to waiting")
        self.state = BackorderState.WAITING

    def start_cancelling(self, reason: CancelReason) -> CancelBackorder:
        """Its deadline passed or its product was withdrawn: ask inventory to cancel it."""
        self._leave({BackorderState.WAITING}, "ask inventory to cancel it")
        self.state = BackorderState.CANCELLING
        self.cancel_reason = reason
        return CancelBackorder(transaction_id=self.transaction_id, sku=self.sku, reason=reason)

    def complete(self) -> None:
        """Inventory allocated it a code."""
        self._leave(OPEN_STATES, "complete")
        self.state = BackorderState.COMPLETED

    def cancel(self, reason: CancelReason) -> None:
        """Inventory cancelled it."""
        self._leave(OPEN_STATES, "cancel")
        self.state = BackorderState.CANCELLED
        self.cancel_reason = reason

    def resend(self) -> AllocateBackorder | CancelBackorder:
        """The command in flight, to send again when its answer is overdue."""
        self._leave(IN_FLIGHT, "send its command again")
        if self.state is BackorderState.ALLOCATING:
            return AllocateBackorder(transaction_id=self.transaction_id, sku=self.sku)
        return CancelBackorder(
            transaction_id=self.transaction_id,
            sku=self.sku,
            reason=self.cancel_reason or "DEADLINE_PASSED",
        )

    def _leave(self, allowed: frozenset[BackorderState] | set[BackorderState], to: str) -> None:
        if self.state not in allowed:
            raise IllegalTransition(
                f"backorder {self.transaction_id} is {self.state}: cannot {to} "
                f"(only from {', '.join(sorted(allowed))})"
            )


def deadline(placed_at: datetime, sku: SkuKnowledge | None, default_seconds: float) -> datetime:
    seconds = sku.deadline_seconds if sku and sku.deadline_seconds else default_seconds
    return placed_at + timedelta(seconds=seconds)


def round_size(stock_hint: int, allocating: int) -> int:
    """How many more waiting orders to offer codes to: stock not already being offered."""
    return max(0, stock_hint - allocating)


MAX_SUPPLIER_REQUEST = 5_000


def supplier_quantity(waiting: int, stock_hint: int, batch: int) -> int:
    """What to ask a supplier for: the shortfall, rounded up to whole batches, at most
    MAX_SUPPLIER_REQUEST (a next request covers the rest); 0 if none."""
    shortfall = waiting - stock_hint
    if shortfall <= 0:
        return 0
    return min(-(-shortfall // batch) * batch, MAX_SUPPLIER_REQUEST)


@dataclass(frozen=True)
class SupplierRequest:
    id: int
    sku: str
    quantity: int


@dataclass(frozen=True)
class OpenBackorders:
    """A SKU's backorders not yet completed or cancelled: how many, and the oldest's age."""

    sku: str
    count: int
    oldest_age_s: float
