"""The messages the services exchange over Kafka. Every topic's payload is defined here.

Commands are named in the imperative, events in the past tense. Every message is JSON with
camelCase names; money amounts are decimal strings. Code material travels only inside
`sealedCode` (AES-GCM ciphertext, see shared.crypto) and only on internal topics; the public
`orders.events` topic never carries it.
"""

import os
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from pydantic.alias_generators import to_camel

OrderStatus = Literal["PROCESSING", "COMPLETED", "CANCELLED"]
CancelReason = Literal["DEADLINE_PASSED", "PRODUCT_WITHDRAWN", "CANCELLED_BY_OPERATOR"]
OrderEventType = Literal["OrderAccepted", "OrderCompleted", "OrderBackordered", "OrderCancelled"]

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_transaction_id() -> str:
    """A ULID: 26 characters, sortable by creation time, 80 random bits."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        value, rem = divmod(value, 32)
        chars.append(_CROCKFORD[rem])
    return "".join(reversed(chars))


def utcnow() -> datetime:
    return datetime.now(UTC)


class Message(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, frozen=True, extra="ignore"
    )

    def to_bytes(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()


class Event(Message):
    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    occurred_at: datetime = Field(default_factory=utcnow)


# --- inventory.commands (key: sku) ---------------------------------------------------------


class PlaceOrder(Message):
    """Decide one unit of `sku` for an accepted, paid order: reserve a code or backorder it."""

    type: Literal["PlaceOrder"] = "PlaceOrder"
    transaction_id: str
    account_id: uuid.UUID
    sku: str
    unit_price: Decimal
    currency: str
    placed_at: datetime
    reply_to: str | None = None
    reply_partition: int | None = None
    """The partition of `reply_to` that the sender reads (each api process reads its own);
    absent: the reply is keyed by transactionId and lands on any partition."""


class AllocateBackorder(Message):
    """Give the waiting backorder a code if one is in stock (sent by fulfilment, oldest first)."""

    type: Literal["AllocateBackorder"] = "AllocateBackorder"
    transaction_id: str
    sku: str


class CancelBackorder(Message):
    """Cancel the waiting backorder unless a code was already allocated to it.

    Sent by the api for an order inventory never decided (at its deadline, or by an
    operator), it carries `account_id` and `placed_at`: inventory then records the order as
    decided, cancelled, so a PlaceOrder of it arriving later sells nothing."""

    type: Literal["CancelBackorder"] = "CancelBackorder"
    transaction_id: str
    sku: str
    reason: CancelReason
    account_id: uuid.UUID | None = None
    placed_at: datetime | None = None


class DeliverStock(Message):
    """Codes delivered by a supplier, sealed with the code key to their SKU (wire form
    'kid:base64'); never plaintext. Inventory seals each again to the stock item it becomes."""

    type: Literal["DeliverStock"] = "DeliverStock"
    delivery_id: str
    sku: str
    sealed_codes: list[str] = Field(max_length=10_000)


InventoryCommand = Annotated[
    PlaceOrder | AllocateBackorder | CancelBackorder | DeliverStock, Field(discriminator="type")
]
inventory_command = TypeAdapter[InventoryCommand](InventoryCommand)


# --- orders.replies (key: transactionId) ---------------------------------------------------

SealedCodeOnWire = Annotated[
    str,
    Field(
        description="The code sold, encrypted (shared/crypto.py SealedCode): 'v2:kid:base64', "
        "sealed to its stock item (SKU and stockId), or 'kid:base64' for a code stocked "
        "before stock-bound seals, sealed to its SKU. Opened only by the api, for Get Codes."
    ),
]


class Decision(Message):
    """Inventory's answer to the ingress instance named in PlaceOrder.replyTo."""

    transaction_id: str
    sku: str
    outcome: Literal["RESERVED", "BACKORDERED"]
    stock_id: int | None = None
    sealed_code: SealedCodeOnWire | None = None


# --- inventory.events (key: sku) -----------------------------------------------------------


class OrderReserved(Event):
    type: Literal["OrderReserved"] = "OrderReserved"
    transaction_id: str
    account_id: uuid.UUID
    sku: str
    stock_id: int
    sealed_code: SealedCodeOnWire


class OrderBackordered(Event):
    type: Literal["OrderBackordered"] = "OrderBackordered"
    transaction_id: str
    account_id: uuid.UUID
    sku: str
    placed_at: datetime


