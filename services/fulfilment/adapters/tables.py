"""The fulfilment database's tables, declared once (shared/tables.py says how they are used)."""

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, Boolean, CheckConstraint, Index, Integer, Text, Uuid, text
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel

from shared.tables import (
    TIMESTAMP,
    OutboxColumns,
    OutboxDeadLetterColumns,
    defaults_to_now,
)

OPEN_STATES = "state IN ('WAITING', 'ALLOCATING', 'CANCELLING')"


class FulfilmentTable(SQLModel, registry=registry()):
    """Base of the fulfilment database's tables: `FulfilmentTable.metadata` holds them all."""


class Backorder(FulfilmentTable, table=True):
    """One row per order inventory could not serve at once.

    WAITING: no code yet. ALLOCATING: AllocateBackorder sent, answer pending. CANCELLING:
    CancelBackorder sent (deadline passed or product withdrawn). COMPLETED / CANCELLED: final,
    as inventory decided.
    """

    __tablename__ = "backorders"
    __table_args__ = (
        CheckConstraint(
            "state IN ('WAITING', 'ALLOCATING', 'CANCELLING', 'COMPLETED', 'CANCELLED')"
        ),
        Index(
            "backorders_queue",
            "sku",
            "placed_at",
            "transaction_id",
            postgresql_where=text(OPEN_STATES),
        ),
        Index("backorders_deadline", "deadline_at", postgresql_where=text("state = 'WAITING'")),
    )

    transaction_id: str = Field(primary_key=True, sa_type=Text)
    account_id: uuid.UUID = Field(sa_type=Uuid)
    sku: str = Field(sa_type=Text)
    placed_at: datetime = Field(sa_type=TIMESTAMP)
    deadline_at: datetime = Field(sa_type=TIMESTAMP)
    state: str = Field(
        default="WAITING", sa_type=Text, sa_column_kwargs={"server_default": "WAITING"}
    )
    cancel_reason: str | None = Field(default=None, sa_type=Text)
    created_at: datetime = defaults_to_now()
    updated_at: datetime = defaults_to_now()


class Sku(FulfilmentTable, table=True):
    """What fulfilment knows of a SKU from catalog.products and inventory.events. stock_hint is
    how many codes inventory last said were available, less what was taken since: a hint
    (inventory decides), used to size allocation rounds."""

    __tablename__ = "skus"
    __table_args__ = (CheckConstraint("stock_hint >= 0"),)

    sku: str = Field(primary_key=True, sa_type=Text)
    active: bool = Field(default=True, sa_type=Boolean, sa_column_kwargs={"server_default": "true"})
    deadline_seconds: int | None = Field(default=None, sa_type=Integer)
    version: int = Field(default=0, sa_type=BigInteger, sa_column_kwargs={"server_default": "0"})
    stock_hint: int = Field(default=0, sa_type=Integer, sa_column_kwargs={"server_default": "0"})


class SupplierRequest(FulfilmentTable, table=True):
    """A restock asked of the (simulated) supplier; at most one open request per SKU."""

    __tablename__ = "supplier_requests"
    __table_args__ = (
        CheckConstraint("quantity > 0"),
        Index(
            "supplier_requests_open",
            "sku",
            unique=True,
            postgresql_where=text("delivered_at IS NULL"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True, sa_type=BigInteger)
    sku: str = Field(sa_type=Text)
    quantity: int = Field(sa_type=Integer)
    requested_at: datetime = defaults_to_now()
    due_at: datetime = Field(sa_type=TIMESTAMP)
    delivered_at: datetime | None = Field(default=None, sa_type=TIMESTAMP)


class Outbox(OutboxColumns, FulfilmentTable, table=True):
    __tablename__ = "outbox"


class OutboxDeadLetter(OutboxDeadLetterColumns, FulfilmentTable, table=True):
    __tablename__ = "outbox_dead_letters"
