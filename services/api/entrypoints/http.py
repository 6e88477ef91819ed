"""The public EZ-Cards-v2-compatible API (../docs/api.md). Thin: parse, call a use case,
shape the answer."""

import hashlib
import logging
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Annotated, Any, Literal

from cryptography.exceptions import InvalidTag
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError
from starlette.types import Scope

from services.api import metrics
from services.api.domain.model import (
    BULK_MAX_UNITS,
    BulkLine,
    BulkOrder,
    CreateBulkOrder,
    CreateInstantOrder,
    DomainError,
    DuplicateClientOrderNumber,
    ExchangeRate,
    InsufficientBalance,
    InvalidBulkOrder,
    Order,
    Overloaded,
    PinFormat,
    PipelineUnavailable,
    ProductNotFound,
    ProductNotInstant,
    ProductPinNotInteger,
    UnsupportedCurrency,
    rolled_up,
)
from services.api.entrypoints import schemas
from services.api.entrypoints.schemas import answers
from services.api.service_layer import fx, read_model
from services.api.service_layer.accounts import (
    AuthenticationBusy,
    Authenticator,
    Caller,
    LoginsThrottled,
)
from services.api.service_layer.orders import OrderDesk, bulk_order, place_bulk
from services.api.service_layer.unit_of_work import LockTimeout, TransactionConflict, UnitOfWork
from shared.contracts import MoneyOut, rate_out, utcnow
from shared.crypto import Code, CodeVault, KeyConfigError, SealedCode, pin_as_integer
from shared.web import ApiError, error_responses, ok, paged

# Every /v2 operation can answer these (the common middleware, authentication, the rate limit
# and the database apply to all of them); the routes add their own.
log = logging.getLogger(__name__)
router = APIRouter(prefix="/v2", responses=error_responses(400, 401, 413, 415, 429, 500, 503))


class RateLimiter:
    """A token bucket per account, in this instance's memory."""

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self._rate, self._burst = rate_per_s, float(burst)
        self._buckets: dict[uuid.UUID, tuple[float, float]] = {}

    def retry_after(self, account_id: uuid.UUID, rate_per_s: float | None = None) -> float:
        """0 if the request may go ahead, else seconds to wait. An account's own rate (set by
        an operator) replaces the default rate, and its burst is one second of that rate."""
        rate = rate_per_s or self._rate
        burst = max(1.0, rate) if rate_per_s else self._burst
        now = time.monotonic()
        tokens, last = self._buckets.get(account_id, (burst, now))
        tokens = min(burst, tokens + (now - last) * rate)
        if tokens < 1:
            self._buckets[account_id] = (tokens, now)
            return (1 - tokens) / rate
        self._buckets[account_id] = (tokens - 1, now)
        return 0.0


@dataclass
class ApiServices:
    new_uow: Callable[[], UnitOfWork]
    order_desk: OrderDesk
    auth: Authenticator
    vault: CodeVault
    limiter: RateLimiter


async def services(request: Request) -> ApiServices:
    # async: FastAPI runs a plain `def` dependency in a worker thread, on every request.
    svc: ApiServices = request.app.state.services
    return svc


Services = Annotated[ApiServices, Depends(services)]

UNAUTHORIZED = ApiError(
    401,
    "UNAUTHORIZED",
    "Missing or invalid credentials: send the x-api-key header and "
    "'Authorization: Bearer <token>' issued to your account.",
)


API_KEY_MAX, AUTHORIZATION_MAX = 200, 300


async def current_caller(
    request: Request,
    svc: Services,
    x_api_key: Annotated[str | None, Header(max_length=API_KEY_MAX)] = None,
    authorization: Annotated[str | None, Header(max_length=AUTHORIZATION_MAX)] = None,
) -> Caller:
    return await authenticate_caller(svc, x_api_key, authorization, request.scope)


async def current_account(caller: Annotated[Caller, Depends(current_caller)]) -> uuid.UUID:
    return caller.account_id


