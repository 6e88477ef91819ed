"""The ingress's domain: accounts pay for orders from currency wallets; orders are decided
elsewhere and their status is mirrored here. No I/O in this module.

An order's life: accepted PROCESSING (paid for, recorded); then COMPLETED with a code, or
backordered (still PROCESSING, waiting for stock) and later COMPLETED or CANCELLED with a
reason (and refunded). COMPLETED and CANCELLED are final. The repositories apply each
transition only to an order still PROCESSING (in SQL, `WHERE status = 'PROCESSING'`: the
guard that makes concurrent deliveries of one outcome apply it once); the methods below state
the same rule.

A wallet (one account's balance in one currency) is held in slots, so that orders of one
account paying at the same time take different rows: see `Wallet`.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, Decimal
from typing import Literal
from uuid import UUID

from shared.contracts import CancelReason, OrderStatus, PinKind

# How an account receives PINs (docs/api.md, "PIN format"): `integer` is EZ's wire type (a
# 32-bit integer in the public EZ v2 descriptions), `string` the PIN exactly as stocked.
PinFormat = Literal["integer", "string"]
PIN_FORMATS: tuple[PinFormat, ...] = ("integer", "string")


CENT = Decimal("0.01")


class DomainError(Exception):
    """A rule of the domain refused a request."""


class ProductNotFound(DomainError):
    pass


class ProductNotInstant(DomainError):
    pass


class ProductPinNotInteger(DomainError):
    """An account receiving integer PINs ordered a product whose PINs may not be integers."""

    def __init__(self, sku: str) -> None:
        super().__init__(sku)
        self.sku = sku


class InvalidBulkOrder(DomainError):
    """A bulk order's lines break a rule the request model cannot state (its size, its SKUs
    repeated, its currencies mixed)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InsufficientBalance(DomainError):
    def __init__(self, currency: str) -> None:
        super().__init__(currency)
        self.currency = currency


class UnsupportedCurrency(DomainError):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NoExchangeRate(UnsupportedCurrency):
    """No rate is set for the pair an order paid in another currency needs."""

    def __init__(self, pair: str) -> None:
        super().__init__(
            f"No exchange rate {pair} is set, so this product cannot be paid in "
            f"{pair[3:]}: pay with {pair[:3]}, or ask for the rate {pair} to be set "
            "(GET /v2/exchange-rates lists the rates offered)."
        )
        self.pair = pair


class DuplicateClientOrderNumber(DomainError):
    def __init__(self, client_order_number: str, transaction_id: str) -> None:
        super().__init__(client_order_number)
        self.client_order_number = client_order_number
        self.transaction_id = transaction_id


class AccountNotFound(DomainError):
    pass


class OrderNotFound(DomainError):
    pass


class IdempotencyKeyReused(DomainError):
    """An operator's credit came with a key an earlier, different credit was made with."""

    def __init__(self, earlier: "OperatorCredit") -> None:
        super().__init__(earlier.idempotency_key)
        self.earlier = earlier


class IllegalTransition(DomainError):
    """An order was asked to move where its life does not go (a final order changing)."""

    def __init__(self, transaction_id: str, status: OrderStatus, to: str) -> None:
        super().__init__(f"order {transaction_id} is {status}: it cannot become {to}")
        self.transaction_id = transaction_id
        self.status = status


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
    pin_kind: PinKind = "string"  # ProductSnapshot.pin_kind
    version: int = 0
    """The catalog version the read model held it at (0: not known)."""


@dataclass(frozen=True)
class CreateInstantOrder:
    account_id: UUID
    sku: str
    client_order_number: str | None
    dup_check: bool
    pay_with_currency: str | None
    pin_format: PinFormat = "string"  # the ordering account's


@dataclass(frozen=True)
class ExchangeRate:
    """1 unit of `base` buys `rate` units of `quote`, as an operator set it at `as_of`."""

    base: str
    quote: str
    rate: Decimal
    as_of: datetime

    @property
    def pair(self) -> str:
        return self.base + self.quote


