"""What the three services' stored models have in common: a table base per database, the column
types our DDL uses, and the outbox table every service has.

Each service declares its tables once, as SQLModel classes in `adapters/tables.py` on a base
of its own (`class ApiTable(SQLModel, registry=registry())`), so that its metadata holds its
own tables only. Those classes are the schema's one source: the migrations must produce
exactly them (`shared.db.schema_drift`, run by the tests and by `instant-orders db check`),
and the admin and read paths query through them. Input and public models stay
separate (pydantic models in the entrypoints and `shared.contracts`).
"""

import importlib
from datetime import datetime
from typing import Any

from sqlalchemy import (
    CHAR,
    BigInteger,
    DateTime,
    LargeBinary,
    MetaData,
    Numeric,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

MONEY = Numeric(18, 2)
TIMESTAMP = DateTime(timezone=True)
CURRENCY = CHAR(3)
NOW = text("now()")


def defaults_to_now() -> Any:
    return Field(sa_type=TIMESTAMP, sa_column_kwargs={"server_default": NOW})


class OutboxColumns(SQLModel):
    """Events written in the transaction that caused them, relayed to Kafka after commit
    (shared.outbox.OutboxRelay). A row is deleted once the broker acknowledged it, so the
    table is indexed by its primary key alone (`published_at` is set only on rows an earlier
    version marked sent; the relay deletes those when it starts)."""

    id: int | None = Field(default=None, primary_key=True, sa_type=BigInteger)
    topic: str = Field(sa_type=Text)
    key: str = Field(sa_type=Text)
    payload: bytes = Field(sa_type=LargeBinary)
    headers: dict[str, str] = Field(
        default_factory=dict, sa_type=JSONB, sa_column_kwargs={"server_default": "{}"}
    )
    created_at: datetime = defaults_to_now()
    relay_after: datetime = defaults_to_now()
    published_at: datetime | None = Field(default=None, sa_type=TIMESTAMP)


class OutboxDeadLetterColumns(SQLModel):
    """An outbox row the broker can never take (larger than it accepts), moved here by the
    relay with the reason, so that the rows behind it are sent; kept whole for an operator
    (docs/runbook.md#outboxdeadletters)."""

    id: int = Field(primary_key=True, sa_type=BigInteger, sa_column_kwargs={"autoincrement": False})
    topic: str = Field(sa_type=Text)
    key: str = Field(sa_type=Text)
    payload: bytes = Field(sa_type=LargeBinary)
    headers: dict[str, str] = Field(sa_type=JSONB)
    created_at: datetime = Field(sa_type=TIMESTAMP)
    dead_at: datetime = defaults_to_now()
    reason: str = Field(sa_type=Text)


def service_metadata(service: str) -> MetaData:
    """The tables a service ("api", "inventory", "fulfilment") declares."""
    module = importlib.import_module(f"services.{service}.adapters.tables")
    metadata: MetaData = getattr(module, f"{service.title()}Table").metadata
    return metadata