def logins_throttled(exc: LoginsThrottled) -> ApiError:
    return ApiError(
        429,
        "RATE_LIMITED",
        "Too many failed authentications from your address or with this API key: check the "
        "x-api-key and token your account was issued, then retry after the delay given.",
        headers={"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))},
    )


AUTHENTICATION_BUSY = ApiError(
    503,
    "SERVICE_UNAVAILABLE",
    "Credentials cannot be checked right now; nothing was charged. Retry after the delay given.",
    headers={"Retry-After": "1"},
)


async def authenticate_caller(
    svc: ApiServices, x_api_key: str | None, authorization: str | None, scope: Scope
) -> Caller:
    """The caller, from its credentials; 401, 429 or 503 otherwise. The client's address (in
    the ASGI `scope`) is read only when the credentials are not cached."""
    scheme, _, token = (authorization or "").partition(" ")
    if not x_api_key or scheme.lower() != "bearer" or not token.strip():
        metrics.AUTH_MISSING.inc()
        raise UNAUTHORIZED
    api_key, token = x_api_key.strip(), token.strip()
    caller = svc.auth.cached(api_key, token)
    if caller is None:
        try:
            caller = await svc.auth.caller(api_key, token, scope.get("client"))
        except LoginsThrottled as exc:
            raise logins_throttled(exc) from None
        except AuthenticationBusy:
            raise AUTHENTICATION_BUSY from None
        if caller is None:
            raise UNAUTHORIZED
    wait = svc.limiter.retry_after(caller.account_id, caller.rate_limit_per_s)
    if wait > 0:
        raise ApiError(
            429,
            "RATE_LIMITED",
            "Too many requests for this account: slow down and retry after the delay given.",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )
    return caller


CurrentAccount = Annotated[uuid.UUID, Depends(current_account)]
CurrentCaller = Annotated[Caller, Depends(current_caller)]


def iso_utc(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def money(amount: Any, currency: str) -> dict[str, str]:
    return MoneyOut.of(amount, currency).model_dump()


def ez_order_number(transaction_id: str) -> str:
    """EZ's order number, which clients read: the decimal digits of a positive int32 derived
    from the transactionId, so it is the same on every answer about the order and needs no
    column. A string, as the public EZ v2 descriptions type it (docs/api.md)."""
    digest = hashlib.blake2b(transaction_id.encode(), digest_size=4).digest()
    return str(int.from_bytes(digest, "big") % (2**31 - 1) + 1)


def order_out(order: Order) -> dict[str, Any]:
    unit = money(order.unit_price, order.currency)
    return {
        "transactionId": order.transaction_id,
        "ezOrderNumber": ez_order_number(order.transaction_id),
        "clientOrderNumber": order.client_order_number,
        "grandTotal": money(order.grand_total, order.currency),
        "createdAt": iso_utc(order.created_at),
        "status": order.status,
        "products": [
            {
                "sku": order.sku,
                "quantity": order.quantity,
                "unitPrice": unit,
                "totalPrice": money(order.unit_price * order.quantity, order.currency),
                "status": order.status,
            }
        ],
    }


def created_order_out(order: Order) -> dict[str, Any]:
    """The create response: an order paid in another currency than its product's also says
    how it was converted (Get Orders items do not)."""
    out = order_out(order)
    if order.fx is not None:
        out["payWithCurrency"] = order.currency
        out["unitPriceOriginal"] = money(order.fx.unit_price_original, order.fx.product_currency)
        out["fxSummary"] = [
            {
                "pair": order.fx.pair(order.currency),
                "rate": rate_out(order.fx.rate),
                "asOfDate": iso_utc(order.fx.as_of),
            }
        ]
    return out


class CreateInstantOrderIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    # A NUL (PostgreSQL refuses it in text, and one such order would fail the whole batch of
    # orders accepted with it) never gets here: CommonMiddleware refuses it in any body.
    sku: str = Field(min_length=1, max_length=64)
    clientOrderNumber: str | None = Field(None, min_length=1, max_length=100)
    enableClientOrderNumberDupCheck: StrictBool = False
    payWithCurrency: str | None = Field(None, pattern=r"^[A-Z]{3}$")


def as_api_error(exc: DomainError) -> ApiError:
    match exc:
        case ProductNotFound():
            return ApiError(
                400,
                "PRODUCT_NOT_FOUND",
                "No active product has this SKU: check it against Get Products.",
            )
        case ProductNotInstant():
            return ApiError(
                400,
                "PRODUCT_NOT_INSTANT",
                "This product does not support instant delivery: order it in bulk.",
            )
        case ProductPinNotInteger():
            return ApiError(
                400,
                "PRODUCT_PIN_NOT_INTEGER",
                f"Product {exc.sku} may hold PINs that are not integers, and your account "
                "receives pinCode as an integer: nothing was charged. Order products whose "
                "pinKind is integer (Get Products), or ask your operator to set your account's "
                "pinFormat to string.",
                extra={"sku": exc.sku},
            )
        case InsufficientBalance():
            return ApiError(
                400,
                "INSUFFICIENT_BALANCE",
                f"Your {exc.currency} balance is below the price of this order: "
                "top it up, then retry.",
            )
        case UnsupportedCurrency():
            return ApiError(422, "UNSUPPORTED_CURRENCY", exc.message)
        case InvalidBulkOrder():
            return ApiError(400, "INVALID_REQUEST", exc.message)
        case DuplicateClientOrderNumber():
            return ApiError(
                409,
                "CLIENT_ORDER_NUMBER_DUPLICATE",
                "You already have an order with this clientOrderNumber: poll it by its "
                "transactionId instead of ordering again.",
                extra={
                    "clientOrderNumber": exc.client_order_number,
                    "transactionId": exc.transaction_id,
                },
            )
        case Overloaded():
            return ApiError(
                503,
                "SERVICE_UNAVAILABLE",
                "Too many orders are in progress right now; nothing was charged. Retry after "
                "the delay given.",
                headers={"Retry-After": "1"},
            )
        case PipelineUnavailable():
            return ApiError(
                503,
                "SERVICE_UNAVAILABLE",
                "Orders cannot be accepted right now; nothing was charged. Retry "
                "after the delay given.",
                headers={"Retry-After": "5"},
            )
    return ApiError(500, "INTERNAL_ERROR", "Unexpected error; nothing was charged.")


def _credential_headers(request: Request) -> tuple[str | None, str | None]:
    """The two credential headers, bounded as the other routes' Header(max_length=...)."""
    x_api_key = request.headers.get("x-api-key")
    authorization = request.headers.get("authorization")
    for name, value, bound in (
        ("x-api-key", x_api_key, API_KEY_MAX),
        ("authorization", authorization, AUTHORIZATION_MAX),
    ):
        if value is not None and len(value) > bound:
            raise RequestValidationError(
                [
                    {
                        "type": "string_too_long",
                        "loc": ("header", name),
                        "msg": f"String should have at most {bound} characters",
                    }
                ]
            )
    return x_api_key, authorization


INSTANT_ORDER_OPENAPI: dict[str, Any] = {
    "parameters": [
        {"name": "x-api-key", "in": "header", "schema": {"type": "string", "maxLength": 200}},
        {"name": "authorization", "in": "header", "schema": {"type": "string", "maxLength": 300}},
    ],
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": CreateInstantOrderIn.model_json_schema()}},
    },
}


INSTANT_ORDER_PATH = router.prefix + "/orders/instant"


@router.post(
    INSTANT_ORDER_PATH.removeprefix(router.prefix),
    response_model=None,
    openapi_extra=INSTANT_ORDER_OPENAPI,
    responses=answers(schemas.CreatedOrderEnvelope, 409, 422),
)
async def create_instant_order(request: Request) -> Response:
    """The hot path. It parses its own body and headers (the same model, bounds and errors as
    a declared body and Header parameters would give) and answers a ready JSONResponse:
    FastAPI's per-request dependency solving and response serialisation cost more CPU than
    the rest of the order (docs/decisions/instant-path-batching.md). The public app answers
    it without its router too (shared.web.HotRoutes)."""
    received = time.monotonic()  # the decision window counts from here
    svc: ApiServices = request.app.state.services
    if svc.order_desk.full:
        # Refused before its body is parsed and its caller authenticated: under overload most
        # requests are refused, and what each refusal costs is taken from the orders in flight.
        # Nothing is charged and nothing is told but that the service is busy.
        metrics.ORDERS_SHED.labels("in_flight").inc()
        raise as_api_error(Overloaded())
    x_api_key, authorization = _credential_headers(request)
    try:
        body = CreateInstantOrderIn.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        ) from None
    caller = await authenticate_caller(svc, x_api_key, authorization, request.scope)
    try:
        order = await svc.order_desk.place_instant(
            CreateInstantOrder(
                account_id=caller.account_id,
                sku=body.sku,
                client_order_number=body.clientOrderNumber,
                dup_check=body.enableClientOrderNumberDupCheck,
                pay_with_currency=body.payWithCurrency,
                pin_format=caller.pin_format,
            ),
            received,
        )
    except DomainError as exc:
        error = as_api_error(exc)
        metrics.ORDERS_REJECTED.labels(error.error).inc()
        raise error from None
    return JSONResponse(ok(created_order_out(order)))


class BulkLineIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    sku: str = Field(min_length=1, max_length=64)
    quantity: int = Field(ge=1, le=BULK_MAX_UNITS)


class CreateBulkOrderIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    clientOrderNumber: str | None = Field(None, min_length=1, max_length=100)
    enableClientOrderNumberDupCheck: StrictBool = False
    products: list[BulkLineIn] = Field(min_length=1, max_length=50)
    payWithCurrency: str | None = Field(None, pattern=r"^[A-Z]{3}$")


def bulk_order_out(bulk: BulkOrder) -> dict[str, Any]:
    """The EZ OrderResponse of a bulk order, one `products[]` line per SKU, plus (ours)
    `refundedTotal`: what the cancelled units gave back (grandTotal stays what was paid)."""
    lines = []
    for sku, units in bulk.lines:
        unit_price = units[0].unit_price
        lines.append(
            {
                "sku": sku,
                "quantity": len(units),
                "unitPrice": money(unit_price, bulk.currency),
                "totalPrice": money(unit_price * len(units), bulk.currency),
                "status": rolled_up([u.status for u in units]),
            }
        )
    return {
        "transactionId": bulk.transaction_id,
        "ezOrderNumber": ez_order_number(bulk.transaction_id),
        "clientOrderNumber": bulk.client_order_number,
        "grandTotal": money(bulk.grand_total, bulk.currency),
        "refundedTotal": money(bulk.refunded, bulk.currency),
        "createdAt": iso_utc(bulk.created_at),
        "status": bulk.status,
        "products": lines,
    }