@dataclass(frozen=True)
class FxApplied:
    """What an order paid in another currency was converted with, kept on the order: the
    product's own price and currency, and the rate in force when it was accepted."""

    product_currency: str
    unit_price_original: Decimal
    rate: Decimal
    as_of: datetime

    def pair(self, pay_currency: str) -> str:
        return self.product_currency + pay_currency


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
    backordered_at: datetime | None = None
    cancel_reason: str | None = None
    # Set when the order was paid in another currency than the product's: `unit_price`,
    # `grand_total` and `currency` are then what was charged (and what a refund gives back).
    fx: FxApplied | None = None
    # The bulk order this order is one unit of (None: an instant order).
    bulk_id: str | None = None

    @property
    def backordered(self) -> bool:
        return self.backordered_at is not None

    def undecided_past(self, deadline: timedelta, now: datetime) -> bool:
        """Still PROCESSING with no decision heard of (not backordered), and older than the
        deadline every order has: it is to end cancelled and refunded. Inventory, the one
        that decides orders, is asked to cancel it; it cancels only an order it never
        decided, or one still waiting for stock."""
        return (
            self.status == "PROCESSING"
            and not self.backordered
            and now - self.created_at >= deadline
        )

    def complete(self, stock_id: int, sealed_code: str) -> "Order":
        """PROCESSING (backordered or not) → COMPLETED with its code."""
        self._must_be_processing("COMPLETED")
        return replace(self, status="COMPLETED", stock_id=stock_id, sealed_code=sealed_code)

    def backorder(self, at: datetime) -> "Order":
        """Inventory had no code: the order stays PROCESSING and waits; said once."""
        self._must_be_processing("backordered")
        if self.backordered:
            raise IllegalTransition(self.transaction_id, self.status, "backordered again")
        return replace(self, backordered_at=at)

    def cancel(self, reason: CancelReason) -> "Order":
        """PROCESSING → CANCELLED; the order's grand total is then refunded, once."""
        self._must_be_processing("CANCELLED")
        return replace(self, status="CANCELLED", cancel_reason=reason)

    def _must_be_processing(self, to: str) -> None:
        if self.status != "PROCESSING":
            raise IllegalTransition(self.transaction_id, self.status, to)


@dataclass(frozen=True)
class MoneyMove:
    """One ledger entry of an order: its DEBIT (negative) or REFUND."""

    kind: str
    amount: Decimal
    currency: str
    at: datetime


@dataclass(frozen=True)
class OrderHistory:
    """What the api knows of one order's life, for operators."""

    order: Order
    updated_at: datetime
    asked_again_at: datetime | None
    money: list[MoneyMove]


@dataclass(frozen=True)
class Credential:
    """A live credential found by its hash, with its account's own rate limit."""

    account_id: UUID
    kind: str  # API_KEY | TOKEN
    secret_hash: bytes
    rate_limit_per_s: Decimal | None
    pin_format: PinFormat = "integer"


@dataclass(frozen=True)
class AccountInfo:
    account_id: UUID
    name: str
    created_at: datetime
    # While set, no credential of the account authenticates.
    disabled_at: datetime | None = None
    pin_format: PinFormat = "integer"


@dataclass(frozen=True)
class OperatorCredit:
    """Money an operator adds to an account, with the idempotency key that makes a retry of
    the same credit apply once."""

    idempotency_key: str
    account_id: UUID
    currency: str
    amount: Decimal
    at: datetime | None = None  # when it was applied; None before

    def retried_by(self, other: "OperatorCredit") -> bool:
        """Whether `other` asks for this same credit again (so nothing more is added), as
        opposed to another credit that reuses the key."""
        return (self.account_id, self.currency, self.amount) == (
            other.account_id,
            other.currency,
            other.amount,
        )


def one_code_order(
    transaction_id: str,
    account_id: UUID,
    client_order_number: str,
    sku: str,
    currency: str,
    priced: "Priced",
    placed_at: datetime,
) -> Order:
    """A new order of one code of `sku`, PROCESSING, charged `priced` in `currency`
    (`price_in`): an instant order, or a unit of a bulk order."""
    return Order(
        transaction_id=transaction_id,
        account_id=account_id,
        client_order_number=client_order_number,
        sku=sku,
        quantity=1,
        unit_price=priced.unit_price,
        currency=currency,
        grand_total=priced.unit_price,
        status="PROCESSING",
        created_at=placed_at,
        fx=priced.fx,
    )


