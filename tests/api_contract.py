"""The contract of the api's repositories, run against the fakes (unit) and PostgreSQL
(integration): a subclass provides the `new_uow` fixture. Every test makes its own accounts,
SKUs and orders, so it shares the database with the running stack."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from services.api.domain.model import OperatorCredit, Order, Product
from services.api.service_layer.orders import accepted_event, order_event
from services.api.service_layer.unit_of_work import ProductChanged, UnitOfWork
from shared.audit import AdminAction
from shared.contracts import ProductSnapshot
from tests.helpers import unique

NewUow = Callable[[], UnitOfWork]
SLOTS = 4


def events(*orders: Order) -> list[bytes]:
    """Their OrderAccepted events: real ones, since the running relay publishes what these
    tests commit to the public orders.events topic."""
    return [accepted_event(order).to_bytes() for order in orders]


def completed_event(order: Order, stock: int) -> bytes:
    return order_event("OrderCompleted", order.complete(stock, "x")).to_bytes()


def product_record(sku: str, price: str = "9.75", **fields: Any) -> dict[str, Any]:
    """A product as the catalog publishes it: every field a snapshot has (these rows are
    real products of the api's database, which Get Products then shows to every account)."""
    snapshot = ProductSnapshot(sku=sku, name=f"Card {sku}", currency="USD", price=Decimal(price))
    return {
        **snapshot.model_dump(mode="json", by_alias=True, exclude={"version"}),
        **fields,
    }


def new_order(account_id: uuid.UUID, sku: str, total: str = "1.00", number: str = "") -> Order:
    return Order(
        transaction_id=unique("tx"),
        account_id=account_id,
        client_order_number=number,
        sku=sku,
        quantity=1,
        unit_price=Decimal(total),
        currency="USD",
        grand_total=Decimal(total),
        status="PROCESSING",
        created_at=datetime.now(UTC),
    )


def stock_id() -> int:
    return uuid.uuid4().int % 2**62


class RepositoryContract:
    @pytest.fixture
    def new_uow(self) -> NewUow:
        raise NotImplementedError

    async def account(self, new_uow: NewUow, usd: str | None = None) -> uuid.UUID:
        async with new_uow() as uow, uow.transaction():
            account_id = await uow.accounts.add(unique("name"), None)
            if usd is not None:
                await uow.wallets.credit(account_id, "USD", Decimal(usd), SLOTS)
            await uow.commit()
        return account_id

    async def accepted(self, new_uow: NewUow, account_id: uuid.UUID) -> Order:
        order = new_order(account_id, unique("SKU"))
        async with new_uow() as uow:
            assert await uow.orders.pay_and_record([order], events(order)) == {order.transaction_id}
        return order

    async def test_accounts_and_their_live_credentials(self, new_uow: NewUow) -> None:
        key, token = uuid.uuid4().bytes * 2, uuid.uuid4().bytes * 2
        async with new_uow() as uow, uow.transaction():
            account_id = await uow.accounts.add("Acme", Decimal("5.00"))
            await uow.credentials.add(account_id, "API_KEY", key, None)
            await uow.credentials.add(account_id, "TOKEN", token, None)
            await uow.commit()
        async with new_uow() as uow:
            assert await uow.accounts.exists(account_id)
            assert not await uow.accounts.exists(uuid.uuid4())
            info = await uow.accounts.get(account_id)
            assert info is not None
            assert info.name == "Acme"
            assert await uow.accounts.get(uuid.uuid4()) is None
            live = await uow.credentials.live(key, token)
        assert {(c.kind, c.secret_hash, c.account_id) for c in live} == {
            ("API_KEY", key, account_id),
            ("TOKEN", token, account_id),
        }
        assert {c.rate_limit_per_s for c in live} == {Decimal("5.00")}
        async with new_uow() as uow, uow.transaction():
            await uow.credentials.expire_tokens(account_id, datetime(2000, 1, 1, tzinfo=UTC))
            await uow.commit()
        async with new_uow() as uow:
            assert [c.kind for c in await uow.credentials.live(key, token)] == ["API_KEY"]

    async def test_revoked_tokens_and_a_disabled_account_are_not_live(
        self, new_uow: NewUow
    ) -> None:
        key, token, later = (uuid.uuid4().bytes * 2 for _ in range(3))
        async with new_uow() as uow, uow.transaction():
            account_id = await uow.accounts.add("Acme", None)
            await uow.credentials.add(account_id, "API_KEY", key, None)
            await uow.credentials.add(account_id, "TOKEN", token, None)
            await uow.commit()
        async with new_uow() as uow, uow.transaction():
            assert await uow.credentials.revoke_tokens(account_id) == 1
            assert await uow.credentials.revoke_tokens(account_id) == 0  # none live any more
            await uow.credentials.add(account_id, "TOKEN", later, None)
            await uow.commit()
        async with new_uow() as uow:
            assert [c.kind for c in await uow.credentials.live(key, token)] == ["API_KEY"]
            assert {c.kind for c in await uow.credentials.live(key, later)} == {"API_KEY", "TOKEN"}

            disabled_at = await uow.accounts.disable(account_id)
            assert disabled_at is not None
            assert await uow.accounts.disable(account_id) == disabled_at  # the first one stays
            assert await uow.credentials.live(key, later) == []
            info = await uow.accounts.get(account_id)
            assert info is not None
            assert info.disabled_at == disabled_at

            assert await uow.accounts.enable(account_id)
            assert {c.kind for c in await uow.credentials.live(key, later)} == {"API_KEY", "TOKEN"}
            info = await uow.accounts.get(account_id)
            assert info is not None
            assert info.disabled_at is None

            assert await uow.accounts.disable(uuid.uuid4()) is None
            assert not await uow.accounts.enable(uuid.uuid4())

    async def test_an_idempotency_key_is_claimed_once_and_then_names_its_credit(
        self, new_uow: NewUow
    ) -> None:
        account_id = await self.account(new_uow)
        credit = OperatorCredit(unique("key"), account_id, "USD", Decimal("12.50"))
        async with new_uow() as uow, uow.transaction():
            assert await uow.credits.claim(credit) is None
            # Left without commit: the claim goes with the transaction.
        async with new_uow() as uow, uow.transaction():
            assert await uow.credits.claim(credit) is None
            await uow.commit()
        async with new_uow() as uow, uow.transaction():
            earlier = await uow.credits.claim(replace(credit, amount=Decimal("99.00")))
        assert earlier is not None
        assert replace(earlier, at=None) == credit
        assert earlier.at is not None

    async def test_a_credit_is_split_over_the_slots_and_a_refund_happens_once(
        self, new_uow: NewUow
    ) -> None:
        account_id = await self.account(new_uow, usd="10.01")
        tx = unique("tx")
        async with new_uow() as uow, uow.transaction():
            first = await uow.wallets.credit(account_id, "USD", Decimal("1"), SLOTS, "REFUND", tx)
            again = await uow.wallets.credit(account_id, "USD", Decimal("1"), SLOTS, "REFUND", tx)
            await uow.commit()
        assert (first, again) == (True, False)
        async with new_uow() as uow:
            assert await uow.wallets.balances(account_id) == [("USD", Decimal("11.01"))]
            # 10.01 over 4 slots: 2.51, 2.50, 2.50, 2.50; then 0.25 each: 2.76 pays, 2.77 not.
            assert not await uow.wallets.take_from_one_slot(account_id, "USD", Decimal("2.77"))
            assert await uow.wallets.take_from_one_slot(account_id, "USD", Decimal("2.76"))

    async def test_the_slow_path_pays_from_all_slots_and_never_below_zero(
        self, new_uow: NewUow
    ) -> None:
        account_id = await self.account(new_uow, usd="4.00")
        async with new_uow() as uow, uow.transaction():
            assert not await uow.wallets.take_from_one_slot(account_id, "USD", Decimal("3.00"))
            assert not await uow.wallets.take_from_all_slots(account_id, "USD", Decimal("4.01"))
            assert await uow.wallets.take_from_all_slots(account_id, "USD", Decimal("3.00"))
            assert await uow.wallets.take_from_one_slot(account_id, "USD", Decimal("0.25"))
            assert not await uow.wallets.take_from_one_slot(account_id, "USD", Decimal("0.26"))
            assert not await uow.wallets.take_from_all_slots(account_id, "USD", Decimal("0.76"))
            assert await uow.wallets.take_from_all_slots(account_id, "USD", Decimal("0.75"))
            await uow.commit()
        async with new_uow() as uow:
            assert await uow.wallets.balances(account_id) == [("USD", Decimal("0.00"))]

    async def test_pay_and_record_pays_each_wallet_from_one_slot_or_not_at_all(
        self, new_uow: NewUow
    ) -> None:
        rich, poor = await self.account(new_uow, "8.00"), await self.account(new_uow, "8.00")
        sku = unique("SKU")
        paid = [new_order(rich, sku, "1.00"), new_order(rich, sku, "0.50")]
        refused = [new_order(poor, sku, "1.50"), new_order(poor, sku, "1.00")]
        async with new_uow() as uow:
            recorded = await uow.orders.pay_and_record([*paid, *refused], events(*paid, *refused))
        assert recorded == {o.transaction_id for o in paid}
        async with new_uow() as uow:
            assert await uow.wallets.balances(rich) == [("USD", Decimal("6.50"))]
            assert await uow.wallets.balances(poor) == [("USD", Decimal("8.00"))]
            got = await uow.orders.get_many([o.transaction_id for o in paid + refused])
        assert sorted(got, key=lambda o: o.transaction_id) == sorted(
            paid, key=lambda o: o.transaction_id
        )

    async def test_pay_and_record_changes_nothing_when_a_product_moved_on(
        self, new_uow: NewUow
    ) -> None:
        """Orders priced at a product version the read model no longer holds (the catalog
        cache's guard): nothing paid, nothing recorded, ProductChanged naming the SKU."""
        account_id = await self.account(new_uow, "8.00")
        sku, steady = unique("SKU"), unique("SKU")
        async with new_uow() as uow:
            assert await uow.products.apply(product_record(sku), 1)
            assert await uow.products.apply(product_record(steady), 1)
            assert await uow.products.apply(product_record(sku, price="2.00"), 2)
            unknown = unique("SKU")
            assert await uow.products.changed({sku: 1, steady: 1, unknown: 1}) == {sku, unknown}
        orders = [new_order(account_id, sku, "1.00"), new_order(account_id, steady, "1.00")]
        async with new_uow() as uow:
            with pytest.raises(ProductChanged) as changed:
                await uow.orders.pay_and_record(orders, events(*orders), {sku: 1, steady: 1})
        assert changed.value.skus == {sku}
        async with new_uow() as uow, uow.transaction():  # the general path's statement
            assert await uow.wallets.take_from_one_slot(account_id, "USD", Decimal("1.00"))
            with pytest.raises(ProductChanged):
                await uow.orders.record(orders[:1], events(orders[0]), {sku: 1})
            # left without commit: rolled back
        async with new_uow() as uow:
            assert await uow.wallets.balances(account_id) == [("USD", Decimal("8.00"))]
            assert await uow.orders.get_many([o.transaction_id for o in orders]) == []
            assert await uow.products.changed({sku: 2, steady: 1}) == set()
            recorded = await uow.orders.pay_and_record(orders, events(*orders), {sku: 2, steady: 1})
        assert recorded == {o.transaction_id for o in orders}

    async def test_an_order_is_debited_once(self, new_uow: NewUow) -> None:
        account_id = await self.account(new_uow, "5.00")
        order = new_order(account_id, unique("SKU"))
        async with new_uow() as uow:
            await uow.orders.pay_and_record([order], events(order))
        async with new_uow() as uow, uow.transaction():
            assert await uow.wallets.take_from_one_slot(account_id, "USD", Decimal(1))
            with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
                await uow.orders.record([order], events(order))
        async with new_uow() as uow:
            assert await uow.wallets.balances(account_id) == [("USD", Decimal("4.00"))]

    async def test_each_transition_applies_to_a_processing_order_once(
        self, new_uow: NewUow
    ) -> None:
        account_id = await self.account(new_uow, "5.00")
        done, waiting, cancelled = [await self.accepted(new_uow, account_id) for _ in range(3)]
        code, other = stock_id(), stock_id()
        async with new_uow() as uow, uow.transaction():
            completed = await uow.orders.complete([(done.transaction_id, code, "sealed")])
            assert await uow.orders.complete([(done.transaction_id, other, "other")]) == []
            assert await uow.orders.complete_and_announce(
                [
                    (done.transaction_id, other, "x", completed_event(done, other)),
                    (waiting.transaction_id, other, "x", completed_event(waiting, other)),
                ]
            ) == {waiting.transaction_id}
            await uow.commit()
        assert completed == [done.complete(code, "sealed")]
        async with new_uow() as uow, uow.transaction():
            backordered = await uow.orders.backorder(cancelled.transaction_id)
            assert backordered is not None
            assert backordered.backordered
            assert await uow.orders.backorder(cancelled.transaction_id) is None
            assert await uow.orders.backorder(done.transaction_id) is None
            gone = await uow.orders.cancel(cancelled.transaction_id, "DEADLINE_PASSED")
            assert await uow.orders.cancel(cancelled.transaction_id, "DEADLINE_PASSED") is None
            assert await uow.orders.cancel(done.transaction_id, "PRODUCT_WITHDRAWN") is None
            await uow.commit()
        assert gone is not None
        assert (gone.status, gone.cancel_reason) == ("CANCELLED", "DEADLINE_PASSED")
        async with new_uow() as uow:
            stored = await uow.orders.get(account_id, done.transaction_id)
            assert stored == done.complete(code, "sealed")
            assert await uow.orders.get(uuid.uuid4(), done.transaction_id) is None

    async def test_a_code_completes_one_order_only(self, new_uow: NewUow) -> None:
        account_id = await self.account(new_uow, "5.00")
        first, second = [await self.accepted(new_uow, account_id) for _ in range(2)]
        code = stock_id()
        async with new_uow() as uow:
            await uow.orders.complete([(first.transaction_id, code, "sealed")])
            with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
                await uow.orders.complete([(second.transaction_id, code, "sealed")])
            assert await uow.orders.get_many([second.transaction_id]) == [second]

    async def test_the_first_order_of_a_client_order_number_is_found(self, new_uow: NewUow) -> None:
        account_id = await self.account(new_uow, "5.00")
        sku, number = unique("SKU"), unique("n")
        first, second = new_order(account_id, sku, number=number), new_order(account_id, sku)
        async with new_uow() as uow, uow.transaction():
            await uow.orders.lock_client_order_numbers([(account_id, number)])
            await uow.orders.record([first, second], events(first, second))
            found = await uow.orders.find_by_client_order_numbers(
                [(account_id, number), (account_id, "none")]
            )
            await uow.commit()
        assert found == {(account_id, number): first.transaction_id}

    async def test_listing_is_newest_first_and_filtered(self, new_uow: NewUow) -> None:
        account_id = await self.account(new_uow, "5.00")
        a, b = await self.accepted(new_uow, account_id), await self.accepted(new_uow, account_id)
        async with new_uow() as uow:
            total, page = await uow.orders.listing(
                account_id,
                transaction_id=None,
                client_order_number=None,
                status="PROCESSING",
                limit=1,
                offset=0,
            )
            assert (total, page) == (2, [max(a, b, key=lambda o: o.transaction_id)])
            assert (
                await uow.orders.listing(
                    account_id,
                    transaction_id=a.transaction_id,
                    client_order_number=None,
                    status="COMPLETED",
                    limit=10,
                    offset=0,
                )
            ) == (0, [])

    async def test_undecided_orders_are_taken_once_and_rolled_back_with_the_unit(
        self, new_uow: NewUow
    ) -> None:
        order = await self.accepted(new_uow, await self.account(new_uow, "5.00"))
        async with new_uow() as uow, uow.transaction():
            taken = await uow.orders.take_undecided(0, 600, 100_000)
            assert order in taken
            assert order not in await uow.orders.take_undecided(0, 600, 100_000)
            # no commit: the orders are not marked taken
        async with new_uow() as uow:
            summary = dict((s, n) for s, n, _ in await uow.orders.processing_summary())
        assert summary["awaiting_decision"] >= 1

    async def test_product_snapshots_apply_in_version_order(self, new_uow: NewUow) -> None:
        sku, withdrawn = unique("SKU"), unique("SKU")
        async with new_uow() as uow:
            assert await uow.products.apply(product_record(sku), 2)
            assert not await uow.products.apply(product_record(sku, price="1.00"), 1)
            assert await uow.products.apply(product_record(withdrawn, active=False), 1)
            assert await uow.products.get_record(sku) == (product_record(sku), 2)
            assert await uow.products.get_record(unique("SKU")) is None
            assert await uow.products.listing([sku, withdrawn], 10, 0) == (
                1,
                [product_record(sku)],
            )
            account_id = await uow.accounts.add(unique("name"), None)
            await uow.wallets.credit(account_id, "EUR", Decimal(1), SLOTS)
            products, wallets = await uow.products.for_orders([sku, unique("SKU")], [account_id])
        assert products == {sku: Product(sku, "USD", Decimal("9.75"), True, True, version=2)}
        assert wallets == {account_id: {"EUR"}}

    async def test_an_orders_history_has_its_money_and_an_unknown_order_has_none(
        self, new_uow: NewUow
    ) -> None:
        account_id = await self.account(new_uow, "5.00")
        order = await self.accepted(new_uow, account_id)
        async with new_uow() as uow, uow.transaction():
            await uow.orders.cancel(order.transaction_id, "CANCELLED_BY_OPERATOR")
            await uow.wallets.credit(
                account_id, "USD", order.grand_total, SLOTS, "REFUND", order.transaction_id
            )
            await uow.commit()
        async with new_uow() as uow:
            history = await uow.orders.history(order.transaction_id)
            assert await uow.orders.history(unique("tx")) is None
        assert history is not None
        assert (history.order.status, history.order.cancel_reason) == (
            "CANCELLED",
            "CANCELLED_BY_OPERATOR",
        )
        assert [(m.kind, m.amount, m.currency) for m in history.money] == [
            ("DEBIT", -order.grand_total, "USD"),
            ("REFUND", order.grand_total, "USD"),
        ]
        assert history.updated_at >= history.order.created_at

    async def test_an_order_with_no_decision_is_found_and_taken_until_it_is_backordered(
        self, new_uow: NewUow
    ) -> None:
        account_id = await self.account(new_uow, "5.00")
        # older than any order of the shared database; rolled back, so nothing stays behind
        ancient = replace(
            new_order(account_id, unique("SKU")), created_at=datetime(2001, 1, 1, tzinfo=UTC)
        )
        async with new_uow() as uow, uow.transaction():
            await uow.orders.pay_and_record([ancient], events(ancient))
            found = await uow.orders.oldest_stuck(60)
            assert found is not None
            assert found[0] == ancient.transaction_id
            assert found[1] > 20 * 365 * 24 * 3600
            taken = await uow.orders.take_past_deadline(3600, 600, 1000)
            assert ancient.transaction_id in {o.transaction_id for o in taken}
            again = await uow.orders.take_past_deadline(3600, 600, 1000)
            assert ancient.transaction_id not in {o.transaction_id for o in again}
            await uow.orders.backorder(ancient.transaction_id)
            after = await uow.orders.oldest_stuck(60)
            assert after is None or after[0] != ancient.transaction_id
            assert ancient.transaction_id not in {
                o.transaction_id for o in await uow.orders.take_past_deadline(3600, 0, 1000)
            }

    async def test_admin_actions_are_kept_as_recorded_and_listed_newest_first(
        self, new_uow: NewUow
    ) -> None:
        marker = unique("rq")
        recorded = [
            AdminAction(
                operator="alice",
                client="127.0.0.1",
                method="POST",
                route="/admin/accounts/{account_id}/credit",
                ids={"account_id": str(uuid.uuid4())},
                status=status,
                request_id=f"{marker}-{n}",
                at=datetime(2026, 1, 2, 3, 4, n, tzinfo=UTC),
            )
            for n, status in enumerate((200, 401, 429))
        ]
        # Rolled back, so the shared database keeps none of them.
        async with new_uow() as uow, uow.transaction():
            for action in recorded:
                await uow.admin_audit.record(action)
            latest = await uow.admin_audit.latest(50)
            assert len(await uow.admin_audit.latest(2)) == 2
        mine = [a for a in latest if a.request_id.startswith(marker)]
        assert mine == recorded[::-1]
