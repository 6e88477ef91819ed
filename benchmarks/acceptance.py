"""The api's acceptance of a lone instant order (OrderDesk._accept_batch: check the order
against its product and wallets, then pay for and record it in one statement) on the running
stack's api database, with the catalog cache (services/api/service_layer/catalog_cache.py)
and without it (a cache that reads every batch's products and wallets afresh, as acceptance
did before it), in alternating rounds in one process. Only the acceptance is timed, one order
at a time, 10 ms apart; the orders' requests are published to inventory after the rounds (in
stock, they complete), so that none is left for the api to ask about again later.

    .venv/bin/python benchmarks/acceptance.py --rounds 6 --orders 150
"""

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast
from uuid import UUID

import asyncpg

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from alternating import alternate, arguments, summary  # noqa: E402
from instant_orders import setup  # noqa: E402

from services.api.adapters.postgres import PostgresUnitOfWork  # noqa: E402
from services.api.domain.model import CreateInstantOrder  # noqa: E402
from services.api.service_layer import accounts  # noqa: E402
from services.api.service_layer.catalog_cache import CatalogCache, Found  # noqa: E402
from services.api.service_layer.fx import OperatorRates  # noqa: E402
from services.api.service_layer.orders import OrderDesk  # noqa: E402
from services.api.service_layer.unit_of_work import UnitOfWork  # noqa: E402
from shared.contracts import PlaceOrder  # noqa: E402
from shared.db import create_pool  # noqa: E402
from shared.producers import durable_producer  # noqa: E402
from shared.settings import ApiSettings  # noqa: E402
from shared.topics import INVENTORY_COMMANDS  # noqa: E402


class ReadsAfresh(CatalogCache):
    """Acceptance as it was before the cache: every batch reads its products and wallets."""

    async def look_up(
        self,
        uow: UnitOfWork,
        skus: Any,
        account_ids: Any,
        *,
        found: Found | None = None,
        afresh: bool = False,
    ) -> Found:
        return await super().look_up(uow, skus, account_ids, found=found, afresh=True)


class NotYetPublished:
    """The desk's publisher and reply path: nothing is sent while acceptance is timed."""

    topic = None  # the requests published afterwards ask for no reply
    partition = None

    async def send(self, topic: str, key: bytes, value: bytes) -> None:
        return None


async def complete(pool: asyncpg.Pool, commands: list[PlaceOrder]) -> None:
    """Publishes the accepted orders' requests, and waits until the api has them completed."""
    producer = durable_producer(ApiSettings().kafka_bootstrap_servers, "acceptance-benchmark")
    await producer.start()
    try:
        for command in commands:
            await producer.send(
                INVENTORY_COMMANDS.name, command.to_bytes(), key=command.sku.encode()
            )
        await producer.flush()
    finally:
        await producer.stop()
    ids = [c.transaction_id for c in commands]
    deadline = time.monotonic() + 120
    while True:
        done = await pool.fetchval(
            "SELECT count(*) FROM orders WHERE transaction_id = ANY($1::text[]) "
            "AND status = 'COMPLETED'",
            ids,
        )
        print(f"completed {done}/{len(ids)} of the benchmark's orders", file=sys.stderr)
        if done == len(ids):
            return
        if time.monotonic() > deadline:
            raise SystemExit("the benchmark's orders did not all complete within 120 s")
        await asyncio.sleep(1)


async def main() -> None:
    args, dsn = arguments(__doc__, "API_DATABASE_URL")
    # The product, through inventory's catalog, with a code for every order.
    sku, _ = await setup(codes=2 * args.rounds * args.orders, accounts=0)
    pool = await create_pool(dsn, 4)

    def new_uow() -> PostgresUnitOfWork:
        return PostgresUnitOfWork(pool)

    issued, _ = await accounts.create_account(
        new_uow(), "bench", [("USD", Decimal("10000000.00"))], ApiSettings().wallet_slots
    )
    account_id: UUID = issued.account_id
    desks = {
        name: OrderDesk(
            new_uow=new_uow,
            publisher=NotYetPublished(),
            replies=cast(Any, NotYetPublished()),
            health=cast(Any, SimpleNamespace(accepting=True, failed=lambda: None)),
            decision_window_s=0.5,
            rates=OperatorRates(new_uow),
            catalog=cache,
        )
        for name, cache in (("remembered", CatalogCache()), ("read afresh", ReadsAfresh()))
    }
    order = CreateInstantOrder(account_id, sku, None, False, None)
    commands: list[PlaceOrder] = []

    def accept_with(desk: OrderDesk) -> Callable[[], Awaitable[None]]:
        async def accept() -> None:
            [accepted] = await desk._accept_batch([order])
            if not isinstance(accepted, tuple):
                raise SystemExit(f"the order was not accepted: {accepted!r}")
            commands.append(accepted[1])

        return accept

    medians = await alternate(
        {name: accept_with(desk) for name, desk in desks.items()}, args.rounds, args.orders
    )
    await complete(pool, commands)
    await pool.close()
    print(summary("products and wallets", medians))


if __name__ == "__main__":
    asyncio.run(main())
