"""The unit of work the api's use cases run in: a database connection, its repositories, and
the events a transaction publishes (written to the outbox in that same transaction).

    async with new_uow() as uow, uow.transaction():
        ...
        await uow.commit()          # leaving the transaction without commit rolls back

Outside `transaction()` each repository call is ONE statement that commits by itself. The
instant path is built on that: its acceptance (`orders.pay_and_record`) and its recording
(`orders.complete_and_announce`) are single statements that write their events themselves, so
they need no BEGIN / COMMIT round trips; the reads are single statements too. Nothing else
writes outside a transaction.
"""

import abc
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from types import TracebackType
from typing import Any, Protocol, Self

from services.api.domain.model import (
    AccountInfo,
    BulkOrder,
    Credential,
    ExchangeRate,
    OperatorCredit,
    Order,
    OrderHistory,
    PinFormat,
    Product,
)
from shared.audit import AdminAction
from shared.contracts import CancelReason, Message

# (transaction id, stock id, sealed code): a code inventory sold to an order.
Allocation = tuple[str, int, str]


class LockTimeout(Exception):
    """A lock stayed held by another transaction past the transaction's `lock_timeout_s`."""


class TransactionConflict(Exception):
    """The transaction lost a race (a deadlock, a serialization failure) and was rolled
    back; running it again is the remedy."""


class ProductChanged(Exception):
    """The read model holds another version of these products than the orders were priced
    and checked at: nothing of them was paid for or recorded."""

    def __init__(self, skus: Iterable[str]) -> None:
        self.skus = frozenset(skus)
        super().__init__(f"products changed meanwhile: {', '.join(sorted(self.skus))}")


class Accounts(Protocol):
    async def add(
        self, name: str, rate_limit_per_s: Decimal | None, pin_format: PinFormat = "integer"
    ) -> uuid.UUID: ...

    async def set_pin_format(self, account_id: uuid.UUID, pin_format: PinFormat) -> bool:
        """False: no such account."""
        ...

    async def exists(self, account_id: uuid.UUID) -> bool: ...

    async def get(self, account_id: uuid.UUID) -> AccountInfo | None: ...

    async def disable(self, account_id: uuid.UUID) -> datetime | None:
        """None of the account's credentials is live from now on. Returns when it was
        disabled (at its first disabling, if it was already); None: no such account."""
        ...

    async def enable(self, account_id: uuid.UUID) -> bool:
        """The account's live credentials work again; False: no such account."""
        ...


class Credentials(Protocol):
    async def add(
        self, account_id: uuid.UUID, kind: str, secret_hash: bytes, expires_at: datetime | None
    ) -> None: ...

    async def expire_tokens(self, account_id: uuid.UUID, at: datetime) -> None:
        """The account's tokens stop working at `at` (or earlier, if they expire before)."""
        ...

    async def revoke_tokens(self, account_id: uuid.UUID) -> int:
        """The account's tokens stop working now (the database's clock); returns how many
        were still live. Its API keys are left as they are."""
        ...

    async def live(self, api_key_hash: bytes, token_hash: bytes) -> list[Credential]:
        """The unexpired credentials having either hash, of accounts not disabled."""
        ...


class Wallets(Protocol):
    """The slots of each (account, currency) wallet, and the ledger of every movement."""

    async def balances(self, account_id: uuid.UUID) -> list[tuple[str, Decimal]]:
        """(currency, balance) of each wallet of the account, by currency."""
        ...

    async def credit(
        self,
        account_id: uuid.UUID,
        currency: str,
        amount: Decimal,
        slots: int,
        kind: str = "CREDIT",
        transaction_id: str | None = None,
    ) -> bool:
        """Adds money, split evenly over `slots` slots (Wallet.credit), with its ledger row.
        A refund (`transaction_id` given) happens once per order: False if it already did."""
        ...

    async def take_from_one_slot(
        self, account_id: uuid.UUID, currency: str, amount: Decimal
    ) -> bool:
        """Takes `amount` from one slot that holds it (waiting for one if all are busy);
        False, nothing taken, when no single slot holds it."""
        ...

    async def take_from_all_slots(
        self, account_id: uuid.UUID, currency: str, amount: Decimal
    ) -> bool:
        """Takes `amount` from all slots together and spreads the rest evenly
        (domain.model.rebalanced); False, nothing taken, when the balance is below it."""
        ...


