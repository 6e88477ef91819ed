"""PostgreSQL plumbing shared by the services: an asyncpg pool and the Alembic runner."""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import asyncpg
from asyncpg.pool import PoolConnectionProxy

if TYPE_CHECKING:
    from sqlalchemy import ClauseElement, MetaData

Conn = asyncpg.Connection | PoolConnectionProxy
"""A connection, whether held directly or borrowed from a pool."""


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """What a connection goes back to the pool with. asyncpg's default reset runs a query on
    every release (advisory unlock, CLOSE ALL, UNLISTEN, RESET ALL): a round trip more per
    use, a third of the round trips of the instant path. Nothing here leaves session state
    behind: locks are transaction-scoped, no session setting is changed, and the outbox relay
    removes its listener itself. Only a transaction left open (a bug) is rolled back."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


class BoundedPool(asyncpg.Pool):
    """asyncpg's pool, whose `acquire()` gives up after `acquire_timeout_s` (asyncpg waits
    forever by default): an exhausted pool then answers 503 instead of holding requests."""

    acquire_timeout_s = 2.0

    def acquire(self, *, timeout: float | None = None) -> Any:
        return super().acquire(timeout=self.acquire_timeout_s if timeout is None else timeout)


def database_unavailable(exc: BaseException) -> BaseException | None:
    """The error in `exc`'s chain (itself, what it was raised from, or what it was raised
    while handling, unless that was suppressed) that says the database cannot be reached or
    used right now (down, restarting, out of connections, pool exhausted, shutting down)
    rather than that the request was wrong: the `503 SERVICE_UNAVAILABLE` case, not a 500.
    None when there is none."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(
            seen,
            asyncpg.PostgresConnectionError
            | asyncpg.exceptions.OperatorInterventionError  # 57P01-03: shutdown, starting up
            | asyncpg.exceptions.TooManyConnectionsError
            | ConnectionError  # refused or reset while (re)connecting
            | TimeoutError,  # BoundedPool.acquire, a connect timeout
        ):
            return seen
        if isinstance(seen, asyncpg.InternalClientError):
            # A pooled connection left mid-operation by a server that was killed ("cannot
            # switch to state ...; another operation is in progress"), seen by the fault drill.
            return seen
        if isinstance(seen, asyncpg.InterfaceError) and any(
            word in str(seen) for word in ("closed", "closing")
        ):
            return seen  # the connection died while in use, or the pool is shutting down
        seen = seen.__cause__ or (None if seen.__suppress_context__ else seen.__context__)
    return None


PlanCacheMode = Literal["auto", "force_generic_plan", "force_custom_plan"]


async def create_pool(
    dsn: str,
    size: int,
    acquire_timeout_s: float = 2.0,
    plan_cache_mode: PlanCacheMode = "force_generic_plan",
) -> asyncpg.Pool:
    """The services' pool. Its statements are prepared once per connection (asyncpg's
    statement cache) and, with `plan_cache_mode=force_generic_plan`, planned once too:
    PostgreSQL's default (`auto`) plans the hot statements again on every execution (their
    `= ANY($1)` arrays make the generic plan look dearer than it is), a third of their
    server time. Every statement of the services is a key look-up or a short index range
    whose plan does not depend on the values (a filter whose best index does, an order
    status, is written into the statement as a literal). A generic plan is made again
    whenever ANALYZE updates a table's statistics; until autovacuum first analyzes a table
    that grew from nearly empty (within `autovacuum_naptime`, a minute), the plan made for
    the small table (a seq scan) stays (docs/benchmarks.md, "Generic plans")."""
    pool = BoundedPool(
        dsn,
        connection_class=asyncpg.Connection,
        record_class=asyncpg.Record,
        # Connections are opened up front: a first connection costs tens of milliseconds
        # (SCRAM, type introspection), which a burst of orders right after start would wait.
        min_size=min(8, size),
        max_size=size,
        init=_init_connection,
        reset=_keep_session,
        command_timeout=30,
        max_inactive_connection_lifetime=300,
        max_queries=50_000,  # asyncpg's default
        server_settings={"plan_cache_mode": plan_cache_mode},
        setup=None,
        connect=None,
        loop=None,
    )
    pool.acquire_timeout_s = acquire_timeout_s
    await pool
    return pool


def sqlalchemy_url(dsn: str) -> str:
    """The asyncpg DSN in the form SQLAlchemy (and so Alembic) expects."""
    for prefix in ("postgresql://", "postgres://"):
        if dsn.startswith(prefix):
            return "postgresql+asyncpg://" + dsn[len(prefix) :]
    return dsn


