"""The api database's tables, declared once (shared/tables.py says how they are used)."""

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Index,
    Integer,
    LargeBinary,
    Numeric,
    SmallInteger,
    Text,
    Uuid,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel

from shared.tables import (
    CURRENCY,
    MONEY,
    TIMESTAMP,
    OutboxColumns,
    OutboxDeadLetterColumns,
    defaults_to_now,
)

# An exchange rate, stored exactly: up to 12 digits before the point and 6 after.
RATE = Numeric(18, 6)


class ApiTable(SQLModel, registry=registry()):
    """Base of the api database's tables: `ApiTable.metadata` holds them all."""


class Account(ApiTable, table=True):
    __tablename__ = "accounts"
    __table_args__ = (
        CheckConstraint("length(name) BETWEEN 1 AND 200"),
        CheckConstraint("rate_limit_per_s > 0"),
        CheckConstraint("pin_format IN ('integer', 'string')"),
    )

    id: uuid.UUID = Field(primary_key=True, sa_type=Uuid)
    name: str = Field(sa_type=Text)
    created_at: datetime = defaults_to_now()
    # NULL: the service's default (API_RATE_LIMIT_PER_S).
    rate_limit_per_s: Decimal | None = Field(default=None, sa_type=Numeric(10, 2))
    # Set by an operator: no credential of the account authenticates (NULL: enabled).
    disabled_at: datetime | None = Field(default=None, sa_type=TIMESTAMP)
    # How Get Codes sends this account's PINs (docs/api.md, "PIN format"). Accounts that
    # existed before the choice keep `string`, what they had always received (migration 0012).
    pin_format: str = Field(
        default="integer", sa_type=Text, sa_column_kwargs={"server_default": "integer"}
    )


class Credential(ApiTable, table=True):
    """An API key or an access token, stored as its keyed hash only."""

    __tablename__ = "credentials"
    __table_args__ = (
        CheckConstraint("kind IN ('API_KEY', 'TOKEN')"),
        Index("credentials_account", "account_id", "kind"),
    )

    id: int | None = Field(default=None, primary_key=True, sa_type=BigInteger)
    account_id: uuid.UUID = Field(foreign_key="accounts.id", sa_type=Uuid)
    kind: str = Field(sa_type=Text)
    secret_hash: bytes = Field(unique=True, sa_type=LargeBinary)
    created_at: datetime = defaults_to_now()
    expires_at: datetime | None = Field(default=None, sa_type=TIMESTAMP)


class WalletSlot(ApiTable, table=True):
    """One account's balance in one currency is the sum of its slots. Orders debit one slot
    each (SKIP LOCKED), so one busy account is not serialised on one row; no slot, and so no
    balance, can go negative (services/api/domain/model.py has the rules)."""

    __tablename__ = "wallet_slots"
    __table_args__ = (CheckConstraint("balance >= 0"),)

    account_id: uuid.UUID = Field(primary_key=True, foreign_key="accounts.id", sa_type=Uuid)
    currency: str = Field(primary_key=True, sa_type=CURRENCY)
    slot: int = Field(primary_key=True, sa_type=SmallInteger)
    balance: Decimal = Field(
        default=Decimal("0"), sa_type=MONEY, sa_column_kwargs={"server_default": "0"}
    )


