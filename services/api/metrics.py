from prometheus_client import Counter, Histogram

from shared.metrics import LATENCY_BUCKETS

ORDERS_ACCEPTED = Counter(
    "orders_accepted_total", "Instant orders accepted, by the answer given.", ["outcome"]
)
ORDERS_REJECTED = Counter("orders_rejected_total", "Instant orders refused, by error.", ["error"])
DECISION_LATENCY = Histogram(
    "orders_instant_decision_seconds",
    "From publishing an order to receiving inventory's decision.",
    buckets=LATENCY_BUCKETS,
)
DECISION_TIMEOUTS = Counter(
    "orders_decision_window_timeouts_total",
    "Instant orders answered PROCESSING because no decision came within the window.",
)
ORDER_TRANSITIONS = Counter(
    "orders_transitions_total", "Order status changes applied to the read model.", ["to"]
)
REFUNDS = Counter("orders_refunds_total", "Cancelled orders refunded.", ["currency"])
