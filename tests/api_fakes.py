"""In-memory stand-ins for the api's repositories and unit of work.

They keep the same contract as the PostgreSQL ones (tests/api_contract.py runs against both),
so use-case tests on fakes say something true about production. As in PostgreSQL, a call
outside `uow.transaction()` commits by itself; inside, the work is kept only on commit.
"""

from __future__ import annotations

import copy
import random
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from services.api.domain.model import (
    AccountInfo,
    BulkOrder,
    Credential,
    ExchangeRate,
    MoneyMove,
    OperatorCredit,
    Order,
    OrderHistory,
    PinFormat,
    Product,
    Wallet,
    unit_number,
)
from services.api.service_layer.unit_of_work import Allocation, ProductChanged, UnitOfWork
from shared import topics
from shared.audit import AdminAction
from shared.contracts import CancelReason, Decision, Message


class UniqueViolation(Exception):
    pass


@dataclass(frozen=True)
class OutboxRow:
    topic: str
    key: str
    type: str
    payload: bytes


@dataclass
class State:
    accounts: dict[uuid.UUID, AccountInfo] = field(default_factory=dict)
    rate_limits: dict[uuid.UUID, Decimal | None] = field(default_factory=dict)
    credentials: list[tuple[uuid.UUID, str, bytes, datetime | None]] = field(default_factory=list)
    wallets: dict[tuple[uuid.UUID, str], Wallet] = field(default_factory=dict)
    # (transaction id or a serial for credits, kind) -> amount
    ledger: dict[tuple[str, str], Decimal] = field(default_factory=dict)
    products: dict[str, tuple[dict[str, Any], int]] = field(default_factory=dict)
    orders: dict[str, Order] = field(default_factory=dict)
    bulk_orders: dict[str, BulkOrder] = field(default_factory=dict)
    nudged_at: dict[str, datetime] = field(default_factory=dict)
    outbox: list[OutboxRow] = field(default_factory=list)
    credits: dict[str, OperatorCredit] = field(default_factory=dict)
    admin_audit: list[AdminAction] = field(default_factory=list)
    fx_rates: dict[str, ExchangeRate] = field(default_factory=dict)


Current = Callable[[], State]


def _now() -> datetime:
    return datetime.now(UTC)


class FakeAccounts:
    def __init__(self, state: Current) -> None:
        self._state = state

    async def add(
        self, name: str, rate_limit_per_s: Decimal | None, pin_format: PinFormat = "integer"
    ) -> uuid.UUID:
        account_id = uuid.uuid4()
        self._state().accounts[account_id] = AccountInfo(
            account_id, name, _now(), pin_format=pin_format
        )
        self._state().rate_limits[account_id] = rate_limit_per_s
        return account_id

    async def set_pin_format(self, account_id: uuid.UUID, pin_format: PinFormat) -> bool:
        account = self._state().accounts.get(account_id)
        if account is not None:
            self._state().accounts[account_id] = replace(account, pin_format=pin_format)
        return account is not None

    async def exists(self, account_id: uuid.UUID) -> bool:
        return account_id in self._state().accounts

    async def get(self, account_id: uuid.UUID) -> AccountInfo | None:
        return self._state().accounts.get(account_id)

    async def disable(self, account_id: uuid.UUID) -> datetime | None:
        account = self._state().accounts.get(account_id)
        if account is None:
            return None
        if account.disabled_at is None:
            account = self._state().accounts[account_id] = replace(account, disabled_at=_now())
        return account.disabled_at

    async def enable(self, account_id: uuid.UUID) -> bool:
        account = self._state().accounts.get(account_id)
        if account is not None:
            self._state().accounts[account_id] = replace(account, disabled_at=None)
        return account is not None


