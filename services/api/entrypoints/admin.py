"""Operators' API of the api service: accounts, credentials, balances; the product read
model's state (so the CLI can wait until a product is orderable); one order's history, and
cancelling an order that cannot end by itself."""

import logging
import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Request
from pydantic import BaseModel, Field

from services.api.domain.model import (
    AccountNotFound,
    BulkOrder,
    ExchangeRate,
    IdempotencyKeyReused,
    IllegalTransition,
    InvalidRate,
    OperatorCredit,
    OrderHistory,
    OrderNotFound,
    PinFormat,
    rolled_up,
)
from services.api.entrypoints.http import Services, iso_utc, rate_shown
from services.api.service_layer import accounts, fx, orders, read_model
from shared.contracts import rate_out
from shared.settings import ApiSettings
from shared.web import ApiError, admin_only, ok

log = logging.getLogger(__name__)
# Operators' endpoints are not in the public OpenAPI document (docs/api.md lists them).
router = APIRouter(prefix="/admin", dependencies=[Depends(admin_only)], include_in_schema=False)

Amount = Annotated[Decimal, Field(gt=0, max_digits=16, decimal_places=2)]
Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$")]


class MoneyIn(BaseModel):
    amount: Amount
    currency: Currency


class NewAccount(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    balances: list[MoneyIn] = Field(default_factory=list, max_length=20)
    rateLimitPerSecond: Decimal | None = Field(None, gt=0, le=100_000, decimal_places=2)
    pinFormat: PinFormat = "integer"


class PinFormatIn(BaseModel):
    pinFormat: PinFormat


class Rotation(BaseModel):
    graceSeconds: int = Field(900, ge=0, le=7 * 24 * 3600)


ACCOUNT_NOT_FOUND = ApiError(404, "ACCOUNT_NOT_FOUND", "No account has this id: check it.")


def _slots(request: Request) -> int:
    settings: ApiSettings = request.app.state.settings
    return settings.wallet_slots


def _balances(rows: list[tuple[str, Decimal]]) -> list[dict[str, str]]:
    return [{"balance": f"{amount:.2f}", "currency": currency} for currency, amount in rows]


@router.post("/accounts")
async def create_account(body: NewAccount, request: Request, svc: Services) -> dict[str, Any]:
    issued, balances = await accounts.create_account(
        svc.new_uow(),
        body.name,
        [(b.currency, b.amount) for b in body.balances],
        _slots(request),
        body.rateLimitPerSecond,
        body.pinFormat,
    )
    return ok(
        {
            "accountId": str(issued.account_id),
            "name": body.name,
            "apiKey": issued.api_key,
            "accessToken": issued.access_token,
            "pinFormat": body.pinFormat,
            "balances": _balances(balances),
        }
    )


@router.get("/accounts/{account_id}")
async def get_account(account_id: uuid.UUID, svc: Services) -> dict[str, Any]:
    try:
        found = await accounts.account(svc.new_uow(), account_id)
    except AccountNotFound:
        raise ACCOUNT_NOT_FOUND from None
    return ok(
        {
            "accountId": str(account_id),
            "name": found.account.name,
            "createdAt": iso_utc(found.account.created_at),
            "disabledAt": _iso_or_none(found.account.disabled_at),
            "pinFormat": found.account.pin_format,
            "balances": _balances(found.balances),
        }
    )


@router.put("/accounts/{account_id}/pin-format")
async def set_pin_format(
    account_id: uuid.UUID, body: PinFormatIn, request: Request, svc: Services
) -> dict[str, Any]:
    """How Get Codes sends the account's PINs (docs/api.md, "PIN format")."""
    try:
        await accounts.set_pin_format(svc.new_uow(), account_id, body.pinFormat)
    except AccountNotFound:
        raise ACCOUNT_NOT_FOUND from None
    log.info("account %s: pin format set to %s by an operator", account_id, body.pinFormat)
    return ok(
        {
            "accountId": str(account_id),
            "pinFormat": body.pinFormat,
            "effectiveWithinSeconds": _effective_within_s(request),
        }
    )


IDEMPOTENCY_KEY = r"^[!-~]{1,200}$"  # printable ASCII, no spaces
IDEMPOTENCY_KEY_MISSING = ApiError(
    400,
    "IDEMPOTENCY_KEY_MISSING",
    "Send an Idempotency-Key header with every credit (1 to 200 printable characters, no "
    "spaces): a new value for a new credit, the same one to retry it, so that it is applied "
    "once. `instant-orders accounts credit` makes one and prints it.",
)


def key_reused(earlier: OperatorCredit) -> ApiError:
    return ApiError(
        409,
        "IDEMPOTENCY_KEY_REUSED",
        f"Idempotency key {earlier.idempotency_key!r} was used for a credit of "
        f"{earlier.amount:.2f} {earlier.currency} to account {earlier.account_id}: a retry "
        "must send that same account, amount and currency. For another credit, send a new key "
        "(the CLI makes one unless given --idempotency-key).",
        extra={
            "earlier": {
                "accountId": str(earlier.account_id),
                "amount": f"{earlier.amount:.2f}",
                "currency": earlier.currency,
                "at": _iso_or_none(earlier.at),
            }
        },
    )


@router.post("/accounts/{account_id}/credit")
async def credit(
    account_id: uuid.UUID,
    body: MoneyIn,
    request: Request,
    svc: Services,
    idempotency_key: Annotated[
        str | None, Header(alias="Idempotency-Key", pattern=IDEMPOTENCY_KEY)
    ] = None,
) -> dict[str, Any]:
    """Applied once per Idempotency-Key: a retry answers as the first time did, with the
    balances as they are now and `replayed: true`."""
    if idempotency_key is None:
        raise IDEMPOTENCY_KEY_MISSING
    wanted = OperatorCredit(idempotency_key, account_id, body.currency, body.amount)
    try:
        done = await accounts.credit_account(svc.new_uow(), wanted, _slots(request))
    except AccountNotFound:
        raise ACCOUNT_NOT_FOUND from None
    except IdempotencyKeyReused as exc:
        raise key_reused(exc.earlier) from None
    if not done.replayed:
        log.info(
            "account %s credited %s %s by an operator (idempotency key %s)",
            account_id,
            f"{body.amount:.2f}",
            body.currency,
            idempotency_key,
        )
    return ok(
        {
            "accountId": str(account_id),
            "balances": _balances(done.balances),
            "idempotencyKey": idempotency_key,
            "replayed": done.replayed,
        }
    )


@router.post("/accounts/{account_id}/rotate-token")
async def rotate_token(
    account_id: uuid.UUID, svc: Services, body: Rotation | None = None
) -> dict[str, Any]:
    grace = timedelta(seconds=(body or Rotation()).graceSeconds)
    try:
        token, old_expire = await accounts.rotate_token(svc.new_uow(), account_id, grace)
    except AccountNotFound:
        raise ACCOUNT_NOT_FOUND from None
    return ok(
        {
            "accountId": str(account_id),
            "accessToken": token,
            "previousTokensExpireAt": iso_utc(old_expire),
        }
    )


def _effective_within_s(request: Request) -> float:
    """How long an api process may still accept a credential it checked before a change: its
    cache of successful checks (API_AUTH_CACHE_TTL_S)."""
    settings: ApiSettings = request.app.state.settings
    return settings.auth_cache_ttl_s


def _iso_or_none(moment: datetime | None) -> str | None:
    return iso_utc(moment) if moment is not None else None


@router.post("/accounts/{account_id}/revoke-token")
async def revoke_token(account_id: uuid.UUID, request: Request, svc: Services) -> dict[str, Any]:
    """Ends every access token of the account; its API key keeps working, so the client can
    be given a new token (rotate-token)."""
    try:
        revoked = await accounts.revoke_tokens(svc.new_uow(), account_id)
    except AccountNotFound:
        raise ACCOUNT_NOT_FOUND from None
    log.info("access tokens of account %s revoked by an operator (%d live)", account_id, revoked)
    return ok(
        {
            "accountId": str(account_id),
            "tokensRevoked": revoked,
            "effectiveWithinSeconds": _effective_within_s(request),
        }
    )


@router.post("/accounts/{account_id}/disable")
async def disable_account(account_id: uuid.UUID, request: Request, svc: Services) -> dict[str, Any]:
    try:
        disabled_at = await accounts.disable_account(svc.new_uow(), account_id)
    except AccountNotFound:
        raise ACCOUNT_NOT_FOUND from None
    log.info("account %s disabled by an operator", account_id)
    return ok(
        {
            "accountId": str(account_id),
            "disabledAt": iso_utc(disabled_at),
            "effectiveWithinSeconds": _effective_within_s(request),
        }
    )


@router.post("/accounts/{account_id}/enable")
async def enable_account(account_id: uuid.UUID, request: Request, svc: Services) -> dict[str, Any]:
    try:
        await accounts.enable_account(svc.new_uow(), account_id)
    except AccountNotFound:
        raise ACCOUNT_NOT_FOUND from None
    log.info("account %s enabled by an operator", account_id)
    return ok(
        {
            "accountId": str(account_id),
            "disabledAt": None,
            "effectiveWithinSeconds": _effective_within_s(request),
        }
    )


@router.get("/products/{sku}")
async def product_state(sku: str, svc: Services) -> dict[str, Any]:
    record = await read_model.product_record(svc.new_uow(), sku)
    if record is None:
        raise ApiError(
            404,
            "PRODUCT_NOT_FOUND",
            "The api has not seen this SKU yet: upsert it on inventory first.",
        )
    return ok(record)


ADMIN_ORDER_NOT_FOUND = ApiError(
    404, "ORDER_NOT_FOUND", "No order has this transactionId: check the id."
)


def _history_out(history: OrderHistory) -> dict[str, Any]:
    """Never the code, not even sealed: an operator sees where the order is, not what it bought."""
    order = history.order
    return {
        "transactionId": order.transaction_id,
        "accountId": str(order.account_id),
        "clientOrderNumber": order.client_order_number,
        "sku": order.sku,
        "status": order.status,
        "grandTotal": f"{order.grand_total:.2f}",
        "currency": order.currency,
        "stockId": order.stock_id,
        "cancelReason": order.cancel_reason,
        "createdAt": iso_utc(order.created_at),
        "backorderedAt": _iso_or_none(order.backordered_at),
        "askedAgainAt": _iso_or_none(history.asked_again_at),
        "updatedAt": iso_utc(history.updated_at),
        "money": [
            {
                "kind": move.kind,
                "amount": f"{move.amount:.2f}",
                "currency": move.currency,
                "at": iso_utc(move.at),
            }
            for move in history.money
        ],
    }


def _bulk_out(bulk: BulkOrder) -> dict[str, Any]:
    """A bulk order as operators see it: what was paid and refunded, and per line how many
    units are where (each unit is an order of its own: `orders show <id>-00001`)."""
    lines = []
    for sku, units in bulk.lines:
        counts = {status: 0 for status in ("COMPLETED", "PROCESSING", "CANCELLED")}
        for unit in units:
            counts[unit.status] += 1
        lines.append(
            {
                "sku": sku,
                "quantity": len(units),
                "status": rolled_up([u.status for u in units]),
                "units": counts,
                "firstUnit": units[0].transaction_id,
            }
        )
    return {
        "transactionId": bulk.transaction_id,
        "bulk": True,
        "accountId": str(bulk.account_id),
        "clientOrderNumber": bulk.client_order_number,
        "status": bulk.status,
        "grandTotal": f"{bulk.grand_total:.2f}",
        "refundedTotal": f"{bulk.refunded:.2f}",
        "currency": bulk.currency,
        "createdAt": iso_utc(bulk.created_at),
        "lines": lines,
    }


@router.get("/orders/{transaction_id}")
async def order_history(
    transaction_id: Annotated[str, Path(max_length=64)], svc: Services
) -> dict[str, Any]:
    """An order and its history; a bulk order's id gives the bulk order (`bulk: true`)."""
    try:
        return ok(_history_out(await orders.order_history(svc.new_uow(), transaction_id)))
    except OrderNotFound:
        pass
    try:
        return ok(_bulk_out(await orders.bulk_for_operator(svc.new_uow(), transaction_id)))
    except OrderNotFound:
        raise ADMIN_ORDER_NOT_FOUND from None


@router.post("/orders/{transaction_id}/cancel", status_code=202)
async def cancel_order(
    transaction_id: Annotated[str, Path(max_length=64)], svc: Services
) -> dict[str, Any]:
    """Asks inventory to cancel the order (every unit of a bulk order still waiting); the
    refund follows its answer (poll the order)."""
    try:
        asked = await orders.cancel_by_operator(svc.new_uow(), transaction_id)
    except OrderNotFound:
        raise ADMIN_ORDER_NOT_FOUND from None
    except IllegalTransition as exc:
        raise ApiError(
            409,
            "ORDER_FINAL",
            f"Order {exc.transaction_id} is {exc.status} already: only an order still "
            "PROCESSING can be cancelled.",
        ) from None
    bulk = any(order.bulk_id == transaction_id for order in asked)
    return ok(
        {
            "transactionId": transaction_id,
            "cancelRequested": True,
            "bulk": bulk,
            "units": len(asked),
        }
    )


class RateIn(BaseModel):
    rate: Decimal = Field(gt=0, max_digits=18, decimal_places=6)


def _rate_out(rate: ExchangeRate) -> dict[str, Any]:
    """As GET /v2/exchange-rates shows it, with the rate exact and when it was set."""
    return {**rate_shown(rate), "rate": rate_out(rate.rate), "updatedAt": iso_utc(rate.as_of)}


@router.put("/fx-rates/{base}/{quote}")
async def set_fx_rate(
    base: Annotated[str, Path(pattern=r"^[A-Z]{3}$")],
    quote: Annotated[str, Path(pattern=r"^[A-Z]{3}$")],
    body: RateIn,
    svc: Services,
) -> dict[str, Any]:
    """Sets 1 BASE = rate QUOTE for orders accepted from now on (within the rates cache,
    services/api/service_layer/fx.py); orders accepted before keep their rate."""
    try:
        stored = await fx.set_rate(svc.new_uow(), base, quote, body.rate)
    except InvalidRate as exc:
        raise ApiError(400, "INVALID_REQUEST", exc.message) from None
    log.info("exchange rate %s set to %s by an operator", stored.pair, stored.rate)
    return ok(_rate_out(stored))


@router.get("/fx-rates")
async def list_fx_rates(svc: Services) -> dict[str, Any]:
    rates, _ = await fx.rates_and_product_currencies(svc.new_uow())
    return ok({"rates": [_rate_out(r) for r in rates]})
