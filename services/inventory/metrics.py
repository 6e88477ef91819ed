"""Inventory's Prometheus series, derived from what each transaction committed."""

from collections.abc import Iterable, Mapping

from prometheus_client import Counter, Gauge, Histogram

from shared.contracts import (
    BackorderAllocated,
    Message,
    OrderBackordered,
    OrderReserved,
    StockArrived,
)
from shared.metrics import BATCH_SIZE_BUCKETS, CONSUMER_REDELIVERIES

CODES_AVAILABLE = Gauge(
    "inventory_codes_available",
    "Codes in stock, not yet sold, per SKU (kept after each claim and delivery, and "
    "recounted from the database periodically).",
    ["sku"],
    # Several inventory processes: the highest of the live ones (each counts down only its
    # own claims between recounts, so it can be high by the others' until the next one).
    multiprocess_mode="livemax",
)
CODE_CLAIMS = Counter(
    "inventory_code_claims_total",
    "Codes sold to orders: reserved at once, or allocated to a waiting backorder.",
    ["outcome"],
)
BACKORDERS_CREATED = Counter(
    "inventory_backorders_created_total", "Orders that had to wait for stock."
)
SUPPLIER_CODES_REFUSED = Counter(
    "inventory_supplier_codes_refused_total",
    "Codes of a supplier's delivery left out because an operator could not stock them either "
    "(shared.crypto.code_problem), by the field at fault; each is also logged by delivery id "
    "and position, never by its value. Counted each time a delivery is handled (a "
    "redelivered delivery counts its refusals again).",
    ["field"],
)
DECISION_SECONDS = Histogram(
    "inventory_decision_seconds",
    "Time from taking a batch of commands off the topic to its commit, per command.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0),
)
DECISION_BATCH_SIZE = Histogram(
    "inventory_decision_batch_size",
    "Commands decided in one transaction: about 1 at low load, growing with load.",
    buckets=BATCH_SIZE_BUCKETS,
)

for _outcome in ("reserved", "allocated"):
    CODE_CLAIMS.labels(_outcome)
for _field in ("redeemCode", "pinCode"):
    SUPPLIER_CODES_REFUSED.labels(_field)


def observe_committed(messages: Iterable[Message]) -> None:
    for message in messages:
        if isinstance(message, OrderReserved):
            CODE_CLAIMS.labels("reserved").inc()
            CODES_AVAILABLE.labels(message.sku).dec()
        elif isinstance(message, BackorderAllocated):
            CODE_CLAIMS.labels("allocated").inc()
            CODES_AVAILABLE.labels(message.sku).dec()
        elif isinstance(message, OrderBackordered):
            BACKORDERS_CREATED.inc()
        elif isinstance(message, StockArrived):
            CODES_AVAILABLE.labels(message.sku).set(message.available)


def set_available(per_sku: Mapping[str, int]) -> None:
    for sku, available in per_sku.items():
        CODES_AVAILABLE.labels(sku).set(available)


def count_already_decided(consumer: str, already_decided: int) -> None:
    """Counts PlaceOrder commands that were already decided (a redelivery, the relay's
    second publish, the api asking again, or twice in one batch)."""
    if already_decided:
        CONSUMER_REDELIVERIES.labels(consumer).inc(already_decided)
