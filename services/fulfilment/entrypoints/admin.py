"""Operators' view of backorders."""

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from services.fulfilment.domain.model import BackorderState
from services.fulfilment.service_layer.unit_of_work import UnitOfWork
from shared.web import admin_only, ok

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
    return ok(
        [
            {
                "transactionId": b.transaction_id,
                "sku": b.sku,
                "state": b.state.value,
                "placedAt": b.placed_at.isoformat(),
                "deadlineAt": b.deadline_at.isoformat(),
                "cancelReason": b.cancel_reason,
            }
            for b in found
        ]
    )