class OperatorCredits(Protocol):
    async def claim(self, credit: OperatorCredit) -> OperatorCredit | None:
        """Records `credit` under its idempotency key, unless the key is taken: None when it
        was recorded now (apply the credit in this same transaction), else the credit that
        holds the key. A concurrent claim of the key waits for this transaction to end."""
        ...


class Products(Protocol):
    """The read model of inventory's catalog."""

    async def for_orders(
        self, skus: Sequence[str], account_ids: Sequence[uuid.UUID]
    ) -> tuple[dict[str, Product], dict[uuid.UUID, set[str]]]:
        """The products of `skus` that exist, and each account's wallet currencies: what a
        batch of orders is checked against, in one round trip."""
        ...

    async def changed(self, versions: Mapping[str, int]) -> set[str]:
        """The SKUs (of SKU -> version) whose version the read model no longer holds."""
        ...

    async def apply(self, record: dict[str, Any], version: int) -> bool:
        """Stores a product snapshot unless a newer one is stored; True if it was applied."""
        ...

    async def get_record(self, sku: str) -> tuple[dict[str, Any], int] | None:
        """The stored snapshot and its version."""
        ...

    async def listing(
        self, skus: list[str] | None, limit: int, offset: int
    ) -> tuple[int, list[dict[str, Any]]]:
        """Active products only, by SKU; `skus` narrows the list."""
        ...

    async def currencies(self) -> list[str]:
        """The currencies active products are priced in."""
        ...


class ExchangeRates(Protocol):
    async def all(self) -> list[ExchangeRate]: ...

    async def put(self, base: str, quote: str, rate: Decimal) -> ExchangeRate:
        """Sets the rate of base→quote (as of now), replacing the one set before."""
        ...


class Orders(Protocol):
    async def pay_and_record(
        self,
        orders: Sequence[Order],
        accepted_events: Sequence[bytes],
        versions: Mapping[str, int] | None = None,
    ) -> set[str]:
        """Pays for the orders and records them (DEBIT ledger rows, order rows, their
        OrderAccepted events) in ONE statement: each wallet pays the sum of its orders from
        one slot that holds it and no other transaction holds. Returns the transaction ids
        recorded; a wallet without such a slot has nothing of its orders changed.

        `versions` (SKU -> version the orders were priced at): if the read model holds
        another version of any of them, nothing is changed and ProductChanged is raised."""
        ...

    async def record(
        self,
        orders: Sequence[Order],
        accepted_events: Sequence[bytes],
        versions: Mapping[str, int] | None = None,
    ) -> None:
        """Ledger rows, order rows and OrderAccepted events of orders paid for already in
        this transaction. A second DEBIT of an order is refused by the database. `versions`
        as for `pay_and_record`: nothing is recorded and ProductChanged raised (the caller
        then rolls the transaction back)."""
        ...

    async def record_bulk(self, bulk: BulkOrder, accepted_events: Sequence[bytes]) -> None:
        """The bulk order's row, and for each of its units (paid for already in this
        transaction) a DEBIT ledger row of its price, its order row and its OrderAccepted
        event (keyed by the bulk order's transactionId)."""
        ...

    async def get_bulk(self, account_id: uuid.UUID, transaction_id: str) -> BulkOrder | None:
        """The account's bulk order with its units in unit order; another account's is None."""
        ...

    async def bulk_account(self, transaction_id: str) -> uuid.UUID | None:
        """Whose bulk order this is (for operators); None when no bulk order has this id."""
        ...

    async def lock_client_order_numbers(self, wanted: Sequence[tuple[uuid.UUID, str]]) -> None:
        """Holds these (account, clientOrderNumber) pairs until the transaction ends, so that
        identical dup-checked requests in other transactions wait for this one."""
        ...

    async def find_by_client_order_numbers(
        self, wanted: Sequence[tuple[uuid.UUID, str]]
    ) -> dict[tuple[uuid.UUID, str], str]:
        """The first order (by transactionId), instant or bulk, of each pair that has one."""
        ...

    async def complete_and_announce(
        self, allocations: Sequence[tuple[str, int, str, bytes]]
    ) -> set[str]:
        """Order.complete for each (transaction id, stock id, sealed code, OrderCompleted
        event) whose order is still PROCESSING, with its event: ONE statement. Returns the
        transaction ids it completed."""
        ...

    async def complete(self, allocations: Sequence[Allocation]) -> list[Order]:
        """Order.complete for each allocation whose order is still PROCESSING; returns the
        orders this call completed (not those completed already)."""
        ...

    async def backorder(self, transaction_id: str) -> Order | None:
        """Order.backorder if the order is PROCESSING and not backordered yet; else None."""
        ...

    async def cancel(self, transaction_id: str, reason: CancelReason) -> Order | None:
        """Order.cancel if the order is PROCESSING; else None (cancelled once)."""
        ...

    async def get(self, account_id: uuid.UUID, transaction_id: str) -> Order | None:
        """The account's order; another account's is None."""
        ...

    async def get_many(self, transaction_ids: Sequence[str]) -> list[Order]: ...

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
        """One account's orders, newest first, narrowed by the filters given."""
        ...

    async def take_undecided(
        self, older_than_s: float, again_after_s: float, limit: int
    ) -> list[Order]:
        """PROCESSING orders older than `older_than_s` not taken in the last
        `again_after_s` (never taken first); marks them taken now."""
        ...

    async def take_past_deadline(
        self, deadline_s: float, again_after_s: float, limit: int
    ) -> list[Order]:
        """PROCESSING orders with no decision heard of (not backordered) accepted more than
        `deadline_s` ago and not taken in the last `again_after_s`, oldest first; marks them
        taken now."""
        ...

    async def oldest_stuck(self, older_than_s: float) -> tuple[str, float] | None:
        """The oldest order PROCESSING with no decision heard of (not backordered) and older
        than `older_than_s`: its transaction id and age in seconds."""
        ...

    async def history(self, transaction_id: str) -> OrderHistory | None:
        """The order (of any account), when it last changed and was last asked about, and
        its ledger entries in the order they were written."""
        ...

    async def processing_summary(self) -> list[tuple[str, int, float]]:
        """(stage, count, age of the oldest in seconds) of the PROCESSING orders; stage
        `awaiting_decision` or `backordered`."""
        ...