def check_orderable(
    product: Product | None, instant: bool = True, pin_format: PinFormat = "string"
) -> Product:
    """The product an order may buy. `isInstantDeliverySupported` is about the instant
    endpoint only: a bulk order (`instant=False`) may buy any active product. An account
    receiving integer PINs may buy only products whose PINs are integers (their stock is
    checked at intake): it could not be sent another one's PIN."""
    if product is None or not product.active:
        raise ProductNotFound()
    if instant and not product.is_instant:
        raise ProductNotInstant()
    if pin_format == "integer" and product.pin_kind != "integer":
        raise ProductPinNotInteger(product.sku)
    return product


def settlement_currency(product: Product, pay_with: str | None, wallets: set[str]) -> str:
    """The wallet an order is paid from: `payWithCurrency` if given (one of the account's
    balance currencies), else the product's currency, which the account must then hold.
    Another currency than the product's is converted (`price_in`)."""
    if pay_with is not None:
        if pay_with not in wallets:
            raise UnsupportedCurrency(
                f"payWithCurrency {pay_with} is not one of this account's balance currencies "
                f"({', '.join(sorted(wallets)) or 'none'})."
            )
        return pay_with
    if product.currency not in wallets:
        raise UnsupportedCurrency(
            f"This account has no {product.currency} balance to pay for this product: "
            "set payWithCurrency to one of your balance currencies, or ask for a "
            f"{product.currency} balance."
        )
    return product.currency


# Digits after the point of a currency's minor unit (ISO 4217), where it is not 2. Amounts are
# held with 2 decimals everywhere; in these currencies a converted price is whole.
MINOR_UNIT_DIGITS = {
    "BIF": 0, "CLP": 0, "DJF": 0, "GNF": 0, "ISK": 0, "JPY": 0, "KMF": 0, "KRW": 0,
    "PYG": 0, "RWF": 0, "UGX": 0, "UYI": 0, "VND": 0, "VUV": 0, "XAF": 0, "XOF": 0, "XPF": 0,
}  # fmt: skip


def minor_unit(currency: str) -> Decimal:
    return Decimal(1).scaleb(-MINOR_UNIT_DIGITS.get(currency, 2))


@dataclass(frozen=True)
class Priced:
    """An order's unit price in the currency it is paid in, and the conversion (if any)."""

    unit_price: Decimal
    fx: FxApplied | None = None


def price_in(
    price: Decimal, product_currency: str, pay_currency: str, rates: dict[str, ExchangeRate]
) -> Priced:
    """The one conversion of a product's price into the currency it is paid in: price x the
    rate of the pair PRODUCT+PAY (1 unit of the product's currency = rate units of the pay
    currency), rounded half-even to the pay currency's minor unit. Only that pair is read:
    its inverse is never inverted (NoExchangeRate when the pair is not set)."""
    if pay_currency == product_currency:
        return Priced(price)
    rate = rates.get(product_currency + pay_currency)
    if rate is None:
        raise NoExchangeRate(product_currency + pay_currency)
    charged = (price * rate.rate).quantize(minor_unit(pay_currency), rounding=ROUND_HALF_EVEN)
    if charged <= 0:
        # never a code for nothing: a price that converts to less than one minor unit
        raise UnsupportedCurrency(
            f"At the rate {product_currency}{pay_currency} {rate.rate}, this product's price "
            f"{price} {product_currency} is less than one {minor_unit(pay_currency)} "
            f"{pay_currency}: pay with {product_currency}, or in another currency."
        )
    return Priced(charged, FxApplied(product_currency, price, rate.rate, rate.as_of))


# Bounds of an operator-set rate: positive, at most 6 decimals and 12 digits before the point.
RATE_DECIMALS = 6
RATE_MAX = Decimal("1e12")


