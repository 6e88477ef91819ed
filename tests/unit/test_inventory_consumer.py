"""The inventory.commands subscriber's batch path and its fall-back, on fakes."""

import asyncio
from dataclasses import dataclass
from typing import Any, cast

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaTimeoutError

from services.inventory.entrypoints.commands import CommandConsumer
from services.inventory.service_layer.unit_of_work import UnitOfWork
from shared.contracts import Decision, InventoryCommand
from shared.topics import INVENTORY_COMMANDS
from tests.helpers import wait_until
from tests.inventory_fakes import FakeDecisions, FakeStore, FakeUnitOfWork
from tests.unit.test_inventory_handlers import SKU, cancel, create_product, place, stock


@dataclass
class Record:
    key: bytes | None
    value: bytes | None


def record(command: InventoryCommand) -> Record:
    return Record(command.sku.encode(), command.to_bytes())


class FakeProducer:
    """Dead letters are sent and waited for; replies are sent and delivered later (or not)."""

    def __init__(self, failing_topics: tuple[str, ...] = ()) -> None:
        self.sent: list[tuple[str, bytes | None, bytes, dict[str, bytes]]] = []
        self.partitions: list[int | None] = []  # the partition asked for, per sent record
        self.failing = failing_topics

    async def send_and_wait(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        await (await self.send(topic, value, key, headers))

    async def send(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        partition: int | None = None,
    ) -> "asyncio.Future[None]":
        await asyncio.sleep(0)
        delivery: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if topic in self.failing:
            delivery.set_exception(KafkaTimeoutError())
        else:
            self.sent.append((topic, key, value, dict(headers or [])))
            self.partitions.append(partition)
            delivery.set_result(None)
        return delivery

    def to(self, topic: str) -> list[tuple[str, bytes | None, bytes, dict[str, bytes]]]:
        return [s for s in self.sent if s[0] == topic]


class PoisonedDecisions(FakeDecisions):
    async def add_all(self, decisions: Any) -> None:
        if any(d.transaction_id.startswith("poison") for d in decisions):
            raise RuntimeError("a bug that this order triggers")
        await super().add_all(decisions)


class PoisonedUnitOfWork(FakeUnitOfWork):
    async def _begin(self) -> None:
        await super()._begin()
        self.decisions = PoisonedDecisions(self._working)  # type: ignore[arg-type]


class DatabaseDown(FakeUnitOfWork):
    async def _begin(self) -> None:
        raise ConnectionRefusedError("database down")


@pytest.fixture
async def store() -> FakeStore:
    store = FakeStore()
    await create_product(store)
    return store


def consumer(
    store: FakeStore, producer: FakeProducer, uow: type[FakeUnitOfWork]
) -> CommandConsumer:
    def new_uow() -> UnitOfWork:
        return uow(store)

    return CommandConsumer(
        new_uow,
        lambda: cast(AIOKafkaProducer, producer),
        max_retries=1,
        infrastructure_pause_s=0,
    )


async def test_a_batch_is_one_commit_then_one_reply_per_order(store: FakeStore) -> None:
    await stock(store, "A")
    producer = FakeProducer()
    commits = store.commits
    own_partition = place("tx-1", reply_to="replies-1").model_copy(update={"reply_partition": 2})
    await consumer(store, producer, FakeUnitOfWork).handle_batch(
        [record(own_partition), record(place("tx-2", reply_to="replies-2"))]
    )
    assert store.commits == commits + 1
    # tx-1's sender reads partition 2 of its reply topic; tx-2's named none (keyed by its id)
    assert producer.partitions == [2, None]
    replies = {
        topic: (key, Decision.model_validate_json(value)) for topic, key, value, _ in producer.sent
    }
    assert replies["replies-1"][0] == b"tx-1"
    assert replies["replies-1"][1].outcome == "RESERVED"
    assert (replies["replies-2"][0], replies["replies-2"][1].outcome) == (b"tx-2", "BACKORDERED")


async def test_a_poison_message_is_dead_lettered_alone(store: FakeStore) -> None:
    await stock(store, "A", "B")
    producer = FakeProducer()
    batch = [record(place("tx-1")), record(place("poison-1")), record(place("tx-2"))]

    await consumer(store, producer, PoisonedUnitOfWork).handle_batch(batch)

    [(_, key, value, headers)] = producer.to(INVENTORY_COMMANDS.dead_letter)
    assert (key, value) == (SKU.encode(), batch[1].value)
    assert headers["x-error"] == b"RuntimeError"
    assert headers["x-attempts"] == b"2"
    outcomes = [
        Decision.model_validate_json(v).outcome for _, _, v, _ in producer.to("orders.replies")
    ]
    assert outcomes == ["RESERVED", "RESERVED"]
    assert set(store.state.decisions) == {"tx-1", "tx-2"}


async def test_an_unreadable_message_is_dead_lettered_and_the_rest_decided(
    store: FakeStore,
) -> None:
    producer = FakeProducer()
    batch = [Record(b"k", b"{not json"), Record(None, None), record(place("tx-1"))]
    await consumer(store, producer, FakeUnitOfWork).handle_batch(batch)
    assert len(producer.to(INVENTORY_COMMANDS.dead_letter)) == 2
    assert set(store.state.decisions) == {"tx-1"}


async def test_infrastructure_failures_are_raised_for_redelivery(store: FakeStore) -> None:
    producer = FakeProducer()
    with pytest.raises(OSError, match="database down"):
        await consumer(store, producer, DatabaseDown).handle_batch([record(place("tx-1"))])
    assert producer.sent == []


async def test_a_reply_that_cannot_be_sent_is_dropped(
    store: FakeStore, caplog: pytest.LogCaptureFixture
) -> None:
    producer = FakeProducer(failing_topics=("orders.replies",))
    await consumer(store, producer, FakeUnitOfWork).handle_batch(
        [record(place("tx-1")), record(cancel("tx-1"))]
    )
    await wait_until(lambda: "could not send the decision on tx-1" in caplog.text, timeout=5)
    assert set(store.state.decisions) == {"tx-1"}
