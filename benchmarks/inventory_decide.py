"""Inventory's decision on a lone PlaceOrder (decisions.handle_commands: BEGIN, the SKU locks,
the claim, the outbox, COMMIT) on the running stack's inventory database, with the new
order's decision stored by the claim statement itself (DECIDE_ORDERS) and, as before, by an
insert of its own after it, in alternating rounds in one process, one order every 10 ms.

The product is made and stocked through inventory's admin API; the orders are decided as
inventory.commands would have them (no api order stands behind them: the api ignores their
events, as those of inventory_decisions.py).

    .venv/bin/python benchmarks/inventory_decide.py --rounds 6 --orders 150
"""

import asyncio
import sys
import uuid
from collections.abc import Awaitable, Callable, Sequence
from decimal import Decimal
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from alternating import alternate, arguments, summary  # noqa: E402
from inventory_decisions import stock_products  # noqa: E402

from services.inventory.adapters import postgres  # noqa: E402
from services.inventory.adapters.postgres import PostgresUnitOfWork  # noqa: E402
from services.inventory.service_layer.decisions import handle_commands  # noqa: E402
from services.inventory.service_layer.unit_of_work import Decided  # noqa: E402
from shared.contracts import PlaceOrder, new_transaction_id, utcnow  # noqa: E402
from shared.db import create_pool  # noqa: E402

# The claim statement without its decisions' CTE: the look-up and claim as they were.
_STATEMENT = postgres.DECIDE_ORDERS
_START = _STATEMENT.index("), decided AS (")
_END = _STATEMENT.index("\n)\nSELECT known.transaction_id")
LOOK_UP_AND_CLAIM = _STATEMENT[:_START] + ")" + _STATEMENT[_END + 2 :]


class InsertOfItsOwn(PostgresUnitOfWork):
    """The decisions stored by a statement of their own after the claim (before 230ffe7)."""

    DECIDE_STATEMENT = LOOK_UP_AND_CLAIM

    async def decide_orders(self, orders: Sequence[PlaceOrder]) -> Decided:
        decided = await super().decide_orders(orders)
        if decided.new:
            await self.decisions.add_all(decided.new)
        return decided


async def main() -> None:
    args, dsn = arguments(__doc__, "INVENTORY_DATABASE_URL")
    sku = f"BENCH-{uuid.uuid4().hex[:8]}"
    await stock_products([sku], 2 * args.rounds * args.orders + 10)
    pool = await create_pool(dsn, 4)
    variants = {
        "in the claim statement": PostgresUnitOfWork,
        "an insert of its own (as before)": InsertOfItsOwn,
    }
    account = uuid.uuid4()

    def decide_with(uow_class: type[PostgresUnitOfWork]) -> Callable[[], Awaitable[None]]:
        async def decide() -> None:
            order = PlaceOrder(
                transaction_id=new_transaction_id(),
                account_id=account,
                sku=sku,
                unit_price=Decimal("1.00"),
                currency="USD",
                placed_at=utcnow(),
            )
            await handle_commands([order], uow_class(pool))

        return decide

    medians = await alternate(
        {name: decide_with(uow_class) for name, uow_class in variants.items()},
        args.rounds,
        args.orders,
    )
    await pool.close()
    print(summary("the new order's decision", medians))


if __name__ == "__main__":
    asyncio.run(main())
