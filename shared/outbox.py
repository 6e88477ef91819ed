"""The transactional outbox: event rows written in the caller's transaction, the `x-type`
header that marks each row's message type, and the relay that publishes committed rows."""

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError
from asyncpg.pool import PoolConnectionProxy

from shared import metrics
from shared.contracts import Message
from shared.db import Conn

log = logging.getLogger(__name__)


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


# After a wake-up the relay waits this long, so that one round (one transaction, one produce
# request per partition) publishes the rows of many transactions rather than one round per
# row. Nothing on the instant path waits for the relay: the order request and its reply go
# directly; relayed rows are events for the read models, fulfilment and downstream consumers.
COALESCE_S = 0.02
# Under a steady flow every insert wakes the relay again at once: rounds then start at least
# this far apart (one that filled its batch goes on at once), so a round's fixed cost (lock,
# select, delete, commit; every relay of a database tries the lock) is shared by the rows of
# this long instead of being paid tens of times a second. A lone wake after a quiet spell
# still waits only COALESCE_S. Measured in docs/benchmarks.md ("fewer outbox relay rounds").
MIN_ROUND_INTERVAL_S = 0.1
# After a failed round (the broker or the database unreachable), the next one follows this
# much later.
RETRY_AFTER_S = 2.0


def _is_closed(conn: PoolConnectionProxy) -> bool:
    """Whether a pooled connection is closed; the pool detaches a connection that died, and
    its proxy then refuses every call."""
    try:
        return conn.is_closed()
    except asyncpg.InterfaceError:
        return True


_DEAD_LETTER = """
WITH dead AS (
    DELETE FROM outbox WHERE id = ANY($1::bigint[])
    RETURNING id, topic, key, payload, headers, created_at)
INSERT INTO outbox_dead_letters (id, topic, key, payload, headers, created_at, reason)
SELECT id, topic, key, payload, headers, created_at, $2 FROM dead
"""
_DEAD_LETTER_PARKED = """
WITH dead AS (
    DELETE FROM outbox WHERE relay_after = 'infinity'
    RETURNING id, topic, key, payload, headers, created_at)
INSERT INTO outbox_dead_letters (id, topic, key, payload, headers, created_at, reason)
SELECT id, topic, key, payload, headers, created_at, 'MessageSizeTooLargeError' FROM dead
"""


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
        self._round_started = 0.0
        self._task: asyncio.Task[None] | None = None
        self._listener: PoolConnectionProxy | None = None

    async def start(self) -> None:
        # Rows sent by an earlier version, which marked sent rows instead of deleting them,
        # and rows it parked in the outbox rather than moving them to outbox_dead_letters.
        await self._pool.execute("DELETE FROM outbox WHERE published_at IS NOT NULL")
        await self._pool.execute(_DEAD_LETTER_PARKED)
        await self._listen()
        self._task = asyncio.create_task(self._run(), name=f"{self._service}-outbox-relay")

    async def _send(self, row: asyncpg.Record) -> "asyncio.Future[Any]":
        future: asyncio.Future[Any] = await self._producer.send(
            row["topic"],
            value=row["payload"],
            key=row["key"].encode(),
            headers=[(k, v.encode()) for k, v in row["headers"].items()],
        )
        return future

    async def _send_alone(self, row: asyncpg.Record) -> object:
        """Sends one row and waits for its acknowledgement: the result, or the error."""
        try:
            return await (await self._send(row))
        except Exception as exc:
            return exc

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
                self._round_started = time.monotonic()
                # Cleared before the round, not after it: a row committed while the round
                # runs (after its SELECT) wakes the next round instead of waiting for the poll.
                self._wake.clear()
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
                # Retried after RETRY_AFTER_S, not after the poll: the rows are there, and no
                # NOTIFY will come for them again.
                await asyncio.sleep(min(self._poll, RETRY_AFTER_S))
                continue
            # Without a listener (it could not LISTEN) nothing wakes the relay: it looks again
            # after RETRY_AFTER_S, and tries to listen again then.
            poll = self._poll if self._listener is not None else min(self._poll, RETRY_AFTER_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), poll)
            # Let the rows of concurrent transactions gather: one round then publishes many.
            since = time.monotonic() - self._round_started
            await asyncio.sleep(max(COALESCE_S, MIN_ROUND_INTERVAL_S - since))

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
                backlog = await conn.fetchrow(
                    "SELECT count(*) AS n, extract(epoch FROM now() - min(created_at)) AS age, "
                    "(SELECT count(*) FROM outbox_dead_letters) AS dead "
                    "FROM outbox WHERE published_at IS NULL"
                )
                assert backlog is not None
                metrics.OUTBOX_BACKLOG.labels(self._service).set(backlog["n"])
                metrics.OUTBOX_OLDEST_AGE.labels(self._service).set(float(backlog["age"] or 0))
                metrics.OUTBOX_DEAD_LETTERS.labels(self._service).set(backlog["dead"])
            if not rows:
                return 0
            futures, sent, dead = [], [], []
            for r in rows:
                try:
                    futures.append(await self._send(r))
                    sent.append(r)
                except MessageSizeTooLargeError:
                    dead.append(r)  # over the producer's limit: refused before any send
            acknowledged = []
            results = await asyncio.gather(*futures, return_exceptions=True)
            for r, result in zip(sent, results, strict=True):
                if isinstance(result, MessageSizeTooLargeError):
                    # The broker refused the record batch it was in: alone, it says whether
                    # this row is the one too large (the others of that batch then go).
                    result = await self._send_alone(r)
                if isinstance(result, MessageSizeTooLargeError):
                    dead.append(r)
                elif isinstance(result, BaseException):
                    # Anything else: nothing of this round is deleted (the transaction rolls
                    # back) and the next round sends it all again, in order.
                    raise result
                else:
                    acknowledged.append(r["id"])
            # Only rows the broker acknowledged leave the outbox. Deleted rather than marked:
            # nothing reads a sent row again, and the table and its index stay small.
            await conn.execute("DELETE FROM outbox WHERE id = ANY($1::bigint[])", acknowledged)
            if dead:
                # They can never be sent: they leave the outbox for outbox_dead_letters (kept
                # whole, never marked sent, logged, alerted on) rather than block every row
                # behind them.
                for r in dead:
                    log.error(
                        "outbox row %d for %s is larger than the broker takes: moved to "
                        "outbox_dead_letters, not sent",
                        r["id"],
                        r["topic"],
                    )
                    metrics.DEAD_LETTERS.labels(f"{self._service}.outbox", r["topic"]).inc()
                await conn.execute(
                    _DEAD_LETTER, [r["id"] for r in dead], MessageSizeTooLargeError.__name__
                )
            metrics.OUTBOX_PUBLISHED.labels(self._service).inc(len(acknowledged))
            return len(rows)
