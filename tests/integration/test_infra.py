"""The infrastructure the services rely on, checked against the real broker and databases."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from shared import topics
from tests.conftest import DB_ENV, Stack, StackCtl
from tests.helpers import unique, wait_until
from tests.integration.conftest import NewTopicFn

pytestmark = pytest.mark.integration


async def consume(consumer: AIOKafkaConsumer, count: int, within: float = 30.0) -> list[bytes]:
    """Reads until `count` records arrived (fails at the deadline with what it saw)."""
    seen: list[ConsumerRecord[bytes, bytes]] = []

    async def enough() -> bool:
        batches = await consumer.getmany(timeout_ms=200)
        for records in batches.values():
            seen.extend(records)
        return len(seen) >= count

    await wait_until(enough, within, interval=0, message=f"{count} records (have {len(seen)})")
    return [r.value for r in seen if r.value is not None]


async def test_idempotent_producer_and_manual_commit(stack: Stack, new_topic: NewTopicFn) -> None:
    topic = await new_topic(1)
    producer = AIOKafkaProducer(
        bootstrap_servers=stack.kafka_bootstrap, acks="all", enable_idempotence=True
    )
    await producer.start()
    try:
        sent = [await producer.send_and_wait(topic, f"m{i}".encode(), key=b"k") for i in range(5)]
    finally:
        await producer.stop()
    # Idempotent and acks=all: each record written once, in order, without gaps.
    assert [meta.offset for meta in sent] == [0, 1, 2, 3, 4]

    group = unique("test-group")
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=stack.kafka_bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        assert await consume(consumer, 5) == [b"m0", b"m1", b"m2", b"m3", b"m4"]
        tp = TopicPartition(topic, 0)
        assert await consumer.committed(tp) is None  # nothing committed by itself
        await consumer.commit({tp: 5})
    finally:
        await consumer.stop()

    # The group's offset is stored by the broker: a new member of the group sees it.
    reader = AIOKafkaConsumer(bootstrap_servers=stack.kafka_bootstrap, group_id=group)
    await reader.start()
    try:
        assert await reader.committed(TopicPartition(topic, 0)) == 5
    finally:
        await reader.stop()


async def test_transactions_visible_only_when_committed(
    stack: Stack, new_topic: NewTopicFn
) -> None:
    topic = await new_topic(1)
    producer = AIOKafkaProducer(
        bootstrap_servers=stack.kafka_bootstrap, transactional_id=unique("test-tx")
    )
    await producer.start()
    try:
        async with producer.transaction():
            await producer.send_and_wait(topic, b"committed-1", key=b"k")
        await producer.begin_transaction()
        await producer.send_and_wait(topic, b"aborted", key=b"k")
        await producer.abort_transaction()
        async with producer.transaction():
            await producer.send_and_wait(topic, b"committed-2", key=b"k")
    finally:
        await producer.stop()

    def reader(isolation: str) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            topic,
            bootstrap_servers=stack.kafka_bootstrap,
            group_id=unique("test-group"),
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            isolation_level=isolation,
        )

    committed = reader("read_committed")
    await committed.start()
    try:
        # "committed-2" comes after the aborted record: once it is read, the aborted one
        # would have been read before it if it were visible.
        assert await consume(committed, 2) == [b"committed-1", b"committed-2"]
    finally:
        await committed.stop()

    # The aborted record was really written: a read_uncommitted reader sees it.
    uncommitted = reader("read_uncommitted")
    await uncommitted.start()
    try:
        assert await consume(uncommitted, 3) == [b"committed-1", b"aborted", b"committed-2"]
    finally:
        await uncommitted.stop()


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


@pytest.mark.parametrize("service", sorted(DB_ENV))
async def test_each_service_has_its_own_database_and_role(stack: Stack, service: str) -> None:
    conn = await asyncpg.connect(stack.db_url(service), timeout=10)
    try:
        row = await conn.fetchrow("select current_user, current_database()")
    finally:
        await conn.close()
    assert row is not None
    assert (row[0], row[1]) == (service, service)

    for other in sorted(set(DB_ENV) - {service}):
        foreign = _with_database(stack.db_url(service), other)
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match=r"CONNECT|permission denied"):
            await asyncpg.connect(foreign, timeout=10)


async def test_declared_topics_exist_with_their_partition_counts(
    admin: AIOKafkaAdminClient,
) -> None:
    described = await admin.describe_topics([t.name for t in topics.ALL])
    found = {d["topic"]: d for d in described}
    for topic in topics.ALL:
        info = found.get(topic.name)
        assert info is not None, f"{topic.name} missing"
        assert info["error_code"] == 0, f"{topic.name}: {info}"
        assert len(info["partitions"]) == topic.partitions, topic.name


async def test_stackctl_sees_every_process_running(stackctl: StackCtl) -> None:
    status = await stackctl("status")
    for process in ("postgres", "kafka", "api", "inventory", "fulfilment"):
        assert any(line.split()[:2] == [process, "running"] for line in status.splitlines()), status
