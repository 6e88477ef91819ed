"""The api's Kafka adapters: the order request's publisher, the broker's health, and the
reply listener (the ports are declared in service_layer/orders.py).

Request/reply over Kafka for the instant path, without FastStream's `request()` (which only
its in-memory test broker answers).

Each ingress instance reads one partition of the reply topic, its own (chosen by its worker
index), with a group-less consumer (assigned that partition, starting at the end), so no
rebalance can ever route its replies elsewhere; its order requests name that partition, and
inventory answers there. It resolves the future waiting under the reply's transactionId.
Replies for other instances (more instances than partitions share one), or for requests that
already gave up, are ignored; so is a record it cannot read (its request waits on, for the
real reply or its window). Reading one partition rather than all is what keeps N instances
from fetching and decoding every reply N times. The loop runs as a supervised background task
(shared.runtime.Background): if it ever dies, it is logged, shown down and restarted.
"""

import asyncio
import contextlib
import logging
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from services.api.service_layer.orders import BrokerUnavailable
from shared.consumers import FETCHER_WAKE_MS, IDLE_FETCH_WAIT_MS
from shared.contracts import Decision
from shared.runtime import Background

log = logging.getLogger(__name__)


class KafkaPublisher:
    def __init__(self, producer: AIOKafkaProducer) -> None:
        self._producer = producer

    async def send(self, topic: str, key: bytes, value: bytes) -> None:
        try:
            await self._producer.send_and_wait(topic, value=value, key=key)
        except KafkaError as exc:
            raise BrokerUnavailable(str(exc)) from exc


class BrokerHealth:
    """Whether the order request can be published now. After a failed publish the ingress
    refuses new orders (503, nothing charged) until a metadata probe succeeds again."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self._producer = producer
        self._down_since: float | None = None
        self._probe: asyncio.Task[None] | None = None

    @property
    def accepting(self) -> bool:
        return self._down_since is None

    def failed(self) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning("publishing to Kafka failed: refusing new orders until it answers")
            self._probe = asyncio.create_task(self._probe_until_up())

    async def _probe_until_up(self) -> None:
        """Probes every second until the broker answers. Any error is a failed probe (one the
        probe did not expect is logged once, with its trace): the probe itself never dies,
        or the api would refuse orders until restarted."""
        logged: set[str] = set()
        while True:
            try:
                async with asyncio.timeout(2):
                    await self._producer.client.fetch_all_metadata()
                self._down_since = None
                log.info("Kafka answers again: accepting orders")
                return
            except (KafkaError, TimeoutError, OSError):
                pass
            except Exception as exc:
                if type(exc).__name__ not in logged:
                    logged.add(type(exc).__name__)
                    log.exception("unexpected error probing Kafka; probing on")
            await asyncio.sleep(1)

    async def stop(self) -> None:
        if self._probe:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe


# How long the broker holds the reply listener's empty fetch: the idle wait of the group
# consumers. The listener reads one partition, so each of its fetches asks for every
# partition it has, which is when a group consumer waits this long too
# (shared.consumers.long_poll_when_idle); a reply answers it the moment it arrives.
REPLY_FETCH_WAIT_MS = IDLE_FETCH_WAIT_MS


class ReplyListener:
    def __init__(self, bootstrap: str, topic: str, instance: int = 0) -> None:
        """`instance`: this process's index among the api's processes (its partition is
        the instance-th of the topic's, modulo their number)."""
        self.topic = topic
        self.partition: int | None = None
        self._instance = instance
        self._bootstrap = bootstrap
        self._waiting: dict[str, asyncio.Future[Decision]] = {}
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self, producer: AIOKafkaProducer, background: Background) -> None:
        """`producer` only serves to look the topic's partitions up."""
        try:
            partitions = await producer.partitions_for(self.topic)
        except KafkaError:
            partitions = set()
        if not partitions:
            raise RuntimeError(
                f"Topic {self.topic} does not exist: run `instant-orders kafka bootstrap`."
            )
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            group_id=None,
            enable_auto_commit=False,
            # The broker answers a fetch as soon as a reply arrives; an idle listener asks
            # every REPLY_FETCH_WAIT_MS.
            fetch_max_wait_ms=REPLY_FETCH_WAIT_MS,
            consumer_timeout_ms=FETCHER_WAKE_MS,
        )
        await consumer.start()
        own = sorted(partitions)[self._instance % len(partitions)]
        assigned = [TopicPartition(self.topic, own)]
        consumer.assign(assigned)
        await consumer.seek_to_end(*assigned)
        for tp in assigned:  # pin the positions now, before any request is published
            await consumer.position(tp)
        self._consumer = consumer
        self.partition = own
        background.start("reply-listener", self._run)

    async def stop(self) -> None:
        """Stops the consumer (the Background that runs the loop is stopped first)."""
        if self._consumer:
            await self._consumer.stop()

    def expect(self, transaction_id: str) -> asyncio.Future[Decision]:
        future: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        self._waiting[transaction_id] = future
        return future

    def forget(self, transaction_id: str) -> None:
        self._waiting.pop(transaction_id, None)

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            try:
                batches = await self._consumer.getmany(
                    timeout_ms=REPLY_FETCH_WAIT_MS, max_records=500
                )
            except Exception:
                log.exception("reply listener could not fetch; retrying")
                await asyncio.sleep(0.5)
                continue
            for records in batches.values():
                for record in records:
                    if record.key is None or record.value is None:
                        continue
                    key = record.key.decode("utf-8", "replace")  # a broken key matches nothing
                    future = self._waiting.get(key)
                    if future is None or future.done():
                        continue
                    try:
                        decision = Decision.model_validate_json(record.value)
                    except ValueError:
                        log.warning("ignoring a malformed reply on %s", self.topic)
                        continue
                    del self._waiting[key]
                    future.set_result(decision)