def created_bulk_order_out(bulk: BulkOrder) -> dict[str, Any]:
    """The create response: a bulk order paid in another currency than its products' also
    says how it was converted (one pair: its products share one currency), and each line its
    product's own price (Get Orders items do not)."""
    out = bulk_order_out(bulk)
    fx = bulk.units[0].fx
    if fx is not None:
        out["payWithCurrency"] = bulk.currency
        out["fxSummary"] = [
            {
                "pair": fx.pair(bulk.currency),
                "rate": rate_out(fx.rate),
                "asOfDate": iso_utc(fx.as_of),
            }
        ]
        for line, (_, units) in zip(out["products"], bulk.lines, strict=True):
            unit_fx = units[0].fx
            assert unit_fx is not None
            line["unitPriceOriginal"] = money(unit_fx.unit_price_original, unit_fx.product_currency)
    return out


@router.post(
    "/orders", response_model=None, responses=answers(schemas.CreatedOrderEnvelope, 409, 422)
)
async def create_bulk_order(
    body: CreateBulkOrderIn, caller: CurrentCaller, svc: Services
) -> dict[str, Any]:
    """Always asynchronous: answers PROCESSING at once, with the whole grandTotal paid."""
    cmd = CreateBulkOrder(
        account_id=caller.account_id,
        lines=tuple(BulkLine(p.sku, p.quantity) for p in body.products),
        client_order_number=body.clientOrderNumber,
        dup_check=body.enableClientOrderNumberDupCheck,
        pay_with_currency=body.payWithCurrency,
        pin_format=caller.pin_format,
    )
    for _ in range(BULK_ATTEMPTS):
        try:
            bulk = await place_bulk(
                svc.new_uow(), cmd, lock_timeout_s=BULK_LOCK_TIMEOUT_S, rates=svc.order_desk.rates
            )
        except TransactionConflict:
            continue  # lost a deadlock on the wallet to other orders: rolled back, try again
        except LockTimeout:
            raise as_api_error(Overloaded()) from None
        except DomainError as exc:
            error = as_api_error(exc)
            metrics.ORDERS_REJECTED.labels(error.error).inc()
            raise error from None
        return ok(created_bulk_order_out(bulk))
    raise as_api_error(Overloaded())


