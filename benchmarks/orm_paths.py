"""What SQLModel's ORM session would cost on the api's paths, against the asyncpg statements
the services run (built from the same SQLModel tables, compiled once). Both sides talk to the
same api database, one call at a time, alternating in rounds so that the machine's noise hits
both alike; client CPU per call is this process's CPU time (`time.process_time`).

    .venv/bin/python benchmarks/orm_paths.py --count 2000 --rounds 3

Measured: reading one order by id and account (Get Order), and changing one order's status
under a lock and rolling back (the shape of recording a reservation, one order at a time).
Nothing is committed.
"""

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
from sqlalchemy.ext.asyncio import create_async_engine
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.api.adapters import postgres as repository
from services.api.adapters.tables import Order
from shared.db import sqlalchemy_url

Call = Callable[[], Awaitable[object]]


async def measure(call: Call, count: int) -> tuple[float, float]:
    """(wall ms per call at the median, client CPU ms per call on average)."""
    walls = []
    cpu_before = time.process_time()
    for _ in range(count):
        began = time.perf_counter()
        await call()
        walls.append(time.perf_counter() - began)
    cpu = (time.process_time() - cpu_before) / count
    return statistics.median(walls) * 1000, cpu * 1000


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    dsn = os.environ.get("API_DATABASE_URL", "postgresql://api:api@127.0.0.1:5432/api")

    conn = await asyncpg.connect(dsn)
    row = await conn.fetchrow("SELECT transaction_id, account_id FROM orders LIMIT 1")
    if row is None:
        sys.exit("The api database has no order: place one first (`make up` seeds a demo).")
    tid, account = row["transaction_id"], row["account_id"]
    engine = create_async_engine(sqlalchemy_url(dsn), pool_size=1)
    session = AsyncSession(engine, expire_on_commit=False)
    read = repository._ORDER_OF_ACCOUNT

    async def asyncpg_read() -> object:
        return await conn.fetchrow(read.sql, *read.args(transaction_id=tid, account_id=account))

    async def orm_read() -> object:
        result = await session.exec(
            select(Order).where(col(Order.transaction_id) == tid, col(Order.account_id) == account)
        )
        order = result.first()
        await session.rollback()  # end the implicit transaction, as a request would
        return order

    async def asyncpg_update_rolled_back() -> object:
        tr = conn.transaction()
        await tr.start()
        await conn.execute("UPDATE orders SET updated_at = now() WHERE transaction_id = $1", tid)
        await tr.rollback()
        return None

    async def orm_update_rolled_back() -> object:
        result = await session.exec(
            select(Order).where(col(Order.transaction_id) == tid).with_for_update()
        )
        order = result.one()
        order.updated_at = datetime.now(UTC)  # a real change: the flush sends an UPDATE
        session.add(order)
        await session.flush()
        await session.rollback()
        return None

    variants: list[tuple[str, Call]] = [
        ("Get Order: asyncpg, statement compiled from the table", asyncpg_read),
        ("Get Order: SQLModel AsyncSession", orm_read),
        ("status change: asyncpg, one UPDATE in a transaction", asyncpg_update_rolled_back),
        ("status change: SQLModel session (SELECT FOR UPDATE, flush)", orm_update_rolled_back),
    ]
    for _, call in variants:  # warm up: prepared statements, the ORM's compiled cache
        await measure(call, 50)
    print("| round | path | wall p50 ms | client CPU ms/call |")
    print("|---|---|---|---|")
    for n in range(1, args.rounds + 1):
        for name, call in variants:
            wall, cpu = await measure(call, args.count)
            print(f"| {n} | {name} | {wall:.3f} | {cpu:.3f} |", flush=True)
    await session.close()
    await engine.dispose()
    await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
