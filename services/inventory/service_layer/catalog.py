"""The operator's side of inventory: products (published to catalog.products) and stock."""

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from services.inventory.domain import model
from services.inventory.domain.model import NewCode, StockLevel
from services.inventory.service_layer.unit_of_work import UnitOfWork
from shared.contracts import ProductSnapshot, StockArrived
from shared.crypto import Code, CodeVault
from shared.topics import CATALOG_PRODUCTS, INVENTORY_EVENTS


class ProductNotFound(Exception):
    def __init__(self, sku: str) -> None:
        super().__init__(f"no product with SKU {sku!r}")
        self.sku = sku


@dataclass(frozen=True)
class StockAdded:
    sku: str
    added: int
    skipped: int
    available: int


async def put_product(product: ProductSnapshot, uow: UnitOfWork) -> ProductSnapshot:
    """Creates or replaces the product's record; its version goes up by one each time."""
    async with uow:
        stored = await uow.products.save(product)
        uow.publish(CATALOG_PRODUCTS.name, stored.sku, stored)
        await uow.commit()
    return stored


async def withdraw_product(sku: str, uow: UnitOfWork) -> ProductSnapshot:
    """Stops selling the product. Withdrawing a withdrawn product changes nothing."""
    async with uow:
        current = await uow.products.get(sku, for_update=True)
        if current is None:
            raise ProductNotFound(sku)
        if not current.active:
            return current
        stored = await uow.products.save(current.model_copy(update={"active": False}))
        uow.publish(CATALOG_PRODUCTS.name, stored.sku, stored)
        await uow.commit()
    return stored


async def product_with_stock(sku: str, uow: UnitOfWork) -> tuple[ProductSnapshot, StockLevel]:
    async with uow:
        product = await uow.products.get(sku)
        if product is None:
            raise ProductNotFound(sku)
        levels = await uow.codes.levels([sku])
    return product, levels.get(sku, StockLevel(0, 0))


async def products_with_stock(
    uow: UnitOfWork, limit: int, offset: int
) -> tuple[int, list[tuple[ProductSnapshot, StockLevel]]]:
    async with uow:
        total, products = await uow.products.page(limit, offset)
        levels = await uow.codes.levels([p.sku for p in products])
    return total, [(p, levels.get(p.sku, StockLevel(0, 0))) for p in products]


async def add_stock(
    sku: str, codes: Sequence[Code], uow: UnitOfWork, vault: CodeVault
) -> StockAdded:
    """Encrypts and stocks the codes; a code already known (in any SKU) is skipped.

    The codes are orderable as soon as this returns.
    """
    if not 0 < len(codes) <= model.MAX_CODES_PER_DELIVERY:
        raise ValueError(f"stock between 1 and {model.MAX_CODES_PER_DELIVERY} codes at a time")
    async with uow:
        if await uow.products.get(sku) is None:
            raise ProductNotFound(sku)
        stock_ids = await uow.codes.new_ids(len(codes))
        # Sealing thousands of codes takes CPU: off the event loop that also decides orders.
        sealed = await asyncio.to_thread(seal_codes, codes, sku, stock_ids, vault)
        added = await uow.codes.add(sku, model.distinct_codes(sealed))
        available = await uow.codes.available(sku)
        if added:
            uow.publish(
                INVENTORY_EVENTS.name,
                sku,
                StockArrived(sku=sku, added=added, available=available),
            )
        await uow.commit()
    return StockAdded(sku=sku, added=added, skipped=len(codes) - added, available=available)


def seal_codes(
    codes: Sequence[Code], sku: str, stock_ids: Sequence[int], vault: CodeVault
) -> list[NewCode]:
    """Each code sealed to its stock item (the stock id given for it), with its fingerprint."""
    return [
        NewCode(
            stock_id=stock_id,
            fingerprint=vault.fingerprint(code.redeem_code),
            sealed=vault.seal(code, sku, stock_id),
        )
        for code, stock_id in zip(codes, stock_ids, strict=True)
    ]


async def available_per_product(uow: UnitOfWork) -> dict[str, int]:
    async with uow:
        return await uow.codes.available_per_product()