class AdminAudit(Protocol):
    """The record of admin actions (shared.audit): appended to, never changed."""

    async def record(self, action: AdminAction) -> None: ...

    async def latest(self, limit: int) -> list[AdminAction]:
        """The last `limit` actions recorded, newest first."""
        ...


class UnitOfWork(abc.ABC):
    accounts: Accounts
    credentials: Credentials
    wallets: Wallets
    credits: OperatorCredits
    products: Products
    orders: Orders
    admin_audit: AdminAudit
    fx_rates: ExchangeRates

    def __init__(self) -> None:
        self._pending: list[tuple[str, str, Message]] = []
        self._in_transaction = False

    def publish(self, topic: str, key: str, message: Message) -> None:
        """Publish after commit (outbox): written with the transaction, on commit only."""
        assert self._in_transaction, "publish inside `uow.transaction()`"
        self._pending.append((topic, key, message))

    @contextlib.asynccontextmanager
    async def transaction(self, lock_timeout_s: float | None = None) -> AsyncIterator[None]:
        """One database transaction; leaving it without `commit()` rolls it back. A lock
        another transaction holds longer than `lock_timeout_s` raises LockTimeout; a lost
        race (deadlock, serialization failure) raises TransactionConflict."""
        self._pending = []
        await self._begin(lock_timeout_s)
        self._in_transaction = True
        try:
            yield
        except Exception as exc:
            mapped = self._translate(exc)
            if mapped is None:
                raise
            raise mapped from exc
        finally:
            self._in_transaction = False
            self._pending = []
            await self._rollback()

    async def commit(self) -> None:
        assert self._in_transaction, "commit inside `uow.transaction()`"
        await self._commit(self._pending)
        self._pending = []

    async def __aenter__(self) -> Self:
        await self._open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._close()

    @abc.abstractmethod
    async def _open(self) -> None:
        """Takes a connection (no transaction yet)."""

    @abc.abstractmethod
    async def _begin(self, lock_timeout_s: float | None) -> None: ...

    @abc.abstractmethod
    async def _commit(self, events: Sequence[tuple[str, str, Message]]) -> None:
        """Writes the events to the outbox and commits, atomically."""

    @abc.abstractmethod
    async def _rollback(self) -> None:
        """Rolls back what was not committed (nothing once committed)."""

    @abc.abstractmethod
    async def _close(self) -> None:
        """Gives the connection back."""

    def _translate(self, exc: Exception) -> Exception | None:
        """The LockTimeout or TransactionConflict that a database error means, if any."""
        return None
