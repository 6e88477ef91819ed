"""Inventory's metrics follow what each transaction committed, and nothing else."""

from collections.abc import Sequence

import pytest
from prometheus_client import REGISTRY

from services.inventory import metrics
from services.inventory.service_layer import catalog
from services.inventory.service_layer.decisions import handle_commands
from shared.contracts import Message
from shared.crypto import Code
from tests.helpers import unique
from tests.inventory_contract import VAULT
from tests.inventory_fakes import FakeStore, FakeUnitOfWork
from tests.unit.test_inventory_handlers import allocate, create_product, place


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_claims_backorders_and_stock_levels_are_counted_after_commit() -> None:
    store, sku = FakeStore(), unique("SKU")
    await create_product(store, sku)

    def uow() -> FakeUnitOfWork:
        return FakeUnitOfWork(store, on_commit=metrics.observe_committed)

    reserved = sample("inventory_code_claims_total", outcome="reserved")
    allocated = sample("inventory_code_claims_total", outcome="allocated")
    backorders = sample("inventory_backorders_created_total")

    await catalog.add_stock(sku, [Code("A", None), Code("B", None)], uow(), VAULT)
    assert sample("inventory_codes_available", sku=sku) == 2
    await handle_commands([place("t1", sku), place("t2", sku), place("t3", sku)], uow())
    await catalog.add_stock(sku, [Code("C", None)], uow(), VAULT)
    await handle_commands([allocate("t3", sku)], uow())

    assert sample("inventory_code_claims_total", outcome="reserved") == reserved + 2
    assert sample("inventory_code_claims_total", outcome="allocated") == allocated + 1
    assert sample("inventory_backorders_created_total") == backorders + 1
    assert sample("inventory_codes_available", sku=sku) == 0


class CommitFails(FakeUnitOfWork):
    async def _commit(self, events: Sequence[tuple[str, str, Message]]) -> None:
        raise ConnectionResetError("the database went away during COMMIT")


async def test_a_decision_that_did_not_commit_counts_nothing() -> None:
    store, sku = FakeStore(), unique("SKU")
    await create_product(store, sku)
    before = sample("inventory_backorders_created_total")
    with pytest.raises(ConnectionResetError):
        await handle_commands(
            [place("t1", sku)], CommitFails(store, on_commit=metrics.observe_committed)
        )
    assert sample("inventory_backorders_created_total") == before
