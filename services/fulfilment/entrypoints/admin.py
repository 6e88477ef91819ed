"""Operators' view of backorders: a SKU's or a state's, or one order's."""

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request

from services.fulfilment.domain.model import Backorder, BackorderState
from services.fulfilment.service_layer.unit_of_work import UnitOfWork
from shared.web import ApiError, admin_only, ok

router = APIRouter(prefix="/admin", dependencies=[Depends(admin_only)])


@router.get("/backorders")
async def list_backorders(
    request: Request,
    sku: Annotated[str | None, Query(max_length=64)] = None,
    state: BackorderState | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    new_uow: Callable[[], UnitOfWork] = request.app.state.new_uow
    async with new_uow() as uow:
        found = await uow.backorders.listing(sku, state, limit)
    return ok([_backorder_out(b) for b in found])


@router.get("/backorders/{transaction_id}")
async def get_backorder(
    request: Request, transaction_id: Annotated[str, Path(min_length=1, max_length=64)]
) -> dict[str, Any]:
    new_uow: Callable[[], UnitOfWork] = request.app.state.new_uow
    async with new_uow() as uow:
        found = await uow.backorders.get(transaction_id)
    if found is None:
        raise ApiError(
            404,
            "BACKORDER_NOT_FOUND",
            "This order was never backordered: fulfilment has no record of it.",
        )
    return ok(_backorder_out(found))


def _backorder_out(b: Backorder) -> dict[str, Any]:
    return {
        "transactionId": b.transaction_id,
        "sku": b.sku,
        "state": b.state.value,
        "placedAt": b.placed_at.isoformat(),
        "deadlineAt": b.deadline_at.isoformat(),
        "cancelReason": b.cancel_reason,
    }
