"""Fixtures of the integration tests that talk to the real broker."""

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.conftest import Stack
from tests.helpers import unique

NewTopicFn = Callable[..., Awaitable[str]]
"""`await new_topic(partitions, **topic_configs)`: the name of a topic made for the test."""


@pytest.fixture
async def admin(stack: Stack) -> AsyncIterator[AIOKafkaAdminClient]:
    client = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    await client.start()
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def new_topic(admin: AIOKafkaAdminClient) -> AsyncIterator[NewTopicFn]:
    """Creates topics with unique names; deletes them after the test."""
    created: list[str] = []

    async def create(partitions: int, **topic_configs: str) -> str:
        name = unique("test-topic")
        await admin.create_topics(
            [
                NewTopic(
                    name,
                    num_partitions=partitions,
                    replication_factor=1,
                    topic_configs=topic_configs,
                )
            ]
        )
        created.append(name)
        return name

    yield create
    if created:
        await admin.delete_topics(created)
