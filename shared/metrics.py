"""Prometheus series shared by the services. Service-specific series live in each service."""

from prometheus_client import REGISTRY, Counter, Gauge, Histogram

__all__ = ["REGISTRY"]

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Items per batch (a group commit, a consumer's transaction): up to the largest batch taken.
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

HTTP_REQUESTS = Counter(
    "http_requests_total", "HTTP requests answered.", ["service", "route", "method", "status"]
)
HTTP_LATENCY = Histogram(
    "http_request_duration_seconds",
    "Time to answer an HTTP request.",
    ["service", "route", "method"],
    buckets=LATENCY_BUCKETS,
)
GROUP_COMMIT_SECONDS = Histogram(
    "group_commit_flush_seconds",
    "How long one group-commit flush (one statement or transaction for many requests) took.",
    ["batch"],
    buckets=LATENCY_BUCKETS,
)
GROUP_COMMIT_SIZE = Histogram(
    "group_commit_batch_size",
    "Requests served by one group-commit flush.",
    ["batch"],
    buckets=BATCH_SIZE_BUCKETS,
)
BACKGROUND_UP = Gauge(
    "background_task_up",
    "1 while a background task of the service runs, 0 from its failure until its restart.",
    ["service", "task"],
    # With several api processes: 0 when the task is down in any live one.
    multiprocess_mode="livemin",
)
BACKGROUND_RESTARTS = Counter(
    "background_task_restarts_total",
    "Background tasks restarted after an error (each is logged with it).",
    ["service", "task"],
)
# Gauges are read from the database or the broker, so with several worker processes
# (API_PROCESSES) every process sees the same value: the most recent one is the answer.
OUTBOX_BACKLOG = Gauge(
    "outbox_backlog_rows",
    "Outbox rows not yet published.",
    ["service"],
    multiprocess_mode="mostrecent",
)
OUTBOX_OLDEST_AGE = Gauge(
    "outbox_oldest_unpublished_age_seconds",
    "Age of the oldest unpublished outbox row.",
    ["service"],
    multiprocess_mode="mostrecent",
)
OUTBOX_DEAD_LETTERS = Gauge(
    "outbox_dead_letters",
    "Outbox rows the broker can never take, moved to outbox_dead_letters (not sent).",
    ["service"],
    multiprocess_mode="mostrecent",
)
ADMIN_AUTH_FAILURES = Counter(
    "admin_auth_failures_total",
    "Admin requests refused for their credential: `missing` (no bearer token), `invalid` (not "
    "the admin token), `throttled` (answered 429 without a look at it: too many failures "
    "from the client's address lately).",
    ["service", "reason"],
)
ADMIN_AUDIT_LOST = Counter(
    "admin_audit_lost_total",
    "Admin actions whose audit record could not be written (each is logged whole instead).",
    ["service"],
)
OUTBOX_PUBLISHED = Counter("outbox_published_total", "Outbox rows published.", ["service"])
CONSUMER_RETRIES = Counter(
    "consumer_retries_total", "Handler attempts that failed and were retried.", ["consumer", "kind"]
)
DEAD_LETTERS = Counter(
    "dead_lettered_messages_total", "Messages sent to a dead-letter topic.", ["consumer", "topic"]
)
CONSUMER_REDELIVERIES = Counter(
    "consumer_redeliveries_total",
    "Messages a handler found already applied (redelivered, or published twice): it changed "
    "nothing.",
    ["consumer"],
)

# Consumer lag, computed by the services themselves (shared/lag.py).
CONSUMER_LAG = Gauge(
    "kafka_consumer_lag_messages",
    "Messages of a partition that a consumer group has still to read: the partition's end "
    "offset minus the group's committed offset.",
    ["group", "topic", "partition"],
    multiprocess_mode="mostrecent",
)
CONSUMER_LAG_REFRESHED = Gauge(
    "kafka_consumer_lag_last_refresh_timestamp_seconds",
    "When the consumer lag was last read from the broker (Unix time).",
    multiprocess_mode="mostrecent",
)
CONSUMER_LAG_FAILURES = Counter(
    "kafka_consumer_lag_refresh_failures_total",
    "Attempts to read the consumer lag that failed (broker unreachable or slow).",
)
