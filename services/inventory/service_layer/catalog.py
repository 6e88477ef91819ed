"""The operator's side of inventory: products (published to catalog.products) and stock."""

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag

from services.inventory import metrics
from services.inventory.domain import model
from services.inventory.domain.model import (
    CodeStatus,
    NewCode,
    Refingerprinted,
    StockedCode,
    StockLevel,
)
from services.inventory.service_layer.unit_of_work import UnitOfWork
from shared.contracts import DeliverStock, ProductSnapshot, StockArrived
from shared.crypto import (
    Binding,
    Code,
    CodeVault,
    KeyConfigError,
    SealedCode,
    code_problem,
    pin_kind_problem,
)
from shared.topics import CATALOG_PRODUCTS, INVENTORY_EVENTS

log = logging.getLogger(__name__)

# Codes re-fingerprinted per transaction: their SKUs' orders wait for it (a few ms).
REFINGERPRINT_BATCH = 200
# Its lock: one process re-fingerprints at a time (UnitOfWork.run_alone).
REFINGERPRINT_TASK = "stock-refingerprint"
# Batches in a row that may clash with concurrent writes before the pass gives up (the loop
# runs it again).
REFINGERPRINT_CONFLICTS = 5
# More codes of one batch than this that do not open: a wrong key is likelier than damage.
REFINGERPRINT_UNREADABLE_MAX = 5


class ProductNotFound(Exception):
    def __init__(self, sku: str) -> None:
        super().__init__(f"no product with SKU {sku!r}")
        self.sku = sku


class RefingerprintPending(Exception):
    """Codes stocked before fingerprint version 2 are still being re-fingerprinted: until
    then a code's duplicate could go unseen, so an operator's stock is refused (a supplier's
    delivery waits instead: `receive_delivery`)."""

    def __init__(self) -> None:
        super().__init__("codes stocked earlier are still being re-fingerprinted")


class PinsNotInteger(Exception):
    """Codes for sale (a product made `integer`) or codes to stock (into an `integer`
    product) whose PIN an int32 cannot carry exactly: `problems` (1-based position, problem)
    for codes to stock, `stock_ids` for codes in stock. Nothing was changed."""

    def __init__(
        self, sku: str, problems: Sequence[tuple[int, str]] = (), stock_ids: Sequence[int] = ()
    ) -> None:
        super().__init__(f"{sku}: PINs that are not integers")
        self.sku = sku
        self.problems = list(problems)
        self.stock_ids = list(stock_ids)


class BackordersWaiting(Exception):
    """An integer product may not become `string` while backorders of it wait."""

    def __init__(self, sku: str) -> None:
        super().__init__(f"{sku}: backorders wait")
        self.sku = sku


@dataclass(frozen=True)
class StockAdded:
    sku: str
    added: int
    skipped: int
    available: int


async def put_product(
    product: ProductSnapshot, uow: UnitOfWork, vault: CodeVault
) -> ProductSnapshot:
    """Creates or replaces the product's record; its version goes up by one each time.

    Making a product's pinKind `integer` checks the PIN of every code it has for sale, under
    the product's row lock (which stock intake takes too): PinsNotInteger, nothing changed,
    when one is not an int32 exactly (or does not open). Making an integer product `string`
    is refused (BackordersWaiting) while backorders of it wait: they may be orders of
    accounts that receive integer PINs."""
    async with uow:
        current = await uow.products.get(product.sku, for_update=True)
        if product.pin_kind == "integer" and current is not None and current.pin_kind != "integer":
            in_stock = await uow.codes.for_sale(product.sku)
            # Opening thousands of codes takes CPU: off the event loop that decides orders.
            refused = await asyncio.to_thread(_not_integer_pins, in_stock, vault)
            if refused:
                raise PinsNotInteger(product.sku, stock_ids=refused)
        # Its backorders may be integer accounts' orders, which a string PIN would reach.
        if (
            product.pin_kind != "integer"
            and current is not None
            and current.pin_kind == "integer"
            and await uow.decisions.skus_with_waiting_backorders([product.sku])
        ):
            raise BackordersWaiting(product.sku)
        stored = await uow.products.save(product)
        uow.publish(CATALOG_PRODUCTS.name, stored.sku, stored)
        await uow.commit()
    return stored


