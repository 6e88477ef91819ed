"""The bulk order over the fakes: checked, paid in full at acceptance, split into units that
inventory decides one by one, rolled up into line and order statuses, and each cancelled
unit refunded once."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from services.api.domain.model import (
    BULK_MAX_UNITS,
    BulkLine,
    BulkOrder,
    CreateBulkOrder,
    DuplicateClientOrderNumber,
    InsufficientBalance,
    InvalidBulkOrder,
    ProductNotFound,
    UnsupportedCurrency,
    rolled_up,
)
from services.api.service_layer import accounts, orders
from services.api.service_layer.fx import OperatorRates
from shared import topics
from shared.contracts import (
    BackorderAllocated,
    BackorderCancelled,
    CancelReason,
    OrderEvent,
    OrderReserved,
    PlaceOrder,
)
from tests.api_contract import product_record
from tests.api_fakes import FakeStore

SLOTS = 4


async def funded(store: FakeStore, usd: str) -> uuid.UUID:
    issued, _ = await accounts.create_account(store.uow(), "Acme", [("USD", Decimal(usd))], SLOTS)
    async with store.uow() as uow:
        await uow.products.apply(product_record("A", price="2.00"), 1)
        await uow.products.apply(
            product_record("B", price="3.00", isInstantDeliverySupported=False), 1
        )
        await uow.products.apply(product_record("E", price="1.00", currency="EUR"), 1)
    return issued.account_id


def bulk(
    account_id: uuid.UUID,
    *lines: tuple[str, int],
    number: str | None = None,
    pay_with: str | None = None,
) -> CreateBulkOrder:
    return CreateBulkOrder(
        account_id,
        tuple(BulkLine(sku, quantity) for sku, quantity in lines),
        number,
        number is not None,
        pay_with,
    )


async def balance(store: FakeStore, account_id: uuid.UUID) -> Decimal:
    async with store.uow() as uow:
        return dict(await uow.wallets.balances(account_id))["USD"]


async def place(store: FakeStore, cmd: CreateBulkOrder) -> BulkOrder:
    return await orders.place_bulk(
        store.uow(), cmd, lock_timeout_s=1.0, rates=OperatorRates(store.uow)
    )


async def test_a_bulk_order_is_paid_in_full_and_sent_to_inventory_unit_by_unit() -> None:
    store = FakeStore()
    account_id = await funded(store, "20.00")

    order = await place(store, bulk(account_id, ("A", 2), ("B", 3), number="PO-1"))

    assert (order.status, order.grand_total, order.refunded) == (
        "PROCESSING",
        Decimal("13.00"),
        Decimal(0),
    )
    assert [(sku, len(units)) for sku, units in order.lines] == [("A", 2), ("B", 3)]
    assert await balance(store, account_id) == Decimal("7.00")
    commands = [
        PlaceOrder.model_validate_json(r.payload)
        for r in store.events(topics.INVENTORY_COMMANDS.name)
    ]
    assert [c.transaction_id for c in commands] == [
        f"{order.transaction_id}-{n:05d}" for n in range(1, 6)
    ]
    assert {c.placed_at for c in commands} == {order.created_at}
    accepted = store.events(topics.ORDER_EVENTS.name)
    assert {r.key for r in accepted} == {order.transaction_id}
    events = [OrderEvent.model_validate_json(r.payload) for r in accepted]
    assert {(e.bulk_transaction_id, e.client_order_number) for e in events} == {
        (order.transaction_id, "PO-1")
    }


@pytest.mark.parametrize(
    ("lines", "refused"),
    [
        ((("A", 1), ("A", 2)), InvalidBulkOrder),  # one line per SKU
        ((("A", BULK_MAX_UNITS), ("B", 1)), InvalidBulkOrder),  # too many units in all
        ((("A", 1), ("E", 1)), InvalidBulkOrder),  # two currencies
        ((("A", 1), ("NOPE", 1)), ProductNotFound),
    ],
)
async def test_a_bulk_order_breaking_a_rule_is_refused_and_charges_nothing(
    lines: tuple[tuple[str, int], ...], refused: type[Exception]
) -> None:
    store = FakeStore()
    account_id = await funded(store, "100000.00")

    with pytest.raises(refused):
        await place(store, bulk(account_id, *lines))

    assert await balance(store, account_id) == Decimal("100000.00")
    assert store.events() == []


async def test_a_bulk_order_the_balance_cannot_pay_is_refused_whole() -> None:
    store = FakeStore()
    account_id = await funded(store, "5.00")

    with pytest.raises(InsufficientBalance):
        await place(store, bulk(account_id, ("A", 3)))

    assert await balance(store, account_id) == Decimal("5.00")
    assert store.events() == []


async def test_paying_in_another_currency_follows_the_instant_rule() -> None:
    store = FakeStore()
    account_id = await funded(store, "5.00")

    with pytest.raises(UnsupportedCurrency):
        await place(store, bulk(account_id, ("A", 1), pay_with="EUR"))


async def test_a_bulk_order_paid_in_another_currency_is_converted_and_refunded_as_charged() -> None:
    # The instant path's conversion (price_in), per line: 2.00 USD at USDEUR 0.9155 is 1.83
    # EUR (half-even); the whole total comes from the EUR balance, and a cancelled unit gives
    # back what it was charged, whatever the rate is by then.
    store = FakeStore()
    issued, _ = await accounts.create_account(
        store.uow(), "Acme", [("USD", Decimal("50.00")), ("EUR", Decimal("50.00"))], SLOTS
    )
    async with store.uow() as uow:
        await uow.products.apply(product_record("A", price="2.00"), 1)
        await uow.fx_rates.put("USD", "EUR", Decimal("0.9155"))

    order = await place(store, bulk(issued.account_id, ("A", 3), pay_with="EUR"))

    assert (order.currency, order.grand_total) == ("EUR", Decimal("5.49"))
    assert {(u.unit_price, u.currency) for u in order.units} == {(Decimal("1.83"), "EUR")}
    assert all(
        u.fx is not None and u.fx.unit_price_original == Decimal("2.00") for u in order.units
    )
    async with store.uow() as uow:
        await uow.fx_rates.put("USD", "EUR", Decimal("2.0"))
        assert dict(await uow.wallets.balances(issued.account_id)) == {
            "USD": Decimal("50.00"),
            "EUR": Decimal("44.51"),
        }
    unit = order.units[0].transaction_id
    for _ in range(2):  # redelivered: refunded once
        await orders.follow_inventory(store.uow(), [cancelled(unit, issued.account_id, "A")], SLOTS)
    async with store.uow() as uow:
        assert dict(await uow.wallets.balances(issued.account_id))["EUR"] == Decimal("46.34")


async def test_the_dup_check_is_shared_with_instant_orders() -> None:
    store = FakeStore()
    account_id = await funded(store, "50.00")
    first = await place(store, bulk(account_id, ("A", 1), number="PO-1"))

    with pytest.raises(DuplicateClientOrderNumber) as refused:
        await place(store, bulk(account_id, ("A", 1), number="PO-1"))

    assert refused.value.transaction_id == first.transaction_id
    assert await balance(store, account_id) == Decimal("48.00")


def reserved(unit: str, account_id: uuid.UUID, sku: str, stock_id: int) -> OrderReserved:
    return OrderReserved(
        transaction_id=unit, account_id=account_id, sku=sku, stock_id=stock_id, sealed_code="c"
    )


def cancelled(
    unit: str, account_id: uuid.UUID, sku: str, reason: CancelReason = "DEADLINE_PASSED"
) -> BackorderCancelled:
    return BackorderCancelled(transaction_id=unit, account_id=account_id, sku=sku, reason=reason)


async def test_units_delivered_and_cancelled_roll_up_and_each_cancelled_unit_is_refunded_once() -> (
    None
):
    store = FakeStore()
    account_id = await funded(store, "20.00")
    order = await place(store, bulk(account_id, ("A", 2), ("B", 2)))
    tx = order.transaction_id
    outcomes = [
        reserved(f"{tx}-00001", account_id, "A", 11),
        cancelled(f"{tx}-00002", account_id, "A"),
        cancelled(f"{tx}-00003", account_id, "B"),
        cancelled(f"{tx}-00004", account_id, "B"),
        # late, after the cancellation: changes nothing
        BackorderAllocated(
            transaction_id=f"{tx}-00004",
            account_id=account_id,
            sku="B",
            stock_id=12,
            sealed_code="c",
        ),
    ]

    for _ in range(2):  # redelivered
        await orders.follow_inventory(store.uow(), outcomes, SLOTS)

    after = await orders.bulk_order(store.uow(), account_id, tx)
    assert after is not None
    assert [(sku, rolled_up([u.status for u in units])) for sku, units in after.lines] == [
        ("A", "COMPLETED"),
        ("B", "CANCELLED"),
    ]
    assert (after.status, after.grand_total, after.refunded) == (
        "COMPLETED",
        Decimal("10.00"),
        Decimal("8.00"),
    )
    assert await balance(store, account_id) == Decimal("20.00") - Decimal("10.00") + Decimal("8.00")
    kinds = [r.type for r in store.events(topics.ORDER_EVENTS.name)]
    assert (kinds.count("OrderCompleted"), kinds.count("OrderCancelled")) == (1, 3)
    assert {r.key for r in store.events(topics.ORDER_EVENTS.name)} == {tx}


def test_statuses_roll_up_processing_first_then_completed_if_any_was_delivered() -> None:
    assert rolled_up(["COMPLETED", "PROCESSING"]) == "PROCESSING"
    assert rolled_up(["COMPLETED", "CANCELLED"]) == "COMPLETED"
    assert rolled_up(["CANCELLED", "CANCELLED"]) == "CANCELLED"
    assert rolled_up(["COMPLETED"]) == "COMPLETED"


async def test_another_accounts_bulk_order_is_not_found() -> None:
    store = FakeStore()
    account_id = await funded(store, "20.00")
    order = await place(store, bulk(account_id, ("A", 1)))

    assert await orders.bulk_order(store.uow(), uuid.uuid4(), order.transaction_id) is None


async def test_the_listing_shows_a_bulk_order_once_and_not_its_units() -> None:
    store = FakeStore()
    account_id = await funded(store, "50.00")
    first = await place(store, bulk(account_id, ("A", 2), number="PO-7"))

    async with store.uow() as uow:
        total, listed = await uow.orders.listing(
            account_id,
            transaction_id=None,
            client_order_number="PO-7",
            status="PROCESSING",
            limit=10,
            offset=0,
        )
    assert total == 1
    assert [o.transaction_id for o in listed] == [first.transaction_id]
    assert isinstance(listed[0], BulkOrder)
