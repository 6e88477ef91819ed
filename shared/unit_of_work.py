"""The unit of work a service's handlers run in: one database transaction, the repositories
the service binds to it, and the messages it publishes (written to the outbox in that same
transaction, on commit only).

    async with new_uow() as uow:
        ...
        uow.publish(topic, key, message)
        await uow.commit()          # leaving the block without commit rolls back

A service names its repositories on a subclass (its service_layer/unit_of_work.py); an adapter
supplies `_begin`, `_commit` and `_end` (shared.postgres_unit_of_work on PostgreSQL). No
database or broker library is imported here: the service layer stays free of them.
"""

import abc
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Self

from shared.contracts import Message


class UnitOfWork(abc.ABC):
    """`async with uow:` ... `await uow.commit()`; leaving the block without commit rolls back.

    `on_commit` is told, after each commit, the messages it published (those published with
    `repeat=True` left out)."""

    def __init__(self, on_commit: Callable[[Sequence[Message]], None] | None = None) -> None:
        self._pending: list[tuple[str, str, Message]] = []
        self._on_commit = on_commit
        self._repeats: set[int] = set()

    def publish(self, topic: str, key: str, message: Message, *, repeat: bool = False) -> None:
        """Publish after commit (outbox). `repeat`: an announcement made again, whose state
        change was counted when it happened; it is not reported to `on_commit`."""
        self._pending.append((topic, key, message))
        if repeat:
            self._repeats.add(id(message))

    async def commit(self) -> None:
        await self._commit(self._pending)
        messages = [m for _, _, m in self._pending if id(m) not in self._repeats]
        self._repeats = set()
        self._pending = []
        if self._on_commit is not None:
            self._on_commit(messages)

    async def __aenter__(self) -> Self:
        self._pending = []
        self._repeats = set()
        await self._begin()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._pending = []
        self._repeats = set()
        await self._end()

    @abc.abstractmethod
    async def _begin(self) -> None:
        """Starts the transaction and binds the repositories to it."""

    @abc.abstractmethod
    async def _commit(self, messages: Sequence[tuple[str, str, Message]]) -> None:
        """Writes the messages to the outbox and commits, atomically."""

    @abc.abstractmethod
    async def _end(self) -> None:
        """Rolls back whatever was not committed and gives the connection back."""
