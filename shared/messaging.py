"""Kafka plumbing shared by the services: the durable producer, the transactional outbox and
its relay, and the retry / dead-letter policy every consumer runs its handler under."""

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from itertools import chain
from typing import Any, TypeVar

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.errors import KafkaError, MessageSizeTooLargeError
from asyncpg.pool import PoolConnectionProxy
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from faststream.kafka.subscriber.usecase import BatchSubscriber
from pydantic import BaseModel, ValidationError

from shared import metrics
from shared.contracts import Message
from shared.db import Conn
from shared.topics import Topic

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)

# Every subscriber commits its offset only after its handler returned: at-least-once. The
# handler itself retries, then dead-letters, so it only raises for infrastructure failures
# (database or broker down), and then the message is redelivered rather than skipped.
SUBSCRIBER_ACK_POLICY = AckPolicy.NACK_ON_ERROR


def durable_producer(bootstrap: str, client_id: str) -> AIOKafkaProducer:
    """aiokafka defaults to acks=1 without idempotence; every producer here is durable."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        client_id=client_id,
        acks="all",
        enable_idempotence=True,
        linger_ms=1,
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


Headers = Sequence[tuple[str, bytes]]


# --- transactional outbox --------------------------------------------------------------------


async def add_to_outbox(
    conn: Conn,
    topic: str,
    key: str,
    message: Message,
    *,
    headers: dict[str, str] | None = None,
    relay_after_s: float = 0.0,
) -> int:
    """Write an event row in the caller's transaction; the relay publishes it after commit.

    `relay_after_s` > 0 is for rows the caller publishes itself right after commit: the relay
    only takes them over if the caller did not mark them published in time (it crashed).
    """
    row_id: int = await conn.fetchval(
        """
        INSERT INTO outbox (topic, key, payload, headers, relay_after)
        VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))
        RETURNING id
        """,
        topic,
        key,
        message.to_bytes(),
        {**type_header(message), **(headers or {})},
        relay_after_s,
    )
    return row_id


async def add_all_to_outbox(conn: Conn, rows: Sequence[tuple[str, str, Message]]) -> None:
    """`add_to_outbox` for many (topic, key, message) rows, in one statement, in order."""
    if rows:
        await conn.execute(
            """
            INSERT INTO outbox (topic, key, payload, headers)
            SELECT topic, key, payload, CASE WHEN type = '' THEN '{}'::jsonb
                                             ELSE jsonb_build_object('x-type', type) END
            FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[]) WITH ORDINALITY
                AS r (topic, key, payload, type, n)
            ORDER BY n
            """,
            [topic for topic, _, _ in rows],
            [key for _, key, _ in rows],
            [message.to_bytes() for _, _, message in rows],
            [getattr(message, "type", "") for _, _, message in rows],
        )


TYPE_HEADER = "x-type"


def type_header(message: Message) -> dict[str, str]:
    """Every message with a `type` also carries it as the `x-type` header, so that a consumer
    can pass over the types it has no use for without decoding them."""
    kind = getattr(message, "type", None)
    return {TYPE_HEADER: kind} if isinstance(kind, str) else {}


def header_type(record: Any) -> str | None:
    for name, value in getattr(record, "headers", None) or ():
        if name == TYPE_HEADER and value is not None:  # Kafka allows a header without a value
            return bytes(value).decode("utf-8", "replace")
    return None


OUTBOX_DDL = """
CREATE TABLE outbox (
    id          bigserial PRIMARY KEY,
    topic       text        NOT NULL,
    key         text        NOT NULL,
    payload     bytea       NOT NULL,
    headers     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    relay_after timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;
CREATE INDEX outbox_published_at ON outbox (published_at) WHERE published_at IS NOT NULL;
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_notify('outbox', ''); RETURN NULL; END $$;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
"""


# After a wake-up the relay waits this long, so that one round (one transaction, one produce
# request per partition) publishes the rows of many transactions rather than one round per
# row. Nothing on the instant path waits for the relay: the order request and its reply go
# directly; relayed rows are events for the read models, fulfilment and downstream consumers.
COALESCE_S = 0.02


def _is_closed(conn: PoolConnectionProxy) -> bool:
    """Whether a pooled connection is closed; the pool detaches a connection that died, and
    its proxy then refuses every call."""
    try:
        return conn.is_closed()
    except asyncpg.InterfaceError:
        return True


class OutboxRelay:
    """Publishes committed outbox rows in id order, one relay per database at a time, and
    deletes each row once the broker acknowledged it.

    Rows are selected by `published_at IS NULL` (never by "id greater than the last one seen":
    ids are not commit order), under an advisory lock so two instances never interleave one
    key's events. A NOTIFY from the insert trigger wakes the relay at once.
    """

    LOCK_KEY = 0x0B0C5

    def __init__(
        self,
        pool: asyncpg.Pool,
        producer: AIOKafkaProducer,
        service: str,
        poll_interval_s: float,
        batch: int = 500,
    ) -> None:
        self._pool = pool
        self._producer = producer
        self._service = service
        self._poll = poll_interval_s
        self._batch = batch
        self._wake = asyncio.Event()
        self._next_gauges = 0.0
        self._task: asyncio.Task[None] | None = None
        self._listener: PoolConnectionProxy | None = None

    async def start(self) -> None:
        # Rows sent by an earlier version, which marked sent rows instead of deleting them.
        await self._pool.execute("DELETE FROM outbox WHERE published_at IS NOT NULL")
        await self._listen()
        self._task = asyncio.create_task(self._run(), name=f"{self._service}-outbox-relay")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.remove_listener("outbox", self._on_notify)
                self._listener.remove_termination_listener(self._on_notify)
            with contextlib.suppress(Exception):
                await self._pool.release(self._listener)

    def _on_notify(self, *_: Any) -> None:
        self._wake.set()

    async def _listen(self) -> None:
        """(Re)starts listening for the insert trigger's NOTIFY on a connection of its own.
        When that connection dies (a database restart), the relay is woken and listens again
        on a new one, so it does not fall back to its poll for good."""
        if self._listener is not None and not _is_closed(self._listener):
            return
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._pool.release(self._listener)
            self._listener = None
            log.info("outbox relay of %s listens for new rows again", self._service)
        listener = await self._pool.acquire()
        try:
            await listener.add_listener("outbox", self._on_notify)
            listener.add_termination_listener(self._on_notify)
        except BaseException:
            await self._pool.release(listener)
            raise
        self._listener = listener
        self._wake.set()  # rows may have been committed while nobody listened

    async def _run(self) -> None:
        while True:
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # rows are still sent, on the poll, until it listens
                log.warning(
                    "outbox relay of %s cannot listen (%s); polling",
                    self._service,
                    type(exc).__name__,
                )
            try:
                published = await self.relay_once()
                if published >= self._batch:
                    continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Whatever failed, the relay must not stop: rows stay unpublished, and the
                # next round sends them.
                log.warning(
                    "outbox relay of %s failed, will retry: %s", self._service, type(exc).__name__
                )
                await asyncio.sleep(min(self._poll * 5, 2.0))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll)
            # Let the rows of concurrent transactions gather: one round then publishes many.
            await asyncio.sleep(COALESCE_S)

    async def relay_once(self) -> int:
        async with self._pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", self.LOCK_KEY):
                return 0
            rows = await conn.fetch(
                """
                SELECT id, topic, key, payload, headers FROM outbox
                WHERE published_at IS NULL AND relay_after <= now()
                ORDER BY id LIMIT $1
                """,
                self._batch,
            )
            if time.monotonic() >= self._next_gauges:
                self._next_gauges = time.monotonic() + 1.0
                # Parked rows (never sendable) are counted as dead letters, not as a backlog.
                backlog = await conn.fetchrow(
                    "SELECT count(*) AS n, extract(epoch FROM now() - min(created_at)) AS age "
                    "FROM outbox WHERE published_at IS NULL AND relay_after <> 'infinity'"
                )
                assert backlog is not None
                metrics.OUTBOX_BACKLOG.labels(self._service).set(backlog["n"])
                metrics.OUTBOX_OLDEST_AGE.labels(self._service).set(float(backlog["age"] or 0))
            if not rows:
                return 0
            futures, sent, parked = [], [], []
            for r in rows:
                try:
                    futures.append(
                        await self._producer.send(
                            r["topic"],
                            value=r["payload"],
                            key=r["key"].encode(),
                            headers=[(k, v.encode()) for k, v in r["headers"].items()],
                        )
                    )
                    sent.append(r["id"])
                except MessageSizeTooLargeError:
                    # It can never be sent: park it (kept, never marked sent, counted in the
                    # outbox backlog and logged) rather than block every row behind it.
                    log.error(
                        "outbox row %d for %s is larger than the broker takes: parked, not sent",
                        r["id"],
                        r["topic"],
                    )
                    metrics.DEAD_LETTERS.labels(f"{self._service}.outbox", r["topic"]).inc()
                    parked.append(r["id"])
            await asyncio.gather(*futures)
            # Only rows the broker acknowledged leave the outbox. Deleted rather than marked:
            # nothing reads a sent row again, and the table and its index stay small.
            await conn.execute("DELETE FROM outbox WHERE id = ANY($1::bigint[])", sent)
            if parked:
                await conn.execute(
                    "UPDATE outbox SET relay_after = 'infinity' WHERE id = ANY($1::bigint[])",
                    parked,
                )
            metrics.OUTBOX_PUBLISHED.labels(self._service).inc(len(sent))
            return len(rows)


# --- consumers: bounded retries, then dead letters ---------------------------------------

TRANSIENT: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    # the server is shutting down or starting up, or out of connections or memory
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    # a transaction that lost a race: trying again is the remedy
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
    KafkaError,
)
"""Failures of the infrastructure, not of the message: retried without limit, never
dead-lettered, so a database restart cannot throw live messages away."""


async def consume_resiliently(
    *,
    raw: bytes,
    parse: Callable[[bytes], M],
    handle: Callable[[M], Awaitable[None]],
    producer: AIOKafkaProducer,
    topic: str,
    dead_letter_topic: str,
    key: bytes | None,
    consumer: str,
    max_retries: int,
    base_backoff_s: float = 0.05,
) -> None:
    """Run `handle` for one message with the retry policy shared by every consumer.

    - A message that does not parse is dead-lettered at once: retrying cannot help.
    - A handler error is retried with exponential backoff, `max_retries` times, then the
      message is dead-lettered with the error in its headers, so the partition moves on.
    - An infrastructure failure (database or broker unreachable) is re-raised after a pause:
      the subscriber does not commit, and the message is redelivered when things are back.
    """
    try:
        message = parse(raw)
    except (ValidationError, ValueError) as exc:
        await _dead_letter(producer, dead_letter_topic, raw, key, topic, consumer, exc, 0)
        return
    for attempt in range(max_retries + 1):
        try:
            await handle(message)
            return
        except TRANSIENT:
            metrics.CONSUMER_RETRIES.labels(consumer, "transient").inc()
            await asyncio.sleep(min(2.0, base_backoff_s * 2**attempt))
            raise
        except Exception as exc:
            metrics.CONSUMER_RETRIES.labels(consumer, "error").inc()
            if attempt == max_retries:
                await _dead_letter(
                    producer, dead_letter_topic, raw, key, topic, consumer, exc, attempt + 1
                )
                return
            log.warning(
                "%s: attempt %d failed (%s), retrying", consumer, attempt + 1, type(exc).__name__
            )
            await asyncio.sleep(base_backoff_s * 2**attempt)


async def _dead_letter(
    producer: AIOKafkaProducer,
    dead_letter_topic: str,
    raw: bytes,
    key: bytes | None,
    source_topic: str,
    consumer: str,
    exc: BaseException,
    attempts: int,
) -> None:
    # Only the error's type is kept: its text may quote the message, which may hold codes.
    log.error(
        "%s: dead-lettering a message of %s after %d attempts: %s",
        consumer,
        source_topic,
        attempts,
        type(exc).__name__,
    )
    await producer.send_and_wait(
        dead_letter_topic,
        value=raw,
        key=key,
        headers=[
            ("x-source-topic", source_topic.encode()),
            ("x-consumer", consumer.encode()),
            ("x-attempts", str(attempts).encode()),
            ("x-error", type(exc).__name__.encode()),
        ],
    )
    metrics.DEAD_LETTERS.labels(consumer, source_topic).inc()


def subscribe(
    broker: KafkaBroker,
    topic: Topic,
    *,
    group_id: str,
    name: str,
    parse: Callable[[bytes], M],
    handle: Callable[[M], Awaitable[None]],
    producer_of: Callable[[], AIOKafkaProducer],
    max_retries: int,
) -> None:
    """Subscribe `handle` to `topic` in a consumer group: offsets committed after the handler
    (explicit ack policy), from the earliest offset for a new group, every message run under
    `consume_resiliently` with the topic's dead-letter topic."""

    @broker.subscriber(
        topic.name,
        group_id=group_id,
        ack_policy=SUBSCRIBER_ACK_POLICY,
        auto_offset_reset="earliest",
        title=name,
        description=topic.doc,
    )
    async def on_message(msg: KafkaMessage) -> None:
        await consume_resiliently(
            raw=msg.body,
            parse=parse,
            handle=handle,
            producer=producer_of(),
            topic=topic.name,
            dead_letter_topic=topic.dead_letter,
            key=getattr(msg.raw_message, "key", None),
            consumer=name,
            max_retries=max_retries,
        )


# A batch subscriber takes up to this many records a poll. An idle one long-polls: it waits
# up to BATCH_IDLE_WAIT_MS for a first record and returns the moment one arrives.
BATCH_MAX_RECORDS = 200
BATCH_IDLE_WAIT_MS = 1000


class LongPollingBatchSubscriber(BatchSubscriber):
    """FastStream's batch subscriber without its sleep after an empty poll.

    FastStream's own loop waits `batch_timeout_ms` for records and, if none came, sleeps as
    long again. A short timeout then spins (about 100 wake-ups a second per idle subscriber),
    and a long one delays the first message after a quiet spell by up to that long. Here the
    wait is the whole idle behaviour: aiokafka's `getmany` returns as soon as a record has
    been fetched, so a quiet subscriber wakes once a second and a message is taken at once.
    """

    __slots__ = ()

    async def get_msg(self, consumer: AIOKafkaConsumer) -> tuple[ConsumerRecord, ...]:
        batches = await consumer.getmany(
            timeout_ms=BATCH_IDLE_WAIT_MS, max_records=self.max_records
        )
        return tuple(chain.from_iterable(batches.values()))


async def raw_records(message: Any) -> Any:
    """Hands a batch handler the raw records, so that each is parsed (or dead-lettered) alone."""
    return message.raw_message


# Consumers off the instant path let the broker gather their records for up to this long
# (or 256 KiB): one fetch, one transaction and one offset commit for many events instead of one
# per order, at the price of that much delay.
GATHER_MAX_WAIT_MS = 100
GATHER_MIN_BYTES = 256 * 1024


def batch_subscriber(
    broker: KafkaBroker,
    topic: str,
    *,
    group_id: str,
    name: str,
    description: str,
    gather: bool = False,
) -> Callable[[Callable[[Any], Awaitable[None]]], object]:
    """The decorator of every batch subscriber: a poll of up to BATCH_MAX_RECORDS raw records
    in partition order, offsets committed only after the handler returned (explicit ack
    policy), a new group starting from the earliest offset. `gather`: a consumer off the
    instant path, whose fetches the broker holds up to GATHER_MAX_WAIT_MS to fill them."""
    subscriber = broker.subscriber(
        topic,
        batch=True,
        group_id=group_id,
        ack_policy=SUBSCRIBER_ACK_POLICY,
        auto_offset_reset="earliest",
        max_records=BATCH_MAX_RECORDS,
        batch_timeout_ms=BATCH_IDLE_WAIT_MS,
        decoder=raw_records,
        title=name,
        description=description,
        fetch_max_wait_ms=GATHER_MAX_WAIT_MS if gather else 500,
        fetch_min_bytes=GATHER_MIN_BYTES if gather else 1,
    )
    # FastStream builds its subscriber classes itself; this one differs only in `get_msg`.
    assert type(subscriber) is BatchSubscriber, type(subscriber)
    subscriber.__class__ = LongPollingBatchSubscriber
    return subscriber


def subscribe_batched(
    broker: KafkaBroker,
    topic: Topic,
    *,
    group_id: str,
    name: str,
    parse: Callable[[bytes], M],
    apply: Callable[[Conn, Sequence[M]], Awaitable[None]],
    pool_of: Callable[[], asyncpg.Pool],
    producer_of: Callable[[], AIOKafkaProducer],
    max_retries: int,
    types: frozenset[str] | None = None,
) -> None:
    """Like `subscribe`, for high-volume topics off the instant path: each poll (up to
    BATCH_MAX_RECORDS messages, gathered by the broker for up to GATHER_MAX_WAIT_MS) is
    applied in ONE transaction, in partition order, then its offsets are committed. A batch
    that fails for a reason of its own is applied again one message at a time, each under
    `consume_resiliently`, so only a poison message is dead-lettered; an infrastructure
    failure is raised, and the batch comes again.

    `types`: the message types this consumer has a use for. A record whose `x-type` header
    names another type is passed over undecoded (its offset is committed with the batch); a
    poll of nothing but such records costs no transaction."""

    async def apply_alone(message: M) -> None:
        async with pool_of().acquire() as conn, conn.transaction():
            await apply(conn, [message])

    async def one_by_one(records: Sequence[Any]) -> None:
        for record in records:
            await consume_resiliently(
                raw=record.value or b"",
                parse=parse,
                handle=apply_alone,
                producer=producer_of(),
                topic=topic.name,
                dead_letter_topic=topic.dead_letter,
                key=record.key,
                consumer=name,
                max_retries=max_retries,
            )

    @batch_subscriber(
        broker, topic.name, group_id=group_id, name=name, description=topic.doc, gather=True
    )
    async def on_batch(all_records: Any) -> None:
        records = [
            r for r in all_records if types is None or header_type(r) in types or not header_type(r)
        ]
        if not records:
            return
        try:
            messages = [parse(record.value or b"") for record in records]
        except (ValidationError, ValueError):
            await one_by_one(records)  # dead-letters what does not parse, applies the rest
            return
        try:
            async with pool_of().acquire() as conn, conn.transaction():
                await apply(conn, messages)
        except TRANSIENT:
            metrics.CONSUMER_RETRIES.labels(name, "transient").inc()
            await asyncio.sleep(0.5)
            raise
        except Exception as exc:
            log.warning(
                "%s: a batch of %d failed (%s): applying them one by one",
                name,
                len(records),
                type(exc).__name__,
            )
            await one_by_one(records)
