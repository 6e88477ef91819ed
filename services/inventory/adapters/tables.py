"""The inventory database's tables, declared once (shared/tables.py says how they are used)."""

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Index,
    LargeBinary,
    SmallInteger,
    Text,
    Uuid,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel

from shared.tables import (
    MONEY,
    TIMESTAMP,
    OutboxColumns,
    OutboxDeadLetterColumns,
    defaults_to_now,
)


class InventoryTable(SQLModel, registry=registry()):
    """Base of the inventory database's tables: `InventoryTable.metadata` holds them all."""


class Product(InventoryTable, table=True):
    """The catalogue: inventory owns it and publishes each version on catalog.products."""

    __tablename__ = "products"
    __table_args__ = (
        CheckConstraint("length(sku) BETWEEN 1 AND 64"),
        CheckConstraint("price > 0"),
        CheckConstraint("currency ~ '^[A-Z]{3}$'"),
        CheckConstraint("version > 0"),
    )

    sku: str = Field(primary_key=True, sa_type=Text)
    name: str = Field(sa_type=Text)
    price: Decimal = Field(sa_type=MONEY)
    currency: str = Field(sa_type=Text)
    is_instant: bool = Field(sa_type=Boolean)
    active: bool = Field(sa_type=Boolean)
    version: int = Field(sa_type=BigInteger)
    record: dict[str, Any] = Field(sa_type=JSONB)
    created_at: datetime = defaults_to_now()
    updated_at: datetime = defaults_to_now()


class Code(InventoryTable, table=True):
    """One code, sealed (shared/crypto.py) to its `binding`: 1 its SKU, 2 its stock item. id
    is the public stockId. A code is sold at most once: it is SOLD exactly when it names its
    order, and an order can be named by one code only. Two codes in stock are never the same
    code: each holds its keyed fingerprint (of `fingerprint_version`: 1 the code as given,
    2 its normal form), except a code found on re-fingerprinting to be the same code as
    another, which holds none and is never for sale (DUPLICATE, unless already sold), and a
    code found then not to open (UNREADABLE unless sold, docs/runbook.md). Only version 2
    codes are sold: a version 1 code could be the same code as one already sold."""

    __tablename__ = "codes"
    __table_args__ = (
        CheckConstraint("length(fingerprint) = 32"),
        CheckConstraint(
            "status IN ('AVAILABLE', 'SOLD', 'DUPLICATE', 'UNREADABLE')", name="codes_status_check"
        ),
        CheckConstraint(
            "(status = 'SOLD') = (transaction_id IS NOT NULL)", name="codes_sold_to_one_order"
        ),
        CheckConstraint("(status = 'SOLD') = (sold_at IS NOT NULL)", name="codes_sold_at"),
        CheckConstraint(
            "status <> 'AVAILABLE' OR fingerprint IS NOT NULL",
            name="codes_for_sale_has_fingerprint",
        ),
        CheckConstraint("binding IN (1, 2)", name="codes_binding_check"),
        CheckConstraint("fingerprint_version IN (1, 2)", name="codes_fingerprint_version_check"),
        Index("codes_available", "sku", "id", postgresql_where=text("status = 'AVAILABLE'")),
        Index("codes_sku_status", "sku", "status"),
        # Sold codes first (catalog.refingerprint_stock).
        Index(
            "codes_old_fingerprints",
            text("(status <> 'SOLD')"),
            "id",
            postgresql_where=text("fingerprint_version = 1"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True, sa_type=BigInteger)
    sku: str = Field(foreign_key="products.sku", sa_type=Text)
    key_id: str = Field(sa_type=Text)
    sealed: bytes = Field(sa_type=LargeBinary)
    # The defaults are for writers older than migrations 0005-0006 (they wrote these).
    binding: int = Field(sa_type=SmallInteger, sa_column_kwargs={"server_default": "1"})
    fingerprint: bytes | None = Field(default=None, unique=True, sa_type=LargeBinary)
    fingerprint_version: int = Field(sa_type=SmallInteger, sa_column_kwargs={"server_default": "1"})
    status: str = Field(
        default="AVAILABLE", sa_type=Text, sa_column_kwargs={"server_default": "AVAILABLE"}
    )
    transaction_id: str | None = Field(default=None, unique=True, sa_type=Text)
    created_at: datetime = defaults_to_now()
    sold_at: datetime | None = Field(default=None, sa_type=TIMESTAMP)


class PendingDelivery(InventoryTable, table=True):
    """A supplier's delivery received while codes stocked earlier still had version 1
    fingerprints: it is stocked once none is left (catalog.refingerprint_stock). `command`
    is the DeliverStock as received (its codes sealed, as on the topic)."""

    __tablename__ = "pending_deliveries"

    delivery_id: str = Field(primary_key=True, sa_type=Text)
    sku: str = Field(sa_type=Text)
    command: dict[str, Any] = Field(sa_type=JSONB)
    received_at: datetime = defaults_to_now()


class Decision(InventoryTable, table=True):
    """One row per order ever placed: the idempotency record of PlaceOrder. stock_id names the
    code sold to it (codes.transaction_id is what makes that one code only)."""

    __tablename__ = "decisions"
    __table_args__ = (
        CheckConstraint("state IN ('RESERVED', 'BACKORDERED', 'ALLOCATED', 'CANCELLED')"),
        CheckConstraint(
            "(state IN ('RESERVED', 'ALLOCATED')) = (stock_id IS NOT NULL)",
            name="decisions_code_iff_served",
        ),
        CheckConstraint(
            "cancel_reason IN ('DEADLINE_PASSED', 'PRODUCT_WITHDRAWN', 'CANCELLED_BY_OPERATOR')"
        ),
        Index(
            "decisions_waiting", "sku", "placed_at", postgresql_where=text("state = 'BACKORDERED'")
        ),
    )

    transaction_id: str = Field(primary_key=True, sa_type=Text)
    account_id: uuid.UUID = Field(sa_type=Uuid)
    sku: str = Field(sa_type=Text)
    state: str = Field(sa_type=Text)
    stock_id: int | None = Field(default=None, sa_type=BigInteger)
    reply_to: str | None = Field(default=None, sa_type=Text)
    placed_at: datetime = Field(sa_type=TIMESTAMP)
    created_at: datetime = defaults_to_now()
    updated_at: datetime = defaults_to_now()
    cancel_reason: str | None = Field(default=None, sa_type=Text)


class Outbox(OutboxColumns, InventoryTable, table=True):
    __tablename__ = "outbox"


class OutboxDeadLetter(OutboxDeadLetterColumns, InventoryTable, table=True):
    __tablename__ = "outbox_dead_letters"
