"""The operator's side of inventory: products (published to catalog.products) and stock."""

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from services.inventory.domain import model
from services.inventory.domain.model import (
    CodeStatus,
    NewCode,
    Refingerprinted,
    StockedCode,
    StockLevel,
)
from services.inventory.service_layer.unit_of_work import UnitOfWork
from shared.contracts import ProductSnapshot, StockArrived
from shared.crypto import Binding, Code, CodeVault
from shared.topics import CATALOG_PRODUCTS, INVENTORY_EVENTS
from shared.unit_of_work import NotYet

log = logging.getLogger(__name__)

# Codes re-fingerprinted per transaction: their SKUs' orders wait for it (a few ms).
REFINGERPRINT_BATCH = 200


class ProductNotFound(Exception):
    def __init__(self, sku: str) -> None:
        super().__init__(f"no product with SKU {sku!r}")
        self.sku = sku


class RefingerprintPending(NotYet):
    """Codes stocked before fingerprint version 2 are still being re-fingerprinted: until
    then a code's duplicate could go unseen, so nothing is stocked."""

    def __init__(self, left: int) -> None:
        super().__init__(f"{left} codes stocked earlier are still being re-fingerprinted")
        self.left = left


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
    """Encrypts and stocks the codes; a code already known (in any SKU, in any form with
    the same `normal_form`) is skipped.

    The codes are orderable as soon as this returns. Raises RefingerprintPending while
    codes stocked earlier are being re-fingerprinted.
    """
    if not 0 < len(codes) <= model.MAX_CODES_PER_DELIVERY:
        raise ValueError(f"stock between 1 and {model.MAX_CODES_PER_DELIVERY} codes at a time")
    async with uow:
        if await uow.products.get(sku) is None:
            raise ProductNotFound(sku)
        await refuse_while_refingerprinting(uow)
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


async def refuse_while_refingerprinting(uow: UnitOfWork) -> None:
    if left := await uow.codes.old_fingerprints_left():
        raise RefingerprintPending(left)


@dataclass
class Refingerprinting:
    """What re-fingerprinting did: codes given a version 2 fingerprint, codes set aside as
    duplicates of another (stock ids), and codes found sold twice (kept, duplicate)."""

    refingerprinted: int = 0
    duplicates: list[int] = field(default_factory=list)
    sold_twice: list[tuple[int, int]] = field(default_factory=list)


async def refingerprint_stock(
    new_uow: Callable[[], UnitOfWork], vault: CodeVault, batch: int = REFINGERPRINT_BATCH
) -> Refingerprinting:
    """Gives every code stocked before fingerprint version 2 its version 2 fingerprint (and,
    if still for sale, seals it again to its stock item), `batch` codes per transaction,
    until none is left; codes found to be the same code are set aside
    (model.plan_refingerprinting). Each batch holds its SKUs' decisions (the SKU locks), so
    no order is backordered for a code it locks. Idempotent; several instances may run it."""
    done = Refingerprinting()
    while True:
        async with new_uow() as uow:
            skus = await uow.codes.skus_with_old_fingerprints(batch)
            if not skus:
                break
            await uow.serialize_skus(skus)
            codes = await uow.codes.with_old_fingerprints(skus, batch)
            fresh = await asyncio.to_thread(_refingerprinted, codes, vault)
            holders = await uow.codes.holding([code.fingerprint for code in fresh])
            plan = model.plan_refingerprinting(fresh, holders)
            await uow.codes.mark_duplicates([code.stock_id for code in plan.duplicates])
            await uow.codes.refingerprint(plan.keep)
            await uow.commit()
        done.refingerprinted += len(codes)
        for code in plan.duplicates:
            log.warning(
                "stock id %d is the same code as another in stock (they differ only in case, "
                "Unicode form or invisible characters): it keeps no fingerprint%s",
                code.stock_id,
                " and will never be sold" if code.status is CodeStatus.AVAILABLE else "",
            )
        for kept, duplicate in plan.sold_twice:
            log.error(
                "stock ids %d and %d are the same code and were both sold before "
                "fingerprints took the normal form: look at the two orders",
                kept,
                duplicate,
            )
        done.duplicates += [code.stock_id for code in plan.duplicates]
        done.sold_twice += plan.sold_twice
    if done.refingerprinted:
        log.info("re-fingerprinted %d codes", done.refingerprinted)
    return done


def _refingerprinted(codes: Sequence[StockedCode], vault: CodeVault) -> list[Refingerprinted]:
    fresh = []
    for code in codes:
        opened = vault.open(code.sealed, code.sku, code.stock_id)
        sealed = code.sealed
        if code.status is CodeStatus.AVAILABLE and sealed.binding is Binding.SKU:
            sealed = vault.seal(opened, code.sku, code.stock_id)
        fresh.append(Refingerprinted(code, vault.fingerprint(opened.redeem_code), sealed))
    return fresh


async def available_per_product(uow: UnitOfWork) -> dict[str, int]:
    async with uow:
        return await uow.codes.available_per_product()
