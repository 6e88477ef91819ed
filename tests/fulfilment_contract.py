"""The contract of fulfilment's repositories, run against the fakes (unit) and PostgreSQL
(integration): a subclass provides the `new_uow` fixture, and may give `new_sku` a teardown.

Against PostgreSQL these tests share the database with the running fulfilment service: each
uses SKUs of its own, commits only backorders whose deadline and retry time are far off, and
keeps what that service would act on (overdue backorders, due supplier requests) in
transactions it never commits.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta

import pytest

from services.fulfilment.domain.model import Backorder, BackorderState, SkuKnowledge
from services.fulfilment.service_layer.unit_of_work import UnitOfWork
from tests.helpers import unique

NewUow = Callable[[], UnitOfWork]
NewSku = Callable[[], str]
# Larger than what the whole shared database holds: a query's answer is then filtered to the
# test's own SKUs.
EVERYTHING = 100_000


def backorder(
    sku: str, transaction_id: str | None = None, *, placed_s_ago: float = 0, due_in_s: float = 3600
) -> Backorder:
    now = datetime.now(UTC)
    return Backorder(
        transaction_id=transaction_id or unique("tx"),
        account_id=uuid.uuid4(),
        sku=sku,
        placed_at=now - timedelta(seconds=placed_s_ago),
        deadline_at=now + timedelta(seconds=due_in_s),
    )


def of(skus: Iterable[str], found: Iterable[Backorder]) -> list[Backorder]:
    """What a query found of the test's own SKUs."""
    wanted = set(skus)
    return [b for b in found if b.sku in wanted]


async def moved(uow: UnitOfWork, backorder: Backorder, to: BackorderState) -> Backorder:
    match to:
        case BackorderState.ALLOCATING:
            backorder.start_allocating()
        case BackorderState.CANCELLING:
            backorder.start_cancelling("PRODUCT_WITHDRAWN")
        case BackorderState.COMPLETED:
            backorder.complete()
        case BackorderState.CANCELLED:
            backorder.cancel("DEADLINE_PASSED")
    await uow.backorders.save([backorder])
    return backorder


