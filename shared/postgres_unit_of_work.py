"""The unit of work on PostgreSQL: one transaction on a pooled connection (or inside the one a
caller holds open), its messages written to the outbox and committed with it.

A service's adapter derives from `PostgresUnitOfWork` and its own service_layer UnitOfWork,
and binds its repositories to the connection in `_bind`. `ConnectionSource` and `roll_back`
serve a unit of work with another life (the api's, whose transaction is optional).
"""

import abc
import contextlib
from collections.abc import Callable, Sequence

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from asyncpg.transaction import Transaction

from shared.contracts import Message
from shared.db import Conn
from shared.outbox import add_all_to_outbox
from shared.unit_of_work import UnitOfWork


class ConnectionSource:
    """Where a unit of work gets its connection: borrowed from `pool` and given back, or the
    `conn` its caller holds (and keeps)."""

    def __init__(self, pool: asyncpg.Pool | None = None, conn: Conn | None = None) -> None:
        if (pool is None) == (conn is None):
            raise ValueError("give a pool or a connection, not both")
        self._pool = pool
        self.given = conn

    async def take(self) -> Conn:
        if self.given is not None:
            return self.given
        assert self._pool is not None
        conn: PoolConnectionProxy = await self._pool.acquire()
        return conn

    async def give_back(self, conn: Conn) -> None:
        if self.given is None:
            assert self._pool is not None
            assert isinstance(conn, PoolConnectionProxy)
            await self._pool.release(conn)


async def roll_back(conn: Conn, tx: Transaction) -> None:
    """Rolls `tx` back, unless the connection is lost (the server rolls back without it)."""
    if not conn.is_closed():
        with contextlib.suppress(asyncpg.InterfaceError, OSError):
            await tx.rollback()


class PostgresUnitOfWork(UnitOfWork):
    """A transaction on a connection of `pool`. Given `conn` instead, the unit runs inside
    the transaction its caller holds open on it (as a savepoint: leaving without commit
    undoes only the unit's own work), and the caller commits."""

    def __init__(
        self,
        pool: asyncpg.Pool | None = None,
        *,
        conn: Conn | None = None,
        on_commit: Callable[[Sequence[Message]], None] | None = None,
    ) -> None:
        super().__init__(on_commit)
        self._source = ConnectionSource(pool, conn)
        self._conn: Conn | None = None
        self._tx: Transaction | None = None

    @property
    def connection(self) -> Conn:
        assert self._conn is not None, "use the unit of work inside `async with`"
        return self._conn

    @abc.abstractmethod
    def _bind(self, conn: Conn) -> None:
        """Sets the service's repositories on `conn`."""

    async def _begin(self) -> None:
        conn = await self._source.take()
        try:
            self._tx = conn.transaction()
            await self._tx.start()
        except BaseException:
            await self._source.give_back(conn)
            raise
        self._conn = conn
        self._bind(conn)

    async def _commit(self, messages: Sequence[tuple[str, str, Message]]) -> None:
        assert self._tx is not None
        await add_all_to_outbox(self.connection, messages)
        await self._tx.commit()
        self._tx = None

    async def _end(self) -> None:
        if self._conn is None:
            return
        try:
            if self._tx is not None:
                await roll_back(self._conn, self._tx)
        finally:
            self._tx = None
            conn, self._conn = self._conn, None
            await self._source.give_back(conn)