class FakeCredentials:
    def __init__(self, state: Current) -> None:
        self._state = state

    async def add(
        self, account_id: uuid.UUID, kind: str, secret_hash: bytes, expires_at: datetime | None
    ) -> None:
        if any(c[2] == secret_hash for c in self._state().credentials):
            raise UniqueViolation("credentials.secret_hash")
        self._state().credentials.append((account_id, kind, secret_hash, expires_at))

    async def expire_tokens(self, account_id: uuid.UUID, at: datetime) -> None:
        self._state().credentials = [
            (a, k, h, min(e or at, at) if a == account_id and k == "TOKEN" else e)
            for a, k, h, e in self._state().credentials
        ]

    async def revoke_tokens(self, account_id: uuid.UUID) -> int:
        now, ended = _now(), 0
        kept = []
        for a, k, h, e in self._state().credentials:
            if a == account_id and k == "TOKEN" and (e is None or e > now):
                e, ended = now, ended + 1
            kept.append((a, k, h, e))
        self._state().credentials = kept
        return ended

    async def live(self, api_key_hash: bytes, token_hash: bytes) -> list[Credential]:
        state = self._state()
        return [
            Credential(a, k, h, state.rate_limits.get(a), state.accounts[a].pin_format)
            for a, k, h, e in state.credentials
            if h in (api_key_hash, token_hash)
            and (e is None or e > _now())
            and state.accounts[a].disabled_at is None
        ]


class FakeOperatorCredits:
    def __init__(self, state: Current) -> None:
        self._state = state

    async def claim(self, credit: OperatorCredit) -> OperatorCredit | None:
        credits = self._state().credits
        if credit.idempotency_key in credits:
            return credits[credit.idempotency_key]
        credits[credit.idempotency_key] = replace(credit, at=_now())
        return None


class FakeWallets:
    def __init__(self, state: Current) -> None:
        self._state = state

    async def balances(self, account_id: uuid.UUID) -> list[tuple[str, Decimal]]:
        return sorted(
            (currency, wallet.balance)
            for (owner, currency), wallet in self._state().wallets.items()
            if owner == account_id
        )

    async def credit(
        self,
        account_id: uuid.UUID,
        currency: str,
        amount: Decimal,
        slots: int,
        kind: str = "CREDIT",
        transaction_id: str | None = None,
    ) -> bool:
        state = self._state()
        key = (transaction_id or f"credit-{len(state.ledger)}", kind)
        if key in state.ledger:
            return False
        state.ledger[key] = amount
        state.wallets.setdefault((account_id, currency), Wallet(currency)).credit(amount, slots)
        return True

    async def take_from_one_slot(
        self, account_id: uuid.UUID, currency: str, amount: Decimal
    ) -> bool:
        wallet = self._state().wallets.get((account_id, currency))
        return wallet is not None and wallet.take_from_one_slot(amount, random.choice)

    async def take_from_all_slots(
        self, account_id: uuid.UUID, currency: str, amount: Decimal
    ) -> bool:
        wallet = self._state().wallets.get((account_id, currency))
        return wallet is not None and wallet.take_from_all_slots(amount)


def _product(record: dict[str, Any], version: int) -> Product:
    return Product(
        record["sku"],
        record["currency"],
        Decimal(record["price"]),
        record["isInstantDeliverySupported"],
        record["active"],
        version=version,
    )


class FakeProducts:
    def __init__(self, state: Current) -> None:
        self._state = state

    async def for_orders(
        self, skus: Sequence[str], account_ids: Sequence[uuid.UUID]
    ) -> tuple[dict[str, Product], dict[uuid.UUID, set[str]]]:
        state = self._state()
        products = {sku: _product(*state.products[sku]) for sku in skus if sku in state.products}
        wallets: dict[uuid.UUID, set[str]] = {}
        for owner, currency in state.wallets:
            if owner in account_ids:
                wallets.setdefault(owner, set()).add(currency)
        return products, wallets

    def changed_now(self, versions: Mapping[str, int]) -> set[str]:
        stored = self._state().products
        return {
            sku
            for sku, version in versions.items()
            if sku not in stored or stored[sku][1] != version
        }

    async def changed(self, versions: Mapping[str, int]) -> set[str]:
        return self.changed_now(versions)

    async def apply(self, record: dict[str, Any], version: int) -> bool:
        stored = self._state().products.get(record["sku"])
        if stored is not None and stored[1] >= version:
            return False
        self._state().products[record["sku"]] = (copy.deepcopy(record), version)
        return True

    async def get_record(self, sku: str) -> tuple[dict[str, Any], int] | None:
        return self._state().products.get(sku)

    async def listing(
        self, skus: list[str] | None, limit: int, offset: int
    ) -> tuple[int, list[dict[str, Any]]]:
        shown = [
            record
            for sku, (record, _) in sorted(self._state().products.items())
            if record["active"] and (skus is None or sku in skus)
        ]
        return len(shown), shown[offset : offset + limit]

    async def currencies(self) -> list[str]:
        return sorted({r["currency"] for r, _ in self._state().products.values() if r["active"]})


