from decimal import Decimal

import pytest

from services.api.domain.model import (
    Product,
    ProductNotFound,
    ProductNotInstant,
    UnsupportedCurrency,
    check_orderable,
    settlement_currency,
    split_evenly,
)

GIFT = Product("SKU-1", "USD", Decimal("9.75"), is_instant=True, active=True)


@pytest.mark.parametrize(
    ("amount", "parts", "currency", "unit"),
    [
        (Decimal("100.00"), 16, "USD", Decimal("0.01")),
        (Decimal("0.05"), 16, "USD", Decimal("0.01")),
        (Decimal("9.99"), 3, "EUR", Decimal("0.01")),
        (Decimal("0"), 4, "USD", Decimal("0.01")),
        (Decimal("1000"), 16, "JPY", Decimal(1)),  # whole yen, never 62.50 JPY in a slot
        (Decimal("7"), 16, "JPY", Decimal(1)),
    ],
)
def test_split_evenly_keeps_every_minor_unit_and_differs_by_at_most_one(
    amount: Decimal, parts: int, currency: str, unit: Decimal
):
    shares = split_evenly(amount, parts, currency)
    assert len(shares) == parts
    assert sum(shares) == amount
    assert max(shares) - min(shares) <= unit
    assert all(s >= 0 and s == s.quantize(unit) for s in shares)


def test_an_amount_finer_than_the_minor_unit_is_kept_whole():
    shares = split_evenly(Decimal("1000.50"), 16, "JPY")
    assert sum(shares) == Decimal("1000.50")
    assert shares[0] == Decimal("63.50")
    assert set(shares[1:]) <= {Decimal(62), Decimal(63)}


def test_unknown_or_withdrawn_products_are_not_orderable():
    with pytest.raises(ProductNotFound):
        check_orderable(None)
    with pytest.raises(ProductNotFound):
        check_orderable(Product("X", "USD", Decimal(1), is_instant=True, active=False))
    with pytest.raises(ProductNotInstant):
        check_orderable(Product("X", "USD", Decimal(1), is_instant=False, active=True))
    assert check_orderable(GIFT) is GIFT


def test_settlement_defaults_to_the_product_currency():
    assert settlement_currency(GIFT, None, {"USD", "EUR"}) == "USD"


def test_settlement_needs_a_wallet_in_the_product_currency():
    with pytest.raises(UnsupportedCurrency, match="payWithCurrency"):
        settlement_currency(GIFT, None, {"EUR"})


def test_pay_with_a_currency_the_account_does_not_hold_is_refused():
    with pytest.raises(UnsupportedCurrency, match="not one of this account"):
        settlement_currency(GIFT, "GBP", {"USD"})


def test_pay_with_another_balance_currency_settles_in_it():
    assert settlement_currency(GIFT, "EUR", {"USD", "EUR"}) == "EUR"
