"""Exchange rates against the running stack: set with the CLI, charged at acceptance, refunded
as charged whatever the rate is by then, listed by GET /v2/exchange-rates."""

import random
import string
from decimal import Decimal

import httpx
import pytest

from tests.e2e.conftest import NewClient, NewProduct
from tests.e2e.test_cli import cli
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e


_TAKEN: set[str] = set()


def new_currency() -> str:
    """A currency code of this test only (rates are shared by every test of the run, and the
    api caches them): random codes alone collided, one run in a few dozen, and a test then
    paid at another test's rate."""
    while (code := "X" + "".join(random.choices(string.ascii_uppercase, k=2))) in _TAKEN:
        pass
    _TAKEN.add(code)
    return code


async def test_an_fx_order_is_charged_converted_and_refunded_as_charged_after_a_rate_change(
    new_client: NewClient, new_product: NewProduct
) -> None:
    pay = new_currency()
    set_, said = await cli("fx", "set", "--base", "USD", "--quote", pay, "--rate", "0.9150")
    assert (set_["pair"], set_["rate"]) == (f"USD{pay}", "0.9150")
    assert pay in said
    listed, _ = await cli("fx", "list")
    assert {"pair": f"USD{pay}", "rate": "0.9150"}.items() <= next(
        r for r in listed if r["pair"] == f"USD{pay}"
    ).items()

    sku = await new_product(price="10.05", stock=0)  # out of stock: it waits, then is cancelled
    client = await new_client(
        balances=[{"currency": "USD", "amount": "50.00"}, {"currency": pay, "amount": "50.00"}]
    )

    async def accepted() -> httpx.Response | None:
        # a rate is in force within the api's rates cache (a few seconds)
        response = await client.order(sku, payWithCurrency=pay)
        return response if response.status_code == 200 else None

    created = (await wait_until(accepted, timeout=10)).json()["data"]
    # 10.05 x 0.915 = 9.19575 -> 9.20
    assert created["grandTotal"] == {"amount": "9.20", "currency": pay}
    assert created["products"][0]["unitPrice"] == {"amount": "9.20", "currency": pay}
    assert created["payWithCurrency"] == pay
    assert created["unitPriceOriginal"] == {"amount": "10.05", "currency": "USD"}
    [summary] = created["fxSummary"]
    assert (summary["pair"], summary["rate"]) == (f"USD{pay}", "0.9150")
    assert await client.balance(pay) == Decimal("40.80")
    assert await client.balance("USD") == Decimal("50.00")
    listed_order = await client.get_order(created["transactionId"])
    assert "fxSummary" not in listed_order
    assert listed_order["grandTotal"]["currency"] == pay

    await cli("fx", "set", "--base", "USD", "--quote", pay, "--rate", "2")
    await cli("orders", "cancel", created["transactionId"])

    async def refunded() -> bool:
        return await client.balance(pay) == Decimal("50.00")

    await wait_until(refunded, timeout=20)
    assert await client.balance("USD") == Decimal("50.00")


async def test_exchange_rates_filter_by_pairs_base_and_quote(new_client: NewClient) -> None:
    a, b = new_currency(), new_currency()
    for base, quote, rate in (("USD", a, "1.41025"), (b, a, "3"), ("USD", b, "0.5")):
        await cli("fx", "set", "--base", base, "--quote", quote, "--rate", rate)
    client = await new_client()

    async def pairs(**params: str) -> set[str]:
        response = await client.http.get("/v2/exchange-rates", params=params)
        assert response.status_code == 200, response.text
        data = response.json()["data"]
        assert "USD" in data["productCurrencies"]
        assert data["updatedAt"]
        return {r["pair"] for r in data["rates"] if a in r["pair"] or b in r["pair"]}

    response = await client.http.get("/v2/exchange-rates", params={"pairs": f"USD{a}"})
    assert response.json()["data"]["rates"] == [
        {"pair": f"USD{a}", "base": "USD", "quote": a, "rate": "1.4102"}
    ]
    assert await pairs(pairs=f"USD{a},{b}{a}", base="EUR") == {f"USD{a}", f"{b}{a}"}
    assert await pairs(quote=a) == {f"USD{a}", f"{b}{a}"}
    assert await pairs(base=b) == {f"{b}{a}"}
    assert await pairs(base="USD", quote=b) == {f"USD{b}"}


@pytest.mark.parametrize(
    ("params", "named"),
    [({"pairs": "USDEUR,USDE"}, "USDE"), ({"pairs": "usdeur"}, "usdeur"), ({"base": "US"}, "US")],
)
async def test_a_bad_pair_or_currency_is_400_naming_it(
    new_client: NewClient, params: dict[str, str], named: str
) -> None:
    client = await new_client()
    response = await client.http.get("/v2/exchange-rates", params=params)
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "INVALID_REQUEST"
    assert repr(named) in body["message"]


async def test_an_order_in_a_pair_without_rate_is_422_and_charges_nothing(
    new_client: NewClient, new_product: NewProduct
) -> None:
    pay = new_currency()
    sku = await new_product(stock=0)
    client = await new_client(
        balances=[{"currency": "USD", "amount": "5.00"}, {"currency": pay, "amount": "5.00"}]
    )
    response = await client.order(sku, payWithCurrency=pay)
    assert response.status_code == 422
    assert response.json()["error"] == "UNSUPPORTED_CURRENCY"
    assert f"USD{pay}" in response.json()["message"]
    assert await client.balance(pay) == Decimal("5.00")


async def test_a_bulk_order_paid_in_another_currency_is_charged_converted_per_unit(
    new_client: NewClient, new_product: NewProduct
) -> None:
    pay = new_currency()
    await cli("fx", "set", "--base", "USD", "--quote", pay, "--rate", "0.9155")
    sku = await new_product(price="2.00", stock=1)  # one unit delivered, two wait
    client = await new_client(
        balances=[{"currency": "USD", "amount": "50.00"}, {"currency": pay, "amount": "50.00"}]
    )
    body = {"products": [{"sku": sku, "quantity": 3}], "payWithCurrency": pay}

    async def accepted() -> httpx.Response | None:
        response = await client.http.post("/v2/orders", json=body)
        return response if response.status_code == 200 else None

    created = (await wait_until(accepted, timeout=10)).json()["data"]
    # 2.00 x 0.9155 = 1.831 -> 1.83 a unit, 5.49 in all, from the pay-currency balance
    assert created["grandTotal"] == {"amount": "5.49", "currency": pay}
    assert created["products"][0]["unitPrice"] == {"amount": "1.83", "currency": pay}
    assert created["products"][0]["unitPriceOriginal"] == {"amount": "2.00", "currency": "USD"}
    assert created["payWithCurrency"] == pay
    assert [s["pair"] for s in created["fxSummary"]] == [f"USD{pay}"]
    assert await client.balance(pay) == Decimal("44.51")
    assert await client.balance("USD") == Decimal("50.00")
    shown = await client.get_order(created["transactionId"])
    assert shown["grandTotal"] == {"amount": "5.49", "currency": pay}
    assert "fxSummary" not in shown
