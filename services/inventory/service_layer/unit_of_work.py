"""The unit of work the handlers run in: one database transaction, its repositories, and the
events it publishes (written to the outbox in that same transaction, on commit only)."""

import abc
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol

from services.inventory.domain.model import (
    ClaimedCode,
    NewCode,
    OrderDecision,
    Refingerprinted,
    StockedCode,
    StockLevel,
)
from shared import unit_of_work
from shared.contracts import Message, ProductSnapshot


class Products(Protocol):
    async def get(self, sku: str, *, for_update: bool = False) -> ProductSnapshot | None: ...

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

    async def new_ids(self, count: int) -> list[int]:
        """Stock ids for codes about to be stocked, ascending (so they can be sealed to
        them); an id given out and not used is never given again."""
        ...

    async def add(self, sku: str, codes: Sequence[NewCode]) -> int:
        """Stocks the codes not already known (by fingerprint, of the current version) under
        their stock ids; returns how many were new."""
        ...

    async def old_fingerprints_left(self) -> int:
        """How many codes still have a fingerprint of version 1 (stocked before 0006)."""
        ...

    async def skus_with_old_fingerprints(self, limit: int) -> set[str]:
        """The SKUs of the `limit` oldest codes with a fingerprint of version 1."""
        ...

    async def with_old_fingerprints(self, skus: Iterable[str], limit: int) -> list[StockedCode]:
        """The oldest codes of these SKUs with a fingerprint of version 1, locked until the
        transaction ends."""
        ...

    async def holding(self, fingerprints: Sequence[bytes]) -> dict[bytes, StockedCode]:
        """The codes that hold these fingerprints, locked until the transaction ends."""
        ...

    async def mark_duplicates(self, stock_ids: Sequence[int]) -> None:
        """These codes are the same code as another one: no fingerprint (of the current
        version), and DUPLICATE unless already sold."""
        ...

    async def refingerprint(self, codes: Sequence[Refingerprinted]) -> None:
        """Gives these codes their fingerprint of the current version and their ciphertext."""
        ...

    async def available(self, sku: str) -> int: ...

    async def levels(self, skus: Sequence[str]) -> dict[str, StockLevel]: ...

    async def available_per_product(self) -> dict[str, int]: ...


class Decisions(Protocol):
    async def get_many(self, transaction_ids: Sequence[str]) -> dict[str, OrderDecision]: ...

    async def get_for_update(self, transaction_id: str) -> OrderDecision | None: ...

    async def skus_with_waiting_backorders(self, skus: Iterable[str]) -> set[str]: ...

    async def add_all(self, decisions: Sequence[OrderDecision]) -> None: ...

    async def update(self, decision: OrderDecision) -> None: ...


class UnitOfWork(unit_of_work.UnitOfWork):
    """`async with uow:` ... `await uow.commit()`; leaving the block without commit rolls back."""

    products: Products
    codes: Codes
    decisions: Decisions

    def __init__(self, on_commit: Callable[[Sequence[Message]], None] | None = None) -> None:
        super().__init__(on_commit)
        # PlaceOrder commands found already decided (redelivered, or sent twice).
        self.already_decided = 0

    @abc.abstractmethod
    async def serialize_skus(self, skus: Iterable[str]) -> None:
        """Holds every decision about these SKUs in other transactions until this one ends."""