class RepositoryContract:
    @pytest.fixture
    def new_uow(self) -> NewUow:
        raise NotImplementedError

    @pytest.fixture
    def new_sku(self) -> NewSku:
        return lambda: unique("SKU")

    async def test_a_new_sku_is_known_active_with_no_stock(
        self, new_uow: NewUow, new_sku: NewSku
    ) -> None:
        sku = new_sku()
        async with new_uow() as uow:
            assert await uow.skus.lock(sku) == SkuKnowledge(sku, True, None, 0, 0)
            await uow.commit()
        async with new_uow() as uow:
            assert await uow.skus.lock(sku) == SkuKnowledge(sku, True, None, 0, 0)

    async def test_only_a_newer_product_version_applies(
        self, new_uow: NewUow, new_sku: NewSku
    ) -> None:
        sku, seen_first = new_sku(), new_sku()
        async with new_uow() as uow:
            assert await uow.skus.apply_product(sku, False, 60, 2)
            assert not await uow.skus.apply_product(sku, True, None, 2)
            assert not await uow.skus.apply_product(sku, True, None, 1)
            await uow.skus.lock(seen_first)
            assert await uow.skus.apply_product(seen_first, True, 5, 1)
            await uow.commit()
        async with new_uow() as uow:
            assert await uow.skus.lock(sku) == SkuKnowledge(sku, False, 60, 2, 0)
            assert await uow.skus.lock(seen_first) == SkuKnowledge(seen_first, True, 5, 1, 0)

    async def test_the_stock_hint_never_goes_below_zero(
        self, new_uow: NewUow, new_sku: NewSku
    ) -> None:
        sku = new_sku()
        async with new_uow() as uow:
            await uow.skus.lock(sku)
            await uow.skus.set_stock_hint(sku, 2)
            await uow.skus.take_from_stock_hint(sku)
            assert (await uow.skus.lock(sku)).stock_hint == 1
            await uow.skus.take_from_stock_hint(sku)
            await uow.skus.take_from_stock_hint(sku)
            assert (await uow.skus.lock(sku)).stock_hint == 0
            await uow.skus.set_stock_hint(sku, -3)
            assert (await uow.skus.lock(sku)).stock_hint == 0
            await uow.skus.set_stock_hint(sku, 7)
            await uow.commit()
        async with new_uow() as uow:
            assert (await uow.skus.lock(sku)).stock_hint == 7

    async def test_a_backorder_is_added_once(self, new_uow: NewUow, new_sku: NewSku) -> None:
        sku = new_sku()
        first = backorder(sku)
        async with new_uow() as uow:
            assert await uow.backorders.add(first)
            assert not await uow.backorders.add(backorder(new_sku(), first.transaction_id))
            await uow.commit()
        async with new_uow() as uow:
            assert await uow.backorders.get_for_update(first.transaction_id) == first
            assert await uow.backorders.get_for_update(unique("tx")) is None
            assert await uow.backorders.get(first.transaction_id) == first
            assert await uow.backorders.get(unique("tx")) is None

    async def test_transitions_are_saved(self, new_uow: NewUow, new_sku: NewSku) -> None:
        sku = new_sku()
        done, cancelling, waiting = backorder(sku), backorder(sku), backorder(sku)
        async with new_uow() as uow:
            for b in (done, cancelling, waiting):
                await uow.backorders.add(b)
            await moved(uow, done, BackorderState.ALLOCATING)
            await moved(uow, done, BackorderState.COMPLETED)
            await moved(uow, cancelling, BackorderState.CANCELLING)
            await uow.commit()
        async with new_uow() as uow:
            assert await uow.backorders.get_for_update(done.transaction_id) == done
            stored = await uow.backorders.get_for_update(cancelling.transaction_id)
            assert stored == cancelling
            assert stored.cancel_reason == "PRODUCT_WITHDRAWN"
            counts = [await uow.backorders.count(sku, state) for state in BackorderState]
        assert counts == [1, 0, 1, 1, 0]  # WAITING, ALLOCATING, CANCELLING, COMPLETED, CANCELLED

    async def test_the_oldest_waiting_come_first(self, new_uow: NewUow, new_sku: NewSku) -> None:
        sku, other = new_sku(), new_sku()
        tie = unique("tx")
        newest = backorder(sku, placed_s_ago=1)
        tied_b = backorder(sku, f"{tie}-b", placed_s_ago=5)
        tied_a = dataclasses.replace(tied_b, transaction_id=f"{tie}-a")
        oldest = backorder(sku, placed_s_ago=9)
        taken = backorder(sku, placed_s_ago=20)
        async with new_uow() as uow:
            for b in (newest, tied_b, tied_a, oldest, taken, backorder(other, placed_s_ago=30)):
                await uow.backorders.add(b)
            await moved(uow, taken, BackorderState.ALLOCATING)
            await uow.commit()
        async with new_uow() as uow:
            assert await uow.backorders.oldest_waiting(sku, 2) == [oldest, tied_a]
            assert await uow.backorders.oldest_waiting(sku) == [oldest, tied_a, tied_b, newest]

    async def test_overdue_waiting_backorders_first_due_first(
        self, new_uow: NewUow, new_sku: NewSku
    ) -> None:
        sku = new_sku()
        late = backorder(sku, placed_s_ago=10, due_in_s=-5)
        later = backorder(sku, placed_s_ago=10, due_in_s=-1)
        asked = backorder(sku, placed_s_ago=10, due_in_s=-9)
        async with new_uow() as uow:  # never committed: the running service cancels overdue
            for b in (later, late, asked, backorder(sku)):
                await uow.backorders.add(b)
            await moved(uow, asked, BackorderState.CANCELLING)
            overdue = await uow.backorders.overdue(EVERYTHING)
        assert of([sku], overdue) == [late, later]

    async def test_the_next_deadline_is_the_first_of_a_waiting_backorder(
        self, new_uow: NewUow, new_sku: NewSku
    ) -> None:
        sku = new_sku()
        waiting, offered = backorder(sku, due_in_s=-5), backorder(sku, due_in_s=-1_000_000)
        async with new_uow() as uow:  # never committed: the running service cancels overdue
            for b in (waiting, offered):
                await uow.backorders.add(b)
            await moved(uow, offered, BackorderState.ALLOCATING)
            seconds = await uow.backorders.seconds_to_next_deadline()
        # the shared database may hold an earlier one, never one 11 days overdue
        assert seconds is not None
        assert -1_000_000 < seconds <= -5

    async def test_commands_in_flight_without_answer_are_taken_once_per_period(
        self, new_uow: NewUow, new_sku: NewSku
    ) -> None:
        sku = new_sku()
        allocating, cancelling, waiting = backorder(sku), backorder(sku), backorder(sku)
        async with new_uow() as uow:
            for b in (allocating, cancelling, waiting):
                await uow.backorders.add(b)
            await moved(uow, allocating, BackorderState.ALLOCATING)
            await moved(uow, cancelling, BackorderState.CANCELLING)
            await uow.commit()
        async with new_uow() as uow:
            assert of([sku], await uow.backorders.take_stale_in_flight(3600, EVERYTHING)) == []
            stale = of([sku], await uow.backorders.take_stale_in_flight(0, EVERYTHING))
            assert sorted(stale, key=lambda b: b.state) == [allocating, cancelling]
            # taken: not again in this period (the same instant, in this transaction)
            assert of([sku], await uow.backorders.take_stale_in_flight(0, EVERYTHING)) == []

    async def test_skus_waiting_with_none_offered_a_code(
        self, new_uow: NewUow, new_sku: NewSku
    ) -> None:
        unoffered, offering, empty = new_sku(), new_sku(), new_sku()
        offered = backorder(offering)
        async with new_uow() as uow:
            for b in (backorder(unoffered), backorder(unoffered), offered, backorder(offering)):
                await uow.backorders.add(b)
            await moved(uow, offered, BackorderState.ALLOCATING)
            await uow.skus.lock(empty)
            await uow.commit()
        async with new_uow() as uow:
            mine = {unoffered, offering, empty}
            assert not mine & set(await uow.backorders.skus_waiting_unoffered(3600, EVERYTHING))
            found = await uow.backorders.skus_waiting_unoffered(0, EVERYTHING)
        assert mine & set(found) == {unoffered}

    async def test_open_backorders_per_sku(self, new_uow: NewUow, new_sku: NewSku) -> None:
        sku, closed = new_sku(), new_sku()
        old, done = backorder(sku, placed_s_ago=40), backorder(closed)
        async with new_uow() as uow:
            for b in (backorder(sku), old, backorder(sku, placed_s_ago=3), done):
                await uow.backorders.add(b)
            await moved(uow, old, BackorderState.CANCELLING)
            await moved(uow, done, BackorderState.COMPLETED)
            await uow.commit()
        async with new_uow() as uow:
            per_sku = {o.sku: o for o in await uow.backorders.open_per_sku()}
        assert closed not in per_sku
        assert per_sku[sku].count == 3
        assert 40 <= per_sku[sku].oldest_age_s < 100

    async def test_listing_filters_and_orders(self, new_uow: NewUow, new_sku: NewSku) -> None:
        sku = new_sku()
        first, second, third = (backorder(sku, placed_s_ago=s) for s in (30, 20, 10))
        async with new_uow() as uow:
            for b in (third, first, second):
                await uow.backorders.add(b)
            await moved(uow, second, BackorderState.CANCELLING)
            await uow.commit()
        async with new_uow() as uow:
            assert await uow.backorders.listing(sku, None, 10) == [first, second, third]
            assert await uow.backorders.listing(sku, None, 2) == [first, second]
            waiting = await uow.backorders.listing(sku, BackorderState.WAITING, 10)
            assert waiting == [first, third]
            everywhere = await uow.backorders.listing(None, BackorderState.CANCELLING, 1000)
            assert second in everywhere
            assert {b.state for b in everywhere} == {BackorderState.CANCELLING}

    async def test_one_open_supplier_request_per_sku(
        self, new_uow: NewUow, new_sku: NewSku
    ) -> None:
        sku, later = new_sku(), new_sku()
        async with new_uow() as uow:  # never committed: the running service may deliver
            assert await uow.supplier_requests.open(sku, 10, 0)
            assert not await uow.supplier_requests.open(sku, 20, 0)
            assert await uow.supplier_requests.open(later, 30, 3600)
            due = await uow.supplier_requests.take_due(EVERYTHING)
            [taken] = [r for r in due if r.sku in {sku, later}]
            assert (taken.sku, taken.quantity) == (sku, 10)
            await uow.supplier_requests.mark_delivered(taken.id)
            assert sku not in {r.sku for r in await uow.supplier_requests.take_due(EVERYTHING)}
            assert await uow.supplier_requests.open(sku, 20, 0)

    async def test_the_next_due_supplier_request(self, new_uow: NewUow, new_sku: NewSku) -> None:
        sku = new_sku()
        async with new_uow() as uow:  # never committed: the running service may deliver
            assert await uow.supplier_requests.open(sku, 10, 0)
            seconds = await uow.supplier_requests.seconds_to_next_due()
        assert seconds is not None
        assert seconds <= 0

    async def test_leaving_without_commit_rolls_back(
        self, new_uow: NewUow, new_sku: NewSku
    ) -> None:
        sku = new_sku()
        kept = backorder(sku)
        async with new_uow() as uow:
            await uow.backorders.add(kept)
            await uow.commit()
        async with new_uow() as uow:
            await uow.backorders.add(backorder(sku))
            await uow.skus.lock(sku)
            await uow.skus.set_stock_hint(sku, 5)
            await moved(uow, kept, BackorderState.ALLOCATING)
        async with new_uow() as uow:
            assert await uow.backorders.listing(sku, None, 10) == [
                dataclasses.replace(kept, state=BackorderState.WAITING)
            ]
            assert (await uow.skus.lock(sku)).stock_hint == 0