class BackorderAllocated(Event):
    type: Literal["BackorderAllocated"] = "BackorderAllocated"
    transaction_id: str
    account_id: uuid.UUID
    sku: str
    stock_id: int
    sealed_code: SealedCodeOnWire


class BackorderStillWaiting(Event):
    """An AllocateBackorder found no code: the order keeps waiting."""

    type: Literal["BackorderStillWaiting"] = "BackorderStillWaiting"
    transaction_id: str
    sku: str


class BackorderCancelled(Event):
    type: Literal["BackorderCancelled"] = "BackorderCancelled"
    transaction_id: str
    account_id: uuid.UUID
    sku: str
    reason: CancelReason


class StockArrived(Event):
    type: Literal["StockArrived"] = "StockArrived"
    sku: str
    added: int
    available: int


InventoryEvent = Annotated[
    OrderReserved
    | OrderBackordered
    | BackorderAllocated
    | BackorderStillWaiting
    | BackorderCancelled
    | StockArrived,
    Field(discriminator="type"),
]
inventory_event = TypeAdapter[InventoryEvent](InventoryEvent)


# --- catalog.products (key: sku, compacted) ------------------------------------------------


# What the PINs of a product's stock are (ProductSnapshot.pin_kind, docs/api.md "PIN format").
PinKind = Literal["integer", "string"]


class ProductSnapshot(Message):
    """The whole public record of a product, as Get Products shows it, plus its version."""

    sku: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=200)
    brand: str = ""
    brand_category: str = ""
    brand_sub_category: str = ""
    types: list[str] = Field(default_factory=list)
    format: Literal["D", "P"] = "D"
    country: str = ""
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    image_url: str = ""
    price: Decimal = Field(gt=0, max_digits=18, decimal_places=2)
    face_value: Decimal | None = None
    percentage_off_face_value: Decimal | None = None
    is_instant_delivery_supported: bool = True
    descriptions: list[str] = Field(default_factory=list)
    instructions: list[str] = Field(default_factory=list)
    term_conditions: list[str] = Field(default_factory=list)
    active: bool = True
    backorder_deadline_seconds: int | None = Field(None, ge=1, le=30 * 24 * 3600)
    """(ours) How long a backorder of this product may wait before it is cancelled and
    refunded; None: the service default (ORDERS_BACKORDER_DEADLINE_S, 24 h)."""
    pin_kind: PinKind = "string"
    """(ours) The PINs this product's stock holds: `integer`, each an int32 exactly (or no
    PIN), checked at stock intake, so that accounts receiving integer PINs may buy it;
    `string`, any PIN. Absent from snapshots published before it existed: `string`, as those
    products took any PIN."""
    version: int = 0


# --- orders.events (public, key: transactionId) --------------------------------------------


class MoneyOut(Message):
    amount: str
    currency: str

    @classmethod
    def of(cls, amount: Decimal, currency: str) -> "MoneyOut":
        return cls(amount=f"{amount:.2f}", currency=currency)


def rate_out(rate: Decimal) -> str:
    """An exchange rate as shown: exact, with at least 4 decimals ("0.9150", "1.234567")."""
    exponent = rate.normalize().as_tuple().exponent
    decimals = max(4, -exponent if isinstance(exponent, int) else 0)
    return f"{rate:.{decimals}f}"


class FxOut(Message):
    """How an order paid in another currency than its product's was converted: `pair` is
    PRODUCT+PAID currency, 1 unit of the product's currency = `rate` units of the paid one,
    as set at `asOf`; `unitPriceOriginal` is the product's own price."""

    pair: str
    rate: str
    as_of: datetime
    unit_price_original: MoneyOut


class OrderEvent(Event):
    """Version 1 of the public order event. Consumers deduplicate by eventId. `unitPrice`,
    `grandTotal` are in the currency charged; `fx` (added, null for orders paid in the
    product's currency) says how an order paid in another currency was converted."""

    type: OrderEventType
    schema_version: Literal[1] = 1
    transaction_id: str
    account_id: uuid.UUID
    client_order_number: str
    sku: str
    quantity: int = 1
    unit_price: MoneyOut
    grand_total: MoneyOut
    status: OrderStatus
    reason: CancelReason | None = None
    fx: FxOut | None = None
    # Set on the events of one unit of a bulk order (transactionId is then the unit's): the
    # bulk order's transactionId, which is also the events' key. Absent on instant orders.
    bulk_transaction_id: str | None = None