@router.get("/orders", response_model=None, responses=answers(schemas.OrderPageEnvelope))
async def get_orders(
    account_id: CurrentAccount,
    svc: Services,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
    transactionId: Annotated[str | None, Query(max_length=64)] = None,
    clientOrderNumber: Annotated[str | None, Query(max_length=100)] = None,
    status: Literal["PROCESSING", "COMPLETED", "CANCELLED"] | None = None,
) -> dict[str, Any]:
    total, orders = await read_model.orders(
        svc.new_uow(),
        account_id,
        transaction_id=transactionId,
        client_order_number=clientOrderNumber,
        status=status,
        limit=limit,
        offset=(page - 1) * limit,
    )
    return ok(
        paged(
            total,
            page,
            limit,
            [bulk_order_out(o) if isinstance(o, BulkOrder) else order_out(o) for o in orders],
        )
    )


# The longest a bulk order waits for its wallet or dup-check lock before a 503.
# A bulk order that loses a deadlock on the wallet is tried again, then answered 503.
BULK_ATTEMPTS = 3
BULK_LOCK_TIMEOUT_S = 5.0

ORDER_NOT_FOUND = ApiError(
    404, "ORDER_NOT_FOUND", "No order of yours has this transactionId: check the id."
)


async def owned(svc: ApiServices, account_id: uuid.UUID, transaction_id: str) -> Order | BulkOrder:
    """The account's order or bulk order. An instant order (the common case) is one query: a
    bulk order is looked for only when no order has this id."""
    if len(transaction_id) > 64:
        raise ORDER_NOT_FOUND
    found: Order | BulkOrder | None = await read_model.order(
        svc.new_uow(), account_id, transaction_id
    )
    if found is None:
        found = await bulk_order(svc.new_uow(), account_id, transaction_id)
    if found is None:
        raise ORDER_NOT_FOUND
    return found


@router.get(
    "/orders/{transactionId}", response_model=None, responses=answers(schemas.OrderEnvelope, 404)
)
async def get_order(
    transactionId: str, account_id: CurrentAccount, svc: Services
) -> dict[str, Any]:
    found = await owned(svc, account_id, transactionId)
    return ok(bulk_order_out(found) if isinstance(found, BulkOrder) else order_out(found))


CODE_UNAVAILABLE = ApiError(
    503,
    "CODE_UNAVAILABLE",
    "This order's code cannot be read right now. The order and its code are kept: try again "
    "later, and contact support with the transactionId if this persists.",
    headers={"Retry-After": "60"},
)


def open_code(vault: CodeVault, order: Order) -> Code:
    """The order's code, in plaintext. One that does not open (its key is not configured,
    its ciphertext is damaged) is logged by transaction and stock id and counted, and the
    client gets CODE_UNAVAILABLE."""
    assert order.sealed_code is not None
    try:
        return vault.open_sold(SealedCode.from_wire(order.sealed_code), order.sku, order.stock_id)
    except (InvalidTag, ValueError) as exc:  # KeyConfigError is a ValueError
        reason = "key_not_configured" if isinstance(exc, KeyConfigError) else "unreadable"
        metrics.CODES_UNAVAILABLE.labels(reason).inc()
        log.error(
            "order %s: the code of stock id %s cannot be opened (%s, %s)",
            order.transaction_id,
            order.stock_id,
            reason,
            type(exc).__name__,
        )
        raise CODE_UNAVAILABLE from None


