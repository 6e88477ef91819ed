"""The shared units of work: messages are written with the commit and only then reported; a
unit left without commit rolls back; on PostgreSQL, one outbox statement before COMMIT and a
rollback that a lost connection does not turn into an error."""

from collections.abc import Callable, Sequence
from typing import Any, cast

import asyncpg
import pytest

from shared.contracts import AllocateBackorder, Message
from shared.db import Conn
from shared.postgres_unit_of_work import ConnectionSource, PostgresUnitOfWork
from shared.unit_of_work import UnitOfWork


def command(transaction_id: str) -> AllocateBackorder:
    return AllocateBackorder(transaction_id=transaction_id, sku="SKU")


class InMemory(UnitOfWork):
    def __init__(self, on_commit: Callable[[Sequence[Message]], None] | None = None) -> None:
        super().__init__(on_commit)
        self.written: list[tuple[str, str, Message]] = []
        self.ended = 0

    async def _begin(self) -> None:
        pass

    async def _commit(self, messages: Sequence[tuple[str, str, Message]]) -> None:
        self.written.extend(messages)

    async def _end(self) -> None:
        self.ended += 1


async def test_commit_writes_the_messages_in_order_then_reports_all_but_repeats() -> None:
    reported: list[Sequence[Message]] = []
    first, again, second = command("t1"), command("t0"), command("t2")
    async with InMemory(reported.append) as uow:
        uow.publish("topic", "a", first)
        uow.publish("topic", "b", again, repeat=True)
        uow.publish("topic", "c", second)
        assert uow.written == []
        await uow.commit()
    assert uow.written == [("topic", "a", first), ("topic", "b", again), ("topic", "c", second)]
    assert reported == [[first, second]]
    assert uow.ended == 1


async def test_what_a_unit_left_without_commit_published_is_dropped() -> None:
    reported: list[Sequence[Message]] = []
    uow = InMemory(reported.append)
    async with uow:
        uow.publish("topic", "a", command("t1"))
    async with uow:
        await uow.commit()
    assert uow.written == []
    assert reported == [[]]
    assert uow.ended == 2


class FakeTransaction:
    def __init__(self, log: list[str], start_fails: bool, rollback_fails: BaseException | None):
        self._log = log
        self._start_fails = start_fails
        self._rollback_fails = rollback_fails

    async def start(self) -> None:
        if self._start_fails:
            raise ConnectionResetError("gone before BEGIN")
        self._log.append("begin")

    async def commit(self) -> None:
        self._log.append("commit")

    async def rollback(self) -> None:
        if self._rollback_fails is not None:
            raise self._rollback_fails
        self._log.append("rollback")


class FakeConnection:
    """What the unit of work asks of an asyncpg connection, written down in `log`."""

    def __init__(
        self,
        *,
        closed: bool = False,
        start_fails: bool = False,
        rollback_fails: BaseException | None = None,
    ) -> None:
        self.log: list[str] = []
        self._closed = closed
        self._start_fails = start_fails
        self._rollback_fails = rollback_fails

    def transaction(self) -> FakeTransaction:
        return FakeTransaction(self.log, self._start_fails, self._rollback_fails)

    async def execute(self, sql: str, *args: Any) -> str:
        self.log.append(" ".join(sql.split()[:3]))
        return "INSERT 0 1"

    def is_closed(self) -> bool:
        return self._closed


class OnConnection(PostgresUnitOfWork):
    bound: Conn | None = None

    def _bind(self, conn: Conn) -> None:
        self.bound = conn


def unit_on(conn: FakeConnection) -> OnConnection:
    return OnConnection(conn=cast(Conn, conn))


async def test_commit_writes_the_outbox_in_one_statement_then_commits() -> None:
    conn = FakeConnection()
    async with unit_on(conn) as uow:
        assert uow.bound is cast(Conn, conn)
        uow.publish("topic", "a", command("t1"))
        uow.publish("topic", "b", command("t2"))
        await uow.commit()
    assert conn.log == ["begin", "INSERT INTO outbox", "commit"]


async def test_a_commit_with_nothing_published_writes_no_outbox_row() -> None:
    conn = FakeConnection()
    async with unit_on(conn) as uow:
        await uow.commit()
    assert conn.log == ["begin", "commit"]


async def test_leaving_without_commit_rolls_back() -> None:
    conn = FakeConnection()
    async with unit_on(conn) as uow:
        uow.publish("topic", "a", command("t1"))
    assert conn.log == ["begin", "rollback"]


@pytest.mark.parametrize("error", [asyncpg.InterfaceError("gone"), OSError("reset")])
async def test_a_rollback_on_a_lost_connection_raises_nothing(error: BaseException) -> None:
    async with unit_on(FakeConnection(rollback_fails=error)):
        pass
    conn = FakeConnection(closed=True)
    async with unit_on(conn):
        pass
    assert conn.log == ["begin"]


async def test_a_transaction_that_does_not_start_binds_nothing() -> None:
    uow = unit_on(FakeConnection(start_fails=True))
    with pytest.raises(ConnectionResetError):
        async with uow:
            pass
    assert uow.bound is None


@pytest.mark.parametrize("given", [{}, {"pool": object(), "conn": object()}])
def test_a_unit_takes_a_pool_or_a_connection(given: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="give a pool or a connection"):
        ConnectionSource(**given)
