"""What the in-memory units of work of inventory and fulfilment share: a store that holds the
committed state and the outbox, and a unit of work that works on a copy of the state and makes
it the store's on commit (tests/inventory_fakes.py, tests/fulfilment_fakes.py bind their
repositories to it).
"""

from __future__ import annotations

import abc
import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from shared.contracts import Message
from shared.unit_of_work import UnitOfWork

S = TypeVar("S")


@dataclass(frozen=True)
class OutboxRow:
    topic: str
    key: str
    message: Message


class FakeStore(Generic[S]):
    """The 'database' the fake units of work share: committed state and the outbox."""

    def __init__(self, state: S) -> None:
        self.state = state
        self.outbox: list[OutboxRow] = []
        self.commits = 0

    def messages(self, topic: str | None = None) -> list[Message]:
        return [row.message for row in self.outbox if topic is None or row.topic == topic]


class FakeUnitOfWork(UnitOfWork, Generic[S]):
    def __init__(
        self, store: FakeStore[S], on_commit: Callable[[Sequence[Message]], None] | None = None
    ) -> None:
        super().__init__(on_commit)
        self._store = store
        self._working: S | None = None

    @abc.abstractmethod
    def _bind(self, state: S) -> None:
        """Sets the service's fake repositories on `state`."""

    async def _begin(self) -> None:
        self._working = copy.deepcopy(self._store.state)
        self._bind(self._working)

    async def _commit(self, messages: Sequence[tuple[str, str, Message]]) -> None:
        assert self._working is not None
        self._store.state = self._working
        self._store.outbox.extend(OutboxRow(t, k, m) for t, k, m in messages)
        self._store.commits += 1
        self._working = copy.deepcopy(self._working)
        self._bind(self._working)

    async def _end(self) -> None:
        self._working = None