@router.get(
    "/orders/{transactionId}/codes",
    response_model=None,
    responses=answers(schemas.CodesEnvelope, 404, 409),
)
async def get_codes(
    transactionId: str,
    caller: CurrentCaller,
    svc: Services,
    sku: Annotated[str | None, Query(max_length=64)] = None,
    stockIds: Annotated[str | None, Query(max_length=2000, pattern=r"^[0-9]+(,[0-9]+)*$")] = None,
    status: Literal["PROCESSING", "COMPLETED", "CANCELLED"] | None = None,
) -> dict[str, Any]:
    found = await owned(svc, caller.account_id, transactionId)
    lines = found.lines if isinstance(found, BulkOrder) else [(found.sku, [found])]
    wanted = {int(s) for s in stockIds.split(",")} if stockIds else None
    out = []
    for line_sku, units in lines:
        if sku is not None and sku != line_sku:
            continue
        kept = [
            u
            for u in units
            if (status is None or status == u.status) and (wanted is None or u.stock_id in wanted)
        ]
        codes = [code_out(svc.vault, u, caller.pin_format) for u in kept]
        out.append({"sku": line_sku, "quantity": len(units), "codes": codes})
    return ok(out)


def code_out(vault: CodeVault, unit: Order, pin_format: PinFormat) -> dict[str, Any]:
    code: dict[str, Any] = {
        "stockId": unit.stock_id,
        "status": unit.status,
        "redeemCode": None,
        "pinCode": None,
    }
    if unit.status == "COMPLETED" and unit.sealed_code is not None:
        opened = open_code(vault, unit)
        code["redeemCode"] = opened.redeem_code
        code["pinCode"] = pin_out(opened.pin_code, pin_format, unit)
    return code


def pin_not_integer(order: Order) -> ApiError:
    return ApiError(
        409,
        "PIN_NOT_INTEGER",
        "This code's PIN cannot be sent as the integer pinCode your account receives: as an "
        "integer it would be another PIN (a leading zero, letters, or past 2147483647). The "
        "order and its code are kept: ask your operator to set your account's pinFormat to "
        "string, then fetch the codes again.",
        extra={"transactionId": order.transaction_id},
    )


def pin_out(pin: str | None, pin_format: PinFormat, order: Order) -> int | str | None:
    """The PIN as the account receives it, never altered: as an int32 (`integer`) only when
    the integer is exactly the PIN, else PIN_NOT_INTEGER; as stocked (`string`)."""
    if pin is None or pin_format == "string":
        return pin
    as_integer = pin_as_integer(pin)
    if as_integer is None:
        metrics.PINS_NOT_INTEGER.inc()
        log.warning(
            "order %s: its PIN is not an int32 and account %s receives integer PINs "
            "(instant-orders accounts set-pin-format %s string)",
            order.transaction_id,
            order.account_id,
            order.account_id,
        )
        raise pin_not_integer(order)
    return as_integer


def product_out(record: dict[str, Any]) -> dict[str, Any]:
    """A product as Get Products shows it. `faceValue` and `percentageOffFaceValue` are
    non-nullable strings in the EZ contract (a strictly typed client rejects the whole list
    on one null): a product stocked without a face value shows its price as the face value,
    0.00 % off."""
    hidden = ("price", "active", "backorderDeadlineSeconds")
    shown = {k: v for k, v in record.items() if k not in hidden}
    shown["prices"] = [{"price": record["price"], "fromQuantity": 1, "toQuantity": 1}]
    shown["pinKind"] = record.get("pinKind", "string")  # absent from snapshots before it
    price = Decimal(str(record["price"]))
    face = Decimal(str(record.get("faceValue") or price))
    shown["faceValue"] = f"{face:.2f}"
    if record.get("percentageOffFaceValue") is None:
        off = (face - price) / face * 100 if face > 0 else Decimal(0)
        shown["percentageOffFaceValue"] = f"{off.quantize(Decimal('0.01'), ROUND_HALF_EVEN):.2f}"
    else:
        shown["percentageOffFaceValue"] = str(record["percentageOffFaceValue"])
    return shown


