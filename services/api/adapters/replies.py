"""Request/reply over Kafka for the instant path, without FastStream's `request()` (which only
its in-memory test broker answers).

Each ingress instance reads the whole reply topic with a group-less consumer (assigned all
partitions, starting at the end), so no rebalance can ever route its replies elsewhere, and
resolves the future waiting under the reply's transactionId. Replies for other instances, or
for requests that already gave up, are ignored; so is a record it cannot read (its request
waits on, for the real reply or its window). The loop runs as a supervised background task
(shared.runtime.Background): if it ever dies, it is logged, shown down and restarted.
"""

import asyncio
import logging

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from shared.contracts import Decision
from shared.runtime import Background

log = logging.getLogger(__name__)


class ReplyListener:
    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
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
            # The broker answers a fetch as soon as a reply arrives; an idle one asks twice a
            # second.
            fetch_max_wait_ms=500,
        )
        await consumer.start()
        assigned = [TopicPartition(self.topic, p) for p in partitions]
        consumer.assign(assigned)
        await consumer.seek_to_end(*assigned)
        for tp in assigned:  # pin the positions now, before any request is published
            await consumer.position(tp)
        self._consumer = consumer
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
                batches = await self._consumer.getmany(timeout_ms=1000, max_records=500)
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
