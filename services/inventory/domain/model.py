"""Inventory's domain: which order gets which code, and when an order has to wait.

An order placed for a SKU is decided once: it is RESERVED when a code is claimed for it at
once, else BACKORDERED. Orders of one SKU are served first come, first served: while any
backorder of the SKU is still waiting, a new order waits behind it even if codes are in
stock (fulfilment allocates the waiting ones, oldest first, when stock arrives). A waiting
backorder ends ALLOCATED (it got a code) or CANCELLED; once a code is allocated, the
allocation wins over a late cancellation.
"""

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal

from shared.contracts import CancelBackorder, CancelReason, PlaceOrder
from shared.crypto import Code, SealedCode, random_code

MAX_CODES_PER_DELIVERY = 5_000


class DecisionState(StrEnum):
    RESERVED = "RESERVED"
    BACKORDERED = "BACKORDERED"
    ALLOCATED = "ALLOCATED"
    CANCELLED = "CANCELLED"


@dataclass(frozen=True)
class ClaimedCode:
    """A code sold to one order: its public stock id and its ciphertext."""

    stock_id: int
    sealed: SealedCode


@dataclass
class OrderDecision:
    transaction_id: str
    account_id: uuid.UUID
    sku: str
    placed_at: datetime
    reply_to: str | None
    state: DecisionState
    stock_id: int | None = None
    cancel_reason: CancelReason | None = None

    @property
    def waiting(self) -> bool:
        return self.state is DecisionState.BACKORDERED

    @property
    def instant_outcome(self) -> Literal["RESERVED", "BACKORDERED"]:
        """What the order was told when it was placed; a later allocation does not change it."""
        return "RESERVED" if self.state is DecisionState.RESERVED else "BACKORDERED"

    def allocate(self, code: ClaimedCode) -> None:
        self.state = DecisionState.ALLOCATED
        self.stock_id = code.stock_id

    def cancel(self, reason: CancelReason = "DEADLINE_PASSED") -> None:
        self.state = DecisionState.CANCELLED
        self.cancel_reason = reason


def claims_to_attempt(
    orders: Sequence[PlaceOrder], skus_with_waiting_backorders: set[str]
) -> dict[str, list[str]]:
    """The orders that may take a code now, per SKU, in the order they were placed.

    None of a SKU whose backorders are still waiting: those orders queue behind them.
    """
    wanted: dict[str, list[str]] = {}
    for order in orders:
        if order.sku not in skus_with_waiting_backorders:
            wanted.setdefault(order.sku, []).append(order.transaction_id)
    return wanted


def reserve_or_backorder(order: PlaceOrder, code: ClaimedCode | None) -> OrderDecision:
    """The decision on a new order: RESERVED with the code claimed for it, else BACKORDERED.
    (The PostgreSQL adapter stores the same decision in its claim statement.)"""
    return OrderDecision(
        transaction_id=order.transaction_id,
        account_id=order.account_id,
        sku=order.sku,
        placed_at=placed_at_utc(order),
        reply_to=order.reply_to,
        state=DecisionState.RESERVED if code else DecisionState.BACKORDERED,
        stock_id=code.stock_id if code else None,
    )


def placed_at_utc(order: PlaceOrder) -> datetime:
    """When the order was placed, in UTC (a sender that gave no zone meant UTC)."""
    return order.placed_at if order.placed_at.tzinfo else order.placed_at.replace(tzinfo=UTC)


def cancelled_undecided(command: CancelBackorder) -> OrderDecision | None:
    """The decision on an order whose PlaceOrder never got decided (dead-lettered, or never
    arrived) and that its sender now cancels: CANCELLED, recorded like any decision, so a
    PlaceOrder of it arriving later finds it decided and sells nothing. None when the command
    does not say whose order it is (a backorder's cancellation: that order was decided)."""
    if command.account_id is None or command.placed_at is None:
        return None
    placed_at = command.placed_at
    return OrderDecision(
        transaction_id=command.transaction_id,
        account_id=command.account_id,
        sku=command.sku,
        placed_at=placed_at if placed_at.tzinfo else placed_at.replace(tzinfo=UTC),
        reply_to=None,
        state=DecisionState.CANCELLED,
        cancel_reason=command.reason,
    )


def first_of_each_order(orders: Iterable[PlaceOrder]) -> list[PlaceOrder]:
    """A redelivered command can appear twice in one batch: it is decided once."""
    seen: dict[str, PlaceOrder] = {}
    for order in orders:
        seen.setdefault(order.transaction_id, order)
    return list(seen.values())


# --- stock -----------------------------------------------------------------------------------


