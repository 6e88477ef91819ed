"""How every consumer runs its handler: offsets committed after it (at-least-once), bounded
retries with backoff, dead letters for a poison message, and batch subscribers that apply a
poll at once and fall back to one message at a time."""

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from itertools import chain
from typing import Any, Protocol, TypeVar, cast

import asyncpg
from aiokafka import (
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    ConsumerRecord,
    TopicPartition,
)
from aiokafka.errors import KafkaError
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from faststream.kafka.subscriber.usecase import (
    BatchSubscriber,
    DefaultSubscriber,
    LogicSubscriber,
)
from pydantic import BaseModel, ValidationError

from shared import metrics
from shared.db import Conn
from shared.outbox import header_type
from shared.topics import Topic

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)

# Every subscriber commits its offset only after its handler returned: at-least-once. The
# handler itself retries, then dead-letters, so it only raises for infrastructure failures
# (database or broker down), and then the message is redelivered rather than skipped.
SUBSCRIBER_ACK_POLICY = AckPolicy.NACK_ON_ERROR


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

REFUSED_BY_THE_DATABASE = asyncpg.DataError
"""PostgreSQL's "data exception" (SQLSTATE class 22: a number out of its column's range, a
string too long, text it cannot hold), and a value asyncpg cannot encode for its parameter,
which it reports the same way before sending anything. The same message is refused again on
every attempt: it is refused data, like a ValueError."""


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
    - So is one whose handler refuses its data (a `ValueError`: a delivery for a SKU that
      does not exist, a code that does not open; or `REFUSED_BY_THE_DATABASE`, a value the
      database or its driver refuses): the same message is refused again, and
      while it is retried the partition's other messages, the instant path's order requests
      among them, wait behind it.
    - Any other handler error is retried with exponential backoff, `max_retries` times, then
      the message is dead-lettered with the error in its headers, so the partition moves on.
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
        except (ValueError, REFUSED_BY_THE_DATABASE) as exc:
            await _dead_letter(
                producer, dead_letter_topic, raw, key, topic, consumer, exc, attempt + 1
            )
            return
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

    subscriber = broker.subscriber(
        topic.name,
        group_id=group_id,
        ack_policy=SUBSCRIBER_ACK_POLICY,
        auto_offset_reset="earliest",
        title=name,
        description=topic.doc,
        fetch_max_wait_ms=FETCH_WAIT_MS,
        consumer_timeout_ms=FETCHER_WAKE_MS,
    )
    # As batch_subscriber does: FastStream builds the class, this one only adds to `start`.
    assert type(subscriber) is DefaultSubscriber, type(subscriber)
    subscriber.__class__ = LongPollingSubscriber

    @subscriber
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
# up to BATCH_IDLE_WAIT_MS for a first record and returns the moment one arrives (stopping
# cancels the wait).
BATCH_MAX_RECORDS = 200
BATCH_IDLE_WAIT_MS = 10_000


# A batch subscriber commits the offsets of the batches it has applied at most this often:
# one OffsetCommit request (and one write of the broker's offsets log) per interval instead
# of one per batch, which under a steady flow of small batches is one per order. What a crash
# redelivers is what was applied since the last commit that succeeded: normally up to this
# long, longer while commits fail (the group coordinator unreachable while the partitions'
# leaders still serve fetches). Every consumer takes redelivery (at-least-once, idempotent).
COMMIT_INTERVAL_S = 0.25
# How long the commit of what was applied may take when partitions are revoked or the
# subscriber stops, before it is given up (those records then come again).
LAST_COMMIT_TIMEOUT_S = 5.0


