"""In-memory stand-ins for inventory's repositories and unit of work.

They keep the same contract as the PostgreSQL ones (tests/inventory_contract.py runs against
both), so handler tests on fakes say something true about production.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from services.inventory.domain.model import (
    ClaimedCode,
    CodeStatus,
    DecisionState,
    NewCode,
    OrderDecision,
    Refingerprinted,
    StockedCode,
    StockLevel,
)
from services.inventory.service_layer.unit_of_work import UnitOfWork
from shared.contracts import DeliverStock, Message, ProductSnapshot
from shared.crypto import FINGERPRINT_VERSION, SealedCode
from tests import fakes
from tests.inventory_contract import OldCode, Row


@dataclass
class CodeRow:
    id: int
    sku: str
    fingerprint: bytes | None
    sealed: SealedCode
    fingerprint_version: int = FINGERPRINT_VERSION
    status: str = "AVAILABLE"
    transaction_id: str | None = None
    sold_at: datetime | None = None

    def stocked(self) -> StockedCode:
        return StockedCode(self.id, self.sku, CodeStatus(self.status), self.sealed)

    @property
    def for_sale(self) -> bool:
        return self.status == "AVAILABLE" and self.fingerprint_version == FINGERPRINT_VERSION


@dataclass
class State:
    products: dict[str, ProductSnapshot] = field(default_factory=dict)
    codes: dict[int, CodeRow] = field(default_factory=dict)
    decisions: dict[str, OrderDecision] = field(default_factory=dict)
    pending_deliveries: dict[str, DeliverStock] = field(default_factory=dict)
    next_code_id: int = 1


class FakeProducts:
    def __init__(self, state: State) -> None:
        self._state = state

    async def get(
        self, sku: str, *, for_update: bool = False, for_share: bool = False
    ) -> ProductSnapshot | None:
        return self._state.products.get(sku)

    async def save(self, product: ProductSnapshot) -> ProductSnapshot:
        current = self._state.products.get(product.sku)
        stored = product.model_copy(update={"version": current.version + 1 if current else 1})
        self._state.products[product.sku] = stored
        return stored

    async def page(self, limit: int, offset: int) -> tuple[int, list[ProductSnapshot]]:
        ordered = [self._state.products[sku] for sku in sorted(self._state.products)]
        return len(ordered), ordered[offset : offset + limit]


class FakeCodes:
    def __init__(self, state: State) -> None:
        self._state = state

    async def claim(self, wanted: Mapping[str, Sequence[str]]) -> dict[str, ClaimedCode]:
        claimed: dict[str, ClaimedCode] = {}
        for sku, transaction_ids in wanted.items():
            if any(row.transaction_id in transaction_ids for row in self._state.codes.values()):
                raise UniqueViolation("codes.transaction_id")
            free = sorted(
                (r for r in self._state.codes.values() if r.sku == sku and r.for_sale),
                key=lambda r: r.id,
            )
            for row, transaction_id in zip(free, transaction_ids, strict=False):
                row.status, row.transaction_id = "SOLD", transaction_id
                row.sold_at = datetime.now(UTC)
                claimed[transaction_id] = ClaimedCode(row.id, row.sealed)
        return claimed

    async def sold_to(self, transaction_ids: Sequence[str]) -> dict[str, ClaimedCode]:
        return {
            row.transaction_id: ClaimedCode(row.id, row.sealed)
            for row in self._state.codes.values()
            if row.transaction_id is not None and row.transaction_id in transaction_ids
        }

    async def for_sale(self, sku: str) -> list[StockedCode]:
        return [
            row.stocked()
            for _, row in sorted(self._state.codes.items())
            if row.sku == sku and row.stocked().status.for_sale
        ]

    async def new_ids(self, count: int) -> list[int]:
        first = self._state.next_code_id
        self._state.next_code_id += count
        return list(range(first, first + count))

    async def add(self, sku: str, codes: Sequence[NewCode]) -> int:
        if sku not in self._state.products:
            raise ForeignKeyViolation("codes.sku")
        known = {row.fingerprint for row in self._state.codes.values()}
        added = 0
        for code in sorted(codes, key=lambda c: c.stock_id):
            if code.fingerprint in known:
                continue
            if code.stock_id in self._state.codes:
                raise UniqueViolation("codes.id")
            known.add(code.fingerprint)
            self._state.codes[code.stock_id] = CodeRow(
                code.stock_id, sku, code.fingerprint, code.sealed
            )
            added += 1
        return added

    def _old(self) -> list[CodeRow]:
        return sorted(
            (r for r in self._state.codes.values() if r.fingerprint_version == 1),
            key=lambda r: (r.status != "SOLD", r.id),
        )

    async def any_old_fingerprints(self) -> bool:
        return bool(self._old())

    async def old_key_ids(self) -> set[str]:
        return {row.sealed.key_id for row in self._old()}

    async def skus_with_old_fingerprints(self, limit: int) -> set[str]:
        return {row.sku for row in self._old()[:limit]}

    async def with_old_fingerprints(self, skus: Iterable[str], limit: int) -> list[StockedCode]:
        wanted = set(skus)
        return [row.stocked() for row in self._old() if row.sku in wanted][:limit]

    async def holding(self, fingerprints: Sequence[bytes]) -> dict[bytes, StockedCode]:
        return {
            row.fingerprint: row.stocked()
            for row in self._state.codes.values()
            if row.fingerprint is not None and row.fingerprint in fingerprints
        }

    async def set_aside(self, stock_ids: Sequence[int], status: CodeStatus) -> None:
        for stock_id in stock_ids:
            row = self._state.codes[stock_id]
            row.fingerprint, row.fingerprint_version = None, FINGERPRINT_VERSION
            if row.status != CodeStatus.SOLD:
                row.status = status

    async def refingerprint(self, codes: Sequence[Refingerprinted]) -> None:
        taken = {r.fingerprint for r in self._state.codes.values()}
        for code in codes:
            if code.fingerprint in taken:
                raise UniqueViolation("codes.fingerprint")
            taken.add(code.fingerprint)
            row = self._state.codes[code.code.stock_id]
            row.fingerprint, row.fingerprint_version = code.fingerprint, FINGERPRINT_VERSION
            row.sealed = code.sealed
            if row.status == CodeStatus.UNREADABLE:
                row.status = CodeStatus.AVAILABLE

    async def available(self, sku: str) -> int:
        return sum(1 for r in self._state.codes.values() if r.sku == sku and r.for_sale)

    async def levels(self, skus: Sequence[str]) -> dict[str, StockLevel]:
        levels: dict[str, StockLevel] = {}
        for sku in skus:
            rows = [r for r in self._state.codes.values() if r.sku == sku]
            if rows:
                available = sum(1 for r in rows if r.for_sale)
                levels[sku] = StockLevel(available, sum(1 for r in rows if r.status == "SOLD"))
        return levels

    async def available_per_product(self) -> dict[str, int]:
        return {sku: await self.available(sku) for sku in self._state.products}


class FakeDeliveries:
    def __init__(self, state: State) -> None:
        self._state = state

    async def park(self, delivery: DeliverStock) -> bool:
        if delivery.delivery_id in self._state.pending_deliveries:
            return False
        self._state.pending_deliveries[delivery.delivery_id] = delivery
        return True

    async def oldest(self, exclude: Iterable[str] = ()) -> DeliverStock | None:
        left = set(exclude)
        waiting = [d for i, d in self._state.pending_deliveries.items() if i not in left]
        return waiting[0] if waiting else None

    async def take(self, delivery_id: str) -> bool:
        return self._state.pending_deliveries.pop(delivery_id, None) is not None


class FakeDecisions:
    def __init__(self, state: State) -> None:
        self._state = state

    async def get_many(self, transaction_ids: Sequence[str]) -> dict[str, OrderDecision]:
        return {
            tx: copy.copy(self._state.decisions[tx])
            for tx in transaction_ids
            if tx in self._state.decisions
        }

    async def get_for_update(self, transaction_id: str) -> OrderDecision | None:
        found = self._state.decisions.get(transaction_id)
        return copy.copy(found) if found else None

    async def skus_with_waiting_backorders(self, skus: Iterable[str]) -> set[str]:
        wanted = set(skus)
        return {
            d.sku
            for d in self._state.decisions.values()
            if d.sku in wanted and d.state is DecisionState.BACKORDERED
        }

    async def add_all(self, decisions: Sequence[OrderDecision]) -> None:
        for decision in decisions:
            if decision.transaction_id in self._state.decisions:
                raise UniqueViolation("decisions.transaction_id")
            self._state.decisions[decision.transaction_id] = copy.copy(decision)

    async def update(self, decision: OrderDecision) -> None:
        self._state.decisions[decision.transaction_id] = copy.copy(decision)


class UniqueViolation(Exception):
    pass


class ForeignKeyViolation(Exception):
    pass


class FakeStore(fakes.FakeStore[State]):
    def __init__(self) -> None:
        super().__init__(State())
        self.busy: set[str] = set()  # tasks a transaction is running (run_alone)

    def uow(self) -> FakeUnitOfWork:
        return FakeUnitOfWork(self)

    def events(self, topic: str | None = None) -> list[Message]:
        return self.messages(topic)


class FakeUnitOfWork(fakes.FakeUnitOfWork[State], UnitOfWork):
    CONFLICTS = (UniqueViolation,)

    def __init__(
        self, store: FakeStore, on_commit: Callable[[Sequence[Message]], None] | None = None
    ) -> None:
        super().__init__(store, on_commit)
        self.serialized: set[str] = set()
        self._busy = store.busy
        self._running: set[str] = set()

    def _bind(self, state: State) -> None:
        self.products = FakeProducts(state)
        self.codes = FakeCodes(state)
        self.deliveries = FakeDeliveries(state)
        self.decisions = FakeDecisions(state)

    async def serialize_skus(self, skus: Iterable[str]) -> None:
        self.serialized |= set(skus)

    async def run_alone(self, task: str) -> bool:
        if task in self._busy - self._running:
            return False
        self._busy.add(task)
        self._running.add(task)
        return True

    async def _end(self) -> None:
        self._busy -= self._running
        self._running.clear()
        await super()._end()


class FakeStockRoom:
    """tests/inventory_contract.py StockRoom on the fake store."""

    def __init__(self, store: FakeStore) -> None:
        self._store = store

    async def stock_the_old_way(self, sku: str, codes: Sequence[OldCode]) -> list[int]:
        state = self._store.state
        ids = []
        for code in codes:
            row_id = state.next_code_id
            state.next_code_id += 1
            sealed = code.sealed_to(sku)
            row = CodeRow(row_id, sku, os.urandom(32), sealed, fingerprint_version=1)
            if code.sold_to is not None:
                row.status, row.transaction_id = "SOLD", code.sold_to
                row.sold_at = datetime.now(UTC)
            state.codes[row_id] = row
            ids.append(row_id)
        return ids

    async def rows(self, stock_ids: Sequence[int]) -> dict[int, Row]:
        codes = self._store.state.codes
        return {
            i: Row(
                i,
                CodeStatus(codes[i].status),
                codes[i].sealed,
                codes[i].fingerprint_version,
                codes[i].fingerprint is not None,
            )
            for i in stock_ids
        }