class CodeStatus(StrEnum):
    AVAILABLE = "AVAILABLE"
    SOLD = "SOLD"
    DUPLICATE = "DUPLICATE"
    """Found, when fingerprints changed version, to be the same code as another code in
    stock (see `plan_refingerprinting`): never sold."""
    UNREADABLE = "UNREADABLE"
    """Found, when fingerprints changed version, not to open (its key is not configured, or
    its ciphertext is damaged): never sold, until an operator makes it readable again and
    it is re-fingerprinted (docs/runbook.md)."""

    @property
    def for_sale(self) -> bool:
        """Is or becomes AVAILABLE once it holds its fingerprint (an UNREADABLE code that
        opens again comes back on sale)."""
        return self in (CodeStatus.AVAILABLE, CodeStatus.UNREADABLE)


@dataclass(frozen=True)
class NewCode:
    """A code about to be stocked: the stock id taken for it (its ciphertext is sealed to
    it), its keyed fingerprint (for duplicates) and its ciphertext."""

    stock_id: int
    fingerprint: bytes
    sealed: SealedCode


@dataclass(frozen=True)
class StockedCode:
    stock_id: int
    sku: str
    status: CodeStatus
    sealed: SealedCode


@dataclass(frozen=True)
class Refingerprinted:
    """A code in stock with its fingerprint of the current version, and its ciphertext:
    sealed again to its stock item if it was sealed to its SKU only and is still for sale."""

    code: StockedCode
    fingerprint: bytes
    sealed: SealedCode


@dataclass(frozen=True)
class RefingerprintPlan:
    keep: list[Refingerprinted]
    """Codes that take their new fingerprint."""
    duplicates: list[StockedCode]
    """Codes that are the same code as one kept: they lose their fingerprint, and become
    DUPLICATE unless already sold."""
    sold_twice: list[tuple[int, int]]
    """(kept, duplicate) stock ids of one code that was sold twice before it was found."""


def plan_refingerprinting(
    codes: Sequence[Refingerprinted], holders: Mapping[bytes, StockedCode]
) -> RefingerprintPlan:
    """Which of codes sharing a new fingerprint (among `codes`, and the codes in stock already
    `holders` of one) keeps it: a sold one, since it is out in the world, else the oldest.
    The others are the same code stocked again under another form (case, Unicode form,
    invisible characters), so they must never be sold."""
    by_fingerprint: dict[bytes, list[Refingerprinted]] = {}
    for code in codes:
        by_fingerprint.setdefault(code.fingerprint, []).append(code)
    plan = RefingerprintPlan(keep=[], duplicates=[], sold_twice=[])
    for fingerprint, sharing in by_fingerprint.items():
        holder = holders.get(fingerprint)
        candidates = [c.code for c in sharing]
        # The holder can be a row of this batch itself (given its version 2 fingerprint
        # before, then marked for another pass): it is one code, not its own duplicate.
        if holder is not None and all(c.stock_id != holder.stock_id for c in candidates):
            candidates.insert(0, holder)
        kept = min(candidates, key=lambda c: (c.status is not CodeStatus.SOLD, c.stock_id))
        plan.keep.extend(c for c in sharing if c.code.stock_id == kept.stock_id)
        for other in candidates:
            if other.stock_id == kept.stock_id:
                continue
            plan.duplicates.append(other)
            if other.status is CodeStatus.SOLD and kept.status is CodeStatus.SOLD:
                plan.sold_twice.append((kept.stock_id, other.stock_id))
    return plan


@dataclass(frozen=True)
class StockLevel:
    available: int
    sold: int


def newly_for_sale(plan: RefingerprintPlan) -> dict[str, int]:
    """How many codes of each SKU a re-fingerprinting plan puts on sale (they were not, with
    a version 1 fingerprint): their SKUs' waiting backorders can be served now."""
    counts: dict[str, int] = {}
    for code in plan.keep:
        if code.code.status.for_sale:
            counts[code.code.sku] = counts.get(code.code.sku, 0) + 1
    return counts


def distinct_codes(codes: Iterable[NewCode]) -> list[NewCode]:
    """Keeps the first of codes that share a redeem code (same fingerprint)."""
    seen: dict[bytes, NewCode] = {}
    for code in codes:
        seen.setdefault(code.fingerprint, code)
    return list(seen.values())


def demo_codes(count: int) -> list[Code]:
    """Random codes for demos and load tests: 4 groups of 4, a 4-digit PIN (may start with 0)."""
    if not 0 < count <= MAX_CODES_PER_DELIVERY:
        raise ValueError(f"generate between 1 and {MAX_CODES_PER_DELIVERY} codes at a time")
    return [random_code("DEMO", group_length=4, pin_digits=4) for _ in range(count)]
