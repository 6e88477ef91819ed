"""The audit of the api's admin actions, for operators (`instant-orders audit list`)."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from services.api.entrypoints.http import Services, iso_utc
from services.api.service_layer import audit
from shared.web import admin_only, ok

router = APIRouter(prefix="/admin", dependencies=[Depends(admin_only)], include_in_schema=False)


@router.get("/audit")
async def admin_actions(
    svc: Services, limit: Annotated[int, Query(ge=1, le=1000)] = 50
) -> dict[str, Any]:
    """The most recent admin actions, newest first."""
    actions = await audit.admin_actions(svc.new_uow(), limit)
    return ok(
        {
            "items": [
                {
                    "at": iso_utc(action.at),
                    "operator": action.operator,
                    "client": action.client,
                    "method": action.method,
                    "route": action.route,
                    "ids": action.ids,
                    "status": action.status,
                    "requestId": action.request_id,
                }
                for action in actions
            ]
        }
    )