def _not_integer_pins(codes: Sequence[StockedCode], vault: CodeVault) -> list[int]:
    """The stock ids of the codes whose PIN is not an int32 exactly, or that do not open (so
    their PIN cannot be vouched for)."""
    refused = []
    for code in codes:
        try:
            opened = vault.open(code.sealed, code.sku, code.stock_id)
        except (InvalidTag, ValueError, KeyConfigError):
            refused.append(code.stock_id)
            continue
        if pin_kind_problem(opened.pin_code, "integer"):
            refused.append(code.stock_id)
    return refused


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
        # Share-locked: a concurrent change of its pinKind waits for these codes, or they for
        # it; other stock intake of the SKU (a supplier's delivery) does not wait.
        product = await uow.products.get(sku, for_share=True)
        if product is None:
            raise ProductNotFound(sku)
        problems = [
            (position, problem)
            for position, code in enumerate(codes, start=1)
            if (problem := pin_kind_problem(code.pin_code, product.pin_kind))
        ]
        if problems:
            raise PinsNotInteger(sku, problems=problems)
        await refuse_while_refingerprinting(uow)
        stock_ids = await uow.codes.new_ids(len(codes))
        # Sealing thousands of codes takes CPU: off the event loop that also decides orders.
        sealed = await asyncio.to_thread(seal_codes, codes, sku, stock_ids, vault)
        added = await uow.codes.add(sku, model.distinct_codes(sealed))
        available = await uow.codes.available(sku)
        if added:
            await _announce_arrival(sku, added, uow)
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
    if await uow.codes.any_old_fingerprints():
        raise RefingerprintPending()


async def stock_delivery(command: DeliverStock, uow: UnitOfWork, vault: CodeVault) -> None:
    """Stocks a supplier's delivery (its SKU held by the caller, no version 1 fingerprint
    left). Codes already known are skipped, so a redelivered delivery adds nothing; stock
    that arrived is announced like an operator's. The codes come sealed to their SKU; each
    is sealed again to the stock item it becomes. A code an operator could not stock
    (code_problem) is left out, logged by position and kind of problem and counted
    (inventory_supplier_codes_refused_total), never quoted."""
    product = await uow.products.get(command.sku, for_share=True)  # as add_stock
    pin_kind = "string" if product is None else product.pin_kind
    codes = []
    for position, wire in enumerate(command.sealed_codes, start=1):
        code = vault.open(SealedCode.from_wire(wire), command.sku, None)
        if problem := code_problem(code.redeem_code, code.pin_code) or pin_kind_problem(
            code.pin_code, pin_kind
        ):
            log.warning("delivery %s: code %d left out: %s", command.delivery_id, position, problem)
            metrics.SUPPLIER_CODES_REFUSED.labels(problem.split(" ", 1)[0]).inc()
            continue
        codes.append(code)
    stock_ids = await uow.codes.new_ids(len(codes)) if codes else []
    new = seal_codes(codes, command.sku, stock_ids, vault)
    added = await uow.codes.add(command.sku, model.distinct_codes(new))
    if added:
        await _announce_arrival(command.sku, added, uow)
    log.info(
        "delivery %s: %d of %d codes added", command.delivery_id, added, len(command.sealed_codes)
    )


async def _announce_arrival(sku: str, added: int, uow: UnitOfWork) -> None:
    available = await uow.codes.available(sku)
    uow.publish(INVENTORY_EVENTS.name, sku, StockArrived(sku=sku, added=added, available=available))


@dataclass
class Refingerprinting:
    """What one pass of re-fingerprinting did: codes given a version 2 fingerprint, codes set
    aside as duplicates of another or as unreadable (stock ids), codes found sold twice
    (kept, duplicate), deliveries stocked that waited; `busy` if another process was at it."""

    refingerprinted: int = 0
    duplicates: list[int] = field(default_factory=list)
    unreadable: list[int] = field(default_factory=list)
    sold_twice: list[tuple[int, int]] = field(default_factory=list)
    deliveries: int = 0
    busy: bool = False


class RefingerprintConflicts(Exception):
    """Batches of re-fingerprinting kept clashing with concurrent writes."""


class RefingerprintBlocked(Exception):
    """Re-fingerprinting cannot go on safely until an operator acts (docs/runbook.md); the
    message says why and names no code, only stock ids and key ids."""


