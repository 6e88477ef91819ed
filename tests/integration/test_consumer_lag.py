"""The consumer-lag reading of shared/lag.py against the real broker."""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata
from prometheus_client import REGISTRY

from shared.lag import LagMonitor
from shared.topics import Topic
from tests.conftest import Stack
from tests.helpers import unique
from tests.integration.conftest import NewTopicFn

pytestmark = pytest.mark.integration


@pytest.fixture
async def topic(new_topic: NewTopicFn) -> Topic:
    """A two-partition topic of this test only (the system's topics have real consumers)."""
    return Topic(await new_topic(2), 2, key="test", doc="lag test")


async def test_lag_is_what_the_group_has_still_to_read(stack: Stack, topic: Topic) -> None:
    group = unique("test-lag-group")
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap)
    await producer.start()
    try:
        for partition, count in ((0, 5), (1, 2)):
            for _ in range(count):
                await producer.send_and_wait(topic.name, b"m", partition=partition)
    finally:
        await producer.stop()

    monitor = LagMonitor(stack.kafka_bootstrap, "test-lag", {group: (topic,)})
    try:
        # The group never committed: it would read everything from the beginning.
        assert await monitor.refresh() == {(group, topic.name, 0): 5, (group, topic.name, 1): 2}

        consumer = AIOKafkaConsumer(
            bootstrap_servers=stack.kafka_bootstrap, group_id=group, enable_auto_commit=False
        )
        await consumer.start()
        try:
            offsets = {
                TopicPartition(topic.name, 0): OffsetAndMetadata(3, ""),
                TopicPartition(topic.name, 1): OffsetAndMetadata(2, ""),
            }
            consumer.assign(list(offsets))
            await consumer.commit(offsets)
        finally:
            await consumer.stop()

        assert await monitor.refresh() == {(group, topic.name, 0): 2, (group, topic.name, 1): 0}
        labels = {"group": group, "topic": topic.name}
        assert (
            REGISTRY.get_sample_value("kafka_consumer_lag_messages", labels | {"partition": "0"})
            == 2
        )
        assert (
            REGISTRY.get_sample_value("kafka_consumer_lag_messages", labels | {"partition": "1"})
            == 0
        )
    finally:
        await monitor.stop()
