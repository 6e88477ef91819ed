"""The ingress's domain: accounts pay for orders from currency wallets; orders are decided
elsewhere and their status is mirrored here. No I/O in this module."""

from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_DOWN, Decimal
from uuid import UUID

from shared.contracts import OrderStatus

CENT = Decimal("0.01")


class DomainError(Exception):
    """A rule of the domain refused a request."""


class ProductNotFound(DomainError):
    pass


class ProductNotInstant(DomainError):
    pass


class InsufficientBalance(DomainError):
    def __init__(self, currency: str) -> None:
        super().__init__(currency)
        self.currency = currency


class UnsupportedCurrency(DomainError):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class DuplicateClientOrderNumber(DomainError):
    def __init__(self, client_order_number: str, transaction_id: str) -> None:
        super().__init__(client_order_number)
        self.client_order_number = client_order_number
        self.transaction_id = transaction_id


class AccountNotFound(DomainError):
    pass


class PipelineUnavailable(DomainError):
    """The broker cannot take the order now: refuse before charging anything."""


class Overloaded(DomainError):
    """This process has as many orders in progress as it takes: refuse before charging."""


@dataclass(frozen=True)
class Product:
    sku: str
    currency: str
    price: Decimal
    is_instant: bool
    active: bool


@dataclass(frozen=True)
class CreateInstantOrder:
    account_id: UUID
    sku: str
    client_order_number: str | None
    dup_check: bool
    pay_with_currency: str | None


@dataclass(frozen=True)
class Order:
    transaction_id: str
    account_id: UUID
    client_order_number: str
    sku: str
    quantity: int
    unit_price: Decimal
    currency: str
    grand_total: Decimal
    status: OrderStatus
    created_at: datetime
    stock_id: int | None = None
    sealed_code: str | None = None


def check_orderable(product: Product | None) -> Product:
    if product is None or not product.active:
        raise ProductNotFound()
    if not product.is_instant:
        raise ProductNotInstant()
    return product


def settlement_currency(product: Product, pay_with: str | None, wallets: set[str]) -> str:
    """The wallet an order is paid from. Without exchange rates, only the product's currency."""
    if pay_with is not None:
        if pay_with not in wallets:
            raise UnsupportedCurrency(
                f"payWithCurrency {pay_with} is not one of this account's balance currencies "
                f"({', '.join(sorted(wallets)) or 'none'})."
            )
        if pay_with != product.currency:
            raise UnsupportedCurrency(
                f"This product is priced in {product.currency}; paying in {pay_with} needs "
                f"exchange rates, which are not offered yet. Pay with {product.currency}."
            )
        return pay_with
    if product.currency not in wallets:
        raise UnsupportedCurrency(
            f"This account has no {product.currency} balance to pay for this product: "
            "set payWithCurrency to one of your balance currencies, or ask for a "
            f"{product.currency} balance."
        )
    return product.currency


def split_evenly(amount: Decimal, parts: int) -> list[Decimal]:
    """Cents spread over `parts` slots; the rounding remainder goes to the first slots."""
    share = (amount / parts).quantize(CENT, rounding=ROUND_DOWN)
    shares = [share] * parts
    remainder_cents = int((amount - share * parts) / CENT)
    for i in range(remainder_cents):
        shares[i] += CENT
    return shares
