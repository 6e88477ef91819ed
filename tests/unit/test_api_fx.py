"""Exchange rates and orders paid in another currency than the product's (on the fakes)."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from services.api.domain.model import (
    CreateInstantOrder,
    ExchangeRate,
    InvalidRate,
    NoExchangeRate,
    Order,
    UnsupportedCurrency,
    check_rate,
    price_in,
)
from services.api.service_layer import accounts, fx, orders
from shared import topics
from shared.contracts import BackorderCancelled, rate_out
from tests.api_contract import product_record
from tests.api_fakes import FakeStore
from tests.unit.test_api_handlers import SLOTS, Replies, desk

AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def rates(**pairs: str) -> dict[str, ExchangeRate]:
    return {p: ExchangeRate(p[:3], p[3:], Decimal(r), AT) for p, r in pairs.items()}


def test_same_currency_is_not_converted_and_needs_no_rate() -> None:
    priced = price_in(Decimal("9.75"), "USD", "USD", {})
    assert (priced.unit_price, priced.fx) == (Decimal("9.75"), None)


def test_the_price_is_times_the_rate_of_product_to_pay_currency_rounded_half_even() -> None:
    # 10.05 x 0.5 = 5.025 -> 5.02 (half to even), 10.15 x 0.5 = 5.075 -> 5.08
    assert price_in(Decimal("10.05"), "USD", "EUR", rates(USDEUR="0.5")).unit_price == Decimal(
        "5.02"
    )
    priced = price_in(Decimal("10.15"), "USD", "EUR", rates(USDEUR="0.5"))
    assert priced.unit_price == Decimal("5.08")
    assert priced.fx is not None
    assert (priced.fx.pair("EUR"), priced.fx.rate, priced.fx.unit_price_original) == (
        "USDEUR",
        Decimal("0.5"),
        Decimal("10.15"),
    )


def test_a_currency_without_minor_unit_is_charged_whole() -> None:
    assert price_in(Decimal("10.00"), "USD", "JPY", rates(USDJPY="151.234567")).unit_price == (
        Decimal("1512")
    )


def test_the_inverse_pair_is_not_used() -> None:
    with pytest.raises(NoExchangeRate, match="USDEUR") as raised:
        price_in(Decimal("1.00"), "USD", "EUR", rates(EURUSD="1.1"))
    assert isinstance(raised.value, UnsupportedCurrency)  # 422 UNSUPPORTED_CURRENCY


@pytest.mark.parametrize("rate", ["0", "-1", "0.0000001", "1000000000000", "NaN"])
def test_a_rate_must_be_positive_bounded_and_exact_in_6_decimals(rate: str) -> None:
    with pytest.raises(InvalidRate):
        check_rate("USD", "EUR", Decimal(rate))


def test_a_rate_needs_two_currencies() -> None:
    with pytest.raises(InvalidRate, match="both USD"):
        check_rate("USD", "USD", Decimal(1))


def test_rates_are_shown_exactly_with_at_least_4_decimals() -> None:
    assert [rate_out(Decimal(r)) for r in ("0.915", "1.234567", "2", "0.915000")] == [
        "0.9150",
        "1.234567",
        "2.0000",
        "0.9150",
    ]


async def test_cached_rates_are_read_again_after_their_ttl() -> None:
    now = [0.0]
    reads: list[int] = []

    class Source:
        async def rates(self) -> dict[str, ExchangeRate]:
            reads.append(1)
            return rates(USDEUR=str(len(reads)))

    cached = fx.CachedRates(Source(), ttl_s=2.0, clock=lambda: now[0])
    assert (await cached.rates())["USDEUR"].rate == 1
    now[0] = 1.9
    assert (await cached.rates())["USDEUR"].rate == 1
    now[0] = 2.0
    assert (await cached.rates())["USDEUR"].rate == 2


async def two_currency_account(store: FakeStore) -> uuid.UUID:
    issued, _ = await accounts.create_account(
        store.uow(), "Acme", [("USD", Decimal("10.00")), ("EUR", Decimal("10.00"))], SLOTS
    )
    async with store.uow() as uow:
        await uow.products.apply(product_record("SKU", price="2.05"), 1)
    return issued.account_id


def paid_in(account_id: uuid.UUID, currency: str | None) -> CreateInstantOrder:
    return CreateInstantOrder(account_id, "SKU", None, False, currency)


async def balances(store: FakeStore, account_id: uuid.UUID) -> dict[str, Decimal]:
    async with store.uow() as uow:
        return dict(await uow.wallets.balances(account_id))


async def test_an_order_paid_in_another_currency_is_charged_converted_and_refunded_the_same() -> (
    None
):
    store = FakeStore()
    account_id = await two_currency_account(store)
    await fx.set_rate(store.uow(), "USD", "EUR", Decimal("0.9150"))

    order = await desk(store, replies=Replies(silent=True), window=0.05).place_instant(
        paid_in(account_id, "EUR")
    )

    # 2.05 x 0.915 = 1.87575 -> 1.88
    assert (order.currency, order.unit_price, order.grand_total) == (
        "EUR",
        Decimal("1.88"),
        Decimal("1.88"),
    )
    assert order.fx is not None
    assert order.fx.rate == Decimal("0.915")
    assert await balances(store, account_id) == {"USD": Decimal("10.00"), "EUR": Decimal("8.12")}
    [accepted] = store.events(topics.ORDER_EVENTS.name)
    event = json.loads(accepted.payload)
    assert event["grandTotal"] == {"amount": "1.88", "currency": "EUR"}
    assert event["fx"]["pair"] == "USDEUR"
    assert event["fx"]["rate"] == "0.9150"
    assert event["fx"]["unitPriceOriginal"] == {"amount": "2.05", "currency": "USD"}

    await fx.set_rate(store.uow(), "USD", "EUR", Decimal("2"))
    cancelled = BackorderCancelled(
        transaction_id=order.transaction_id,
        account_id=account_id,
        sku="SKU",
        reason="DEADLINE_PASSED",
    )
    await orders.follow_inventory(store.uow(), [cancelled, cancelled], SLOTS)

    assert await balances(store, account_id) == {"USD": Decimal("10.00"), "EUR": Decimal("10.00")}


async def test_a_same_currency_order_reads_no_rates_and_carries_no_fx() -> None:
    store = FakeStore()
    account_id = await two_currency_account(store)

    class NoReads:
        async def rates(self) -> dict[str, ExchangeRate]:
            raise AssertionError("rates read for a same-currency order")

    for currency in (None, "USD"):
        order = await desk(store, rates=NoReads()).place_instant(paid_in(account_id, currency))
        assert (order.currency, order.grand_total, order.fx) == ("USD", Decimal("2.05"), None)


async def test_rates_that_cannot_be_read_fail_only_the_orders_that_need_them() -> None:
    store = FakeStore()
    account_id = await two_currency_account(store)

    class Unreadable:
        reads = 0

        async def rates(self) -> dict[str, ExchangeRate]:
            self.reads += 1
            raise ConnectionError("rates table unreachable")

    source = Unreadable()
    one_desk = desk(store, rates=source, replies=Replies(silent=True), window=0.05)
    # arriving together, the two orders share one batch (one accept transaction)
    paid_in_eur, paid_in_usd = await asyncio.gather(
        one_desk.place_instant(paid_in(account_id, "EUR")),
        one_desk.place_instant(paid_in(account_id, "USD")),
        return_exceptions=True,
    )
    assert isinstance(paid_in_eur, ConnectionError)
    assert isinstance(paid_in_usd, Order)
    assert paid_in_usd.grand_total == Decimal("2.05")
    assert source.reads == 1
    assert await balances(store, account_id) == {"USD": Decimal("7.95"), "EUR": Decimal("10.00")}


async def test_an_order_in_a_pair_without_rate_is_refused_and_charged_nothing() -> None:
    store = FakeStore()
    account_id = await two_currency_account(store)
    await fx.set_rate(store.uow(), "EUR", "USD", Decimal("1.1"))

    with pytest.raises(NoExchangeRate, match="No exchange rate USDEUR"):
        await desk(store).place_instant(paid_in(account_id, "EUR"))
    assert await balances(store, account_id) == {"USD": Decimal("10.00"), "EUR": Decimal("10.00")}


def test_a_price_that_converts_to_less_than_one_minor_unit_is_refused() -> None:
    # Review: 5 KRW at 0.00073 is 0.00365 USD, 0.00 once rounded: never a code for nothing.
    with pytest.raises(UnsupportedCurrency, match=r"less than one 0\.01 USD"):
        price_in(Decimal("5.00"), "KRW", "USD", rates(KRWUSD="0.00073"))
    assert price_in(Decimal("7.00"), "KRW", "USD", rates(KRWUSD="0.00073")).unit_price == Decimal(
        "0.01"
    )
