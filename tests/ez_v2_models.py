"""The public EZ Cards v2 success bodies as a strictly typed generated client decodes them:
`strict=True` (no coercion: an integer is an integer, money is a string), every non-nullable
field required and not None. Bulk orders and FX fields are included, optional, for when those
operations exist."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

ABSENT: Any = None  # optional and absent, but never null when present (pydantic strict)
Int32 = Field(ge=-(2**31), le=2**31 - 1)
Status = Literal["PROCESSING", "COMPLETED", "CANCELLED"]


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class Money(Strict):
    amount: str = Field(pattern=r"^-?[0-9]+\.[0-9]+$")
    currency: str


class FxSummary(Strict):
    pair: str
    rate: str
    asOfDate: str


class OrderProduct(Strict):
    sku: str
    quantity: int = Int32
    unitPrice: Money
    totalPrice: Money
    status: Status


class OrderResponse(Strict):
    transactionId: str
    # A string in the public EZ v2 descriptions (optional there; we always send it).
    ezOrderNumber: str = Field(pattern=r"^[0-9]+$")
    clientOrderNumber: str
    grandTotal: Money
    createdAt: str
    status: Status
    products: list[OrderProduct]
    payWithCurrency: str = ABSENT
    unitPriceOriginal: Money = ABSENT
    fxSummary: list[FxSummary] = ABSENT


class OrderPage(Strict):
    total: int
    page: int
    pageSize: int
    totalPage: int
    items: list[OrderResponse]


class CodeOf(Strict):
    stockId: int | None = Int32
    status: Status
    redeemCode: str | None
    pinCode: int | None = Int32


class StringPinCode(CodeOf):
    pinCode: str | None  # type: ignore[assignment]  # an account set to pinFormat string


class CodesLine(Strict):
    sku: str
    quantity: int
    codes: list[CodeOf]


class StringPinCodesLine(CodesLine):
    codes: list[StringPinCode]  # type: ignore[assignment]


class Price(Strict):
    price: str
    fromQuantity: int
    toQuantity: int


class Product(Strict):
    sku: str
    name: str
    brand: str
    brandCategory: str | None = ABSENT
    brandSubCategory: str | None = ABSENT
    types: list[str]
    format: Literal["D", "P"]
    country: str | None = ABSENT
    currency: str
    imageUrl: str | None = ABSENT
    prices: list[Price]
    faceValue: str
    percentageOffFaceValue: str
    isInstantDeliverySupported: bool
    descriptions: list[str]
    instructions: list[str]
    termConditions: list[str]


class ProductPage(Strict):
    total: int
    page: int
    pageSize: int
    totalPage: int
    items: list[Product]


class Balance(Strict):
    balance: str
    currency: str


class Rate(Strict):
    pair: str
    base: str
    quote: str
    rate: str = Field(pattern=r"^[0-9]+\.[0-9]{4}$")


class ExchangeRates(Strict):
    updatedAt: str
    productCurrencies: list[str]
    rates: list[Rate]


def envelope(data: Any) -> type[Strict]:
    return create_model("Envelope", __base__=Strict, requestId=(str, ...), data=(data, ...))


# (method, route template) -> the success body's model, (for pinFormat string accounts).
SUCCESS: dict[tuple[str, str], type[Strict]] = {
    ("POST", "/v2/orders/instant"): envelope(OrderResponse),
    ("POST", "/v2/orders"): envelope(OrderResponse),
    ("GET", "/v2/orders"): envelope(OrderPage),
    ("GET", "/v2/orders/{transactionId}"): envelope(OrderResponse),
    ("GET", "/v2/orders/{transactionId}/codes"): envelope(list[CodesLine]),
    ("GET", "/v2/products"): envelope(ProductPage),
    ("GET", "/v2/balances"): envelope(list[Balance]),
    ("GET", "/v2/exchange-rates"): envelope(ExchangeRates),
}
STRING_PIN_CODES = envelope(list[StringPinCodesLine])
