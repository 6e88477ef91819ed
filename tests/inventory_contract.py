"""The contract of inventory's repositories, run against the fakes (unit) and PostgreSQL
(integration): a subclass provides the `new_uow` and `stock_the_old_way` fixtures."""

from __future__ import annotations

import base64
import logging
import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Protocol

import pytest
from cryptography.exceptions import InvalidTag

from services.inventory.domain.model import (
    CodeStatus,
    DecisionState,
    NewCode,
    OrderDecision,
    StockLevel,
    reserve_or_backorder,
)
from services.inventory.service_layer import catalog
from services.inventory.service_layer.catalog import seal_codes
from services.inventory.service_layer.decisions import handle_commands
from services.inventory.service_layer.unit_of_work import UnitOfWork
from shared.contracts import DeliverStock, ProductSnapshot
from shared.crypto import Binding, Code, CodeVault, SealedCode
from shared.settings import InventorySettings
from tests.helpers import fullwidth, place_order, unique

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


@dataclass(frozen=True)
class OldCode:
    """A code as inventory stocked it before migrations 0005-0006: fingerprint version 1,
    sealed to its SKU only (`CodeVault.seal_to_sku` seals exactly as `seal(code, aad=sku)`
    did)."""

    redeem_code: str
    sold_to: str | None = None
    sealed: SealedCode | None = None
    """Its ciphertext if not VAULT's seal of it (one that does not open, say)."""

    def sealed_to(self, sku: str) -> SealedCode:
        return self.sealed or VAULT.seal_to_sku(Code(self.redeem_code, "0042"), sku)


@dataclass(frozen=True)
class Row:
    """A row of the codes table, as a test reads it."""

    stock_id: int
    status: CodeStatus
    sealed: SealedCode
    fingerprint_version: int
    has_fingerprint: bool


class StockRoom(Protocol):
    """What tests do to the stock behind the repositories' back."""

    async def stock_the_old_way(self, sku: str, codes: Sequence[OldCode]) -> list[int]:
        """Stocks the codes in an existing SKU; returns their stock ids."""
        ...

    async def rows(self, stock_ids: Sequence[int]) -> dict[int, Row]: ...


def waiting(sku: str, transaction_id: str | None = None) -> OrderDecision:
    return OrderDecision(
        transaction_id=transaction_id or unique("tx"),
        account_id=uuid.uuid4(),
        sku=sku,
        placed_at=datetime.now(UTC),
        reply_to=None,
        state=DecisionState.BACKORDERED,
    )


async def products(new_uow: NewUow, count: int) -> list[str]:
    skus = [unique("SKU") for _ in range(count)]
    for sku in skus:
        await catalog.put_product(product(sku), new_uow(), VAULT)
    return skus


