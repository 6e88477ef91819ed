"""The unit of work the handlers run in: one database transaction, its repositories, and the
commands and events it publishes (written to the outbox in that same transaction, on commit
only)."""

from collections.abc import Sequence
from typing import Protocol

from services.fulfilment.domain.model import (
    Backorder,
    BackorderState,
    OpenBackorders,
    SkuKnowledge,
    SupplierRequest,
)
from shared import unit_of_work


class Skus(Protocol):
    async def lock(self, sku: str) -> SkuKnowledge:
        """The SKU as known, recorded first if new, held against other transactions until
        this one ends: one allocation round of a SKU at a time. Take it before the SKU's
        backorders."""
        ...

    async def apply_product(
        self, sku: str, active: bool, deadline_seconds: int | None, version: int
    ) -> bool:
        """Records a product snapshot unless a newer one is known; True if it was applied."""
        ...

    async def set_stock_hint(self, sku: str, available: int) -> None:
        """Inventory said `available` codes were left (a negative number counts as 0)."""
        ...

    async def take_from_stock_hint(self, sku: str) -> None:
        """One code was taken (the hint never goes below 0)."""
        ...


class Backorders(Protocol):
    async def add(self, backorder: Backorder) -> bool:
        """Records a new backorder; False (and nothing changed) if it was known."""
        ...

    async def get(self, transaction_id: str) -> Backorder | None: ...

    async def get_for_update(self, transaction_id: str) -> Backorder | None: ...

    async def save(self, backorders: Sequence[Backorder]) -> None:
        """Stores the state (and cancel reason) of backorders read for update in this unit."""
        ...

    async def count(self, sku: str, state: BackorderState) -> int: ...

    async def oldest_waiting(self, sku: str, limit: int | None = None) -> list[Backorder]:
        """The SKU's waiting backorders (the `limit` oldest, or all), oldest first, for update."""
        ...

    async def overdue(self, limit: int) -> list[Backorder]:
        """Waiting backorders past their deadline, first due first, for update; those other
        transactions hold are passed over."""
        ...

    async def seconds_to_next_deadline(self) -> float | None:
        """Seconds until the first deadline of a waiting backorder (negative if past); None
        if none waits."""
        ...

    async def take_stale_in_flight(self, older_than_s: float, limit: int) -> list[Backorder]:
        """Backorders whose command got no answer for `older_than_s`, for update; taken
        again only after another `older_than_s`."""
        ...

    async def skus_waiting_unoffered(self, older_than_s: float, limit: int) -> list[str]:
        """SKUs with backorders waiting for `older_than_s` and none being offered a code."""
        ...

    async def open_per_sku(self) -> list[OpenBackorders]: ...

    async def listing(
        self, sku: str | None, state: BackorderState | None, limit: int
    ) -> list[Backorder]:
        """Backorders (of a SKU, in a state, when given), oldest first."""
        ...


class SupplierRequests(Protocol):
    async def open(self, sku: str, quantity: int, delay_s: float) -> bool:
        """Asks for `quantity` codes due in `delay_s`, unless the SKU has a request open
        already; True if this one was opened."""
        ...

    async def take_due(self, limit: int) -> list[SupplierRequest]:
        """Open requests whose delay has passed, first due first, for update; those other
        transactions hold are passed over."""
        ...

    async def seconds_to_next_due(self) -> float | None:
        """Seconds until the first open request is due (negative if past); None if none is
        open."""
        ...

    async def mark_delivered(self, request_id: int) -> None: ...


class UnitOfWork(unit_of_work.UnitOfWork):
    """`async with uow:` ... `await uow.commit()`; leaving the block without commit rolls back."""

    skus: Skus
    backorders: Backorders
    supplier_requests: SupplierRequests
