"""The life of a backorder. No I/O here.

A backorder waits for stock. Fulfilment never allocates or cancels by itself: it asks
inventory (the only writer of allocations), oldest order first, and records what inventory
answers. So an allocation and a cancellation can never both win.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

BackorderState = Literal["WAITING", "ALLOCATING", "CANCELLING", "COMPLETED", "CANCELLED"]
OPEN_STATES: tuple[BackorderState, ...] = ("WAITING", "ALLOCATING", "CANCELLING")


@dataclass(frozen=True)
class SkuKnowledge:
    sku: str
    active: bool
    deadline_seconds: int | None
    version: int
    stock_hint: int


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