class LedgerEntry(ApiTable, table=True):
    """Every movement of money. The unique index makes "debited once per order, refunded once
    per cancelled order" a database fact."""

    __tablename__ = "ledger"
    __table_args__ = (
        CheckConstraint("kind IN ('CREDIT', 'DEBIT', 'REFUND')"),
        Index(
            "ledger_once_per_order",
            "transaction_id",
            "kind",
            unique=True,
            postgresql_where=text("transaction_id IS NOT NULL"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True, sa_type=BigInteger)
    account_id: uuid.UUID = Field(foreign_key="accounts.id", sa_type=Uuid)
    currency: str = Field(sa_type=CURRENCY)
    amount: Decimal = Field(sa_type=MONEY)
    kind: str = Field(sa_type=Text)
    transaction_id: str | None = Field(default=None, sa_type=Text)
    created_at: datetime = defaults_to_now()


class OperatorCredit(ApiTable, table=True):
    """A credit an operator made, by the idempotency key it came with. Written in the
    credit's transaction, beside its ledger row: the primary key makes "a retried credit is
    applied once" a database fact, and the row says what a retry must match."""

    __tablename__ = "operator_credits"
    __table_args__ = (
        CheckConstraint("length(idempotency_key) BETWEEN 1 AND 200"),
        CheckConstraint("amount > 0"),
    )

    idempotency_key: str = Field(primary_key=True, sa_type=Text)
    account_id: uuid.UUID = Field(foreign_key="accounts.id", sa_type=Uuid)
    currency: str = Field(sa_type=CURRENCY)
    amount: Decimal = Field(sa_type=MONEY)
    created_at: datetime = defaults_to_now()


class Product(ApiTable, table=True):
    """The read model of catalog.products: the snapshot as published, and the columns the
    instant path reads."""

    __tablename__ = "products"
    __table_args__ = (CheckConstraint("pin_kind IN ('integer', 'string')"),)

    sku: str = Field(primary_key=True, sa_type=Text)
    record: dict[str, Any] = Field(sa_type=JSONB)
    currency: str = Field(sa_type=CURRENCY)
    price: Decimal = Field(sa_type=MONEY)
    is_instant: bool = Field(sa_type=Boolean)
    active: bool = Field(sa_type=Boolean)
    version: int = Field(sa_type=BigInteger)
    updated_at: datetime = defaults_to_now()
    # ProductSnapshot.pin_kind: may accounts receiving integer PINs buy it (migration 0014).
    pin_kind: str = Field(
        default="string", sa_type=Text, sa_column_kwargs={"server_default": "string"}
    )


class Order(ApiTable, table=True):
    __tablename__ = "orders"
    __table_args__ = (
        CheckConstraint("status IN ('PROCESSING', 'COMPLETED', 'CANCELLED')"),
        CheckConstraint(
            "(status = 'COMPLETED') = (stock_id IS NOT NULL AND sealed_code IS NOT NULL)"
        ),
        # transactionId is a ULID: ordering by it is ordering by creation time.
        Index("orders_account_newest", "account_id", text("transaction_id DESC")),
        # Instant orders only: a bulk order's units carry its number, and the bulk order is
        # found by its own index.
        Index(
            "orders_account_client_number",
            "account_id",
            "client_order_number",
            postgresql_where=text("client_order_number <> '' AND bulk_id IS NULL"),
        ),
        Index("orders_processing", "created_at", postgresql_where=text("status = 'PROCESSING'")),
        Index(
            "orders_awaiting_decision",
            "created_at",
            postgresql_where=text("status = 'PROCESSING' AND backordered_at IS NULL"),
        ),
        Index("orders_units_of_bulk", "bulk_id", postgresql_where=text("bulk_id IS NOT NULL")),
    )

    transaction_id: str = Field(primary_key=True, sa_type=Text)
    account_id: uuid.UUID = Field(foreign_key="accounts.id", sa_type=Uuid)
    client_order_number: str = Field(
        default="", sa_type=Text, sa_column_kwargs={"server_default": ""}
    )
    sku: str = Field(sa_type=Text)
    quantity: int = Field(default=1, sa_type=Integer, sa_column_kwargs={"server_default": "1"})
    unit_price: Decimal = Field(sa_type=MONEY)
    currency: str = Field(sa_type=CURRENCY)
    grand_total: Decimal = Field(sa_type=MONEY)
    status: str = Field(
        default="PROCESSING", sa_type=Text, sa_column_kwargs={"server_default": "PROCESSING"}
    )
    created_at: datetime = defaults_to_now()
    updated_at: datetime = defaults_to_now()
    backordered_at: datetime | None = Field(default=None, sa_type=TIMESTAMP)
    # The code sold to this order: inventory's stockId and the code sealed for this service.
    stock_id: int | None = Field(default=None, unique=True, sa_type=BigInteger)
    sealed_code: str | None = Field(default=None, sa_type=Text)
    cancel_reason: str | None = Field(default=None, sa_type=Text)
    # When the api last asked inventory again about an order it heard nothing of.
    nudged_at: datetime | None = Field(default=None, sa_type=TIMESTAMP)
    # Set for an order paid in another currency than the product's (all or none of them):
    # the product's price and currency, and the rate (product_currency→currency) and its
    # time, as in force at acceptance. unit_price, grand_total and currency are what was
    # charged, and what a refund gives back.
    product_currency: str | None = Field(default=None, sa_type=CURRENCY)
    unit_price_original: Decimal | None = Field(default=None, sa_type=MONEY)
    fx_rate: Decimal | None = Field(default=None, sa_type=RATE)
    fx_as_of: datetime | None = Field(default=None, sa_type=TIMESTAMP)
    # Set on the units of a bulk order: the bulk order's transactionId.
    bulk_id: str | None = Field(
        default=None, foreign_key="bulk_orders.transaction_id", sa_type=Text
    )


class ExchangeRate(ApiTable, table=True):
    """An operator-set rate: 1 unit of `base` = `rate` units of `quote`, since `updated_at`."""

    __tablename__ = "fx_rates"
    __table_args__ = (
        CheckConstraint("rate > 0"),
        CheckConstraint("base <> quote"),
        CheckConstraint("base ~ '^[A-Z]{3}$' AND quote ~ '^[A-Z]{3}$'"),
    )

    base: str = Field(primary_key=True, sa_type=CURRENCY)
    quote: str = Field(primary_key=True, sa_type=CURRENCY)
    rate: Decimal = Field(sa_type=RATE)
    updated_at: datetime = defaults_to_now()


class BulkOrder(ApiTable, table=True):
    """A bulk order: what the client asked and paid. Its units are rows of `orders` (one per
    code, `bulk_id` this order's transactionId); its statuses are rolled up from them."""

    __tablename__ = "bulk_orders"
    __table_args__ = (
        Index("bulk_orders_account_newest", "account_id", text("transaction_id DESC")),
        Index(
            "bulk_orders_account_client_number",
            "account_id",
            "client_order_number",
            postgresql_where=text("client_order_number <> ''"),
        ),
    )

    transaction_id: str = Field(primary_key=True, sa_type=Text)
    account_id: uuid.UUID = Field(foreign_key="accounts.id", sa_type=Uuid)
    client_order_number: str = Field(
        default="", sa_type=Text, sa_column_kwargs={"server_default": ""}
    )
    currency: str = Field(sa_type=CURRENCY)
    grand_total: Decimal = Field(sa_type=MONEY)
    created_at: datetime = defaults_to_now()


class AdminAuditEntry(ApiTable, table=True):
    """One admin request that was not a read, refused ones too (shared.audit): who declared
    they asked and from where, what (method, route template, the path's ids), when, and the
    status answered. Never a secret, a token, code material or a request body."""

    __tablename__ = "admin_audit"
    __table_args__ = (
        CheckConstraint("length(operator) BETWEEN 1 AND 64"),
        CheckConstraint("length(client) <= 64"),
        CheckConstraint("length(method) <= 16"),
        CheckConstraint("length(route) <= 200"),
        CheckConstraint("length(request_id) <= 64"),
    )

    id: int | None = Field(default=None, primary_key=True, sa_type=BigInteger)
    at: datetime = defaults_to_now()
    operator: str = Field(sa_type=Text)
    client: str = Field(sa_type=Text)
    method: str = Field(sa_type=Text)
    route: str = Field(sa_type=Text)
    ids: dict[str, str] = Field(
        default_factory=dict, sa_type=JSONB, sa_column_kwargs={"server_default": "{}"}
    )
    status: int = Field(sa_type=SmallInteger)
    request_id: str = Field(sa_type=Text)


class Outbox(OutboxColumns, ApiTable, table=True):
    __tablename__ = "outbox"


class OutboxDeadLetter(OutboxDeadLetterColumns, ApiTable, table=True):
    __tablename__ = "outbox_dead_letters"