class ThrottledCommits:
    """What FastStream's ack and nack of a batch call instead of the consumer itself.

    `taken` records the offsets of the batch just polled; `commit` (the ack, called only
    after the handler returned) marks them applied, and a background task commits the
    applied offsets explicitly, at most every `interval_s`. Explicit offsets, never the
    consumer's positions, so a commit made while the next batch is being handled cannot
    cover it. `seek` (the nack: the batch failed) rewinds the consumer and forgets the batch.
    `commit_now` commits what is applied at once (partitions revoked); `close` does that one
    last time and stops the background commits (the subscriber stops)."""

    def __init__(self, consumer: AIOKafkaConsumer, name: str, interval_s: float) -> None:
        self._consumer = consumer
        self._name = name
        self._interval = interval_s
        self._taken: dict[TopicPartition, int] = {}
        self._applied: dict[TopicPartition, int] = {}
        self._last_commit = -interval_s
        self._committer: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._closed = False
        self.commits = 0

    def taken(self, records: Sequence[ConsumerRecord]) -> None:
        self._taken = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            self._taken[tp] = max(self._taken.get(tp, 0), r.offset + 1)

    async def commit(self) -> None:
        self._applied.update(self._taken)
        self._taken = {}
        if self._closed:
            return  # stopping: what is applied now comes again after the restart
        if self._applied and (self._committer is None or self._committer.done()):
            self._committer = asyncio.create_task(
                self._commit_while_applied(), name=f"{self._name}-offset-commit"
            )

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self._taken = {}
        self._consumer.seek(partition, offset)

    async def _commit_while_applied(self) -> None:
        failing = False
        while self._applied and not self._closed:
            await asyncio.sleep(max(0.0, self._last_commit + self._interval - time.monotonic()))
            try:
                await self._flush()
            except KafkaError as exc:
                # Kept: the next round sends them (with newer ones). Said once per outage.
                if not failing:
                    log.warning(
                        "%s: offset commits fail (%s); retrying every %g s",
                        self._name,
                        type(exc).__name__,
                        self._interval,
                    )
                failing = True
            else:
                if failing:
                    log.info("%s: offset commits succeed again", self._name)
                failing = False

    async def _flush(self) -> None:
        async with self._lock:
            # Only partitions still assigned: a revoked one's records go to its new owner.
            assigned = self._consumer.assignment()
            offsets = {tp: o for tp, o in self._applied.items() if tp in assigned}
            for tp in set(self._applied) - set(offsets):
                del self._applied[tp]
            if not offsets:
                return
            self._last_commit = time.monotonic()
            await self._consumer.commit(offsets)
            self.commits += 1
            for tp, offset in offsets.items():
                if self._applied.get(tp) == offset:
                    del self._applied[tp]

    async def commit_now(self, timeout_s: float = LAST_COMMIT_TIMEOUT_S) -> None:
        """Commits what is applied now, giving up (logged) after `timeout_s`."""
        try:
            await asyncio.wait_for(self._flush(), timeout_s)
        except (KafkaError, TimeoutError) as exc:
            log.warning(
                "%s: offsets applied could not be committed (%s): those records come again",
                self._name,
                type(exc).__name__,
            )

    async def close(self, timeout_s: float = LAST_COMMIT_TIMEOUT_S) -> None:
        self._closed = True
        if self._committer is not None:
            self._committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._committer
        await self.commit_now(timeout_s)


class CommitOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    """Commits what was applied before partitions are taken away, so that their next owner
    (often this consumer again: a rebalance revokes them all) does not get it again."""

    def __init__(self) -> None:
        self.commits: ThrottledCommits | None = None

    async def on_partitions_revoked(self, revoked: Any) -> None:
        if self.commits is not None:
            await self.commits.commit_now()

    async def on_partitions_assigned(self, assigned: Any) -> None:
        return None


class LongPollingSubscriber(DefaultSubscriber):
    """FastStream's subscriber of one message at a time, whose consumer holds an idle fetch
    IDLE_FETCH_WAIT_MS (`long_poll_when_idle`)."""

    __slots__ = ()
    waiting: bool  # in get_msg, for a record (instances have a __dict__)

    async def start(self) -> None:
        self.waiting = False
        await super().start()
        assert self.consumer is not None
        long_poll_when_idle(self.consumer, lambda: self.waiting)

    async def get_msg(self, consumer: AIOKafkaConsumer) -> ConsumerRecord:
        self.waiting = True
        try:
            return await super().get_msg(consumer)
        finally:
            self.waiting = False