class FakeExchangeRates:
    def __init__(self, state: Current) -> None:
        self._state = state

    async def all(self) -> list[ExchangeRate]:
        return list(self._state().fx_rates.values())

    async def put(self, base: str, quote: str, rate: Decimal) -> ExchangeRate:
        stored = ExchangeRate(base, quote, rate.quantize(Decimal("0.000001")), _now())
        self._state().fx_rates[stored.pair] = stored
        return stored


class FakeOrders:
    def __init__(self, state: Current) -> None:
        self._state = state

    def _add(self, orders: Sequence[Order], events: Sequence[bytes], key: str = "") -> None:
        state = self._state()
        for order in orders:
            if order.transaction_id in state.orders or (
                (order.transaction_id, "DEBIT") in state.ledger
            ):
                raise UniqueViolation("duplicate key: ledger_once_per_order")
        for order, event in zip(orders, events, strict=True):
            state.ledger[order.transaction_id, "DEBIT"] = -order.grand_total
            state.orders[order.transaction_id] = order
            state.outbox.append(
                OutboxRow(
                    topics.ORDER_EVENTS.name, key or order.transaction_id, "OrderAccepted", event
                )
            )

    def _check_versions(self, versions: Mapping[str, int] | None) -> None:
        stale = FakeProducts(self._state).changed_now(versions or {})
        if stale:
            raise ProductChanged(stale)

    async def pay_and_record(
        self,
        orders: Sequence[Order],
        accepted_events: Sequence[bytes],
        versions: Mapping[str, int] | None = None,
    ) -> set[str]:
        self._check_versions(versions)
        state = self._state()
        totals: dict[tuple[uuid.UUID, str], Decimal] = {}
        for o in orders:
            totals[o.account_id, o.currency] = totals.get((o.account_id, o.currency), Decimal(0))
            totals[o.account_id, o.currency] += o.grand_total
        paying = {
            w: random.choice(state.wallets[w].slots_that_pay(total))
            for w, total in totals.items()
            if w in state.wallets and state.wallets[w].slots_that_pay(total)
        }
        kept = [
            (o, e)
            for o, e in zip(orders, accepted_events, strict=True)
            if (o.account_id, o.currency) in paying
        ]
        self._add([o for o, _ in kept], [e for _, e in kept])
        for w, slot in paying.items():
            state.wallets[w].slots[slot] -= totals[w]
        return {o.transaction_id for o, _ in kept}

    async def record(
        self,
        orders: Sequence[Order],
        accepted_events: Sequence[bytes],
        versions: Mapping[str, int] | None = None,
    ) -> None:
        self._check_versions(versions)
        self._add(orders, accepted_events)

    async def record_bulk(self, bulk: BulkOrder, accepted_events: Sequence[bytes]) -> None:
        state = self._state()
        if bulk.transaction_id in state.bulk_orders:
            raise UniqueViolation("duplicate key: bulk_orders_pkey")
        self._add(bulk.units, accepted_events, key=bulk.transaction_id)
        state.bulk_orders[bulk.transaction_id] = replace(bulk, units=())

    async def bulk_account(self, transaction_id: str) -> uuid.UUID | None:
        bulk = self._state().bulk_orders.get(transaction_id)
        return None if bulk is None else bulk.account_id

    async def get_bulk(self, account_id: uuid.UUID, transaction_id: str) -> BulkOrder | None:
        bulk = self._state().bulk_orders.get(transaction_id)
        if bulk is None or bulk.account_id != account_id:
            return None
        units = [o for o in self._state().orders.values() if o.bulk_id == transaction_id]
        return replace(bulk, units=tuple(sorted(units, key=unit_number)))

    async def lock_client_order_numbers(self, wanted: Sequence[tuple[uuid.UUID, str]]) -> None:
        return None  # one fake unit of work runs at a time

    async def find_by_client_order_numbers(
        self, wanted: Sequence[tuple[uuid.UUID, str]]
    ) -> dict[tuple[uuid.UUID, str], str]:
        found: dict[tuple[uuid.UUID, str], str] = {}
        both: dict[str, Order | BulkOrder] = {**self._state().orders, **self._state().bulk_orders}
        for tx in sorted(both):
            order = both[tx]
            key = (order.account_id, order.client_order_number)
            unit = isinstance(order, Order) and order.bulk_id is not None
            if order.client_order_number and not unit and key in wanted:
                found.setdefault(key, tx)
        return found

    def _complete(self, tx: str, stock_id: int, sealed: str) -> Order | None:
        order = self._state().orders.get(tx)
        if order is None or order.status != "PROCESSING":
            return None
        if any(o.stock_id == stock_id for o in self._state().orders.values()):
            raise UniqueViolation("duplicate key: orders_stock_id_key")
        self._state().orders[tx] = order.complete(stock_id, sealed)
        return self._state().orders[tx]

    async def complete_and_announce(
        self, allocations: Sequence[tuple[str, int, str, bytes]]
    ) -> set[str]:
        done = set()
        for tx, stock_id, sealed, event in allocations:
            if self._complete(tx, stock_id, sealed) is not None:
                done.add(tx)
                self._state().outbox.append(
                    OutboxRow(topics.ORDER_EVENTS.name, tx, "OrderCompleted", event)
                )
        return done

    async def complete(self, allocations: Sequence[Allocation]) -> list[Order]:
        completed = [self._complete(*allocation) for allocation in allocations]
        return [order for order in completed if order is not None]

    async def backorder(self, transaction_id: str) -> Order | None:
        order = self._state().orders.get(transaction_id)
        if order is None or order.status != "PROCESSING" or order.backordered:
            return None
        self._state().orders[transaction_id] = order.backorder(_now())
        return self._state().orders[transaction_id]

    async def cancel(self, transaction_id: str, reason: CancelReason) -> Order | None:
        order = self._state().orders.get(transaction_id)
        if order is None or order.status != "PROCESSING":
            return None
        self._state().orders[transaction_id] = order.cancel(reason)
        return self._state().orders[transaction_id]

    async def get(self, account_id: uuid.UUID, transaction_id: str) -> Order | None:
        order = self._state().orders.get(transaction_id)
        return order if order is not None and order.account_id == account_id else None

    async def get_many(self, transaction_ids: Sequence[str]) -> list[Order]:
        orders = self._state().orders
        return [orders[tx] for tx in transaction_ids if tx in orders]

    async def listing(
        self,
        account_id: uuid.UUID,
        *,
        transaction_id: str | None,
        client_order_number: str | None,
        status: str | None,
        limit: int,
        offset: int,
    ) -> tuple[int, list[Order | BulkOrder]]:
        everything: dict[str, Order | BulkOrder] = {
            tx: o for tx, o in self._state().orders.items() if o.bulk_id is None
        }
        for tx in self._state().bulk_orders:
            bulk = await self.get_bulk(account_id, tx)
            if bulk is not None:
                everything[tx] = bulk
        shown = [
            o
            for tx, o in sorted(everything.items(), reverse=True)
            if o.account_id == account_id
            and transaction_id in (None, tx)
            and client_order_number in (None, o.client_order_number)
            and status in (None, o.status)
        ]
        return len(shown), shown[offset : offset + limit]

    async def take_undecided(
        self, older_than_s: float, again_after_s: float, limit: int
    ) -> list[Order]:
        nudged = self._state().nudged_at
        never = datetime.min.replace(tzinfo=UTC)
        return self._take(
            older_than_s,
            again_after_s,
            limit,
            lambda o: True,
            lambda o: (nudged.get(o.transaction_id, never), o.created_at),
        )

    async def take_past_deadline(
        self, deadline_s: float, again_after_s: float, limit: int
    ) -> list[Order]:
        return self._take(
            deadline_s, again_after_s, limit, lambda o: not o.backordered, lambda o: o.created_at
        )

    def _take(
        self,
        older_than_s: float,
        again_after_s: float,
        limit: int,
        where: Callable[[Order], bool],
        order_by: Callable[[Order], Any],
    ) -> list[Order]:
        state, now = self._state(), _now()
        never = datetime.min.replace(tzinfo=UTC)
        due = sorted(
            (
                o
                for o in state.orders.values()
                if o.status == "PROCESSING"
                and where(o)
                and o.created_at < now - timedelta(seconds=older_than_s)
                and state.nudged_at.get(o.transaction_id, never)
                < now - timedelta(seconds=again_after_s)
            ),
            key=order_by,
        )[:limit]
        for order in due:
            state.nudged_at[order.transaction_id] = now
        return due

    async def oldest_stuck(self, older_than_s: float) -> tuple[str, float] | None:
        now = _now()
        stuck = [
            o
            for o in self._state().orders.values()
            if o.status == "PROCESSING"
            and not o.backordered
            and o.created_at < now - timedelta(seconds=older_than_s)
        ]
        if not stuck:
            return None
        oldest = min(stuck, key=lambda o: o.created_at)
        return oldest.transaction_id, (now - oldest.created_at).total_seconds()

    async def history(self, transaction_id: str) -> OrderHistory | None:
        state = self._state()
        order = state.orders.get(transaction_id)
        if order is None:
            return None
        return OrderHistory(
            order=order,
            updated_at=_now(),
            asked_again_at=state.nudged_at.get(transaction_id),
            money=[
                MoneyMove(kind, amount, order.currency, _now())
                for (tx, kind), amount in state.ledger.items()
                if tx == transaction_id
            ],
        )

    async def processing_summary(self) -> list[tuple[str, int, float]]:
        stages: dict[str, list[Order]] = {}
        for o in self._state().orders.values():
            if o.status == "PROCESSING":
                stages.setdefault("backordered" if o.backordered else "awaiting_decision", [])
                stages["backordered" if o.backordered else "awaiting_decision"].append(o)
        return [
            (stage, len(os), (_now() - min(o.created_at for o in os)).total_seconds())
            for stage, os in sorted(stages.items())
        ]