def split_sql(script: str) -> list[str]:
    """Statements of a SQL script, split on semicolons outside $$-quoted bodies.

    `--` comments are dropped first (a comment may hold a semicolon); the scripts this
    splits are our own migrations, which keep `--` out of string literals.
    """
    script = "\n".join(line.split("--", 1)[0] for line in script.splitlines())
    statements, current, quoted = [], [], False
    for i, part in enumerate(script.split("$$")):
        if i:
            quoted = not quoted
            current.append("$$")
        if quoted:
            current.append(part)
            continue
        pieces = part.split(";")
        current.append(pieces[0])
        for piece in pieces[1:]:
            statements.append("".join(current).strip())
            current = [piece]
    statements.append("".join(current).strip())
    return [s for s in statements if s]


def run_script(script: str) -> None:
    """Run a multi-statement script inside a migration (asyncpg prepares one at a time)."""
    from alembic import op

    for statement in split_sql(script):
        op.execute(statement)


def run_script_outside_transaction(script: str) -> None:
    """Run a script in a migration, each statement in a transaction of its own (alembic's
    autocommit block): for statements that must not hold the migration's locks while they
    scan a table (VALIDATE CONSTRAINT) or cannot run in a transaction (CREATE INDEX
    CONCURRENTLY). The migration's transaction commits before it and a new one begins after."""
    from alembic import op

    with op.get_context().autocommit_block():
        run_script(script)


def migrate(migrations_dir: Path, dsn: str) -> None:
    """Upgrade one service's database to the newest revision of its migrations."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir))
    cfg.attributes["dsn"] = dsn
    command.upgrade(cfg, "head")


def run_alembic_env(metadata: "MetaData") -> None:
    """Body of every service's migrations/env.py: run the migrations online, over asyncpg.
    `metadata` (the service's tables) is what `alembic check` and autogenerate compare with."""
    import asyncio

    from alembic import context
    from sqlalchemy.ext.asyncio import create_async_engine

    dsn: str = context.config.attributes["dsn"]

    def do_run(connection: Any) -> None:
        context.configure(connection=connection, target_metadata=metadata, compare_type=True)
        with context.begin_transaction():
            context.run_migrations()

    async def run() -> None:
        engine = create_async_engine(sqlalchemy_url(dsn))
        async with engine.connect() as connection:
            await connection.run_sync(do_run)
        await engine.dispose()

    asyncio.run(run())


@dataclass(frozen=True)
class Query:
    """A statement built from a service's tables (SQLModel/SQLAlchemy), compiled once for
    asyncpg: its SQL, with `$n` placeholders, and the names of its parameters in order. Run
    it with the service's own asyncpg connection: `conn.fetch(q.sql, *q.args(name=value))`."""

    sql: str
    params: tuple[str, ...]

    def args(self, **values: Any) -> list[Any]:
        missing = set(self.params) - values.keys()
        if missing:
            raise TypeError(f"no value for parameter(s) {sorted(missing)} of {self.sql!r}")
        return [values[name] for name in self.params]


def compiled(statement: "ClauseElement") -> Query:
    """Compiles `statement` (use `bindparam("name")` for each value) once, at import or per
    distinct shape: the statements run as plain asyncpg prepared statements, with no
    SQLAlchemy engine or session at run time."""
    from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
    from sqlalchemy.sql.compiler import SQLCompiler

    result = statement.compile(dialect=PGDialect_asyncpg())  # type: ignore[no-untyped-call]
    assert isinstance(result, SQLCompiler)
    params = tuple(result.positiontup or ())
    fixed = [name for name in params if result.binds[name].value is not None]
    if fixed:  # a literal() or a Python value in the statement: it would need passing
        raise ValueError(f"{fixed} of {result} hold values: name them with bindparam()")
    return Query(str(result), params)


async def schema_drift(dsn: str, metadata: "MetaData") -> list[str]:
    """How the database at `dsn` differs from a service's declared tables, as `alembic check`
    sees it (tables, columns, types, nullability, indexes, unique and foreign keys; not CHECK
    constraints or triggers): empty when the migrations produce exactly the tables declared.
    A table changed without its migration, or a migration without the table change, shows."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy.ext.asyncio import create_async_engine

    def compare(connection: Any) -> list[Any]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))

    engine = create_async_engine(sqlalchemy_url(dsn))
    try:
        async with engine.connect() as connection:
            diffs = await connection.run_sync(compare)
    finally:
        await engine.dispose()
    return [_describe(diff) for diff in diffs]


def _describe(diff: Any) -> str:
    """One line per difference: alembic gives tuples (or lists of them, per column)."""
    if isinstance(diff, list):
        return "; ".join(_describe(d) for d in diff)
    kind, *rest = diff
    parts = [getattr(x, "name", None) or str(x) for x in rest if x is not None and x != {}]
    return " ".join([kind, *parts])
