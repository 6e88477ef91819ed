"""The contract of inventory's repositories, run against the fakes (unit) and PostgreSQL
(integration): a subclass provides the `new_uow` fixture."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from cryptography.exceptions import InvalidTag

from services.inventory.domain.model import DecisionState, NewCode, OrderDecision, StockLevel
from services.inventory.service_layer.catalog import seal_codes
from services.inventory.service_layer.unit_of_work import UnitOfWork
from shared.contracts import ProductSnapshot
from shared.crypto import Binding, Code
from shared.settings import InventorySettings
from tests.helpers import unique

# The stack's key when the tests run against it, else the dev key.
VAULT = InventorySettings().code_vault()
NewUow = Callable[[], UnitOfWork]


def product(sku: str, **fields: object) -> ProductSnapshot:
    return ProductSnapshot.model_validate(
        {"sku": sku, "name": f"Card {sku}", "currency": "USD", "price": Decimal("9.75"), **fields}
    )


async def new_codes(
    uow: UnitOfWork, sku: str, count: int, prefix: str | None = None
) -> list[NewCode]:
    prefix = prefix or uuid.uuid4().hex
    codes = [Code(f"{prefix}-{i}", f"{i:04d}") for i in range(count)]
    return seal_codes(codes, sku, await uow.codes.new_ids(count), VAULT)


def waiting(sku: str, transaction_id: str | None = None) -> OrderDecision:
    return OrderDecision(
        transaction_id=transaction_id or unique("tx"),
        account_id=uuid.uuid4(),
        sku=sku,
        placed_at=datetime.now(UTC),
        reply_to=None,
        state=DecisionState.BACKORDERED,
    )


class RepositoryContract:
    @pytest.fixture
    def new_uow(self) -> NewUow:
        raise NotImplementedError

    async def stocked(self, new_uow: NewUow, count: int) -> str:
        sku = unique("SKU")
        async with new_uow() as uow:
            await uow.products.save(product(sku))
            assert await uow.codes.add(sku, await new_codes(uow, sku, count)) == count
            await uow.commit()
        return sku

    async def test_product_versions_count_saves(self, new_uow: NewUow) -> None:
        sku = unique("SKU")
        async with new_uow() as uow:
            first = await uow.products.save(product(sku, version=41))
            second = await uow.products.save(product(sku, name="Renamed", brand="Acme"))
            await uow.commit()
        assert (first.version, second.version) == (1, 2)
        async with new_uow() as uow:
            stored = await uow.products.get(sku)
        assert stored == product(sku, name="Renamed", brand="Acme", version=2)

    async def test_claim_pairs_oldest_codes_with_orders_in_order(self, new_uow: NewUow) -> None:
        sku = await self.stocked(new_uow, 2)
        a, b, c, d = (unique("tx") for _ in range(4))
        async with new_uow() as uow:
            claimed = await uow.codes.claim({sku: [a, b, c]})
            await uow.commit()
        assert set(claimed) == {a, b}
        assert claimed[a].stock_id < claimed[b].stock_id
        async with new_uow() as uow:
            assert await uow.codes.claim({sku: [d]}) == {}
            assert await uow.codes.sold_to([a, b, c]) == claimed
            assert await uow.codes.levels([sku]) == {sku: StockLevel(available=0, sold=2)}
        opened = VAULT.open(claimed[a].sealed, sku, claimed[a].stock_id)
        assert opened.pin_code is not None

    async def test_one_claim_serves_several_skus(self, new_uow: NewUow) -> None:
        one, two, empty = (
            await self.stocked(new_uow, 1),
            await self.stocked(new_uow, 3),
            await self.stocked(new_uow, 0),
        )
        orders = {one: [unique("tx") for _ in range(2)], two: [unique("tx") for _ in range(2)]}
        async with new_uow() as uow:
            claimed = await uow.codes.claim({**orders, empty: [unique("tx")]})
            await uow.commit()
        assert set(claimed) == {orders[one][0], *orders[two]}
        async with new_uow() as uow:
            assert await uow.codes.levels([one, two, empty]) == {
                one: StockLevel(0, 1),
                two: StockLevel(1, 2),
            }

    async def test_add_skips_codes_known_in_any_sku(self, new_uow: NewUow) -> None:
        sku, other, prefix = unique("SKU"), unique("SKU"), unique("dup")
        async with new_uow() as uow:
            await uow.products.save(product(sku))
            await uow.products.save(product(other))
            assert await uow.codes.add(sku, await new_codes(uow, sku, 2, prefix)) == 2
            # The same two redeem codes (sealed for the other SKU) and a new one.
            assert await uow.codes.add(other, await new_codes(uow, other, 3, prefix)) == 1
            await uow.commit()
        async with new_uow() as uow:
            assert await uow.codes.available(sku) == 2
            assert await uow.codes.levels([sku, other]) == {
                sku: StockLevel(2, 0),
                other: StockLevel(1, 0),
            }
            per_product = await uow.codes.available_per_product()
        assert (per_product[sku], per_product[other]) == (2, 1)

    async def test_decisions_and_waiting_backorders(self, new_uow: NewUow) -> None:
        sku, calm = unique("SKU"), unique("SKU")
        first, second = waiting(sku), waiting(sku)
        async with new_uow() as uow:
            await uow.decisions.add_all([first, second])
            await uow.commit()
        async with new_uow() as uow:
            assert await uow.decisions.skus_with_waiting_backorders([sku, calm]) == {sku}
            locked = await uow.decisions.get_for_update(first.transaction_id)
            assert locked == first
            locked.cancel()
            await uow.decisions.update(locked)
            await uow.commit()
        async with new_uow() as uow:
            got = await uow.decisions.get_many([first.transaction_id, "unknown"])
            assert list(got) == [first.transaction_id]
            assert got[first.transaction_id].state is DecisionState.CANCELLED
            assert await uow.decisions.skus_with_waiting_backorders([sku]) == {sku}
            assert await uow.decisions.get_for_update("unknown") is None

    async def test_a_decision_added_cancelled_keeps_its_reason(self, new_uow: NewUow) -> None:
        ended = waiting(unique("SKU"))
        ended.cancel("CANCELLED_BY_OPERATOR")
        async with new_uow() as uow:
            await uow.decisions.add_all([ended])
            await uow.commit()
        async with new_uow() as uow:
            assert (await uow.decisions.get_many([ended.transaction_id])) == {
                ended.transaction_id: ended
            }

    async def test_leaving_without_commit_rolls_back(self, new_uow: NewUow) -> None:
        sku = await self.stocked(new_uow, 1)
        async with new_uow() as uow:
            assert await uow.codes.claim({sku: [unique("tx")]})
            await uow.decisions.add_all([waiting(sku)])
        async with new_uow() as uow:
            assert await uow.codes.available(sku) == 1
            assert await uow.decisions.skus_with_waiting_backorders([sku]) == set()

    async def test_codes_are_stored_under_the_ids_taken_and_sealed_to_them(
        self, new_uow: NewUow
    ) -> None:
        sku = unique("SKU")
        redeem = [unique("C") for _ in range(3)]
        async with new_uow() as uow:
            await uow.products.save(product(sku))
            ids = await uow.codes.new_ids(3)
            later = await uow.codes.new_ids(1)
            codes = seal_codes([Code(r, None) for r in redeem], sku, ids, VAULT)
            assert await uow.codes.add(sku, codes[::-1]) == 3
            await uow.commit()
        assert ids == sorted(set(ids))
        assert later[0] > ids[-1]
        async with new_uow() as uow:
            claimed = await uow.codes.claim({sku: [unique("tx") for _ in ids]})
        sold = sorted(claimed.values(), key=lambda c: c.stock_id)
        assert [c.stock_id for c in sold] == ids  # oldest id first
        assert {c.sealed.binding for c in sold} == {Binding.STOCK_ITEM}
        assert [VAULT.open(c.sealed, sku, c.stock_id).redeem_code for c in sold] == redeem
        with pytest.raises(InvalidTag):
            VAULT.open(sold[1].sealed, sku, ids[0])