def check_rate(base: str, quote: str, rate: Decimal) -> None:
    """Refuses a rate that could not be stored exactly or would make no sense."""
    if base == quote:
        raise InvalidRate(f"base and quote are both {base}: a rate needs two currencies.")
    if not rate.is_finite() or rate <= 0 or rate >= RATE_MAX:
        raise InvalidRate(f"rate {rate} must be positive and below {RATE_MAX:,.0f}.")
    exponent = rate.normalize().as_tuple().exponent
    if isinstance(exponent, int) and exponent < -RATE_DECIMALS:
        raise InvalidRate(f"rate {rate} has more than {RATE_DECIMALS} decimals.")


class InvalidRate(DomainError):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def split_evenly(amount: Decimal, parts: int, currency: str) -> list[Decimal]:
    """`amount` spread over `parts` slots in whole minor units of `currency` (cents; whole
    yen); the rounding remainder goes to the first slots, one unit each, and what is left of
    an amount not in whole minor units (a credit of 0.50 JPY) to the first slot: the shares
    always sum to `amount` exactly."""
    unit = minor_unit(currency)
    share = (amount / parts).quantize(unit, rounding=ROUND_DOWN)
    shares = [share] * parts
    remainder_units = int((amount - share * parts) // unit)
    for i in range(remainder_units):
        shares[i] += unit
    shares[0] += amount - sum(shares, Decimal(0))
    return shares


def rebalanced(balances: Sequence[Decimal], amount: Decimal, currency: str) -> list[Decimal] | None:
    """The slow path of a debit: the slots' sum pays `amount` and what is left is spread
    evenly over them again. None when the whole balance is below `amount`."""
    total = sum(balances, Decimal(0))
    if total < amount:
        return None
    return split_evenly(total - amount, len(balances), currency)


@dataclass
class Wallet:
    """One account's balance in one currency, held in slots (slot i holds `slots[i]`).

    - A credit (money in, a refund) is split evenly over `wallet_slots` slots.
    - A debit is paid by ONE slot that holds the whole amount (any such slot not busy with
      another order: PostgreSQL picks one at random, so concurrent orders of one account
      rarely wait for each other); a batch of orders of one wallet is paid as one sum.
    - When no single slot holds it, every slot is taken together (`rebalanced`).
    - No slot ever goes below zero: a debit the whole balance cannot pay is refused.
    """

    currency: str
    slots: list[Decimal] = field(default_factory=list)

    @property
    def balance(self) -> Decimal:
        return sum(self.slots, Decimal(0))

    def credit(self, amount: Decimal, wallet_slots: int) -> None:
        self.slots += [Decimal(0)] * (wallet_slots - len(self.slots))
        for i, share in enumerate(split_evenly(amount, wallet_slots, self.currency)):
            self.slots[i] += share

    def slots_that_pay(self, amount: Decimal) -> list[int]:
        return [i for i, balance in enumerate(self.slots) if balance >= amount]

    def take_from_one_slot(self, amount: Decimal, choose: Callable[[list[int]], int] = min) -> bool:
        """Pays `amount` from one slot that holds it (`choose` picks among them); False,
        nothing taken, when none does."""
        able = self.slots_that_pay(amount)
        if not able:
            return False
        self.slots[choose(able)] -= amount
        return True

    def take_from_all_slots(self, amount: Decimal) -> bool:
        after = rebalanced(self.slots, amount, self.currency)
        if after is None:
            return False
        self.slots = after
        return True

    def pay(self, amount: Decimal, choose: Callable[[list[int]], int] = min) -> None:
        """One slot if one holds `amount`, else all of them; InsufficientBalance otherwise."""
        if not (self.take_from_one_slot(amount, choose) or self.take_from_all_slots(amount)):
            raise InsufficientBalance(self.currency)


# --- bulk orders ------------------------------------------------------------------------------

# The most units one bulk order may ask for, over all its lines (each line asks 1..10,000).
BULK_MAX_UNITS = 10_000


@dataclass(frozen=True)
class BulkLine:
    sku: str
    quantity: int


@dataclass(frozen=True)
class CreateBulkOrder:
    account_id: UUID
    lines: tuple[BulkLine, ...]
    client_order_number: str | None
    dup_check: bool
    pay_with_currency: str | None
    pin_format: PinFormat = "string"  # the ordering account's


def check_bulk_lines(lines: Sequence[BulkLine]) -> None:
    """A SKU appears on one line only (ask for its total quantity once), and the order asks
    for at most BULK_MAX_UNITS units."""
    seen: set[str] = set()
    for line in lines:
        if line.sku in seen:
            raise InvalidBulkOrder(
                f"SKU {line.sku} appears on more than one line: put its whole quantity on one line."
            )
        seen.add(line.sku)
    total = sum(line.quantity for line in lines)
    if total > BULK_MAX_UNITS:
        raise InvalidBulkOrder(
            f"This order asks for {total} units; one bulk order takes at most "
            f"{BULK_MAX_UNITS}: split it into several orders."
        )


def bulk_currency(products: Sequence[Product]) -> str:
    """The one currency every product of a bulk order is priced in."""
    currencies = sorted({p.currency for p in products})
    if len(currencies) > 1:
        raise InvalidBulkOrder(
            f"The products of one bulk order must share one currency; these are priced in "
            f"{', '.join(currencies)}: place one order per currency."
        )
    return currencies[0]


def unit_id(bulk_id: str, n: int) -> str:
    """The transactionId of the n-th unit (from 1) of a bulk order."""
    # zero-padded (at most BULK_MAX_UNITS): units waiting with one placed_at are served in
    # the order of their ids, so -00002 before -00010
    return f"{bulk_id}-{n:05d}"


def unit_number(unit: Order) -> int:
    """n of a unit whose transactionId is `unit_id(bulk_id, n)`: units sort by it."""
    return int(unit.transaction_id.rsplit("-", 1)[1])


def rolled_up(statuses: Sequence[OrderStatus]) -> OrderStatus:
    """The status of a line (of its units) or of an order (of its lines): PROCESSING while
    any is; then COMPLETED if at least one was delivered (the rest cancelled and refunded);
    CANCELLED when none was."""
    if "PROCESSING" in statuses:
        return "PROCESSING"
    return "COMPLETED" if "COMPLETED" in statuses else "CANCELLED"


@dataclass(frozen=True)
class BulkOrder:
    """An order of several units: each unit is an Order of its own (`bulk_id` set, its
    transactionId `unit_id(...)`) that inventory decides like an instant order; the bulk
    order's statuses are rolled up from them."""

    transaction_id: str
    account_id: UUID
    client_order_number: str
    currency: str
    grand_total: Decimal
    created_at: datetime
    units: tuple[Order, ...]

    @property
    def lines(self) -> list[tuple[str, list[Order]]]:
        """(sku, its units in unit order) per line, in the order the request gave them."""
        by_sku: dict[str, list[Order]] = {}
        for unit in self.units:
            by_sku.setdefault(unit.sku, []).append(unit)
        return list(by_sku.items())

    @property
    def status(self) -> OrderStatus:
        return rolled_up([rolled_up([u.status for u in units]) for _, units in self.lines])

    @property
    def refunded(self) -> Decimal:
        """What the cancelled units gave back: each its own price, once."""
        return sum((u.grand_total for u in self.units if u.status == "CANCELLED"), Decimal(0))


def new_bulk_order(
    cmd: CreateBulkOrder,
    transaction_id: str,
    currency: str,
    priced: dict[str, Priced],
    placed_at: datetime,
) -> BulkOrder:
    """The bulk order and its units, each unit charged its SKU's `priced` unit price in
    `currency` (`price_in`: converted when paid in another currency than the product's)."""
    units: list[Order] = []
    for line in cmd.lines:
        for _ in range(line.quantity):
            unit = one_code_order(
                unit_id(transaction_id, len(units) + 1),
                cmd.account_id,
                cmd.client_order_number or "",
                line.sku,
                currency,
                priced[line.sku],
                placed_at,
            )
            units.append(replace(unit, bulk_id=transaction_id))
    return BulkOrder(
        transaction_id=transaction_id,
        account_id=cmd.account_id,
        client_order_number=cmd.client_order_number or "",
        currency=currency,
        grand_total=sum((u.grand_total for u in units), Decimal(0)),
        created_at=placed_at,
        units=tuple(units),
    )