@router.get("/products", response_model=None, responses=answers(schemas.ProductPageEnvelope))
async def get_products(
    _: CurrentAccount,
    svc: Services,
    limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
    sku: Annotated[str | None, Query(max_length=6500)] = None,
) -> dict[str, Any]:
    skus = [s.strip() for s in sku.split(",") if s.strip()] if sku else None
    if skus is not None and len(skus) > 100:
        raise ApiError(
            400,
            "INVALID_REQUEST",
            "Filter by at most 100 SKUs at once.",
            extra={"details": [{"field": "sku", "issue": "more than 100 SKUs"}]},
        )
    total, records = await read_model.products(svc.new_uow(), skus, limit, (page - 1) * limit)
    return ok(paged(total, page, limit, [product_out(r) for r in records]))


@router.get("/balances", response_model=None, responses=answers(schemas.BalancesEnvelope))
async def get_balances(
    account_id: CurrentAccount,
    svc: Services,
    currency: Annotated[str | None, Query(pattern=r"^[A-Z]{3}$")] = None,
) -> dict[str, Any]:
    rows = await read_model.balances(svc.new_uow(), account_id)
    return ok(
        [
            {"balance": f"{amount:.2f}", "currency": cur}
            for cur, amount in rows
            if currency is None or cur == currency
        ]
    )


def rate_shown(rate: ExchangeRate) -> dict[str, str]:
    return {
        "pair": rate.pair,
        "base": rate.base,
        "quote": rate.quote,
        "rate": f"{rate.rate.quantize(Decimal('0.0001'), ROUND_HALF_EVEN):.4f}",
    }


def _bad(field: str, message: str) -> ApiError:
    return ApiError(
        400, "INVALID_REQUEST", message, extra={"details": [{"field": field, "issue": message}]}
    )


def _currency(field: str, value: str | None) -> str | None:
    if value is not None and not (len(value) == 3 and value.isascii() and value.isupper()):
        raise _bad(field, f"{field} {value!r} is not a currency code: use 3 capitals (USD).")
    return value


@router.get(
    "/exchange-rates", response_model=None, responses=answers(schemas.ExchangeRatesEnvelope)
)
async def get_exchange_rates(
    _: CurrentAccount,
    svc: Services,
    pairs: Annotated[str | None, Query(max_length=700)] = None,
    base: Annotated[str | None, Query(max_length=20)] = None,
    quote: Annotated[str | None, Query(max_length=20)] = None,
) -> dict[str, Any]:
    """The rates set (1 unit of base = rate units of quote, 4 decimals), narrowed to `pairs`
    (BASEQUOTE,...; then base and quote are not used) or to `base` and/or `quote`."""
    wanted: set[str] | None = None
    if pairs is not None:
        wanted = set()
        for pair in (p.strip() for p in pairs.split(",")):
            if not (len(pair) == 6 and pair.isascii() and pair.isupper() and pair.isalpha()):
                raise _bad(
                    "pairs", f"pair {pair!r} is not BASEQUOTE of two currency codes (USDEUR)."
                )
            wanted.add(pair)
        if len(wanted) > 100:
            raise _bad("pairs", "Ask for at most 100 pairs at once.")
    else:
        _currency("base", base)
        _currency("quote", quote)
    rates, currencies = await fx.rates_and_product_currencies(svc.new_uow())
    shown = [
        r
        for r in rates
        if (r.pair in wanted if wanted is not None else True)
        and (wanted is not None or base is None or r.base == base)
        and (wanted is not None or quote is None or r.quote == quote)
    ]
    updated = max((r.as_of for r in rates), default=None)
    return ok(
        {
            # the newest rate's time; with no rate set, now (the field is not nullable)
            "updatedAt": iso_utc(updated or utcnow()),
            "productCurrencies": currencies,
            "rates": [rate_shown(r) for r in shown],
        }
    )
