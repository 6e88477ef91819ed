"""The catalog cache of the instant path (service_layer.catalog_cache), over the fakes: a
batch reads products and wallets only when it does not remember them, and remembering never
charges a price, or refuses an order, that the read model no longer says."""

import uuid
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import pytest

from services.api import metrics
from services.api.domain.model import (
    CreateInstantOrder,
    InsufficientBalance,
    ProductNotFound,
    UnsupportedCurrency,
)
from services.api.service_layer import accounts
from tests.api_contract import product_record
from tests.api_fakes import FakeProducts, FakeStore
from tests.unit.test_api_handlers import SLOTS, Replies, balance, instant
from tests.unit.test_api_handlers import desk as handlers_desk


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[str], list[uuid.UUID]]]:
    """Every products-and-wallets read of the acceptance, with what it asked for."""
    seen: list[tuple[list[str], list[uuid.UUID]]] = []
    read = FakeProducts.for_orders

    async def counted(
        self: FakeProducts, skus: Sequence[str], account_ids: Sequence[uuid.UUID]
    ) -> Any:
        seen.append((list(skus), list(account_ids)))
        return await read(self, skus, account_ids)

    monkeypatch.setattr(FakeProducts, "for_orders", counted)
    return seen


def desk(store: FakeStore) -> Any:
    """Inventory silent: each order is accepted and answered PROCESSING (the fakes' inventory
    would sell one code to every order)."""
    return handlers_desk(store, replies=Replies(silent=True), window=0.01)


async def product(store: FakeStore, version: int, **fields: Any) -> None:
    async with store.uow() as uow:
        assert await uow.products.apply(product_record("SKU", **fields), version)


async def account(store: FakeStore, *wallets: tuple[str, str]) -> uuid.UUID:
    issued, _ = await accounts.create_account(
        store.uow(), "Acme", [(c, Decimal(amount)) for c, amount in wallets], SLOTS
    )
    return issued.account_id


async def test_a_product_remembered_is_read_again_only_once_it_changed(
    reads: list[Any],
) -> None:
    store = FakeStore()
    await product(store, 1, price="2.00")
    account_id = await account(store, ("USD", "10.00"))
    orders_desk = desk(store)

    await orders_desk.place_instant(instant(account_id))
    await orders_desk.place_instant(instant(account_id))
    assert len(reads) == 1
    assert await balance(store, account_id) == Decimal("6.00")

    await product(store, 2, price="3.00")  # as the catalog consumer applies it
    changed_before = metrics.PRODUCTS_CHANGED_AT_ACCEPTANCE._value.get()
    order = await orders_desk.place_instant(instant(account_id))

    assert order.unit_price == Decimal("3.00")
    assert await balance(store, account_id) == Decimal("3.00")  # charged once, at 3.00
    assert metrics.PRODUCTS_CHANGED_AT_ACCEPTANCE._value.get() == changed_before + 1
    assert reads[1:] == [(["SKU"], [])]  # the product again, not the wallets


async def test_the_general_path_charges_the_product_as_it_is_now(reads: list[Any]) -> None:
    """A dup-checked order takes the general path (one transaction): a product remembered
    at an older version is read again there too, before anything is charged."""
    store = FakeStore()
    await product(store, 1, price="2.00")
    account_id = await account(store, ("USD", "10.00"))
    orders_desk = desk(store)
    await orders_desk.place_instant(instant(account_id))
    await product(store, 2, price="1.50")

    order = await orders_desk.place_instant(instant(account_id, "n-1"))

    assert order.unit_price == Decimal("1.50")
    assert await balance(store, account_id) == Decimal("6.50")
    assert len(reads) == 2


async def test_an_order_refused_on_what_was_remembered_is_checked_on_what_is_now(
    reads: list[Any],
) -> None:
    store = FakeStore()
    await product(store, 1, active=False)
    account_id = await account(store, ("USD", "10.00"))
    orders_desk = desk(store)
    with pytest.raises(ProductNotFound):
        await orders_desk.place_instant(instant(account_id))
    eur = CreateInstantOrder(account_id, "SKU", None, False, "EUR")
    await product(store, 2, active=True, price="1.00")
    await orders_desk.place_instant(instant(account_id))  # remembered inactive: read again
    with pytest.raises(UnsupportedCurrency):
        await orders_desk.place_instant(eur)  # no EUR wallet, even read again
    reads_before = len(reads)

    async with store.uow() as uow, uow.transaction():
        await uow.wallets.credit(account_id, "EUR", Decimal("5.00"), SLOTS)
        await uow.commit()
    async with store.uow() as uow, uow.transaction():
        await uow.fx_rates.put("USD", "EUR", Decimal("0.5"))
        await uow.commit()
    order = await orders_desk.place_instant(eur)

    assert (order.currency, order.grand_total) == ("EUR", Decimal("0.50"))
    assert reads[reads_before:] == [(["SKU"], [account_id])]  # read again: then accepted


async def test_a_price_remembered_in_another_currency_is_not_converted_once_it_changed(
    reads: list[Any],
) -> None:
    """Remembered in EUR, the product now sells in USD: an order paid in USD needs no
    conversion (and there is no rate to convert with), so it is priced on the product read
    afresh instead of being refused for want of a rate."""
    store = FakeStore()
    await product(store, 1, currency="EUR", price="2.00")
    account_id = await account(store, ("USD", "10.00"), ("EUR", "10.00"))
    orders_desk = desk(store)
    await orders_desk.place_instant(instant(account_id))  # remembers it in EUR
    await product(store, 2, currency="USD", price="3.00")

    order = await orders_desk.place_instant(
        CreateInstantOrder(account_id, "SKU", None, False, "USD")
    )

    assert (order.currency, order.unit_price, order.fx) == ("USD", Decimal("3.00"), None)
    assert reads[1:] == [(["SKU"], [])]


async def test_a_product_of_no_known_version_is_read_for_every_batch(reads: list[Any]) -> None:
    """Version 0 ("not known") could not be checked at payment: it is never remembered, and
    its orders are accepted on it as read, each batch."""
    store = FakeStore()
    await product(store, 0, price="2.00")
    account_id = await account(store, ("USD", "10.00"))
    orders_desk = desk(store)

    for _ in range(2):
        await orders_desk.place_instant(instant(account_id))

    assert [skus for skus, _ in reads] == [["SKU"], ["SKU"]]
    assert await balance(store, account_id) == Decimal("6.00")


async def test_the_general_path_does_not_refuse_on_a_remembered_price(reads: list[Any]) -> None:
    """Remembered at 9.00, the product now costs 1.00: a dup-checked order from an account
    holding 5.00 is paid at 1.00, not refused for a balance the old price would need."""
    store = FakeStore()
    await product(store, 1, price="9.00")
    account_id = await account(store, ("USD", "5.00"))
    orders_desk = desk(store)
    with pytest.raises(InsufficientBalance):
        await orders_desk.place_instant(instant(account_id))  # remembers it at 9.00
    await product(store, 2, price="1.00")

    order = await orders_desk.place_instant(instant(account_id, "n-1"))

    assert order.unit_price == Decimal("1.00")
    assert await balance(store, account_id) == Decimal("4.00")