class FakeAdminAudit:
    def __init__(self, state: Current) -> None:
        self._state = state

    async def record(self, action: AdminAction) -> None:
        self._state().admin_audit.append(action)

    async def latest(self, limit: int) -> list[AdminAction]:
        return self._state().admin_audit[::-1][:limit]


class FakeStore:
    """The 'database' the fake units of work share."""

    def __init__(self) -> None:
        self.state = State()
        self.commits = 0

    def uow(self) -> FakeUnitOfWork:
        return FakeUnitOfWork(self)

    def events(self, topic: str | None = None) -> list[OutboxRow]:
        return [row for row in self.state.outbox if topic is None or row.topic == topic]


class FakeUnitOfWork(UnitOfWork):
    def __init__(self, store: FakeStore) -> None:
        super().__init__()
        self._store = store
        self._working: State | None = None

    def _current(self) -> State:
        return self._working if self._working is not None else self._store.state

    async def _open(self) -> None:
        self.accounts = FakeAccounts(self._current)
        self.credentials = FakeCredentials(self._current)
        self.wallets = FakeWallets(self._current)
        self.credits = FakeOperatorCredits(self._current)
        self.products = FakeProducts(self._current)
        self.orders = FakeOrders(self._current)
        self.admin_audit = FakeAdminAudit(self._current)
        self.fx_rates = FakeExchangeRates(self._current)

    async def _begin(self, lock_timeout_s: float | None) -> None:
        self._working = copy.deepcopy(self._store.state)

    async def _commit(self, events: Sequence[tuple[str, str, Message]]) -> None:
        assert self._working is not None
        self._working.outbox.extend(
            OutboxRow(t, k, getattr(m, "type", ""), m.to_bytes()) for t, k, m in events
        )
        self._store.state = self._working
        self._store.commits += 1
        self._working = copy.deepcopy(self._working)

    async def _rollback(self) -> None:
        self._working = None

    async def _close(self) -> None:
        self._working = None


def reserved(transaction_id: str) -> Decision:
    """Inventory's decision for an order it reserved a code for (stock id 7)."""
    return Decision(
        transaction_id=transaction_id,
        sku="SKU",
        outcome="RESERVED",
        stock_id=7,
        sealed_code="sealed",
    )
