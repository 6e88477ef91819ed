"""The unit of work the handlers run in: one database transaction, its repositories, and the
events it publishes (written to the outbox in that same transaction, on commit only)."""

import abc
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from services.inventory.domain import model
from services.inventory.domain.model import (
    ClaimedCode,
    CodeStatus,
    NewCode,
    OrderDecision,
    Refingerprinted,
    StockedCode,
    StockLevel,
)
from shared import unit_of_work
from shared.contracts import DeliverStock, Message, PlaceOrder, ProductSnapshot


class Products(Protocol):
    async def get(
        self, sku: str, *, for_update: bool = False, for_share: bool = False
    ) -> ProductSnapshot | None:
        """`for_update`: the row locked against every other lock (a change of the product);
        `for_share`: against a change only (stock intake, which may run side by side)."""
        ...

    async def save(self, product: ProductSnapshot) -> ProductSnapshot:
        """Stores the record; returns it with the version assigned (1, then +1 per save)."""
        ...

    async def page(self, limit: int, offset: int) -> tuple[int, list[ProductSnapshot]]: ...


class Codes(Protocol):
    async def claim(self, wanted: Mapping[str, Sequence[str]]) -> dict[str, ClaimedCode]:
        """Sells available codes of each SKU, oldest first, to its orders in the order given
        (`wanted`: SKU -> transaction ids).

        Returns what each served order got; a SKU's last orders get nothing when it has fewer
        codes available than orders.
        """
        ...

    async def sold_to(self, transaction_ids: Sequence[str]) -> dict[str, ClaimedCode]: ...

    async def for_sale(self, sku: str) -> list[StockedCode]:
        """The SKU's codes for sale (AVAILABLE, UNREADABLE), oldest first."""
        ...

    async def new_ids(self, count: int) -> list[int]:
        """Stock ids for codes about to be stocked, ascending (so they can be sealed to
        them); an id given out and not used is never given again."""
        ...

    async def add(self, sku: str, codes: Sequence[NewCode]) -> int:
        """Stocks the codes not already known (by fingerprint, of the current version) under
        their stock ids; returns how many were new."""
        ...

    async def any_old_fingerprints(self) -> bool:
        """Whether a code still has a fingerprint of version 1 (stocked before 0006, or by
        an inventory older than it)."""
        ...

    async def old_key_ids(self) -> set[str]:
        """The key ids of the codes with a fingerprint of version 1."""
        ...

    async def skus_with_old_fingerprints(self, limit: int) -> set[str]:
        """The SKUs of the first `limit` codes with a fingerprint of version 1: sold codes
        first (a code for sale could be the same as one sold), then oldest first."""
        ...

    async def with_old_fingerprints(self, skus: Iterable[str], limit: int) -> list[StockedCode]:
        """The first codes (in that order) of these SKUs with a fingerprint of version 1,
        locked until the transaction ends."""
        ...

    async def holding(self, fingerprints: Sequence[bytes]) -> dict[bytes, StockedCode]:
        """The codes that hold these fingerprints, locked until the transaction ends."""
        ...

    async def set_aside(self, stock_ids: Sequence[int], status: CodeStatus) -> None:
        """These codes are the same code as another one (DUPLICATE), or do not open
        (UNREADABLE): no fingerprint, version 2 (done with), and `status` unless sold."""
        ...

    async def refingerprint(self, codes: Sequence[Refingerprinted]) -> None:
        """Gives these codes their fingerprint of the current version and their ciphertext;
        an UNREADABLE one (made readable again) is AVAILABLE again."""
        ...

    async def available(self, sku: str) -> int:
        """Codes of the SKU for sale: AVAILABLE with a version 2 fingerprint (the others
        are not sold until re-fingerprinted)."""
        ...

    async def levels(self, skus: Sequence[str]) -> dict[str, StockLevel]: ...

    async def available_per_product(self) -> dict[str, int]: ...


class Deliveries(Protocol):
    """Supplier deliveries waiting for re-fingerprinting to end."""

    async def park(self, delivery: DeliverStock) -> bool:
        """Keeps the delivery until it can be stocked; False if it waits already."""
        ...

    async def oldest(self, exclude: Iterable[str] = ()) -> DeliverStock | None:
        """The delivery waiting longest (but those excluded), if any."""
        ...

    async def take(self, delivery_id: str) -> bool:
        """Removes the waiting delivery; False if it was not waiting (taken by another)."""
        ...


class Decisions(Protocol):
    async def get_many(self, transaction_ids: Sequence[str]) -> dict[str, OrderDecision]: ...

    async def get_for_update(self, transaction_id: str) -> OrderDecision | None: ...

    async def skus_with_waiting_backorders(self, skus: Iterable[str]) -> set[str]: ...

    async def add_all(self, decisions: Sequence[OrderDecision]) -> None: ...

    async def update(self, decision: OrderDecision) -> None: ...


@dataclass(frozen=True)
class Decided:
    """What `UnitOfWork.decide_orders` found and did for a batch of orders."""

    known: dict[str, OrderDecision]
    """The orders decided already (redelivered, or sent twice), by transaction id."""
    new: list[OrderDecision]
    """The decisions taken now on the other orders, in the order given, stored."""
    codes: dict[str, ClaimedCode]
    """The codes claimed now for the new orders, and the codes sold before to the known
    orders that were served, by transaction id."""


class UnitOfWork(unit_of_work.UnitOfWork):
    """`async with uow:` ... `await uow.commit()`; leaving the block without commit rolls back."""

    products: Products
    codes: Codes
    deliveries: Deliveries
    decisions: Decisions
    CONFLICTS: tuple[type[Exception], ...] = ()
    """What a transaction raises when it clashes with a concurrent one (a unique key taken
    meanwhile, a deadlock): trying it again may succeed."""

    def __init__(self, on_commit: Callable[[Sequence[Message]], None] | None = None) -> None:
        super().__init__(on_commit)
        # PlaceOrder commands found already decided (redelivered, or sent twice).
        self.already_decided = 0

    async def decide_orders(self, orders: Sequence[PlaceOrder]) -> Decided:
        """Decides `orders` (each once), under `serialize_skus` of their SKUs: finds the
        decisions stored already for any of them, with the codes sold to those that were
        served; for the others, claims codes as `codes.claim` does, but none for the orders
        of a SKU whose backorders are waiting (model.claims_to_attempt), and stores their
        decisions (model.reserve_or_backorder).

        Here from the repositories' own steps; PostgreSQL does it in one statement."""
        known = await self.decisions.get_many([o.transaction_id for o in orders])
        undecided = [o for o in orders if o.transaction_id not in known]
        codes: dict[str, ClaimedCode] = {}
        if undecided:
            waiting = await self.decisions.skus_with_waiting_backorders({o.sku for o in undecided})
            codes = await self.codes.claim(model.claims_to_attempt(undecided, waiting))
        new = [model.reserve_or_backorder(o, codes.get(o.transaction_id)) for o in undecided]
        if new:
            await self.decisions.add_all(new)
        served_before = [tx for tx, d in known.items() if d.stock_id is not None]
        if served_before:
            codes |= await self.codes.sold_to(served_before)
        return Decided(known, new, codes)

    @abc.abstractmethod
    async def serialize_skus(self, skus: Iterable[str]) -> None:
        """Holds every decision about these SKUs in other transactions until this one ends."""

    @abc.abstractmethod
    async def run_alone(self, task: str) -> bool:
        """Whether this transaction is, until it ends, the only one running `task` (on any
        process); False at once if another is."""
