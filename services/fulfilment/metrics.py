from prometheus_client import Counter, Gauge

from shared.metrics import CONSUMER_REDELIVERIES

BACKORDERS_WAITING = Gauge(
    "fulfilment_backorders_waiting", "Backorders not yet completed or cancelled.", ["sku"]
)
OLDEST_WAITING_AGE = Gauge(
    "fulfilment_oldest_waiting_backorder_age_seconds",
    "Age of the oldest backorder not yet completed or cancelled, over all SKUs.",
)
COMPLETIONS = Counter("fulfilment_backorders_completed_total", "Backorders completed.")
CANCELLATIONS = Counter(
    "fulfilment_backorders_cancelled_total", "Backorders cancelled.", ["reason"]
)
ALLOCATION_REQUESTS = Counter(
    "fulfilment_allocation_requests_total", "AllocateBackorder commands sent to inventory."
)
SUPPLIER_REQUESTS = Counter(
    "fulfilment_supplier_requests_total", "Replenishment requests sent to the supplier."
)
SUPPLIER_DELIVERIES = Counter(
    "fulfilment_supplier_codes_delivered_total", "Codes delivered by the supplier."
)
# Inventory events found already applied (a backorder already known, a completion or a
# cancellation already recorded).
REDELIVERIES = CONSUMER_REDELIVERIES.labels("fulfilment.inventory-events")