class LongPollingBatchSubscriber(BatchSubscriber):
    """FastStream's batch subscriber without its sleep after an empty poll, and with its
    offset commits throttled (`ThrottledCommits`, every COMMIT_INTERVAL_S at most).

    FastStream's own loop waits `batch_timeout_ms` for records and, if none came, sleeps as
    long again. A short timeout then spins (about 100 wake-ups a second per idle subscriber),
    and a long one delays the first message after a quiet spell by up to that long. Here the
    wait is the whole idle behaviour: aiokafka's `getmany` returns as soon as a record has
    been fetched, so a quiet subscriber wakes every BATCH_IDLE_WAIT_MS and a message is taken
    at once.
    """

    __slots__ = ()
    # Set by batch_subscriber and start (instances have a __dict__).
    consumer_name: str
    on_revoke: CommitOnRevoke
    commits: "ThrottledCommits"
    gather_s: float  # GATHER_INTERVAL_S for a consumer off the instant path, else 0
    resume_at: float  # when a gathering subscriber's paused partitions may fetch again
    waiting: bool  # in getmany, for records: not handling a batch

    async def start(self) -> None:
        await super().start()
        # Before the consume loop FastStream just scheduled has run: every batch's ack and
        # nack go through the throttle.
        assert self.consumer is not None
        long_poll_when_idle(self.consumer, lambda: self.waiting)
        self.commits = ThrottledCommits(self.consumer, self.consumer_name, COMMIT_INTERVAL_S)
        self.on_revoke.commits = self.commits
        self.parser._setup(self.commits)

    async def stop(self) -> None:
        """FastStream's stop (LogicSubscriber.stop: the consume loop, then the consumer), with
        the last commit in between: once no batch can be acked any more, while the consumer
        can still commit."""
        await super(LogicSubscriber, self).stop()  # the loop, and the batch it was handling
        commits: ThrottledCommits | None = getattr(self, "commits", None)
        if commits is not None:
            await commits.close()
        if self.consumer is not None:
            await self.consumer.stop()
            self.consumer = None

    async def get_msg(self, consumer: AIOKafkaConsumer) -> tuple[ConsumerRecord, ...]:
        gather_s = self.gather_s
        if gather_s:
            # The partitions were paused after the last batch: nothing is fetched until the
            # interval has passed, then one fetch takes what came meanwhile.
            wait = self.resume_at - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            consumer.resume(*consumer.paused())
        self.waiting = True
        try:
            batches = await consumer.getmany(
                timeout_ms=BATCH_IDLE_WAIT_MS, max_records=self.max_records
            )
        finally:
            self.waiting = False  # before the fetcher plans again: no await since getmany
        records = tuple(chain.from_iterable(batches.values()))
        if gather_s and 0 < len(records) < (self.max_records or BATCH_MAX_RECORDS):
            # Before the fetcher runs again (no await since getmany returned): it would
            # otherwise fetch at once, mostly a record or two. A paused partition's position
            # stays where this batch ends; nothing fetched is skipped. A full batch goes on at
            # once: there is more to read.
            consumer.pause(*consumer.assignment())
            self.resume_at = time.monotonic() + gather_s
        commits: ThrottledCommits | None = getattr(self, "commits", None)
        if commits is not None and records:
            commits.taken(records)
        return records


async def raw_records(message: Any) -> Any:
    """Hands a batch handler the raw records, so that each is parsed (or dead-lettered) alone."""
    return message.raw_message


