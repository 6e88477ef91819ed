"""Use cases of the audit of admin actions (shared.audit records them as they are answered)."""

from services.api.service_layer.unit_of_work import UnitOfWork
from shared.audit import AdminAction


async def record_admin_action(uow: UnitOfWork, action: AdminAction) -> None:
    async with uow, uow.transaction():
        await uow.admin_audit.record(action)
        await uow.commit()


async def admin_actions(uow: UnitOfWork, limit: int) -> list[AdminAction]:
    """The most recent, newest first."""
    async with uow:
        return await uow.admin_audit.latest(limit)
