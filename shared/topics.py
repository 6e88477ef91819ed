"""Every Kafka topic of the system, with the partition count and config it is created with.

Topics are created explicitly by `instant-orders kafka bootstrap` (never by auto-creation), so
that partition counts, keys and retention are decided here and nowhere else.
"""

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Topic:
    name: str
    partitions: int
    key: str
    doc: str
    config: dict[str, str] = field(default_factory=dict)

    @property
    def dead_letter(self) -> str:
        return f"{self.name}.dlq"


INVENTORY_COMMANDS = Topic(
    "inventory.commands",
    6,
    key="sku",
    doc="Commands to inventory: place an order, allocate or cancel a backorder. Keyed by SKU so "
    "one SKU's commands are decided in order by one consumer.",
)
ORDER_REPLIES = Topic(
    "orders.replies",
    3,
    key="transactionId",
    doc="Inventory's instant decision, answered to the ingress instance that waits for it.",
    config={"retention.ms": str(60 * 60 * 1000)},
)
INVENTORY_EVENTS = Topic(
    "inventory.events",
    6,
    key="sku",
    doc="Internal: decisions, allocations, cancellations and stock arrivals. Code material only "
    "as AES-GCM ciphertext.",
)
CATALOG_PRODUCTS = Topic(
    "catalog.products",
    3,
    key="sku",
    doc="Product snapshots, latest per SKU (compacted).",
    config={"cleanup.policy": "compact"},
)
ORDER_EVENTS = Topic(
    "orders.events",
    6,
    key="transactionId",
    doc="Public: every state change of an order, versioned envelopes, never code material.",
)

CONSUMED = (INVENTORY_COMMANDS, INVENTORY_EVENTS, CATALOG_PRODUCTS)
ALL: tuple[Topic, ...] = (
    INVENTORY_COMMANDS,
    ORDER_REPLIES,
    INVENTORY_EVENTS,
    CATALOG_PRODUCTS,
    ORDER_EVENTS,
    *(Topic(t.dead_letter, 1, key=t.key, doc=f"Dead letters of {t.name}.") for t in CONSUMED),
)