class RefingerprintSoldCodeUnreadable(RefingerprintBlocked):
    """A sold code to re-fingerprint does not open. It cannot be given a fingerprint of its
    normal form, and without one a copy of it could be stocked and sold again: nothing is
    touched until its ciphertext (or the right key) is back, or an operator decides."""


class RefingerprintUnreadableBurst(RefingerprintBlocked):
    """Many codes of one batch do not open: more likely a wrong key under a known key id than
    damaged rows, so none is set aside."""


class RefingerprintKeysMissing(RefingerprintBlocked):
    """Codes to re-fingerprint are sealed with keys inventory does not have. Nothing is done
    until they are configured: a sold code that cannot be opened has no fingerprint, so a
    duplicate of it could not be found and would be sold again (fail closed)."""


async def refingerprint_stock(
    new_uow: Callable[[], UnitOfWork], vault: CodeVault, batch: int = REFINGERPRINT_BATCH
) -> Refingerprinting:
    """One pass (run in a loop, app.py): gives every code with a version 1 fingerprint its
    version 2 fingerprint (and, if still for sale, seals it again to its stock item),
    `batch` codes per transaction, sold codes first; codes found to be the same code are set
    aside (model.plan_refingerprinting), and so are codes that do not open. A SKU whose codes
    come on sale is announced (StockArrived), so backorders placed meanwhile are served. Once
    none is left, the deliveries that waited are stocked.

    One process at a time (a lock per batch: another process's pass skips its turn); each
    batch holds its SKUs' decisions (the SKU locks). A batch that clashes with a concurrent
    write (a unique fingerprint, a deadlock) is rolled back and tried again. Idempotent."""
    done = Refingerprinting()
    await _report_missing_keys(new_uow, vault)
    conflicts = 0
    while True:
        uow = new_uow()
        try:
            async with uow:
                if not await uow.run_alone(REFINGERPRINT_TASK):
                    done.busy = True
                    return done
                skus = await uow.codes.skus_with_old_fingerprints(batch)
                if not skus:
                    break
                await uow.serialize_skus(skus)
                codes = await uow.codes.with_old_fingerprints(skus, batch)
                fresh, unreadable = await asyncio.to_thread(_refingerprinted, codes, vault)
                holders = await uow.codes.holding([code.fingerprint for code in fresh])
                plan = model.plan_refingerprinting(fresh, holders)
                await uow.codes.set_aside(
                    [c.stock_id for c in plan.duplicates], CodeStatus.DUPLICATE
                )
                await uow.codes.set_aside(
                    [c.stock_id for c, _ in unreadable], CodeStatus.UNREADABLE
                )
                await uow.codes.refingerprint(plan.keep)
                for sku, added in sorted(model.newly_for_sale(plan).items()):
                    await _announce_arrival(sku, added, uow)
                await uow.commit()
        except uow.CONFLICTS as exc:
            conflicts += 1
            if conflicts > REFINGERPRINT_CONFLICTS:
                raise RefingerprintConflicts(f"{conflicts} batches in a row clashed") from None
            # Never the error's text: its DETAIL names a fingerprint.
            log.info("a re-fingerprinting batch clashed (%s): trying it again", type(exc).__name__)
            continue
        conflicts = 0
        done.refingerprinted += len(codes)
        _log_batch(plan, unreadable)
        done.duplicates += [code.stock_id for code in plan.duplicates]
        done.unreadable += [code.stock_id for code, _ in unreadable]
        done.sold_twice += plan.sold_twice
    if done.refingerprinted:
        log.info("re-fingerprinted %d codes", done.refingerprinted)
    done.deliveries = await _stock_waiting_deliveries(new_uow, vault)
    return done


async def _report_missing_keys(new_uow: Callable[[], UnitOfWork], vault: CodeVault) -> None:
    async with new_uow() as uow:
        missing = await uow.codes.old_key_ids() - vault.key_ids
    if missing:
        # No row is touched: the window stays open (deliveries parked, only new-form codes
        # sold) until the keys are back. The task is reported down meanwhile.
        raise RefingerprintKeysMissing(
            f"codes to re-fingerprint are sealed with key ids {', '.join(sorted(missing))}, "
            "not in CODE_ENCRYPTION_KEYS: add them back (docs/runbook.md); nothing is "
            "re-fingerprinted until then"
        )