# A consumer off the instant path takes a batch at most every GATHER_INTERVAL_S: after a
# batch its partitions are paused (nothing is fetched) until the interval has passed, and then
# one fetch takes everything that came meanwhile: one fetch, one transaction and one offset
# commit for many events instead of one per order, at the price of up to that much delay.
# Between batches it long-polls like every consumer: the first event after a quiet spell is
# taken at once. (The broker gathering instead, with fetch.min.bytes and a 100 ms fetch wait,
# cost ten empty fetches a second per idle consumer: docs/benchmarks.md.) A full batch goes on
# at once: there is a backlog.
GATHER_INTERVAL_S = 0.1
# How long the broker holds an empty fetch that leaves some of the consumer's partitions out
# (aiokafka's default). Not longer: aiokafka sends one fetch per broker at a time and leaves
# out the partitions whose records are still buffered (or paused), so under a backlog on one
# partition a fetch of the idle others is held this long, and the busy one's next fetch waits
# behind it (a backlog of 4 MiB on one of three partitions drained in 15.5 s with 5 s, under
# 2 s with 500 ms: tests/integration/test_batch_offset_commits.py).
FETCH_WAIT_MS = 500
# How long the broker holds an empty fetch of ALL the consumer's partitions: nothing can wait
# behind it (a record on any of them answers it at once), so an idle consumer asks every 5 s
# instead of twice a second (`long_poll_when_idle`; docs/benchmarks.md, "Idle").
IDLE_FETCH_WAIT_MS = 5000
# How long aiokafka's fetch routine sleeps, when nothing wakes it, before it looks at its
# partitions again (its default, 200 ms, woke every idle consumer five times a second to
# rebuild a fetch plan while its long poll was still in flight). Whatever it must act on wakes
# it at once: a fetch answered, records consumed, a partition resumed, an assignment lost.
# Longer than IDLE_FETCH_WAIT_MS, so that an idle consumer wakes only when its poll returns.
FETCHER_WAKE_MS = 10_000