class RepositoryContract:
    @pytest.fixture
    def new_uow(self) -> NewUow:
        raise NotImplementedError

    @pytest.fixture
    def stock_room(self) -> StockRoom:
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

    async def test_decide_orders_serves_new_orders_and_finds_decided_ones(
        self, new_uow: NewUow
    ) -> None:
        """One step for a batch: known decisions (with the code of a served one) come back
        as they are; new orders get the oldest codes in the order given, the orders of a SKU
        whose backorders wait get none, and a SKU's last orders none when it runs out; each
        new order's decision (model.reserve_or_backorder) is stored, exactly as returned."""
        sku, queued = await self.stocked(new_uow, 2), await self.stocked(new_uow, 1)
        served, backordered = unique("tx"), waiting(queued)
        async with new_uow() as uow:
            first = await uow.codes.claim({sku: [served]})
            decided = OrderDecision(
                transaction_id=served,
                account_id=uuid.uuid4(),
                sku=sku,
                placed_at=datetime.now(UTC),
                reply_to="orders.replies",
                state=DecisionState.RESERVED,
                stock_id=first[served].stock_id,
            )
            await uow.decisions.add_all([decided, backordered])
            await uow.commit()
        a, b, c = unique("tx"), unique("tx"), unique("tx")
        batch = [
            place_order(a, sku).model_copy(update={"reply_to": "orders.replies.1"}),
            place_order(served, sku),
            place_order(c, queued),
            place_order(backordered.transaction_id, queued),
            place_order(b, sku),
        ]
        async with new_uow() as uow:
            outcome = await uow.decide_orders(batch)
            await uow.commit()
        assert outcome.known == {served: decided, backordered.transaction_id: backordered}
        assert set(outcome.codes) == {served, a}  # b: the SKU ran out; c: queued behind
        assert outcome.codes[served] == first[served]
        assert outcome.codes[a].stock_id > first[served].stock_id
        orders = {o.transaction_id: o for o in batch}
        assert outcome.new == [
            reserve_or_backorder(orders[tx], outcome.codes.get(tx)) for tx in (a, c, b)
        ]
        assert [(d.state, d.reply_to) for d in outcome.new] == [
            (DecisionState.RESERVED, "orders.replies.1"),
            (DecisionState.BACKORDERED, None),
            (DecisionState.BACKORDERED, None),
        ]
        async with new_uow() as uow:
            assert await uow.codes.sold_to([a, b, c]) == {a: outcome.codes[a]}
            assert await uow.codes.available(queued) == 1
            stored = await uow.decisions.get_many([a, b, c, served])
            assert stored == {d.transaction_id: d for d in [*outcome.new, decided]}
            assert (await uow.decide_orders([])).known == {}

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

    async def test_codes_stocked_the_old_way_get_new_fingerprints_and_seals(
        self, new_uow: NewUow, stock_room: StockRoom
    ) -> None:
        sku, other, prefix = unique("SKU"), unique("SKU"), unique("OLD")
        for each in (sku, other):
            await catalog.put_product(product(each), new_uow(), VAULT)
        available, sold = await stock_room.stock_the_old_way(
            sku, [OldCode(f"{prefix}-A"), OldCode(f"{prefix}-B", sold_to=unique("tx"))]
        )
        async with new_uow() as uow:
            assert await uow.codes.any_old_fingerprints()
        with pytest.raises(catalog.RefingerprintPending):
            await catalog.add_stock(other, [Code(unique("NEW"), None)], new_uow(), VAULT)

        await catalog.refingerprint_stock(new_uow, VAULT)

        async with new_uow() as uow:
            assert not await uow.codes.any_old_fingerprints()
        rows = await stock_room.rows([available, sold])
        assert [(r.fingerprint_version, r.has_fingerprint) for r in rows.values()] == [
            (2, True),
            (2, True),
        ]
        # The code still for sale is sealed again to its row; the one sold keeps its seal
        # (the api holds its copy of it).
        assert rows[available].sealed.binding is Binding.STOCK_ITEM
        assert VAULT.open(rows[available].sealed, sku, available).redeem_code == f"{prefix}-A"
        assert rows[sold].sealed.binding is Binding.SKU
        assert VAULT.open(rows[sold].sealed, sku, None).redeem_code == f"{prefix}-B"
        # Their duplicates are found now, in any SKU, in any form.
        stocked = await catalog.add_stock(
            other,
            [
                Code(f"{prefix}-a".lower(), None),
                Code(prefix + fullwidth("-B"), "1"),
                Code(unique("N"), None),
            ],
            new_uow(),
            VAULT,
        )
        assert (stocked.added, stocked.skipped) == (1, 2)
        # Nothing is left to do: running it again changes nothing.
        assert (await catalog.refingerprint_stock(new_uow, VAULT)).refingerprinted == 0

    @pytest.mark.parametrize("batch", [1, 100])
    async def test_a_code_stocked_twice_the_old_way_is_set_aside(
        self, new_uow: NewUow, stock_room: StockRoom, batch: int
    ) -> None:
        sku, p = unique("SKU"), unique("TWICE")
        await catalog.put_product(product(sku), new_uow(), VAULT)
        ids = await stock_room.stock_the_old_way(
            sku,
            [
                OldCode(f"{p}-X"),
                OldCode(f"{p}-x"),  # the same code, stocked later: set aside
                OldCode(f"{p}-Y"),  # set aside: the later one was sold
                OldCode(f"{p}-y", sold_to=unique("tx")),
                OldCode(f"{p}-Z", sold_to=unique("tx")),  # sold twice already: reported
                OldCode(f"{p}-z\u200b", sold_to=unique("tx")),
                OldCode(f"{p}-W"),
            ],
        )
        x, x_again, y, y_sold, z, z_again, w = ids

        done = await catalog.refingerprint_stock(new_uow, VAULT, batch=batch)

        assert {x_again, y, z_again} <= set(done.duplicates)
        assert (z, z_again) in done.sold_twice
        rows = await stock_room.rows(ids)
        assert {i: (r.status, r.has_fingerprint) for i, r in rows.items()} == {
            x: (CodeStatus.AVAILABLE, True),
            x_again: (CodeStatus.DUPLICATE, False),
            y: (CodeStatus.DUPLICATE, False),
            y_sold: (CodeStatus.SOLD, True),
            z: (CodeStatus.SOLD, True),
            z_again: (CodeStatus.SOLD, False),
            w: (CodeStatus.AVAILABLE, True),
        }
        assert {r.fingerprint_version for r in rows.values()} == {2}
        async with new_uow() as uow:
            assert await uow.codes.levels([sku]) == {sku: StockLevel(available=2, sold=3)}
            claimed = await uow.codes.claim({sku: [unique("tx") for _ in range(3)]})
            await uow.commit()
        assert sorted(c.stock_id for c in claimed.values()) == [x, w]
        again = await catalog.add_stock(sku, [Code(f"{p}-X", None)], new_uow(), VAULT)
        assert (again.added, again.skipped) == (0, 1)

    async def test_codes_with_old_fingerprints_are_not_sold_before_their_duplicates_are_found(
        self, new_uow: NewUow, stock_room: StockRoom
    ) -> None:
        # Review finding 2: GIFT-ABCD in one SKU and gift-abcd in another, both version 1.
        sku_a, sku_b, p = *await products(new_uow, 2), unique("GIFT")
        [upper] = await stock_room.stock_the_old_way(sku_a, [OldCode(p.upper())])
        [lower] = await stock_room.stock_the_old_way(sku_b, [OldCode(p.lower())])
        async with new_uow() as uow:
            assert await uow.codes.claim({sku_a: [unique("tx")], sku_b: [unique("tx")]}) == {}
            assert await uow.codes.available(sku_a) == 0
            assert await uow.codes.levels([sku_a, sku_b]) == {
                sku_a: StockLevel(available=0, sold=0),
                sku_b: StockLevel(available=0, sold=0),
            }
            assert (await uow.codes.available_per_product())[sku_b] == 0

        await catalog.refingerprint_stock(new_uow, VAULT, batch=1)

        rows = await stock_room.rows([upper, lower])
        assert [rows[upper].status, rows[lower].status] == [
            CodeStatus.AVAILABLE,
            CodeStatus.DUPLICATE,
        ]
        async with new_uow() as uow:
            per_product = await uow.codes.available_per_product()
            assert (per_product[sku_a], per_product[sku_b]) == (1, 0)
            claimed = await uow.codes.claim({sku_a: [unique("tx")], sku_b: [unique("tx")]})
            assert (await uow.codes.available_per_product())[sku_a] == 0  # sold
        assert [c.stock_id for c in claimed.values()] == [upper]

    async def test_sold_codes_are_refingerprinted_before_codes_for_sale(
        self, new_uow: NewUow, stock_room: StockRoom
    ) -> None:
        sku_a, sku_b, p = *await products(new_uow, 2), unique("GIFT")
        [for_sale] = await stock_room.stock_the_old_way(sku_a, [OldCode(p.upper())])
        [sold] = await stock_room.stock_the_old_way(
            sku_b, [OldCode(p.lower(), sold_to=unique("tx"))]
        )
        async with new_uow() as uow:
            assert await uow.codes.skus_with_old_fingerprints(1) == {sku_b}
            first = await uow.codes.with_old_fingerprints([sku_a, sku_b], 2)
        assert [c.stock_id for c in first] == [sold, for_sale]

        await catalog.refingerprint_stock(new_uow, VAULT, batch=1)

        rows = await stock_room.rows([for_sale, sold])
        assert (rows[sold].status, rows[sold].has_fingerprint) == (CodeStatus.SOLD, True)
        assert rows[for_sale].status is CodeStatus.DUPLICATE

    async def test_a_damaged_code_is_set_aside_and_the_window_ends(
        self, new_uow: NewUow, stock_room: StockRoom, caplog: pytest.LogCaptureFixture
    ) -> None:
        # Review finding 1: a ciphertext that does not open cannot hold the window open.
        sku, p = unique("SKU"), unique("OPEN")
        await catalog.put_product(product(sku), new_uow(), VAULT)
        good = VAULT.seal_to_sku(Code(f"{p}-D", None), sku)
        damaged = SealedCode(good.key_id, good.blob[:-1] + bytes([good.blob[-1] ^ 1]), good.binding)
        ids = await stock_room.stock_the_old_way(
            sku, [OldCode(f"{p}-B", sealed=damaged), OldCode(f"{p}-E")]
        )
        broken, fine = ids

        with caplog.at_level(logging.INFO):
            done = await catalog.refingerprint_stock(new_uow, VAULT)

        assert broken in set(done.unreadable)
        rows = await stock_room.rows(ids)
        assert {i: (r.status, r.fingerprint_version) for i, r in rows.items()} == {
            broken: (CodeStatus.UNREADABLE, 2),
            fine: (CodeStatus.AVAILABLE, 2),
        }
        async with new_uow() as uow:
            assert not await uow.codes.any_old_fingerprints()
            claimed = await uow.codes.claim({sku: [unique("tx") for _ in range(2)]})
        assert [c.stock_id for c in claimed.values()] == [fine]
        assert f"stock id {broken} " in caplog.text
        assert p not in caplog.text

    async def test_a_code_sealed_with_a_missing_key_stops_re_fingerprinting_closed(
        self, new_uow: NewUow, stock_room: StockRoom
    ) -> None:
        # Second review: a SOLD code whose key is gone has no fingerprint to clash with, so
        # putting any old code on sale could sell its duplicate again. Nothing is touched.
        sku, p = unique("SKU"), unique("KEY")
        await catalog.put_product(product(sku), new_uow(), VAULT)
        gone = CodeVault(f"gone-{uuid.uuid4().hex[:8]}:{base64.b64encode(os.urandom(32)).decode()}")
        ids = await stock_room.stock_the_old_way(
            sku,
            [
                OldCode(
                    f"{p}-C", sold_to=unique("tx"), sealed=gone.seal_to_sku(Code("C", None), sku)
                ),
                OldCode(f"{p}-c"),  # the same code in another case, for sale
            ],
        )
        with pytest.raises(catalog.RefingerprintKeysMissing, match=gone.key_ids.pop()):
            await catalog.refingerprint_stock(new_uow, VAULT)
        rows = await stock_room.rows(ids)
        assert {r.fingerprint_version for r in rows.values()} == {1}
        async with new_uow() as uow:
            assert await uow.codes.any_old_fingerprints()
            assert await uow.codes.claim({sku: [unique("tx")]}) == {}  # nothing on sale

    async def test_a_sold_code_that_does_not_open_stops_re_fingerprinting_closed(
        self, new_uow: NewUow, stock_room: StockRoom, caplog: pytest.LogCaptureFixture
    ) -> None:
        # Third review: a SOLD code whose ciphertext is damaged would lose its fingerprint,
        # and a copy of it could be stocked and sold again. Nothing is touched.
        sku, p = unique("SKU"), unique("DMG")
        await catalog.put_product(product(sku), new_uow(), VAULT)
        good = VAULT.seal_to_sku(Code(f"{p}-S", None), sku)
        damaged = SealedCode(good.key_id, good.blob[:-1] + bytes([good.blob[-1] ^ 1]), good.binding)
        ids = await stock_room.stock_the_old_way(
            sku, [OldCode(f"{p}-S", sold_to=unique("tx"), sealed=damaged), OldCode(f"{p}-s")]
        )
        with (
            caplog.at_level(logging.INFO),
            pytest.raises(catalog.RefingerprintSoldCodeUnreadable, match=f"stock id {ids[0]} "),
        ):
            await catalog.refingerprint_stock(new_uow, VAULT)
        rows = await stock_room.rows(ids)
        assert {i: (r.status, r.fingerprint_version) for i, r in rows.items()} == {
            ids[0]: (CodeStatus.SOLD, 1),
            ids[1]: (CodeStatus.AVAILABLE, 1),
        }
        async with new_uow() as uow:
            assert await uow.codes.claim({sku: [unique("tx")]}) == {}  # nothing on sale
        assert p not in caplog.text

    async def test_many_codes_that_do_not_open_set_none_aside(
        self, new_uow: NewUow, stock_room: StockRoom
    ) -> None:
        # Third review: a wrong key under a known key id makes every code of it fail to open;
        # setting them all aside would take the stock off sale for good. Nothing is touched.
        sku, p = unique("SKU"), unique("BURST")
        await catalog.put_product(product(sku), new_uow(), VAULT)
        wrong = CodeVault(
            f"{VAULT.key_ids.copy().pop()}:{base64.b64encode(os.urandom(32)).decode()}"
        )
        n = catalog.REFINGERPRINT_UNREADABLE_MAX + 1
        ids = await stock_room.stock_the_old_way(
            sku,
            [
                OldCode(f"{p}-{i}", sealed=wrong.seal_to_sku(Code(f"{p}-{i}", None), sku))
                for i in range(n)
            ],
        )
        with pytest.raises(catalog.RefingerprintUnreadableBurst):
            await catalog.refingerprint_stock(new_uow, VAULT)
        rows = await stock_room.rows(ids)
        assert {(r.status, r.fingerprint_version) for r in rows.values()} == {
            (CodeStatus.AVAILABLE, 1)
        }

    async def test_a_delivery_waits_in_the_batch_while_old_fingerprints_are_left(
        self, new_uow: NewUow, stock_room: StockRoom
    ) -> None:
        # Review finding 1: the batch is decided, the delivery parked, then stocked.
        sku, p = unique("SKU"), unique("WAIT")
        await catalog.put_product(product(sku), new_uow(), VAULT)
        [old] = await stock_room.stock_the_old_way(sku, [OldCode(f"{p}-OLD")])
        tx = unique("tx")
        delivery = DeliverStock(
            delivery_id=unique("delivery"),
            sku=sku,
            sealed_codes=[
                VAULT.seal_to_sku(Code(c, None), sku).to_wire() for c in (f"{p}-old", f"{p}-NEW")
            ],
        )
        order = place_order(tx, sku, "9.75")

        await handle_commands([delivery, order], new_uow(), VAULT)
        await handle_commands([delivery], new_uow(), VAULT)  # redelivered: waits once

        async with new_uow() as uow:
            decided = await uow.decisions.get_many([tx])
            assert decided[tx].state is DecisionState.BACKORDERED  # the old code is not sold
            assert await uow.deliveries.oldest() == delivery
            assert await uow.codes.levels([sku]) == {sku: StockLevel(available=0, sold=0)}

        await catalog.refingerprint_stock(new_uow, VAULT)

        async with new_uow() as uow:
            assert await uow.deliveries.oldest() is None
            assert await uow.codes.available(sku) == 2  # OLD, and NEW; "old" is OLD
        assert (await stock_room.rows([old]))[old].status is CodeStatus.AVAILABLE

    async def test_only_one_transaction_at_a_time_runs_re_fingerprinting(
        self, new_uow: NewUow, stock_room: StockRoom
    ) -> None:
        # Review finding 7: the other processes' passes skip their turn.
        sku = unique("SKU")
        await catalog.put_product(product(sku), new_uow(), VAULT)
        [old] = await stock_room.stock_the_old_way(sku, [OldCode(unique("ALONE"))])
        async with new_uow() as running:
            assert await running.run_alone(catalog.REFINGERPRINT_TASK)
            done = await catalog.refingerprint_stock(new_uow, VAULT)
            assert (done.busy, done.refingerprinted) == (True, 0)
            assert (await stock_room.rows([old]))[old].fingerprint_version == 1
        assert not (await catalog.refingerprint_stock(new_uow, VAULT)).busy
        assert (await stock_room.rows([old]))[old].fingerprint_version == 2
