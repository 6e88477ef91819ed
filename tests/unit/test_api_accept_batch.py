"""A batch whose general path fails keeps the orders its one-statement path already paid for
and recorded: they are committed, so their callers must not be told to retry."""

import uuid
from collections.abc import Sequence
from decimal import Decimal
from types import SimpleNamespace
from typing import Any, cast

import pytest

from services.api.domain.model import CreateInstantOrder, Order, Overloaded, Product
from services.api.service_layer.orders import OrderDesk
from services.api.service_layer.unit_of_work import LockTimeout
from tests.api_fakes import FakeStore


def request(account: uuid.UUID) -> CreateInstantOrder:
    return CreateInstantOrder(account, "SKU-1", None, dup_check=False, pay_with_currency=None)


@pytest.mark.parametrize(
    ("failure", "rest_gets"),
    [(RuntimeError("boom"), RuntimeError), (LockTimeout(), Overloaded)],
)
async def test_orders_recorded_in_one_statement_survive_a_failing_rest(
    monkeypatch: pytest.MonkeyPatch, failure: Exception, rest_gets: type[Exception]
) -> None:
    paid_wallet, busy_wallet = uuid.uuid4(), uuid.uuid4()
    product = Product("SKU-1", "USD", Decimal("1.00"), is_instant=True, active=True)

    async def products_and_wallets(*_: Any) -> Any:
        return {"SKU-1": product}, {paid_wallet: {"USD"}, busy_wallet: {"USD"}}

    async def pay_and_record(orders: Sequence[Order], *_: Any) -> set[str]:
        return {o.transaction_id for o in orders if o.account_id == paid_wallet}

    async def general_path(*_: Any) -> None:
        raise failure

    uow = FakeStore().uow()

    def new_uow() -> Any:
        monkeypatch.setattr(uow, "_open", _stubbed)
        return uow

    async def _stubbed() -> None:
        uow.products = cast(Any, SimpleNamespace(for_orders=products_and_wallets))
        uow.orders = cast(Any, SimpleNamespace(pay_and_record=pay_and_record))

    orders = OrderDesk(
        new_uow=new_uow,
        publisher=cast(Any, None),
        replies=cast(Any, SimpleNamespace(topic="orders.replies", partition=0)),
        health=cast(Any, SimpleNamespace(accepting=True)),
        decision_window_s=0.5,
        rates=cast(Any, None),  # same-currency orders read no rates
    )
    monkeypatch.setattr(orders, "_accept_in_a_transaction", general_path)

    results = await orders._accept_batch([request(paid_wallet), request(busy_wallet)])

    accepted, refused = results
    assert isinstance(accepted, tuple)
    assert accepted[0].account_id == paid_wallet
    assert accepted[1].transaction_id == accepted[0].transaction_id  # its PlaceOrder
    assert isinstance(refused, rest_gets)
