"""Fixtures of the integration tests that talk to the real broker."""

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.conftest import Stack
from tests.helpers import unique

NewTopicFn = Callable[[int], Awaitable[str]]


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

    async def create(partitions: int) -> str:
        name = unique("test-topic")
        await admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
        created.append(name)
        return name

    yield create
    if created:
        await admin.delete_topics(created)
