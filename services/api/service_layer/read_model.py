"""The read side of the api: the product read model (kept from inventory's catalog) and the
queries behind Get Orders, Get Codes, Get Products and Get Balances. Each query is one
statement, outside any transaction."""

import uuid
from decimal import Decimal
from typing import Any

from services.api.domain.model import BulkOrder, Order
from services.api.service_layer.unit_of_work import UnitOfWork
from shared.contracts import ProductSnapshot


async def apply_product(uow: UnitOfWork, snapshot: ProductSnapshot) -> bool:
    """Stores a catalog snapshot unless a newer one is stored (redelivery, reordering)."""
    record = snapshot.model_dump(mode="json", by_alias=True, exclude={"version"})
    async with uow:
        return await uow.products.apply(record, snapshot.version)


async def product_record(uow: UnitOfWork, sku: str) -> dict[str, Any] | None:
    """The snapshot as stored, with its version; None if the api has not seen the SKU."""
    async with uow:
        found = await uow.products.get_record(sku)
    return None if found is None else {**found[0], "version": found[1]}


async def products(
    uow: UnitOfWork, skus: list[str] | None, limit: int, offset: int
) -> tuple[int, list[dict[str, Any]]]:
    async with uow:
        return await uow.products.listing(skus, limit, offset)


async def orders(
    uow: UnitOfWork,
    account_id: uuid.UUID,
    *,
    transaction_id: str | None,
    client_order_number: str | None,
    status: str | None,
    limit: int,
    offset: int,
) -> tuple[int, list[Order | BulkOrder]]:
    async with uow:
        return await uow.orders.listing(
            account_id,
            transaction_id=transaction_id,
            client_order_number=client_order_number,
            status=status,
            limit=limit,
            offset=offset,
        )


async def order(uow: UnitOfWork, account_id: uuid.UUID, transaction_id: str) -> Order | None:
    """The account's order; another account's order is None, as an unknown one."""
    async with uow:
        return await uow.orders.get(account_id, transaction_id)


async def balances(uow: UnitOfWork, account_id: uuid.UUID) -> list[tuple[str, Decimal]]:
    async with uow:
        return await uow.wallets.balances(account_id)


async def processing_summary(uow: UnitOfWork) -> list[tuple[str, int, float]]:
    async with uow:
        return await uow.orders.processing_summary()


async def oldest_stuck(uow: UnitOfWork, older_than_s: float) -> tuple[str, float] | None:
    async with uow:
        return await uow.orders.oldest_stuck(older_than_s)
