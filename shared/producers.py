"""The producers every service uses: a durable aiokafka producer, and the FastStream broker
that carries the subscribers."""

import logging

from aiokafka import AIOKafkaProducer
from faststream.kafka import KafkaBroker

from shared import metrics


def durable_producer(bootstrap: str, client_id: str) -> AIOKafkaProducer:
    """aiokafka defaults to acks=1 without idempotence; every producer here is durable."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        client_id=client_id,
        acks="all",
        enable_idempotence=True,
        # No linger: aiokafka keeps one request in flight per broker, so records that come
        # while it is out share the next one anyway; a linger only delayed a lone record
        # (docs/benchmarks.md, "The producers' linger, again").
        linger_ms=0,
        request_timeout_ms=10_000,
    )


def new_broker(bootstrap: str, client_id: str) -> KafkaBroker:
    from faststream.kafka.prometheus import KafkaPrometheusMiddleware

    return KafkaBroker(
        bootstrap,
        client_id=client_id,
        acks="all",
        enable_idempotence=True,
        allow_auto_create_topics=False,
        middlewares=[KafkaPrometheusMiddleware(registry=metrics.REGISTRY, app_name=client_id)],
        graceful_timeout=10.0,
        logger=logging.getLogger(f"{client_id}.broker"),
        # FastStream logs "Received" / "Processed" for every message at this level: at INFO
        # that is two lines per order, so keep them for debugging only.
        log_level=logging.DEBUG,
    )
