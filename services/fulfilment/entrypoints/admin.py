"""Operators' view of backorders."""

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request

from shared.runtime import Runtime
from shared.web import admin_only, ok

router = APIRouter(prefix="/admin", dependencies=[Depends(admin_only)])


@router.get("/backorders")
async def list_backorders(
    request: Request,
    sku: Annotated[str | None, Query(max_length=64)] = None,
    state: Literal["WAITING", "ALLOCATING", "CANCELLING", "COMPLETED", "CANCELLED"] | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    runtime: Runtime = request.app.state.runtime
    rows = await runtime.pool.fetch(
        """
        SELECT transaction_id, sku, state, placed_at, deadline_at, cancel_reason
        FROM backorders WHERE ($1::text IS NULL OR sku = $1) AND ($2::text IS NULL OR state = $2)
        ORDER BY placed_at, transaction_id LIMIT $3
        """,
        sku,
        state,
        limit,
    )
    return ok(
        [
            {
                "transactionId": r["transaction_id"],
                "sku": r["sku"],
                "state": r["state"],
                "placedAt": r["placed_at"].isoformat(),
                "deadlineAt": r["deadline_at"].isoformat(),
                "cancelReason": r["cancel_reason"],
            }
            for r in rows
        ]
    )
