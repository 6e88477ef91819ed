"""In-memory stand-ins for fulfilment's repositories and unit of work.

They keep the same contract as the PostgreSQL ones (tests/fulfilment_contract.py runs against
both), so handler tests on fakes say something true about production. Like PostgreSQL's
`now()`, a unit of work's clock stands still while it runs; `FakeStore.later` moves it on.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from services.fulfilment.domain.model import (
    OPEN_STATES,
    Backorder,
    BackorderState,
    OpenBackorders,
    SkuKnowledge,
    SupplierRequest,
)
from services.fulfilment.service_layer.unit_of_work import UnitOfWork
from tests import fakes


@dataclass
class BackorderRow:
    backorder: Backorder
    updated_at: datetime


@dataclass
class RequestRow:
    request: SupplierRequest
    due_at: datetime
    delivered_at: datetime | None = None


@dataclass
class State:
    skus: dict[str, SkuKnowledge] = field(default_factory=dict)
    backorders: dict[str, BackorderRow] = field(default_factory=dict)
    requests: dict[int, RequestRow] = field(default_factory=dict)
    next_request_id: int = 1


class FakeSkus:
    def __init__(self, state: State) -> None:
        self._state = state

    async def lock(self, sku: str) -> SkuKnowledge:
        return self._state.skus.setdefault(sku, SkuKnowledge(sku, True, None, 0, 0))

    async def apply_product(
        self, sku: str, active: bool, deadline_seconds: int | None, version: int
    ) -> bool:
        known = self._state.skus.get(sku)
        if known is not None and known.version >= version:
            return False
        hint = known.stock_hint if known else 0
        self._state.skus[sku] = SkuKnowledge(sku, active, deadline_seconds, version, hint)
        return True

    async def set_stock_hint(self, sku: str, available: int) -> None:
        self._set_hint(sku, lambda _: max(available, 0))

    async def take_from_stock_hint(self, sku: str) -> None:
        self._set_hint(sku, lambda hint: max(hint - 1, 0))

    def _set_hint(self, sku: str, new: Callable[[int], int]) -> None:
        known = self._state.skus.get(sku)
        if known is not None:
            self._state.skus[sku] = dataclasses.replace(known, stock_hint=new(known.stock_hint))


class FakeBackorders:
    def __init__(self, state: State, now: datetime) -> None:
        self._state = state
        self._now = now

    def _rows(self, *states: BackorderState) -> list[BackorderRow]:
        return [r for r in self._state.backorders.values() if r.backorder.state in states]

    async def add(self, backorder: Backorder) -> bool:
        if backorder.transaction_id in self._state.backorders:
            return False
        placed = dataclasses.replace(backorder, state=BackorderState.WAITING, cancel_reason=None)
        self._state.backorders[backorder.transaction_id] = BackorderRow(placed, self._now)
        return True

    async def get(self, transaction_id: str) -> Backorder | None:
        row = self._state.backorders.get(transaction_id)
        return copy.copy(row.backorder) if row else None

    async def get_for_update(self, transaction_id: str) -> Backorder | None:
        return await self.get(transaction_id)

    async def save(self, backorders: Sequence[Backorder]) -> None:
        for backorder in backorders:
            if backorder.transaction_id in self._state.backorders:
                self._state.backorders[backorder.transaction_id] = BackorderRow(
                    copy.copy(backorder), self._now
                )

    async def count(self, sku: str, state: BackorderState) -> int:
        return sum(1 for r in self._rows(state) if r.backorder.sku == sku)

    async def oldest_waiting(self, sku: str, limit: int | None = None) -> list[Backorder]:
        waiting = sorted(
            (r.backorder for r in self._rows(BackorderState.WAITING) if r.backorder.sku == sku),
            key=lambda b: (b.placed_at, b.transaction_id),
        )
        return [copy.copy(b) for b in waiting[:limit]]

    async def overdue(self, limit: int) -> list[Backorder]:
        due = sorted(
            (r.backorder for r in self._rows(BackorderState.WAITING)),
            key=lambda b: b.deadline_at,
        )
        return [copy.copy(b) for b in due if b.deadline_at <= self._now][:limit]

    async def seconds_to_next_deadline(self) -> float | None:
        deadlines = [r.backorder.deadline_at for r in self._rows(BackorderState.WAITING)]
        return (min(deadlines) - self._now).total_seconds() if deadlines else None

    async def take_stale_in_flight(self, older_than_s: float, limit: int) -> list[Backorder]:
        cutoff = self._now - timedelta(seconds=older_than_s)
        stale = sorted(
            (
                r
                for r in self._rows(BackorderState.ALLOCATING, BackorderState.CANCELLING)
                if r.updated_at < cutoff
            ),
            key=lambda r: r.updated_at,
        )[:limit]
        for row in stale:
            row.updated_at = self._now
        return [copy.copy(r.backorder) for r in stale]

    async def skus_waiting_unoffered(self, older_than_s: float, limit: int) -> list[str]:
        cutoff = self._now - timedelta(seconds=older_than_s)
        offering = {r.backorder.sku for r in self._rows(BackorderState.ALLOCATING)}
        skus = {
            r.backorder.sku
            for r in self._rows(BackorderState.WAITING)
            if r.updated_at < cutoff and r.backorder.sku not in offering
        }
        return sorted(skus)[:limit]

    async def open_per_sku(self) -> list[OpenBackorders]:
        per_sku: dict[str, list[Backorder]] = {}
        for row in self._rows(*OPEN_STATES):
            per_sku.setdefault(row.backorder.sku, []).append(row.backorder)
        return [
            OpenBackorders(
                sku,
                len(open_ones),
                (self._now - min(b.placed_at for b in open_ones)).total_seconds(),
            )
            for sku, open_ones in per_sku.items()
        ]

    async def listing(
        self, sku: str | None, state: BackorderState | None, limit: int
    ) -> list[Backorder]:
        found = sorted(
            (
                r.backorder
                for r in self._state.backorders.values()
                if (sku is None or r.backorder.sku == sku)
                and (state is None or r.backorder.state is state)
            ),
            key=lambda b: (b.placed_at, b.transaction_id),
        )
        return [copy.copy(b) for b in found[:limit]]


class FakeSupplierRequests:
    def __init__(self, state: State, now: datetime) -> None:
        self._state = state
        self._now = now

    async def open(self, sku: str, quantity: int, delay_s: float) -> bool:
        if quantity <= 0:
            raise CheckViolation("supplier_requests.quantity")
        if any(
            r.request.sku == sku and r.delivered_at is None for r in self._state.requests.values()
        ):
            return False
        request_id = self._state.next_request_id
        self._state.next_request_id += 1
        self._state.requests[request_id] = RequestRow(
            SupplierRequest(request_id, sku, quantity), self._now + timedelta(seconds=delay_s)
        )
        return True

    async def take_due(self, limit: int) -> list[SupplierRequest]:
        due = sorted(
            (
                r
                for r in self._state.requests.values()
                if r.delivered_at is None and r.due_at <= self._now
            ),
            key=lambda r: r.due_at,
        )
        return [r.request for r in due[:limit]]

    async def seconds_to_next_due(self) -> float | None:
        due = [r.due_at for r in self._state.requests.values() if r.delivered_at is None]
        return (min(due) - self._now).total_seconds() if due else None

    async def mark_delivered(self, request_id: int) -> None:
        if request_id in self._state.requests:
            self._state.requests[request_id].delivered_at = self._now


class CheckViolation(Exception):
    pass


class FakeStore(fakes.FakeStore[State]):
    """The fake database of tests.fakes, with the clock its transactions read `now()` from."""

    def __init__(self) -> None:
        super().__init__(State())
        self._offset = timedelta()
        self._last = datetime.min.replace(tzinfo=UTC)

    def uow(self) -> FakeUnitOfWork:
        return FakeUnitOfWork(self)

    def later(self, seconds: float) -> None:
        self._offset += timedelta(seconds=seconds)

    def now(self) -> datetime:
        """A transaction's `now()`: the real time moved on by `later`, always after the last."""
        now = max(datetime.now(UTC) + self._offset, self._last + timedelta(microseconds=1))
        self._last = now
        return now


class FakeUnitOfWork(fakes.FakeUnitOfWork[State], UnitOfWork):
    def __init__(self, store: FakeStore) -> None:
        super().__init__(store)
        self._now = store.now

    def _bind(self, state: State) -> None:
        now = self._now()
        self.skus = FakeSkus(state)
        self.backorders = FakeBackorders(state, now)
        self.supplier_requests = FakeSupplierRequests(state, now)