def long_poll_when_idle(consumer: AIOKafkaConsumer, waiting: Callable[[], bool]) -> bool:
    """Makes the started `consumer` hold a fetch IDLE_FETCH_WAIT_MS when its subscriber is
    `waiting()` for records and the fetch asks for every partition it has, and FETCH_WAIT_MS
    otherwise: an idle consumer asks the broker every 5 s, and a backlog on one partition
    never waits on a long fetch of the others.

    Every partition: none has records still buffered (or an error to raise), is paused, awaits
    an offset reset or has no known leader. Waiting: a fetch planned while a batch is handled
    is short, since the batch may be given back (a seek) and come again only once that fetch
    returns. Requests that share the fetch's connection (metadata, offset lookups) can also
    wait behind a held fetch; the group's heartbeats and commits have their own.

    aiokafka 0.14 takes a fetch's wait from its fetcher's `_fetch_max_wait_ms` when it plans
    the fetch (`_get_actions_per_node`); the plan is wrapped to set it first. False
    (the consumer keeps FETCH_WAIT_MS: correct, only costlier when idle) if this aiokafka's
    fetcher differs; tests/integration/test_idle_long_poll.py fails then."""
    fetcher: Any = getattr(consumer, "_fetcher", None)
    plan = getattr(fetcher, "_get_actions_per_node", None)
    cluster = getattr(getattr(consumer, "_client", None), "cluster", None)
    if (
        plan is None
        or cluster is None
        or not all(hasattr(fetcher, a) for a in ("_records", "_fetch_max_wait_ms"))
    ):
        log.warning("aiokafka's fetcher differs: idle consumers fetch every %d ms", FETCH_WAIT_MS)
        return False

    def asks_for_every_partition(assignment: Any) -> bool:
        for tp in assignment.tps:
            state = assignment.state_value(tp)
            if tp in fetcher._records or state.paused or not state.has_valid_position:
                return False
            if cluster.leader_for_partition(tp) in (None, -1):
                return False
        return True

    def plan_with_wait(assignment: Any) -> Any:
        idle = waiting() and asks_for_every_partition(assignment)
        fetcher._fetch_max_wait_ms = IDLE_FETCH_WAIT_MS if idle else FETCH_WAIT_MS
        return plan(assignment)

    fetcher._get_actions_per_node = plan_with_wait
    return True


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
    policy; at most every COMMIT_INTERVAL_S, and before partitions are revoked), a new group
    starting from the earliest offset. `gather`: a consumer off the instant path, which takes
    a batch at most every GATHER_INTERVAL_S."""
    on_revoke = CommitOnRevoke()
    subscriber = broker.subscriber(
        topic,
        batch=True,
        listener=on_revoke,
        group_id=group_id,
        ack_policy=SUBSCRIBER_ACK_POLICY,
        auto_offset_reset="earliest",
        max_records=BATCH_MAX_RECORDS,
        batch_timeout_ms=BATCH_IDLE_WAIT_MS,
        decoder=raw_records,
        title=name,
        description=description,
        fetch_max_wait_ms=FETCH_WAIT_MS,
        consumer_timeout_ms=FETCHER_WAKE_MS,
    )
    # FastStream builds its subscriber classes itself; this one differs in `get_msg` and in
    # how it commits (start, stop), not in its layout.
    assert type(subscriber) is BatchSubscriber, type(subscriber)
    subscriber.__class__ = LongPollingBatchSubscriber
    long_polling = cast(LongPollingBatchSubscriber, subscriber)
    long_polling.consumer_name = name
    long_polling.on_revoke = on_revoke
    long_polling.gather_s = GATHER_INTERVAL_S if gather else 0.0
    long_polling.resume_at = 0.0
    long_polling.waiting = False
    return subscriber


class Record(Protocol):
    """What a batch consumer reads of an aiokafka ConsumerRecord."""

    @property
    def key(self) -> bytes | None: ...

    @property
    def value(self) -> bytes | None: ...


async def consume_batch(
    records: Sequence[Record],
    *,
    parse: Callable[[bytes], M],
    apply: Callable[[Sequence[M]], Awaitable[None]],
    producer: AIOKafkaProducer,
    topic: Topic,
    consumer: str,
    max_retries: int,
    infrastructure_pause_s: float = 0.5,
) -> None:
    """Apply one poll's messages with ONE call of `apply` (one transaction), in partition
    order; the one retry path of every batch consumer.

    - A record that does not parse is dead-lettered; the others are applied without it.
    - A batch that fails for a reason of its own (a poison message) is applied again one
      message at a time, each under `consume_resiliently`, so that only the poison message
      is dead-lettered.
    - An infrastructure failure is raised after `infrastructure_pause_s`: the offsets are not
      committed, and the batch comes again once things are back.
    """
    messages: list[M] = []
    unparseable: list[Record] = []
    for record in records:
        try:
            messages.append(parse(record.value or b""))
        except (ValidationError, ValueError):
            unparseable.append(record)
    alone: Sequence[Record] = unparseable
    if messages:
        try:
            await apply(messages)
        except TRANSIENT as exc:
            metrics.CONSUMER_RETRIES.labels(consumer, "transient").inc()
            log.warning(
                "%s: a batch of %d failed (%s): it comes again",
                consumer,
                len(messages),
                type(exc).__name__,
            )
            await asyncio.sleep(infrastructure_pause_s)
            raise
        except Exception as exc:
            log.warning(
                "%s: a batch of %d failed (%s): applying them one by one",
                consumer,
                len(messages),
                type(exc).__name__,
            )
            alone = records

    async def apply_alone(message: M) -> None:
        await apply([message])

    for record in alone:  # a record that does not parse is dead-lettered here
        await consume_resiliently(
            raw=record.value or b"",
            parse=parse,
            handle=apply_alone,
            producer=producer,
            topic=topic.name,
            dead_letter_topic=topic.dead_letter,
            key=record.key,
            consumer=consumer,
            max_retries=max_retries,
        )


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
    committed: Callable[[], None] | None = None,
) -> None:
    """Like `subscribe`, for high-volume topics off the instant path: each poll (up to
    BATCH_MAX_RECORDS messages, at most one every GATHER_INTERVAL_S) is
    applied in ONE transaction under `consume_batch`, then its offsets are committed.

    `types`: the message types this consumer has a use for. A record whose `x-type` header
    names another type is passed over undecoded (its offset is committed with the batch); a
    poll of nothing but such records costs no transaction.

    `committed`: called after each of its transactions commits (to wake what acts on the rows
    it wrote, `runtime.when_due`)."""

    async def apply_in_a_transaction(messages: Sequence[M]) -> None:
        async with pool_of().acquire() as conn, conn.transaction():
            await apply(conn, messages)
        if committed is not None:
            committed()

    @batch_subscriber(
        broker, topic.name, group_id=group_id, name=name, description=topic.doc, gather=True
    )
    async def on_batch(all_records: Any) -> None:
        records = [
            r for r in all_records if types is None or header_type(r) in types or not header_type(r)
        ]
        if records:
            await consume_batch(
                records,
                parse=parse,
                apply=apply_in_a_transaction,
                producer=producer_of(),
                topic=topic,
                consumer=name,
                max_retries=max_retries,
            )
