"""Operators' API of the api service: accounts, credentials, balances; the product read
model's state (so the CLI can wait until a product is orderable); one order's history, and
cancelling an order that cannot end by itself."""

import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, Field

from services.api.domain.model import (
    AccountNotFound,
    IllegalTransition,
    OrderHistory,
    OrderNotFound,
)
from services.api.entrypoints.http import Services, iso_utc
from services.api.service_layer import accounts, orders, read_model
from shared.settings import ApiSettings
from shared.web import ApiError, admin_only, ok

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
    )
    return ok(
        {
            "accountId": str(issued.account_id),
            "name": body.name,
            "apiKey": issued.api_key,
            "accessToken": issued.access_token,
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
            "balances": _balances(found.balances),
        }
    )


@router.post("/accounts/{account_id}/credit")
async def credit(
    account_id: uuid.UUID, body: MoneyIn, request: Request, svc: Services
) -> dict[str, Any]:
    try:
        rows = await accounts.credit_account(
            svc.new_uow(), account_id, body.currency, body.amount, _slots(request)
        )
    except AccountNotFound:
        raise ACCOUNT_NOT_FOUND from None
    return ok({"accountId": str(account_id), "balances": _balances(rows)})


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
        "backorderedAt": iso_utc(order.backordered_at) if order.backordered_at else None,
        "askedAgainAt": iso_utc(history.asked_again_at) if history.asked_again_at else None,
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


@router.get("/orders/{transaction_id}")
async def order_history(
    transaction_id: Annotated[str, Path(max_length=64)], svc: Services
) -> dict[str, Any]:
    try:
        return ok(_history_out(await orders.order_history(svc.new_uow(), transaction_id)))
    except OrderNotFound:
        raise ADMIN_ORDER_NOT_FOUND from None


@router.post("/orders/{transaction_id}/cancel", status_code=202)
async def cancel_order(
    transaction_id: Annotated[str, Path(max_length=64)], svc: Services
) -> dict[str, Any]:
    """Asks inventory to cancel the order; the refund follows its answer (poll the order)."""
    try:
        order = await orders.cancel_by_operator(svc.new_uow(), transaction_id)
    except OrderNotFound:
        raise ADMIN_ORDER_NOT_FOUND from None
    except IllegalTransition as exc:
        raise ApiError(
            409,
            "ORDER_FINAL",
            f"Order {exc.transaction_id} is {exc.status} already: only an order still "
            "PROCESSING can be cancelled.",
        ) from None
    return ok({"transactionId": order.transaction_id, "cancelRequested": True})