def _log_batch(
    plan: model.RefingerprintPlan, unreadable: Sequence[tuple[StockedCode, str]]
) -> None:
    for code in plan.duplicates:
        log.warning(
            "stock id %d is the same code as another in stock (they differ only in case, "
            "Unicode form or invisible characters): it keeps no fingerprint%s",
            code.stock_id,
            " and will never be sold" if code.status.for_sale else "",
        )
    for kept, duplicate in plan.sold_twice:
        log.error(
            "stock ids %d and %d are the same code and were both sold before "
            "fingerprints took the normal form: look at the two orders",
            kept,
            duplicate,
        )
    for code, reason in unreadable:
        log.error(
            "stock id %d (%s, %s) cannot be opened (%s): set aside%s",
            code.stock_id,
            code.sku,
            code.status.value,
            reason,
            ", never to be sold" if code.status.for_sale else "",
        )


async def _stock_waiting_deliveries(new_uow: Callable[[], UnitOfWork], vault: CodeVault) -> int:
    """Stocks the deliveries that waited for re-fingerprinting, oldest first, each in its own
    transaction under its SKU's lock. One that cannot be stocked (a code that does not open)
    stays, logged, and the others go on."""
    stocked = 0
    failed: set[str] = set()
    while True:
        waiting: DeliverStock | None = None
        try:
            async with new_uow() as uow:
                if await uow.codes.any_old_fingerprints():
                    return stocked
                waiting = await uow.deliveries.oldest(exclude=failed)
                if waiting is None:
                    return stocked
                await uow.serialize_skus([waiting.sku])
                if await uow.deliveries.take(waiting.delivery_id):
                    await stock_delivery(waiting, uow, vault)
                    await uow.commit()
                    stocked += 1
        except (InvalidTag, ValueError) as exc:
            if waiting is None:
                raise
            failed.add(waiting.delivery_id)
            log.error(
                "delivery %s waited for re-fingerprinting and cannot be stocked (%s): it "
                "stays in pending_deliveries",
                waiting.delivery_id,
                type(exc).__name__,
            )


def _refingerprinted(
    codes: Sequence[StockedCode], vault: CodeVault
) -> tuple[list[Refingerprinted], list[tuple[StockedCode, str]]]:
    """The codes with their version 2 fingerprints, and those that do not open (why)."""
    fresh, unreadable = [], []
    for code in codes:
        try:
            opened = vault.open(code.sealed, code.sku, code.stock_id)
        except KeyConfigError:
            # a key gone since the pass checked them: fail closed (RefingerprintKeysMissing)
            raise RefingerprintKeysMissing(
                f"stock id {code.stock_id} is sealed with a key not in CODE_ENCRYPTION_KEYS"
            ) from None
        except (InvalidTag, ValueError):
            if code.status is CodeStatus.SOLD:
                raise RefingerprintSoldCodeUnreadable(
                    f"sold stock id {code.stock_id} ({code.sku}, key id {code.sealed.key_id}) "
                    "does not open, so a copy of it could not be recognised: put back its "
                    "ciphertext or the right key (docs/runbook.md); nothing is re-fingerprinted "
                    "until then"
                ) from None
            unreadable.append((code, "its ciphertext does not open"))
            if len(unreadable) > REFINGERPRINT_UNREADABLE_MAX:
                raise RefingerprintUnreadableBurst(
                    f"more than {REFINGERPRINT_UNREADABLE_MAX} codes of one batch do not open "
                    f"(stock ids {', '.join(str(c.stock_id) for c, _ in unreadable)}): is the "
                    "key under their key id the right one? Nothing is set aside until this "
                    "is resolved (docs/runbook.md)"
                ) from None
            continue
        sealed = code.sealed
        if code.status.for_sale and sealed.binding is Binding.SKU:
            sealed = vault.seal(opened, code.sku, code.stock_id)
        fresh.append(Refingerprinted(code, vault.fingerprint(opened.redeem_code), sealed))
    return fresh, unreadable


async def available_per_product(uow: UnitOfWork) -> dict[str, int]:
    async with uow:
        return await uow.codes.available_per_product()
