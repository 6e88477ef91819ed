from collections.abc import Iterable, Iterator

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from shared.metrics import LATENCY_BUCKETS

ORDERS_ACCEPTED = Counter(
    "orders_accepted_total", "Instant orders accepted, by the answer given.", ["outcome"]
)
ORDERS_REJECTED = Counter("orders_rejected_total", "Instant orders refused, by error.", ["error"])
PINS_NOT_INTEGER = Counter(
    "codes_pin_not_integer_total",
    "Get Codes refused with PIN_NOT_INTEGER: an account receiving integer PINs ordered a code "
    "whose PIN an int32 cannot carry exactly (set the account's pin format to string).",
)
ORDERS_SHED = Counter(
    "orders_shed_total",
    "Instant orders refused with 503 before anything was charged, because this api process "
    "was at capacity: `in_flight` (API_MAX_IN_FLIGHT orders already in progress) or "
    "`queue_wait` (its acceptance could not start in time).",
    ["reason"],
)
DECISION_LATENCY = Histogram(
    "orders_instant_decision_seconds",
    "From publishing an order to receiving inventory's decision.",
    buckets=LATENCY_BUCKETS,
)
DECISION_TIMEOUTS = Counter(
    "orders_decision_window_timeouts_total",
    "Instant orders answered PROCESSING because no decision came within the window.",
)
RECORDINGS_LATE = Counter(
    "orders_recordings_late_total",
    "Instant orders reserved within the window but answered PROCESSING because recording "
    "the reservation took past the window and its grace (a backlog under overload); they "
    "complete a moment later.",
)
PRODUCTS_CHANGED_AT_ACCEPTANCE = Counter(
    "orders_acceptance_products_changed_total",
    "Acceptance batches that found a product at another catalog version than the one their "
    "orders were priced at (remembered, or changed while the batch ran): their orders not "
    "yet recorded were charged nothing and tried again on the product as it is now.",
)
ORDER_TRANSITIONS = Counter(
    "orders_transitions_total", "Order status changes applied to the read model.", ["to"]
)
CODES_UNAVAILABLE = Counter(
    "orders_codes_unavailable_total",
    "Get Codes answered CODE_UNAVAILABLE: a completed order's code did not open, by reason "
    "(key_not_configured: its key id is not in CODE_ENCRYPTION_KEYS; unreadable: its "
    "ciphertext does not open).",
    ["reason"],
)
REFUNDS = Counter("orders_refunds_total", "Cancelled orders refunded.", ["currency"])

# Authentication. A check the cache of successes answers (nearly every request of a working
# client) is not counted: it must stay as cheap as it is.
AUTH_FAILURES = Counter(
    "auth_failures_total",
    "Requests answered 401, by reason: `missing` (no or malformed credential headers) or "
    "`invalid` (not a live pair of one account: unknown, expired, revoked, of a disabled "
    "account, or of two accounts).",
    ["reason"],
)
AUTH_THROTTLED = Counter(
    "auth_throttled_total",
    "Requests answered 429 without a lookup because too many authentications failed lately "
    "from their client network (`address`) or with their API key's prefix (`key_prefix`).",
    ["by"],
)
AUTH_LOOKUPS = Counter(
    "auth_lookups_total",
    "Credential checks the cache of successes did not answer, by what answered: `database` "
    "(one query), `refused_cache` (refused within API_AUTH_CACHE_TTL_S: no query), `busy` "
    "(every lookup slot it could use stayed taken for a second: answered 503).",
    ["answer"],
)
# Their series, created at start (an alert sees 0, not nothing) and bound once (a flood of
# wrong credentials pays no label lookup).
AUTH_MISSING, AUTH_INVALID = (AUTH_FAILURES.labels(r) for r in ("missing", "invalid"))
AUTH_THROTTLED_BY = {by: AUTH_THROTTLED.labels(by) for by in ("address", "key_prefix")}
AUTH_LOOKED_UP, AUTH_REFUSED_FROM_CACHE, AUTH_LOOKUPS_BUSY = (
    AUTH_LOOKUPS.labels(a) for a in ("database", "refused_cache", "busy")
)

# Counted from the order read model when /metrics is scraped (see app.py). An order waits
# for inventory's decision for milliseconds; a backordered order waits for stock, up to its
# product's backorder deadline. An old order awaiting a decision is a stuck order.
PROCESSING_STAGES = ("awaiting_decision", "backordered")
ORDERS_PROCESSING = Gauge(
    "orders_processing",
    "Orders in PROCESSING in the api read model, by stage: awaiting_decision (inventory has "
    "not decided yet) or backordered (waiting for stock).",
    ["stage"],
    multiprocess_mode="mostrecent",
)
ORDERS_PROCESSING_OLDEST_AGE = Gauge(
    "orders_processing_oldest_age_seconds",
    "Age of the oldest order in PROCESSING, by stage (0 when there is none).",
    ["stage"],
    multiprocess_mode="mostrecent",
)


def set_processing(rows: Iterable[tuple[str, int, float]]) -> None:
    """Sets both stages from (stage, count, oldest age in seconds) rows; a missing stage is 0."""
    found = {stage: (count, oldest) for stage, count, oldest in rows}
    for stage in PROCESSING_STAGES:
        count, oldest = found.get(stage, (0, 0.0))
        ORDERS_PROCESSING.labels(stage).set(count)
        ORDERS_PROCESSING_OLDEST_AGE.labels(stage).set(oldest)


# An order awaiting inventory's decision for longer than this is named by the gauge below,
# so the alert can say which one (normal orders never live long enough to be named).
STUCK_AFTER_S = 60.0


class StuckOrder(Collector):
    """`orders_stuck_oldest_age_seconds{transaction_id}`: the oldest order awaiting
    inventory's decision for over STUCK_AFTER_S, as this process read it from the database
    for the scrape (shared.web.OnScrape). Exported as it is at the scrape, not kept in a metric
    file: an order no longer stuck leaves no series behind, whichever process named it."""

    def __init__(self) -> None:
        self.oldest: tuple[str, float] | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "orders_stuck_oldest_age_seconds",
            f"Age of the oldest order awaiting inventory's decision for over {STUCK_AFTER_S:g} "
            "s, by its transactionId (no series when there is none).",
            labels=["transaction_id"],
        )
        if self.oldest is not None:
            family.add_metric([self.oldest[0]], self.oldest[1])
        yield family


STUCK_ORDER = StuckOrder()


def name_stuck(oldest: tuple[str, float] | None) -> None:
    STUCK_ORDER.oldest = oldest
