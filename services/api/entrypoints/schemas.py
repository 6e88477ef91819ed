"""The success bodies of the /v2 operations, for the OpenAPI document only: the routes build
plain dicts (serialising through these models would cost CPU on the hot path), and
tests/e2e/test_zzz_contract_conformance.py validates every body the e2e suite receives
against the schemas declared here."""

from typing import Any, Literal

from pydantic import BaseModel, Field

from shared.web import error_responses

Status = Literal["PROCESSING", "COMPLETED", "CANCELLED"]


class Money(BaseModel):
    amount: str = Field(pattern=r"^-?[0-9]+\.[0-9]{2}$")
    currency: str = Field(pattern=r"^[A-Z]{3}$")


class OrderLine(BaseModel):
    sku: str
    quantity: int
    unitPrice: Money
    totalPrice: Money
    status: Status
    unitPriceOriginal: Money | None = Field(
        None,
        description="(ours) The create response of a bulk order paid in another currency "
        "than its products': this line's product price, in its own currency.",
    )


class OrderOut(BaseModel):
    transactionId: str
    ezOrderNumber: str = Field(
        pattern=r"^[1-9][0-9]{0,9}$",
        description="A stable number (decimal digits, a string as in the public EZ v2 "
        "descriptions) derived from the transactionId, for display and reconciliation; the "
        "order's identity is transactionId (docs/api.md).",
    )
    clientOrderNumber: str
    grandTotal: Money
    createdAt: str
    status: Status
    products: list[OrderLine]
    refundedTotal: Money | None = Field(
        None,
        description="(ours) Bulk orders only: what their cancelled units gave back; "
        "grandTotal stays what was paid (docs/api.md).",
    )


class FxSummary(BaseModel):
    pair: str = Field(
        pattern=r"^[A-Z]{6}$", description="BASEQUOTE: product currency, then the currency paid"
    )
    rate: str = Field(pattern=r"^[0-9]+\.[0-9]{4,}$")
    asOfDate: str


class CreatedOrderOut(OrderOut):
    """The create response: an order paid in another currency than its product's also
    carries how it was converted; the three fields are absent for a same-currency order."""

    payWithCurrency: str | None = Field(None, pattern=r"^[A-Z]{3}$")
    unitPriceOriginal: Money | None = None
    fxSummary: list[FxSummary] | None = None


class OrderPage(BaseModel):
    total: int
    page: int
    pageSize: int
    totalPage: int
    items: list[OrderOut]


class CodeOut(BaseModel):
    stockId: int | None
    status: Status
    redeemCode: str | None
    pinCode: int | str | None = Field(
        description="An int32 for an account whose pinFormat is `integer` (the default), "
        "the exact PIN as a string for `string`; null while the code is not delivered or "
        "when the product has no PIN (docs/api.md, PIN format)."
    )


class CodesLine(BaseModel):
    sku: str
    quantity: int
    codes: list[CodeOut]


class Price(BaseModel):
    price: str
    fromQuantity: int
    toQuantity: int


class ProductOut(BaseModel):
    sku: str
    name: str
    brand: str
    brandCategory: str
    brandSubCategory: str
    types: list[str]
    format: Literal["D", "P"]
    country: str
    currency: str
    imageUrl: str
    prices: list[Price]
    faceValue: str
    percentageOffFaceValue: str
    isInstantDeliverySupported: bool
    descriptions: list[str]
    instructions: list[str]
    termConditions: list[str]
    pinKind: Literal["integer", "string"] = Field(
        description="(ours) `integer`: every PIN of its stock is an int32 exactly, so an account "
        "whose pinFormat is `integer` may buy it; `string`: any PIN, bought by `string` "
        "accounts only (docs/api.md, PIN format)."
    )


class ProductPage(BaseModel):
    total: int
    page: int
    pageSize: int
    totalPage: int
    items: list[ProductOut]


class BalanceOut(BaseModel):
    balance: str
    currency: str


class Rate(BaseModel):
    pair: str = Field(pattern=r"^[A-Z]{6}$")
    base: str = Field(pattern=r"^[A-Z]{3}$")
    quote: str = Field(pattern=r"^[A-Z]{3}$")
    rate: str = Field(pattern=r"^[0-9]+\.[0-9]{4}$")


class ExchangeRates(BaseModel):
    updatedAt: str
    productCurrencies: list[str]
    rates: list[Rate]


class ExchangeRatesEnvelope(BaseModel):
    requestId: str
    data: ExchangeRates


class CreatedOrderEnvelope(BaseModel):
    requestId: str
    data: CreatedOrderOut


class OrderEnvelope(BaseModel):
    requestId: str
    data: OrderOut


class OrderPageEnvelope(BaseModel):
    requestId: str
    data: OrderPage


class CodesEnvelope(BaseModel):
    requestId: str
    data: list[CodesLine]


class ProductPageEnvelope(BaseModel):
    requestId: str
    data: ProductPage


class BalancesEnvelope(BaseModel):
    requestId: str
    data: list[BalanceOut]


def answers(success: type[BaseModel], *errors: int) -> dict[int | str, dict[str, Any]]:
    """An operation's OpenAPI `responses`: its 200 body and its own error statuses."""
    return {200: {"model": success, "description": "Success"}, **error_responses(*errors)}
